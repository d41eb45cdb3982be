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

/// iperf3 from a client container to the server, in Gbit/s.
fn throughput(b: &Bench, net: &str, server_ip: &str, seconds: u32) -> f64 {
    let out = docker_ok(&[
        "run",
        "--rm",
        "--net",
        net,
        &b.perf_image,
        "iperf3",
        "-c",
        server_ip,
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e9
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
    let (rounds, seconds, pings) = if b.smoke { (1, 1, 20) } else { (3, 10, 100) };
    let nets = [
        ("bench-p6", "rustvlan macvlan bridge"),
        ("bridge", "docker0 bridge (veth)"),
    ];
    let mut servers = Vec::new();
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
        servers.push((net, container_ip(&s, net), pid(&c), s, c));
    }
    let mut gbits: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut rtts: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for _ in 0..rounds {
        for (i, (net, ip, _, _, _)) in servers.iter().enumerate() {
            gbits[i].push(throughput(b, net, ip, seconds));
        }
        for (i, (_, ip, client, _, _)) in servers.iter().enumerate() {
            rtts[i].push(rtt(client, ip, pings));
        }
    }
    for (_, _, _, s, c) in &servers {
        let _ = docker(&["rm", "-f", s, c]);
    }
    docker_ok(&["network", "rm", "bench-p6"]);
    plugin.stop();

    let (t0, t1) = (summary(&gbits[0]), summary(&gbits[1]));
    let (r0, r1) = (summary(&rtts[0]), summary(&rtts[1]));
    let tp_ratio = t0.median / t1.median;
    let (met1, how1) = verdict(tp_ratio, 1.0, false);
    let (met2, how2) = verdict(r0.median, r1.median, true);
    let labels: Vec<String> = nets.iter().map(|(_, l)| l.to_string()).collect();
    Section {
        id: "p6".into(),
        title: "P6 data plane".into(),
        results: json!({
            "iperf3_gbit_s": {labels[0].clone(): t0.json(), labels[1].clone(): t1.json()},
            "ping_rtt_ms": {labels[0].clone(): r0.json(), labels[1].clone(): r1.json()},
            "throughput_ratio": round(tp_ratio),
            "goals": {"throughput >= 1.0x bridge": met1, "rtt <= bridge": met2},
            "rounds": rounds, "seconds": seconds, "pings": pings,
        }),
        table: vec![
            (format!("{} throughput", labels[0]), format!("{:.2} Gbit/s", t0.median)),
            (format!("{} throughput", labels[1]), format!("{:.2} Gbit/s", t1.median)),
            (format!("{} RTT", labels[0]), format!("{:.3} ms", r0.median)),
            (format!("{} RTT", labels[1]), format!("{:.3} ms", r1.median)),
        ],
        plots: vec![
            (
                "p6-throughput.svg".into(),
                crate::svg::strips(
                    "P6: iperf3 TCP between two containers (higher is better)",
                    "Gbit/s",
                    &[
                        (labels[0].clone(), gbits[0].clone()),
                        (labels[1].clone(), gbits[1].clone()),
                    ],
                ),
            ),
            (
                "p6-rtt.svg".into(),
                crate::svg::strips(
                    "P6: ping round trip (lower is better)",
                    "milliseconds (mean of each round)",
                    &[
                        (labels[0].clone(), rtts[0].clone()),
                        (labels[1].clone(), rtts[1].clone()),
                    ],
                ),
            ),
        ],
        sentences: vec![
            format!(
                "Goal: throughput ≥ 1.0× the bridge. {:.2} vs {:.2} Gbit/s: {tp_ratio:.2}×, {how1}.",
                t0.median, t1.median
            ),
            format!(
                "Goal: RTT ≤ the bridge's. {:.3} vs {:.3} ms: {how2}.",
                r0.median, r1.median
            ),
        ],
        notes: Value::Null,
    }
}
