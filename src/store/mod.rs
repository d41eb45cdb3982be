//! Durable state in sled.
//!
//! One tree, typed JSON records under prefixed keys. Each request's changes go in as one
//! sled batch (atomic, also across a crash) and the request is answered only after a
//! flush covers it. Concurrent requests share flushes (group commit): whoever flushes
//! first covers every write made before its flush started.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, anyhow, bail};
use ipnetwork::Ipv6Network;
use serde::{Deserialize, Serialize};

use crate::ipam::allocator::{Ipam, IpamChange, IpamConfig};
use crate::metrics::StoreMetrics;
use crate::model::{
    EndpointRecord, LeaseRecord, NetworkRecord, ParentRecord, PendingDelete, PoolRecord, SharedRelease,
};
use crate::state::{Change, State};

mod journal;
pub use journal::{Journal, MemoryJournal};

const SCHEMA_VERSION: u64 = 1;

const META_SCHEMA: &str = "meta/schema";
const META_NEXT_POOL_SEQ: &str = "meta/next_pool_seq";
const META_V6_RANGE: &str = "meta/default_v6_range";
const META_LINK_GROUP: &str = "meta/link_group";
/// The number of the last batch written, inside the store itself.
const META_GENERATION: &str = "meta/generation";
/// Beside the store: the number of the last batch known to be on disk. A store whose
/// own generation is lower has lost changes that were acknowledged.
const GENERATION_FILE: &str = "generation";
const NETWORK: &str = "net/";
const ENDPOINT: &str = "ep/";
const PARENT: &str = "parent/";
const POOL: &str = "pool/";
const CURSOR: &str = "cursor/";
const ADDRESS: &str = "addr/";
const PENDING: &str = "pending/";
const SHARED_RELEASE: &str = "relq/";
const LEASE: &str = "lease/";

/// Settings for pools without an explicit subnet; the v6 range is chosen once per store.
#[derive(Debug, Clone)]
pub struct PoolDefaults {
    pub v4_range: ipnetwork::Ipv4Network,
    pub v4_prefix: u8,
}

pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    /// sled's log file, for fdatasync.
    log_file: std::fs::File,
    /// Generation of the last batch written; a batch's ticket is its generation.
    written: AtomicU64,
    /// Highest ticket known to be on disk; waiters watch it.
    flushed: tokio::sync::watch::Sender<u64>,
    /// Set by the request whose flush is running (the leader). The others wait for the
    /// next value of `flushed` and usually find their write covered (group commit).
    flushing: AtomicBool,
    /// Held by whoever writes the queue to sled and flushes it: the request path's
    /// leader, and `flush` at start-up, shutdown and in tools. Two commits at once could
    /// write an older generation over a newer one, or publish a generation whose batch
    /// another commit has taken but not yet written.
    committing: StdMutex<()>,
    /// The generation marker beside the store: rewritten after flushes, off the
    /// request path (it only has to trail what is on disk, never lead it).
    marker: StdMutex<Option<std::fs::File>>,
    marker_wanted: AtomicBool,
    marker_running: AtomicBool,
    /// Changes written by requests and not yet in sled, in memory order.
    queue: StdMutex<Vec<Change>>,
    /// Set when a write or flush failed: what is on disk may then lag what was answered,
    /// so no further change is accepted until a restart reloads the disk's truth.
    failed: StdMutex<Option<String>>,
    metrics: StoreMetrics,
}

#[derive(Serialize, Deserialize, Default)]
struct AddressValue {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    gateway: bool,
}

fn seq_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}{seq:016x}")
}

fn address_key(seq: u64, ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{ADDRESS}{seq:016x}/{:08x}", u32::from(a)),
        IpAddr::V6(a) => format!("{ADDRESS}{seq:016x}/{:032x}", u128::from(a)),
    }
}

fn parse_address_key(rest: &str) -> Option<(u64, IpAddr)> {
    let (seq, hex) = rest.split_once('/')?;
    let seq = u64::from_str_radix(seq, 16).ok()?;
    let ip = match hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(hex, 16).ok()?)),
        32 => IpAddr::V6(Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?)),
        _ => return None,
    };
    Some((seq, ip))
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

