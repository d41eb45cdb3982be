//! Shared pools: with `--etcd-endpoints`, a pool with an explicit subnet takes its
//! addresses from its plan (subnet and segment) in etcd, which every host of the L2
//! segment shares. An address is claimed in etcd (create-if-absent) before the local
//! store records it, and the answer waits for both; a release is recorded here first,
//! with a durable note that the etcd claim is still to be deleted, so an etcd outage
//! leaks an address for a while and never hands one out twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::Ipam;
use super::allocations::{Allocations, LocalAllocations};
use super::allocator::SearchStart;
use super::blocks::{self, block_of};
use super::{IpamChange, PoolRequest, PoolScope, plan_name};
use crate::error::{Error, Result};
use crate::etcd::{Claim, Etcd, EtcdErrorKind, Holder, Reservation};
use crate::kernel::Kernel;
use crate::ledger::CommitHook;
use crate::model::{PoolRecord, SharedRelease};
use crate::state::{Change, State};
use crate::util::short_id;

/// What this host knows of the shared plans beyond its own records.
pub struct SharedPlans {
    /// Set once connected: until then shared pools answer that etcd is unreachable
    /// (they never fall back to local allocation).
    etcd: std::sync::OnceLock<Etcd>,
    host: String,
    endpoints: String,
    views: Mutex<HashMap<String, PlanView>>,
    /// Wakes the drainer of shared releases.
    wake: tokio::sync::Notify,
    /// Found by the last check (see [`Ipam::reconcile_shared`]), less those released since.
    conflicts: Mutex<Vec<SharedConflict>>,
    /// Shared allocations hold it for reading from their claim in etcd until their
    /// record is on disk; the check of this host's claims holds it for writing, so that
    /// it never sees a claim whose record is still on its way (and releases it).
    checking: tokio::sync::RwLock<()>,
    /// Pools (by seq) whose aux addresses may still come: made here less than
    /// [`AUX_WINDOW`] ago, with no container's address asked yet.
    aux_windows: Mutex<HashMap<u64, std::time::Instant>>,
}

/// dockerd asks for a network's aux addresses right after its pool and gateway; a named
/// address asked later, or after a container's, is a container's own.
const AUX_WINDOW: Duration = Duration::from_secs(10);
/// How long an aux address another host claimed waits for that host's network to be made
/// (and its claim to become the LAN's reservation) before it is refused.
const AUX_WAIT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct PlanView {
    /// Addresses other hosts hold (as last seen in etcd), and shared reservations.
    remote: Remote,
    /// Addresses this host is claiming or releasing in etcd right now.
    in_flight: BTreeSet<IpAddr>,
    /// Read whole, and followed since by a watch.
    loaded: bool,
    /// When it was last read whole because it looked full.
    refreshed: Option<std::time::Instant>,
    /// Per pool: the address this host picked last, where it goes on (the stored cursor
    /// moves only once a claim is recorded, while 64 requests may be picking at once).
    walks: HashMap<String, IpAddr>,
}

const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// How long a claim whose answer never came is left before its note is drained: longer
/// than etcd takes to commit or drop a proposal across a leader change.
const UNKNOWN_CLAIM_SETTLES: Duration = Duration::from_secs(15);

/// What other hosts hold of a plan, and how many of their addresses each block has: a
/// host fills blocks no other host uses while there are any, so that hosts rarely race
/// for one address (every address is still claimed on its own).
#[derive(Default)]
struct Remote {
    held: BTreeMap<IpAddr, Holder>,
    /// Other hosts' addresses (not the LAN's reservations) per block.
    per_block: HashMap<u128, usize>,
}

impl Remote {
    fn from_claims(held: impl IntoIterator<Item = (IpAddr, Holder)>) -> Remote {
        let mut remote = Remote::default();
        for (ip, holder) in held {
            remote.insert(ip, holder);
        }
        remote
    }

    fn get(&self, ip: &IpAddr) -> Option<&Holder> {
        self.held.get(ip)
    }

    fn insert(&mut self, ip: IpAddr, holder: Holder) {
        let counts = matches!(holder, Holder::Host { .. });
        if let Some(old) = self.held.insert(ip, holder) {
            self.forget(ip, &old);
        }
        if counts {
            *self.per_block.entry(block_of(ip)).or_default() += 1;
        }
    }

    fn remove(&mut self, ip: &IpAddr) {
        if let Some(old) = self.held.remove(ip) {
            self.forget(*ip, &old);
        }
    }

    fn forget(&mut self, ip: IpAddr, old: &Holder) {
        if matches!(old, Holder::Host { .. })
            && let std::collections::hash_map::Entry::Occupied(mut e) = self.per_block.entry(block_of(ip))
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Another host hands out addresses of `ip`'s block.
    fn in_foreign_block(&self, ip: IpAddr) -> bool {
        self.uses_block(block_of(ip))
    }

    fn uses_block(&self, block: u128) -> bool {
        self.per_block.contains_key(&block)
    }
}

impl SharedPlans {
    pub fn new(host: &str, endpoints: &str) -> SharedPlans {
        SharedPlans {
            etcd: std::sync::OnceLock::new(),
            host: host.to_string(),
            endpoints: endpoints.to_string(),
            views: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            conflicts: Mutex::new(Vec::new()),
            checking: tokio::sync::RwLock::new(()),
            aux_windows: Mutex::new(HashMap::new()),
        }
    }

