//! `rustvlan status`: what rustvlan holds and whether the kernel still agrees.
//!
//! Two steps. [`observe`] asks the kernel (the host namespace, and the namespace of
//! every container an endpoint joined) through a [`Kernel`]; [`StatusReport::build`] is
//! pure: it lays the records beside that observation and names every disagreement
//! (drift). The JSON form of [`StatusReport`] is `rustvlan status --json`, documented in
//! the README; fields are only ever added.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::dump::StateDump;
use crate::ipam::pool_capacity;
use crate::kernel::{KResult, Kernel, LinkInfo, LinkType};
use crate::model::{EndpointRecord, LinkMode, MacAddr, ParentKind};
use crate::util::short_id;

/// What the kernel showed, for [`StatusReport::build`].
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub host_links: Vec<LinkInfo>,
    /// By sandbox path (a joined endpoint's container namespace).
    pub sandboxes: BTreeMap<String, Sandbox>,
}

#[derive(Debug, Clone)]
pub enum Sandbox {
    /// No namespace is bound at the path any more: the container is gone.
    Gone,
    Links(Vec<LinkInfo>),
    /// It could not be looked into (not root, not a namespace file).
    Unreadable(String),
}

/// Asks the kernel what `status` needs to know about `records`.
pub async fn observe<K: Kernel>(kernel: &K, records: &StateDump) -> KResult<Observation> {
    let host_links = kernel.links().await?;
    let mut sandboxes = BTreeMap::new();
    let paths: BTreeSet<&str> = records
        .endpoints
        .values()
        .filter_map(|e| e.sandbox.as_deref())
        .collect();
    for path in paths {
        let seen = match kernel.links_in(Path::new(path)).await {
            Ok(Some(links)) => Sandbox::Links(links),
            Ok(None) => Sandbox::Gone,
            Err(e) => Sandbox::Unreadable(e.to_string()),
        };
        sandboxes.insert(path.to_string(), seen);
    }
    Ok(Observation { host_links, sandboxes })
}

/// Where the records came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The running plugin, over its socket.
    Plugin,
    /// The store on disk: no plugin answered.
    Store,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub source: Source,
    pub networks: Vec<NetworkStatus>,
    pub pools: Vec<PoolStatus>,
    pub endpoints: Vec<EndpointStatus>,
    /// Links of removed endpoints, still being deleted.
    pub pending_deletes: Vec<String>,
    pub parents_made: Vec<ParentStatus>,
    /// Pools shared through etcd: with which etcd, as which host, and whether it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStatus>,
    /// Leases from the LAN's DHCP server (`rustvlan-dhcp` pools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<crate::model::LeaseRecord>,
    /// Networks with `host_access=on`: their shim and the host's address on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_access: Vec<HostAccessStatus>,
    /// Empty when the kernel agrees with the records.
    pub drift: Vec<Drift>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAccessStatus {
    pub network: String,
    pub parent: String,
    pub shim: String,
    /// The host's address in the network, on the shim.
    pub address: IpNetwork,
    pub shim_present: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdStatus {
    pub endpoints: String,
    pub host_id: String,
    /// It answered a read just now.
    pub answering: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub id: String,
    /// `{"kind": "macvlan", "mode": "bridge"}`, `{"kind": "ipvlan", "mode": "l2", "flag": "bridge"}`.
    pub link: LinkMode,
    pub parent: String,
    pub subnets: Vec<IpNetwork>,
    pub internal: bool,
    pub endpoints: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool id dockerd holds.
    pub id: String,
    pub subnet: IpNetwork,
    pub ip_range: Option<IpNetwork>,
    /// The rustvlan network using it; None for a pool another driver uses, or one whose
    /// network is not created yet.
    pub network: Option<String>,
    /// Addresses allocated, gateways included.
    pub used: u128,
    pub free: u128,
    /// Addresses the pool can hand out (an IPv6 /64 has 2^64 - 1).
    pub capacity: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub id: String,
    pub network: String,
    /// The link's name in the host namespace; dockerd renames it in the container.
    pub link: String,
    pub ipv4: Option<IpNetwork>,
    pub ipv6: Option<IpNetwork>,
    pub mac: Option<String>,
    pub link_is: LinkIs,
}

/// Where an endpoint's link is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "where", rename_all = "snake_case")]
pub enum LinkIs {
    /// In the host namespace: made by Join and not moved yet, or back after Leave.
    Host,
    /// In the container's namespace, under the name dockerd gave it.
    Container { sandbox: String, name: String },
    /// Not joined: Join makes the link.
    NotJoined,
    /// Not looked for (the namespace could not be read, or the parent is missing).
    Unknown { why: String },
    /// Expected and not found: see the drift section.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentStatus {
    pub name: String,
    /// `vlan` or `dummy`.
    pub kind: String,
    /// `802.1ad vlan 100 on eth0 (for enp0s31f6.100.10)`.
    #[serde(default)]
    pub describe: String,
    pub present: bool,
}

/// A disagreement between the records and the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// A macvlan or ipvlan link carrying this store's mark that no endpoint owns.
    OrphanLink { link: String, link_kind: String },
    /// A VLAN or dummy link carrying this store's mark that is no recorded parent.
    OrphanParent { link: String },
    /// A joined endpoint whose container namespace has no link of it.
    EndpointLinkGone {
        endpoint: String,
        network: String,
        sandbox: String,
    },
    /// A joined endpoint whose container namespace is gone.
    ContainerGone {
        endpoint: String,
        network: String,
        sandbox: String,
    },
    /// A network's parent interface does not exist.
    ParentMissing { parent: String, networks: Vec<String> },
    /// An address this host records in a shared pool that another host holds in etcd.
    SharedConflict {
        plan: String,
        ip: std::net::IpAddr,
        held_by: String,
    },
    /// A DHCP lease whose last renewal failed (NAK, no answer, another address).
    LeaseTrouble {
        address: IpNetwork,
        server: std::net::Ipv4Addr,
        trouble: String,
    },
    /// A host-access network's shim is not in the host namespace.
    ShimMissing { shim: String, parent: String },
    /// Shared pools are configured and etcd does not answer.
    EtcdUnreachable { endpoints: String, trouble: String },
}

