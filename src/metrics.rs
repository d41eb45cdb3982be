//! Prometheus metrics, in the text exposition format: `GET /metrics` on the plugin's
//! socket, and on `--metrics-listen` when the operator asks for a TCP listener.
//!
//! Counters and histograms are updated where things happen (the router, the kernel
//! wrapper, the store); the gauges of what rustvlan holds (networks, endpoints, pools)
//! are read from the state at each scrape, so they can never drift from it. Labels are
//! bounded: call names, link operations, outcomes, pools; never endpoint ids.

use std::ops::Deref;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::error::ErrorKind;
use crate::model::{DhcpEvent, LinkMode, Named};
use crate::state::State;
use nix::errno::Errno;

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latencies from 50 µs to ~13 s: a Join is ~1 ms, an fsync a few ms, a slow disk or a
/// kernel under RTNL contention seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

/// Sizes from 1 to 4096.
fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `NetworkDriver.Join`, `IpamDriver.RequestAddress`, ...
    pub call: &'static str,
    /// `ok`, or the error's kind (`invalid`, `not_found`, `conflict`, `exhausted`,
    /// `kernel`, `store`).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: &'static str,
}

/// A kernel link operation, as [`crate::kernel::Kernel`] names them.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LinkOp {
    Get,
    Dump,
    AddChild,
    AddVlan,
    AddDummy,
    Delete,
    DeleteBatch,
    DumpNamespace,
    Set,
    Addresses,
    AddAddress,
    DeleteAddress,
    Routes,
    AddRoute,
    DeleteRoute,
}

