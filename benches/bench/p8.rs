//! P8: shared allocations through etcd. Three rustvlan hosts on a real 3-member etcd
//! cluster (Debian's etcd-server, on loopback), 64 clients each, allocate from one
//! shared pool until it is exhausted; against the same three hosts with local sled pools
//! (one pool each, no etcd), and against the floor: the raw rate of the same etcd client
//! running the same create-if-absent transaction at the same concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde_json::{Value, json};

use crate::common::etcd::Cluster;
use crate::env::{Conn, Plugin, ms};
use crate::stats::{round, summary, verdict};
use crate::{Bench, Section};

const HOSTS: usize = 3;
const CLIENTS: usize = 64;

struct Run {
    allocations: usize,
    per_s: f64,
    latencies_ms: Vec<f64>,
}

/// Every host's clients allocate until their pool answers exhausted.
async fn storm(hosts: &[(Plugin, String)]) -> Run {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (plugin, pool) in hosts {
        for _ in 0..CLIENTS {
            let (socket, pool) = (plugin.socket.clone(), pool.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::connect(&socket).await;
                let mut took = Vec::new();
                loop {
                    let t = Instant::now();
                    let (status, answer) = conn
                        .call(
                            "/IpamDriver.RequestAddress",
                            json!({"PoolID": pool, "Address": ""}).to_string(),
                        )
                        .await;
                    match status {
                        200 => took.push(ms(t.elapsed())),
                        409 => return took,
                        _ => panic!("RequestAddress: {status} {answer}"),
                    }
                }
            }));
        }
    }
    let mut latencies_ms = Vec::new();
    for t in tasks {
        latencies_ms.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    Run {
        allocations: latencies_ms.len(),
        per_s: latencies_ms.len() as f64 / secs,
        latencies_ms,
    }
}

/// Claims the hosts made of addresses another host had claimed first (each cost its
/// request another pick and round trip), from their metrics.
async fn claims_lost(hosts: &[(Plugin, String)]) -> u64 {
    let mut lost = 0;
    for (plugin, _) in hosts {
        let (_, text) = rustvlan::client::get(&plugin.socket, "/metrics")
            .await
            .expect("GET /metrics");
        let text = String::from_utf8_lossy(&text).into_owned();
        lost += text
            .lines()
            .find_map(|l| l.strip_prefix("rustvlan_etcd_claims_lost_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no rustvlan_etcd_claims_lost_total in:\n{text}")) as u64;
    }
    lost
}

/// Three hosts, each with a pool of `subnet` and its gateway.
async fn hosts(b: &Bench, name: &str, subnet: &str, etcd: Option<&str>) -> Vec<(Plugin, String)> {
    let mut out = Vec::new();
    for h in 0..HOSTS {
        let dir = b.scratch(&format!("{name}-{h}"));
        let mut plugin = Plugin::new(&b.rustvlan, &dir.join("rustvlan.sock"), &dir);
        if let Some(endpoints) = etcd {
            plugin.extra_args = vec![
                "--etcd-endpoints".into(),
                endpoints.into(),
                "--host-id".into(),
                format!("bench-{h}"),
            ];
        }
        plugin.start();
        if etcd.is_some() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !std::fs::read_to_string(&plugin.log)
                .unwrap_or_default()
                .contains("connected to etcd")
            {
                assert!(Instant::now() < deadline, "host {h} did not reach etcd");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut conn = Conn::connect(&plugin.socket).await;
        let pool = conn
            .ok(
                "/IpamDriver.RequestPool",
                json!({"AddressSpace": "rustvlan-local", "Pool": subnet, "V6": false}),
            )
            .await;
        let pool_id = pool["PoolID"].as_str().unwrap().to_string();
        conn.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
        )
        .await;
        out.push((plugin, pool_id));
    }
    out
}

/// The floor: `n` create-if-absent transactions (the claim's shape: compare, two puts)
/// from HOSTS × CLIENTS tasks on one client of the same crate.
async fn raw(endpoints: &str, n: usize) -> Run {
    let urls: Vec<String> = endpoints.split(',').map(str::to_string).collect();
    let client = Client::connect(&urls, None).await.expect("etcd");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HOSTS * CLIENTS {
        let (mut client, next) = (client.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return took;
                }
                let key = format!("/p8raw/v1/alloc/10.150.0.0_20/{i}");
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(key.clone(), r#"{"host":"bench-0"}"#, None),
                        TxnOp::put(format!("/p8raw/v1/byhost/bench-0/10.150.0.0_20/{i}"), "", None),
                    ])
                    .or_else([TxnOp::get(key, None)]);
                let t = Instant::now();
                client.txn(txn).await.expect("txn");
                took.push(ms(t.elapsed()));
            }
        }));
    }
    let mut latencies_ms = Vec::new();
    for t in tasks {
        latencies_ms.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    Run {
        allocations: latencies_ms.len(),
        per_s: latencies_ms.len() as f64 / secs,
        latencies_ms,
    }
}