    fn aux_windows(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::time::Instant>> {
        self.aux_windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a named address asked of pool `seq` may be one of its network's aux
    /// addresses; a container's address asked closes the window.
    fn aux_window_open(&self, seq: u64, container: bool) -> bool {
        let mut windows = self.aux_windows();
        let open = windows.get(&seq).is_some_and(|made| made.elapsed() < AUX_WINDOW);
        if container || !open {
            windows.remove(&seq);
        }
        open && !container
    }

    /// Called once the connection to etcd is up.
    pub fn connected(&self, etcd: Etcd, metrics: &crate::metrics::Metrics) {
        let _ = self.etcd.set(etcd);
        metrics.etcd_connected.set(1);
    }

    pub fn etcd(&self) -> Result<&Etcd> {
        self.etcd.get().ok_or_else(|| {
            Error::unavailable(format!(
                "etcd unreachable ({}): rustvlan has not reached it since it started; shared pools wait for it, \
                 running containers are not affected",
                self.endpoints
            ))
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn views(&self) -> std::sync::MutexGuard<'_, HashMap<String, PlanView>> {
        self.views.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn others(&self, holder: &Holder) -> bool {
        !matches!(holder, Holder::Host { host } if *host == self.host)
    }

    /// Reads what other hosts hold of `plan` (once: a watch keeps it current after).
    async fn load(self: &Arc<Self>, plan: &str) -> Result<()> {
        let (held, mut follower) = self.etcd()?.follow(plan).await.map_err(|e| unavailable(&e, plan))?;
        {
            let mut views = self.views();
            let view = views.entry(plan.to_string()).or_default();
            if view.loaded {
                return Ok(()); // another request loaded it meanwhile
            }
            view.remote = Remote::from_claims(held.into_iter().filter(|(_, h)| self.others(h)));
            view.loaded = true;
        }
        let shared = Arc::clone(self);
        let plan = plan.to_string();
        tokio::spawn(async move {
            while let Some(changes) = follower.next().await {
                let mut views = shared.views();
                let view = views.entry(plan.clone()).or_default();
                for (ip, holder) in changes {
                    match holder {
                        Some(h) if shared.others(&h) => {
                            view.remote.insert(ip, h);
                        }
                        Some(_) => {}
                        None => {
                            view.remote.remove(&ip);
                        }
                    }
                }
            }
            // The watch ended (etcd restarted, a compaction): the next request reads again.
            if let Some(view) = shared.views().get_mut(&plan) {
                view.loaded = false;
            }
        });
        Ok(())
    }

    /// Reads the plan whole again (when it looks full: releases may not have arrived),
    /// at most once a second: when a pool runs out, every request waiting on it would
    /// otherwise read the whole range, while the watch already keeps the view current.
    async fn refresh(&self, plan: &str) -> Result<()> {
        {
            let mut views = self.views();
            let view = views.entry(plan.to_string()).or_default();
            let now = std::time::Instant::now();
            if view
                .refreshed
                .is_some_and(|at| now.duration_since(at) < REFRESH_AT_MOST_EVERY)
            {
                return Ok(());
            }
            view.refreshed = Some(now);
        }
        let read = match self.etcd() {
            Ok(etcd) => etcd.held(plan).await.map_err(|e| unavailable(&e, plan)),
            Err(e) => Err(e),
        };
        let mut views = self.views();
        let view = views.entry(plan.to_string()).or_default();
        match read {
            Ok(held) => {
                view.remote = Remote::from_claims(held.into_iter().filter(|(_, h)| self.others(h)));
                Ok(())
            }
            Err(e) => {
                view.refreshed = None; // the next request that finds it full reads again
                Err(e)
            }
        }
    }

    /// Learns that another host holds `ip` (the watch tells it a moment later).
    fn learn(&self, plan: &str, ip: IpAddr, holder: Holder) {
        self.views()
            .entry(plan.to_string())
            .or_default()
            .remote
            .insert(ip, holder);
    }

    fn loaded(&self, plan: &str) -> bool {
        self.views().get(plan).is_some_and(|v| v.loaded)
    }

    fn forget_walk(&self, plan: &str, pool_id: &str) {
        if let Some(view) = self.views().get_mut(plan) {
            view.walks.remove(pool_id);
        }
    }

    fn done(&self, plan: &str, ip: IpAddr) {
        if let Some(view) = self.views().get_mut(plan) {
            view.in_flight.remove(&ip);
        }
    }
}

/// Where in a shared plan's range `host` starts handing out addresses: a hash of both
/// (FNV-1a), so hosts start apart without agreeing on anything.
fn home_point(host: &str, plan: &str) -> u64 {
    crate::util::stable_hash(&[host.as_bytes(), plan.as_bytes()])
}

fn unavailable(e: &crate::etcd::EtcdError, plan: &str) -> Error {
    Error::unavailable(format!(
        "{e}: cannot allocate from shared pool {}; running containers are not affected",
        plan.replace('_', "/")
    ))
}

fn holder_text(holder: &Holder) -> String {
    match holder {
        // Both are text from etcd: escaped, as anything from the network.
        Holder::Host { host } => format!("host {}", host.escape_debug()),
        Holder::Shared { shared } => format!("the LAN ({} of the shared plan)", shared.escape_debug()),
    }
}

/// The commit hook of shared pools (registered by [`Ipam::with_shared`]).
pub(crate) struct SharedReleaseNotes;

impl CommitHook for SharedReleaseNotes {
    /// Book-keeping every commit gets when pools are shared: an address released from
    /// a shared pool (by a release, the sweep, or its pool going) leaves a durable note
    /// to delete its etcd claim; an address taken again cancels such a note.
    fn follow_up(&self, state: &State, changes: &[Change]) -> Vec<Change> {
        let mut extra = Vec::new();
        for change in changes.iter() {
            match change {
                Change::Ipam(IpamChange::DelAddress { pool, ip }) => {
                    if let Some(p) = state.ipam.pool(*pool).filter(|p| p.record.shared) {
                        extra.push(Change::PutSharedRelease(SharedRelease {
                            plan: plan_name(&p.record),
                            ip: *ip,
                            not_before: None,
                        }));
                    }
                }
                Change::Ipam(IpamChange::DelPool(seq)) => {
                    if let Some(p) = state.ipam.pool(*seq).filter(|p| p.record.shared) {
                        let plan = plan_name(&p.record);
                        extra.extend(p.allocated().map(|(ip, _)| {
                            Change::PutSharedRelease(SharedRelease {
                                plan: plan.clone(),
                                ip,
                                not_before: None,
                            })
                        }));
                    }
                }
                Change::Ipam(IpamChange::PutAddress { pool, ip, .. }) => {
                    if let Some(p) = state.ipam.pool(*pool).filter(|p| p.record.shared) {
                        let key = SharedRelease {
                            plan: plan_name(&p.record),
                            ip: *ip,
                            not_before: None,
                        }
                        .key();
                        if state.shared_releases.contains_key(&key) {
                            extra.push(Change::DelSharedRelease(key));
                        }
                    }
                }
                _ => {}
            }
        }
        extra
    }
}

/// Where a plugin's pools are allocated: its own, or shared through etcd.
pub struct PoolAllocations<'a, K> {
    local: LocalAllocations<'a, K>,
    plugin: &'a Ipam<K>,
}

impl<K: Kernel> Ipam<K> {
    /// Where this plugin's pools are allocated.
    pub fn allocations(&self) -> PoolAllocations<'_, K> {
        PoolAllocations {
            local: LocalAllocations::new(self),
            plugin: self,
        }
    }

    /// The pool's record, if it is a shared pool.
    fn shared_pool(&self, pool_id: &str) -> Option<PoolRecord> {
        let state = self.state();
        let pool = state.ipam.lookup(pool_id).ok().flatten()?;
        pool.record.shared.then(|| pool.record.clone())
    }

    /// Deletes the etcd claims of shared addresses released here: now, and every few
    /// seconds while some are left (etcd was unreachable).
    pub async fn drain_shared_releases(self: Arc<Self>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let batch: Vec<SharedRelease> = {
                let state = self.state();
                let mut views = shared.views();
                state
                    .shared_releases
                    .values()
                    .filter(|r| r.not_before.is_none_or(|t| t <= now))
                    .filter(|r| {
                        let view = views.entry(r.plan.clone()).or_default();
                        // Not while this host is claiming it again.
                        view.in_flight.insert(r.ip)
                    })
                    .cloned()
                    .collect()
            };
            // A transaction per chunk: a host releasing many addresses a second (a
            // busy LAN, or a network removed) must not fall behind one round trip each.
            for chunk in batch.chunks(crate::etcd::RELEASES_PER_TXN) {
                // Claims deleted and notes dropped together, as the check of claims sees them.
                let _draining = shared.checking.read().await;
                let addresses: Vec<(&str, IpAddr)> = chunk.iter().map(|r| (r.plan.as_str(), r.ip)).collect();
                let deleted = match shared.etcd() {
                    Ok(etcd) => etcd
                        .release_all(&addresses)
                        .await
                        .map_err(|e| Error::unavailable(e.to_string())),
                    Err(e) => Err(e),
                };
                let result = match deleted {
                    Ok(_) => {
                        self.commit(|state| {
                            let changes = chunk
                                .iter()
                                .map(SharedRelease::key)
                                .filter(|key| state.shared_releases.contains_key(key))
                                .map(Change::DelSharedRelease)
                                .collect();
                            Ok(((), changes))
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                for release in chunk {
                    shared.done(&release.plan, release.ip);
                }
                if let Err(e) = result {
                    tracing::debug!("shared releases of {} addresses still pending: {e}", chunk.len());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shared.wake.notified() => {}
            }
        }
    }

    pub(crate) fn wake_shared_releases(&self) {
        if let Some(shared) = &self.shared {
            shared.wake.notify_one();
        }
    }
}

/// What a shared claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The LAN's gateway: every host reserves it alike.
    Gateway,
    /// A named address asked while the pool's network is being made: one of its aux
    /// addresses, claimed as this host's until the network is made here, when it becomes
    /// the LAN's reservation. Another host's network of the same aux address shares it
    /// then; a host's own claim of it is waited for a moment, then refused.
    Aux,
    /// A container's address, or the host's own on its shim: this host's alone.
    Host,
}

/// One RequestAddress on a shared pool.
struct SharedAsk<'a> {
    pool_id: &'a str,
    record: &'a PoolRecord,
    /// The address asked for by name, if any.
    address: Option<IpAddr>,
    purpose: Purpose,
}

impl SharedAsk<'_> {
    fn gateway(&self) -> bool {
        self.purpose == Purpose::Gateway
    }

    /// Whether the address may be one another host holds as it is.
    fn shares(&self, holder: &Holder) -> bool {
        match self.purpose {
            Purpose::Gateway => matches!(holder, Holder::Shared { .. }),
            // etcd decides, waiting for another host's network being made.
            Purpose::Aux => true,
            Purpose::Host => false,
        }
    }
}

impl<K: Kernel> PoolAllocations<'_, K> {
    fn shared(&self) -> Option<&Arc<SharedPlans>> {
        self.plugin.shared.as_ref()
    }

    /// What a RequestAddress of a shared pool is for: the gateway, an aux address while
    /// the pool's network is being made, else a container's.
    fn purpose_of(&self, shared: &SharedPlans, record: &PoolRecord, address: Option<IpAddr>, gateway: bool) -> Purpose {
        if gateway {
            return Purpose::Gateway;
        }
        let unclaimed = record.claimed_by.is_none();
        if unclaimed && shared.aux_window_open(record.seq, address.is_none()) {
            Purpose::Aux
        } else {
            Purpose::Host
        }
    }

    async fn request_shared_address(
        &self,
        shared: &Arc<SharedPlans>,
        record: PoolRecord,
        pool_id: &str,
        address: Option<IpAddr>,
        purpose: Purpose,
    ) -> Result<IpNetwork> {
        let _claiming = shared.checking.read().await;
        let plan = plan_name(&record);
        if !shared.loaded(&plan) {
            shared.load(&plan).await?;
        }
        let ask = SharedAsk {
            pool_id,
            record: &record,
            address,
            purpose,
        };
        // Each conflict teaches one held address; a refresh teaches them all.
        let mut refreshed_when_full = false;
        for _ in 0..64 {
            let picked = self.pick_shared(shared, &plan, &ask);
            let ip = match picked {
                Ok(ip) => ip,
                // What other hosts held may have been released since it was last read.
                Err(e) if e.kind == crate::error::ErrorKind::Exhausted && !refreshed_when_full => {
                    refreshed_when_full = true;
                    shared.refresh(&plan).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let claimed = match shared.etcd() {
                Ok(etcd) => match claim_for(etcd, &plan, ip, purpose).await {
                    Ok(claim) => Ok(claim),
                    Err(e) => {
                        // Unanswered is not refused: etcd may have taken the claim.
                        self.release_claim_later(&plan, ip).await;
                        Err(unavailable(&e, &plan))
                    }
                },
                Err(e) => Err(e),
            };
            let answer = match claimed {
                Ok(Claim::Ours) => {
                    injected_claim_delay().await;
                    self.commit_claim(shared, &plan, pool_id, ip, &ask).await
                }
                Ok(Claim::Taken(holder)) => {
                    shared.done(&plan, ip);
                    if address.is_some() {
                        return Err(Error::conflict(format!(
                            "address {ip} of shared pool {} is held by {}",
                            record.pool,
                            holder_text(&holder)
                        )));
                    }
                    shared.learn(&plan, ip, holder);
                    continue;
                }
                Err(e) => {
                    shared.done(&plan, ip);
                    return Err(e);
                }
            };
            shared.done(&plan, ip);
            return answer;
        }
        Err(Error::exhausted(format!(
            "no address of shared pool {} could be claimed: other hosts took each one tried; try again",
            record.pool
        )))
    }

    /// Picks an address for `ask` that neither another host (as last seen) nor another
    /// request of this host holds, and marks it in flight.
    fn pick_shared(&self, shared: &SharedPlans, plan: &str, ask: &SharedAsk<'_>) -> Result<IpAddr> {
        let state = self.plugin.state();
        let mut views = shared.views();
        let view = views.entry(plan.to_string()).or_default();
        // Named addresses and the gateway (the same on every host) go by `held` alone.
        let dynamic = ask.address.is_none() && !ask.gateway();
        // An address whose claim is still to be deleted is passed over: a claim of it
        // whose answer never came may yet be carried out, after a new claim's release.
        let noted = |ip: IpAddr| {
            state.shared_releases.contains_key(
                &SharedRelease {
                    plan: plan.to_string(),
                    ip,
                    not_before: None,
                }
                .key(),
            )
        };
        // A reservation may share another host's reservation, never its address.
        let taken = |ip: IpAddr| view.in_flight.contains(&ip) || view.remote.get(&ip).is_some_and(|h| !ask.shares(h));
        let held = |ip: IpAddr| taken(ip) || noted(ip);
        // Each host goes on after its last address (its first one at a point of its
        // own), in blocks no other host uses while there are any (see `blocks`).
        let walked = view.walks.get(ask.pool_id).copied();
        let start = walked.map_or(
            SearchStart::AfterCursorOr(home_point(&shared.host, plan)),
            SearchStart::After,
        );
        let own_block = |ip: IpAddr| held(ip) || view.remote.in_foreign_block(ip);
        let plan_avoiding = |avoid: &dyn Fn(IpAddr) -> bool, start: SearchStart| {
            state
                .ipam
                .plan_request_address_avoiding(ask.pool_id, ask.address, ask.gateway(), avoid, start)
        };
        let exhausted = |r: &Result<_>| matches!(r, Err(e) if e.kind == crate::error::ErrorKind::Exhausted);
        let plan_from = |start: SearchStart| {
            if !dynamic {
                return plan_avoiding(&taken, start);
            }
            let mut planned = plan_avoiding(&own_block, start);
            if exhausted(&planned) {
                planned = plan_avoiding(&held, start);
            }
            // Addresses still being released come last: a nearly full pool hands them out.
            if exhausted(&planned) {
                planned = plan_avoiding(&taken, start);
            }
            planned
        };
        let mut planned = plan_from(start);
        if dynamic
            && let (Some(last), Ok((cidr, _))) = (walked, &planned)
            && !blocks::goes_on(last, cidr.ip(), |b| view.remote.uses_block(b))
            && let Some(landing) = self.landing(shared, plan, ask.pool_id, &state, view, last)
        {
            planned = plan_from(SearchStart::At(landing));
        }
        match planned {
            Ok((cidr, _)) => {
                let ip = cidr.ip();
                if dynamic {
                    view.walks.insert(ask.pool_id.to_string(), ip);
                }
                if view.in_flight.contains(&ip) {
                    return Err(Error::conflict(format!(
                        "address {ip} of shared pool {} is being claimed by another request of this host",
                        ask.record.pool
                    )));
                }
                view.in_flight.insert(ip);
                Ok(ip)
            }
            Err(e) => Err(e),
        }
    }

    /// Where this host lands when it may not go on from its last address: the first
    /// address of a block in the longest run of blocks nobody uses, or once every block
    /// is used, the middle of the longest run of free addresses (see `blocks`).
    fn landing(
        &self,
        shared: &SharedPlans,
        plan: &str,
        pool_id: &str,
        state: &State,
        view: &PlanView,
        picked_last: IpAddr,
    ) -> Option<IpAddr> {
        let (first, last) = state.ipam.dynamic_span(pool_id)?;
        // The LAN's reservations (the gateway) are every host's: they leave a block free.
        let reserved = |ip: &IpAddr| matches!(view.remote.get(ip), Some(Holder::Shared { .. }));
        let free = |block: u128| {
            let (from, to) = blocks::block_span(block, first);
            let (from, to) = (from.max(first), to.min(last));
            !view.remote.uses_block(block)
                && view.in_flight.range(from..=to).next().is_none()
                && state.ipam.held_in(pool_id, from, to, 64).iter().all(reserved)
        };
        // Apart from other hosts leaving the same place at the same moment.
        let leaving = block_of(picked_last).to_be_bytes();
        let salt = crate::util::stable_hash(&[shared.host.as_bytes(), plan.as_bytes(), &leaving]);
        if let Some(block) = blocks::landing_block(first, last, free, salt) {
            return Some(blocks::block_span(block, first).0.max(first));
        }
        let free_address = |ip: IpAddr| {
            view.remote.get(&ip).is_none()
                && !view.in_flight.contains(&ip)
                && state.ipam.held_in(pool_id, ip, ip, 1).is_empty()
        };
        blocks::landing_in_gap(first, last, free_address, salt)
    }

    /// Leaves a durable note to delete this host's claim of `ip`, if etcd has one, as a
    /// released address does: for a claim whose answer never came. Called while `ip` is
    /// in flight, so the note is dropped if this host takes `ip` again first (by name:
    /// dynamic requests pass over noted addresses). Etcd may still carry the claim out a
    /// moment later, so the note waits [`UNKNOWN_CLAIM_SETTLES`] before it is drained.
    async fn release_claim_later(&self, plan: &str, ip: IpAddr) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let note = SharedRelease {
            plan: plan.to_string(),
            ip,
            not_before: Some(now + UNKNOWN_CLAIM_SETTLES.as_secs()),
        };
        let noted = self
            .plugin
            .commit(|_| Ok(((), vec![Change::PutSharedRelease(note)])))
            .await;
        match noted {
            Ok(()) => self.plugin.wake_shared_releases(),
            // The check of claims at the next start-up releases it.
            Err(e) => tracing::warn!(address = %ip, "claim of unknown outcome left in etcd: {e}"),
        }
    }

    /// Records a claim made in etcd; if the local store refuses it, the claim goes.
    async fn commit_claim(
        &self,
        shared: &SharedPlans,
        plan: &str,
        pool_id: &str,
        ip: IpAddr,
        ask: &SharedAsk<'_>,
    ) -> Result<IpNetwork> {
        let gateway = ask.gateway();
        // The gateway is the same on every host: it does not move where this host goes on.
        let dynamic = ask.address.is_none() && !gateway;
        let committed = self
            .plugin
            .commit(|state| {
                let (cidr, mut changes) = state.ipam.plan_request_address(pool_id, Some(ip), gateway)?;
                let pool = state.ipam.lookup(pool_id)?.map(|p| p.record.seq);
                if dynamic && let Some(seq) = pool {
                    changes.push(IpamChange::SetCursor { pool: seq, ip });
                }
                Ok((cidr, changes.into_iter().map(Change::Ipam).collect()))
            })
            .await;
        // A reservation is the LAN's: never released here (release leaves it anyway).
        if committed.is_err()
            && !gateway
            && let Ok(etcd) = shared.etcd()
        {
            let _ = etcd.release(plan, ip).await;
        }
        committed
    }

    /// The host's own address on its shim (`host_access=on`) in shared pool `pool_id`:
    /// claimed for this host alone, `ip` if named.
    pub async fn claim_host_address(&self, pool_id: &str, ip: Option<IpAddr>) -> Result<IpNetwork> {
        match (self.plugin.shared_pool(pool_id), self.shared()) {
            (Some(record), Some(shared)) => {
                self.request_shared_address(shared, record, pool_id, ip, Purpose::Host)
                    .await
            }
            _ => Err(Error::conflict(format!(
                "pool {pool_id} is not a shared pool of this host: the host's address is reserved with the network"
            ))),
        }
    }
}

impl<K: Kernel> Ipam<K> {
    /// Once a network is made here, its aux addresses in shared pools, claimed as this
    /// host's while it was being made, become the LAN's reservations, which the same
    /// network on other hosts shares. An etcd error leaves them this host's: no address
    /// is held twice, and other hosts' networks of that aux address are refused.
    pub async fn reserve_aux_addresses(&self, network_id: &str) {
        let Some(shared) = &self.shared else {
            return;
        };
        let aux: Vec<(String, IpAddr)> = {
            let state = self.state();
            let Some(network) = state.networks.get(network_id) else {
                return;
            };
            network
                .subnets()
                .flat_map(|s| s.aux_addresses.values().map(move |a| (s, a.ip())))
                .filter_map(|(subnet, ip)| {
                    let pool = state.ipam.pools().find(|p| {
                        p.record.shared
                            && p.record.pool == subnet.pool
                            && p.record.claimed_by.as_deref() == Some(network_id)
                    })?;
                    Some((plan_name(&pool.record), ip))
                })
                .collect()
        };
        let Ok(etcd) = shared.etcd() else {
            return;
        };
        for (plan, ip) in aux {
            match etcd.reserve_for_lan(&plan, ip, Reservation::Aux).await {
                Ok(true) => tracing::debug!(network = short_id(network_id), %ip, "aux address reserved for the LAN"),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    network = short_id(network_id),
                    %ip,
                    "aux address stays this host's claim: {e}; other hosts' networks cannot share it"
                ),
            }
        }
    }
}

/// Claims `ip` for `purpose`; an aux address another host claimed is waited for a moment,
/// as that host's network is being made and its claim will become the LAN's reservation.
async fn claim_for(etcd: &Etcd, plan: &str, ip: IpAddr, purpose: Purpose) -> crate::etcd::EResult<Claim> {
    let reservation = (purpose == Purpose::Gateway).then_some(Reservation::Gateway);
    let deadline = tokio::time::Instant::now() + AUX_WAIT;
    loop {
        let claim = etcd.claim(plan, ip, reservation).await?;
        if purpose != Purpose::Aux {
            return Ok(claim);
        }
        match claim {
            Claim::Taken(Holder::Shared { shared }) if shared == Reservation::Aux.as_str() => return Ok(Claim::Ours),
            Claim::Taken(Holder::Host { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return Ok(other),
        }
    }
}

impl<K: Kernel> Allocations for PoolAllocations<'_, K> {
    async fn request_pool(&self, request: &PoolRequest) -> Result<PoolRecord> {
        if self.shared().is_none() {
            return self.local.request_pool(request).await;
        }
        if request.pool.is_empty() || request.scope() == PoolScope::Local {
            return self.local.request_pool(request).await;
        }
        let record = self
            .plugin
            .commit(|state| {
                let (mut record, changes) = state.ipam.plan_request_pool(request)?;
                record.shared = true;
                let changes: Vec<Change> = changes
                    .into_iter()
                    .map(|c| match c {
                        IpamChange::PutPool(_) => Change::Ipam(IpamChange::PutPool(record.clone())),
                        other => Change::Ipam(other),
                    })
                    .collect();
                Ok((record, changes))
            })
            .await?;
        if let Some(shared) = self.shared() {
            let mut windows = shared.aux_windows();
            windows.retain(|_, made| made.elapsed() < AUX_WINDOW);
            windows.insert(record.seq, std::time::Instant::now());
        }
        Ok(record)
    }

    async fn release_pool(&self, pool_id: &str) -> Result<bool> {
        // The commit's book-keeping notes the claims of its addresses still held.
        let record = self.plugin.shared_pool(pool_id);
        let released = self.local.release_pool(pool_id).await?;
        if released && let Some(record) = record {
            if let Some(shared) = self.shared() {
                shared.forget_walk(&plan_name(&record), pool_id);
            }
            self.plugin.wake_shared_releases();
        }
        Ok(released)
    }

    async fn request_address(&self, pool_id: &str, address: Option<IpAddr>, gateway: bool) -> Result<IpNetwork> {
        match (self.plugin.shared_pool(pool_id), self.shared()) {
            (Some(record), Some(shared)) => {
                let purpose = self.purpose_of(shared, &record, address, gateway);
                self.request_shared_address(shared, record, pool_id, address, purpose)
                    .await
            }
            // Never allocate a shared pool's address alone: another host may hold it.
            (Some(record), None) => Err(Error::unavailable(format!(
                "pool {} is shared through etcd, and rustvlan runs without etcd now; start it again with \
                 --etcd-endpoints",
                record.pool
            ))),
            (None, _) => self.local.request_address(pool_id, address, gateway).await,
        }
    }

    async fn release_address(&self, pool_id: &str, address: IpAddr) -> Result<bool> {
        // The commit's book-keeping leaves the note that deletes the etcd claim.
        let released = self.local.release_address(pool_id, address).await?;
        if released && let Some(record) = self.plugin.shared_pool(pool_id) {
            self.plugin.wake_shared_releases();
            self.plugin.conflict_resolved(&plan_name(&record), address);
        }
        Ok(released)
    }
}

/// An address this host's store records in a shared pool that another host holds in
/// etcd: one of them is a duplicate on the wire. rustvlan never hides it: logged,
/// counted, and shown by `rustvlan status` until resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedConflict {
    pub plan: String,
    pub ip: IpAddr,
    pub held_by: String,
}

/// A fault the tests inject (`RUSTVLAN_FAULT_CLAIM_DELAY_MS`): a pause between a claim
/// in etcd and its record, which widens the window that the check of claims must never
/// fall into. Read once; none unless set.
async fn injected_claim_delay() {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("RUSTVLAN_FAULT_CLAIM_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
    });
    if let Some(delay) = delay {
        tokio::time::sleep(*delay).await;
    }
}

/// Logged with each claim the check releases because no record backs it.
pub const UNANSWERED_RELEASED: &str =
    "released a claim in etcd that no record backs (an allocation that failed after etcd took its claim)";

/// What the start-up check of shared claims did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SharedReport {
    /// Claims in etcd that no recorded address backs (a crash between claim and store):
    /// never answered to dockerd, so released.
    pub unanswered_released: usize,
    /// Recorded addresses etcd no longer had (reclaimed while this host was away):
    /// claimed again.
    pub reclaimed: usize,
    pub conflicts: Vec<SharedConflict>,
}

impl SharedPlans {
    pub fn conflicts(&self) -> Vec<SharedConflict> {
        self.conflicts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_connected(&self) -> bool {
        self.etcd.get().is_some()
    }

    /// Why etcd cannot serve shared pools now, if it cannot.
    pub async fn trouble(&self) -> Option<String> {
        match self.etcd.get() {
            None => Some(format!(
                "etcd unreachable ({}): not reached since rustvlan started",
                self.endpoints
            )),
            Some(etcd) => etcd.probe().await.err().map(|e| match e.kind {
                EtcdErrorKind::Unreachable => e.to_string(),
                _ => format!("etcd unreachable ({}): {e}", self.endpoints),
            }),
        }
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }
}

impl<K: Kernel> Ipam<K> {
    /// An address in conflict was released here: one holder less, no duplicate left.
    fn conflict_resolved(&self, plan: &str, ip: IpAddr) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut conflicts = shared.conflicts.lock().unwrap_or_else(|p| p.into_inner());
        conflicts.retain(|c| c.plan != plan || c.ip != ip);
        self.metrics.shared_conflicts.set(conflicts.len() as i64);
    }

