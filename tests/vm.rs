//! Real-kernel tests for what this machine's kernel cannot do: ipvlan, 802.1Q, 802.1ad
//! (QinQ) and dummy links. They run inside the VM rig, which boots a stock Debian kernel:
//!
//!   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/vm-test.sh --" cargo test --test vm
//!
//! (`scripts/test.sh` does this.) Each test makes namespaces inside the guest: one where
//! rustvlan runs (the "host" of the containers) and one per container, and moves each
//! Join's link into its container namespace the way dockerd does.

mod common;

use common::{Netns, Server, TempDir, check, mark_ran, report};
use serde_json::{Value, json};
use std::process::Command;

/// These tests only mean something on a kernel with ipvlan, 802.1Q and dummy; outside
/// the rig they refuse to pretend.
fn require_vm() {
    assert!(
        std::env::var_os("IN_VMTEST").is_some(),
        "tests/vm.rs runs inside the VM rig: scripts/vm-test.sh (see the file's header)"
    );
}

/// A plugin in its own namespace, with helpers to play dockerd.
struct Rig {
    host: Netns,
    _dir: TempDir,
    server: Server,
    containers: Vec<Netns>,
}

fn id(tag: &str, n: u32) -> String {
    let mut s = format!("{tag}{n:04}");
    while s.len() < 64 {
        s.push('0');
    }
    s
}

impl Rig {
    fn new() -> Rig {
        let host = Netns::new();
        let dir = TempDir::new();
        let server = Server::start(Some(&host), dir.path());
        Rig {
            host,
            _dir: dir,
            server,
            containers: Vec::new(),
        }
    }

    fn create_network(&self, net: &str, generic: Value, subnet: &str, gateway: &str, internal: bool) -> (u16, Value) {
        let mut options = json!({"com.docker.network.generic": generic});
        if internal {
            options["com.docker.network.internal"] = json!(true);
        }
        self.server.post(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": net, "Options": options,
                   "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": subnet, "Gateway": gateway}]}),
        )
    }

    fn network(&self, net: &str, generic: Value, subnet: &str, gateway: &str) {
        let (status, answer) = self.create_network(net, generic, subnet, gateway, false);
        assert_eq!(status, 200, "CreateNetwork: {answer}");
    }

    /// CreateEndpoint + Join, then what dockerd does: move the link into a fresh
    /// namespace as eth0, address it, bring it up, add the gateway or routes Join gave.
    /// Returns the container namespace's index in `self.containers` and Join's answer.
    fn container(&mut self, net: &str, ep: &str, cidr: &str) -> (usize, Value) {
        self.server.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": cidr, "MacAddress": ""}}),
        );
        let joined = self.server.ok(
            "/NetworkDriver.Join",
            json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/x"}),
        );
        let link = joined["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
        let ns = Netns::new();
        self.host.ip(&["link", "set", &link, "netns", &ns.name]);
        ns.ip(&["link", "set", &link, "name", "eth0"]);
        ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        if let Some(gw) = joined["Gateway"].as_str() {
            ns.ip(&["route", "add", "default", "via", gw, "dev", "eth0"]);
        }
        for route in joined["StaticRoutes"].as_array().into_iter().flatten() {
            let destination = route["Destination"].as_str().unwrap();
            match route["RouteType"].as_u64() {
                // Connected (ipvlan l3/l3s), or through a next hop (host access).
                Some(1) => ns.ip(&["route", "add", destination, "dev", "eth0"]),
                Some(0) => ns.ip(&["route", "add", destination, "via", route["NextHop"].as_str().unwrap()]),
                _ => panic!("unknown route type: {route}"),
            };
        }
        self.containers.push(ns);
        (self.containers.len() - 1, joined)
    }

    /// What dockerd does on container stop: move eth0 back under its host name, then
    /// Leave and DeleteEndpoint.
    fn stop(&mut self, net: &str, ep: &str, index: usize) {
        let link = format!("rv{}", &ep[..12]);
        let ns = &self.containers[index];
        ns.ip(&["link", "set", "eth0", "down"]);
        ns.ip(&["link", "set", "eth0", "name", &link]);
        ns.ip(&["link", "set", &link, "netns", &self.host.name]);
        self.server
            .ok("/NetworkDriver.Leave", json!({"NetworkID": net, "EndpointID": ep}));
        self.server.ok(
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": net, "EndpointID": ep}),
        );
        self.server.settle();
        assert!(!self.host.has_link(&link), "DeleteEndpoint removed {link}");
    }

    fn pings(&self, from: usize, ip: &str) -> bool {
        self.containers[from]
            .exec(&["ping", "-c", "1", "-W", "2", ip])
            .status
            .success()
    }
}