/// What [`Store::load`] found, besides the state itself.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    pub link_group: u32,
    pub networks: usize,
    pub endpoints: usize,
    pub pools: usize,
    pub addresses: usize,
    pub parents_made: usize,
}

/// Every record in the store, decoded. Loading and `rustvlan state` both start here, so
/// what `state` shows is what a restart would load.
#[derive(Debug, Default)]
pub struct Records {
    pub schema: u64,
    /// Not part of the state (`to_json` leaves it out): it moves with every write.
    pub generation: u64,
    pub next_pool_seq: u64,
    pub default_v6_range: Option<Ipv6Network>,
    /// The IFLA_GROUP number that marks the links this store owns: random in
    /// 2^30..2^31, clear of the small numbers people assign by hand and still a
    /// positive int for iproute2 (`ip link show group N`).
    pub link_group: u32,
    pub networks: BTreeMap<String, NetworkRecord>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
    pub parents: BTreeMap<String, ParentRecord>,
    pub pending: BTreeMap<String, PendingDelete>,
    pub shared_releases: BTreeMap<String, SharedRelease>,
    pub leases: BTreeMap<String, LeaseRecord>,
    pub pools: BTreeMap<u64, PoolRecord>,
    pub cursors: BTreeMap<u64, IpAddr>,
    pub addresses: BTreeMap<u64, BTreeMap<IpAddr, bool>>,
}

impl Records {
    /// The changes that rebuild this state from nothing, in dependency order. Consumes
    /// the records: with 10 000 endpoints, cloning them would cost a tenth of start-up.
    fn into_changes(self) -> Vec<Change> {
        let addresses: usize = self.addresses.values().map(BTreeMap::len).sum();
        let mut out = Vec::with_capacity(
            1 + self.pools.len()
                + self.cursors.len()
                + addresses
                + self.parents.len()
                + self.networks.len()
                + self.endpoints.len()
                + self.pending.len(),
        );
        out.push(Change::Ipam(IpamChange::SetNextPoolSeq(self.next_pool_seq)));
        out.extend(self.pools.into_values().map(|p| Change::Ipam(IpamChange::PutPool(p))));
        out.extend(
            self.cursors
                .into_iter()
                .map(|(pool, ip)| Change::Ipam(IpamChange::SetCursor { pool, ip })),
        );
        for (pool, addrs) in self.addresses {
            out.extend(
                addrs
                    .into_iter()
                    .map(|(ip, gateway)| Change::Ipam(IpamChange::PutAddress { pool, ip, gateway })),
            );
        }
        out.extend(self.parents.into_values().map(Change::PutParent));
        out.extend(self.networks.into_values().map(Change::PutNetwork));
        out.extend(self.endpoints.into_values().map(Change::PutEndpoint));
        out.extend(self.pending.into_values().map(Change::PutPending));
        out.extend(self.shared_releases.into_values().map(Change::PutSharedRelease));
        out.extend(self.leases.into_values().map(Change::PutLease));
        out
    }
}