impl Drift {
    /// The same finding, though etcd's error may be worded differently each time.
    fn same_as(&self, other: &Drift) -> bool {
        match (self, other) {
            (Drift::EtcdUnreachable { endpoints: a, .. }, Drift::EtcdUnreachable { endpoints: b, .. }) => a == b,
            _ => self == other,
        }
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::OrphanLink { link, link_kind } => write!(
                f,
                "orphan link {link}: a {link_kind} link with rustvlan's mark that no endpoint owns (left by a crash, or made \
                 behind rustvlan's back); restarting rustvlan deletes it"
            ),
            Drift::OrphanParent { link } => write!(
                f,
                "orphan parent {link}: a link with rustvlan's mark that is no parent rustvlan made; restarting rustvlan \
                 deletes it"
            ),
            Drift::EndpointLinkGone {
                endpoint,
                network,
                sandbox,
            } => write!(
                f,
                "endpoint {} of network {}: its link is gone from the container's namespace {sandbox} (deleted behind \
                 rustvlan's back); restart the container to get a new one",
                short_id(endpoint),
                short_id(network)
            ),
            Drift::ContainerGone {
                endpoint,
                network,
                sandbox,
            } => write!(
                f,
                "endpoint {} of network {}: its container's namespace {sandbox} is gone but the endpoint was never \
                 removed (dockerd crashed?); `docker network disconnect -f` or restarting dockerd removes it",
                short_id(endpoint),
                short_id(network)
            ),
            Drift::SharedConflict { plan, ip, held_by } => write!(
                f,
                "address {ip} of shared plan {plan}: recorded here, but held by host {held_by} in etcd (it was reclaimed \
                 while this host was away); the container using it here must move to another address"
            ),
            Drift::EtcdUnreachable { trouble, .. } => {
                // The trouble names etcd and its endpoints (see `SharedDump::trouble`).
                write!(
                    f,
                    "{trouble}; shared pools cannot allocate until it answers, local pools work, running containers \
                     are not affected"
                )
            }
            Drift::LeaseTrouble {
                address,
                server,
                trouble,
            } => write!(
                f,
                "DHCP lease {address} from {server}: {trouble}; the container keeps its address until it is restarted"
            ),
            Drift::ShimMissing { shim, parent } => write!(
                f,
                "host-access shim {shim} on {parent} is missing: the host cannot reach those networks' containers; \
                 restarting rustvlan re-makes it"
            ),
            Drift::ParentMissing { parent, networks } => {
                let networks: Vec<&str> = networks.iter().map(|n| short_id(n)).collect();
                write!(
                    f,
                    "parent {parent} of network {} is missing: containers cannot join; bring the interface back, or \
                     restart rustvlan if it made it",
                    networks.join(", ")
                )
            }
        }
    }
}

