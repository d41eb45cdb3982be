//! The fault harness of the shared IPAM (issue 24). Three rustvlan hosts, each in a
//! network namespace of its own, share one plan on a 3-member etcd whose members are
//! each on a "machine" (namespace) of their own, all on one LAN bridge. Clients on every
//! host start and stop containers the way dockerd does (tests/common/harness.rs:
//! RequestAddress, CreateEndpoint, Join, the link moved into a sandbox and addressed,
//! then back, ReleaseAddress) while a nemesis injects each fault of its schedule: a host
//! cut off from etcd past its lease (nftables), the etcd leader cut off from its peers, a
//! member paused (SIGSTOP), a member SIGKILLed and restarted, a rustvlan SIGKILLed
//! mid-batch, etcd unreachable while a host starts and coming back under load, two
//! hosts started at once with one host id, a reclaim racing the reclaimed host's
//! restart, and a clean stop and start (an upgrade).
//!
//! The checker reads the history of answers, not the end state: every grant and release
//! with its time, per client; one address answered to two holders whose holds overlap
//! is a duplicate. After each fault heals, the clients pause and a checkpoint compares
//! the history's open holds with the ground truth (the addresses on the sandboxes'
//! links) and with etcd (every holder has its host's claim, every claim a holder); at
//! the end nothing may be held, claimed, recorded or in conflict.
//!
//! RUSTVLAN_TEST_ETCD picks the etcd binary (scripts/test.sh runs this once with Debian
//! 12's 3.4 and once with sid's 3.5); RUSTVLAN_FAULTS_ROUNDS repeats the schedule
//! (scripts/soak.sh), shuffled by RUSTVLAN_FAULTS_SEED.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::Cluster;
use common::harness::{Dockerd, Sandbox, Timings};
use common::{BIN, Netns, Server, TempDir, mark_ran, report, require_root};
use serde_json::{Value, json};

const SUBNET: &str = "10.206.0.0/28";
const GATEWAY: &str = "10.206.0.1";
const HOSTS: usize = 3;
const CLIENTS: usize = 4;
/// The hosts' lease in etcd, short so that partitions outlast it quickly.
const TTL: u64 = 6;
const LAN: &str = "10.205.0";
/// What a host logs once it has checked its claims against etcd (after each start).
const CHECKED: &str = "checked this host's shared claims";

fn member_ip(i: usize) -> String {
    format!("{LAN}.{}", i + 1)
}

fn host_ip(k: usize) -> String {
    format!("{LAN}.{}", k + 11)
}

fn host_id(k: usize) -> String {
    format!("f{k}")
}

fn network_id(k: usize) -> String {
    format!("{:064x}", 0xfa0 + k)
}

/// What one client saw, in order.
#[derive(Debug, Clone)]
enum What {
    /// RequestAddress answered this address (recorded when the answer arrived).
    Granted(Ipv4Addr),
    /// RequestAddress answered an error (none held).
    Refused,
    /// About to send ReleaseAddress for this address (the hold ends here).
    Releasing(Ipv4Addr),
    /// The nemesis declared the host dead and reclaimed it: the container holding this
    /// address is gone (its address removed) from here on.
    EndedByReclaim(Ipv4Addr),
}

#[derive(Debug, Clone)]
struct Event {
    at: Duration,
    host: usize,
    client: usize,
    what: What,
}

/// A client's hold, open or closed.
#[derive(Debug, Clone)]
struct Hold {
    ip: Ipv4Addr,
    host: usize,
    client: usize,
    from: Duration,
    to: Option<Duration>,
}

/// The holds the history shows: each grant until its release (or reclaim).
fn holds(history: &[Event]) -> Vec<Hold> {
    let mut open: BTreeMap<(usize, usize), Hold> = BTreeMap::new();
    let mut all = Vec::new();
    for e in history {
        let key = (e.host, e.client);
        match e.what {
            What::Granted(ip) => {
                if let Some(earlier) = open.insert(
                    key,
                    Hold {
                        ip,
                        host: e.host,
                        client: e.client,
                        from: e.at,
                        to: None,
                    },
                ) {
                    all.push(earlier);
                }
            }
            What::Releasing(ip) | What::EndedByReclaim(ip) => {
                if open.get(&key).is_some_and(|h| h.ip == ip) {
                    let mut hold = open.remove(&key).unwrap();
                    hold.to = Some(e.at);
                    all.push(hold);
                }
            }
            What::Refused => {}
        }
    }
    all.extend(open.into_values());
    all
}

/// Two holds of one address by different holders that overlap in time.
fn duplicates(holds: &[Hold]) -> Vec<String> {
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<&Hold>> = BTreeMap::new();
    for h in holds {
        by_ip.entry(h.ip).or_default().push(h);
    }
    let mut found = Vec::new();
    for (ip, mut list) in by_ip {
        list.sort_by_key(|h| h.from);
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                let a_end = a.to.unwrap_or(Duration::MAX);
                if b.from < a_end && (a.host, a.client) != (b.host, b.client) {
                    found.push(format!(
                        "{ip}: host {} client {} held it {:.3}..{} s and host {} client {} from {:.3} s",
                        a.host,
                        a.client,
                        a.from.as_secs_f64(),
                        a.to.map_or("on".into(), |t| format!("{:.3}", t.as_secs_f64())),
                        b.host,
                        b.client,
                        b.from.as_secs_f64()
                    ));
                }
            }
        }
    }
    found
}