/// sled's page cache. The state is read whole into memory at start-up and sled is only
/// written after that, so the cache holds little worth keeping: at 8 MiB it was the
/// largest single part of the peak while creating 10 000 endpoints (bench P5).
const SLED_CACHE_BYTES: u64 = 2 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the store in `dir`. Fails, never starts empty, when the store
    /// exists but cannot be read.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let db_path = dir.join("db");
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(|e| explain_open_error(&db_path, e))?;
        // sled's log; opened read-only only to fdatasync it (see `flush_log`).
        let log_path = db_path.join("db");
        let log_file =
            std::fs::File::open(&log_path).with_context(|| format!("cannot open {} to sync it", log_path.display()))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            log_file,
            written: AtomicU64::new(0),
            flushed: tokio::sync::watch::Sender::new(0),
            flushing: AtomicBool::new(false),
            committing: StdMutex::new(()),
            queue: StdMutex::new(Vec::new()),
            marker: StdMutex::new(None),
            marker_wanted: AtomicBool::new(false),
            marker_running: AtomicBool::new(false),
            failed: StdMutex::new(None),
            metrics: StoreMetrics::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Decodes every record. Any record that does not decode is an error: rustvlan must
    /// not run on a store it only half understands.
    pub fn records(&self) -> anyhow::Result<Records> {
        decode_records(self.db.iter().map(|item| item.context("reading the state store")))
    }

    /// Loads the state, initialising a new store on first use.
    pub fn load(&self, defaults: &PoolDefaults) -> anyhow::Result<(State, Loaded)> {
        let mut records = self.records()?;
        if records.schema == 0 {
            let mut batch = sled::Batch::default();
            for (key, value) in new_store_records(&mut records) {
                batch.insert(key, value);
            }
            self.db.apply_batch(batch).context("initialising the state store")?;
            self.db.flush().map_err(plain).context("initialising the state store")?;
        }
        if records.link_group == 0 {
            bail!("the store has no link group record");
        }
        self.check_generation(records.generation)?;
        self.written.store(records.generation, Ordering::SeqCst);
        self.flushed.send_replace(records.generation);
        // A store that cannot take a write (read-only, full) must stop start-up, not the
        // first container.
        // (an empty batch still stamps the generation)
        let probe = self.apply(&[], records.generation).and_then(|_| self.flush());
        probe.with_context(|| {
            format!(
                "the state store in {} cannot be written; make room or make it writable, then start rustvlan again",
                self.dir.display()
            )
        })?;
        state_of(records, defaults)
    }

    /// Refuses a store that is behind the generation recorded beside it: sled drops a
    /// damaged tail of its log silently, and starting on it would hand out addresses
    /// that running containers use.
    fn check_generation(&self, in_store: u64) -> anyhow::Result<()> {
        let path = self.dir.join(GENERATION_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(anyhow!(e).context(format!("reading {}", path.display()))),
        };
        let on_disk: u64 = text
            .trim()
            .parse()
            .map_err(|_| anyhow!("{} does not hold a generation number", path.display()))?;
        if in_store < on_disk {
            bail!(
                "the state store lost acknowledged changes: it ends at change {in_store}, but change {on_disk} was \
                 written to disk (the store was damaged, or restored from an older copy); restore a current copy of \
                 {dir}, or accept the loss by deleting {path} (addresses of running containers may then be handed \
                 out twice)",
                dir = self.dir.display(),
                path = path.display()
            );
        }
        Ok(())
    }

    /// Records the generation known to be on disk beside the store.
    fn write_generation_marker(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::FileExt;
        let generation = *self.flushed.borrow();
        let path = self.dir.join(GENERATION_FILE);
        let mut file = self.marker.lock().expect("poisoned");
        if file.is_none() {
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?,
            );
        }
        let file = file.as_ref().expect("just opened");
        // Fixed width: a rewrite never leaves a longer old number's tail behind.
        file.write_all_at(format!("{generation:020}\n").as_bytes(), 0)
            .and_then(|_| file.sync_data())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Has the marker rewritten soon, by one writer at a time; requests do not wait.
    /// At most one rewrite per MARKER_INTERVAL: it costs an fsync, and under load flushes
    /// come thousands of times a second.
    fn schedule_marker(self: &Arc<Self>) {
        const MARKER_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
        self.marker_wanted.store(true, Ordering::SeqCst);
        if self.marker_running.swap(true, Ordering::SeqCst) {
            return; // the running writer sees `marker_wanted` and goes round again
        }
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            loop {
                store.marker_wanted.store(false, Ordering::SeqCst);
                if let Err(e) = store.write_generation_marker() {
                    tracing::warn!("{e:#}");
                }
                std::thread::sleep(MARKER_INTERVAL);
                store.marker_running.store(false, Ordering::SeqCst);
                if !store.marker_wanted.load(Ordering::SeqCst) || store.marker_running.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    }

    /// Queues one request's changes, in the order the state lock gives them, and returns
    /// the ticket to pass to [`Store::sync`]. Call it under the state lock. The changes
    /// reach sled with the next flush, together with those of every request queued
    /// meanwhile, as one atomic batch (see [`Store::sync`]). An empty change list
    /// queues nothing and returns the last ticket (its answer may still depend on
    /// changes not yet on disk).
    pub fn write(&self, changes: &[Change]) -> anyhow::Result<u64> {
        if let Some(reason) = self.failed.lock().expect("poisoned").clone() {
            bail!("refusing changes after an earlier store failure ({reason}); fix the disk and restart rustvlan");
        }
        let mut queue = self.queue.lock().expect("poisoned");
        if changes.is_empty() {
            return Ok(self.written.load(Ordering::SeqCst));
        }
        queue.extend_from_slice(changes);
        Ok(self.written.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Takes the queue and the ticket it ends with.
    fn take_queue(&self) -> (Vec<Change>, u64) {
        let mut queue = self.queue.lock().expect("poisoned");
        (std::mem::take(&mut *queue), self.written.load(Ordering::SeqCst))
    }

    /// Writes queued changes as one atomic sled batch stamped with `generation`. Later
    /// changes to a key replace earlier ones, as they did in memory.
    fn apply(&self, changes: &[Change], generation: u64) -> anyhow::Result<()> {
        let mut batch: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for change in changes {
            add_to_batch(&mut batch, change, |prefix| {
                self.db
                    .scan_prefix(prefix)
                    .keys()
                    .map(|k| Ok(k.context("reading the state store")?.to_vec()))
                    .collect()
            })?;
        }
        batch.insert(META_GENERATION.as_bytes().to_vec(), Some(to_json(&generation)));
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(v) => sled_batch.insert(key, v),
                None => sled_batch.remove(key),
            }
        }
        self.db
            .apply_batch(sled_batch)
            .map_err(plain)
            .context("writing to the state store")
    }

    fn fail(&self, err: &anyhow::Error) {
        let mut failed = self.failed.lock().expect("poisoned");
        if failed.is_none() {
            tracing::error!("state store failed, refusing further changes: {err:#}");
            *failed = Some(format!("{err:#}"));
        }
    }

    /// Waits until the changes with `ticket` are on disk. The first waiter to find no
    /// flush running leads one: it writes every queued change as one batch, flushes and
    /// syncs; the others wait for it and go again only if they queued too late for it.
    pub async fn sync(self: &Arc<Self>, ticket: u64) -> anyhow::Result<()> {
        let mut flushed = self.flushed.subscribe();
        loop {
            if *flushed.borrow_and_update() >= ticket {
                return Ok(());
            }
            if let Some(reason) = self.failed.lock().expect("poisoned").clone() {
                bail!("the state store failed earlier: {reason}");
            }
            if self.flushing.swap(true, Ordering::SeqCst) {
                // Someone else's flush is running: wait for its result.
                flushed.changed().await.map_err(|_| anyhow!("the state store closed"))?;
                continue;
            }
            // The leader's whole turn runs in the blocking task, publishing included, so
            // that a request dropped while it waits cannot leave `flushing` set.
            let store = Arc::clone(self);
            let lead = tokio::task::spawn_blocking(move || {
                let result = store.commit_queue();
                // Clear before publishing, so that a waiter woken by the news can lead next.
                store.flushing.store(false, Ordering::SeqCst);
                match &result {
                    Ok(target) => {
                        store.flushed.send_modify(|f| *f = (*f).max(*target));
                        store.schedule_marker();
                    }
                    Err(err) => {
                        store.fail(err);
                        store.flushed.send_modify(|_| {});
                    }
                }
                result
            });
            lead.await.map_err(|e| anyhow!("flush task failed: {e}"))??;
        }
    }

    /// Writes the queue and makes it durable; returns the ticket now on disk.
    fn commit_queue(&self) -> anyhow::Result<u64> {
        let _committing = self.committing.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        let already_durable = *self.flushed.borrow();
        let (changes, target) = self.take_queue();
        if !changes.is_empty() {
            self.apply(&changes, target)?;
        }
        self.flush_log()?;
        self.metrics
            .observe_commit(target.saturating_sub(already_durable), changes.len(), started.elapsed());
        Ok(target)
    }

    /// The group commits' metrics, for the registry.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Makes everything written so far durable. sled 0.34's flush writes its log with
    /// sync_file_range, which neither flushes the disk's volatile write cache nor the
    /// file's metadata; an fdatasync of the log file afterwards does both.
    fn flush_log(&self) -> anyhow::Result<()> {
        self.db
            .flush()
            .map_err(plain)
            .context("flushing the state store to disk")?;
        self.log_file
            .sync_data()
            .with_context(|| format!("syncing {}", self.dir.join("db/db").display()))
    }

    /// Writes what is queued, flushes, and records the generation beside the store; for
    /// start-up, shutdown and tools.
    pub fn flush(&self) -> anyhow::Result<()> {
        let target = self.commit_queue()?;
        self.flushed.send_modify(|f| *f = (*f).max(target));
        self.write_generation_marker()
    }
}