/// The records and what the kernel showed, side by side, for [`StatusReport::build`].
struct Look<'a> {
    records: &'a StateDump,
    seen: &'a Observation,
    /// The host namespace's links by name.
    host: BTreeMap<&'a str, &'a LinkInfo>,
    /// The host-access shims the records call for: shim name -> parent.
    shims: BTreeMap<String, String>,
}

impl<'a> Look<'a> {
    fn new(records: &'a StateDump, seen: &'a Observation) -> Look<'a> {
        Look {
            records,
            seen,
            host: seen.host_links.iter().map(|l| (l.name.as_str(), l)).collect(),
            shims: crate::driver::host_access::expected_shims(records.networks.values()),
        }
    }

    /// Whether this store made the link.
    fn ours(&self, link: &LinkInfo) -> bool {
        link.group == self.records.link_group
    }

    /// Links of this store in the host namespace that no record accounts for.
    fn orphans(&self) -> Vec<Drift> {
        let records = self.records;
        let endpoint_links: BTreeSet<&str> = records.endpoints.values().map(|e| e.link_name.as_str()).collect();
        let mut drift = Vec::new();
        for link in self.seen.host_links.iter().filter(|l| self.ours(l)) {
            if link.kind.is_child() {
                if !endpoint_links.contains(link.name.as_str())
                    && !records.pending_deletes.contains_key(&link.name)
                    && !self.shims.contains_key(&link.name)
                {
                    drift.push(Drift::OrphanLink {
                        link: link.name.clone(),
                        link_kind: link_kind_name(&link.kind),
                    });
                }
            } else if !records.parents.contains_key(&link.name) {
                drift.push(Drift::OrphanParent {
                    link: link.name.clone(),
                });
            }
        }
        drift
    }

    /// Parents that networks name and the host does not have.
    fn missing_parents(&self) -> Vec<Drift> {
        let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for network in self.records.networks.values() {
            if !self.host.contains_key(network.parent.as_str()) {
                missing
                    .entry(network.parent.as_str())
                    .or_default()
                    .push(network.id.clone());
            }
        }
        missing
            .into_iter()
            .map(|(parent, networks)| Drift::ParentMissing {
                parent: parent.to_string(),
                networks,
            })
            .collect()
    }

    /// Where an endpoint's link is, and the drift that shows.
    fn endpoint_link(&self, e: &EndpointRecord) -> (LinkIs, Option<Drift>) {
        if self.host.contains_key(e.link_name.as_str()) {
            return (LinkIs::Host, None);
        }
        let parent_index = self
            .records
            .networks
            .get(&e.network_id)
            .and_then(|n| self.host.get(n.parent.as_str()))
            .map(|p| p.index);
        let unknown = |why: &str| LinkIs::Unknown { why: why.to_string() };
        let (sandbox, parent_index) = match (&e.sandbox, parent_index) {
            (None, _) => return (LinkIs::NotJoined, None),
            (Some(_), None) => return (unknown("the network's parent is missing"), None),
            (Some(sandbox), Some(index)) => (sandbox, index),
        };
        let links = match self.seen.sandboxes.get(sandbox) {
            None => return (unknown("its namespace was not looked into"), None),
            Some(Sandbox::Unreadable(why)) => return (unknown(why), None),
            Some(Sandbox::Gone) => {
                let gone = Drift::ContainerGone {
                    endpoint: e.id.clone(),
                    network: e.network_id.clone(),
                    sandbox: sandbox.clone(),
                };
                return (LinkIs::Missing, Some(gone));
            }
            Some(Sandbox::Links(links)) => links,
        };
        let found = links.iter().find(|l| {
            self.ours(l)
                && l.kind.is_child()
                && l.parent_index == Some(parent_index)
                && (e.mac.is_none() || l.mac == e.mac)
        });
        match found {
            Some(l) => (
                LinkIs::Container {
                    sandbox: sandbox.clone(),
                    name: l.name.clone(),
                },
                None,
            ),
            None => (
                LinkIs::Missing,
                Some(Drift::EndpointLinkGone {
                    endpoint: e.id.clone(),
                    network: e.network_id.clone(),
                    sandbox: sandbox.clone(),
                }),
            ),
        }
    }

    fn host_access(&self) -> Vec<HostAccessStatus> {
        self.records
            .networks
            .values()
            .filter_map(|n| {
                let access = n.host_access.as_ref()?;
                let shim = crate::driver::host_access::shim_name(&n.parent);
                Some(HostAccessStatus {
                    network: n.id.clone(),
                    parent: n.parent.clone(),
                    shim_present: self.host.get(shim.as_str()).is_some_and(|l| self.ours(l)),
                    shim,
                    address: access.address,
                })
            })
            .collect()
    }

    fn parent_statuses(&self) -> Vec<ParentStatus> {
        self.records
            .parents
            .values()
            .map(|p| ParentStatus {
                name: p.name.clone(),
                kind: match p.kind {
                    ParentKind::Vlan { .. } => "vlan".to_string(),
                    ParentKind::Dummy => "dummy".to_string(),
                },
                describe: p.describe(),
                present: self.host.contains_key(p.name.as_str()),
            })
            .collect()
    }
}