impl LinkOp {
    pub fn name(self) -> &'static str {
        match self {
            LinkOp::Get => "get",
            LinkOp::Dump => "dump",
            LinkOp::AddChild => "add_child",
            LinkOp::AddVlan => "add_vlan",
            LinkOp::AddDummy => "add_dummy",
            LinkOp::Delete => "delete",
            LinkOp::DeleteBatch => "delete_batch",
            LinkOp::DumpNamespace => "dump_namespace",
            LinkOp::Set => "set",
            LinkOp::Addresses => "addresses",
            LinkOp::AddAddress => "add_address",
            LinkOp::DeleteAddress => "delete_address",
            LinkOp::Routes => "routes",
            LinkOp::AddRoute => "add_route",
            LinkOp::DeleteRoute => "delete_route",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkOpLabels {
    pub op: &'static str,
    /// `ok`, the errno's name (`EEXIST`), or `error` when the kernel could not be asked.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// Link operations: counted by outcome and timed. Shared with [`crate::kernel::Metered`].
#[derive(Clone, Debug)]
pub struct LinkOpMetrics {
    count: Family<LinkOpLabels, Counter>,
    duration: HistogramFamily<OpLabels>,
}

impl Default for LinkOpMetrics {
    fn default() -> Self {
        LinkOpMetrics {
            count: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl LinkOpMetrics {
    pub fn observe(&self, op: LinkOp, errno: Result<(), Option<Errno>>, took: Duration) {
        let outcome = match errno {
            Ok(()) => "ok",
            Err(Some(errno)) => errno_label(errno),
            Err(None) => "error",
        };
        self.count.get_or_create(&LinkOpLabels { op: op.name(), outcome }).inc();
        self.duration
            .get_or_create(&OpLabels { op: op.name() })
            .observe(took.as_secs_f64());
    }
}

/// The errno's symbolic name as a label value: the errnos link operations meet, and
/// `other_errno` for the rest, keeping the label's values few.
fn errno_label(errno: Errno) -> &'static str {
    match errno {
        Errno::EEXIST => "EEXIST",
        Errno::ENODEV => "ENODEV",
        Errno::ENOENT => "ENOENT",
        Errno::EBUSY => "EBUSY",
        Errno::EINVAL => "EINVAL",
        Errno::EPERM => "EPERM",
        Errno::EOPNOTSUPP => "EOPNOTSUPP",
        Errno::EADDRINUSE => "EADDRINUSE",
        Errno::ENOBUFS => "ENOBUFS",
        Errno::ENOMEM => "ENOMEM",
        _ => "other_errno",
    }
}

/// etcd calls (shared pools): counted by outcome and timed. Shared with [`crate::etcd::Etcd`].
#[derive(Clone, Debug)]
pub struct EtcdMetrics {
    count: Family<EtcdLabels, Counter>,
    duration: HistogramFamily<OpLabels>,
    /// Claims of an address another host had claimed first: each costs its request
    /// another pick and another round trip, so a rising share means hosts crowd.
    claims_lost: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EtcdLabels {
    pub op: &'static str,
    /// `ok` or `error` (unreachable, no quorum, timed out).
    pub outcome: &'static str,
}

impl Default for EtcdMetrics {
    fn default() -> Self {
        EtcdMetrics {
            count: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            claims_lost: Counter::default(),
        }
    }
}

impl EtcdMetrics {
    pub fn claims_lost(&self, n: u64) {
        self.claims_lost.inc_by(n);
    }

    pub fn observe(&self, op: &'static str, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.count.get_or_create(&EtcdLabels { op, outcome }).inc();
        self.duration
            .get_or_create(&OpLabels { op })
            .observe(took.as_secs_f64());
    }
}

/// The store's group commits: how long each took and how much it carried.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    commit_duration: Histogram,
    batch_requests: Histogram,
    batch_changes: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commit_duration: latency_histogram(),
            batch_requests: size_histogram(),
            batch_changes: size_histogram(),
        }
    }
}

impl StoreMetrics {
    pub fn observe_commit(&self, requests: u64, changes: usize, took: Duration) {
        self.commit_duration.observe(took.as_secs_f64());
        self.batch_requests.observe(requests as f64);
        self.batch_changes.observe(changes as f64);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabels {
    /// `macvlan` or `ipvlan`.
    pub kind: &'static str,
    /// `bridge`, `private`, `vepa`, `passthru`; `l2`, `l3`, `l3s`.
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The pool id dockerd holds: `rustvlan-local/10.0.0.0/24#3`.
    pub pool: String,
    pub subnet: String,
    /// The rustvlan network using the pool (its 12-character id), empty until one does.
    pub network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<CallLabels>,
    networks: Family<NetworkLabels, Gauge>,
    endpoints: Gauge,
    pool_capacity: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    pool_allocated: Family<PoolLabels, Gauge>,
    pending_deletes: Gauge,
    parents_made: Gauge,
    reconcile_actions: Family<ActionLabels, Counter>,
    dhcp_leases: Family<OutcomeLabels, Counter>,
    addresses_reclaimed: Counter,
    shared_releases_pending: Gauge,
    pub(crate) shared_conflicts: Gauge,
    pub(crate) etcd_connected: Gauge,
    pub(crate) etcd: EtcdMetrics,
    /// One scrape at a time: a scrape clears and refills the state gauges.
    scrape: Mutex<()>,
}

impl Metrics {
    pub fn new(store: &StoreMetrics, links: &LinkOpMetrics) -> Metrics {
        let mut registry = Registry::with_prefix("rustvlan");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Plugin API calls answered, by call and outcome",
            requests.clone(),
        );
        let request_duration: HistogramFamily<CallLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from a call's arrival to its answer",
            Unit::Seconds,
            request_duration.clone(),
        );
        let networks = Family::<NetworkLabels, Gauge>::default();
        registry.register("networks", "rustvlan networks, by link kind and mode", networks.clone());
        let endpoints = Gauge::default();
        registry.register("endpoints", "Endpoints (containers' attachments)", endpoints.clone());
        let pool_capacity = Family::<PoolLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "pool_capacity_addresses",
            "Addresses a pool can hand out",
            pool_capacity.clone(),
        );
        let pool_allocated = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_allocated_addresses",
            "Addresses of a pool allocated now, gateways included",
            pool_allocated.clone(),
        );
        let pending_deletes = Gauge::default();
        registry.register(
            "links_pending_delete",
            "Links of removed endpoints still queued for deletion",
            pending_deletes.clone(),
        );
        let parents_made = Gauge::default();
        registry.register(
            "parents_made",
            "Parent links (VLANs, dummies) rustvlan made and owns",
            parents_made.clone(),
        );
        registry.register(
            "link_operations",
            "Kernel link operations, by operation and outcome",
            links.count.clone(),
        );
        registry.register_with_unit(
            "link_operation_duration",
            "Time a kernel link operation took",
            Unit::Seconds,
            links.duration.clone(),
        );
        registry.register_with_unit(
            "store_commit_duration",
            "Time a group commit of the store took (write and fsync)",
            Unit::Seconds,
            store.commit_duration.clone(),
        );
        registry.register(
            "store_commit_batch_requests",
            "Requests whose changes one group commit made durable",
            store.batch_requests.clone(),
        );
        registry.register(
            "store_commit_batch_changes",
            "Record changes one group commit made durable",
            store.batch_changes.clone(),
        );
        let reconcile_actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "reconcile_actions",
            "What the start-up reconcile did to bring the kernel in line with the records",
            reconcile_actions.clone(),
        );
        let dhcp_leases = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "dhcp_lease_events",
            "DHCP lease events of rustvlan-dhcp pools: acquired, renewed, released, and the renewals that failed \
             (nak, no_answer, expired, changed)",
            dhcp_leases.clone(),
        );
        let addresses_reclaimed = Counter::default();
        registry.register(
            "addresses_reclaimed",
            "Addresses released by the sweep because nothing used them for the grace period",
            addresses_reclaimed.clone(),
        );
        let etcd = EtcdMetrics::default();
        registry.register(
            "etcd_operations",
            "etcd calls of shared pools, by operation and outcome",
            etcd.count.clone(),
        );
        registry.register_with_unit(
            "etcd_operation_duration",
            "Time an etcd call took",
            Unit::Seconds,
            etcd.duration.clone(),
        );
        registry.register(
            "etcd_claims_lost",
            "Address claims of shared pools that found the address already another host's",
            etcd.claims_lost.clone(),
        );
        let etcd_connected = Gauge::default();
        registry.register(
            "etcd_connected",
            "1 once this host reached etcd since start-up (shared pools configured), else 0",
            etcd_connected.clone(),
        );
        let shared_releases_pending = Gauge::default();
        registry.register(
            "shared_releases_pending",
            "Shared addresses released here whose etcd claims are still to be deleted",
            shared_releases_pending.clone(),
        );
        let shared_conflicts = Gauge::default();
        registry.register(
            "shared_conflicts",
            "Addresses this host records in shared pools that another host holds in etcd",
            shared_conflicts.clone(),
        );
        let start_time = Gauge::<f64, AtomicU64>::default();
        start_time.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        registry.register_with_unit(
            "process_start_time",
            "When this rustvlan process started, in seconds since the Unix epoch",
            Unit::Seconds,
            start_time,
        );
        registry.register(
            "build",
            "The running rustvlan's version",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            networks,
            endpoints,
            pool_capacity,
            pool_allocated,
            pending_deletes,
            parents_made,
            reconcile_actions,
            dhcp_leases,
            addresses_reclaimed,
            shared_releases_pending,
            shared_conflicts,
            etcd_connected,
            etcd,
            scrape: Mutex::new(()),
        }
    }

    pub fn observe_request(&self, call: &'static str, outcome: Result<(), ErrorKind>, took: Duration) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(kind) => kind.name(),
        };
        self.requests.get_or_create(&RequestLabels { call, outcome }).inc();
        self.request_duration
            .get_or_create(&CallLabels { call })
            .observe(took.as_secs_f64());
    }

    pub fn count_reconcile(&self, action: &'static str, n: usize) {
        if n > 0 {
            self.reconcile_actions
                .get_or_create(&ActionLabels { action })
                .inc_by(n as u64);
        }
    }

    pub fn count_dhcp(&self, event: DhcpEvent) {
        self.dhcp_leases
            .get_or_create(&OutcomeLabels { outcome: event.label() })
            .inc();
    }

    pub fn count_reclaimed(&self, n: usize) {
        self.addresses_reclaimed.inc_by(n as u64);
    }

    /// The text exposition of every metric, the state gauges read now from the state
    /// that `lock_state` locks (and that is unlocked again before the text is written).
    pub fn encode<G: Deref<Target = State>>(&self, lock_state: impl FnOnce() -> G) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.observe_state(&lock_state());
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    fn observe_state(&self, state: &State) {
        self.networks.clear();
        for network in state.networks.values() {
            let (kind, mode) = match network.link {
                LinkMode::Macvlan { mode } => ("macvlan", mode.name()),
                LinkMode::Ipvlan { mode, .. } => ("ipvlan", mode.name()),
            };
            self.networks.get_or_create(&NetworkLabels { kind, mode }).inc();
        }
        self.endpoints.set(state.endpoints.len() as i64);
        self.pending_deletes.set(state.pending.len() as i64);
        self.parents_made.set(state.parents.len() as i64);
        self.shared_releases_pending.set(state.shared_releases.len() as i64);
        self.pool_capacity.clear();
        self.pool_allocated.clear();
        for pool in state.ipam.pools() {
            let labels = PoolLabels {
                pool: pool.id(),
                subnet: pool.record.pool.to_string(),
                network: pool
                    .record
                    .claimed_by
                    .as_deref()
                    .map(crate::util::short_id)
                    .unwrap_or_default()
                    .to_string(),
            };
            self.pool_capacity.get_or_create(&labels).set(pool.capacity() as f64);
            self.pool_allocated
                .get_or_create(&labels)
                .set(pool.allocated_count().min(i64::MAX as u128) as i64);
        }
    }
}
