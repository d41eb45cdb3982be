//! etcd: the only code that speaks to it. Shared address plans keep one key per claimed
//! address, claimed in one transaction that fails if another host holds it, so no
//! global lock and no read-modify-write of a whole range is ever needed.
//!
//! Keys, under `--etcd-prefix` (default `/rustvlan`), values JSON:
//! - `v1/alloc/<plan>/<ip>`: who holds the address: `{"host":"<id>"}`, or
//!   `{"shared":"gateway"}` for a gateway or aux address every host of the plan reserves;
//! - `v1/byhost/<host>/<plan>/<ip>`: the same claim indexed by host, written in the same
//!   transaction (for `rustvlan hosts` and `rustvlan reclaim`);
//! - `v1/hosts/<host>`: `{"hostname", "version", "started", "store"}` on an etcd lease:
//!   the host is live while it is there; `store` (the random mark of its sled store) tells
//!   its own restarts from another machine given the same id. Claims are never tied to
//!   the lease: a partitioned host's containers keep their addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

/// How long an etcd call may take before the request that needs it fails: well under
/// dockerd's 30 s, so that `docker run` gets rustvlan's message, not its own timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The liveness key's lease: a host is shown dead 30 s after it stops renewing.
pub const DEFAULT_HOST_TTL: u32 = 30;
/// Keys per page of a range read: about 0.5 MiB of claims.
const PAGE: i64 = 5_000;

/// The end of the range of keys that start with `prefix` (its last byte plus one; our
/// prefixes end in '/').
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub host_id: String,
    /// Seconds the host's liveness key outlives its last renewal.
    pub host_ttl: u32,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// An etcd call that failed or timed out, worded for the user.
#[derive(Debug, Clone)]
pub struct EtcdError {
    pub kind: EtcdErrorKind,
    pub message: String,
}

/// What callers tell apart: etcd not answering is waited out, the rest is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdErrorKind {
    /// No answer, or a failed call; the message starts "etcd unreachable (endpoints)".
    Unreachable,
    /// Another live machine registered this host id.
    HostIdTaken,
    /// `reclaim` of a host that is still live.
    HostLive,
    /// The TLS options or files are wrong.
    Config,
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EtcdError {}

pub type EResult<T> = Result<T, EtcdError>;

#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    host: String,
    endpoints: String,
    host_ttl: u32,
    /// The liveness key's lease, once registered.
    lease: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Counts the host's announcements (see [`Etcd::announcements`]).
    announced: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    metrics: Option<crate::metrics::EtcdMetrics>,
    claims: std::sync::Arc<ClaimQueue>,
}

/// This host's claims waiting for a transaction. Claims made while earlier ones are on
/// their way to etcd go together in one transaction (a group commit): a burst of
/// allocations costs a few Raft rounds and WAL writes instead of one each.
#[derive(Default)]
struct ClaimQueue {
    waiting: std::sync::Mutex<std::collections::VecDeque<QueuedClaim>>,
    /// Transactions of claims on their way; at most [`CLAIM_TXNS_IN_FLIGHT`].
    in_flight: std::sync::atomic::AtomicUsize,
}

/// One claim transaction on its way, counted in [`ClaimQueue::in_flight`] until dropped.
struct InFlight(std::sync::Arc<ClaimQueue>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

struct QueuedClaim {
    plan: String,
    ip: IpAddr,
    /// Its request fails by then: a claim waiting behind a transaction etcd does not
    /// answer must not wait for that one's timeout and then for its own.
    deadline: tokio::time::Instant,
    answer: tokio::sync::oneshot::Sender<EResult<Claim>>,
}

/// Claims per transaction: each is a nested transaction of a compare and two puts (or a
/// get). etcd refuses more than 128 operations per branch by default (`--max-txn-ops`),
/// and gives nested ones what their parent leaves: 64 here, and 64 for each claim.
const CLAIMS_PER_TXN: usize = 64;
/// Releases per transaction: a read of each, then a nested transaction of a compare and
/// two deletes for each; within etcd's limits as [`CLAIMS_PER_TXN`] is.
pub const RELEASES_PER_TXN: usize = 64;
/// A queued claim with less time left than this fails instead of being sent: the time a
/// transaction gets is that of its oldest claim, and a transaction cut short fails all
/// its claims (and may still be committed, a leak until the host claims them again).
const MIN_CLAIM_TIME: Duration = Duration::from_secs(1);
/// Claim transactions a host has on their way at once.
const CLAIM_TXNS_IN_FLIGHT: usize = 2;

/// Who holds a claimed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Holder {
    Host {
        host: String,
    },
    /// A gateway or aux address: the LAN's, reserved by every host of the plan alike.
    Shared {
        shared: String,
    },
}

