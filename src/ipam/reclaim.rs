//! Reclaiming addresses and pools that dockerd stopped using without telling rustvlan.
//!
//! dockerd ignores teardown errors, skips releases while the plugin is unreachable, and
//! retries a request whose connection broke (so a RequestAddress that the plugin answered
//! just before it crashed is made twice, and the first address is never used). In a pool
//! claimed by a rustvlan network, every address in use is the network's gateway, one of
//! its aux addresses, the host's address (`host_access=on`), or an endpoint's address. Anything else is either between dockerd's
//! RequestAddress and CreateEndpoint (a second at most), or forgotten. A sweep marks such
//! addresses; the next sweep, a grace period later, releases the ones still unused.
//! Pools claimed by a network that no longer exists (a ReleasePool never sent) go the
//! same way. Pools no rustvlan network claimed (another driver's) are never touched.
//! DHCP leases too: a lease no endpoint of its network holds, or whose pool or network
//! is gone, is released to its server the same way (else it would be renewed forever).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;

use super::Ipam;
use crate::error::Result;
use crate::ipam::{IpamChange, pool_id};
use crate::kernel::Kernel;
use crate::model::LeaseRecord;
use crate::state::{Change, State};

/// What one sweep left marked, for the next one.
#[derive(Debug, Default)]
pub struct SweepMarks {
    addresses: BTreeSet<(u64, IpAddr)>,
    pools: BTreeSet<u64>,
    /// By [`LeaseRecord::key`].
    leases: BTreeSet<String>,
}

/// The commit hook that keeps marks to one allocation: an address released or allocated
/// again loses its mark. Without it, an address in the moment between RequestAddress and
/// CreateEndpoint at one sweep, released, and in that moment again (for another
/// container) at the next sweep was released under the second container, which then
/// used an address the pool (and etcd) no longer held.
pub(crate) struct ForgetMarks(pub(crate) std::sync::Arc<std::sync::Mutex<SweepMarks>>);

