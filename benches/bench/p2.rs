//! P2: one container's network attach and detach (CreateEndpoint, Join, move into a
//! namespace, address, up, Leave, move back, DeleteEndpoint) through rustvlan with the
//! dockerd-like harness, against the same link work done with raw netlink (the floor),
//! and against CNI's macvlan + host-local plugins (ADD + DEL). Sequential, then with 16
//! concurrent clients. Blocks of cycles alternate between variants, and each block's
//! time includes waiting for rustvlan's queued deletes, so background work is counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use futures_util::TryStreamExt;
use rtnetlink::{LinkMacVlan, LinkUnspec};
use serde_json::{Value, json};

use crate::common::harness::{Dockerd, Netlink, Sandbox, Timings, netlink_in};
use crate::env::{Conn, Netns, Plugin, Veth, ms};
use crate::stats::{round, summary, verdict};
use crate::{Bench, Section};

const CLIENTS: usize = 16;
const NET: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";

/// The raw floor: the same link operations, straight from this process.
struct Raw {
    host: Netlink,
    host_fd: File,
    parent: u32,
}

async fn index(nl: &Netlink, name: &str) -> u32 {
    nl.0.link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .unwrap()
        .unwrap()
        .header
        .index
}

impl Raw {
    async fn cycle(&self, name: &str, cidr: &str, sandbox: &Sandbox, sandbox_fd: &File) {
        let h = &self.host.0;
        h.link()
            .add(LinkMacVlan::new(name, self.parent, rtnetlink::packet_route::link::MacVlanMode::Bridge).build())
            .execute()
            .await
            .unwrap();
        let idx = index(&self.host, name).await;
        h.link()
            .change(
                LinkUnspec::new_with_index(idx)
                    .setns_by_fd(sandbox_fd.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        let nl = sandbox.netlink();
        let idx = index(nl, name).await;
        nl.0.link()
            .change(LinkUnspec::new_with_index(idx).name("eth0".to_string()).build())
            .execute()
            .await
            .unwrap();
        let (ip, prefix) = cidr.split_once('/').unwrap();
        nl.0.address()
            .add(idx, ip.parse().unwrap(), prefix.parse().unwrap())
            .execute()
            .await
            .unwrap();
        nl.0.link()
            .change(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .unwrap();
        nl.0.link()
            .change(
                LinkUnspec::new_with_index(idx)
                    .down()
                    .name(name.to_string())
                    .setns_by_fd(self.host_fd.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        let idx = index(&self.host, name).await;
        h.link().del(idx).execute().await.unwrap();
    }
}

/// CNI's macvlan plugin with host-local IPAM, ADD then DEL, as a runtime calls them.
struct Cni {
    config: String,
}

impl Cni {
    fn call(&self, command: &str, id: &str, netns: &Path) {
        let mut child = Command::new("/usr/lib/cni/macvlan")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(self.config.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "CNI {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn cycle(self: &Arc<Self>, id: String, netns: PathBuf) {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            me.call("ADD", &id, &netns);
            me.call("DEL", &id, &netns);
        })
        .await
        .unwrap();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    Rustvlan,
    Raw,
    Cni,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Rustvlan => "rustvlan (harness)",
            Variant::Raw => "raw netlink (floor)",
            Variant::Cni => "CNI macvlan + host-local",
        }
    }
}

struct Setup {
    plugin: Plugin,
    dockerds: Vec<Dockerd>,
    raws: Vec<Raw>,
    cni: Arc<Cni>,
    sandboxes: Vec<(Netns, Sandbox, File)>,
    _parents: (Veth, Veth, Veth),
}

/// Runs `cycles` cycles of one variant on `clients` clients at once; returns the wall
/// time (including rustvlan's queued deletes) and per-call timings.
async fn block(s: &Setup, v: Variant, clients: usize, cycles: usize, seq: &mut usize) -> (f64, Vec<Timings>) {
    let started = Instant::now();
    let per_client = cycles / clients;
    let base = *seq;
    *seq += cycles;
    let timings = {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (ns, sandbox, fd) = &s.sandboxes[c];
            let cidr = format!("10.150.{}.{}/16", c / 200, c % 200 + 2);
            tasks.push(async move {
                let mut all = Vec::new();
                for k in 0..per_client {
                    let n = base + c * per_client + k;
                    match v {
                        Variant::Rustvlan => {
                            let mut t = Timings::default();
                            // dockerd's ids are random hex: spread them the same way.
                            let ep = format!(
                                "{:016x}{}",
                                (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                                "c".repeat(48)
                            );
                            let dockerd = &s.dockerds[c];
                            let a = dockerd.attach_with(&ep, sandbox, Some(&cidr), &mut t).await.unwrap();
                            dockerd.detach(&a, sandbox, &mut t).await.unwrap();
                            all.push(t);
                        }
                        Variant::Raw => s.raws[c].cycle(&format!("bf{n:08x}"), &cidr, sandbox, fd).await,
                        Variant::Cni => s.cni.cycle(format!("bench{n}"), ns.path()).await,
                    }
                }
                all
            });
        }
        futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .flatten()
            .collect()
    };
    if v == Variant::Rustvlan {
        s.plugin.settle().await;
    }
    (ms(started.elapsed()), timings)
}

pub async fn run(b: &Bench) -> Section {
    let dir = b.scratch("p2");
    let (rv_parent, raw_parent, cni_parent) = (Veth::new("bp2rv"), Veth::new("bp2raw"), Veth::new("bp2cni"));
    let mut plugin = Plugin::new(&b.rustvlan, &dir.join("rustvlan.sock"), &dir);
    plugin.start();
    let mut conn = Conn::connect(&plugin.socket).await;
    let pool = conn
        .ok(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.150.0.0/16", "V6": false}),
        )
        .await;
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    conn.ok(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "10.150.0.0/16"}],
               "Options": {"com.docker.network.generic": {"parent": rv_parent.0}}}),
    )
    .await;
    let host = Path::new("/proc/self/ns/net");
    // Each client is its own dockerd-like actor, with its own connection to the plugin
    // and its own netlink socket: one shared socket would serialise the clients' link
    // moves in this process, before the kernel even sees them.
    let dockerds: Vec<Dockerd> = (0..CLIENTS)
        .map(|_| Dockerd::new(&plugin.socket, host, NET, &pool_id))
        .collect();
    let mut raws = Vec::new();
    for _ in 0..CLIENTS {
        let raw_host = netlink_in(host);
        raws.push(Raw {
            parent: index(&raw_host, &raw_parent.0).await,
            host: raw_host,
            host_fd: File::open("/proc/self/ns/net").unwrap(),
        });
    }
    let cni_dir = dir.join("host-local");
    let cni = Arc::new(Cni {
        config:
            json!({"cniVersion": "0.4.0", "name": "bench", "type": "macvlan", "master": cni_parent.0, "mode": "bridge",
                        "ipam": {"type": "host-local", "subnet": "10.151.0.0/16", "dataDir": cni_dir}})
            .to_string(),
    });
    let sandboxes = (0..CLIENTS)
        .map(|c| {
            let ns = Netns::new(&format!("bp2sb{c}"));
            let sandbox = Sandbox::open(&ns.path());
            let fd = File::open(ns.path()).unwrap();
            (ns, sandbox, fd)
        })
        .collect();
    let setup = Setup {
        plugin,
        dockerds,
        raws,
        cni,
        sandboxes,
        _parents: (rv_parent, raw_parent, cni_parent),
    };

    let variants = [Variant::Rustvlan, Variant::Raw, Variant::Cni];
    let (rounds, per_block, concurrent_rounds, concurrent_cycles) =
        if b.smoke { (2, 2, 1, 16) } else { (40, 5, 3, 160) };
    let mut seq = 0;
    for v in variants {
        block(&setup, v, 1, 2, &mut seq).await; // warm-up
    }
    let mut sequential: BTreeMap<Variant, Vec<f64>> = BTreeMap::new();
    let mut calls: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for v in variants {
            let (t, timings) = block(&setup, v, 1, per_block, &mut seq).await;
            sequential.entry(v).or_default().push(t / per_block as f64);
            for step in timings.iter().flat_map(|t| t.0.iter()) {
                calls.entry(step.0).or_default().push(ms(step.1));
            }
        }
    }
    let mut concurrent: BTreeMap<Variant, Vec<f64>> = BTreeMap::new();
    let mut concurrent_calls: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..concurrent_rounds {
        for v in variants {
            let (t, timings) = block(&setup, v, CLIENTS, concurrent_cycles, &mut seq).await;
            concurrent
                .entry(v)
                .or_default()
                .push(concurrent_cycles as f64 / (t / 1000.0));
            for step in timings.iter().flat_map(|t| t.0.iter()) {
                concurrent_calls.entry(step.0).or_default().push(ms(step.1));
            }
        }
    }
    drop(setup);

    let s = |v| summary(&sequential[&v]);
    let c = |v| summary(&concurrent[&v]);
    let floor_ratio = s(Variant::Rustvlan).median / s(Variant::Raw).median;
    let sequential_rate = 1000.0 / s(Variant::Rustvlan).median;
    let speedup = c(Variant::Rustvlan).median / sequential_rate;
    let (met1, how1) = verdict(floor_ratio, 1.05, true);
    let (met2, how2) = verdict(speedup, 3.0, false);
    let per_call = |calls: &BTreeMap<&'static str, Vec<f64>>| -> BTreeMap<&'static str, Value> {
        calls
            .iter()
            .map(|(k, v)| {
                let s = summary(v);
                (*k, json!({"p50_ms": round(s.median), "p99_ms": round(s.p99), "n": s.n}))
            })
            .collect()
    };
    let mut table = Vec::new();
    for v in variants {
        table.push((
            format!("{} sequential", v.label()),
            format!("{:.1} ms/cycle ({:.1}–{:.1})", s(v).median, s(v).min, s(v).max),
        ));
    }
    for v in variants {
        table.push((
            format!("{} × {CLIENTS} clients", v.label()),
            format!("{:.1} cycles/s", c(v).median),
        ));
    }
    for (k, v) in &calls {
        let s = summary(v);
        table.push((
            format!("rustvlan call: {k}"),
            format!("p50 {:.2} ms, p99 {:.2} ms", s.median, s.p99),
        ));
    }
    let plot_seq = crate::svg::strips(
        "P2: one attach/detach cycle, sequential (lower is better)",
        "milliseconds per cycle",
        &variants
            .iter()
            .map(|v| (v.label().to_string(), sequential[v].clone()))
            .collect::<Vec<_>>(),
    );
    let mut bars: Vec<(String, f64)> = vec![(format!("{} sequential", Variant::Rustvlan.label()), sequential_rate)];
    bars.extend(
        variants
            .iter()
            .map(|v| (format!("{} × {CLIENTS}", v.label()), c(*v).median)),
    );
    let plot_conc = crate::svg::bars("P2: cycles per second (higher is better)", "cycles per second", &bars);
    let plot_calls = crate::svg::strips(
        "P2: rustvlan cycle, time per call (milliseconds)",
        "milliseconds",
        &calls
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<Vec<_>>(),
    );
    Section {
        id: "p2".into(),
        title: "P2 attach/detach cycle".into(),
        results: json!({
            "sequential_ms_per_cycle": variants.iter().map(|v| (v.label(), s(*v).json())).collect::<BTreeMap<_, _>>(),
            "concurrent_cycles_per_s": variants.iter().map(|v| (v.label(), c(*v).json())).collect::<BTreeMap<_, _>>(),
            "clients": CLIENTS,
            "ratio_to_floor": round(floor_ratio),
            "concurrent_speedup": round(speedup),
            "goals": {"ratio_to_floor <= 1.05": met1, "concurrent_speedup >= 3": met2},
            "rustvlan_per_call": per_call(&calls),
            "rustvlan_per_call_concurrent": per_call(&concurrent_calls),
        }),
        table,
        plots: vec![
            ("p2-sequential.svg".into(), plot_seq),
            ("p2-concurrent.svg".into(), plot_conc),
            ("p2-calls.svg".into(), plot_calls),
        ],
        sentences: vec![
            format!(
                "Goal: sequential cycle ≤ 1.05× the raw netlink floor. rustvlan {:.1} ms vs floor {:.1} ms: {floor_ratio:.3}×, {how1}.",
                s(Variant::Rustvlan).median,
                s(Variant::Raw).median
            ),
            format!(
                "Goal: with {CLIENTS} concurrent clients, ≥ 3× the sequential rate. {:.1} cycles/s vs {sequential_rate:.1} sequential: {speedup:.2}×, {how2}.",
                c(Variant::Rustvlan).median
            ),
        ],
        notes: Value::Null,
    }
}