/// Adds one change to a batch of key writes (None: delete). `stored_keys` lists the keys
/// already stored under a prefix (a pool's delete takes its addresses with it).
fn add_to_batch(
    batch: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    change: &Change,
    stored_keys: impl Fn(&[u8]) -> anyhow::Result<Vec<Vec<u8>>>,
) -> anyhow::Result<()> {
    let mut put = |key: String, value: Vec<u8>| {
        batch.insert(key.into_bytes(), Some(value));
    };
    match change {
        Change::PutNetwork(n) => put(format!("{NETWORK}{}", n.id), to_json(n)),
        Change::PutEndpoint(e) => put(format!("{ENDPOINT}{}", e.id), to_json(e)),
        Change::PutParent(p) => put(format!("{PARENT}{}", p.name), to_json(p)),
        Change::PutPending(p) => put(format!("{PENDING}{}", p.link_name), to_json(p)),
        Change::PutSharedRelease(r) => put(format!("{SHARED_RELEASE}{}", r.key()), to_json(r)),
        Change::PutLease(l) => put(format!("{LEASE}{}", l.key()), to_json(l)),
        Change::Ipam(IpamChange::PutPool(p)) => put(seq_key(POOL, p.seq), to_json(p)),
        Change::Ipam(IpamChange::PutAddress { pool, ip, gateway }) => {
            put(address_key(*pool, *ip), to_json(&AddressValue { gateway: *gateway }))
        }
        Change::Ipam(IpamChange::SetCursor { pool, ip }) => put(seq_key(CURSOR, *pool), to_json(ip)),
        Change::Ipam(IpamChange::SetNextPoolSeq(seq)) => put(META_NEXT_POOL_SEQ.to_string(), to_json(seq)),
        Change::DelNetwork(id) => del(batch, format!("{NETWORK}{id}")),
        Change::DelEndpoint(id) => del(batch, format!("{ENDPOINT}{id}")),
        Change::DelParent(name) => del(batch, format!("{PARENT}{name}")),
        Change::DelPending(name) => del(batch, format!("{PENDING}{name}")),
        Change::DelSharedRelease(key) => del(batch, format!("{SHARED_RELEASE}{key}")),
        Change::DelLease(key) => del(batch, format!("{LEASE}{key}")),
        Change::Ipam(IpamChange::DelAddress { pool, ip }) => del(batch, address_key(*pool, *ip)),
        Change::Ipam(IpamChange::DelPool(seq)) => {
            del(batch, seq_key(POOL, *seq));
            del(batch, seq_key(CURSOR, *seq));
            // Its addresses: those on disk, and those earlier in this batch.
            let prefix = format!("{ADDRESS}{seq:016x}/").into_bytes();
            for key in stored_keys(&prefix)? {
                batch.insert(key, None);
            }
            for value in batch
                .range_mut(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
            {
                *value.1 = None;
            }
        }
    }
    Ok(())
}

/// The in-memory state a store's records load into.
fn state_of(records: Records, defaults: &PoolDefaults) -> anyhow::Result<(State, Loaded)> {
    let default_v6_range = records
        .default_v6_range
        .ok_or_else(|| anyhow!("the store has no default IPv6 range record"))?;
    let ipam = Ipam::new(IpamConfig {
        default_v4_range: defaults.v4_range,
        default_v4_prefix: defaults.v4_prefix,
        default_v6_range,
        default_v6_prefix: 64,
    });
    let loaded = Loaded {
        link_group: records.link_group,
        networks: records.networks.len(),
        endpoints: records.endpoints.len(),
        pools: records.pools.len(),
        addresses: records.addresses.values().map(BTreeMap::len).sum(),
        parents_made: records.parents.len(),
    };
    let mut state = State::new(ipam);
    state.apply_all(records.into_changes());
    Ok((state, loaded))
}

/// A new store's first records (schema, the v6 range, the link group), also set in
/// `records`.
fn new_store_records(records: &mut Records) -> [(&'static str, Vec<u8>); 3] {
    let v6 = random_ula_48();
    let mut bytes = [0u8; 4];
    crate::util::random_bytes(&mut bytes);
    let link_group = (u32::from_be_bytes(bytes) & 0x3fff_ffff) | 0x4000_0000;
    records.schema = SCHEMA_VERSION;
    records.default_v6_range = Some(v6);
    records.link_group = link_group;
    [
        (META_SCHEMA, to_json(&SCHEMA_VERSION)),
        (META_V6_RANGE, to_json(&v6)),
        (META_LINK_GROUP, to_json(&link_group)),
    ]
}

fn del(batch: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>, key: String) {
    batch.insert(key.into_bytes(), None);
}

/// Decodes every record. Any record that does not decode is an error: rustvlan must not
/// run on a store it only half understands.
fn decode_records<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    items: impl Iterator<Item = anyhow::Result<(K, V)>>,
) -> anyhow::Result<Records> {
    let mut r = Records {
        next_pool_seq: 1,
        ..Records::default()
    };
    for item in items {
        let (key, value) = item?;
        let key = key.as_ref();
        let key = std::str::from_utf8(key).map_err(|_| anyhow!("a key is not UTF-8: {key:?}"))?;
        decode_record(&mut r, key, value.as_ref()).with_context(|| format!("record {key:?} is damaged"))?;
    }
    if r.schema == 0 && !r.networks.is_empty() {
        bail!("the store has records but no schema version");
    }
    if r.schema > SCHEMA_VERSION {
        bail!(
            "the store was written by a newer rustvlan (schema {}, this one knows {SCHEMA_VERSION})",
            r.schema
        );
    }
    Ok(r)
}

fn decode_record(r: &mut Records, key: &str, value: &[u8]) -> anyhow::Result<()> {
    fn de<'a, T: Deserialize<'a>>(value: &'a [u8]) -> anyhow::Result<T> {
        Ok(serde_json::from_slice(value)?)
    }
    let seq = |rest: &str| u64::from_str_radix(rest, 16).map_err(|_| anyhow!("bad sequence number"));
    if key == META_SCHEMA {
        r.schema = de(value)?;
    } else if key == META_NEXT_POOL_SEQ {
        r.next_pool_seq = de(value)?;
    } else if key == META_V6_RANGE {
        r.default_v6_range = Some(de(value)?);
    } else if key == META_GENERATION {
        r.generation = de(value)?;
    } else if key == META_LINK_GROUP {
        r.link_group = de(value)?;
    } else if let Some(id) = key.strip_prefix(NETWORK) {
        let n: NetworkRecord = de(value)?;
        if n.id != id {
            bail!("holds network {}", n.id);
        }
        r.networks.insert(n.id.clone(), n);
    } else if let Some(id) = key.strip_prefix(ENDPOINT) {
        let e: EndpointRecord = de(value)?;
        if e.id != id {
            bail!("holds endpoint {}", e.id);
        }
        r.endpoints.insert(e.id.clone(), e);
    } else if let Some(name) = key.strip_prefix(PARENT) {
        let p: ParentRecord = de(value)?;
        if p.name != name {
            bail!("holds parent {}", p.name);
        }
        r.parents.insert(p.name.clone(), p);
    } else if let Some(rest) = key.strip_prefix(SHARED_RELEASE) {
        let release: SharedRelease = de(value)?;
        if release.key() != rest {
            bail!("holds the shared release {}", release.key());
        }
        r.shared_releases.insert(release.key(), release);
    } else if let Some(rest) = key.strip_prefix(LEASE) {
        let lease: LeaseRecord = de(value)?;
        if lease.key() != rest {
            bail!("holds the lease {}", lease.key());
        }
        r.leases.insert(lease.key(), lease);
    } else if let Some(name) = key.strip_prefix(PENDING) {
        let p: PendingDelete = de(value)?;
        if p.link_name != name {
            bail!("holds pending delete {}", p.link_name);
        }
        r.pending.insert(p.link_name.clone(), p);
    } else if let Some(rest) = key.strip_prefix(POOL) {
        let p: PoolRecord = de(value)?;
        if p.seq != seq(rest)? {
            bail!("holds pool {}", p.seq);
        }
        r.pools.insert(p.seq, p);
    } else if let Some(rest) = key.strip_prefix(CURSOR) {
        r.cursors.insert(seq(rest)?, de(value)?);
    } else if let Some(rest) = key.strip_prefix(ADDRESS) {
        let (pool, ip) = parse_address_key(rest).ok_or_else(|| anyhow!("bad address key"))?;
        let v: AddressValue = de(value)?;
        r.addresses.entry(pool).or_default().insert(ip, v.gateway);
    } else {
        bail!("unknown kind of record (written by a newer rustvlan?)");
    }
    Ok(())
}

/// sled shows I/O errors with their Debug form (and its flush wraps them once more);
/// people want "No space left on device".
fn plain(err: sled::Error) -> anyhow::Error {
    use std::io::ErrorKind;
    match err {
        sled::Error::Io(io) if io.raw_os_error().is_some() => anyhow!(io),
        sled::Error::Io(io) => match io.kind() {
            ErrorKind::StorageFull => anyhow!("No space left on device"),
            ErrorKind::ReadOnlyFilesystem => anyhow!("Read-only file system"),
            ErrorKind::PermissionDenied => anyhow!("Permission denied"),
            _ => anyhow!(io),
        },
        other => anyhow!(other),
    }
}

/// Why the store would not open, as far as the operator can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenFailure {
    NotWritable,
    DiskFull,
    InUse,
    Damaged,
}

