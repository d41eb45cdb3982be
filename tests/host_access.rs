//! `-o host_access=on` against the real kernel: the host (the namespace rustvlan runs
//! in) reaches its macvlan containers through the shim, containers reach the host's own
//! address, the LAN sees one ARP answer for the host's address, and restarts and the
//! last network's removal leave the shim and its routes right.
//!
//! Three namespaces per test: the host (rustvlan, parent veth `ha0` with the host's own
//! address), the LAN (the veth's far end, a peer on the wire) and a container (the
//! endpoint's link moved in, configured as dockerd would from Join's answer).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Netns, Server, TempDir, require_root};
use serde_json::{Value, json};

const HOST_IP: &str = "10.62.0.2";
const LAN_IP: &str = "10.62.0.1";
const SUBNET: &str = "10.62.0.0/24";

fn net_id(n: u32) -> String {
    format!("{n:04}{}", "a".repeat(60))
}

fn ep_id(n: u32) -> String {
    format!("{n:04}{}", "b".repeat(60))
}

struct Lan {
    host: Netns,
    lan: Netns,
    _dir: TempDir,
    server: Server,
}

/// The host with parent `ha0` (10.62.0.2/24) whose far end `hap` (10.62.0.1/24) is in
/// the LAN namespace, and rustvlan running in the host.
fn lan() -> Option<Lan> {
    if !require_root() {
        return None;
    }
    let host = Netns::new();
    let lan = Netns::new();
    host.veth("ha0", "hap");
    host.ip(&["link", "set", "hap", "netns", &lan.name]);
    lan.ip(&["link", "set", "hap", "up"]);
    lan.ip(&["addr", "add", &format!("{LAN_IP}/24"), "dev", "hap"]);
    host.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "ha0"]);
    let dir = TempDir::new();
    let server = Server::start(Some(&host), dir.path());
    Some(Lan {
        host,
        lan,
        _dir: dir,
        server,
    })
}

/// A pool from rustvlan's IPAM with the LAN's router as gateway, as dockerd asks for it.
fn pool(s: &Server) -> String {
    let answer = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": SUBNET, "SubPool": "", "Options": {}, "V6": false}),
    );
    let id = answer["PoolID"].as_str().unwrap().to_string();
    s.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": LAN_IP, "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    id
}

fn create_network(s: &Server, id: &str, generic: Value) -> (u16, Value) {
    s.post(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": id,
               "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": SUBNET, "Gateway": format!("{LAN_IP}/24")}],
               "Options": {"com.docker.network.generic": generic}}),
    )
}

/// A container at `ip`: CreateEndpoint, Join, the link moved into a namespace of its
/// own and set up as dockerd does (address, gateway, Join's static routes).
fn container(s: &Server, host: &Netns, net: &str, ep: &str, ip: &str) -> (Netns, Value) {
    s.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": format!("{ip}/24"), "MacAddress": ""}}),
    );
    let ns = Netns::new();
    let answer = s.ok(
        "/NetworkDriver.Join",
        json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": ns.path()}),
    );
    let link = answer["InterfaceName"]["SrcName"].as_str().unwrap();
    host.ip(&["link", "set", link, "netns", &ns.name]);
    ns.ip(&["link", "set", link, "name", "eth0"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    if let Some(gw) = answer["Gateway"].as_str() {
        ns.ip(&["route", "add", "default", "via", gw]);
    }
    for route in answer["StaticRoutes"].as_array().into_iter().flatten() {
        assert_eq!(route["RouteType"], 0, "{answer}");
        ns.ip(&[
            "route",
            "add",
            route["Destination"].as_str().unwrap(),
            "via",
            route["NextHop"].as_str().unwrap(),
        ]);
    }
    (ns, answer)
}

fn pings(ns: &Netns, ip: &str) -> bool {
    ns.exec(&["ping", "-c", "1", "-W", "1", ip]).status.success()
}

/// Waits for a ping to work: the first one may wait for ARP.
fn reaches(ns: &Netns, ip: &str) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if pings(ns, ip) {
            return true;
        }
    }
    false
}

