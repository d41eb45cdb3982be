//! The network driver: networks, endpoints and their links.
//!
//! Order of work, so that a crash at any point leaves nothing that start-up cannot
//! explain: links are made in the kernel *before* the records that own them are written,
//! and records are removed *before* their links are deleted. A link whose record is
//! missing carries rustvlan's mark (its group number) and is swept by [`Plugin::reconcile`].

pub mod options;
pub mod reclaim;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use crate::api::wire::{
    CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest, DriverCapabilities, Empty,
    EndpointOperInfoResponse, EndpointRequest, GwAllocCheckRequest, GwAllocCheckResponse, InterfaceAnswer,
    InterfaceName, JoinRequest, JoinResponse, NetworkRequest, ROUTE_TYPE_CONNECTED, StaticRoute,
};
use crate::error::{Error, Result};
use crate::kernel::{
    ChildLink, EADDRINUSE, EBUSY, EEXIST, EINVAL, ENODEV, EOPNOTSUPP, IFNAME_MAX, Kernel, KernelError, LinkInfo,
};
use crate::keys::check_option_keys;
use crate::model::{EndpointRecord, LinkMode, MacAddr, NetworkRecord, ParentKind, ParentRecord, PendingDelete, Subnet};
use crate::plugin::Plugin;
use crate::state::{Change, State};
use options::{NetworkConfig, ParentChoice, check_id, overlaps, parse_network_options, parse_subnets};

/// Host-side link names start with this; the rest comes from the endpoint id.
pub const LINK_PREFIX: &str = "rv";

/// Bare endpoint `driver-opt` keys rustvlan understands: none yet. dockerd's own keys
/// (`com.docker.network.endpoint.*`, `com.docker.network.portmap`) are namespaced.
const ENDPOINT_KEYS: &[&str] = &[];

const GW_CHECK_ID: &str = "gwalloccheck";

/// Twelve hex digits, like Docker's short ids.
fn short(id: &str) -> &str {
    crate::util::prefix(id, 12)
}

fn kernel_err(e: KernelError) -> Error {
    Error::kernel(e.message)
}

/// The report of a start-up reconcile, logged and kept for `rustvlan state`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReconcileReport {
    pub orphan_links_deleted: Vec<String>,
    pub orphan_parents_deleted: Vec<String>,
    pub parents_recreated: Vec<String>,
    pub parents_missing: Vec<String>,
    pub endpoints_without_host_link: usize,
    pub pending_deletes_finished: usize,
}

impl<K: Kernel> Plugin<K> {
    /// Whether this store made the link: it carries the store's group number.
    fn is_ours(&self, link: &LinkInfo) -> bool {
        link.group == self.group
    }

