//! rustvlan: a Docker/libnetwork remote network driver and IPAM plugin that puts
//! containers straight on a LAN or VLAN with macvlan, ipvlan and 802.1Q links.
//!
//! Files import only downwards through six layers (README, "Where things are";
//! `scripts/layers.py` checks it): core types and decisions (`model`, `state`, `error`,
//! `drift`, the allocator) → adapters (`kernel`, `store`, `etcd`, `dhcp`, `metrics`) →
//! the ledger (`plugin`: state, journal, `commit`) → the services (`driver`, `ipam`) →
//! the edges (`api`, `dump`, `status`) → the app (`server`, `cli`, `client`).

pub mod api;
pub mod cli;
pub mod client;
pub mod dhcp;
pub mod drift;
pub mod driver;
pub mod dump;
pub mod error;
pub mod etcd;
pub mod ipam;
pub mod kernel;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod server;
pub mod state;
pub mod status;
pub mod store;
pub mod util;
