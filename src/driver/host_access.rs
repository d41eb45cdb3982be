//! Host access (`-o host_access=on`): the kernel never passes frames between a macvlan
//! or ipvlan child and its parent's own stack, so the host cannot reach its containers.
//! rustvlan gives the host a child of its own on the parent, the shim, in bridge mode,
//! which reaches the containers like any sibling:
//!
//! - one shim per parent (`rvh` and a hash of the parent's name), carrying the store's
//!   mark, with a MAC derived from the store and parent so that containers' ARP caches
//!   survive restarts, and `arp_ignore=1`/`arp_announce=2` so that it answers ARP only
//!   for its own addresses (else the LAN sees two MACs for the host's address);
//! - one address S per network on it, as a /32 so that no subnet route competes with
//!   the parent's;
//! - one `/32 dev shim src S proto 250` route per joined container;
//! - each container gets a route to the parent's own addresses through S.
//!
//! Order, as for links: the kernel is changed before the records that own the change,
//! and records go before what they own is removed; start-up reconcile re-makes what a
//! record owns and removes what no record owns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::Driver;
use super::calls::{HostAddressToClaim, Route};
use super::options::{HOST_AUX_ADDRESS, HostAccessRequest};
use crate::error::{Error, Result};
use crate::ipam::allocator::{IpamChange, pool_id};
use crate::kernel::{ChildLink, HostRoute, Kernel, LinkInfo};
use crate::model::{
    EndpointRecord, HostAccess, HostAddressSource, IpvlanFlag, IpvlanMode, LinkMode, MacAddr, MacvlanMode,
    NetworkRecord, PoolRecord, Subnet,
};
use crate::state::{Change, State};
use crate::util::short_id;

pub const SHIM_PREFIX: &str = "rvh";

/// The shim's name on `parent`: the same on every run, at most 15 bytes, and never an
/// endpoint's (those are `rv` and hex digits).
pub fn shim_name(parent: &str) -> String {
    let hash = crate::util::stable_hash(&[parent.as_bytes()]);
    format!("{SHIM_PREFIX}{:012x}", hash & 0xffff_ffff_ffff)
}

/// A locally administered unicast MAC that stays the same for one store and parent.
pub fn shim_mac(group: u32, parent: &str) -> MacAddr {
    let hash = crate::util::stable_hash(&[&group.to_be_bytes(), parent.as_bytes()]).to_be_bytes();
    let mut mac = [hash[0], hash[1], hash[2], hash[3], hash[4], hash[5]];
    mac[0] = (mac[0] & 0xfe) | 0x02;
    MacAddr(mac)
}

/// The shims the records call for, by name, with their parent.
pub fn expected_shims<'a>(networks: impl Iterator<Item = &'a NetworkRecord>) -> BTreeMap<String, String> {
    networks
        .filter(|n| n.host_access.is_some())
        .map(|n| (shim_name(&n.parent), n.parent.clone()))
        .collect()
}

/// The shim's own link mode: a sibling that the kernel lets talk to the containers.
fn shim_mode(network: &NetworkRecord) -> LinkMode {
    match network.link {
        LinkMode::Macvlan { .. } => LinkMode::Macvlan {
            mode: MacvlanMode::Bridge,
        },
        LinkMode::Ipvlan { .. } => LinkMode::Ipvlan {
            mode: IpvlanMode::L2,
            flag: IpvlanFlag::Bridge,
        },
    }
}

fn host_route_of(address: IpNetwork) -> IpNetwork {
    IpNetwork::new(address.ip(), if address.is_ipv4() { 32 } else { 128 }).expect("a full-length prefix")
}

/// The pool this network is about to claim (or has claimed) for the subnet holding `ip`.
fn network_pool(state: &State, network: &NetworkRecord, ip: IpAddr) -> Option<PoolRecord> {
    let subnet = network.ipv4.iter().find(|s| s.pool.contains(ip))?;
    if let Some(pool) = state
        .ipam
        .pools()
        .find(|p| p.record.claimed_by.as_deref() == Some(network.id.as_str()) && p.record.pool == subnet.pool)
    {
        return Some(pool.record.clone());
    }
    match state.ipam.plan_claim(
        &subnet.address_space,
        subnet.pool,
        subnet.gateway.map(|g| g.ip()),
        &network.id,
    ) {
        Some(IpamChange::PutPool(record)) => Some(record),
        _ => None,
    }
}

