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
use crate::model::{LinkMode, MacAddr, ParentKind};
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

impl StatusReport {
    /// The records beside what the kernel showed.
    pub fn build(records: &StateDump, seen: &Observation, source: Source) -> StatusReport {
        let ours = |l: &&LinkInfo| l.group == records.link_group;
        let host: BTreeMap<&str, &LinkInfo> = seen.host_links.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut drift = Vec::new();

        let endpoint_links: BTreeSet<&str> = records.endpoints.values().map(|e| e.link_name.as_str()).collect();
        let shims = crate::driver::host_access::expected_shims(records.networks.values());
        for link in seen.host_links.iter().filter(ours) {
            if link.kind.is_child() {
                if !endpoint_links.contains(link.name.as_str())
                    && !records.pending_deletes.contains_key(&link.name)
                    && !shims.contains_key(&link.name)
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

        let mut missing_parents: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for network in records.networks.values() {
            if !host.contains_key(network.parent.as_str()) {
                missing_parents
                    .entry(network.parent.as_str())
                    .or_default()
                    .push(network.id.clone());
            }
        }

        let endpoints = records
            .endpoints
            .values()
            .map(|e| {
                let parent_index = records
                    .networks
                    .get(&e.network_id)
                    .and_then(|n| host.get(n.parent.as_str()))
                    .map(|p| p.index);
                let link_is = if host.contains_key(e.link_name.as_str()) {
                    LinkIs::Host
                } else {
                    match (&e.sandbox, parent_index) {
                        (None, _) => LinkIs::NotJoined,
                        (Some(_), None) => LinkIs::Unknown {
                            why: "the network's parent is missing".to_string(),
                        },
                        (Some(sandbox), Some(parent_index)) => match seen.sandboxes.get(sandbox) {
                            None => LinkIs::Unknown {
                                why: "its namespace was not looked into".to_string(),
                            },
                            Some(Sandbox::Unreadable(why)) => LinkIs::Unknown { why: why.clone() },
                            Some(Sandbox::Gone) => {
                                drift.push(Drift::ContainerGone {
                                    endpoint: e.id.clone(),
                                    network: e.network_id.clone(),
                                    sandbox: sandbox.clone(),
                                });
                                LinkIs::Missing
                            }
                            Some(Sandbox::Links(links)) => {
                                let found = links.iter().filter(ours).find(|l| {
                                    l.kind.is_child()
                                        && l.parent_index == Some(parent_index)
                                        && (e.mac.is_none() || l.mac == e.mac)
                                });
                                match found {
                                    Some(l) => LinkIs::Container {
                                        sandbox: sandbox.clone(),
                                        name: l.name.clone(),
                                    },
                                    None => {
                                        drift.push(Drift::EndpointLinkGone {
                                            endpoint: e.id.clone(),
                                            network: e.network_id.clone(),
                                            sandbox: sandbox.clone(),
                                        });
                                        LinkIs::Missing
                                    }
                                }
                            }
                        },
                    }
                };
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

        if let Some(shared) = &records.shared {
            let trouble = match (&shared.trouble, shared.connected) {
                (Some(t), _) => Some(t.clone()),
                (None, false) => Some(format!(
                    "etcd unreachable ({}): not reached since rustvlan started",
                    shared.endpoints
                )),
                (None, true) => None,
            };
            if let Some(trouble) = trouble {
                drift.push(Drift::EtcdUnreachable {
                    endpoints: shared.endpoints.clone(),
                    trouble,
                });
            }
            drift.extend(shared.conflicts.iter().map(|c| Drift::SharedConflict {
                plan: c.plan.clone(),
                ip: c.ip,
                held_by: c.held_by.clone(),
            }));
        }
        let host_access: Vec<HostAccessStatus> = records
            .networks
            .values()
            .filter_map(|n| {
                let access = n.host_access.as_ref()?;
                let shim = crate::driver::host_access::shim_name(&n.parent);
                Some(HostAccessStatus {
                    network: n.id.clone(),
                    parent: n.parent.clone(),
                    shim_present: host.get(shim.as_str()).is_some_and(&ours),
                    shim,
                    address: access.address,
                })
            })
            .collect();
        for (shim, parent) in &shims {
            if !host_access.iter().any(|h| &h.shim == shim && h.shim_present) {
                drift.push(Drift::ShimMissing {
                    shim: shim.clone(),
                    parent: parent.clone(),
                });
            }
        }
        for lease in &records.leases {
            if let Some(trouble) = &lease.trouble {
                drift.push(Drift::LeaseTrouble {
                    address: IpNetwork::V4(lease.address),
                    server: lease.server,
                    trouble: trouble.clone(),
                });
            }
        }
        for (parent, networks) in missing_parents {
            drift.push(Drift::ParentMissing {
                parent: parent.to_string(),
                networks,
            });
        }

        let networks = records
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
            .collect();

        let pools = records
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
            .collect();

        let parents_made = records
            .parents
            .values()
            .map(|p| ParentStatus {
                name: p.name.clone(),
                kind: match p.kind {
                    ParentKind::Vlan { .. } => "vlan".to_string(),
                    ParentKind::Dummy => "dummy".to_string(),
                },
                describe: p.describe(),
                present: host.contains_key(p.name.as_str()),
            })
            .collect();

        StatusReport {
            source,
            networks,
            pools,
            endpoints,
            pending_deletes: records.pending_deletes.keys().cloned().collect(),
            parents_made,
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
        use std::fmt::Write;
        let mut out = String::new();
        let text = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
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
        out
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