/// A TCP server in `ns` on port 7000 that answers "hello".
fn tcp_server(ns: &Netns) -> Child {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "busybox",
            "nc",
            "-l",
            "-p",
            "7000",
            "-e",
            "/bin/echo",
            "hello",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("busybox nc");
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn tcp_reply(ns: &Netns, ip: &str) -> String {
    let out = ns.exec(&["busybox", "nc", "-w", "3", ip, "7000"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Routes with rustvlan's protocol, as `ip route` shows them.
fn host_routes(ns: &Netns) -> Vec<String> {
    ns.ip(&["route", "show", "proto", "250"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

fn shims(ns: &Netns) -> Vec<String> {
    ns.link_names().into_iter().filter(|n| n.starts_with("rvh")).collect()
}

/// How many ARP replies the LAN gets for `ip`.
fn arp_replies(lan: &Netns, ip: &str) -> usize {
    let out = lan.exec(&["busybox", "arping", "-c", "2", "-w", "3", "-I", "hap", ip]);
    let text = String::from_utf8_lossy(&out.stdout);
    let replies: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| l.split('[').nth(1).and_then(|m| m.split(']').next()))
        .collect();
    replies.len()
}

#[test]
fn host_reaches_its_containers_through_the_shim_and_nothing_is_left_after() {
    let Some(Lan {
        host,
        lan,
        _dir,
        mut server,
    }) = lan()
    else {
        return;
    };
    let s = &server;
    pool(s);
    let net = net_id(1);
    let (status, answer) = create_network(s, &net, json!({"parent": "ha0", "host_access": "on"}));
    assert_eq!(status, 200, "{answer}");
    let state = s.state();
    let access = state.networks[&net].host_access.clone().expect("host access recorded");
    assert_eq!(
        access.address.to_string(),
        "10.62.0.254/24",
        "the highest free address of the pool"
    );
    let shim = shims(&host);
    assert_eq!(shim.len(), 1, "one shim: {shim:?}");
    let shim = &shim[0];
    let link = host.link_json(shim);
    assert_eq!(link["linkinfo"]["info_kind"], "macvlan", "{link}");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "bridge", "{link}");
    let conf = |key: &str| {
        let out = host.exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{shim}/{key}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!((conf("arp_ignore"), conf("arp_announce")), ("1".into(), "2".into()));
    let parent_conf = host.exec(&["cat", "/proc/sys/net/ipv4/conf/ha0/arp_ignore"]);
    assert_eq!(
        String::from_utf8_lossy(&parent_conf.stdout).trim(),
        "1",
        "the parent answers ARP for its own addresses only"
    );
    assert_eq!(
        arp_replies(&lan, "10.62.0.254"),
        1,
        "one MAC, the shim's, answers for S"
    );

    let ep = ep_id(1);
    let (ctr, answer) = container(s, &host, &net, &ep, "10.62.0.10");
    assert_eq!(
        answer["StaticRoutes"],
        json!([{"Destination": format!("{HOST_IP}/32"), "RouteType": 0, "NextHop": "10.62.0.254"}])
    );
    assert_eq!(
        host_routes(&host),
        vec![format!("10.62.0.10 dev {shim} scope link src 10.62.0.254")]
    );
    assert!(reaches(&host, "10.62.0.10"), "host pings the container");
    let mut server_proc = tcp_server(&ctr);
    assert_eq!(
        tcp_reply(&host, "10.62.0.10"),
        "hello",
        "host opens TCP to the container"
    );
    let _ = server_proc.kill();
    let _ = server_proc.wait();
    assert!(
        reaches(&ctr, HOST_IP),
        "the container reaches the host's parent address"
    );
    assert!(reaches(&ctr, LAN_IP), "and the LAN");
    assert_eq!(arp_replies(&lan, HOST_IP), 1, "one MAC answers for the host's address");

    // A crash: the route and the shim vanish, and an orphan route appears, while
    // rustvlan is down; start-up puts them right.
    server.kill9();
    host.ip(&["route", "del", "10.62.0.10/32", "dev", shim]);
    host.ip(&["route", "add", "10.62.0.99/32", "dev", shim, "proto", "250"]);
    server.restart();
    assert_eq!(
        host_routes(&host),
        vec![format!("10.62.0.10 dev {shim} scope link src 10.62.0.254")],
        "the missing route is back and the orphan is gone"
    );
    server.kill9();
    host.ip(&["link", "del", shim]);
    server.restart();
    assert_eq!(shims(&host), vec![shim.clone()], "the shim is made again");
    assert!(
        reaches(&host, "10.62.0.10"),
        "host reaches the container after restarts"
    );
    assert!(reaches(&ctr, HOST_IP), "and the container the host");
    let s = &server;
    let text = s.state_text();
    assert!(!text.contains("orphan"), "{text}");

    // Leave takes the route; the last network's removal takes the shim.
    s.ok("/NetworkDriver.Leave", json!({"NetworkID": net, "EndpointID": ep}));
    assert_eq!(host_routes(&host), Vec::<String>::new());
    s.ok(
        "/NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": net, "EndpointID": ep}),
    );
    s.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    assert_eq!(shims(&host), Vec::<String>::new(), "no shim after the last network");
    assert_eq!(
        host_routes(&host),
        Vec::<String>::new(),
        "no route after the last network"
    );
}

#[test]
fn without_host_access_the_host_cannot_reach_its_containers() {
    let Some(Lan {
        host,
        lan,
        _dir,
        server,
    }) = lan()
    else {
        return;
    };
    let s = &server;
    pool(s);
    let net = net_id(2);
    let (status, answer) = create_network(s, &net, json!({"parent": "ha0"}));
    assert_eq!(status, 200, "{answer}");
    let (ctr, answer) = container(s, &host, &net, &ep_id(2), "10.62.0.11");
    assert_eq!(answer.get("StaticRoutes"), None, "{answer}");
    assert!(shims(&host).is_empty());
    assert!(reaches(&ctr, LAN_IP), "the container reaches the LAN");
    assert!(!pings(&host, "10.62.0.11"), "the host cannot reach its container");
    assert!(!pings(&ctr, HOST_IP), "nor the container the host");
    assert_eq!(arp_replies(&lan, HOST_IP), 1);
}

#[test]
fn networks_on_one_parent_share_the_shim_until_the_last_goes() {
    let Some(Lan {
        host,
        lan: _lan,
        _dir,
        server,
    }) = lan()
    else {
        return;
    };
    let s = &server;
    // Two subnets on one parent; the second network gives its host address itself.
    pool(s);
    let second = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "10.63.0.0/24", "SubPool": "", "Options": {}, "V6": false}),
    );
    let (a, b) = (net_id(3), net_id(4));
    assert_eq!(
        create_network(s, &a, json!({"parent": "ha0", "host_access": "on"})).0,
        200
    );
    let (status, answer) = s.post(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": b, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "10.63.0.0/24"}],
               "Options": {"com.docker.network.generic": {"parent": "ha0", "host_access": "on", "host_access_ip": "10.63.0.5"}}}),
    );
    assert_eq!(status, 200, "{answer}");
    let shim = shims(&host);
    assert_eq!(shim.len(), 1, "{shim:?}");
    let addresses = host.ip(&["-4", "-o", "addr", "show", "dev", &shim[0]]);
    assert!(
        addresses.contains("10.62.0.254/32") && addresses.contains("10.63.0.5/32"),
        "{addresses}"
    );
    // The reservation shows in the pool: the same address cannot go to a container.
    let (status, answer) = s.post(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": second["PoolID"], "Address": "10.63.0.5", "Options": {}}),
    );
    assert_ne!(status, 200, "{answer}");

    s.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": a}));
    assert_eq!(shims(&host), shim, "the other network still uses the shim");
    let addresses = host.ip(&["-4", "-o", "addr", "show", "dev", &shim[0]]);
    assert!(
        !addresses.contains("10.62.0.254") && addresses.contains("10.63.0.5/32"),
        "{addresses}"
    );
    s.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": b}));
    assert!(shims(&host).is_empty());
}