/// A hold's grant: its number and address.
type Grant = (u64, Ipv4Addr);

/// What the clients and the nemesis share.
struct Shared {
    started: Instant,
    history: Mutex<Vec<Event>>,
    /// Per host: its clients stop at their next step while set.
    paused: Vec<AtomicBool>,
    /// Clients stopped at a pause.
    parked: AtomicUsize,
    stop: AtomicBool,
    /// Per client: the address it holds now; taken by the nemesis at a reclaim.
    current: Vec<Vec<Mutex<Option<Grant>>>>,
    /// Numbers the grants, so that the monitor tells one hold from the next.
    grants: AtomicUsize,
    /// What the monitor found: holds without their claim in etcd.
    unclaimed: Mutex<Vec<String>>,
    /// The monitor's reads of etcd.
    samples: AtomicUsize,
    /// Calls (RequestAddress and ReleaseAddress) sent, and their answers.
    requests: AtomicUsize,
    releases: AtomicUsize,
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Shared {
    fn record(&self, host: usize, client: usize, what: What) {
        let at = self.started.elapsed();
        self.history.lock().unwrap().push(Event { at, host, client, what });
    }

    /// Waits while `host` is paused (counted as parked).
    async fn gate(&self, host: usize) {
        if !self.paused[host].load(Ordering::SeqCst) {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while self.paused[host].load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    fn note_error(&self, e: &str) {
        // Error texts name addresses and times; keep their kind.
        let kind: String = e.chars().take(70).collect();
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// One client: containers started and stopped on `host`, one at a time, until told to
/// stop; holds are short, so addresses go round between hosts.
async fn client(
    shared: Arc<Shared>,
    host: usize,
    client: usize,
    socket: std::path::PathBuf,
    host_ns: std::path::PathBuf,
    sandbox: std::path::PathBuf,
    pool_id: String,
) {
    let mut dockerd = Dockerd::new(&socket, &host_ns, &network_id(host), &pool_id);
    // Across a rustvlan restart (SIGKILL, unreachable etcd at start) a call's connection
    // fails: dockerd retries it.
    dockerd.retry_for = Duration::from_secs(40);
    let sandbox = Sandbox::open(&sandbox);
    let mut t = Timings::default();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        shared.gate(host).await;
        n += 1;
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let asked = dockerd
            .call(
                "IpamDriver.RequestAddress",
                json!({"PoolID": pool_id, "Address": "", "Options": null}),
            )
            .await;
        let cidr = match asked.as_ref().map(|a| a["Address"].as_str().map(str::to_string)) {
            Ok(Some(cidr)) => cidr,
            _ => {
                shared.note_error(&format!("{asked:?}"));
                shared.record(host, client, What::Refused);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let ip: Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
        shared.record(host, client, What::Granted(ip));
        let grant = shared.grants.fetch_add(1, Ordering::SeqCst) as u64;
        *shared.current[host][client].lock().unwrap() = Some((grant, ip));
        let endpoint = format!("{host:02x}{client:02x}{n:060x}");
        let attached = dockerd.attach_with(&endpoint, &sandbox, Some(&cidr), &mut t).await;
        match &attached {
            Ok(_) => {
                let hold = 50 + (n * 37 + client as u64 * 11) % 250;
                tokio::time::sleep(Duration::from_millis(hold)).await;
                shared.gate(host).await;
            }
            Err(e) => shared.note_error(e),
        }
        if let Ok(a) = &attached
            && let Err(e) = dockerd.detach(a, &sandbox, &mut t).await
        {
            shared.note_error(&e);
        }
        // A reclaim may have ended the hold meanwhile; the release still goes, as dockerd
        // sends it when the container goes.
        if shared.current[host][client].lock().unwrap().take().is_some() {
            shared.record(host, client, What::Releasing(ip));
        }
        release(&shared, &dockerd, &pool_id, ip).await;
    }
}

/// The holds now: (host, client) -> (grant, address).
fn holds_now(shared: &Shared) -> BTreeMap<(usize, usize), Grant> {
    let mut now = BTreeMap::new();
    for (k, clients) in shared.current.iter().enumerate() {
        for (c, slot) in clients.iter().enumerate() {
            if let Some(hold) = *slot.lock().unwrap() {
                now.insert((k, c), hold);
            }
        }
    }
    now
}

/// Reads etcd over and over while the clients work: a hold that was there before a read
/// and is still there after it must be claimed by its host in that read. This catches
/// a claim deleted under a live hold even when no other host takes the address before
/// the hold ends.
fn monitor(shared: Arc<Shared>, etcd: EtcdReader) {
    while !shared.stop.load(Ordering::SeqCst) {
        let before = holds_now(&shared);
        let claims = etcd.claims();
        let after = holds_now(&shared);
        if let Some(claims) = claims {
            shared.samples.fetch_add(1, Ordering::SeqCst);
            for (holder, hold) in &before {
                if after.get(holder) != Some(hold) {
                    continue;
                }
                let want = json!({"host": host_id(holder.0)});
                if claims.get(&hold.1) != Some(&want) {
                    shared.unclaimed.lock().unwrap().push(format!(
                        "at {:.3} s host {} client {} held {} (grant {}), claimed in etcd as {:?}",
                        shared.started.elapsed().as_secs_f64(),
                        holder.0,
                        holder.1,
                        hold.1,
                        hold.0,
                        claims.get(&hold.1)
                    ));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// etcdctl from the LAN's namespace, for the monitor's own thread.
#[derive(Clone)]
struct EtcdReader {
    netns: String,
    endpoints: String,
}

impl EtcdReader {
    /// The plan's claims in etcd: address -> holder (`{"host":…}` or `{"shared":…}`).
    fn claims(&self) -> Option<BTreeMap<Ipv4Addr, Value>> {
        let plan = SUBNET.replace('/', "_");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "etcdctl"])
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .args([
                "--command-timeout=3s",
                "get",
                "--prefix",
                &format!("/rustvlan/v1/alloc/{plan}/"),
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        Some(
            lines
                .chunks(2)
                .filter_map(|kv| {
                    let ip = kv[0].rsplit('/').next()?.parse().ok()?;
                    Some((ip, serde_json::from_str(kv.get(1)?).ok()?))
                })
                .collect(),
        )
    }
}

/// ReleaseAddress until it is answered, as the end of the run needs nothing left.
async fn release(shared: &Shared, dockerd: &Dockerd, pool_id: &str, ip: Ipv4Addr) {
    shared.releases.fetch_add(1, Ordering::SeqCst);
    for _ in 0..100 {
        match dockerd
            .call(
                "IpamDriver.ReleaseAddress",
                json!({"PoolID": pool_id, "Address": ip.to_string()}),
            )
            .await
        {
            Ok(_) => return,
            Err(e) => {
                shared.note_error(&e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("ReleaseAddress {ip} was never answered");
}

/// A rustvlan host: its namespace (a veth to the LAN bridge), its plugin, its network.
struct Host {
    netns: Netns,
    server: Server,
    pool_id: String,
    sandboxes: Vec<Netns>,
    _dir: TempDir,
}

/// The world: the LAN, etcd's members on their own namespaces, the hosts.
struct World {
    lan: Netns,
    member_ns: Vec<Netns>,
    cluster: Cluster,
    hosts: Vec<Host>,
}

fn nft(ns: &Netns, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (Debian package nftables; scripts/test.sh installs it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f in {}: {script}", ns.name);
}

/// Drops every packet between `ns` and the addresses `peers` (both ways).
fn cut(ns: &Netns, peers: &[String]) {
    let set = peers.join(", ");
    nft(
        ns,
        &format!(
            "table inet rvfault {{\n chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n \
             chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n}}\n"
        ),
    );
}

fn heal(ns: &Netns) {
    nft(ns, "delete table inet rvfault\n");
}

/// Plugs a new namespace into the LAN bridge with `ip`.
fn plug(lan: &Netns, ns: &Netns, ip: &str, name: &str) {
    lan.ip(&[
        "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    lan.ip(&["link", "set", name, "master", "br0", "up"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

fn serve_args(cluster: &Cluster, k: usize) -> Vec<String> {
    [
        "--etcd-endpoints",
        &cluster.endpoints(),
        "--host-id",
        &host_id(k),
        "--etcd-host-ttl",
        &TTL.to_string(),
        // A RequestAddress whose answer a SIGKILL lost is made again by dockerd; the
        // first address is swept within 10 s, not after the default 10 minutes. The
        // sweep runs every 5 s amid the churn, so the harness checks it too (it once
        // released an address under a container that had just taken it again).
        "--reclaim-after",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl World {
    fn build() -> World {
        let lan = Netns::new();
        lan.ip(&["link", "add", "br0", "type", "bridge"]);
        lan.ip(&["link", "set", "br0", "up"]);
        lan.ip(&["addr", "add", &format!("{LAN}.254/24"), "dev", "br0"]);
        let member_ns: Vec<Netns> = (0..3).map(|_| Netns::new()).collect();
        for (i, ns) in member_ns.iter().enumerate() {
            plug(&lan, ns, &member_ip(i), &format!("m{i}"));
        }
        let ips: Vec<String> = (0..3).map(member_ip).collect();
        let places: Vec<(&Netns, &str)> = member_ns.iter().zip(&ips).map(|(ns, ip)| (ns, ip.as_str())).collect();
        let cluster = Cluster::start_each(&lan, &places);
        let hosts = (0..HOSTS).map(|k| World::start_host(&lan, &cluster, k)).collect();
        World {
            lan,
            member_ns,
            cluster,
            hosts,
        }
    }

    fn start_host(lan: &Netns, cluster: &Cluster, k: usize) -> Host {
        let netns = Netns::new();
        plug(lan, &netns, &host_ip(k), &format!("h{k}"));
        let dir = TempDir::new();
        let args = serve_args(cluster, k);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Server::start_with(Some(&netns), dir.path(), &args);
        // scripts/soak.sh --planted-bug widens the window between a claim and its record.
        let mut starts = 0;
        if let Some(ms) = std::env::var("RUSTVLAN_FAULTS_CLAIM_DELAY_MS")
            .ok()
            .filter(|ms| !ms.is_empty())
        {
            wait_log(&server, "connected to etcd", 0, Duration::from_secs(20));
            server.kill9();
            server.extra_env.push(("RUSTVLAN_FAULT_CLAIM_DELAY_MS".into(), ms));
            server.restart();
            starts = 1;
        }
        wait_log(&server, "connected to etcd", starts, Duration::from_secs(20));
        let pool = server.ok(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": SUBNET, "V6": false}),
        );
        let pool_id = pool["PoolID"].as_str().unwrap().to_string();
        server.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": GATEWAY, "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
        );
        server.ok(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": network_id(k), "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": SUBNET, "Gateway": format!("{GATEWAY}/28")}],
                   "Options": {"com.docker.network.generic": {"parent": "eth0"}}}),
        );
        Host {
            netns,
            server,
            pool_id,
            sandboxes: (0..CLIENTS).map(|_| Netns::new()).collect(),
            _dir: dir,
        }
    }

    /// Whether `host`'s liveness key is in etcd (None: etcd did not answer).
    fn live(&self, k: usize) -> Option<bool> {
        let out = self.cluster.etcdctl(&[
            "get",
            "--print-value-only",
            &format!("/rustvlan/v1/hosts/{}", host_id(k)),
        ]);
        out.status.success().then(|| !out.stdout.trim_ascii().is_empty())
    }

    fn wait_live(&self, k: usize, want: bool, limit: Duration) -> Duration {
        let started = Instant::now();
        while self.live(k) != Some(want) {
            assert!(
                started.elapsed() < limit,
                "host {} is {} after {limit:?}:\n{}",
                host_id(k),
                if want { "still not live" } else { "still live" },
                self.hosts[k].server.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        started.elapsed()
    }

    fn reader(&self) -> EtcdReader {
        EtcdReader {
            netns: self.lan.name.clone(),
            endpoints: self.cluster.endpoints(),
        }
    }

    fn claims(&self) -> Option<BTreeMap<Ipv4Addr, Value>> {
        self.reader().claims()
    }

    /// The addresses of the subnet on each sandbox's links: the ground truth.
    fn ground_truth(&self) -> BTreeMap<(usize, usize), Vec<Ipv4Addr>> {
        let subnet: ipnetwork::Ipv4Network = SUBNET.parse().unwrap();
        let mut truth = BTreeMap::new();
        for (k, host) in self.hosts.iter().enumerate() {
            for (c, sb) in host.sandboxes.iter().enumerate() {
                let out = sb.ip(&["-4", "-j", "addr", "show"]);
                let links: Value = serde_json::from_str(&out).unwrap();
                let ips: Vec<Ipv4Addr> = links
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
                    .filter_map(|a| a["local"].as_str()?.parse().ok())
                    .filter(|ip| subnet.contains(*ip))
                    .collect();
                truth.insert((k, c), ips);
            }
        }
        truth
    }

    fn conflicts(&self, k: usize) -> usize {
        self.hosts[k].server.state().shared.map_or(0, |s| s.conflicts.len())
    }

    /// Containers' addresses each host's store records.
    fn recorded(&self, k: usize) -> Vec<String> {
        let host = &self.hosts[k];
        host.server.state().pools[&host.pool_id]
            .addresses
            .iter()
            .filter(|(_, u)| **u == rustvlan::dump::AddressUse::Allocated)
            .map(|(ip, _)| ip.to_string())
            .collect()
    }
}

/// Waits until `text` is in the log more than `before` times.
fn wait_log(server: &Server, text: &str, before: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while server.log_text().matches(text).count() <= before {
        assert!(
            Instant::now() < deadline,
            "no '{text}' in the log within {limit:?}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    HostPartition,
    LeaderPartition,
    MemberPause,
    MemberKill,
    HostKill,
    UnreachableAtStart,
    TwinStart,
    ReclaimRace,
    CleanRestart,
    LeaseLost,
}

const SCHEDULE: [Fault; 10] = [
    Fault::HostKill,
    Fault::MemberPause,
    Fault::HostPartition,
    Fault::MemberKill,
    Fault::LeaderPartition,
    Fault::UnreachableAtStart,
    Fault::TwinStart,
    Fault::ReclaimRace,
    Fault::CleanRestart,
    Fault::LeaseLost,
];

/// The nemesis and the checkpoints, on the test's thread.
struct Nemesis<'a> {
    world: &'a mut World,
    shared: Arc<Shared>,
    /// What each fault showed, for the report.
    notes: Vec<String>,
    checkpoints: usize,
    reclaimed: usize,
}

impl Nemesis<'_> {
    fn pause(&self, hosts: &[usize]) {
        for &k in hosts {
            self.shared.paused[k].store(true, Ordering::SeqCst);
        }
        let want = hosts.len() * CLIENTS;
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.shared.parked.load(Ordering::SeqCst) < want {
            assert!(Instant::now() < deadline, "clients did not pause within 90 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn resume(&self) {
        for p in &self.shared.paused {
            p.store(false, Ordering::SeqCst);
        }
    }

    fn inject(&mut self, fault: Fault, round: usize) {
        let k = round % HOSTS;
        let started = Instant::now();
        let note = match fault {
            Fault::HostPartition => self.host_partition(k),
            Fault::LeaderPartition => self.leader_partition(),
            Fault::MemberPause => self.member_pause(round % 3),
            Fault::MemberKill => self.member_kill((round + 1) % 3),
            Fault::HostKill => self.host_kill(k),
            Fault::UnreachableAtStart => self.unreachable_at_start(k),
            Fault::TwinStart => self.twin_start(),
            Fault::ReclaimRace => self.reclaim_race(k),
            Fault::CleanRestart => self.clean_restart(k),
            Fault::LeaseLost => self.lease_lost(k),
        };
        self.notes
            .push(format!("{fault:?} ({:.1} s): {note}", started.elapsed().as_secs_f64()));
        std::thread::sleep(Duration::from_secs(1));
        self.checkpoint(&format!("after {fault:?}"));
    }

    /// A host cut off from etcd for longer than its lease: listed dead meanwhile, live
    /// again on its own once healed.
    fn host_partition(&self, k: usize) -> String {
        let members: Vec<String> = (0..3).map(member_ip).collect();
        cut(&self.world.hosts[k].netns, &members);
        let dead = self.world.wait_live(k, false, Duration::from_secs(TTL + 10));
        std::thread::sleep(Duration::from_secs(2));
        heal(&self.world.hosts[k].netns);
        let back = self.world.wait_live(k, true, Duration::from_secs(20));
        format!(
            "host {} cut off: listed dead after {:.1} s, live {:.1} s after the heal",
            host_id(k),
            dead.as_secs_f64(),
            back.as_secs_f64()
        )
    }

    fn leader_partition(&self) -> String {
        let Some(leader) = self.world.cluster.leader() else {
            return "no leader answered; skipped".into();
        };
        let peers: Vec<String> = (0..3).filter(|&i| i != leader).map(member_ip).collect();
        cut(&self.world.member_ns[leader], &peers);
        std::thread::sleep(Duration::from_secs(5));
        let during = self.world.cluster.leader();
        heal(&self.world.member_ns[leader]);
        self.world.cluster.wait_healthy();
        format!("leader m{leader} cut off from its peers for 5 s; leader meanwhile: {during:?}")
    }

    fn member_pause(&self, i: usize) -> String {
        self.world.cluster.pause(i, true);
        std::thread::sleep(Duration::from_secs(5));
        self.world.cluster.pause(i, false);
        self.world.cluster.wait_healthy();
        format!("member m{i} SIGSTOPped for 5 s")
    }

    fn member_kill(&mut self, i: usize) -> String {
        self.world.cluster.kill(i);
        std::thread::sleep(Duration::from_secs(3));
        self.world.cluster.restart(i);
        self.world.cluster.wait_healthy();
        format!("member m{i} SIGKILLed, restarted after 3 s")
    }

    fn host_kill(&mut self, k: usize) -> String {
        // Mid-batch: the clients are busy; wait until some of this host's are asking.
        std::thread::sleep(Duration::from_millis(700));
        let server = &mut self.world.hosts[k].server;
        let checks = server.log_text().matches(CHECKED).count();
        server.kill9();
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
        wait_log(server, CHECKED, checks, Duration::from_secs(30));
        format!("rustvlan {} SIGKILLed amid its clients' calls, restarted", host_id(k))
    }

    fn unreachable_at_start(&mut self, k: usize) -> String {
        let members: Vec<String> = (0..3).map(member_ip).collect();
        let host = &mut self.world.hosts[k];
        host.server.kill9();
        cut(&host.netns, &members);
        let before = host.server.log_text().matches("connected to etcd").count();
        host.server.restart();
        std::thread::sleep(Duration::from_secs(5));
        heal(&host.netns);
        let healed = Instant::now();
        let deadline = healed + Duration::from_secs(30);
        while host.server.log_text().matches("connected to etcd").count() <= before {
            assert!(
                Instant::now() < deadline,
                "not connected 30 s after the heal:\n{}",
                host.server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        format!(
            "rustvlan {} started with etcd cut off, served 5 s without it, connected {:.1} s after the heal",
            host_id(k),
            healed.elapsed().as_secs_f64()
        )
    }

    /// Two machines started at the same moment with one new host id: one serves, the
    /// other stops, naming the id.
    fn twin_start(&self) -> String {
        let dirs = [TempDir::new(), TempDir::new()];
        let mut children: Vec<Child> = (0..2)
            .map(|t| {
                let log = std::fs::File::create(dirs[t].path().join("log")).unwrap();
                Command::new("ip")
                    .args(["netns", "exec", &self.world.hosts[t].netns.name, BIN, "serve"])
                    .arg("--socket")
                    .arg(dirs[t].path().join("s.sock"))
                    .arg("--state-dir")
                    .arg(dirs[t].path().join("state"))
                    .args(["--etcd-endpoints", &self.world.cluster.endpoints(), "--host-id", "twin"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_secs(4));
        let exited: Vec<bool> = children.iter_mut().map(|c| c.try_wait().unwrap().is_some()).collect();
        let logs: Vec<String> = dirs
            .iter()
            .map(|d| std::fs::read_to_string(d.path().join("log")).unwrap_or_default())
            .collect();
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(
            exited.iter().filter(|e| **e).count(),
            1,
            "of two hosts started at once as 'twin', exactly one must stop: {exited:?}\n{logs:?}"
        );
        let loser = exited.iter().position(|e| *e).unwrap();
        assert!(logs[loser].contains("host id twin is live"), "{}", logs[loser]);
        "two started at once as 'twin': one serves, the other stopped with 'host id twin is live on …'".to_string()
    }

    /// The host dies (SIGKILL), its lease ends; its containers are declared gone (their
    /// addresses removed), then `reclaim` from another host races the host's restart.
    fn reclaim_race(&mut self, k: usize) -> String {
        self.pause(&[k]);
        self.world.hosts[k].server.kill9();
        let dead = self.world.wait_live(k, false, Duration::from_secs(TTL + 10));
        let mut ended = 0;
        for c in 0..CLIENTS {
            let taken = self.shared.current[k][c].lock().unwrap().take();
            if let Some((_, ip)) = taken {
                let sb = &self.world.hosts[k].sandboxes[c];
                let _ = sb.try_ip(&["addr", "flush", "dev", "eth0"]);
                self.shared.record(k, c, What::EndedByReclaim(ip));
                ended += 1;
            }
        }
        let checks = self.world.hosts[k].server.log_text().matches(CHECKED).count();
        let by = (k + 1) % HOSTS;
        let reclaimer = self.world.hosts[by]
            .server
            .command()
            .args([
                "reclaim",
                "--host",
                &host_id(k),
                "--etcd-endpoints",
                &self.world.cluster.endpoints(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.world.hosts[k].server.restart();
        let out = reclaimer.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        wait_log(&self.world.hosts[k].server, CHECKED, checks, Duration::from_secs(30));
        self.reclaimed += ended;
        self.shared.paused[k].store(false, Ordering::SeqCst);
        // The reclaimed clients release at once; give them a moment before the check.
        std::thread::sleep(Duration::from_secs(1));
        format!(
            "{} SIGKILLed, dead after {:.1} s, {ended} containers declared gone; reclaim raced its restart: {}",
            host_id(k),
            dead.as_secs_f64(),
            said.replace('\n', " ")
        )
    }

    /// The host's lease revoked under it, five times, while its clients work: each time
    /// it announces itself again and checks its claims against its store, amid claims
    /// on their way (hole 1 of issue 24).
    fn lease_lost(&self, k: usize) -> String {
        let key = format!("/rustvlan/v1/hosts/{}", host_id(k));
        let mut revoked = 0;
        for _ in 0..5 {
            let out = self.world.cluster.etcdctl(&["get", &key, "-w", "json"]);
            let lease = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v["kvs"][0]["lease"].as_i64());
            if let Some(lease) = lease {
                let out = self.world.cluster.etcdctl(&["lease", "revoke", &format!("{lease:x}")]);
                revoked += usize::from(out.status.success());
            }
            self.world.wait_live(k, true, Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(500));
        }
        format!(
            "{} lost its lease {revoked} times while serving, announced itself again each time",
            host_id(k)
        )
    }

    /// SIGTERM with containers running, as an upgrade does: the host stays live.
    fn clean_restart(&mut self, k: usize) -> String {
        let took = self.world.hosts[k].server.terminate();
        let live = self.world.live(k);
        assert_eq!(live, Some(true), "a clean stop with addresses held keeps the host live");
        self.world.hosts[k].server.restart();
        format!(
            "rustvlan {} stopped with SIGTERM in {:.1} s and started again; live meanwhile",
            host_id(k),
            took.as_secs_f64()
        )
    }

    /// With every client paused: the history's open holds are the addresses on the
    /// sandboxes' links, each claimed in etcd by its host, and every host claim has a
    /// holder; no host shows a conflict.
    fn checkpoint(&mut self, when: &str) {
        self.pause(&(0..HOSTS).collect::<Vec<_>>());
        self.checkpoints += 1;
        // Long enough for the sweep of an address whose answer a SIGKILL lost.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.compare() {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("checkpoint {when}: {e}\n{}", self.keep_logs()),
            }
        }
        self.resume();
    }

    /// Copies the hosts' logs where they outlive the test, for a failure to name.
    fn keep_logs(&self) -> String {
        (0..HOSTS)
            .map(|k| {
                let path = std::env::temp_dir().join(format!("rvfaults-{}.log", host_id(k)));
                let _ = std::fs::write(&path, self.world.hosts[k].server.log_text());
                format!("host {k}'s log: {}", path.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn compare(&self) -> Result<(), String> {
        let unclaimed = self.shared.unclaimed.lock().unwrap().clone();
        assert!(
            unclaimed.is_empty(),
            "held without a claim in etcd: {unclaimed:#?}\n{}",
            self.keep_logs()
        );
        let history = self.shared.history.lock().unwrap().clone();
        let dups = duplicates(&holds(&history));
        assert!(dups.is_empty(), "DUPLICATE in the history: {dups:#?}");
        let open: BTreeMap<(usize, usize), Ipv4Addr> = holds(&history)
            .into_iter()
            .filter(|h| h.to.is_none())
            .map(|h| ((h.host, h.client), h.ip))
            .collect();
        let truth = self.world.ground_truth();
        let mut seen = BTreeMap::new();
        for (holder, ips) in &truth {
            for ip in ips {
                if let Some(other) = seen.insert(*ip, *holder) {
                    panic!("DUPLICATE on the links: {ip} in sandboxes {other:?} and {holder:?}");
                }
            }
            let want: Vec<Ipv4Addr> = open.get(holder).copied().into_iter().collect();
            // A client between its grant and its move into the sandbox, or mid-detach,
            // parks only at its next step: allow a missing link address, never another.
            if ips.iter().any(|ip| !want.contains(ip)) {
                return Err(format!("sandbox {holder:?} has {ips:?}, the history holds {want:?}"));
            }
        }
        let claims = self.world.claims().ok_or("etcd did not answer")?;
        for ((k, c), ip) in &open {
            let want = json!({"host": host_id(*k)});
            if claims.get(ip) != Some(&want) {
                return Err(format!(
                    "host {k} client {c} holds {ip}, claimed in etcd as {:?}",
                    claims.get(ip)
                ));
            }
        }
        let held: BTreeSet<Ipv4Addr> = open.values().copied().collect();
        let orphans: Vec<String> = claims
            .iter()
            .filter(|(ip, v)| v.get("host").is_some() && !held.contains(ip))
            .map(|(ip, v)| format!("{ip}={v}"))
            .collect();
        if !orphans.is_empty() {
            return Err(format!("claims without a holder: {orphans:?}"));
        }
        for k in 0..HOSTS {
            let n = self.world.conflicts(k);
            if n > 0 {
                return Err(format!("host {k} shows {n} conflicts"));
            }
        }
        Ok(())
    }
}

fn rounds() -> usize {
    std::env::var("RUSTVLAN_FAULTS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}

/// The schedule of `rounds` rounds: the first in the order above, later ones shuffled.
fn schedule(rounds: usize, seed: u64) -> Vec<Fault> {
    let mut all = Vec::new();
    let mut state = seed | 1;
    for r in 0..rounds {
        let mut round = SCHEDULE.to_vec();
        if r > 0 {
            for i in (1..round.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                round.swap(i, (state % (i as u64 + 1)) as usize);
            }
        }
        all.extend(round);
    }
    all
}

/// Two minutes with its own timing (leases of 6 s): scripts/test.sh runs it alone, once
/// per etcd version, and checks that both runs happened.
#[test]
#[ignore = "run alone by scripts/test.sh: cargo test --test faults -- --ignored"]
fn no_address_is_held_twice_through_every_fault_of_the_schedule() {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let mut world = World::build();
    let version = world.cluster.statuses()[0]
        .as_ref()
        .map_or("?".into(), |(v, _)| v.clone());
    let shared = Arc::new(Shared {
        started: Instant::now(),
        history: Mutex::default(),
        paused: (0..HOSTS).map(|_| AtomicBool::new(false)).collect(),
        parked: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        grants: AtomicUsize::new(0),
        unclaimed: Mutex::default(),
        samples: AtomicUsize::new(0),
        current: (0..HOSTS)
            .map(|_| (0..CLIENTS).map(|_| Mutex::new(None)).collect())
            .collect(),
        requests: AtomicUsize::new(0),
        releases: AtomicUsize::new(0),
        errors: Mutex::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for (k, host) in world.hosts.iter().enumerate() {
        for c in 0..CLIENTS {
            tasks.push(rt.spawn(client(
                shared.clone(),
                k,
                c,
                host.server.socket.clone(),
                host.netns.path(),
                host.sandboxes[c].path(),
                host.pool_id.clone(),
            )));
        }
    }
    let watcher = {
        let (shared, reader) = (shared.clone(), world.reader());
        std::thread::spawn(move || monitor(shared, reader))
    };
    let seed: u64 = std::env::var("RUSTVLAN_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let plan = schedule(rounds(), seed);
    std::thread::sleep(Duration::from_secs(2));
    let mut nemesis = Nemesis {
        world: &mut world,
        shared: shared.clone(),
        notes: Vec::new(),
        checkpoints: 0,
        reclaimed: 0,
    };
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    for (round, fault) in plan.iter().enumerate() {
        nemesis.inject(*fault, round);
        *injected.entry(*fault).or_default() += 1;
    }
    let (notes, checkpoints, reclaimed) = (nemesis.notes, nemesis.checkpoints, nemesis.reclaimed);
    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    watcher.join().unwrap();
    let unclaimed = shared.unclaimed.lock().unwrap().clone();
    assert!(unclaimed.is_empty(), "held without a claim in etcd: {unclaimed:#?}");

    // The end: nothing held, claimed by a host, recorded as a container's, or in conflict.
    let history = shared.history.lock().unwrap().clone();
    let all = holds(&history);
    let dups = duplicates(&all);
    assert!(dups.is_empty(), "DUPLICATE in the history: {dups:#?}");
    assert!(all.iter().all(|h| h.to.is_some()), "holds never released");
    let deadline = Instant::now() + Duration::from_secs(30);
    let leaks = loop {
        let claims = world.claims().expect("etcd answers");
        let leaks: Vec<String> = claims
            .iter()
            .filter(|(_, v)| v.get("host").is_some())
            .map(|(ip, v)| format!("{ip}={v}"))
            .collect();
        if leaks.is_empty() || Instant::now() > deadline {
            break leaks;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        leaks.is_empty(),
        "claims left in etcd with every container gone: {leaks:?}"
    );
    for k in 0..HOSTS {
        assert_eq!(
            world.recorded(k),
            Vec::<String>::new(),
            "host {k} still records containers' addresses"
        );
        assert_eq!(world.conflicts(k), 0, "host {k} shows conflicts");
        assert_eq!(world.live(k), Some(true), "host {k} is not live at the end");
    }
    for ((k, c), ips) in world.ground_truth() {
        assert!(ips.is_empty(), "sandbox {k}/{c} still has {ips:?}");
    }

    let granted = history.iter().filter(|e| matches!(e.what, What::Granted(_))).count();
    let refused = history.iter().filter(|e| matches!(e.what, What::Refused)).count();
    let faults: usize = injected.values().sum();
    let errors = shared.errors.lock().unwrap().clone();
    let top: Vec<String> = {
        let mut e: Vec<_> = errors.iter().collect();
        e.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
        e.iter().take(3).map(|(k, n)| format!("{n}x {k:?}")).collect()
    };
    report(&format!(
        "fault harness on etcd {version}: {HOSTS} hosts x {CLIENTS} clients on {SUBNET}, {} rounds (seed {seed}), {faults} faults injected {injected:?}; \
         operations={} (RequestAddress {}, ReleaseAddress {}); answers: granted={granted} refused={refused} ({top:?}); \
         holds ended by reclaim={reclaimed}; checkpoints={checkpoints}; etcd read {} times amid the work, 0 holds without their claim; \
         duplicates=0 (history) 0 (links); leaks after heal=0; conflicts left=0; {:.0} s",
        rounds(),
        shared.requests.load(Ordering::SeqCst) + shared.releases.load(Ordering::SeqCst),
        shared.requests.load(Ordering::SeqCst),
        shared.releases.load(Ordering::SeqCst),
        shared.samples.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    ));
    for note in notes {
        report(&format!("  {note}"));
    }
    mark_ran("RUSTVLAN_FAULTS_MARKER", &format!("etcd {version}"));
}

#[test]
fn the_checker_finds_overlapping_holds_and_only_those() {
    let at = Duration::from_millis;
    let ip: Ipv4Addr = "10.206.0.5".parse().unwrap();
    let e = |ms, host, client, what| Event {
        at: at(ms),
        host,
        client,
        what,
    };
    let clean = [
        e(0, 0, 0, What::Granted(ip)),
        e(10, 0, 0, What::Releasing(ip)),
        e(11, 1, 0, What::Granted(ip)),
        e(20, 1, 0, What::EndedByReclaim(ip)),
        e(21, 2, 0, What::Granted(ip)),
        e(25, 1, 0, What::Releasing(ip)),
        e(30, 2, 0, What::Releasing(ip)),
    ];
    assert!(duplicates(&holds(&clean)).is_empty());
    let twice = [
        e(0, 0, 0, What::Granted(ip)),
        e(5, 1, 1, What::Granted(ip)),
        e(10, 0, 0, What::Releasing(ip)),
    ];
    let found = duplicates(&holds(&twice));
    assert_eq!(found.len(), 1, "{found:?}");
    // An address never released overlaps every later grant of it.
    let never = [e(0, 0, 0, What::Granted(ip)), e(50, 2, 3, What::Granted(ip))];
    assert_eq!(duplicates(&holds(&never)).len(), 1);
}
