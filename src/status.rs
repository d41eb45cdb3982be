//! `rustvlan status`: what rustvlan holds and whether the kernel still agrees.
//!
//! Two steps. [`observe`] asks the kernel (the host namespace, and the namespace of
//! every container an endpoint joined) through a [`Kernel`]; [`StatusReport::build`] is
//! pure: it lays the records beside that observation in a [`Comparison`], the drift
//! model `rustvlan state` shares, and reports what it finds. The JSON form of
//! [`StatusReport`] is `rustvlan status --json`, documented in the README; fields are
//! only ever added.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::drift::{Comparison, Recorded, SeenLink, etcd_unreachable, lease_troubles};
pub use crate::drift::{Drift, LinkIs, Observation, Sandbox};
use crate::dump::StateDump;
use crate::ipam::pool_capacity;
use crate::kernel::{KResult, Kernel, LinkInfo, LinkType};
use crate::model::{LinkMode, MacAddr, ParentKind};
use crate::util::short_id;

/// Asks the kernel what `status` needs to know about `records`.
pub async fn observe<K: Kernel>(kernel: &K, records: &StateDump) -> KResult<Observation> {
    let host_links = kernel.links().await?.into_iter().map(seen_link).collect();
    let mut sandboxes = BTreeMap::new();
    let paths: BTreeSet<&str> = records
        .endpoints
        .values()
        .filter_map(|e| e.sandbox.as_deref())
        .collect();
    for path in paths {
        let seen = match kernel.links_in(Path::new(path)).await {
            Ok(Some(links)) => Sandbox::Links(links.into_iter().map(seen_link).collect()),
            Ok(None) => Sandbox::Gone,
            Err(e) => Sandbox::Unreadable(e.to_string()),
        };
        sandboxes.insert(path.to_string(), seen);
    }
    Ok(Observation { host_links, sandboxes })
}

/// What drift needs of a link the kernel showed.
fn seen_link(link: LinkInfo) -> SeenLink {
    SeenLink {
        child_kind: match link.kind {
            LinkType::Macvlan => Some("macvlan"),
            LinkType::Ipvlan => Some("ipvlan"),
            _ => None,
        },
        name: link.name,
        index: link.index,
        group: link.group,
        parent_index: link.parent_index,
        mac: link.mac,
    }
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

/// etcd not answering, and addresses another host holds.
fn shared_drift(records: &StateDump) -> Vec<Drift> {
    let Some(shared) = &records.shared else {
        return Vec::new();
    };
    let unreachable = etcd_unreachable(&shared.endpoints, shared.connected, shared.trouble.as_deref());
    unreachable
        .into_iter()
        .chain(shared.conflicts.iter().map(|c| Drift::SharedConflict {
            plan: c.plan.clone(),
            ip: c.ip,
            held_by: c.held_by.clone(),
        }))
        .collect()
}

/// The records the kernel is compared with.
fn recorded(records: &StateDump) -> Recorded<'_> {
    Recorded {
        link_group: records.link_group,
        networks: &records.networks,
        endpoints: &records.endpoints,
        parents: &records.parents,
        pending_deletes: &records.pending_deletes,
        shims: crate::driver::host_access::expected_shims(records.networks.values()),
    }
}

fn host_access_statuses(records: &StateDump, comparison: &Comparison) -> Vec<HostAccessStatus> {
    records
        .networks
        .values()
        .filter_map(|n| {
            let access = n.host_access.as_ref()?;
            let shim = crate::driver::host_access::shim_name(&n.parent);
            Some(HostAccessStatus {
                network: n.id.clone(),
                parent: n.parent.clone(),
                shim_present: comparison.shim_present(&shim),
                shim,
                address: access.address,
            })
        })
        .collect()
}

fn parent_statuses(records: &StateDump, comparison: &Comparison) -> Vec<ParentStatus> {
    records
        .parents
        .values()
        .map(|p| ParentStatus {
            name: p.name.clone(),
            kind: match p.kind {
                ParentKind::Vlan { .. } => "vlan".to_string(),
                ParentKind::Dummy => "dummy".to_string(),
            },
            describe: p.describe(),
            present: comparison.in_host(&p.name),
        })
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
        let comparison = Comparison::new(recorded(records), seen);
        let mut drift = comparison.orphans();
        let endpoints = records
            .endpoints
            .values()
            .map(|e| {
                let (link_is, found) = comparison.endpoint_link(e);
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
        drift.extend(comparison.missing_shims());
        drift.extend(lease_troubles(&records.leases));
        drift.extend(comparison.missing_parents());
        StatusReport {
            source,
            networks: network_statuses(records),
            pools: pool_statuses(records),
            endpoints,
            pending_deletes: records.pending_deletes.keys().cloned().collect(),
            parents_made: parent_statuses(records, &comparison),
            etcd: records.shared.as_ref().map(|s| EtcdStatus {
                endpoints: s.endpoints.clone(),
                host_id: s.host_id.clone(),
                answering: s.connected && s.trouble.is_none(),
            }),
            leases: records.leases.clone(),
            host_access: host_access_statuses(records, &comparison),
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
            let _ = writeln!(
                out,
                "  {:<12}  {:<12}  {:<15}  {:<18}  {:<17}  {}",
                short_id(&e.id),
                short_id(&e.network),
                e.link,
                address,
                text(e.mac.clone()),
                e.link_is,
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

/// Counts up to a billion in digits; beyond (IPv6 pools), as a power of two.
fn count(n: u128) -> String {
    if n < 1_000_000_000 {
        n.to_string()
    } else {
        format!("~2^{}", (n as f64).log2().round())
    }
}
