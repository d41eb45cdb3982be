//! The kernel side against the real kernel: links made by the real binary in a network
//! namespace the test makes, checked with iproute2.

mod common;

use common::{Netns, Server, TempDir, require_root};
use rustvlan::dump::LinkPlace;
use serde_json::{Value, json};

fn net_id(n: u32) -> String {
    format!("{n:04}{}", "c".repeat(60))
}

fn ep_id(n: u32) -> String {
    format!("{n:04}{}", "d".repeat(60))
}

fn link_name(ep: &str) -> String {
    format!("rv{}", &ep[..12])
}

fn create_network(s: &Server, id: &str, generic: Value, subnet: &str) {
    s.ok(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": id, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": subnet}],
               "Options": {"com.docker.network.generic": generic}}),
    );
}

fn endpoint(s: &Server, net: &str, ep: &str, address: &str) -> Value {
    s.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": address, "MacAddress": ""}}),
    )
}

fn join(s: &Server, net: &str, ep: &str) -> (u16, Value) {
    s.post(
        "/NetworkDriver.Join",
        json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/x"}),
    )
}

fn setup() -> Option<(Netns, TempDir, Server)> {
    if !require_root() {
        return None;
    }
    let ns = Netns::new();
    let dir = TempDir::new();
    let server = Server::start(Some(&ns), dir.path());
    Some((ns, dir, server))
}

#[test]
fn macvlan_in_each_mode_has_its_mode_and_mac_and_is_deleted() {
    let Some((ns, _dir, s)) = setup() else { return };
    for (n, mode) in ["bridge", "private", "vepa", "passthru"].into_iter().enumerate() {
        let n = n as u32;
        let parent = format!("vm{n}");
        ns.veth(&parent, &format!("vm{n}p"));
        let (net, ep) = (net_id(n), ep_id(n));
        create_network(
            &s,
            &net,
            json!({"parent": parent, "macvlan_mode": mode}),
            &format!("10.40.{n}.0/24"),
        );
        let created = endpoint(&s, &net, &ep, &format!("10.40.{n}.2/24"));
        let (status, joined) = join(&s, &net, &ep);
        assert_eq!(status, 200, "{mode}: {joined}");
        let link = ns.link_json(&link_name(&ep));
        assert_eq!(link["linkinfo"]["info_kind"], "macvlan", "{mode}");
        assert_eq!(link["linkinfo"]["info_data"]["mode"], mode, "{mode}: {link}");
        assert_eq!(link["link"], parent, "{mode}: child of its parent");
        if mode == "passthru" {
            assert_eq!(created, json!({}), "passthru keeps the parent's MAC: none is answered");
            assert_eq!(link["address"], ns.link_json(&parent)["address"]);
        } else {
            assert_eq!(
                link["address"], created["Interface"]["MacAddress"],
                "{mode}: the answered MAC is the link's"
            );
        }
        s.ok(
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": net, "EndpointID": ep}),
        );
        s.settle();
        assert!(!ns.has_link(&link_name(&ep)), "{mode}: deleted with its endpoint");
    }
}

#[test]
fn mtu_option_reaches_the_link() {
    let Some((ns, _dir, s)) = setup() else { return };
    ns.veth("vm0", "vm0p");
    let (net, ep) = (net_id(10), ep_id(10));
    create_network(&s, &net, json!({"parent": "vm0", "mtu": "1400"}), "10.41.0.0/24");
    endpoint(&s, &net, &ep, "10.41.0.2/24");
    assert_eq!(join(&s, &net, &ep).0, 200);
    assert_eq!(ns.link_json(&link_name(&ep))["mtu"], 1400);
}

#[test]
fn a_failed_join_leaves_no_link() {
    let Some((ns, _dir, s)) = setup() else { return };
    ns.veth("vm0", "vm0p");
    let (net, ep) = (net_id(20), ep_id(20));
    create_network(&s, &net, json!({"parent": "vm0", "mtu": "1500"}), "10.42.0.0/24");
    endpoint(&s, &net, &ep, "10.42.0.2/24");
    let before = ns.link_names();

    // The kernel refuses: the parent's MTU fell below the network's after it was made.
    ns.ip(&["link", "set", "vm0", "mtu", "1400"]);
    let (status, err) = join(&s, &net, &ep);
    assert_eq!(status, 500);
    assert!(
        err["Err"].as_str().unwrap().contains("is mtu 1500 above the parent's?"),
        "{err}"
    );
    assert_eq!(ns.link_names(), before, "nothing left behind");
    ns.ip(&["link", "set", "vm0", "mtu", "1500"]);

    // The name is taken by a link rustvlan did not make: refused, and that link kept.
    ns.ip(&["link", "add", "link", "vm0", "name", &link_name(&ep), "type", "macvlan"]);
    let (status, err) = join(&s, &net, &ep);
    assert_eq!(status, 409);
    assert_eq!(
        err,
        json!({"Err": format!("interface name {} is taken by a link rustvlan did not make; remove that link", link_name(&ep))})
    );
    assert!(ns.has_link(&link_name(&ep)));
    ns.ip(&["link", "del", &link_name(&ep)]);

    // The parent disappeared: a clear error, no link.
    ns.ip(&["link", "del", "vm0"]);
    let (status, err) = join(&s, &net, &ep);
    assert_eq!(status, 500);
    assert_eq!(
        err,
        json!({"Err": format!("parent interface vm0 of network {} is missing", &net[..12])})
    );
    assert!(!ns.has_link(&link_name(&ep)));
}

#[test]
fn reconcile_deletes_an_orphan_and_only_an_orphan() {
    let Some((ns, _dir, mut s)) = setup() else { return };
    ns.veth("vm0", "vm0p");
    let net = net_id(30);
    create_network(&s, &net, json!({"parent": "vm0"}), "10.43.0.0/24");
    let (kept, vanished) = (ep_id(30), ep_id(31));
    for ep in [&kept, &vanished] {
        endpoint(&s, &net, ep, "");
        assert_eq!(join(&s, &net, ep).0, 200);
    }
    // The vanished endpoint's link dies (as with a killed container).
    ns.ip(&["link", "del", &link_name(&vanished)]);
    let group = s.state().link_group.to_string();
    // An orphan: rustvlan's mark, no record (a crash between link and record).
    ns.ip(&[
        "link",
        "add",
        "link",
        "vm0",
        "name",
        "rvorphan000001",
        "group",
        &group,
        "type",
        "macvlan",
    ]);
    // Not rustvlan's, though named like its links.
    ns.ip(&[
        "link",
        "add",
        "link",
        "vm0",
        "name",
        "rvforeign00001",
        "type",
        "macvlan",
    ]);

    s.kill9();
    s.restart();
    assert!(!ns.has_link("rvorphan000001"), "the orphan is deleted");
    assert!(ns.has_link("rvforeign00001"), "a link rustvlan did not make is kept");
    assert!(ns.has_link(&link_name(&kept)), "an owned link is kept");
    assert!(ns.has_link("vm0"));
    let log = s.log_text();
    assert!(log.contains("orphan_links_deleted=[\"rvorphan000001\"]"), "{log}");

    let state = s.state();
    assert!(
        state.endpoints.contains_key(&vanished),
        "its container may still run: kept"
    );
    assert_eq!(state.link_place(&vanished), Some(LinkPlace::Elsewhere));
    assert_eq!(state.link_place(&kept), Some(LinkPlace::HostNamespace));
}
