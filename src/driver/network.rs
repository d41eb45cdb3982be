//! CreateNetwork and DeleteNetwork (and dockerd 28's GwAllocCheck before them): options
//! checked, the parent found or made (a VLAN or a dummy), the record written; on delete,
//! the record removed before the parent rustvlan made goes.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Driver;
use super::calls::{GatewayNeeds, HostAddressToClaim, NetworkSpec};
use super::host_access::{choose_host_address, host_address_to_claim, reserve_host_address};
use super::options::{NetworkConfig, check_id, overlaps, parse_network_options, parse_subnets};
use super::pending_delete;
use crate::error::{Error, Result};
use crate::kernel::{Errno, Kernel, KernelError, LinkInfo};
use crate::model::{EndpointRecord, Family, NetworkRecord, ParentKind, ParentRecord, Subnet};
use crate::state::{Change, State};
use crate::util::short_id;

const GW_CHECK_ID: &str = "gwalloccheck";

impl<K: Kernel> Driver<K> {
    /// dockerd 28 asks this before CreateNetwork. Like Docker 28's macvlan, no gateway
    /// address is reserved where containers get no gateway: `--internal` networks,
    /// networks without a parent (an isolated dummy), and ipvlan l3/l3s, which route
    /// through the device. There the first container gets the subnet's first address,
    /// and a /31 holds two containers.
    pub fn gateway_needs(&self, options: &BTreeMap<String, Value>) -> Result<GatewayNeeds> {
        // The network has no id yet; the id only names a dummy parent, not made here.
        let config = parse_network_options(GW_CHECK_ID, options)?;
        let needed = !(config.internal || config.parent.is_dummy() || config.link.is_routed());
        Ok(GatewayNeeds {
            ipv4: needed,
            ipv6: needed,
        })
    }

    /// What the IPAM must claim for this host before [`Driver::create_network`]: the
    /// host's address when `host_access=on` is asked on a shared pool; None otherwise,
    /// and for a network that exists already.
    pub fn host_address_to_claim(&self, spec: &NetworkSpec) -> Result<Option<HostAddressToClaim>> {
        let (record, config) = network_record(spec)?;
        let Some(request) = &config.host_access else {
            return Ok(None);
        };
        let state = self.state();
        if state.networks.contains_key(&record.id) {
            return Ok(None);
        }
        host_address_to_claim(&state, &record, request)
    }

    /// Creates the network. With `host_access=on` on a shared pool, `spec.host_address`
    /// is the address [`Driver::host_address_to_claim`] asked to be claimed.
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<()> {
        let (mut record, config) = network_record(&spec)?;
        let _topology = self.topology.write().await;
        {
            let state = self.state();
            if let Some(existing) = state.networks.get(&record.id) {
                return repeated_create(existing, &record, &config);
            }
            check_parent_conflicts(&state, &record)?;
            if let Some(request) = &config.host_access {
                record.host_access = Some(choose_host_address(&state, &record, request, spec.host_address)?);
            }
        }
        let made = self.ensure_parent(&config, &record).await?;
        let shim = match self.set_up_host_access(&record).await {
            Ok(shim) => shim,
            Err(err) => {
                for (parent, index) in made.into_iter().rev() {
                    self.delete_quietly(index, &parent.name).await;
                }
                return Err(err);
            }
        };
        let committed = self
            .commit(|state| {
                let mut changes = vec![Change::PutNetwork(record.clone())];
                changes.extend(made.iter().map(|(parent, _)| Change::PutParent(parent.clone())));
                for subnet in record.subnets() {
                    let gateway = subnet.gateway.map(|g| g.ip());
                    if let Some(claim) = state
                        .ipam
                        .plan_claim(&subnet.address_space, subnet.pool, gateway, &record.id)
                    {
                        changes.push(Change::Ipam(claim));
                    }
                }
                changes.extend(reserve_host_address(state, &record)?);
                Ok(((), changes))
            })
            .await;
        if let Err(err) = committed {
            if let Some(shim) = shim {
                self.undo_host_access(&record, shim).await;
            }
            for (parent, index) in made.into_iter().rev() {
                self.delete_quietly(index, &parent.name).await;
            }
            return Err(err);
        }
        tracing::info!(
            network = short_id(&record.id),
            parent = %record.parent,
            link = %record.link,
            made_parents = made.len(),
            host_access = ?record.host_access.as_ref().map(|h| h.address),
            "network created"
        );
        Ok(())
    }