impl OpenFailure {
    fn of(db_path: &Path, err: &sled::Error) -> OpenFailure {
        use nix::errno::Errno;
        use std::io::ErrorKind;
        if let sled::Error::Io(io) = err {
            match (io.raw_os_error().map(Errno::from_raw), io.kind()) {
                (Some(Errno::EROFS | Errno::EACCES | Errno::EPERM), _)
                | (_, ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied) => return OpenFailure::NotWritable,
                (Some(Errno::ENOSPC), _) | (_, ErrorKind::StorageFull) => return OpenFailure::DiskFull,
                _ => {}
            }
        }
        // sled reports a lock held elsewhere as a bare message: ask the lock itself.
        if locked_elsewhere(db_path) {
            OpenFailure::InUse
        } else {
            OpenFailure::Damaged
        }
    }

    fn hint(self) -> &'static str {
        match self {
            OpenFailure::NotWritable => {
                "the state directory is not writable: make it writable, or point --state-dir elsewhere"
            }
            OpenFailure::DiskFull => {
                "the disk holding the state directory is full: free space and start rustvlan again"
            }
            OpenFailure::InUse => "another rustvlan process is using this state directory",
            OpenFailure::Damaged => {
                "the store looks damaged: restore it from a backup, or move it aside to start empty \
                 (addresses in use by running containers would then be handed out again)"
            }
        }
    }
}