/// etcd not answering, and addresses another host holds.
fn shared_drift(records: &StateDump) -> Vec<Drift> {
    let Some(shared) = &records.shared else {
        return Vec::new();
    };
    let trouble = match (&shared.trouble, shared.connected) {
        (Some(t), _) => Some(t.clone()),
        (None, false) => Some(format!(
            "etcd unreachable ({}): not reached since rustvlan started",
            shared.endpoints
        )),
        (None, true) => None,
    };
    let unreachable = trouble.map(|trouble| Drift::EtcdUnreachable {
        endpoints: shared.endpoints.clone(),
        trouble,
    });
    unreachable
        .into_iter()
        .chain(shared.conflicts.iter().map(|c| Drift::SharedConflict {
            plan: c.plan.clone(),
            ip: c.ip,
            held_by: c.held_by.clone(),
        }))
        .collect()
}

fn network_statuses(records: &StateDump) -> Vec<NetworkStatus> {
    records
        .networks
        .values()
        .map(|n| NetworkStatus {
            id: n.id.clone(),
            link: n.link,
            parent: n.parent.clone(),
            subnets: n.subnets().map(|s| s.pool).collect(),
            internal: n.internal,
            endpoints: records.endpoints.values().filter(|e| e.network_id == n.id).count(),
        })
        .collect()
}

fn pool_statuses(records: &StateDump) -> Vec<PoolStatus> {
    records
        .pools
        .iter()
        .map(|(id, p)| {
            let capacity = pool_capacity(&p.pool);
            let used = p.addresses.len() as u128;
            PoolStatus {
                id: id.clone(),
                subnet: p.pool,
                ip_range: p.sub_pool,
                network: p.claimed_by.clone(),
                used,
                free: capacity.saturating_sub(used),
                capacity,
            }
        })
        .collect()
}