/// Chooses S for a new network: `--aux-address host=IP` (reserved by the network's
/// IPAM, whichever it is), else `host_access_ip` or the highest free address of the
/// network's rustvlan pool. On a shared pool S is `claimed`, this host's own claim (an
/// aux address is every host's alike, so it is refused there). Checked against the
/// state now; [`reserve_host_address`] plans its reservation again at commit.
pub fn choose_host_address(
    state: &State,
    network: &NetworkRecord,
    request: &HostAccessRequest,
    claimed: Option<IpNetwork>,
) -> Result<HostAccess> {
    let subnet = host_access_subnet(state, network)?;
    if let Some(address) = claimed {
        return claimed_host_address(network, request, address);
    }
    let aux = network.ipv4.iter().find_map(|s| s.aux_addresses.get(HOST_AUX_ADDRESS));
    if let Some(aux) = aux {
        if let Some(ip) = request.ip.filter(|ip| *ip != aux.ip()) {
            return Err(Error::invalid(format!(
                "host_access_ip={ip} contradicts --aux-address {HOST_AUX_ADDRESS}={}; give one of them",
                aux.ip()
            )));
        }
        if network_pool(state, network, aux.ip()).is_some_and(|p| p.shared) {
            return Err(aux_host_on_shared_pool(subnet.pool));
        }
        return Ok(HostAccess {
            address: *aux,
            source: HostAddressSource::AuxAddress,
        });
    }
    let ip_hint = request.ip.unwrap_or(subnet.pool.ip());
    let pool = network_pool(state, network, ip_hint).ok_or_else(|| match request.ip {
        Some(ip) if !network.ipv4.iter().any(|s| s.pool.contains(ip)) => {
            Error::invalid(format!("host_access_ip={ip} is outside the network's IPv4 subnets"))
        }
        _ => Error::invalid(format!(
            "host_access=on needs an address for the host in {} that the network's IPAM holds for it: give \
             --aux-address {HOST_AUX_ADDRESS}=IP (any IPAM driver), or use --ipam-driver rustvlan, which \
             reserves one",
            subnet.pool
        )),
    })?;
    if pool.shared {
        return Err(Error::conflict(format!(
            "host_access=on on shared pool {}: the host's address must be claimed for this host before the \
             network is made, and was not (a front-end that creates networks must ask the IPAM for it)",
            pool.pool
        )));
    }
    let id = pool_id(&pool);
    let ip = match request.ip {
        Some(ip) => {
            state.ipam.plan_request_address(&id, Some(ip), false)?;
            ip
        }
        None => state.ipam.highest_free(&id)?,
    };
    Ok(HostAccess {
        address: IpNetwork::new(ip, pool.pool.prefix()).expect("the pool's prefix fits its family"),
        source: HostAddressSource::Reserved,
    })
}

/// The IPv4 subnet host access uses, if its IPAM may give the host an address.
fn host_access_subnet<'a>(state: &State, network: &'a NetworkRecord) -> Result<&'a Subnet> {
    let subnet = network.ipv4.first().ok_or_else(|| {
        Error::invalid("host_access=on needs an IPv4 subnet: the host reaches the containers over IPv4")
    })?;
    if network_pool(state, network, subnet.pool.ip()).is_some_and(|p| p.dhcp) {
        return Err(Error::invalid(
            "host_access=on does not work with --ipam-driver rustvlan-dhcp yet: the host's address would have to be a \
             lease of its own; use --ipam-driver rustvlan, or leave host access off",
        ));
    }
    Ok(subnet)
}

fn aux_host_on_shared_pool(pool: IpNetwork) -> Error {
    Error::invalid(format!(
        "--aux-address {HOST_AUX_ADDRESS}=IP on shared pool {pool} would give every host's shim the same address; \
         leave it out, and rustvlan claims an address of its own for each host (or name one per host with -o \
         host_access_ip=IP)"
    ))
}

/// S as the IPAM claimed it for this host on a shared pool.
fn claimed_host_address(
    network: &NetworkRecord,
    request: &HostAccessRequest,
    address: IpNetwork,
) -> Result<HostAccess> {
    let fits =
        network.ipv4.iter().any(|s| s.pool.contains(address.ip())) && request.ip.is_none_or(|ip| ip == address.ip());
    if !fits {
        return Err(Error::invalid(format!(
            "the host address claimed for network {} ({address}) is not the one its options ask for",
            short_id(&network.id)
        )));
    }
    Ok(HostAccess {
        address,
        source: HostAddressSource::Claimed,
    })
}