#[test]
fn ipvlan_modes_and_flags() {
    require_vm();
    let mut rig = Rig::new();
    let mut n = 0;
    for mode in ["l2", "l3", "l3s"] {
        for flag in ["bridge", "private", "vepa"] {
            n += 1;
            let parent = format!("ip{n}");
            rig.host.veth(&parent, &format!("ip{n}p"));
            let net = id("a", n);
            let subnet = format!("10.30.{n}.0/24");
            rig.network(
                &net,
                json!({"parent": parent, "ipvlan_mode": mode, "ipvlan_flag": flag}),
                &subnet,
                &format!("10.30.{n}.1/24"),
            );
            let (ep1, ep2) = (id("b", n), id("c", n));
            let (c1, joined) = rig.container(&net, &ep1, &format!("10.30.{n}.2/24"));
            // Check the link in the container namespace: kind, mode and flag.
            let link = rig.containers[c1].link_json("eth0");
            assert_eq!(link["linkinfo"]["info_kind"], "ipvlan", "{mode} {flag}");
            assert_eq!(link["linkinfo"]["info_data"]["mode"], mode, "{mode} {flag}: {link}");
            // iproute2 shows the flag as `"private": true` or `"vepa": true`, bridge as neither.
            let data = &link["linkinfo"]["info_data"];
            let shown = ["private", "vepa"]
                .into_iter()
                .find(|f| data[*f] == json!(true))
                .unwrap_or("bridge");
            assert_eq!(shown, flag, "{mode} {flag}: {link}");
            if mode == "l2" {
                assert_eq!(joined["Gateway"], format!("10.30.{n}.1"), "{mode}: gateway");
                assert!(joined.get("StaticRoutes").is_none());
            } else {
                assert!(joined.get("Gateway").is_none(), "{mode}: no gateway");
                assert_eq!(
                    joined["StaticRoutes"],
                    json!([{"Destination": "0.0.0.0/0", "RouteType": 1}]),
                    "{mode}: a CONNECTED default route"
                );
            }
            let (c2, _) = rig.container(&net, &ep2, &format!("10.30.{n}.3/24"));
            let reached = rig.pings(c1, &format!("10.30.{n}.3"));
            let expected = flag == "bridge";
            assert_eq!(reached, expected, "ipvlan {mode} {flag}: ping between two children");
            report(&format!(
                "ipvlan {mode:3} {flag:7}: link ok, ping {}",
                if reached { "passes" } else { "blocked as expected" }
            ));
            rig.stop(&net, &ep1, c1);
            rig.stop(&net, &ep2, c2);
            rig.server.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
            assert!(rig.host.has_link(&parent), "a parent rustvlan did not make stays");
        }
    }
    mark_ran("RUSTVLAN_VM_MARKER", "ipvlan_modes_and_flags");
}

#[test]
fn ipvlan_children_get_distinct_ipv6_link_local_addresses() {
    require_vm();
    let mut rig = Rig::new();
    rig.host.veth("ip6", "ip6p");
    let net = id("d", 1);
    rig.network(
        &net,
        json!({"parent": "ip6", "ipvlan_mode": "l2"}),
        "10.31.0.0/24",
        "10.31.0.1/24",
    );
    let mut link_locals = Vec::new();
    for n in 0..3 {
        let (c, _) = rig.container(&net, &id("e", n), &format!("10.31.0.{}/24", n + 2));
        let ns = &rig.containers[c];
        // IPv6 on, as dockerd leaves it for an endpoint with an IPv6 address.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"]);
        let mut address = String::new();
        for _ in 0..50 {
            let out = ns.ip(&["-6", "-j", "addr", "show", "dev", "eth0", "scope", "link"]);
            let v: Value = serde_json::from_str(&out).unwrap();
            if let Some(a) = v[0]["addr_info"][0]["local"].as_str() {
                address = a.to_string();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!address.is_empty(), "no IPv6 link-local address on child {n}");
        link_locals.push(address);
    }
    let parent_mac = rig.host.link_json("ip6")["address"].as_str().unwrap().to_string();
    report(&format!(
        "ipvlan children share MAC {parent_mac}; link-local addresses {link_locals:?}"
    ));
    let mut unique = link_locals.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        link_locals.len(),
        "duplicate link-local addresses: {link_locals:?}"
    );
    mark_ran(
        "RUSTVLAN_VM_MARKER",
        "ipvlan_children_get_distinct_ipv6_link_local_addresses",
    );
}