impl StatusReport {
    /// The records beside what the kernel showed.
    pub fn build(records: &StateDump, seen: &Observation, source: Source) -> StatusReport {
        let look = Look::new(records, seen);
        let mut drift = look.orphans();
        let endpoints = records
            .endpoints
            .values()
            .map(|e| {
                let (link_is, found) = look.endpoint_link(e);
                drift.extend(found);
                EndpointStatus {
                    id: e.id.clone(),
                    network: e.network_id.clone(),
                    link: e.link_name.clone(),
                    ipv4: e.ipv4,
                    ipv6: e.ipv6,
                    mac: e.mac.map(|m: MacAddr| m.to_string()),
                    link_is,
                }
            })
            .collect();
        drift.extend(shared_drift(records));
        let host_access = look.host_access();
        for (shim, parent) in &look.shims {
            if !host_access.iter().any(|h| &h.shim == shim && h.shim_present) {
                drift.push(Drift::ShimMissing {
                    shim: shim.clone(),
                    parent: parent.clone(),
                });
            }
        }
        drift.extend(records.leases.iter().filter_map(|lease| {
            Some(Drift::LeaseTrouble {
                address: IpNetwork::V4(lease.address),
                server: lease.server,
                trouble: lease.trouble.clone()?,
            })
        }));
        drift.extend(look.missing_parents());
        StatusReport {
            source,
            networks: network_statuses(records),
            pools: pool_statuses(records),
            endpoints,
            pending_deletes: records.pending_deletes.keys().cloned().collect(),
            parents_made: look.parent_statuses(),
            etcd: records.shared.as_ref().map(|s| EtcdStatus {
                endpoints: s.endpoints.clone(),
                host_id: s.host_id.clone(),
                answering: s.connected && s.trouble.is_none(),
            }),
            leases: records.leases.clone(),
            host_access,
            drift,
        }
    }

    /// Keeps only the drift that `again` (a second look, a moment later) also found, so
    /// that a container starting or stopping between reading the records and asking the
    /// kernel is not reported.
    pub fn confirm_drift(&mut self, again: &StatusReport) {
        self.drift.retain(|d| again.drift.iter().any(|a| a.same_as(d)));
    }

