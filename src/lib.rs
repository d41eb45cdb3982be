//! rustvlan: a Docker/libnetwork remote network driver and IPAM plugin that puts
//! containers straight on a LAN or VLAN with macvlan, ipvlan and 802.1Q links.
//!
//! Requests flow one way: `api` (decode) → `driver`/`plugin` (validate, plan) →
//! `kernel` (apply links) → `store` (persist) → answer; `ipam` is the pure allocation
//! logic the plan uses.

pub mod api;
pub mod cli;
pub mod client;
pub mod dhcp;
pub mod driver;
pub mod dump;
pub mod error;
pub mod etcd;
pub mod ipam;
pub mod kernel;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod server;
pub mod state;
pub mod status;
pub mod store;
pub mod util;