impl crate::ledger::CommitHook for ForgetMarks {
    fn follow_up(&self, state: &State, changes: &[Change]) -> Vec<Change> {
        let mut marks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for change in changes {
            match change {
                // A renewal keeps the mark: a lease renewed more often than the sweep
                // runs would otherwise never be released.
                Change::PutLease(lease)
                    if state
                        .leases
                        .get(&lease.key())
                        .is_some_and(|old| old.mac == lease.mac && old.client_id == lease.client_id) => {}
                Change::PutLease(lease) => {
                    marks.leases.remove(&lease.key());
                }
                Change::DelLease(key) => {
                    marks.leases.remove(key);
                }
                Change::Ipam(IpamChange::PutAddress { pool, ip, .. } | IpamChange::DelAddress { pool, ip }) => {
                    marks.addresses.remove(&(*pool, *ip));
                }
                Change::Ipam(IpamChange::DelPool(seq)) => {
                    marks.pools.remove(seq);
                    marks.addresses.retain(|(pool, _)| pool != seq);
                }
                _ => {}
            }
        }
        Vec::new()
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SweepReport {
    /// pool id -> addresses released
    pub addresses_reclaimed: BTreeMap<String, Vec<String>>,
    pub pools_reclaimed: Vec<String>,
    /// Unused now; released by the next sweep if still unused then.
    pub addresses_marked: usize,
    pub pools_marked: usize,
    /// The leases released, for their RELEASE to the server once the commit is durable.
    #[serde(skip)]
    pub leases_reclaimed: Vec<LeaseRecord>,
    pub leases_marked: usize,
}

impl SweepReport {
    pub fn is_empty(&self) -> bool {
        self.addresses_reclaimed.is_empty() && self.pools_reclaimed.is_empty() && self.leases_reclaimed.is_empty()
    }
}

/// The addresses of each network's endpoints, in one pass over the endpoints, not one
/// per pool: with 100 networks and 10 000 endpoints a per-pool scan was a million string
/// comparisons, at every start-up.
fn endpoint_ips(state: &State) -> HashMap<&str, HashSet<IpAddr>> {
    let mut ips: HashMap<&str, HashSet<IpAddr>> = HashMap::new();
    for e in state.endpoints.values() {
        ips.entry(e.network_id.as_str())
            .or_default()
            .extend(e.ipv4.iter().chain(e.ipv6.iter()).map(|a| a.ip()));
    }
    ips
}

/// Leases that no endpoint of their pool's network (nor its host's shim) holds, and
/// leases whose pool, or the pool's network, is gone. A pool no network claimed yet
/// keeps its leases (none is taken before CreateNetwork).
pub fn unbound_leases(state: &State) -> Vec<String> {
    let endpoint_ips = endpoint_ips(state);
    state
        .leases
        .values()
        .filter(|lease| {
            let ip = IpAddr::V4(lease.address.ip());
            let pool = state.ipam.lookup(&lease.pool_id).ok().flatten();
            match pool.map(|p| p.record.claimed_by.as_ref()) {
                None => true,
                Some(None) => false,
                Some(Some(network_id)) => state.networks.get(network_id).is_none_or(|network| {
                    let shim = network.host_access.as_ref().is_some_and(|h| h.address.ip() == ip);
                    let endpoint = endpoint_ips
                        .get(network_id.as_str())
                        .is_some_and(|ips| ips.contains(&ip));
                    !shim && !endpoint
                }),
            }
        })
        .map(LeaseRecord::key)
        .collect()
}

/// Allocated addresses of claimed pools that nothing of the claiming network uses.
pub fn unbound_addresses(state: &State) -> Vec<(u64, IpAddr)> {
    let endpoint_ips = endpoint_ips(state);
    let no_endpoints = HashSet::new();
    let mut out = Vec::new();
    for pool in state.ipam.pools() {
        let Some(network) = pool.record.claimed_by.as_ref().and_then(|n| state.networks.get(n)) else {
            continue;
        };
        let network_ips: HashSet<IpAddr> = network
            .subnets()
            .filter(|s| s.pool == pool.record.pool)
            .flat_map(|s| s.gateway.iter().chain(s.aux_addresses.values()).map(|a| a.ip()))
            .chain(network.host_access.as_ref().map(|h| h.address.ip()))
            .collect();
        let endpoint_ips = endpoint_ips.get(network.id.as_str()).unwrap_or(&no_endpoints);
        out.extend(
            pool.allocated()
                .filter(|(ip, gateway)| !gateway && !network_ips.contains(ip) && !endpoint_ips.contains(ip))
                .map(|(ip, _)| (pool.record.seq, ip)),
        );
    }
    out
}

/// Pools claimed by a network that no longer exists.
pub fn orphan_pools(state: &State) -> Vec<u64> {
    state
        .ipam
        .pools()
        .filter(|p| {
            p.record
                .claimed_by
                .as_ref()
                .is_some_and(|n| !state.networks.contains_key(n))
        })
        .map(|p| p.record.seq)
        .collect()
}

/// Plans one sweep. `now`: release everything unused at once (for a quiescent moment
/// such as a test's end, never while dockerd may be mid-way through a container start).
pub fn plan_sweep(state: &State, marks: &mut SweepMarks, now: bool) -> (SweepReport, Vec<Change>) {
    let unbound: BTreeSet<(u64, IpAddr)> = unbound_addresses(state).into_iter().collect();
    let orphans: BTreeSet<u64> = orphan_pools(state).into_iter().collect();
    let leases: BTreeSet<String> = unbound_leases(state).into_iter().collect();
    let mut report = SweepReport::default();
    let mut changes = Vec::new();
    for key in leases.iter().filter(|k| now || marks.leases.contains(*k)) {
        if let Some(lease) = state.leases.get(key) {
            report.leases_reclaimed.push(lease.clone());
            changes.push(Change::DelLease(key.clone()));
        }
    }
    for &seq in orphans.iter().filter(|s| now || marks.pools.contains(s)) {
        if let Some(pool) = state.ipam.pool(seq) {
            report.pools_reclaimed.push(pool_id(&pool.record));
            changes.push(Change::Ipam(IpamChange::DelPool(seq)));
        }
    }
    for &(seq, ip) in unbound.iter().filter(|a| now || marks.addresses.contains(a)) {
        if orphans.contains(&seq) && (now || marks.pools.contains(&seq)) {
            continue; // goes with its pool
        }
        if let Some(pool) = state.ipam.pool(seq) {
            report
                .addresses_reclaimed
                .entry(pool_id(&pool.record))
                .or_default()
                .push(ip.to_string());
            changes.push(Change::Ipam(IpamChange::DelAddress { pool: seq, ip }));
        }
    }
    if now {
        *marks = SweepMarks::default();
    } else {
        let mut released_pools = HashSet::new();
        let mut released = HashSet::new();
        for change in &changes {
            match change {
                Change::Ipam(IpamChange::DelPool(seq)) => {
                    released_pools.insert(*seq);
                }
                Change::Ipam(IpamChange::DelAddress { pool, ip }) => {
                    released.insert((*pool, *ip));
                }
                _ => {}
            }
        }
        marks.pools = orphans.into_iter().filter(|s| !released_pools.contains(s)).collect();
        marks.addresses = unbound
            .into_iter()
            .filter(|a| !released.contains(a) && !released_pools.contains(&a.0))
            .collect();
        let released_leases: HashSet<String> = report.leases_reclaimed.iter().map(LeaseRecord::key).collect();
        marks.leases = leases.into_iter().filter(|k| !released_leases.contains(k)).collect();
        report.addresses_marked = marks.addresses.len();
        report.pools_marked = marks.pools.len();
        report.leases_marked = marks.leases.len();
    }
    (report, changes)
}

impl<K: Kernel> Ipam<K> {
    /// Releases addresses and pools dockerd stopped using without telling (see
    /// the module docs): what the previous sweep marked and is still unused, or, with `now`,
    /// everything unused at once.
    pub async fn sweep(&self, now: bool) -> Result<SweepReport> {
        let report = self
            .commit(|state| {
                let mut marks = self.sweep_marks.lock().unwrap_or_else(|p| p.into_inner());
                Ok(plan_sweep(state, &mut marks, now))
            })
            .await?;
        self.metrics
            .count_reclaimed(report.addresses_reclaimed.values().map(Vec::len).sum());
        for lease in &report.leases_reclaimed {
            self.send_release(lease).await;
        }
        if report.is_empty() {
            tracing::debug!(
                addresses_marked = report.addresses_marked,
                pools_marked = report.pools_marked,
                "sweep: nothing to reclaim"
            );
        } else {
            let leases: Vec<String> = report.leases_reclaimed.iter().map(|l| l.address.to_string()).collect();
            tracing::info!(
                addresses = ?report.addresses_reclaimed,
                pools = ?report.pools_reclaimed,
                leases = ?leases,
                "sweep: reclaimed what no endpoint, gateway or aux address used since the last sweep \
                 (releases dockerd never sent, or requests it retried after a plugin crash), and DHCP \
                 leases no endpoint held"
            );
        }
        Ok(report)
    }
}