/// An address every host of a shared plan reserves alike: the LAN's, not a host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Gateway,
    Aux,
}

impl Reservation {
    /// As written in the claim's value (`{"shared": "gateway"}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reservation::Gateway => "gateway",
            Reservation::Aux => "aux",
        }
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This host holds it now (or already did: a retried claim).
    Ours,
    /// Held by another host, or reserved for the LAN when this claim was a container's.
    Taken(Holder),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRecord {
    pub hostname: String,
    pub version: String,
    /// Unix seconds.
    pub started: u64,
    /// The random mark of the store the host runs on: tells this host's own earlier run
    /// from another machine given the same host id. 0 in records of rustvlan 0.1 before it.
    #[serde(default)]
    pub store: u32,
}

impl HostRecord {
    /// Whether `other` is a later run on the same store (older records: the same hostname).
    fn same_store(&self, other: &HostRecord) -> bool {
        if self.store == 0 {
            self.hostname == other.hostname
        } else {
            self.store == other.store
        }
    }
}

/// A host as `rustvlan hosts` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    pub id: String,
    /// Its liveness key is there.
    pub live: bool,
    pub record: Option<HostRecord>,
    /// Addresses it holds, over every plan.
    pub allocations: usize,
}

/// `<prefix><ip>` → the address and its holder.
fn parse_claim(prefix: &str, key: &[u8], value: &[u8]) -> Option<(IpAddr, Holder)> {
    let ip = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?.parse().ok()?;
    Some((ip, serde_json::from_slice(value).ok()?))
}

/// The changes of one plan as they happen (an etcd watch).
pub struct PlanFollower {
    stream: etcd_client::WatchStream,
    prefix: String,
}

impl PlanFollower {
    /// The next changes: an address claimed (with its holder) or released (None). None
    /// when the watch ended; the caller reads the plan again.
    pub async fn next(&mut self) -> Option<Vec<(IpAddr, Option<Holder>)>> {
        let answer = self.stream.message().await.ok()??;
        if answer.canceled() {
            return None;
        }
        Some(
            answer
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    match event.event_type() {
                        etcd_client::EventType::Put => {
                            parse_claim(&self.prefix, kv.key(), kv.value()).map(|(ip, h)| (ip, Some(h)))
                        }
                        etcd_client::EventType::Delete => {
                            let ip = std::str::from_utf8(kv.key())
                                .ok()?
                                .strip_prefix(&self.prefix)?
                                .parse()
                                .ok()?;
                            Some((ip, None))
                        }
                    }
                })
                .collect(),
        )
    }
}