    /// Finds the parent, or makes it (a VLAN, with its outer VLAN for QinQ, or a
    /// dummy). Returns what it made, outer first.
    async fn ensure_parent(&self, config: &NetworkConfig, record: &NetworkRecord) -> Result<Vec<(ParentRecord, u32)>> {
        let name = config.parent.name();
        if let Some(link) = self.kernel.link(name).await? {
            check_mtu(record, &link)?;
            return Ok(Vec::new());
        }
        let Some(kind) = config.parent.make.clone() else {
            return Err(Error::invalid(format!("parent interface {name} does not exist")));
        };
        let mut made = Vec::new();
        if let Some(outer) = &config.parent.outer
            && self.kernel.link(&outer.name).await?.is_none()
        {
            let index = self.make_parent(outer, record).await?;
            made.push((outer.clone(), index));
        }
        let inner = ParentRecord {
            name: name.to_string(),
            kind,
            alias: config.parent.alias.clone(),
        };
        match self.make_parent(&inner, record).await {
            Ok(index) => made.push((inner, index)),
            Err(e) => {
                for (parent, index) in made.into_iter().rev() {
                    self.delete_quietly(index, &parent.name).await;
                }
                return Err(e);
            }
        }
        Ok(made)
    }

    /// Makes one parent link: a VLAN on its base (which must exist), or a dummy.
    async fn make_parent(&self, parent: &ParentRecord, record: &NetworkRecord) -> Result<u32> {
        let name = parent.name.as_str();
        let result = match &parent.kind {
            ParentKind::Vlan { base, id, protocol } => {
                let base_link = self.kernel.link(base).await?.ok_or_else(|| {
                    Error::invalid(format!(
                        "parent interface {base} does not exist, so VLAN {id} cannot be made on it"
                    ))
                })?;
                check_mtu(record, &base_link)?;
                self.kernel
                    .add_vlan(name, base_link.index, *id, *protocol, self.group)
                    .await
            }
            ParentKind::Dummy => self.kernel.add_dummy(name, record.mtu, self.group).await,
        };
        result.map_err(|e| explain_parent_error(e, name))?;
        let link = self
            .kernel
            .link(name)
            .await?
            .ok_or_else(|| Error::kernel(format!("parent {name} vanished right after it was made")))?;
        tracing::info!(parent = name, alias = ?parent.alias, "parent link made");
        Ok(link.index)
    }

    pub async fn delete_network(&self, network_id: &str) -> Result<()> {
        let _topology = self.topology.write().await;
        let id = network_id.to_string();
        let removed = self
            .commit(|state| {
                let Some(network) = state.networks.get(&id) else {
                    return Ok((None, Vec::new()));
                };
                let stale: Vec<EndpointRecord> = state.endpoints_of(&id).cloned().collect();
                let parents = parents_to_remove(state, network);
                let last_host_access = network.host_access.is_some()
                    && !state
                        .networks_on_parent(&network.parent)
                        .any(|n| n.id != id && n.host_access.is_some());
                let mut changes: Vec<Change> = stale
                    .iter()
                    .flat_map(|e| [Change::DelEndpoint(e.id.clone()), Change::PutPending(pending_delete(e))])
                    .collect();
                changes.push(Change::DelNetwork(id.clone()));
                changes.extend(parents.iter().map(|p| Change::DelParent(p.name.clone())));
                Ok((Some((network.clone(), stale, parents, last_host_access)), changes))
            })
            .await?;
        let Some((network, stale, parents, last_host_access)) = removed else {
            tracing::debug!(network = short_id(&id), "delete of an unknown network: nothing to do");
            return Ok(());
        };
        // Routes and the shim go before the parent they hang off.
        self.tear_down_host_access(&network, &stale, last_host_access).await;
        // The parent goes only once no link being deleted hangs off it.
        if let Err(e) = self.process_pending().await {
            tracing::warn!("deleting queued links failed: {e}; start-up reconcile will retry");
        }
        // The inner VLAN before the outer one of QinQ.
        for parent in parents {
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
            network = short_id(&network.id),
            stale_endpoints = stale.len(),
            "network deleted"
        );
        Ok(())
    }
}