    pub fn driver_capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            scope: "local",
            connectivity_scope: "global",
            gw_alloc_checker: true,
        }
    }

    /// dockerd 28 asks this before CreateNetwork. Like Docker 28's macvlan, no gateway
    /// address is reserved where containers get no gateway: `--internal` networks,
    /// networks without a parent (an isolated dummy), and ipvlan l3/l3s, which route
    /// through the device. There the first container gets the subnet's first address,
    /// and a /31 holds two containers.
    pub fn gw_alloc_check(&self, req: GwAllocCheckRequest) -> Result<GwAllocCheckResponse> {
        // The network has no id yet; the id only names a dummy parent, not made here.
        let config = parse_network_options(GW_CHECK_ID, req.options.as_ref().unwrap_or(&BTreeMap::new()))?;
        let skip = config.internal || matches!(config.parent, ParentChoice::Dummy { .. }) || config.link.is_routed();
        Ok(GwAllocCheckResponse {
            skip_ipv4: skip,
            skip_ipv6: skip,
        })
    }

    // ------------------------------------------------------------- networks

    pub async fn create_network(&self, req: CreateNetworkRequest) -> Result<Empty> {
        check_id("NetworkID", &req.network_id)?;
        let config = parse_network_options(&req.network_id, req.options.as_ref().unwrap_or(&BTreeMap::new()))?;
        let ipv4 = parse_subnets("IPv4Data", req.ipv4_data.as_deref().unwrap_or_default(), false)?;
        let ipv6 = parse_subnets("IPv6Data", req.ipv6_data.as_deref().unwrap_or_default(), true)?;
        check_families(&config, &ipv4, &ipv6)?;
        let record = NetworkRecord {
            id: req.network_id.clone(),
            link: config.link,
            parent: config.parent.name().to_string(),
            mtu: config.mtu,
            internal: config.internal,
            enable_ipv6: config.enable_ipv6,
            ipv4,
            ipv6,
            options: config.options.clone(),
        };

        let _topology = self.topology.write().await;
        {
            let state = self.state();
            if let Some(existing) = state.networks.get(&record.id) {
                return if *existing == record {
                    Ok(Empty {})
                } else {
                    Err(Error::conflict(format!(
                        "network {} already exists with other settings",
                        short(&record.id)
                    )))
                };
            }
            check_parent_conflicts(&state, &record)?;
        }
        let made = self.ensure_parent(&config, &record).await?;
        let committed = self
            .commit(|state| {
                let mut changes = vec![Change::PutNetwork(record.clone())];
                if let Some((parent, _)) = &made {
                    changes.push(Change::PutParent(parent.clone()));
                }
                for subnet in record.subnets() {
                    let gateway = subnet.gateway.map(|g| g.ip());
                    if let Some(claim) = state
                        .ipam
                        .plan_claim(&subnet.address_space, subnet.pool, gateway, &record.id)
                    {
                        changes.push(Change::Ipam(claim));
                    }
                }
                Ok(((), changes))
            })
            .await;
        if let Err(err) = committed {
            if let Some((parent, index)) = made {
                self.delete_quietly(index, &parent.name).await;
            }
            return Err(err);
        }
        tracing::info!(
            network = short(&record.id),
            parent = %record.parent,
            link = %record.link,
            made_parent = made.is_some(),
            "network created"
        );
        Ok(Empty {})
    }

    /// Finds the parent, or makes it (a VLAN or a dummy). Returns what it made.
    async fn ensure_parent(
        &self,
        config: &NetworkConfig,
        record: &NetworkRecord,
    ) -> Result<Option<(ParentRecord, u32)>> {
        let name = config.parent.name();
        if let Some(link) = self.kernel.link(name).await.map_err(kernel_err)? {
            check_mtu(record, &link)?;
            return Ok(None);
        }
        let (kind, result) = match &config.parent {
            ParentChoice::Named { vlan: Some(spec), .. } => {
                let base = self.kernel.link(&spec.base).await.map_err(kernel_err)?.ok_or_else(|| {
                    Error::invalid(format!(
                        "parent interface {} does not exist, so VLAN {} cannot be made on it",
                        spec.base, spec.id
                    ))
                })?;
                check_mtu(record, &base)?;
                let kind = ParentKind::Vlan {
                    base: spec.base.clone(),
                    id: spec.id,
                };
                (kind, self.kernel.add_vlan(name, base.index, spec.id, self.group).await)
            }
            ParentChoice::Named { vlan: None, .. } => {
                return Err(Error::invalid(format!("parent interface {name} does not exist")));
            }
            ParentChoice::Dummy { .. } => (
                ParentKind::Dummy,
                self.kernel.add_dummy(name, record.mtu, self.group).await,
            ),
        };
        result.map_err(|e| explain_parent_error(e, name))?;
        let link = self
            .kernel
            .link(name)
            .await
            .map_err(kernel_err)?
            .ok_or_else(|| Error::kernel(format!("parent {name} vanished right after it was made")))?;
        tracing::info!(parent = name, "parent link made");
        Ok(Some((
            ParentRecord {
                name: name.to_string(),
                kind,
            },
            link.index,
        )))
    }

    pub async fn delete_network(&self, req: NetworkRequest) -> Result<Empty> {
        let _topology = self.topology.write().await;
        let id = req.network_id;
        let removed = self
            .commit(|state| {
                let Some(network) = state.networks.get(&id) else {
                    return Ok((None, Vec::new()));
                };
                let stale: Vec<EndpointRecord> = state.endpoints_of(&id).cloned().collect();
                let shared = state.networks_on_parent(&network.parent).any(|n| n.id != id);
                let parent = state.parents.get(&network.parent).filter(|_| !shared).cloned();
                let mut changes: Vec<Change> = stale
                    .iter()
                    .flat_map(|e| [Change::DelEndpoint(e.id.clone()), Change::PutPending(pending_delete(e))])
                    .collect();
                changes.push(Change::DelNetwork(id.clone()));
                if let Some(p) = &parent {
                    changes.push(Change::DelParent(p.name.clone()));
                }
                Ok((Some((network.clone(), stale, parent)), changes))
            })
            .await?;
        let Some((network, stale, parent)) = removed else {
            tracing::debug!(network = short(&id), "delete of an unknown network: nothing to do");
            return Ok(Empty {});
        };
        // The parent goes only once no link being deleted hangs off it.
        if let Err(e) = self.process_pending().await {
            tracing::warn!("deleting queued links failed: {e}; start-up reconcile will retry");
        }
        if let Some(parent) = parent {
            match self.kernel.link(&parent.name).await {
                Ok(Some(link)) if self.is_ours(&link) => {
                    self.delete_quietly(link.index, &parent.name).await;
                    self.parent_indexes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&parent.name);
                }
                Ok(Some(_)) => {
                    tracing::warn!(parent = %parent.name, "parent no longer carries rustvlan's mark; left in place")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(parent = %parent.name, "cannot look up parent to delete it: {e}"),
            }
        }
        tracing::info!(
            network = short(&network.id),
            stale_endpoints = stale.len(),
            "network deleted"
        );
        Ok(Empty {})
    }

    // ------------------------------------------------------------- endpoints

    pub async fn create_endpoint(&self, req: CreateEndpointRequest) -> Result<CreateEndpointResponse> {
        check_id("NetworkID", &req.network_id)?;
        check_id("EndpointID", &req.endpoint_id)?;
        if let Some(options) = &req.options {
            check_option_keys("endpoint option", options.keys().map(String::as_str), ENDPOINT_KEYS)?;
        }
        let iface = req.interface.unwrap_or_default();
        let ipv4 = parse_endpoint_address("Interface.Address", iface.address.as_deref(), false)?;
        let ipv6 = parse_endpoint_address("Interface.AddressIPv6", iface.address_ipv6.as_deref(), true)?;
        let requested_mac = match iface.mac_address.as_deref().filter(|m| !m.is_empty()) {
            Some(text) => {
                let mac: MacAddr = text
                    .parse()
                    .map_err(|e: String| Error::invalid(format!("Interface.MacAddress {e}")))?;
                if mac.is_multicast() {
                    return Err(Error::invalid(format!(
                        "Interface.MacAddress {mac} is a multicast or broadcast address; a container needs a unicast MAC"
                    )));
                }
                if mac.is_zero() {
                    return Err(Error::invalid(
                        "Interface.MacAddress 00:00:00:00:00:00 is not a usable MAC",
                    ));
                }
                Some(mac)
            }
            None => None,
        };

        let answer = self
            .commit(|state| {
                let network = state
                    .networks
                    .get(&req.network_id)
                    .ok_or_else(|| Error::not_found(format!("network {} not found", short(&req.network_id))))?;
                if let Some(existing) = state.endpoints.get(&req.endpoint_id) {
                    let same = existing.network_id == req.network_id
                        && existing.ipv4 == ipv4
                        && existing.ipv6 == ipv6
                        && match requested_mac {
                            Some(mac) => existing.mac == Some(mac) && !existing.mac_generated,
                            None => existing.mac.is_none() || existing.mac_generated,
                        };
                    return if same {
                        Ok((endpoint_answer(existing), Vec::new()))
                    } else {
                        Err(Error::conflict(format!(
                            "endpoint {} already exists with other settings",
                            short(&req.endpoint_id)
                        )))
                    };
                }
                let record = plan_endpoint(state, network, &req.endpoint_id, ipv4, ipv6, requested_mac)?;
                Ok((endpoint_answer(&record), vec![Change::PutEndpoint(record)]))
            })
            .await?;
        tracing::debug!(
            network = short(&req.network_id),
            endpoint = short(&req.endpoint_id),
            "endpoint created"
        );
        Ok(answer)
    }

    /// Forgets the endpoint and queues its link for deletion off the request path:
    /// `docker run --rm` does not wait for the kernel's RCU grace period.
    pub async fn delete_endpoint(&self, req: EndpointRequest) -> Result<Empty> {
        let removed = self
            .commit(|state| match state.endpoints.get(&req.endpoint_id) {
                Some(e) if e.network_id != req.network_id => Err(Error::invalid(format!(
                    "endpoint {} belongs to network {}, not {}",
                    short(&e.id),
                    short(&e.network_id),
                    short(&req.network_id)
                ))),
                Some(e) => Ok((
                    Some(e.clone()),
                    vec![Change::DelEndpoint(e.id.clone()), Change::PutPending(pending_delete(e))],
                )),
                None => Ok((None, Vec::new())),
            })
            .await?;
        match removed {
            Some(endpoint) => {
                self.pending_wake.notify_one();
                tracing::debug!(endpoint = short(&endpoint.id), link = %endpoint.link_name, "endpoint deleted; link delete queued");
            }
            None => tracing::debug!(
                endpoint = short(&req.endpoint_id),
                "delete of an unknown endpoint: nothing to do"
            ),
        }
        Ok(Empty {})
    }

    pub fn endpoint_oper_info(&self, req: EndpointRequest) -> EndpointOperInfoResponse {
        let state = self.state();
        let mut value = BTreeMap::new();
        if let Some(e) = state.endpoints.get(&req.endpoint_id) {
            value.insert("link_name".to_string(), json!(e.link_name));
            if let Some(mac) = e.mac {
                value.insert("mac_address".to_string(), json!(mac));
            }
            if let Some(n) = state.networks.get(&e.network_id) {
                value.insert("parent".to_string(), json!(n.parent));
                value.insert("mode".to_string(), json!(n.link.to_string()));
            }
        }
        EndpointOperInfoResponse { value }
    }

    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse> {
        let _topology = self.topology.read().await;
        let (endpoint, network, wait_for_deletes) = {
            let state = self.state();
            let endpoint = state
                .endpoints
                .get(&req.endpoint_id)
                .ok_or_else(|| Error::not_found(format!("endpoint {} not found", short(&req.endpoint_id))))?;
            if endpoint.network_id != req.network_id {
                return Err(Error::invalid(format!(
                    "endpoint {} belongs to network {}, not {}",
                    short(&endpoint.id),
                    short(&endpoint.network_id),
                    short(&req.network_id)
                )));
            }
            let network = state
                .networks
                .get(&endpoint.network_id)
                .ok_or_else(|| Error::not_found(format!("network {} not found", short(&endpoint.network_id))))?;
            // A link still being deleted can stand in the new one's way: passthru takes
            // its parent alone, and macvlan refuses a MAC twice on one parent.
            let in_the_way = state.pending.values().any(|p| {
                (network.link.is_passthru() && p.network_id == network.id)
                    || (endpoint.mac.is_some() && p.mac == endpoint.mac)
            });
            (endpoint.clone(), network.clone(), in_the_way)
        };
        if wait_for_deletes {
            self.process_pending().await?;
        }
        // One netlink round trip in the common case: the parent's index is cached, and a
        // leftover of the same name is only looked at if the kernel reports one.
        let mut child = ChildLink {
            name: endpoint.link_name.clone(),
            parent_index: self.parent_index(&network, false).await?,
            mode: network.link,
            mac: endpoint.mac,
            mtu: network.mtu,
            group: self.group,
        };
        let (mut refreshed_parent, mut removed_leftover) = (false, false);
        loop {
            match self.kernel.add_child(&child).await {
                Ok(()) => break,
                // The parent was re-made (a reboot, a reconcile) and has a new index.
                Err(e) if e.is(ENODEV) && !refreshed_parent => {
                    refreshed_parent = true;
                    child.parent_index = self.parent_index(&network, true).await?;
                }
                Err(e) if e.is(EEXIST) && !removed_leftover => {
                    removed_leftover = true;
                    self.remove_leftover(&endpoint.link_name).await?;
                }
                Err(e) => return Err(explain_child_error(e, &network, &endpoint)),
            }
        }
        tracing::debug!(endpoint = short(&endpoint.id), link = %endpoint.link_name, "joined");
        Ok(join_answer(&network, &endpoint))
    }

    /// The parent's interface index, from the cache unless `refresh`.
    async fn parent_index(&self, network: &NetworkRecord, refresh: bool) -> Result<u32> {
        if !refresh
            && let Some(&index) = self
                .parent_indexes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&network.parent)
        {
            return Ok(index);
        }
        let parent = self
            .kernel
            .link(&network.parent)
            .await
            .map_err(kernel_err)?
            .ok_or_else(|| {
                Error::kernel(format!(
                    "parent interface {} of network {} is missing",
                    network.parent,
                    short(&network.id)
                ))
            })?;
        self.parent_indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(network.parent.clone(), parent.index);
        Ok(parent.index)
    }

    /// A link with this endpoint's name exists: a leftover of an earlier Join of the same
    /// endpoint (names are unique per store, so a marked link of this name is this
    /// endpoint's), which goes; or someone else's, which stays and fails the Join.
    async fn remove_leftover(&self, name: &str) -> Result<()> {
        let Some(leftover) = self.kernel.link(name).await.map_err(kernel_err)? else {
            return Ok(()); // gone meanwhile
        };
        if !self.is_ours(&leftover) {
            return Err(Error::conflict(format!(
                "interface name {name} is taken by a link rustvlan did not make; remove that link"
            )));
        }
        tracing::info!(link = name, "removing this endpoint's leftover link before Join");
        self.kernel.delete(leftover.index).await.map_err(kernel_err)?;
        Ok(())
    }

    pub fn leave(&self, req: EndpointRequest) -> Empty {
        // dockerd moves the link back to the host itself; DeleteEndpoint removes it.
        tracing::debug!(endpoint = short(&req.endpoint_id), "leave");
        Empty {}
    }

    // ------------------------------------------------------------- kernel upkeep

    /// The group links are moved to just before a batched delete: this store's own.
    fn trash_group(&self) -> u32 {
        self.group ^ 1
    }

    /// Deletes the links queued by DeleteEndpoint and DeleteNetwork, all at once, and
    /// forgets them. A queued link that is not in this namespace (it died with its
    /// container) needs nothing. One batch runs at a time; links queued meanwhile wait
    /// for the next, which is how concurrent deletes share one RCU grace period.
    pub async fn process_pending(&self) -> Result<usize> {
        let _one_batch = self.deleting.lock().await;
        let queued: Vec<String> = self.state().pending.keys().cloned().collect();
        if queued.is_empty() {
            return Ok(0);
        }
        let names: HashSet<&str> = queued.iter().map(String::as_str).collect();
        let trash = self.trash_group();
        let links = self.kernel.links().await.map_err(kernel_err)?;
        let doomed: Vec<&LinkInfo> = links
            .iter()
            .filter(|l| names.contains(l.name.as_str()) && (self.is_ours(l) || l.group == trash))
            .collect();
        for l in links
            .iter()
            .filter(|l| names.contains(l.name.as_str()) && !doomed.iter().any(|d| d.index == l.index))
        {
            tracing::warn!(link = %l.name, "a link with a deleted endpoint's name is not rustvlan's; left in place");
        }
        // Group delete only if the trash group holds nothing else (another store whose
        // group number happens to be ours ^ 1).
        let intruders = links
            .iter()
            .any(|l| l.group == trash && !names.contains(l.name.as_str()));
        if !doomed.is_empty() {
            let indices: Vec<u32> = doomed.iter().map(|l| l.index).collect();
            let batched = if intruders {
                Err(Error::kernel("the trash group holds other links"))
            } else {
                self.kernel.delete_links(&indices, trash).await.map_err(kernel_err)
            };
            if let Err(e) = batched {
                tracing::debug!("batched delete not possible ({e}); deleting one by one");
                for l in &doomed {
                    self.delete_quietly(l.index, &l.name).await;
                }
            }
        }
        self.commit(|_| Ok(((), queued.iter().cloned().map(Change::DelPending).collect())))
            .await?;
        tracing::debug!(
            deleted = doomed.len(),
            queued = queued.len(),
            "queued link deletes done"
        );
        Ok(doomed.len())
    }

    async fn delete_quietly(&self, index: u32, name: &str) {
        match self.kernel.delete(index).await {
            Ok(true) => tracing::debug!(link = name, "link deleted"),
            Ok(false) => {}
            Err(e) => tracing::warn!(link = name, "cannot delete link: {e}; start-up reconcile will retry"),
        }
    }

    /// Start-up: delete links this store marked but no record owns (crash leftovers),
    /// re-make parents rustvlan made that are missing (host reboot), and count endpoints
    /// whose link is not in this namespace (their containers may still run).
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let links = self.kernel.links().await.map_err(kernel_err)?;
        let mut report = ReconcileReport::default();
        let (orphans, orphan_parents, missing_parents, without_link) = {
            let state = self.state();
            let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
            let orphans: Vec<LinkInfo> = links
                .iter()
                .filter(|l| self.is_ours(l) && is_child_kind(l) && state.endpoint_by_link(&l.name).is_none())
                .cloned()
                .collect();
            let orphan_parents: Vec<LinkInfo> = links
                .iter()
                .filter(|l| self.is_ours(l) && !is_child_kind(l) && !state.parents.contains_key(&l.name))
                .cloned()
                .collect();
            let missing: Vec<ParentRecord> = state
                .parents
                .values()
                .filter(|p| !names.contains(p.name.as_str()))
                .cloned()
                .collect();
            let without = state
                .endpoints
                .values()
                .filter(|e| !names.contains(e.link_name.as_str()))
                .count();
            (orphans, orphan_parents, missing, without)
        };
        // Deletes queued before a crash.
        report.pending_deletes_finished = self.process_pending().await?;
        for link in orphans {
            self.delete_quietly(link.index, &link.name).await;
            report.orphan_links_deleted.push(link.name);
        }
        for link in orphan_parents {
            self.delete_quietly(link.index, &link.name).await;
            report.orphan_parents_deleted.push(link.name);
        }
        for parent in missing_parents {
            let made = match &parent.kind {
                ParentKind::Vlan { base, id } => match self.kernel.link(base).await {
                    Ok(Some(b)) => self
                        .kernel
                        .add_vlan(&parent.name, b.index, *id, self.group)
                        .await
                        .map_err(|e| e.message),
                    Ok(None) => Err(format!("its base interface {base} does not exist")),
                    Err(e) => Err(e.message),
                },
                ParentKind::Dummy => {
                    let mtu = self.state().networks_on_parent(&parent.name).find_map(|n| n.mtu);
                    self.kernel
                        .add_dummy(&parent.name, mtu, self.group)
                        .await
                        .map_err(|e| e.message)
                }
            };
            match made {
                Ok(()) => report.parents_recreated.push(parent.name),
                Err(e) => {
                    tracing::warn!(parent = %parent.name, "cannot re-make missing parent: {e}");
                    report.parents_missing.push(parent.name);
                }
            }
        }
        report.endpoints_without_host_link = without_link;
        tracing::info!(
            orphan_links_deleted = ?report.orphan_links_deleted,
            orphan_parents_deleted = ?report.orphan_parents_deleted,
            parents_recreated = ?report.parents_recreated,
            parents_missing = ?report.parents_missing,
            endpoints_without_host_link = report.endpoints_without_host_link,
            pending_deletes_finished = report.pending_deletes_finished,
            "reconciled with the kernel"
        );
        Ok(report)
    }

    /// Releases addresses and pools dockerd stopped using without telling (see
    /// [`reclaim`]): what the previous sweep marked and is still unused, or, with `now`,
    /// everything unused at once.
    pub async fn sweep(&self, now: bool) -> Result<reclaim::SweepReport> {
        let report = self
            .commit(|state| {
                let mut marks = self.sweep_marks.lock().unwrap_or_else(|p| p.into_inner());
                Ok(reclaim::plan_sweep(state, &mut marks, now))
            })
            .await?;
        if report.is_empty() {
            tracing::debug!(
                addresses_marked = report.addresses_marked,
                pools_marked = report.pools_marked,
                "sweep: nothing to reclaim"
            );
        } else {
            tracing::info!(
                addresses = ?report.addresses_reclaimed,
                pools = ?report.pools_reclaimed,
                "sweep: reclaimed what no endpoint, gateway or aux address used since the last sweep \
                 (releases dockerd never sent, or requests it retried after a plugin crash)"
            );
        }
        Ok(report)
    }

    /// What the kernel shows of rustvlan's records now, for `rustvlan state`.
    pub async fn kernel_view(&self) -> Value {
        let links = match self.kernel.links().await {
            Ok(l) => l,
            Err(e) => return json!({ "error": e.message }),
        };
        let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let state = self.state();
        let endpoint_links: BTreeMap<&str, &str> = state
            .endpoints
            .values()
            .map(|e| {
                let place = if names.contains(e.link_name.as_str()) {
                    "in host namespace"
                } else {
                    "not in host namespace (inside a container, or gone)"
                };
                (e.id.as_str(), place)
            })
            .collect();
        let parents: BTreeMap<&str, &str> = state
            .networks
            .values()
            .map(|n| {
                (
                    n.parent.as_str(),
                    if names.contains(n.parent.as_str()) {
                        "present"
                    } else {
                        "missing"
                    },
                )
            })
            .collect();
        json!({ "endpoint_links": endpoint_links, "parents": parents })
    }
}