    /// Once etcd answers after start-up, and after each new announcement of this host:
    /// this host's claims in etcd and its store's records of shared pools must agree.
    pub async fn reconcile_shared(&self) -> Result<SharedReport> {
        let Some(shared) = self.shared.clone() else {
            return Ok(SharedReport::default());
        };
        let _no_claims_on_their_way = shared.checking.write().await;
        let etcd = shared.etcd()?;
        let in_etcd = etcd.held_by_me().await.map_err(|e| Error::unavailable(e.to_string()))?;
        let (recorded, releasing) = {
            let state = self.state();
            let mut recorded: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
            for pool in state.ipam.pools().filter(|p| p.record.shared) {
                recorded
                    .entry(plan_name(&pool.record))
                    .or_default()
                    .extend(pool.allocated().filter(|(_, gateway)| !gateway).map(|(ip, _)| ip));
            }
            let releasing: BTreeSet<(String, IpAddr)> =
                state.shared_releases.values().map(|r| (r.plan.clone(), r.ip)).collect();
            (recorded, releasing)
        };
        let mut report = SharedReport::default();
        for (plan, ips) in &in_etcd {
            for ip in ips {
                let backed = recorded.get(plan).is_some_and(|r| r.contains(ip));
                if !backed
                    && !releasing.contains(&(plan.clone(), *ip))
                    && etcd
                        .release(plan, *ip)
                        .await
                        .map_err(|e| Error::unavailable(e.to_string()))?
                {
                    tracing::info!(address = %ip, plan = %plan, "{UNANSWERED_RELEASED}");
                    report.unanswered_released += 1;
                }
            }
        }
        for (plan, ips) in &recorded {
            for ip in ips {
                if in_etcd.get(plan).is_some_and(|e| e.contains(ip)) {
                    continue;
                }
                match etcd
                    .claim(plan, *ip, None)
                    .await
                    .map_err(|e| Error::unavailable(e.to_string()))?
                {
                    Claim::Ours => report.reclaimed += 1,
                    // An aux address: the LAN's reservation, as recorded.
                    Claim::Taken(Holder::Shared { .. }) => {}
                    Claim::Taken(Holder::Host { host }) => report.conflicts.push(SharedConflict {
                        plan: plan.clone(),
                        ip: *ip,
                        held_by: host,
                    }),
                }
            }
        }
        for c in &report.conflicts {
            tracing::error!(
                address = %c.ip,
                plan = %c.plan,
                held_by = %c.held_by,
                "DUPLICATE: this host's store records an address of a shared pool that another host holds in etcd; \
                 the container using it here must move (docker network disconnect/connect) or the other host's"
            );
        }
        *shared.conflicts.lock().unwrap_or_else(|p| p.into_inner()) = report.conflicts.clone();
        self.metrics.shared_conflicts.set(report.conflicts.len() as i64);
        tracing::info!(
            unanswered_released = report.unanswered_released,
            reclaimed = report.reclaimed,
            conflicts = report.conflicts.len(),
            "checked this host's shared claims against etcd"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str) -> Holder {
        Holder::Host { host: id.into() }
    }

    #[test]
    fn a_pool_takes_aux_addresses_only_until_a_container_asks_or_its_window_ends() {
        let plans = SharedPlans::new("h", "http://127.0.0.1:1");
        assert!(!plans.aux_window_open(7, false), "a pool made before a restart");
        plans.aux_windows().insert(7, std::time::Instant::now());
        assert!(plans.aux_window_open(7, false));
        assert!(plans.aux_window_open(7, false), "every aux address of the network");
        assert!(!plans.aux_window_open(7, true), "a container's address is never an aux");
        assert!(!plans.aux_window_open(7, false), "and closes the window");
        plans
            .aux_windows()
            .insert(8, std::time::Instant::now() - AUX_WINDOW - Duration::from_millis(1));
        assert!(!plans.aux_window_open(8, false), "too late for an aux address");
        assert!(plans.aux_windows().is_empty());
    }

    #[test]
    fn an_aux_address_may_share_what_a_container_address_may_not() {
        let record = PoolRecord {
            seq: 1,
            address_space: "rustvlan-local".into(),
            pool: "10.0.0.0/24".parse().unwrap(),
            sub_pool: None,
            options: BTreeMap::new(),
            claimed_by: None,
            shared: true,
            dhcp: false,
        };
        let ask = |purpose| SharedAsk {
            pool_id: "p",
            record: &record,
            address: None,
            purpose,
        };
        let lan = Holder::Shared { shared: "aux".into() };
        assert!(ask(Purpose::Gateway).shares(&lan) && !ask(Purpose::Gateway).shares(&host("b")));
        assert!(ask(Purpose::Aux).shares(&lan) && ask(Purpose::Aux).shares(&host("b")));
        assert!(!ask(Purpose::Host).shares(&lan) && !ask(Purpose::Host).shares(&host("b")));
    }

    #[test]
    fn a_block_is_foreign_while_another_host_holds_an_address_of_it() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut remote = Remote::from_claims([(
            ip("10.0.0.1"),
            Holder::Shared {
                shared: "gateway".into(),
            },
        )]);
        // The LAN's gateway makes no block another host's.
        assert!(!remote.in_foreign_block(ip("10.0.0.2")));
        remote.insert(ip("10.0.0.70"), host("b"));
        remote.insert(ip("10.0.0.71"), host("c"));
        assert!(remote.in_foreign_block(ip("10.0.0.64")) && remote.in_foreign_block(ip("10.0.0.127")));
        assert!(!remote.in_foreign_block(ip("10.0.0.63")) && !remote.in_foreign_block(ip("10.0.0.128")));
        remote.remove(&ip("10.0.0.70"));
        assert!(remote.in_foreign_block(ip("10.0.0.64")), "c still holds .71");
        // A holder that changes is counted once.
        remote.insert(ip("10.0.0.71"), host("b"));
        remote.remove(&ip("10.0.0.71"));
        assert!(!remote.in_foreign_block(ip("10.0.0.64")));
        assert!(remote.per_block.is_empty());
    }

    #[test]
    fn hosts_start_apart_and_each_always_at_the_same_point() {
        let plan = "10.150.0.0_20";
        assert_eq!(home_point("a", plan), home_point("a", plan));
        assert_ne!(home_point("a", plan), home_point("b", plan));
        assert_ne!(home_point("a", plan), home_point("a", "10.151.0.0_20"));
    }
}