#[test]
fn vlan_parents_tag_frames_and_come_and_go_with_their_networks() {
    require_vm();
    let mut rig = Rig::new();
    // X in rustvlan's namespace, Y at the far end of the wire.
    let far = Netns::new();
    rig.host.ip(&[
        "link", "add", "vx", "type", "veth", "peer", "name", "vy", "netns", &far.name,
    ]);
    rig.host.ip(&["link", "set", "vx", "up"]);
    far.ip(&["link", "set", "vy", "up"]);
    let net = id("f", 1);
    rig.network(&net, json!({"parent": "vx.10"}), "10.32.0.0/24", "10.32.0.1/24");
    let vlan = rig.host.link_json("vx.10");
    assert_eq!(vlan["linkinfo"]["info_kind"], "vlan");
    assert_eq!(vlan["linkinfo"]["info_data"]["id"], 10);
    assert_eq!(vlan["link"], "vx");
    assert!(
        vlan["flags"].as_array().unwrap().contains(&json!("UP")),
        "made up: {vlan}"
    );

    // A macvlan on vx.10 reaches a peer on vy.10...
    let (c, _) = rig.container(&net, &id("g", 1), "10.32.0.2/24");
    // scripts/test.sh runs this test once more with the far end on a wrong VLAN id, to
    // show that the suite fails when frames do not carry the id they must.
    let far_id = match std::env::var("RUSTVLAN_VM_SABOTAGE").as_deref() {
        Ok("wrong-vlan-id") => "11",
        _ => "10",
    };
    far.ip(&[
        "link", "add", "link", "vy", "name", "vy.10", "type", "vlan", "id", far_id,
    ]);
    far.ip(&["addr", "add", "10.32.0.3/24", "dev", "vy.10"]);
    far.ip(&["link", "set", "vy.10", "up"]);
    assert!(rig.pings(c, "10.32.0.3"), "VLAN 10 to VLAN 10");
    // ...and not the same address on VLAN 20: the frames really carry id 10.
    far.ip(&["link", "del", "vy.10"]);
    far.ip(&["link", "add", "link", "vy", "name", "vy.20", "type", "vlan", "id", "20"]);
    far.ip(&["addr", "add", "10.32.0.3/24", "dev", "vy.20"]);
    far.ip(&["link", "set", "vy.20", "up"]);
    assert!(!rig.pings(c, "10.32.0.3"), "VLAN 10 must not reach VLAN 20");

    // -o vlan=10 on vx is the same parent; it stays while one network uses it.
    let net2 = id("f", 2);
    rig.network(
        &net2,
        json!({"parent": "vx", "vlan": "10"}),
        "10.33.0.0/24",
        "10.33.0.1/24",
    );
    rig.stop(&net, &id("g", 1), c);
    rig.server.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    assert!(rig.host.has_link("vx.10"), "still used by the second network");

    // Start-up re-makes a parent rustvlan made that went missing (a host reboot).
    rig.server.kill9();
    rig.host.ip(&["link", "del", "vx.10"]);
    rig.server.restart();
    let vlan = rig.host.link_json("vx.10");
    assert_eq!(vlan["linkinfo"]["info_data"]["id"], 10, "re-made at start-up");
    assert!(rig.server.log_text().contains("parents_recreated=[\"vx.10\"]"));

    rig.server
        .ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net2}));
    assert!(
        !rig.host.has_link("vx.10"),
        "made by rustvlan, removed with its last network"
    );
    assert!(rig.host.has_link("vx"));

    // A VLAN rustvlan did not make is used but never removed.
    rig.host
        .ip(&["link", "add", "link", "vx", "name", "vx.30", "type", "vlan", "id", "30"]);
    let net3 = id("f", 3);
    rig.network(&net3, json!({"parent": "vx.30"}), "10.34.0.0/24", "10.34.0.1/24");
    rig.server
        .ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net3}));
    assert!(rig.host.has_link("vx.30"));
    assert!(rig.server.state().parents.is_empty());
    mark_ran(
        "RUSTVLAN_VM_MARKER",
        "vlan_parents_tag_frames_and_come_and_go_with_their_networks",
    );
}

