//! P4: start-up until the socket answers, with 10 000 endpoints and 100 networks
//! persisted. P5: peak RSS idle and with those 10 000 endpoints; the plugin's size.

use std::time::Instant;

use serde_json::{Value, json};

use crate::env::{Conn, Plugin, Veth, ms};
use crate::stats::{round, summary, verdict};
use crate::{Bench, Section};

pub async fn run(b: &Bench) -> Section {
    let dir = b.scratch("p4");
    let parent = Veth::new("bp4");
    let (networks, per_network) = if b.smoke { (10, 10) } else { (100, 100) };
    let starts = if b.smoke { 3 } else { 15 };

    // P5 idle: a fresh store, nothing to do. Metrics on: the TCP listener is open and
    // every measurement of memory follows a scrape.
    let mut plugin = Plugin::new(&b.rustvlan, &dir.join("rustvlan.sock"), &dir);
    plugin.extra_args = vec!["--metrics-listen".into(), "127.0.0.1:0".into()];
    plugin.start();
    plugin.stop();
    let empty_start = ms(plugin.start());
    std::thread::sleep(std::time::Duration::from_millis(500));
    plugin.scrape().await;
    let (_, idle_peak) = plugin.memory_kib();

    // Populate with 64 clients: pools, gateways, networks, then endpoints.
    let populate = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..networks {
        let socket = plugin.socket.clone();
        let parent = parent.0.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await;
            let subnet = format!("10.{}.{}.0/24", 180 + n / 250, n % 250);
            let pool = conn
                .ok("/IpamDriver.RequestPool", json!({"AddressSpace": "rustvlan-local", "Pool": subnet, "V6": false}))
                .await;
            let pool_id = pool["PoolID"].as_str().unwrap().to_string();
            let gw = conn
                .ok(
                    "/IpamDriver.RequestAddress",
                    json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
                )
                .await;
            let net = format!("{n:08x}{}", "9".repeat(56));
            conn.ok(
                "/NetworkDriver.CreateNetwork",
                json!({"NetworkID": net, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": subnet, "Gateway": gw["Address"]}],
                       "Options": {"com.docker.network.generic": {"parent": parent}}}),
            )
            .await;
            (net, pool_id)
        }));
    }
    let mut nets = Vec::new();
    for t in tasks {
        nets.push(t.await.unwrap());
    }
    let mut tasks = Vec::new();
    for client in 0..64usize {
        let socket = plugin.socket.clone();
        let nets = nets.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await;
            for k in (client..networks * per_network).step_by(64) {
                let (net, pool) = &nets[k % networks];
                let address = conn
                    .ok("/IpamDriver.RequestAddress", json!({"PoolID": pool, "Address": ""}))
                    .await;
                conn.ok(
                    "/NetworkDriver.CreateEndpoint",
                    json!({"NetworkID": net, "EndpointID": format!("{k:08x}{}", "8".repeat(56)),
                           "Interface": {"Address": address["Address"], "MacAddress": ""}}),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let populate_s = populate.elapsed().as_secs_f64();
    let (scrape_ms, scrape_bytes) = plugin.scrape().await;
    let (_, populate_peak) = plugin.memory_kib();
    plugin.stop();

    // P4: restarts on that store.
    let mut start_ms = Vec::new();
    let mut loaded = (0, 0);
    for _ in 0..starts {
        start_ms.push(ms(plugin.start()));
        std::thread::sleep(std::time::Duration::from_millis(300));
        plugin.scrape().await;
        loaded = plugin.memory_kib();
        plugin.stop();
    }
    let s = summary(&start_ms);
    let (met4, how4) = verdict(s.median, 100.0, true);
    let idle_mb = idle_peak as f64 / 1024.0;
    let loaded_mb = loaded.1 as f64 / 1024.0;
    let (met5a, how5a) = verdict(idle_mb, 10.0, true);
    let (met5b, how5b) = verdict(loaded_mb.max(populate_peak as f64 / 1024.0), 30.0, true);
    let size = std::fs::metadata(&b.rustvlan).map(|m| m.len()).unwrap_or(0);
    let gz = b.plugin_layer_bytes;
    let endpoints = networks * per_network;
    let plot = crate::svg::strips(
        &format!("P4: start-up to an answering socket, {endpoints} endpoints, {networks} networks"),
        "milliseconds",
        &[("rustvlan serve".into(), start_ms.clone())],
    );
    let mem = crate::svg::bars(
        "P5: peak resident memory (lower is better)",
        "MiB",
        &[
            ("idle".into(), idle_mb),
            (format!("serving {endpoints} endpoints (loaded)"), loaded_mb),
            (
                format!("while creating {endpoints} endpoints"),
                populate_peak as f64 / 1024.0,
            ),
        ],
    );
    Section {
        id: "p4p5".into(),
        title: "P4 restart and P5 memory".into(),
        results: json!({
            "networks": networks,
            "endpoints": endpoints,
            "populate_s": round(populate_s),
            "startup_ms": s.json(),
            "startup_ms_empty_store": round(empty_start),
            "peak_rss_mib": {"idle": round(idle_mb), "loaded": round(loaded_mb), "while_populating": round(populate_peak as f64 / 1024.0)},
            "metrics": {"listen": "127.0.0.1:0", "scrape_ms": round(scrape_ms), "scrape_bytes": scrape_bytes},
            "binary_bytes": size,
            "plugin_layer_gzip_bytes": gz,
            "goals": {"startup <= 100 ms": met4, "idle <= 10 MB": met5a, "10k endpoints <= 30 MB": met5b},
            "samples": {"startup_ms": start_ms},
        }),
        table: vec![
            (
                format!("start-up with {endpoints} endpoints"),
                format!("{:.1} ms ({:.1}–{:.1})", s.median, s.min, s.max),
            ),
            ("start-up, empty store".into(), format!("{empty_start:.1} ms")),
            (
                format!("GET /metrics with {networks} pools"),
                format!("{scrape_ms:.1} ms, {:.1} KiB", scrape_bytes as f64 / 1024.0),
            ),
            ("peak RSS idle".into(), format!("{idle_mb:.1} MiB")),
            (
                format!("peak RSS serving {endpoints} endpoints"),
                format!("{loaded_mb:.1} MiB"),
            ),
            (
                "peak RSS while creating them".to_string(),
                format!("{:.1} MiB", populate_peak as f64 / 1024.0),
            ),
            (
                "binary / plugin layer (gzip)".into(),
                format!("{:.2} MiB / {:.2} MiB", size as f64 / 1048576.0, gz as f64 / 1048576.0),
            ),
        ],
        plots: vec![("p4.svg".into(), plot), ("p5.svg".into(), mem)],
        sentences: vec![
            format!(
                "Goal: start-up ≤ 100 ms with {endpoints} endpoints and {networks} networks. {:.1} ms, {how4}.",
                s.median
            ),
            "Metrics are on throughout P4 and P5: `--metrics-listen 127.0.0.1:0`, and a `GET /metrics` before every memory reading.".to_string(),
            format!("Goal: ≤ 10 MB idle. {idle_mb:.1} MiB peak, {how5a}."),
            format!(
                "Goal: ≤ 30 MB with {endpoints} endpoints. {loaded_mb:.1} MiB peak serving them after a restart, {:.1} MiB peak while creating them: {how5b}.",
                populate_peak as f64 / 1024.0
            ),
        ],
        notes: Value::Null,
    }
}