pub async fn run(b: &Bench) -> Section {
    let subnet = if b.smoke { "10.150.0.0/24" } else { "10.150.0.0/20" };
    let cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();

    let shared_hosts = hosts(b, "p8-shared", subnet, Some(&endpoints)).await;
    let shared = storm(&shared_hosts).await;
    let lost = claims_lost(&shared_hosts).await;
    drop(shared_hosts);
    let local_hosts = hosts(b, "p8-local", subnet, None).await;
    let local = storm(&local_hosts).await;
    drop(local_hosts);
    let floor = raw(&endpoints, shared.allocations).await;

    let s_shared = summary(&shared.latencies_ms);
    let s_local = summary(&local.latencies_ms);
    let s_raw = summary(&floor.latencies_ms);
    let ratio = shared.per_s / floor.per_s;
    let (met_rate, how_rate) = verdict(ratio, 0.8, false);
    let p99_ratio = s_shared.p99 / s_raw.p99;
    let (met_p99, how_p99) = verdict(p99_ratio, 1.5, true);
    let plot = crate::svg::bars(
        &format!("P8: allocations/s, {HOSTS} hosts × {CLIENTS} clients, one {subnet} (higher is better)"),
        "allocations/s",
        &[
            ("rustvlan, shared pool on etcd".into(), shared.per_s),
            ("raw etcd transactions (floor)".into(), floor.per_s),
            ("rustvlan, local sled pools".into(), local.per_s),
        ],
    );
    let latency = crate::svg::strips(
        "P8: latency of one allocation (ms)",
        "milliseconds",
        &[
            ("shared pool on etcd".into(), shared.latencies_ms.clone()),
            ("raw etcd transaction".into(), floor.latencies_ms.clone()),
            ("local sled pool".into(), local.latencies_ms.clone()),
        ],
    );
    let row = |name: &str, r: &Run, s: &crate::stats::Summary| {
        (
            name.to_string(),
            format!(
                "{:.0}/s, {} allocations, p50 {:.2} ms, p99 {:.2} ms",
                r.per_s, r.allocations, s.median, s.p99
            ),
        )
    };
    Section {
        id: "p8".into(),
        title: "P8 shared allocations on etcd".into(),
        results: json!({
            "hosts": HOSTS,
            "clients_per_host": CLIENTS,
            "subnet": subnet,
            "etcd_members": 3,
            "shared": {"allocations": shared.allocations, "per_s": round(shared.per_s), "latency_ms": s_shared.json(), "claims_lost": lost},
            "raw_etcd": {"transactions": floor.allocations, "per_s": round(floor.per_s), "latency_ms": s_raw.json()},
            "local": {"allocations": local.allocations, "per_s": round(local.per_s), "latency_ms": s_local.json()},
            "shared_over_raw": round(ratio),
            "p99_over_raw_p99": round(p99_ratio),
            "goals": {"shared >= 0.8 x raw etcd": met_rate, "p99 <= 1.5 x raw etcd p99": met_p99},
        }),
        table: vec![
            row("shared pool on etcd", &shared, &s_shared),
            row("raw etcd transactions (floor)", &floor, &s_raw),
            row("local sled pools (3 pools)", &local, &s_local),
            ("shared / raw".into(), format!("{ratio:.3}")),
            (
                "claims lost to another host".into(),
                format!(
                    "{lost} ({:.1} % of allocations)",
                    100.0 * lost as f64 / shared.allocations as f64
                ),
            ),
        ],
        plots: vec![("p8-rate.svg".into(), plot), ("p8-latency.svg".into(), latency)],
        sentences: vec![
            format!(
                "Goal: shared allocations ≥ 0.8× the raw etcd transaction rate. {:.0}/s against {:.0}/s, ratio {ratio:.3}, {how_rate}.",
                shared.per_s, floor.per_s
            ),
            format!(
                "Goal: p99 ≤ 1.5× the raw etcd transaction p99 of the same client at the same concurrency. {:.2} ms \
                 against {:.2} ms, ratio {p99_ratio:.3}, {how_p99}.",
                s_shared.p99, s_raw.p99
            ),
        ],
        notes: Value::Null,
    }
}