#[test]
fn internal_networks_live_on_their_own_dummy_parent() {
    require_vm();
    let mut rig = Rig::new();
    for (n, kind) in [(1, json!({})), (2, json!({"ipvlan_mode": "l2"}))] {
        let net = id("h", n);
        let (status, answer) = rig.create_network(
            &net,
            kind.clone(),
            &format!("10.35.{n}.0/24"),
            &format!("10.35.{n}.1/24"),
            true,
        );
        assert_eq!(status, 200, "{answer}");
        let prefix = if n == 1 { "dm-" } else { "di-" };
        let dummy = format!("{prefix}{}", &net[..12]);
        let link = rig.host.link_json(&dummy);
        assert_eq!(link["linkinfo"]["info_kind"], "dummy");
        let (c1, joined) = rig.container(&net, &id("i", n), &format!("10.35.{n}.2/24"));
        assert!(joined.get("Gateway").is_none(), "internal: no gateway");
        let (c2, _) = rig.container(&net, &id("j", n), &format!("10.35.{n}.3/24"));
        assert!(
            rig.pings(c1, &format!("10.35.{n}.3")),
            "{kind}: containers of an internal network reach each other"
        );
        rig.stop(&net, &id("i", n), c1);
        rig.stop(&net, &id("j", n), c2);
        rig.server.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
        assert!(!rig.host.has_link(&dummy), "dummy parent removed with its network");
    }
    mark_ran("RUSTVLAN_VM_MARKER", "internal_networks_live_on_their_own_dummy_parent");
}

#[test]
fn parent_conflicts_on_a_real_kernel() {
    require_vm();
    let mut rig = Rig::new();
    rig.host.veth("pm", "pmp");
    rig.network(&id("k", 1), json!({"parent": "pm"}), "10.36.0.0/24", "10.36.0.1/24");
    let (c, _) = rig.container(&id("k", 1), &id("l", 1), "10.36.0.2/24");
    let _ = c;
    let (status, err) = rig.create_network(
        &id("k", 2),
        json!({"parent": "pm", "ipvlan_mode": "l2"}),
        "10.37.0.0/24",
        "10.37.0.1/24",
        false,
    );
    assert_eq!(status, 409);
    assert_eq!(
        err["Err"],
        "parent pm already carries macvlan network k00010000000; macvlan and ipvlan networks cannot share a parent (the kernel refuses it)"
    );
    // And the kernel indeed refuses it, as rustvlan said.
    let raw = rig
        .host
        .try_ip(&["link", "add", "link", "pm", "name", "probe", "type", "ipvlan"]);
    assert!(!raw.status.success(), "the kernel accepted ipvlan beside macvlan");

    // Two ipvlan networks on one parent with different subnets both work.
    rig.host.veth("pi", "pip");
    rig.network(
        &id("m", 1),
        json!({"parent": "pi", "ipvlan_mode": "l2"}),
        "10.38.0.0/24",
        "10.38.0.1/24",
    );
    rig.network(
        &id("m", 2),
        json!({"parent": "pi", "ipvlan_mode": "l3"}),
        "10.39.0.0/24",
        "10.39.0.1/24",
    );
    let (a1, _) = rig.container(&id("m", 1), &id("n", 1), "10.38.0.2/24");
    rig.container(&id("m", 1), &id("n", 2), "10.38.0.3/24");
    let (b1, _) = rig.container(&id("m", 2), &id("n", 3), "10.39.0.2/24");
    rig.container(&id("m", 2), &id("n", 4), "10.39.0.3/24");
    assert!(rig.pings(a1, "10.38.0.3"), "first ipvlan network");
    assert!(rig.pings(b1, "10.39.0.3"), "second ipvlan network");
    mark_ran("RUSTVLAN_VM_MARKER", "parent_conflicts_on_a_real_kernel");
}