/// With `host_access=on` on a shared pool, what the IPAM must claim for this host before
/// the network is made; None where the driver's own choice does.
pub fn host_address_to_claim(
    state: &State,
    network: &NetworkRecord,
    request: &HostAccessRequest,
) -> Result<Option<HostAddressToClaim>> {
    let subnet = host_access_subnet(state, network)?;
    let hint = request.ip.unwrap_or(subnet.pool.ip());
    let Some(pool) = network_pool(state, network, hint).filter(|p| p.shared) else {
        return Ok(None);
    };
    if network
        .ipv4
        .iter()
        .any(|s| s.aux_addresses.contains_key(HOST_AUX_ADDRESS))
    {
        return Err(aux_host_on_shared_pool(pool.pool));
    }
    if let Some(ip) = request.ip {
        state.ipam.plan_request_address(&pool_id(&pool), Some(ip), false)?;
    }
    Ok(Some(HostAddressToClaim {
        pool_id: pool_id(&pool),
        ip: request.ip,
    }))
}

/// The IPAM changes that hold S for the network, planned at commit: an address taken
/// meanwhile fails the create.
pub fn reserve_host_address(state: &State, network: &NetworkRecord) -> Result<Vec<Change>> {
    let Some(host) = network
        .host_access
        .as_ref()
        .filter(|h| h.source == HostAddressSource::Reserved)
    else {
        return Ok(Vec::new());
    };
    let ip = host.address.ip();
    let pool = network_pool(state, network, ip)
        .ok_or_else(|| Error::conflict(format!("the pool of host address {ip} went away meanwhile")))?;
    let (_, changes) = state.ipam.plan_request_address(&pool_id(&pool), Some(ip), false)?;
    Ok(changes.into_iter().map(Change::Ipam).collect())
}

/// What CreateNetwork changed in the kernel for host access, to undo on failure.
pub struct ShimSetup {
    shim_index: u32,
    made_shim: bool,
}

impl<K: Kernel> Driver<K> {
    /// The shim on the network's parent, made and readied if missing. Returns its index
    /// and whether it was made now.
    async fn ensure_shim(&self, network: &NetworkRecord) -> Result<(u32, bool)> {
        let name = shim_name(&network.parent);
        if let Some(link) = self.kernel.link(&name).await? {
            if !self.is_ours(&link) {
                return Err(Error::conflict(format!(
                    "interface name {name} (host access on {}) is taken by a link rustvlan did not make; remove it",
                    network.parent
                )));
            }
            return Ok((link.index, false));
        }
        let parent = self
            .kernel
            .link(&network.parent)
            .await?
            .ok_or_else(|| Error::kernel(format!("parent interface {} is missing", network.parent)))?;
        let shim = ChildLink {
            name: name.clone(),
            parent_index: parent.index,
            mode: shim_mode(network),
            mac: matches!(network.link, LinkMode::Macvlan { .. }).then(|| shim_mac(self.group, &network.parent)),
            mtu: None,
            group: self.group,
        };
        self.kernel.add_child(&shim).await.map_err(|e| {
            Error::kernel(format!(
                "{e}: cannot make host-access shim {name} on {}",
                network.parent
            ))
            .caused_by(e)
        })?;
        let made = self
            .kernel
            .link(&name)
            .await?
            .ok_or_else(|| Error::kernel(format!("shim {name} vanished right after it was made")))?;
        if let Err(e) = self.kernel.ready_shim(made.index, parent.index).await {
            self.delete_quietly(made.index, &name).await;
            return Err(Error::kernel(format!("{e}: cannot set up host-access shim {name}")).caused_by(e));
        }
        tracing::info!(shim = %name, parent = %network.parent, "host-access shim made");
        Ok((made.index, true))
    }

    /// CreateNetwork's kernel work for host access: the shim, and S on it.
    pub(super) async fn set_up_host_access(&self, network: &NetworkRecord) -> Result<Option<ShimSetup>> {
        let Some(host) = &network.host_access else {
            return Ok(None);
        };
        let (shim_index, made_shim) = self.ensure_shim(network).await?;
        if let Err(e) = self.kernel.add_address(shim_index, host_route_of(host.address)).await {
            if made_shim {
                self.delete_quietly(shim_index, &shim_name(&network.parent)).await;
            }
            return Err(e.into());
        }
        Ok(Some(ShimSetup { shim_index, made_shim }))
    }