/// The families a network has enabled must have pools, as Docker's own drivers check;
/// dockerd 28 says whether IPv4 is on (20.10 does not: IPv4 always is).
fn check_families(config: &NetworkConfig, ipv4: &[Subnet], ipv6: &[Subnet]) -> Result<()> {
    match config.enable_ipv4 {
        Some(true) if ipv4.is_empty() => Err(Error::invalid(
            "IPv4 is enabled but IPv4Data has no subnet; give --subnet, or --ipv4=false for an IPv6-only network",
        )),
        Some(false) if !ipv4.is_empty() => Err(Error::invalid(
            "IPv4 is disabled (--ipv4=false) but IPv4Data has a subnet",
        )),
        _ if config.enable_ipv6 && ipv6.is_empty() => Err(Error::invalid(
            "IPv6 is enabled but IPv6Data has no subnet; give an IPv6 --subnet",
        )),
        _ => Ok(()),
    }
}

/// Endpoint links are macvlan or ipvlan; the parents rustvlan makes are VLAN or dummy.
fn is_child_kind(link: &LinkInfo) -> bool {
    matches!(link.kind.as_deref(), Some("macvlan" | "ipvlan"))
}

fn check_mtu(record: &NetworkRecord, parent: &LinkInfo) -> Result<()> {
    match record.mtu {
        Some(mtu) if mtu > parent.mtu => Err(Error::invalid(format!(
            "mtu {mtu} is above the MTU {} of parent {}",
            parent.mtu, parent.name
        ))),
        _ => Ok(()),
    }
}