#[test]
fn the_rig_runs_a_stock_kernel() {
    require_vm();
    let release = check(Command::new("uname").arg("-r"));
    report(&format!("guest kernel {}", release.trim()));
    let modules = std::fs::read_to_string("/proc/modules").unwrap();
    for m in ["ipvlan", "8021q", "dummy", "macvlan"] {
        assert!(
            modules.lines().any(|l| l.starts_with(&format!("{m} "))),
            "{m} not loaded"
        );
    }
    mark_ran("RUSTVLAN_VM_MARKER", "the_rig_runs_a_stock_kernel");
}

/// A veth `a` in the rig's host namespace whose far end `b` is in a namespace of its own.
fn wire(rig: &Rig, a: &str, b: &str) -> Netns {
    let far = Netns::new();
    rig.host
        .ip(&["link", "add", a, "type", "veth", "peer", "name", b, "netns", &far.name]);
    rig.host.ip(&["link", "set", a, "up"]);
    far.ip(&["link", "set", b, "up"]);
    far
}

/// On the far end: `outer` (with `proto`) on `dev`, VLAN 10 inside it, at 10.36.0.3/24.
fn far_qinq(far: &Netns, dev: &str, proto: &str, outer: &str) -> String {
    let outer_name = format!("{dev}.{outer}");
    let inner_name = format!("{outer_name}.10");
    far.ip(&[
        "link",
        "add",
        "link",
        dev,
        "name",
        &outer_name,
        "type",
        "vlan",
        "proto",
        proto,
        "id",
        outer,
    ]);
    far.ip(&[
        "link",
        "add",
        "link",
        &outer_name,
        "name",
        &inner_name,
        "type",
        "vlan",
        "id",
        "10",
    ]);
    far.ip(&["addr", "add", "10.36.0.3/24", "dev", &inner_name]);
    far.ip(&["link", "set", &outer_name, "up"]);
    far.ip(&["link", "set", &inner_name, "up"]);
    outer_name
}

