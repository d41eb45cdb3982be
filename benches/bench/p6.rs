//! P6: the data plane. Two containers on a rustvlan macvlan network (bridge mode) against
//! two on Docker's docker0 bridge: iperf3 TCP throughput and ping round-trip times.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::env::{Plugin, Veth, check, create_network, docker, docker_ok};
use crate::stats::{round, summary, verdict};
use crate::{Bench, Section};

fn container_ip(name: &str, net: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        name,
    ])
}

fn pid(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.Pid}}", name])
}

/// One iperf3 transfer from the client container's namespace to the server: what it
/// moved, and the machine's CPU time meanwhile. Both ends run on this machine, so its
/// busy time is what the transfer cost, sender and receiver, softirqs included.
struct Transfer {
    gbit_s: f64,
    cpu_s_per_gb: f64,
}

fn transfer(client_pid: &str, server_ip: &str, seconds: u32) -> Result<Transfer, String> {
    let before = busy_cpu_seconds()?;
    let out = Command::new("nsenter")
        .args([
            "-t",
            client_pid,
            "-n",
            "iperf3",
            "-c",
            server_ip,
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()
        .map_err(|e| format!("cannot run iperf3 (Debian's iperf3): {e}"))?;
    let after = busy_cpu_seconds()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "iperf3 to {server_ip} printed no JSON ({e}): {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(error) = v["error"].as_str() {
        return Err(format!("iperf3 to {server_ip} failed: {error}"));
    }
    let received = &v["end"]["sum_received"];
    let (Some(bits_per_second), Some(bytes)) = (received["bits_per_second"].as_f64(), received["bytes"].as_f64())
    else {
        return Err(format!("iperf3 to {server_ip} reported no received data: {}", v["end"]));
    };
    if bytes <= 0.0 {
        return Err(format!("iperf3 to {server_ip} moved no data"));
    }
    Ok(Transfer {
        gbit_s: bits_per_second / 1e9,
        cpu_s_per_gb: (after - before) / (bytes / 1e9),
    })
}

/// Seconds every CPU of this machine spent busy since boot: /proc/stat's first line,
/// less idle and iowait, in USER_HZ (100 a second, fixed by the kernel's ABI).
fn busy_cpu_seconds() -> Result<f64, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("reading /proc/stat: {e}"))?;
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or("/proc/stat has no cpu line")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 8 {
        return Err(format!("/proc/stat's cpu line has {} fields", fields.len()));
    }
    let all: f64 = fields[..8].iter().sum();
    Ok((all - fields[3] - fields[4]) / 100.0)
}

/// A stock dockerd on the same host (as on any Docker host) sets iptables' FORWARD
/// policy to DROP and loads br_netfilter, which then drops traffic between two containers
/// on the bench's own dockerd's bridge. For the run, that bridge's own traffic is let
/// through, and only that; the rule goes when this does (and bench.sh's clean-up removes
/// it if the run is killed).
struct ForwardAccept(Option<Vec<String>>);

const FORWARD_COMMENT: &str = "rustvlan-bench-p6";

impl ForwardAccept {
    fn open(bridge: &str) -> ForwardAccept {
        let rule: Vec<String> = [
            "FORWARD",
            "-i",
            bridge,
            "-o",
            bridge,
            "-m",
            "comment",
            "--comment",
            FORWARD_COMMENT,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["-j".to_string(), "ACCEPT".to_string()])
        .collect();
        let mut insert = vec!["-w".to_string(), "-I".to_string()];
        insert.extend(rule.iter().cloned());
        match Command::new("iptables").args(&insert).output() {
            Ok(out) if out.status.success() => ForwardAccept(Some(rule)),
            Ok(out) => {
                eprintln!(
                    "[bench] P6: could not let {bridge}'s traffic through the host's firewall: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                ForwardAccept(None)
            }
            Err(_) => ForwardAccept(None), // no iptables: no Docker firewall either
        }
    }
}

impl Drop for ForwardAccept {
    fn drop(&mut self) {
        if let Some(rule) = self.0.take() {
            let _ = Command::new("iptables").args(["-w", "-D"]).args(&rule).output();
        }
    }
}

fn bridge_name() -> String {
    docker_ok(&[
        "network",
        "inspect",
        "bridge",
        "-f",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
    ])
}

/// Mean RTT of `count` pings from inside the client container's namespace, in ms.
fn rtt(client_pid: &str, server_ip: &str, count: u32) -> f64 {
    let out = check(Command::new("nsenter").args([
        "-t",
        client_pid,
        "-n",
        "ping",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        server_ip,
    ]));
    let line = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or_else(|| panic!("ping: {out}"));
    line.split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Per network: Gbit/s, CPU seconds per GB and RTT (ms) of each round.
type Samples = [Vec<f64>; 3];

/// The rounds, interleaved between the two networks. `servers`: network, server address
/// and client pid.
fn measure(servers: &[(&str, String, String)], rounds: u32, seconds: u32, pings: u32) -> Result<Vec<Samples>, String> {
    let mut samples: Vec<Samples> = vec![Default::default(), Default::default()];
    for _ in 0..rounds {
        for (i, (_, ip, client)) in servers.iter().enumerate() {
            let t = transfer(client, ip, seconds)?;
            samples[i][0].push(t.gbit_s);
            samples[i][1].push(t.cpu_s_per_gb);
        }
        for (i, (_, ip, client)) in servers.iter().enumerate() {
            samples[i][2].push(rtt(client, ip, pings));
        }
    }
    Ok(samples)
}

pub async fn run(b: &Bench) -> Section {
    let bridge_ok = docker(&["network", "inspect", "bridge"]).status.success();
    if !bridge_ok {
        return Section::skipped("p6", "P6 data plane", "this dockerd has no default bridge network");
    }
    let dir = b.scratch("p6");
    let mut plugin = Plugin::new(&b.rustvlan, Path::new("/run/docker/plugins/rustvlan.sock"), &dir);
    plugin.start();
    let parent = Veth::new("bp6");
    create_network("rustvlan", "bench-p6", "10.190.0.0/24", &parent);
    let firewall = ForwardAccept::open(&bridge_name());
    let (rounds, seconds, pings) = if b.smoke { (1, 2, 20) } else { (3, 10, 100) };
    let nets = [
        ("bench-p6", "rustvlan macvlan bridge"),
        ("bridge", "docker0 bridge (veth)"),
    ];
    let mut servers = Vec::new();
    let mut containers = Vec::new();
    for (net, _) in nets {
        let s = format!("p6-server-{net}");
        let c = format!("p6-client-{net}");
        let _ = docker(&["rm", "-f", &s, &c]);
        docker_ok(&["run", "-d", "--name", &s, "--net", net, &b.perf_image, "iperf3", "-s"]);
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &c,
            "--net",
            net,
            &b.perf_image,
            "sleep",
            "100000",
        ]);
        servers.push((net, container_ip(&s, net), pid(&c)));
        containers.extend([s, c]);
    }
    let measured = measure(&servers, rounds, seconds, pings);
    for c in &containers {
        let _ = docker(&["rm", "-f", c]);
    }
    docker_ok(&["network", "rm", "bench-p6"]);
    plugin.stop();
    drop(firewall);
    let samples = measured.unwrap_or_else(|e| {
        eprintln!("[bench] P6 failed: {e}");
        std::process::exit(1);
    });
    section(&nets, &samples, rounds, seconds, pings)
}