#[test]
fn host_access_is_refused_where_it_cannot_work_and_nothing_is_made() {
    let Some(Lan {
        host,
        lan: _lan,
        _dir,
        server,
    }) = lan()
    else {
        return;
    };
    let s = &server;
    pool(s);
    for (n, generic, expect) in [
        (
            5,
            json!({"parent": "ha0", "host_access": "on", "macvlan_mode": "private"}),
            "macvlan private mode never passes frames",
        ),
        (
            6,
            json!({"parent": "ha0", "host_access": "on", "macvlan_mode": "vepa"}),
            "use macvlan_mode=bridge",
        ),
        (
            7,
            json!({"parent": "ha0", "host_access": "on", "ipvlan_mode": "l3"}),
            "use ipvlan_mode=l2",
        ),
        (8, json!({"host_access": "on"}), "the network has no parent"),
        (9, json!({"parent": "ha0", "host_access": "maybe"}), "is not on or off"),
        (
            10,
            json!({"parent": "ha0", "host_access_ip": "10.62.0.9"}),
            "add -o host_access=on",
        ),
        (
            11,
            json!({"parent": "ha0", "host_access": "on", "host_access_ip": "10.99.0.9"}),
            "outside the network's IPv4 subnets",
        ),
        (
            12,
            json!({"parent": "ha0", "host_access": "on", "host_access_ip": LAN_IP}),
            "already in use",
        ),
    ] {
        let (status, answer) = create_network(s, &net_id(n), generic.clone());
        let err = answer["Err"].as_str().unwrap_or_default();
        assert_ne!(status, 200, "{generic}: {answer}");
        assert!(err.contains(expect), "{generic}: {err}");
    }
    let mut options = serde_json::Map::new();
    options.insert("com.docker.network.internal".into(), json!(true));
    options.insert(
        "com.docker.network.generic".into(),
        json!({"parent": "ha0", "host_access": "on"}),
    );
    let (status, answer) = s.post(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": net_id(13), "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": SUBNET}],
               "Options": options}),
    );
    assert_ne!(status, 200);
    assert!(answer["Err"].as_str().unwrap().contains("--internal"), "{answer}");
    assert!(shims(&host).is_empty(), "nothing made");
    assert!(host_routes(&host).is_empty());
    assert!(s.state().networks.is_empty());
}