/// Checks a new network against the others on its parent.
fn check_parent_conflicts(state: &State, new: &NetworkRecord) -> Result<()> {
    let parent = &new.parent;
    for other in state.networks_on_parent(parent) {
        let other_id = short(&other.id);
        if other.link.is_passthru() {
            return Err(Error::conflict(format!(
                "parent {parent} is taken by macvlan passthru network {other_id}; passthru needs its parent alone"
            )));
        }
        if new.link.is_passthru() {
            return Err(Error::conflict(format!(
                "macvlan passthru needs parent {parent} alone, but network {other_id} uses it"
            )));
        }
        if other.link.kind_name() != new.link.kind_name() {
            return Err(Error::conflict(format!(
                "parent {parent} already carries {} network {other_id}; macvlan and ipvlan networks cannot share a parent (the kernel refuses it)",
                other.link.kind_name()
            )));
        }
        for mine in new.subnets() {
            if let Some(theirs) = other.subnets().find(|s| overlaps(&s.pool, &mine.pool)) {
                return Err(Error::conflict(format!(
                    "subnet {} overlaps subnet {} of network {other_id} on parent {parent}",
                    mine.pool, theirs.pool
                )));
            }
        }
    }
    Ok(())
}

fn parse_endpoint_address(field: &str, text: Option<&str>, v6: bool) -> Result<Option<IpNetwork>> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let net: IpNetwork = text
        .parse()
        .ok()
        .filter(|_| text.contains('/'))
        .ok_or_else(|| Error::invalid(format!("{field} {text:?} is not an address in CIDR notation")))?;
    if net.is_ipv6() != v6 {
        let family = if v6 { "IPv6" } else { "IPv4" };
        return Err(Error::invalid(format!("{field} {text} is not an {family} address")));
    }
    Ok(Some(net))
}