    /// The report as a person reads it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_header(&mut out);
        self.write_networks(&mut out);
        self.write_pools(&mut out);
        self.write_endpoints(&mut out);
        self.write_links_and_parents(&mut out);
        self.write_leases(&mut out);
        self.write_host_access_and_drift(&mut out);
        out
    }

    /// Where the records came from, and etcd's state.
    fn write_header(&self, out: &mut String) {
        use std::fmt::Write;
        let source = match self.source {
            Source::Plugin => "the running plugin",
            Source::Store => "the store (no plugin is running)",
        };
        let _ = writeln!(out, "rustvlan status, records from {source}");
        if let Some(etcd) = &self.etcd {
            let answering = if etcd.answering { "answering" } else { "NOT answering" };
            let _ = writeln!(
                out,
                "shared pools: etcd {} ({answering}), this host is {}",
                etcd.endpoints, etcd.host_id
            );
        }
    }

    fn write_networks(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "\nNETWORKS ({})", self.networks.len());
        if !self.networks.is_empty() {
            let _ = writeln!(
                out,
                "  {:<12}  {:<22}  {:<15}  {:>9}  SUBNETS",
                "ID", "LINK", "PARENT", "ENDPOINTS"
            );
        }
        for n in &self.networks {
            let subnets: Vec<String> = n.subnets.iter().map(|s| s.to_string()).collect();
            let internal = if n.internal { "  (internal)" } else { "" };
            let _ = writeln!(
                out,
                "  {:<12}  {:<22}  {:<15}  {:>9}  {}{internal}",
                short_id(&n.id),
                n.link.to_string(),
                n.parent,
                n.endpoints,
                subnets.join(" ")
            );
        }
    }

    fn write_pools(&self, out: &mut String) {
        use std::fmt::Write;
        let text = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        let _ = writeln!(out, "\nPOOLS ({})", self.pools.len());
        if !self.pools.is_empty() {
            let _ = writeln!(
                out,
                "  {:<34}  {:<12}  {:>6}  {:>8}  {:>8}  IP-RANGE",
                "POOL", "NETWORK", "USED", "FREE", "CAPACITY"
            );
        }
        for p in &self.pools {
            let _ = writeln!(
                out,
                "  {:<34}  {:<12}  {:>6}  {:>8}  {:>8}  {}",
                p.id,
                p.network.as_deref().map(short_id).unwrap_or("-"),
                p.used,
                count(p.free),
                count(p.capacity),
                text(p.ip_range.map(|r| r.to_string()))
            );
        }
    }

    fn write_endpoints(&self, out: &mut String) {
        use std::fmt::Write;
        let text = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        let _ = writeln!(out, "\nENDPOINTS ({})", self.endpoints.len());
        if !self.endpoints.is_empty() {
            let _ = writeln!(
                out,
                "  {:<12}  {:<12}  {:<15}  {:<18}  {:<17}  LINK IS",
                "ID", "NETWORK", "HOST LINK", "ADDRESS", "MAC"
            );
        }
        for e in &self.endpoints {
            let address = match (e.ipv4, e.ipv6) {
                (Some(v4), Some(v6)) => format!("{v4} {v6}"),
                (Some(a), None) | (None, Some(a)) => a.to_string(),
                (None, None) => "-".to_string(),
            };
            let link_is = match &e.link_is {
                LinkIs::Host => "in the host namespace".to_string(),
                LinkIs::Container { name, .. } => format!("{name} in its container"),
                LinkIs::NotJoined => "not joined".to_string(),
                LinkIs::Unknown { why } => format!("unknown: {why}"),
                LinkIs::Missing => "MISSING (see drift)".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<12}  {:<12}  {:<15}  {:<18}  {:<17}  {link_is}",
                short_id(&e.id),
                short_id(&e.network),
                e.link,
                address,
                text(e.mac.clone()),
            );
        }
    }

    /// The links being deleted and the parents rustvlan made.
    fn write_links_and_parents(&self, out: &mut String) {
        use std::fmt::Write;
        if !self.pending_deletes.is_empty() {
            let _ = writeln!(
                out,
                "\nLINKS BEING DELETED ({}): {}",
                self.pending_deletes.len(),
                self.pending_deletes.join(" ")
            );
        }
        if !self.parents_made.is_empty() {
            let _ = writeln!(out, "\nPARENTS MADE BY RUSTVLAN ({})", self.parents_made.len());
            for p in &self.parents_made {
                let present = if p.present { "present" } else { "MISSING" };
                let _ = writeln!(out, "  {:<15}  {present:<7}  {}", p.name, p.describe);
            }
        }
    }

    fn write_leases(&self, out: &mut String) {
        use std::fmt::Write;
        if !self.leases.is_empty() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = writeln!(out, "\nDHCP LEASES ({})", self.leases.len());
            let _ = writeln!(
                out,
                "  {:<18}  {:<15}  {:<15}  {:<17}  {:>10}  {:>8}  STATE",
                "ADDRESS", "SERVER", "PARENT", "MAC", "EXPIRES IN", "RENEWALS"
            );
            for l in &self.leases {
                let left = l.expires_at().saturating_sub(now);
                let _ = writeln!(
                    out,
                    "  {:<18}  {:<15}  {:<15}  {:<17}  {:>9}s  {:>8}  {}",
                    l.address.to_string(),
                    l.server.to_string(),
                    l.parent,
                    l.mac.to_string(),
                    left,
                    l.renewals,
                    l.trouble.as_deref().unwrap_or("bound")
                );
            }
        }
    }

    fn write_host_access_and_drift(&self, out: &mut String) {
        use std::fmt::Write;
        if !self.host_access.is_empty() {
            let _ = writeln!(out, "\nHOST ACCESS ({})", self.host_access.len());
            for h in &self.host_access {
                let present = if h.shim_present { "present" } else { "MISSING" };
                let _ = writeln!(
                    out,
                    "  network {}: host address {} on shim {} ({present}) over {}",
                    short_id(&h.network),
                    h.address,
                    h.shim,
                    h.parent
                );
            }
        }
        if self.drift.is_empty() {
            let _ = writeln!(out, "\nDRIFT: none, the kernel agrees with the records");
        } else {
            let _ = writeln!(out, "\nDRIFT ({})", self.drift.len());
            for d in &self.drift {
                let _ = writeln!(out, "  {d}");
            }
        }
    }
}

fn link_kind_name(kind: &LinkType) -> String {
    match kind {
        LinkType::Macvlan => "macvlan".to_string(),
        LinkType::Ipvlan => "ipvlan".to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Counts up to a billion in digits; beyond (IPv6 pools), as a power of two.
fn count(n: u128) -> String {
    if n < 1_000_000_000 {
        n.to_string()
    } else {
        format!("~2^{}", (n as f64).log2().round())
    }
}