#[test]
fn qinq_parents_carry_both_tags_and_the_outer_link_goes_with_its_last_network() {
    require_vm();
    let mut rig = Rig::new();
    let far = wire(&rig, "qx", "qy");
    let net = id("q", 1);
    rig.network(&net, json!({"parent": "qx.100.10"}), "10.36.0.0/24", "10.36.0.1/24");
    let outer = rig.host.link_json("qx.100");
    assert_eq!(outer["linkinfo"]["info_data"]["protocol"], "802.1ad", "{outer}");
    assert_eq!(outer["linkinfo"]["info_data"]["id"], 100);
    assert_eq!(outer["link"], "qx");
    let inner = rig.host.link_json("qx.100.10");
    assert_eq!(inner["linkinfo"]["info_data"]["protocol"], "802.1Q", "{inner}");
    assert_eq!(inner["linkinfo"]["info_data"]["id"], 10);
    assert_eq!(inner["link"], "qx.100");

    let (c, _) = rig.container(&net, &id("r", 1), "10.36.0.2/24");
    // A peer with the same stacked VLANs (802.1ad 100, then 802.1Q 10) answers...
    let outer_far = far_qinq(&far, "qy", "802.1ad", "100");
    assert!(rig.pings(c, "10.36.0.3"), "QinQ 100.10 to QinQ 100.10");
    // ...one with the wrong outer tag gets nothing...
    far.ip(&["link", "del", &outer_far]);
    let outer_far = far_qinq(&far, "qy", "802.1ad", "200");
    assert!(!rig.pings(c, "10.36.0.3"), "outer tag 100 must not reach outer tag 200");
    // ...nor one whose outer tag is 802.1Q: the frames carry an 802.1ad S-tag.
    far.ip(&["link", "del", &outer_far]);
    far_qinq(&far, "qy", "802.1Q", "100");
    assert!(
        !rig.pings(c, "10.36.0.3"),
        "an 802.1ad outer tag must not reach an 802.1Q one"
    );

    // -o parent=qx -o vlan=100.20 makes another inner VLAN on the same outer one.
    let net2 = id("q", 2);
    rig.network(
        &net2,
        json!({"parent": "qx", "vlan": "100.20"}),
        "10.38.0.0/24",
        "10.38.0.1/24",
    );
    assert_eq!(rig.host.link_json("qx.100.20")["link"], "qx.100");
    rig.stop(&net, &id("r", 1), c);
    rig.server.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    assert!(!rig.host.has_link("qx.100.10"), "the inner VLAN goes with its network");
    assert!(
        rig.host.has_link("qx.100"),
        "the outer one stays while another inner one uses it"
    );

    // A reboot: start-up re-makes the outer VLAN, then the inner one.
    rig.server.kill9();
    rig.host.ip(&["link", "del", "qx.100"]);
    rig.server.restart();
    assert_eq!(
        rig.host.link_json("qx.100")["linkinfo"]["info_data"]["protocol"],
        "802.1ad"
    );
    assert_eq!(rig.host.link_json("qx.100.20")["link"], "qx.100");

    rig.server
        .ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net2}));
    assert!(
        !rig.host.has_link("qx.100"),
        "the outer VLAN goes with the last network on it"
    );
    assert!(rig.server.state().parents.is_empty());

    // One 802.1ad tag.
    let net3 = id("q", 3);
    rig.network(
        &net3,
        json!({"parent": "qx.300", "vlan_protocol": "802.1ad"}),
        "10.39.0.0/24",
        "10.39.0.1/24",
    );
    assert_eq!(
        rig.host.link_json("qx.300")["linkinfo"]["info_data"]["protocol"],
        "802.1ad"
    );
    rig.server
        .ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net3}));
    assert!(!rig.host.has_link("qx.300"));

    // Names over 15 bytes get short ones, shown by status with the long name.
    let _far2 = wire(&rig, "qinqlongnic0", "qinqlongnic1");
    let net4 = id("q", 4);
    rig.network(
        &net4,
        json!({"parent": "qinqlongnic0.100.10"}),
        "10.40.0.0/24",
        "10.40.0.1/24",
    );
    let state = rig.server.state();
    let inner = state.networks[&net4].parent.clone();
    assert!(inner.starts_with("v100.10-") && inner.len() <= 15, "{inner}");
    let outer = rig.host.link_json(&inner)["link"].as_str().unwrap().to_string();
    assert!(outer.starts_with("v100-"), "{outer}");
    assert_eq!(rig.host.link_json(&outer)["link"], "qinqlongnic0");
    let out = rig
        .server
        .command()
        .arg("status")
        .arg("--socket")
        .arg(&rig.server.socket)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("(for qinqlongnic0.100.10)"), "{status}");
    rig.server
        .ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net4}));
    assert!(!rig.host.has_link(&inner) && !rig.host.has_link(&outer));
    mark_ran(
        "RUSTVLAN_VM_MARKER",
        "qinq_parents_carry_both_tags_and_the_outer_link_goes_with_its_last_network",
    );
}

#[test]
fn ipvlan_l2_host_access_reaches_containers_both_ways() {
    require_vm();
    let mut rig = Rig::new();
    let far = wire(&rig, "hx", "hy");
    rig.host.ip(&["addr", "add", "10.37.0.2/24", "dev", "hx"]);
    far.ip(&["addr", "add", "10.37.0.1/24", "dev", "hy"]);
    let net = id("h", 1);
    let (status, answer) = rig.server.post(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": net,
               "Options": {"com.docker.network.generic": {"parent": "hx", "ipvlan_mode": "l2", "host_access": "on"}},
               "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "10.37.0.0/24", "Gateway": "10.37.0.1/24",
                             "AuxAddresses": {"host": "10.37.0.250/24"}}]}),
    );
    assert_eq!(status, 200, "{answer}");
    let shim = rig
        .host
        .link_names()
        .into_iter()
        .find(|n| n.starts_with("rvh"))
        .expect("a shim");
    assert_eq!(rig.host.link_json(&shim)["linkinfo"]["info_kind"], "ipvlan");
    let (c, joined) = rig.container(&net, &id("i", 1), "10.37.0.10/24");
    assert_eq!(
        joined["StaticRoutes"],
        json!([{"Destination": "10.37.0.2/32", "RouteType": 0, "NextHop": "10.37.0.250"}])
    );
    let host_pings = || {
        rig.host
            .exec(&["ping", "-c", "1", "-W", "2", "10.37.0.10"])
            .status
            .success()
    };
    assert!(host_pings(), "the host pings its ipvlan container");
    assert!(
        rig.pings(c, "10.37.0.2"),
        "the container reaches the host's address on the parent"
    );
    assert!(rig.pings(c, "10.37.0.1"), "and the LAN");
    rig.stop(&net, &id("i", 1), c);
    rig.server.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    assert!(!rig.host.has_link(&shim), "the shim goes with the last network");
    assert_eq!(rig.host.ip(&["route", "show", "proto", "250"]).trim(), "");
    mark_ran(
        "RUSTVLAN_VM_MARKER",
        "ipvlan_l2_host_access_reaches_containers_both_ways",
    );
}

