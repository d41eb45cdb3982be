//! P3: durable IPAM. RequestAddress until a /16 is exhausted, then ReleaseAddress of
//! everything, with 1 and with 64 concurrent clients (each on a keep-alive connection,
//! as dockerd keeps one); against CNI's host-local plugin allocating from a /16. Also the
//! latency of the first and of the last allocations of the /16.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

use crate::env::{Conn, Plugin, ms};
use crate::stats::{round, summary, verdict};
use crate::{Bench, Section};

struct Run {
    allocations_per_s: f64,
    releases_per_s: f64,
    allocated: usize,
    first_ms: Vec<f64>,
    last_ms: Vec<f64>,
}

/// Allocates until the pool is exhausted with `clients` clients, then releases all.
async fn exhaust(plugin: &Plugin, pool: &str, clients: usize, limit: usize) -> Run {
    let full = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (socket, pool, full) = (plugin.socket.clone(), pool.to_string(), Arc::clone(&full));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await;
            let mut got: Vec<(String, f64)> = Vec::new();
            while !full.load(Ordering::Relaxed) {
                let t = Instant::now();
                let (status, answer) = conn
                    .call(
                        "/IpamDriver.RequestAddress",
                        json!({"PoolID": pool, "Address": ""}).to_string(),
                    )
                    .await;
                let took = ms(t.elapsed());
                match status {
                    200 => got.push((crate::common::answered_address(&answer), took)),
                    409 => full.store(true, Ordering::Relaxed),
                    _ => panic!("RequestAddress: {status} {answer}"),
                }
                if got.len() * clients >= limit {
                    full.store(true, Ordering::Relaxed);
                }
            }
            (conn, got)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    let alloc_time = started.elapsed().as_secs_f64();
    let allocated: usize = held.iter().map(|(_, g)| g.len()).sum();
    // First and last allocations: by order within the one-client run, or the first and
    // last of every client.
    let mut all: Vec<f64> = held.iter().flat_map(|(_, g)| g.iter().map(|(_, t)| *t)).collect();
    let take = 100.min(all.len() / 2);
    let first_ms = all[..take].to_vec();
    let last_ms = all.split_off(all.len() - take);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut conn, got) in held {
        let pool = pool.to_string();
        tasks.push(tokio::spawn(async move {
            for (ip, _) in got {
                conn.ok("/IpamDriver.ReleaseAddress", json!({"PoolID": pool, "Address": ip}))
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let release_time = started.elapsed().as_secs_f64();
    Run {
        allocations_per_s: allocated as f64 / alloc_time,
        releases_per_s: allocated as f64 / release_time,
        allocated,
        first_ms,
        last_ms,
    }
}

/// host-local, invoked as a runtime invokes an IPAM plugin: one process per allocation.
fn host_local(count: usize, clients: usize, dir: &std::path::Path) -> f64 {
    let config = json!({"cniVersion": "0.4.0", "name": "bench-hl",
                        "ipam": {"type": "host-local", "subnet": "10.161.0.0/16", "dataDir": dir}})
    .to_string();
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let config = &config;
            s.spawn(move || {
                for k in 0..count / clients {
                    let mut child = Command::new("/usr/lib/cni/host-local")
                        .env("CNI_COMMAND", "ADD")
                        .env("CNI_CONTAINERID", format!("hl-{c}-{k}"))
                        .env("CNI_NETNS", "/proc/self/ns/net")
                        .env("CNI_IFNAME", "eth0")
                        .env("CNI_PATH", "/usr/lib/cni")
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    child.stdin.take().unwrap().write_all(config.as_bytes()).unwrap();
                    let out = child.wait_with_output().unwrap();
                    assert!(
                        out.status.success(),
                        "host-local: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            });
        }
    });
    count as f64 / started.elapsed().as_secs_f64()
}

pub async fn run(b: &Bench) -> Section {
    let dir = b.scratch("p3");
    let mut plugin = Plugin::new(&b.rustvlan, &dir.join("rustvlan.sock"), &dir);
    plugin.start();
    let mut conn = Conn::connect(&plugin.socket).await;
    let limit = std::env::var("RUSTVLAN_BENCH_P3_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if b.smoke { 2_000 } else { usize::MAX });
    let (host_local_count, rounds) = if b.smoke { (64, 1) } else { (1_024, 2) };
    let mut runs: Vec<(usize, Run)> = Vec::new();
    let mut hl: Vec<(usize, f64)> = Vec::new();
    for round in 0..rounds {
        for clients in [1, 64] {
            let pool = conn
                .ok(
                    "/IpamDriver.RequestPool",
                    json!({"AddressSpace": "rustvlan-local", "Pool": format!("10.{}.0.0/16", 170 + round * 2 + (clients > 1) as usize), "V6": false}),
                )
                .await;
            let pool_id = pool["PoolID"].as_str().unwrap().to_string();
            runs.push((clients, exhaust(&plugin, &pool_id, clients, limit).await));
            conn.ok("/IpamDriver.ReleasePool", json!({"PoolID": pool_id})).await;
            let hl_dir = dir.join(format!("host-local-{round}-{clients}"));
            hl.push((clients, host_local(host_local_count, clients, &hl_dir)));
        }
    }
    plugin.stop();

    let rate = |c: usize| {
        summary(
            &runs
                .iter()
                .filter(|(k, _)| *k == c)
                .map(|(_, r)| r.allocations_per_s)
                .collect::<Vec<_>>(),
        )
    };
    let release = |c: usize| {
        summary(
            &runs
                .iter()
                .filter(|(k, _)| *k == c)
                .map(|(_, r)| r.releases_per_s)
                .collect::<Vec<_>>(),
        )
    };
    let hl_rate = |c: usize| summary(&hl.iter().filter(|(k, _)| *k == c).map(|(_, r)| *r).collect::<Vec<_>>());
    let single = &runs.iter().find(|(c, _)| *c == 1).unwrap().1;
    let (first, last) = (summary(&single.first_ms), summary(&single.last_ms));
    let r64 = rate(64).median;
    let vs_hl = r64 / hl_rate(64).median.max(hl_rate(1).median);
    let (met1, how1) = verdict(r64, 10_000.0, false);
    let (met2, how2) = verdict(vs_hl, 10.0, false);
    let plot = crate::svg::bars(
        "P3: durable allocations per second (higher is better)",
        "allocations per second",
        &[
            ("rustvlan, 1 client".into(), rate(1).median),
            ("rustvlan, 64 clients".into(), r64),
            ("host-local, 1 client".into(), hl_rate(1).median),
            ("host-local, 64 clients".into(), hl_rate(64).median),
        ],
    );
    let latency = crate::svg::strips(
        "P3: RequestAddress latency, first vs last 100 of a /16 (1 client)",
        "milliseconds",
        &[
            ("first 100".into(), single.first_ms.clone()),
            ("last 100".into(), single.last_ms.clone()),
        ],
    );
    Section {
        id: "p3".into(),
        title: "P3 IPAM".into(),
        results: json!({
            "allocated_per_run": runs.iter().map(|(c, r)| json!({"clients": c, "allocated": r.allocated})).collect::<Vec<_>>(),
            "rustvlan_allocations_per_s": {"1": rate(1).json(), "64": rate(64).json()},
            "rustvlan_releases_per_s": {"1": release(1).json(), "64": release(64).json()},
            "host_local_allocations_per_s": {"1": hl_rate(1).json(), "64": hl_rate(64).json()},
            "first_100_ms": first.json(),
            "last_100_ms": last.json(),
            "ratio_to_host_local": round(vs_hl),
            "goals": {">= 10000 allocations/s at 64 clients": met1, ">= 10x host-local": met2},
        }),
        table: vec![
            (
                "rustvlan, 1 client".into(),
                format!(
                    "{:.0} allocations/s, {:.0} releases/s",
                    rate(1).median,
                    release(1).median
                ),
            ),
            (
                "rustvlan, 64 clients".into(),
                format!("{r64:.0} allocations/s, {:.0} releases/s", release(64).median),
            ),
            (
                "host-local, 1 / 64 clients".into(),
                format!("{:.0} / {:.0} allocations/s", hl_rate(1).median, hl_rate(64).median),
            ),
            ("first 100 allocations".into(), format!("median {:.3} ms", first.median)),
            (
                "last 100 allocations (nearly full /16)".into(),
                format!("median {:.3} ms", last.median),
            ),
        ],
        plots: vec![("p3-rate.svg".into(), plot), ("p3-latency.svg".into(), latency)],
        sentences: vec![
            format!("Goal: ≥ 10 000 durable allocations/s at 64 clients. {r64:.0}/s, {how1}."),
            format!("Goal: ≥ 10× host-local. {vs_hl:.0}×, {how2}."),
            format!(
                "The last allocations of a nearly full /16 take {:.3} ms (median) against {:.3} ms for the first.",
                last.median, first.median
            ),
        ],
        notes: Value::Null,
    }
}