/// Whether another open of sled's log holds the exclusive lock sled takes on it.
fn locked_elsewhere(db_path: &Path) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    let Ok(log) = std::fs::File::open(db_path.join("db")) else {
        return false;
    };
    matches!(
        Flock::lock(log, FlockArg::LockExclusiveNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

fn explain_open_error(path: &Path, err: sled::Error) -> anyhow::Error {
    let hint = OpenFailure::of(path, &err).hint();
    anyhow!("cannot open the state store {}: {}; {hint}", path.display(), plain(err))
}

/// An RFC 4193 unique local /48: fd00::/8 plus 40 random bits.
fn random_ula_48() -> Ipv6Network {
    let mut bytes = [0u8; 16];
    crate::util::random_bytes(&mut bytes[1..6]);
    bytes[0] = 0xfd;
    Ipv6Network::new(Ipv6Addr::from(bytes), 48).expect("48 is a valid prefix")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_open_elsewhere_is_named_as_in_use() {
        let mut name = [0u8; 8];
        crate::util::random_bytes(&mut name);
        let dir = std::env::temp_dir().join(format!("rvstore-{}", u64::from_le_bytes(name)));
        let first = Store::open(&dir).unwrap();
        let err = Store::open(&dir).err().expect("the second open fails").to_string();
        assert!(
            err.ends_with("another rustvlan process is using this state directory"),
            "{err}"
        );
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
