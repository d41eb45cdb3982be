//! The driver's calls in its own words: what a front-end passes to create a network or
//! an endpoint, join and leave, and what it gets back. Docker's remote-driver JSON is
//! turned into and out of these in `api/driver.rs`; another front-end (netavark, CNI)
//! builds them from its own input.
//!
//! Addresses stay text: the driver checks them itself, so that a bad value gets an error
//! naming the field and the value.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::model::MacAddr;

/// A network to create.
#[derive(Debug, Clone, Default)]
pub struct NetworkSpec {
    pub network_id: String,
    /// libnetwork's shape: the user's `-o` options as a map of strings under
    /// `com.docker.network.generic`; `com.docker.network.internal` and
    /// `com.docker.network.enable_ipv6` as bools.
    pub options: BTreeMap<String, Value>,
    pub ipv4: Vec<SubnetSpec>,
    pub ipv6: Vec<SubnetSpec>,
    /// `host_access=on` on a shared pool: the host's address, which the IPAM claimed for
    /// this host alone before the network is made (see [`HostAddressToClaim`]).
    pub host_address: Option<IpNetwork>,
}

/// `host_access=on` on a shared pool: the host's address must be this host's own claim,
/// never a reservation every host holds alike, so the IPAM claims it first. `ip` is the
/// one `host_access_ip` names, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddressToClaim {
    pub pool_id: String,
    pub ip: Option<IpAddr>,
}

/// One subnet of a network, as its IPAM granted it: the pool, the gateway and the
/// addresses set aside, all in CIDR notation.
#[derive(Debug, Clone, Default)]
pub struct SubnetSpec {
    pub address_space: String,
    pub pool: String,
    pub gateway: Option<String>,
    pub aux_addresses: BTreeMap<String, String>,
}

/// An endpoint to create in a network, with the addresses its IPAM gave (CIDR) and the
/// MAC the user asked for, if any.
#[derive(Debug, Clone, Default)]
pub struct EndpointSpec {
    pub network_id: String,
    pub endpoint_id: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub mac: Option<String>,
    /// The endpoint's driver options; namespaced keys (`com.docker.…`) are ignored.
    pub options: BTreeMap<String, Value>,
}

/// What creating an endpoint decided that the caller did not give: a MAC rustvlan chose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCreated {
    pub chosen_mac: Option<MacAddr>,
}

/// Names an endpoint of a network: the delete, Leave and operational-info calls.
#[derive(Debug, Clone, Default)]
pub struct EndpointRef {
    pub network_id: String,
    pub endpoint_id: String,
}

impl EndpointRef {
    pub fn new(network_id: impl Into<String>, endpoint_id: impl Into<String>) -> EndpointRef {
        EndpointRef {
            network_id: network_id.into(),
            endpoint_id: endpoint_id.into(),
        }
    }
}

/// A Join: the endpoint, and the container's network namespace (a path), if known.
#[derive(Debug, Clone, Default)]
pub struct JoinSpec {
    pub endpoint: EndpointRef,
    pub sandbox: Option<String>,
}

/// What the container's side of a Join needs: the link rustvlan made in the host
/// namespace, to be moved into the container, and its routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAnswer {
    /// The link's name in the host namespace.
    pub link_name: String,
    /// The container-side name's prefix (`eth` becomes `eth0`, `eth1`, …).
    pub name_prefix: &'static str,
    pub gateway: Option<IpAddr>,
    pub gateway_v6: Option<IpAddr>,
    pub routes: Vec<Route>,
}

/// A route the container gets besides its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Directly connected through the link (ipvlan l3's default routes).
    Connected { destination: IpNetwork },
    /// Through a next hop (a lease's classless routes, host access).
    Via { destination: IpNetwork, next_hop: IpAddr },
}

/// Whether the IPAM should set a gateway address aside for a network about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayNeeds {
    pub ipv4: bool,
    pub ipv6: bool,
}

/// An endpoint's link as the driver sees it, for a front-end's operational info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub link_name: String,
    pub mac: Option<MacAddr>,
    /// The parent and link mode, when the network is still known.
    pub parent: Option<(String, String)>,
}