/// Decides an endpoint's record: address checks, MAC, host link name.
fn plan_endpoint(
    state: &State,
    network: &NetworkRecord,
    endpoint_id: &str,
    ipv4: Option<IpNetwork>,
    ipv6: Option<IpNetwork>,
    requested_mac: Option<MacAddr>,
) -> Result<EndpointRecord> {
    let net_id = short(&network.id);
    for (address, subnets) in [(ipv4, &network.ipv4), (ipv6, &network.ipv6)] {
        if let Some(a) = address
            && !subnets.is_empty()
            && !subnets.iter().any(|s| s.pool.contains(a.ip()))
        {
            let list: Vec<String> = subnets.iter().map(|s| s.pool.to_string()).collect();
            return Err(Error::invalid(format!(
                "address {} is not in the subnets of network {net_id} ({})",
                a.ip(),
                list.join(", ")
            )));
        }
    }
    let siblings: Vec<&EndpointRecord> = state.endpoints_of(&network.id).collect();
    if network.link.is_passthru()
        && let Some(first) = siblings.first()
    {
        return Err(Error::conflict(format!(
            "macvlan passthru network {net_id} already has endpoint {}; passthru gives the parent to one container",
            short(&first.id)
        )));
    }
    let (mac, mac_generated) = match network.link {
        LinkMode::Ipvlan { .. } => {
            if let Some(mac) = requested_mac {
                return Err(Error::invalid(format!(
                    "ipvlan interfaces share the parent's MAC: MAC address {mac} cannot be set on ipvlan network {net_id}"
                )));
            }
            (None, false)
        }
        LinkMode::Macvlan { .. } => match requested_mac {
            Some(mac) => {
                if let Some(other) = siblings.iter().find(|e| e.mac == Some(mac)) {
                    return Err(Error::conflict(format!(
                        "MAC address {mac} is already used by endpoint {} on network {net_id}",
                        short(&other.id)
                    )));
                }
                (Some(mac), false)
            }
            // Passthru hands the parent itself to the container: it keeps the parent's
            // MAC, since setting another would change the NIC's own address.
            None if network.link.is_passthru() => (None, false),
            None => {
                let mac = std::iter::repeat_with(MacAddr::random_local)
                    .find(|m| !siblings.iter().any(|e| e.mac == Some(*m)))
                    .expect("an endless supply of random MACs");
                (Some(mac), true)
            }
        },
    };
    Ok(EndpointRecord {
        id: endpoint_id.to_string(),
        network_id: network.id.clone(),
        link_name: link_name_for(state, endpoint_id),
        mac,
        mac_generated,
        ipv4,
        ipv6,
    })
}

