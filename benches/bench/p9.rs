//! P9: DHCP leases. The time from rustvlan-dhcp's RequestAddress to its answer (a whole
//! DISCOVER/OFFER/REQUEST/ACK on the parent), against the floor: busybox `udhcpc`
//! getting a lease in a namespace of its own, on a macvlan of the same parent, from the
//! same server (Debian's dnsmasq in a LAN namespace, `--no-ping`). Each sample uses a
//! new MAC, so every one is a new lease. Then 50 RequestAddress at once: their total time.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::Veth;
use crate::env::{Conn, Netns, Plugin, ip, ms};
use crate::stats::{round, summary, verdict};
use crate::{Bench, Section};

const CONCURRENT: usize = 50;

fn mac(tag: u8, n: usize) -> String {
    format!("02:59:{tag:02x}:00:{:02x}:{:02x}", n / 256, n % 256)
}

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(b: &Bench) -> Section {
    let samples = if b.smoke { 5 } else { 40 };
    let dir = b.scratch("p9");
    // The parent `p9` in this namespace; its far end in the LAN, where dnsmasq serves.
    let parent = Veth::new("p9");
    let lan = Netns::new("rvp9lan");
    ip(&["link", "set", "p9p", "netns", &lan.0]);
    ip(&["-n", &lan.0, "addr", "add", "10.159.0.1/16", "dev", "p9p"]);
    ip(&["-n", &lan.0, "link", "set", "p9p", "up"]);
    let _dnsmasq = Dnsmasq(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lan.0,
                "dnsmasq",
                "--no-daemon",
                "--port=0",
                "--interface=p9p",
            ])
            .args(["--bind-interfaces", "--no-ping", "--no-resolv", "--conf-file=/dev/null"])
            .args([
                "--dhcp-range=10.159.1.0,10.159.255.254,255.255.0.0,1h",
                "--dhcp-lease-max=60000",
            ])
            .arg("--dhcp-option=option:router,10.159.0.1")
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian's dnsmasq-base)"),
    );
    std::thread::sleep(Duration::from_millis(300));

    // The floor: udhcpc in a client namespace, on a macvlan of the parent.
    let client = Netns::new("rvp9cli");
    ip(&[
        "link", "add", "link", &parent.0, "name", "p9c", "type", "macvlan", "mode", "bridge",
    ]);
    ip(&["link", "set", "p9c", "netns", &client.0]);
    let mut floor = Vec::new();
    for n in 0..samples {
        ip(&["-n", &client.0, "link", "set", "p9c", "down"]);
        ip(&["-n", &client.0, "link", "set", "p9c", "address", &mac(1, n)]);
        ip(&["-n", &client.0, "link", "set", "p9c", "up"]);
        let t = Instant::now();
        let out = Command::new("ip")
            .args([
                "netns", "exec", &client.0, "busybox", "udhcpc", "-i", "p9c", "-n", "-q", "-f",
            ])
            .args(["-s", "/bin/true", "-t", "5", "-T", "1"])
            .output()
            .unwrap();
        let took = t.elapsed();
        assert!(out.status.success(), "udhcpc: {}", String::from_utf8_lossy(&out.stderr));
        floor.push(ms(took));
    }

    // rustvlan-dhcp, driven as dockerd drives it.
    let mut plugin = Plugin::new(&b.rustvlan, &dir.join("rustvlan.sock"), &dir);
    plugin.start();
    let dhcp_socket = dir.join("rustvlan-dhcp.sock");
    let mut ipam = Conn::connect(&dhcp_socket).await;
    let pool = ipam
        .ok(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "", "V6": false}),
        )
        .await;
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    Conn::connect(&plugin.socket)
        .await
        .ok(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": format!("{:064}", 9), "IPv4Data": [{"AddressSpace": "rustvlan-local",
                   "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}],
                   "Options": {"com.docker.network.generic": {"parent": parent.0}}}),
        )
        .await;
    let request = |n: usize| {
        json!({"PoolID": pool_id, "Address": "",
               "Options": {"com.docker.network.endpoint.macaddress": mac(2, n)}})
    };
    let mut rustvlan = Vec::new();
    for n in 0..samples {
        let t = Instant::now();
        ipam.ok("/IpamDriver.RequestAddress", request(n)).await;
        rustvlan.push(ms(t.elapsed()));
    }
    // 50 at once, each on a connection of its own, as dockerd starting 50 containers.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in samples..samples + CONCURRENT {
        let (socket, body) = (dhcp_socket.clone(), request(n));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await;
            let t = Instant::now();
            let (status, answer) = conn.call("/IpamDriver.RequestAddress", body.to_string()).await;
            (status, answer, ms(t.elapsed()))
        }));
    }
    let mut concurrent = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (status, _answer, took) = t.await.unwrap();
        if status == 200 {
            concurrent.push(took);
        } else {
            failures += 1;
        }
    }
    let total = started.elapsed();
    plugin.stop();

    let (s_rv, s_floor, s_conc) = (summary(&rustvlan), summary(&floor), summary(&concurrent));
    let ratio = s_rv.median / s_floor.median;
    let (met, how) = verdict(ratio, 1.1, true);
    let plot = crate::svg::strips(
        "P9: one DHCP lease, request to answer (ms)",
        "milliseconds",
        &[
            ("rustvlan-dhcp RequestAddress".into(), rustvlan.clone()),
            ("busybox udhcpc (floor)".into(), floor.clone()),
            (format!("rustvlan-dhcp, {CONCURRENT} at once"), concurrent.clone()),
        ],
    );
    Section {
        id: "p9".into(),
        title: "P9 DHCP leases".into(),
        results: json!({
            "samples": samples,
            "rustvlan_ms": s_rv.json(),
            "udhcpc_ms": s_floor.json(),
            "rustvlan_over_udhcpc_p50": round(ratio),
            "concurrent": {"leases": CONCURRENT, "failures": failures, "total_ms": round(ms(total)), "latency_ms": s_conc.json()},
            "goals": {"p50 <= 1.1 x udhcpc": met},
        }),
        table: vec![
            (
                "rustvlan-dhcp RequestAddress".into(),
                format!("p50 {:.2} ms, p99 {:.2} ms", s_rv.median, s_rv.p99),
            ),
            (
                "busybox udhcpc (floor)".into(),
                format!("p50 {:.2} ms, p99 {:.2} ms", s_floor.median, s_floor.p99),
            ),
            ("rustvlan / udhcpc".into(), format!("{ratio:.3}")),
            (
                format!("{CONCURRENT} leases at once"),
                format!(
                    "{:.0} ms in all, {failures} failures, p50 {:.1} ms each",
                    ms(total),
                    s_conc.median
                ),
            ),
        ],
        plots: vec![("p9-lease.svg".into(), plot)],
        sentences: vec![
            format!(
                "Goal: a lease through rustvlan-dhcp ≤ 1.1× busybox udhcpc's against the same dnsmasq. p50 {:.2} ms \
                 against {:.2} ms, ratio {ratio:.3}, {how}.",
                s_rv.median, s_floor.median
            ),
            format!(
                "{CONCURRENT} leases requested at once took {:.0} ms in all, with {failures} failures.",
                ms(total)
            ),
        ],
        notes: Value::String(
            "udhcpc's time includes starting the process (busybox, through `ip netns exec`); rustvlan's includes the \
             HTTP call on its socket and the fsync of the lease record."
                .into(),
        ),
    }
}