fn section(nets: &[(&str, &str); 2], samples: &[Samples], rounds: u32, seconds: u32, pings: u32) -> Section {
    let [t, c, r] = [0, 1, 2].map(|k| [summary(&samples[0][k]), summary(&samples[1][k])]);
    let tp_ratio = t[0].median / t[1].median;
    let cpu_ratio = c[0].median / c[1].median;
    let (met1, how1) = verdict(tp_ratio, 1.0, false);
    let (met2, how2) = verdict(r[0].median, r[1].median, true);
    let (met3, how3) = verdict(cpu_ratio, 0.8, true);
    let labels: Vec<String> = nets.iter().map(|(_, l)| l.to_string()).collect();
    let strips =
        |k: usize| -> Vec<(String, Vec<f64>)> { (0..2).map(|i| (labels[i].clone(), samples[i][k].clone())).collect() };
    Section {
        id: "p6".into(),
        title: "P6 data plane".into(),
        results: json!({
            "iperf3_gbit_s": {labels[0].clone(): t[0].json(), labels[1].clone(): t[1].json()},
            "cpu_s_per_gb": {labels[0].clone(): c[0].json(), labels[1].clone(): c[1].json()},
            "ping_rtt_ms": {labels[0].clone(): r[0].json(), labels[1].clone(): r[1].json()},
            "throughput_ratio": round(tp_ratio),
            "cpu_per_gb_ratio": round(cpu_ratio),
            "goals": {"throughput >= 1.0x bridge": met1, "rtt <= bridge": met2, "cpu per GB <= 0.8x bridge": met3},
            "rounds": rounds, "seconds": seconds, "pings": pings,
        }),
        table: vec![
            (
                format!("{} throughput", labels[0]),
                format!("{:.2} Gbit/s", t[0].median),
            ),
            (
                format!("{} throughput", labels[1]),
                format!("{:.2} Gbit/s", t[1].median),
            ),
            (format!("{} CPU per GB", labels[0]), format!("{:.3} s", c[0].median)),
            (format!("{} CPU per GB", labels[1]), format!("{:.3} s", c[1].median)),
            (format!("{} RTT", labels[0]), format!("{:.3} ms", r[0].median)),
            (format!("{} RTT", labels[1]), format!("{:.3} ms", r[1].median)),
        ],
        plots: vec![
            (
                "p6-throughput.svg".into(),
                crate::svg::strips(
                    "P6: iperf3 TCP between two containers (higher is better)",
                    "Gbit/s",
                    &strips(0),
                ),
            ),
            (
                "p6-cpu.svg".into(),
                crate::svg::strips(
                    "P6: the machine's CPU time per GB moved, both ends (lower is better)",
                    "CPU seconds per GB",
                    &strips(1),
                ),
            ),
            (
                "p6-rtt.svg".into(),
                crate::svg::strips(
                    "P6: ping round trip (lower is better)",
                    "milliseconds (mean of each round)",
                    &strips(2),
                ),
            ),
        ],
        sentences: vec![
            format!(
                "Goal: CPU per GB ≤ 0.8× the bridge's. {:.3} vs {:.3} CPU seconds per GB: {cpu_ratio:.2}×, {how3}.",
                c[0].median, c[1].median
            ),
            format!(
                "Goal: throughput ≥ 1.0× the bridge. {:.2} vs {:.2} Gbit/s: {tp_ratio:.2}×, {how1}.",
                t[0].median, t[1].median
            ),
            format!(
                "Goal: RTT ≤ the bridge's. {:.3} vs {:.3} ms: {how2}.",
                r[0].median, r[1].median
            ),
        ],
        notes: Value::Null,
    }
}