/// `rv` and the start of the endpoint id, lengthened (then randomised) only if another
/// endpoint already has that name.
fn link_name_for(state: &State, endpoint_id: &str) -> String {
    let room = IFNAME_MAX - LINK_PREFIX.len();
    (12..=room)
        .map(|n| format!("{LINK_PREFIX}{}", crate::util::prefix(endpoint_id, n)))
        .chain(std::iter::repeat_with(|| {
            let mut bytes = [0u8; IFNAME_MAX / 2];
            crate::util::random_bytes(&mut bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("{LINK_PREFIX}{}", &hex[..room])
        }))
        .find(|name| state.link_name_free(name))
        .expect("an endless supply of names")
}

fn pending_delete(endpoint: &EndpointRecord) -> PendingDelete {
    PendingDelete {
        link_name: endpoint.link_name.clone(),
        endpoint_id: endpoint.id.clone(),
        network_id: endpoint.network_id.clone(),
        mac: endpoint.mac,
        since: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

fn endpoint_answer(record: &EndpointRecord) -> CreateEndpointResponse {
    // Only what dockerd left empty: a MAC rustvlan chose.
    CreateEndpointResponse {
        interface: record.mac.filter(|_| record.mac_generated).map(|mac| InterfaceAnswer {
            mac_address: Some(mac.to_string()),
        }),
    }
}

fn join_answer(network: &NetworkRecord, endpoint: &EndpointRecord) -> JoinResponse {
    let gateway_for = |address: Option<IpNetwork>, subnets: &[crate::model::Subnet]| {
        let address = address?;
        subnets
            .iter()
            .find(|s| s.pool.contains(address.ip()))
            .and_then(|s| s.gateway)
            .map(|g| g.ip().to_string())
    };
    let mut answer = JoinResponse {
        interface_name: InterfaceName {
            src_name: endpoint.link_name.clone(),
            dst_prefix: "eth".to_string(),
        },
        gateway: None,
        gateway_ipv6: None,
        static_routes: Vec::new(),
        // Never attach rustvlan containers to docker_gwbridge.
        disable_gateway_service: true,
    };
    if network.internal {
        return answer;
    }
    if network.link.is_routed() {
        // ipvlan l3/l3s: no gateway on the wire; everything leaves through the device.
        for (address, destination) in [(endpoint.ipv4, "0.0.0.0/0"), (endpoint.ipv6, "::/0")] {
            if address.is_some() {
                answer.static_routes.push(StaticRoute {
                    destination: destination.to_string(),
                    route_type: ROUTE_TYPE_CONNECTED,
                    next_hop: None,
                });
            }
        }
    } else {
        answer.gateway = gateway_for(endpoint.ipv4, &network.ipv4);
        answer.gateway_ipv6 = gateway_for(endpoint.ipv6, &network.ipv6);
    }
    answer
}

fn explain_parent_error(e: KernelError, name: &str) -> Error {
    if e.is(EOPNOTSUPP) {
        Error::kernel(format!(
            "{}: this kernel cannot make that kind of link (is the 8021q or dummy module available?)",
            e.message
        ))
    } else if e.is(EEXIST) {
        Error::conflict(format!("{}: {name} appeared while rustvlan was making it", e.message))
    } else {
        kernel_err(e)
    }
}

fn explain_child_error(e: KernelError, network: &NetworkRecord, endpoint: &EndpointRecord) -> Error {
    let kind = network.link.kind_name();
    let parent = &network.parent;
    if e.is(EBUSY) {
        Error::conflict(format!(
            "{}: parent {parent} already has links that cannot live beside a {} child (macvlan and ipvlan cannot share a parent; passthru takes it alone)",
            e.message, network.link
        ))
    } else if e.is(EADDRINUSE) {
        Error::conflict(format!(
            "{}: MAC address {} is already used on parent {parent}",
            e.message,
            endpoint.mac.map(|m| m.to_string()).unwrap_or_default()
        ))
    } else if e.is(EOPNOTSUPP) {
        Error::kernel(format!(
            "{}: this kernel has no {kind} support (modprobe {kind})",
            e.message
        ))
    } else if e.is(EINVAL) && network.mtu.is_some() {
        Error::kernel(format!(
            "{}: is mtu {} above the parent's?",
            e.message,
            network.mtu.unwrap_or_default()
        ))
    } else {
        kernel_err(e)
    }
}

#[cfg(test)]
mod tests;