/// A claim's value as its holder (an unreadable one shown as it is).
fn holder_of(value: &[u8]) -> Holder {
    serde_json::from_slice(value).unwrap_or(Holder::Shared {
        shared: String::from_utf8_lossy(value).into_owned(),
    })
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn plain(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Etcd {
    pub async fn connect(config: &EtcdConfig) -> EResult<Etcd> {
        let endpoints = config.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(2));
        if config.ca.is_some() || config.cert.is_some() {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|e| EtcdError {
                    kind: EtcdErrorKind::Config,
                    message: format!("cannot read {}: {e}", path.display()),
                })
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &config.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            match (&config.cert, &config.key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => {
                    return Err(EtcdError {
                        kind: EtcdErrorKind::Config,
                        message: "--etcd-cert and --etcd-key go together".into(),
                    });
                }
            }
            options = options.with_tls(tls);
        }
        let connecting = Client::connect(&config.endpoints, Some(options));
        let client = tokio::time::timeout(CALL_TIMEOUT, connecting)
            .await
            .map_err(|_| EtcdError {
                kind: EtcdErrorKind::Unreachable,
                message: format!("etcd unreachable ({endpoints}): no answer within {CALL_TIMEOUT:?}"),
            })?
            .map_err(|e| EtcdError {
                kind: EtcdErrorKind::Unreachable,
                message: format!("etcd unreachable ({endpoints}): {e}"),
            })?;
        Ok(Etcd {
            client,
            prefix: config.prefix.trim_end_matches('/').to_string(),
            host: config.host_id.clone(),
            endpoints,
            host_ttl: config.host_ttl,
            lease: Default::default(),
            announced: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            metrics: None,
            claims: Default::default(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Counts and times every call in these metrics.
    pub fn metered(mut self, metrics: crate::metrics::EtcdMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn alloc_key(&self, plan: &str, ip: IpAddr) -> String {
        format!("{}/v1/alloc/{plan}/{ip}", self.prefix)
    }

    fn byhost_key(&self, host: &str, plan: &str, ip: IpAddr) -> String {
        format!("{}/v1/byhost/{host}/{plan}/{ip}", self.prefix)
    }

    fn host_key(&self, host: &str) -> String {
        format!("{}/v1/hosts/{host}", self.prefix)
    }

    fn ours(&self) -> Vec<u8> {
        serde_json::to_vec(&Holder::Host {
            host: self.host.clone(),
        })
        .expect("serializes")
    }

    /// Runs one call with the timeout, naming etcd and its endpoints on failure.
    async fn call<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> EResult<T> {
        self.call_within(what, CALL_TIMEOUT, call).await
    }

    fn no_answer(&self, what: &str) -> EtcdError {
        EtcdError {
            kind: EtcdErrorKind::Unreachable,
            message: format!(
                "etcd unreachable ({}): {what}: no answer within {CALL_TIMEOUT:?} (no quorum?)",
                self.endpoints
            ),
        }
    }

    /// [`Etcd::call`] with `time` instead of [`CALL_TIMEOUT`].
    async fn call_within<T>(
        &self,
        what: &'static str,
        time: Duration,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> EResult<T> {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(time, call).await;
        if let Some(m) = &self.metrics {
            m.observe(what, matches!(answer, Ok(Ok(_))), started.elapsed());
        }
        match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EtcdError {
                kind: EtcdErrorKind::Unreachable,
                message: format!("etcd unreachable ({}): {what}: {}", self.endpoints, plain(e)),
            }),
            Err(_) => Err(self.no_answer(what)),
        }
    }

    /// Every key under `prefix`, read in pages at one revision (that of the first page),
    /// with that revision: a plan of tens of thousands of claims stays well under the
    /// client's 4 MiB answer limit.
    async fn read_prefix(
        &self,
        what: &'static str,
        prefix: &str,
        keys_only: bool,
    ) -> EResult<(Vec<etcd_client::KeyValue>, i64)> {
        let end = prefix_end(prefix);
        let mut client = self.client.clone();
        let (mut from, mut revision, mut out) = (prefix.as_bytes().to_vec(), 0, Vec::new());
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if keys_only {
                options = options.with_keys_only();
            }
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let mut answer = self.call(what, client.get(from.clone(), Some(options))).await?;
            if revision == 0 {
                revision = answer.header().map_or(0, |h| h.revision());
            }
            let more = answer.more();
            let page = answer.take_kvs();
            let Some(last) = page.last() else { break };
            from = last.key().to_vec();
            from.push(0);
            out.extend(page);
            if !more {
                break;
            }
        }
        Ok((out, revision))
    }

    /// Claims `ip` of `plan` for this host (`shared`: as the LAN's gateway or aux
    /// address, which every host reserves alike). Create-if-absent in one transaction
    /// that answers the holder when it fails; a host's claims go together with the
    /// others queued at the same moment (see [`ClaimQueue`]).
    pub async fn claim(&self, plan: &str, ip: IpAddr, shared: Option<Reservation>) -> EResult<Claim> {
        if shared.is_some() {
            return self.claim_one(plan, ip, shared).await;
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        lock(&self.claims.waiting).push_back(QueuedClaim {
            plan: plan.to_string(),
            ip,
            deadline: tokio::time::Instant::now() + CALL_TIMEOUT,
            answer,
        });
        self.send_claims();
        // The queue answers every claim by its deadline; this is only a backstop.
        match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), answered).await {
            Ok(Ok(answer)) => answer,
            _ => Err(self.no_answer("claiming an address")),
        }
    }

    /// Starts a transaction of the queued claims, unless enough are on their way: the
    /// queue then grows until one of them is back.
    fn send_claims(&self) {
        use std::sync::atomic::Ordering;
        let batch: Vec<QueuedClaim> = {
            let mut waiting = lock(&self.claims.waiting);
            // Claims whose request gave up, or whose time is up, are not sent at all.
            let now = tokio::time::Instant::now();
            let expired = waiting.iter().any(|c| c.deadline <= now + MIN_CLAIM_TIME);
            if expired {
                for claim in std::mem::take(&mut *waiting) {
                    if claim.deadline <= now + MIN_CLAIM_TIME {
                        let _ = claim.answer.send(Err(self.no_answer("claiming an address")));
                    } else {
                        waiting.push_back(claim);
                    }
                }
            }
            waiting.retain(|c| !c.answer.is_closed());
            if waiting.is_empty() || self.claims.in_flight.load(Ordering::Acquire) >= CLAIM_TXNS_IN_FLIGHT {
                return;
            }
            // One key may appear once in a transaction: a second claim of it waits.
            let mut keys = std::collections::HashSet::new();
            let n = waiting
                .iter()
                .take(CLAIMS_PER_TXN)
                .take_while(|c| keys.insert((c.plan.clone(), c.ip)))
                .count();
            if n == 0 {
                return;
            }
            self.claims.in_flight.fetch_add(1, Ordering::AcqRel);
            waiting.drain(..n).collect()
        };
        let etcd = self.clone();
        tokio::spawn(async move {
            // Counted back even if this task panics or is aborted, or no claim would
            // ever be sent again.
            let in_flight = InFlight(std::sync::Arc::clone(&etcd.claims));
            let retry = etcd.claim_together(batch).await;
            if !retry.is_empty() {
                let mut waiting = lock(&etcd.claims.waiting);
                for claim in retry.into_iter().rev() {
                    waiting.push_front(claim);
                }
            }
            drop(in_flight);
            etcd.send_claims();
        });
    }

    /// One transaction for `batch`, made of one nested transaction per claim: each
    /// creates its key only if absent (with its per-host index), else reads the holder.
    /// A taken address fails only its own claim, so a batch never goes again; an answer
    /// without a claim's result (never seen) sends that claim again.
    async fn claim_together(&self, batch: Vec<QueuedClaim>) -> Vec<QueuedClaim> {
        let ours = self.ours();
        let each: Vec<TxnOp> = batch
            .iter()
            .map(|c| {
                let key = self.alloc_key(&c.plan, c.ip);
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([
                            TxnOp::put(key.clone(), ours.clone(), None),
                            TxnOp::put(self.byhost_key(&self.host, &c.plan, c.ip), "", None),
                        ])
                        .or_else([TxnOp::get(key, None)]),
                )
            })
            .collect();
        let txn = Txn::new().and_then(each);
        let mut client = self.client.clone();
        let deadline = batch.iter().map(|c| c.deadline).min().expect("a batch is never empty");
        let time = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = match self.call_within("claiming addresses", time, client.txn(txn)).await {
            Ok(answer) => answer,
            Err(e) => {
                for claim in batch {
                    let _ = claim.answer.send(Err(e.clone()));
                }
                return Vec::new();
            }
        };
        let results: Vec<TxnOpResponse> = answer.op_responses();
        let mut retry = Vec::new();
        let mut already_ours = Vec::new();
        let (sent, mut taken) = (batch.len(), 0u64);
        for (claim, result) in batch
            .into_iter()
            .zip(results.into_iter().map(Some).chain(std::iter::repeat_with(|| None)))
        {
            let held = match result {
                Some(TxnOpResponse::Txn(inner)) if inner.succeeded() => {
                    let _ = claim.answer.send(Ok(Claim::Ours));
                    continue;
                }
                Some(TxnOpResponse::Txn(inner)) => inner.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                    _ => None,
                }),
                _ => None,
            };
            match held {
                None => retry.push(claim),
                Some((value, revision)) if value == ours => already_ours.push((claim, revision)),
                Some((value, _)) => {
                    taken += 1;
                    let _ = claim.answer.send(Ok(Claim::Taken(holder_of(&value))));
                }
            }
        }
        tracing::trace!(sent, taken, again = retry.len(), "claim transaction");
        if let Some(m) = &self.metrics {
            m.claims_lost(taken);
        }
        if !already_ours.is_empty() {
            retry.extend(self.claim_again(already_ours, deadline).await);
        }
        retry
    }

    /// Claims found already this host's (an earlier claim whose release is still on its
    /// way, or never answered) are written again, each only if unchanged since it was
    /// read: the new claim gets a revision of its own, so a release of the earlier one
    /// that reaches etcd late (sent before a partition, delivered after it) finds a
    /// revision it did not read and deletes nothing. Answers the ones to send again.
    async fn claim_again(&self, claims: Vec<(QueuedClaim, i64)>, deadline: tokio::time::Instant) -> Vec<QueuedClaim> {
        let ours = self.ours();
        let each: Vec<TxnOp> = claims
            .iter()
            .map(|(c, revision)| {
                let key = self.alloc_key(&c.plan, c.ip);
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, *revision)])
                        .and_then([
                            TxnOp::put(key, ours.clone(), None),
                            TxnOp::put(self.byhost_key(&self.host, &c.plan, c.ip), "", None),
                        ]),
                )
            })
            .collect();
        let mut client = self.client.clone();
        let time = deadline.saturating_duration_since(tokio::time::Instant::now());
        let txn = Txn::new().and_then(each);
        let answer = match self.call_within("claiming addresses", time, client.txn(txn)).await {
            Ok(answer) => answer,
            Err(e) => {
                for (claim, _) in claims {
                    let _ = claim.answer.send(Err(e.clone()));
                }
                return Vec::new();
            }
        };
        let mut retry = Vec::new();
        let results = answer
            .op_responses()
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat_with(|| None));
        for ((claim, _), result) in claims.into_iter().zip(results) {
            match result {
                Some(TxnOpResponse::Txn(inner)) if inner.succeeded() => {
                    let _ = claim.answer.send(Ok(Claim::Ours));
                }
                // Changed since read (released, or taken): look again.
                _ => retry.push(claim),
            }
        }
        retry
    }

    /// A claim in a transaction of its own (the LAN's reservations).
    async fn claim_one(&self, plan: &str, ip: IpAddr, shared: Option<Reservation>) -> EResult<Claim> {
        let key = self.alloc_key(plan, ip);
        let value = match shared {
            Some(kind) => serde_json::to_vec(&Holder::Shared {
                shared: kind.as_str().to_string(),
            })
            .expect("serializes"),
            None => self.ours(),
        };
        let mut then = vec![TxnOp::put(key.clone(), value.clone(), None)];
        if shared.is_none() {
            then.push(TxnOp::put(self.byhost_key(&self.host, plan, ip), "", None));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then(then)
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut client = self.client.clone();
        let answer = self.call("claiming an address", client.txn(txn)).await?;
        if answer.succeeded() {
            return Ok(Claim::Ours);
        }
        let held = answer.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let Some(held) = held else {
            // Deleted between the compare and the get: the caller tries again.
            return Ok(Claim::Taken(Holder::Shared {
                shared: "released meanwhile".into(),
            }));
        };
        if held == value && shared.is_none() {
            return Ok(Claim::Ours); // a retried claim of our own
        }
        let holder = holder_of(&held);
        Ok(match (&holder, shared) {
            // Every host reserves the LAN's gateway and aux addresses alike.
            (Holder::Shared { .. }, Some(_)) => Claim::Ours,
            _ => Claim::Taken(holder),
        })
    }

    /// Releases this host's claim; never another host's, nor a shared reservation.
    pub async fn release(&self, plan: &str, ip: IpAddr) -> EResult<bool> {
        Ok(self.release_all(&[(plan, ip)]).await?[0])
    }

    /// Releases this host's claims of `addresses` (plan and address), a transaction for
    /// each [`RELEASES_PER_TXN`] of them; answers which were this host's.
    pub async fn release_all(&self, addresses: &[(&str, IpAddr)]) -> EResult<Vec<bool>> {
        let mut released = Vec::with_capacity(addresses.len());
        for chunk in addresses.chunks(RELEASES_PER_TXN) {
            released.extend(self.release_together(chunk).await?);
        }
        Ok(released)
    }

    /// The claims are read first and each deleted only at the revision read: a delete
    /// that times out may still reach etcd later (a partition delays it, then delivers
    /// it), when the address may be this host's again under a new claim, which it must
    /// leave alone (see `claim_again`).
    async fn release_together(&self, addresses: &[(&str, IpAddr)]) -> EResult<Vec<bool>> {
        let ours = self.ours();
        let mut client = self.client.clone();
        let mut released = vec![false; addresses.len()];
        let mut left: Vec<usize> = (0..addresses.len()).collect();
        for _ in 0..3 {
            let reads: Vec<TxnOp> = left
                .iter()
                .map(|&i| TxnOp::get(self.alloc_key(addresses[i].0, addresses[i].1), None))
                .collect();
            let read = self
                .call("releasing addresses", client.txn(Txn::new().and_then(reads)))
                .await?;
            let ours_at: Vec<(usize, i64)> = left
                .iter()
                .zip(read.op_responses())
                .filter_map(|(&i, r)| match r {
                    TxnOpResponse::Get(get) => get
                        .kvs()
                        .first()
                        .filter(|kv| kv.value() == ours.as_slice())
                        .map(|kv| (i, kv.mod_revision())),
                    _ => None,
                })
                .collect();
            let deletes: Vec<TxnOp> = ours_at
                .iter()
                .map(|&(i, revision)| {
                    let (plan, ip) = addresses[i];
                    let key = self.alloc_key(plan, ip);
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                            .and_then([
                                TxnOp::delete(key, None),
                                TxnOp::delete(self.byhost_key(&self.host, plan, ip), None),
                            ]),
                    )
                })
                .collect();
            if deletes.is_empty() {
                return Ok(released);
            }
            let answer = self
                .call("releasing addresses", client.txn(Txn::new().and_then(deletes)))
                .await?;
            let results = answer
                .op_responses()
                .into_iter()
                .map(Some)
                .chain(std::iter::repeat_with(|| None));
            left.clear();
            for (&(i, _), result) in ours_at.iter().zip(results) {
                match result {
                    Some(TxnOpResponse::Txn(inner)) if inner.succeeded() => released[i] = true,
                    // Changed since read (claimed again, or reclaimed): look again.
                    _ => left.push(i),
                }
            }
            if left.is_empty() {
                return Ok(released);
            }
        }
        let changed: Vec<String> = left.iter().map(|&i| addresses[i].1.to_string()).collect();
        Err(EtcdError {
            kind: EtcdErrorKind::Unreachable,
            message: format!(
                "etcd unreachable ({}): releasing {}: its claim changed at each of 3 tries",
                self.endpoints,
                changed.join(", ")
            ),
        })
    }

    /// Turns this host's claim of `ip` into the LAN's reservation `kind` (an aux address
    /// of a network made here), in one transaction that requires the claim to be still
    /// this host's. Answers whether it was.
    pub async fn reserve_for_lan(&self, plan: &str, ip: IpAddr, kind: Reservation) -> EResult<bool> {
        let key = self.alloc_key(plan, ip);
        let value = serde_json::to_vec(&Holder::Shared {
            shared: kind.as_str().to_string(),
        })
        .expect("serializes");
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, self.ours())])
            .and_then([
                TxnOp::put(key, value, None),
                TxnOp::delete(self.byhost_key(&self.host, plan, ip), None),
            ]);
        let mut client = self.client.clone();
        Ok(self
            .call("reserving an aux address", client.txn(txn))
            .await?
            .succeeded())
    }

    /// Every claimed address of `plan`, with its holder.
    pub async fn held(&self, plan: &str) -> EResult<BTreeMap<IpAddr, Holder>> {
        Ok(self.held_at(plan).await?.0)
    }

    /// [`Etcd::held`], and the revision it was read at.
    async fn held_at(&self, plan: &str) -> EResult<(BTreeMap<IpAddr, Holder>, i64)> {
        let prefix = format!("{}/v1/alloc/{plan}/", self.prefix);
        let (kvs, revision) = self.read_prefix("listing a plan's addresses", &prefix, false).await?;
        let held = kvs
            .iter()
            .filter_map(|kv| parse_claim(&prefix, kv.key(), kv.value()))
            .collect();
        Ok((held, revision))
    }

    /// What `plan` holds now, and a follower that tells every change after it.
    pub async fn follow(&self, plan: &str) -> EResult<(BTreeMap<IpAddr, Holder>, PlanFollower)> {
        let (held, revision) = self.held_at(plan).await?;
        let prefix = format!("{}/v1/alloc/{plan}/", self.prefix);
        let mut client = self.client.clone();
        let stream = self
            .call(
                "watching a plan",
                client.watch(
                    prefix.clone(),
                    Some(
                        etcd_client::WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                ),
            )
            .await?;
        Ok((held, PlanFollower { stream, prefix }))
    }

    /// Announces this host as live, on a lease kept alive in the background and
    /// announced again whenever it is lost (etcd unreachable for longer than its TTL).
    /// Refused when another machine announced this host id: one whose record names
    /// another store (`store`: this store's random mark).
    pub async fn register(&self, hostname: &str, store: u32) -> EResult<()> {
        let record = HostRecord {
            hostname: hostname.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            store,
        };
        let lease = self.announce(&record).await?;
        let this = self.clone();
        tokio::spawn(async move { this.keep_announced(record, lease).await });
        Ok(())
    }

    /// Puts this host's record on a new lease: created if absent, or taking over this
    /// store's own earlier record (a restart), in one transaction each, so that two
    /// machines starting at once with one host id cannot both pass.
    async fn announce(&self, record: &HostRecord) -> EResult<i64> {
        let key = self.host_key(&self.host);
        let value = serde_json::to_vec(record).expect("serializes");
        let mut client = self.client.clone();
        let lease = self
            .call(
                "granting the host's lease",
                client.lease_grant(i64::from(self.host_ttl), None),
            )
            .await?
            .id();
        for _ in 0..3 {
            let existing = self
                .call("reading the host list", client.get(key.clone(), None))
                .await?;
            let unchanged = match existing.kvs().first() {
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Some(kv) => {
                    let theirs = serde_json::from_slice::<HostRecord>(kv.value()).ok();
                    if !theirs.as_ref().is_some_and(|t| t.same_store(record)) {
                        return Err(self.taken_by(theirs));
                    }
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())
                }
            };
            let put = TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)));
            let txn = Txn::new().when([unchanged]).and_then([put]);
            if self.call("announcing the host", client.txn(txn)).await?.succeeded() {
                self.lease.store(lease, std::sync::atomic::Ordering::SeqCst);
                self.announced.send_modify(|n| *n += 1);
                return Ok(lease);
            }
        }
        Err(self.taken_by(None))
    }

    fn taken_by(&self, theirs: Option<HostRecord>) -> EtcdError {
        let on = theirs.map_or_else(
            || "another machine".to_string(),
            |t| t.hostname.escape_debug().to_string(),
        );
        EtcdError {
            kind: EtcdErrorKind::HostIdTaken,
            message: format!(
                "host id {} is live on {on} already; give each host its own --host-id",
                self.host
            ),
        }
    }

    /// Keeps the lease alive; once it is lost, announces the host again every few
    /// seconds until etcd takes it. Runs until the process ends.
    async fn keep_announced(self, record: HostRecord, mut lease: i64) {
        loop {
            let why = self.keep_alive(lease).await;
            tracing::warn!("the etcd host lease is lost ({why}); this host shows as dead until it is announced again");
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                match self.announce(&record).await {
                    Ok(new) => {
                        lease = new;
                        tracing::info!(host_id = %self.host, "announced this host to etcd again");
                        break;
                    }
                    Err(e) if e.kind == EtcdErrorKind::HostIdTaken => tracing::error!("{e}"),
                    Err(e) => tracing::debug!("announcing this host again: {e}"),
                }
            }
        }
    }

    /// Renews `lease` a few times per TTL until a renewal fails or etcd answers that the
    /// lease is gone; returns why.
    async fn keep_alive(&self, lease: i64) -> String {
        let mut client = self.client.clone();
        let (mut keeper, mut answers) = match self
            .call("renewing the host's lease", client.lease_keep_alive(lease))
            .await
        {
            Ok(pair) => pair,
            Err(e) => return e.message,
        };
        let mut ticks = tokio::time::interval(Duration::from_secs(u64::from(self.host_ttl) / 3));
        loop {
            ticks.tick().await;
            let renewed = tokio::time::timeout(CALL_TIMEOUT, async {
                keeper.keep_alive().await?;
                answers.message().await
            });
            match renewed.await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return "etcd let it expire".into(),
                Ok(Ok(None)) => return "the renewal stream ended".into(),
                Ok(Err(e)) => return plain(e),
                Err(_) => return format!("no answer within {CALL_TIMEOUT:?}"),
            }
        }
    }

    /// How many times this host was announced (1 once registered, more after each lost
    /// lease): the shared IPAM checks its claims again after each.
    pub fn announcements(&self) -> tokio::sync::watch::Receiver<u64> {
        self.announced.subscribe()
    }

    /// Whether etcd answers a read now (with a quorum), within 2 s: for `rustvlan status`.
    /// Tried again until then: the client's connection to a member that just came back
    /// may still be refused while the others answer.
    pub async fn probe(&self) -> EResult<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let mut client = self.client.clone();
            let read = client.get(self.host_key(&self.host), Some(GetOptions::new().with_count_only()));
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.call_within("checking etcd", left, read).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A clean stop of a host with nothing attached: it shows as not live at once (its
    /// claims stay). A stop that leaves containers running (a plugin upgrade, a restart)
    /// does not call this: the host stays live for the lease's TTL, time for the next
    /// start to take its record over, and no reclaim is allowed meanwhile.
    pub async fn retire(&self) {
        let lease = self.lease.swap(0, std::sync::atomic::Ordering::SeqCst);
        if lease != 0 {
            let mut client = self.client.clone();
            let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
        }
    }

    /// What this host holds in etcd: plan -> addresses.
    pub async fn held_by_me(&self) -> EResult<BTreeMap<String, Vec<IpAddr>>> {
        let prefix = format!("{}/v1/byhost/{}/", self.prefix, self.host);
        let (claims, _) = self.read_prefix("listing this host's claims", &prefix, true).await?;
        let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for kv in &claims {
            if let Some((plan, ip)) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
                .and_then(|rest| rest.rsplit_once('/'))
                && let Ok(ip) = ip.parse()
            {
                out.entry(plan.to_string()).or_default().push(ip);
            }
        }
        Ok(out)
    }

    /// Every host that is live or holds addresses.
    pub async fn hosts(&self) -> EResult<Vec<HostInfo>> {
        let mut client = self.client.clone();
        let hosts_prefix = format!("{}/v1/hosts/", self.prefix);
        let live = self
            .call(
                "listing hosts",
                client.get(hosts_prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut hosts: BTreeMap<String, HostInfo> = BTreeMap::new();
        for kv in live.kvs() {
            let Some(id) = kv.key_str().ok().and_then(|k| k.strip_prefix(&hosts_prefix)) else {
                continue;
            };
            hosts.insert(
                id.to_string(),
                HostInfo {
                    id: id.to_string(),
                    live: true,
                    record: serde_json::from_slice(kv.value()).ok(),
                    allocations: 0,
                },
            );
        }
        let byhost_prefix = format!("{}/v1/byhost/", self.prefix);
        let (claims, _) = self.read_prefix("listing claims", &byhost_prefix, true).await?;
        for kv in &claims {
            let Some(id) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&byhost_prefix))
                .and_then(|rest| rest.split('/').next())
            else {
                continue;
            };
            hosts
                .entry(id.to_string())
                .or_insert_with(|| HostInfo {
                    id: id.to_string(),
                    live: false,
                    record: None,
                    allocations: 0,
                })
                .allocations += 1;
        }
        Ok(hosts.into_values().collect())
    }

    /// Releases every address a dead host holds. Refused while it is live. Each
    /// address is deleted only if that host still holds it and is still gone.
    pub async fn reclaim_host(&self, host: &str) -> EResult<usize> {
        let mut client = self.client.clone();
        let live = self
            .call("reading the host list", client.get(self.host_key(host), None))
            .await?;
        if !live.kvs().is_empty() {
            return Err(EtcdError {
                kind: EtcdErrorKind::HostLive,
                message: format!(
                    "host {host} is live; stop rustvlan there (and wait for its lease to end) before reclaiming its addresses"
                ),
            });
        }
        let prefix = format!("{}/v1/byhost/{host}/", self.prefix);
        let (claims, _) = self.read_prefix("listing the host's claims", &prefix, true).await?;
        let value = serde_json::to_vec(&Holder::Host { host: host.to_string() }).expect("serializes");
        let mut released = 0;
        for kv in &claims {
            let Some((plan, ip)) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
                .and_then(|rest| rest.rsplit_once('/'))
                .and_then(|(plan, ip)| Some((plan.to_string(), ip.parse::<IpAddr>().ok()?)))
            else {
                continue;
            };
            let alloc = self.alloc_key(&plan, ip);
            // Each delete also requires the host to be still gone: a host that comes back
            // mid-reclaim keeps every claim not yet reclaimed.
            let dead = Compare::create_revision(self.host_key(host), CompareOp::Equal, 0);
            let held = Compare::value(alloc.clone(), CompareOp::Equal, value.clone());
            let txn = Txn::new()
                .when([dead.clone(), held])
                .and_then([TxnOp::delete(alloc, None), TxnOp::delete(kv.key().to_vec(), None)]);
            if self.call("reclaiming an address", client.txn(txn)).await?.succeeded() {
                released += 1;
                continue;
            }
            // Not held by the host (released, or another's now): only its index goes.
            let index_only = Txn::new()
                .when([dead])
                .and_then([TxnOp::delete(kv.key().to_vec(), None)]);
            if !self
                .call("reclaiming an address", client.txn(index_only))
                .await?
                .succeeded()
            {
                return Err(self.came_back(host, released));
            }
        }
        Ok(released)
    }

    fn came_back(&self, host: &str, released: usize) -> EtcdError {
        EtcdError {
            kind: EtcdErrorKind::HostLive,
            message: format!(
                "host {host} came back while its addresses were reclaimed: {released} were released, \
                 the rest stay its own"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_range_ends_just_past_its_last_key() {
        assert_eq!(prefix_end("/rustvlan/v1/alloc/p/"), b"/rustvlan/v1/alloc/p0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