/// The parents rustvlan made that go with this network: its own, unless another network
/// or an inner VLAN uses it, then a QinQ outer VLAN that nothing else uses.
/// The network a create asks for, its options checked, before any host address.
fn network_record(spec: &NetworkSpec) -> Result<(NetworkRecord, NetworkConfig)> {
    check_id("NetworkID", &spec.network_id)?;
    let config = parse_network_options(&spec.network_id, &spec.options)?;
    let ipv4 = parse_subnets("IPv4Data", &spec.ipv4, Family::V4)?;
    let ipv6 = parse_subnets("IPv6Data", &spec.ipv6, Family::V6)?;
    check_families(&config, &ipv4, &ipv6)?;
    let record = NetworkRecord {
        id: spec.network_id.clone(),
        link: config.link,
        parent: config.parent.name().to_string(),
        mtu: config.mtu,
        internal: config.internal,
        enable_ipv6: config.enable_ipv6,
        ipv4,
        ipv6,
        options: config.options.clone(),
        host_access: None,
    };
    Ok((record, config))
}

/// A CreateNetwork for a network that exists: fine if it asks for the same.
fn repeated_create(existing: &NetworkRecord, asked: &NetworkRecord, config: &NetworkConfig) -> Result<()> {
    // S was chosen by the first create; the request is the same without it.
    let same = NetworkRecord {
        host_access: existing.host_access.clone(),
        ..asked.clone()
    } == *existing
        && existing.host_access.is_some() == config.host_access.is_some();
    if same {
        Ok(())
    } else {
        Err(Error::conflict(format!(
            "network {} already exists with other settings",
            short_id(&asked.id)
        )))
    }
}

fn parents_to_remove(state: &State, network: &NetworkRecord) -> Vec<ParentRecord> {
    let unused = |name: &str, besides: &str| {
        !state.networks_on_parent(name).any(|n| n.id != network.id)
            && !state
                .parents
                .values()
                .any(|p| p.name != besides && matches!(&p.kind, ParentKind::Vlan { base, .. } if base == name))
    };
    let mut out = Vec::new();
    if let Some(own) = state.parents.get(&network.parent).filter(|p| unused(&p.name, &p.name)) {
        out.push(own.clone());
        if let ParentKind::Vlan { base, .. } = &own.kind
            && let Some(outer) = state.parents.get(base)
            && unused(&outer.name, &own.name)
        {
            out.push(outer.clone());
        }
    }
    out
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
        let other_id = short_id(&other.id);
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
        if other.link.kind() != new.link.kind() {
            return Err(Error::conflict(format!(
                "parent {parent} already carries {} network {other_id}; macvlan and ipvlan networks cannot share a parent (the kernel refuses it)",
                other.link.kind()
            )));
        }
        // A rustvlan-dhcp network without --subnet (0.0.0.0/0) takes its subnet from
        // its leases: unknown here, so it overlaps nothing (a LAN with a DHCP range
        // and some fixed addresses carries both kinds of network on one parent).
        let known = |s: &&crate::model::Subnet| s.pool.prefix() != 0;
        for mine in new.subnets().filter(known) {
            if let Some(theirs) = other.subnets().filter(known).find(|s| overlaps(&s.pool, &mine.pool)) {
                return Err(Error::conflict(format!(
                    "subnet {} overlaps subnet {} of network {other_id} on parent {parent}",
                    mine.pool, theirs.pool
                )));
            }
        }
    }
    Ok(())
}

fn explain_parent_error(e: KernelError, name: &str) -> Error {
    if e.is(Errno::EOPNOTSUPP) {
        Error::kernel(format!(
            "{}: this kernel cannot make that kind of link (is the 8021q or dummy module available?)",
            e
        ))
        .caused_by(e)
    } else if e.is(Errno::EEXIST) {
        Error::conflict(format!("{}: {name} appeared while rustvlan was making it", e)).caused_by(e)
    } else {
        Error::from(e)
    }
}