#[test]
fn ipvlan_l2_endpoints_get_leases_with_client_ids_of_their_own() {
    require_vm();
    let rig = Rig::new();
    let far = wire(&rig, "vdx", "vdy");
    far.ip(&["addr", "add", "10.41.0.1/24", "dev", "vdy"]);
    let dir = TempDir::new();
    let leases = dir.path().join("leases");
    let mut dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &far.name,
            "dnsmasq",
            "--no-daemon",
            "--port=0",
            "--interface=vdy",
        ])
        .args(["--bind-interfaces", "--no-ping", "--no-resolv", "--conf-file=/dev/null"])
        .args([
            "--dhcp-range=10.41.0.50,10.41.0.150,255.255.255.0,2m",
            "--dhcp-option=option:router,10.41.0.1",
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .spawn()
        .expect("dnsmasq");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dhcp_socket = rig.server.socket.with_file_name("rustvlan-dhcp.sock");
    let ipam = |method: &str, body: Value| -> Value {
        let (status, bytes) = runtime
            .block_on(rustvlan::client::post(
                &dhcp_socket,
                &format!("/{method}"),
                body.to_string(),
            ))
            .unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, 200, "{method}: {answer}");
        answer
    };
    let pool = ipam(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    let net = id("l", 1);
    rig.server.ok(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": net, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}],
               "Options": {"com.docker.network.generic": {"parent": "vdx", "ipvlan_mode": "l2"}}}),
    );
    let parent_mac = rig.host.link_json("vdx")["address"].as_str().unwrap().to_string();
    let mut addresses = Vec::new();
    for n in 1..=2u32 {
        let mac = format!("02:42:0a:29:00:{n:02x}");
        let answer = ipam(
            "IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "", "Options": {"com.docker.network.endpoint.macaddress": mac}}),
        );
        let address = answer["Address"].as_str().unwrap().to_string();
        // dockerd sends the MAC it made to CreateEndpoint too; ipvlan keeps the parent's.
        rig.server.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": net, "EndpointID": id("m", n), "Interface": {"Address": address, "MacAddress": mac}}),
        );
        addresses.push(address);
    }
    assert_ne!(addresses[0], addresses[1], "two endpoints, two leases");
    let text = std::fs::read_to_string(&leases).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for l in &lines {
        assert_eq!(l[1], parent_mac, "chaddr is the parent's MAC: {text}");
    }
    assert_ne!(lines[0][4], lines[1][4], "distinct client-ids: {text}");

    // The containers, their links moved in with the leased addresses, reach each other
    // and the LAN through the lease's router.
    let mut ns = Vec::new();
    for (n, address) in addresses.iter().enumerate() {
        let ep = id("m", n as u32 + 1);
        let joined = rig.server.ok(
            "/NetworkDriver.Join",
            json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/x"}),
        );
        assert_eq!(joined["Gateway"], "10.41.0.1", "{joined}");
        let link = joined["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
        let c = Netns::new();
        rig.host.ip(&["link", "set", &link, "netns", &c.name]);
        c.ip(&["addr", "add", address, "dev", &link]);
        c.ip(&["link", "set", &link, "up"]);
        ns.push(c);
    }
    let ip1 = addresses[1].split('/').next().unwrap();
    assert!(ns[0].exec(&["ping", "-c", "1", "-W", "2", ip1]).status.success());
    assert!(
        ns[1]
            .exec(&["ping", "-c", "1", "-W", "2", "10.41.0.1"])
            .status
            .success()
    );
    drop(ns);
    for address in &addresses {
        ipam(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": pool_id, "Address": address}),
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let text = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(text.trim().is_empty(), "both released: {text}");
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    mark_ran(
        "RUSTVLAN_VM_MARKER",
        "ipvlan_l2_endpoints_get_leases_with_client_ids_of_their_own",
    );
}