    /// Undoes [`Driver::set_up_host_access`] after a failed create.
    pub(super) async fn undo_host_access(&self, network: &NetworkRecord, setup: ShimSetup) {
        if setup.made_shim {
            self.delete_quietly(setup.shim_index, &shim_name(&network.parent)).await;
        } else if let Some(host) = &network.host_access
            && let Err(e) = self
                .kernel
                .delete_address(setup.shim_index, host_route_of(host.address))
                .await
        {
            tracing::warn!(
                "cannot remove host address {}: {e}; start-up reconcile will",
                host.address
            );
        }
    }

    /// DeleteNetwork, after the records are gone: the network's routes and S, and the
    /// shim with the last host-access network on its parent.
    pub(super) async fn tear_down_host_access(
        &self,
        network: &NetworkRecord,
        endpoints: &[EndpointRecord],
        last_on_parent: bool,
    ) {
        let Some(host) = &network.host_access else {
            return;
        };
        let name = shim_name(&network.parent);
        let shim = match self.kernel.link(&name).await {
            Ok(Some(link)) if self.is_ours(&link) => link,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(shim = %name, "cannot look up the shim: {e}; start-up reconcile will clean up");
                return;
            }
        };
        if last_on_parent {
            // Its addresses and routes go with it.
            self.delete_quietly(shim.index, &name).await;
            tracing::info!(shim = %name, "host-access shim deleted with the last network on its parent");
            return;
        }
        for endpoint in endpoints {
            self.remove_host_route_at(shim.index, endpoint).await;
        }
        if let Err(e) = self
            .kernel
            .delete_address(shim.index, host_route_of(host.address))
            .await
        {
            tracing::warn!(shim = %name, "cannot remove host address {}: {e}", host.address);
        }
    }

    /// Join: the host's route to the container, and the container's routes to the
    /// parent's own addresses through S.
    pub(super) async fn join_host_access(
        &self,
        network: &NetworkRecord,
        endpoint: &EndpointRecord,
    ) -> Result<Vec<Route>> {
        let (Some(host), Some(address)) = (&network.host_access, endpoint.ipv4) else {
            return Ok(Vec::new());
        };
        let name = shim_name(&network.parent);
        let shim = self
            .kernel
            .link(&name)
            .await?
            .filter(|l| self.is_ours(l))
            .ok_or_else(|| {
                Error::kernel(format!(
                    "host-access shim {name} on {} is missing; restart rustvlan to re-make it",
                    network.parent
                ))
            })?;
        self.kernel
            .add_route(&HostRoute {
                destination: host_route_of(address),
                index: shim.index,
                source: Some(host.address.ip()),
            })
            .await?;
        let parent_addresses = match shim.parent_index {
            Some(index) => self.kernel.addresses(index).await?,
            None => Vec::new(),
        };
        Ok(parent_addresses
            .iter()
            .filter(|a| a.ip() != host.address.ip())
            .map(|a| Route::Via {
                destination: host_route_of(*a),
                next_hop: host.address.ip(),
            })
            .collect())
    }

    /// Leave and DeleteEndpoint: the host's route to the container goes.
    pub(super) async fn leave_host_access(&self, network: &NetworkRecord, endpoint: &EndpointRecord) {
        if network.host_access.is_none() || endpoint.ipv4.is_none() {
            return;
        }
        match self.kernel.link(&shim_name(&network.parent)).await {
            Ok(Some(shim)) if self.is_ours(&shim) => self.remove_host_route_at(shim.index, endpoint).await,
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot look up the host-access shim: {e}; start-up reconcile will clean up"),
        }
    }

    async fn remove_host_route_at(&self, shim_index: u32, endpoint: &EndpointRecord) {
        let Some(address) = endpoint.ipv4 else { return };
        let route = HostRoute {
            destination: host_route_of(address),
            index: shim_index,
            source: None,
        };
        if let Err(e) = self.kernel.delete_route(&route).await {
            tracing::warn!(
                endpoint = short_id(&endpoint.id),
                "cannot remove host route to {address}: {e}"
            );
        }
    }

    /// Start-up: every shim the records call for exists with its addresses, every
    /// joined container has its route, and routes and addresses no record owns go.
    pub(super) async fn reconcile_host_access(&self, links: &[LinkInfo]) -> Result<HostAccessReconcile> {
        let mut report = HostAccessReconcile::default();
        let (shims, networks, endpoints) = {
            let state = self.state();
            let networks: Vec<NetworkRecord> = state
                .networks
                .values()
                .filter(|n| n.host_access.is_some())
                .cloned()
                .collect();
            let endpoints: Vec<EndpointRecord> = networks
                .iter()
                .flat_map(|n| state.endpoints_of(&n.id).cloned().collect::<Vec<_>>())
                .collect();
            (expected_shims(networks.iter()), networks, endpoints)
        };
        let mut indexes: BTreeMap<String, u32> = BTreeMap::new();
        for (name, parent) in &shims {
            let network = networks
                .iter()
                .find(|n| &n.parent == parent)
                .expect("a shim comes from a network");
            let present = links.iter().find(|l| &l.name == name && self.is_ours(l));
            match present {
                Some(link) => {
                    indexes.insert(name.clone(), link.index);
                }
                None => match self.ensure_shim(network).await {
                    Ok((index, _)) => {
                        indexes.insert(name.clone(), index);
                        report.shims_recreated.push(name.clone());
                    }
                    Err(e) => tracing::warn!(shim = %name, "cannot re-make host-access shim: {e}"),
                },
            }
        }
        for (name, &index) in &indexes {
            let wanted: BTreeSet<IpNetwork> = networks
                .iter()
                .filter(|n| shim_name(&n.parent) == *name)
                .filter_map(|n| n.host_access.as_ref().map(|h| host_route_of(h.address)))
                .collect();
            let have: BTreeSet<IpNetwork> = self.kernel.addresses(index).await?.into_iter().collect();
            for missing in wanted.difference(&have) {
                self.kernel.add_address(index, *missing).await?;
                report.addresses_added += 1;
            }
            for extra in have.difference(&wanted) {
                self.kernel.delete_address(index, *extra).await?;
                report.addresses_removed += 1;
            }
        }
        // Routes: one per endpoint of a host-access network, on its parent's shim. A
        // missing one is added back for every endpoint whose link is not in the host
        // namespace: it is in a container (Join's sandbox hint may not have reached the
        // disk before a crash), or not made yet, where a route to an address that no
        // one else holds is harmless. After Leave the link is back here: no route.
        let owned: BTreeMap<(IpNetwork, u32), (&EndpointRecord, IpAddr)> = endpoints
            .iter()
            .filter_map(|e| {
                let network = networks.iter().find(|n| n.id == e.network_id)?;
                let index = *indexes.get(&shim_name(&network.parent))?;
                let source = network.host_access.as_ref()?.address.ip();
                Some(((host_route_of(e.ipv4?), index), (e, source)))
            })
            .collect();
        let our_shims: BTreeSet<u32> = links
            .iter()
            .filter(|l| self.is_ours(l) && l.name.starts_with(SHIM_PREFIX))
            .map(|l| l.index)
            .chain(indexes.values().copied())
            .collect();
        let routes = self.kernel.host_routes().await?;
        let present: BTreeSet<(IpNetwork, u32)> = routes.iter().map(|r| (r.destination, r.index)).collect();
        for route in routes.iter().filter(|r| our_shims.contains(&r.index)) {
            if !owned.contains_key(&(route.destination, route.index)) && self.kernel.delete_route(route).await? {
                report.routes_removed += 1;
            }
        }
        for ((destination, index), (endpoint, source)) in &owned {
            let in_host = links.iter().any(|l| l.name == endpoint.link_name);
            if !in_host && !present.contains(&(*destination, *index)) {
                self.kernel
                    .add_route(&HostRoute {
                        destination: *destination,
                        index: *index,
                        source: Some(*source),
                    })
                    .await?;
                report.routes_added += 1;
            }
        }
        Ok(report)
    }
}

/// What start-up reconcile did for host access.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct HostAccessReconcile {
    pub shims_recreated: Vec<String>,
    pub addresses_added: usize,
    pub addresses_removed: usize,
    pub routes_added: usize,
    pub routes_removed: usize,
}
