//! End to end with a real dockerd: rustvlan runs as a legacy plugin on
//! /run/docker/plugins/rustvlan.sock in the host namespace (dockerd moves links from
//! there), the parent is one end of a veth pair the test makes, and containers from a
//! busybox image ping each other over it. scripts/test.sh starts the dockerd
//! (DOCKER_HOST) and builds the image (RUSTVLAN_TEST_IMAGE).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use common::docker::{Scene, docker_ok, host_links, ipv4_of, mac_of, pings, remove_network, require_dockerd};
use common::{Server, TempDir, mark_ran};
use serde_json::json;

const SOCKET: &str = "/run/docker/plugins/rustvlan.sock";
/// The tests share the host namespace and the plugin socket: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn start_plugin(dir: &TempDir) -> Server {
    Server::start_at(None, dir.path(), Path::new(SOCKET))
}

#[test]
fn containers_get_addresses_and_ping_over_macvlan() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require_dockerd() {
        return;
    }
    let dir = TempDir::new();
    let plugin = start_plugin(&dir);
    let links_before = host_links();
    let mut scene = Scene::new("a");
    scene.network(
        "rvnet-a",
        &[
            "--subnet",
            "10.88.0.0/24",
            "--gateway",
            "10.88.0.1",
            "-o",
            &format!("parent={}", scene.veth),
        ],
    );
    let c1 = scene.run("rv-e2e-a1", "rvnet-a", &[]);
    let c2 = scene.run("rv-e2e-a2", "rvnet-a", &[]);
    let (ip1, ip2) = (ipv4_of(&c1), ipv4_of(&c2));
    assert_ne!(ip1, ip2, "distinct addresses");
    assert!(ip1.starts_with("10.88.0.") && ip1.ends_with("/24"), "{ip1}");
    assert!(pings(&c1, &ip2), "{c1} cannot ping {c2} over macvlan bridge");
    assert!(pings(&c2, &ip1), "{c2} cannot ping {c1} over macvlan bridge");
    let route = docker_ok(&["exec", &c1, "ip", "route"]);
    assert!(route.contains("default via 10.88.0.1 dev eth0"), "{route}");

    // --ip and --mac-address land on the container.
    let c3 = scene.run(
        "rv-e2e-a3",
        "rvnet-a",
        &["--ip", "10.88.0.50", "--mac-address", "02:11:22:33:44:55"],
    );
    assert_eq!(ipv4_of(&c3), "10.88.0.50/24");
    assert_eq!(mac_of(&c3), "02:11:22:33:44:55");
    assert!(pings(&c3, &ip1));

    let state = plugin.state();
    assert_eq!(state["endpoints"].as_object().unwrap().len(), 3);
    scene.rm_containers();
    plugin.settle();
    assert_eq!(
        host_links(),
        links_before
            .iter()
            .cloned()
            .chain([scene.veth.clone(), format!("{}p", scene.veth)])
            .collect(),
        "docker rm -f leaves no link behind"
    );
    assert_eq!(plugin.state()["endpoints"], json!({}));

    remove_network("rvnet-a");
    scene.networks.clear();
    let state = plugin.state();
    for key in ["networks", "endpoints", "pools", "parents"] {
        assert_eq!(state[key], json!({}), "docker network rm left {key}: {state}");
    }
    mark_ran("RUSTVLAN_E2E_MARKER", "containers_get_addresses_and_ping_over_macvlan");
}

#[test]
fn running_containers_survive_a_plugin_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require_dockerd() {
        return;
    }
    let dir = TempDir::new();
    let mut plugin = start_plugin(&dir);
    let links_before = host_links();
    let mut scene = Scene::new("b");
    scene.network(
        "rvnet-b",
        &["--subnet", "10.89.0.0/24", "-o", &format!("parent={}", scene.veth)],
    );
    let c1 = scene.run("rv-e2e-b1", "rvnet-b", &[]);
    let c2 = scene.run("rv-e2e-b2", "rvnet-b", &[]);
    let (ip1, ip2) = (ipv4_of(&c1), ipv4_of(&c2));

    plugin.kill9();
    plugin.restart();
    assert!(pings(&c1, &ip2) && pings(&c2, &ip1), "running containers keep pinging");
    let c3 = scene.run("rv-e2e-b3", "rvnet-b", &[]);
    let ip3 = ipv4_of(&c3);
    assert!(ip3 != ip1 && ip3 != ip2, "{ip3} is fresh");
    assert!(pings(&c3, &ip1));

    scene.rm_containers();
    plugin.settle();
    let expected: BTreeSet<String> = links_before
        .iter()
        .cloned()
        .chain([scene.veth.clone(), format!("{}p", scene.veth)])
        .collect();
    assert_eq!(host_links(), expected, "removal after the restart leaves no link");
    remove_network("rvnet-b");
    scene.networks.clear();
    let state = plugin.state();
    for key in ["networks", "endpoints", "pools"] {
        assert_eq!(state[key], json!({}), "{key} left behind");
    }
    mark_ran("RUSTVLAN_E2E_MARKER", "running_containers_survive_a_plugin_restart");
}

#[test]
fn docker_option_names_keep_the_built_in_behaviour() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require_dockerd() {
        return;
    }
    let dir = TempDir::new();
    let _plugin = start_plugin(&dir);
    let mut scene = Scene::new("c");
    let parent = format!("parent={}", scene.veth);
    scene.network(
        "rvnet-priv",
        &["--subnet", "10.90.0.0/24", "-o", &parent, "-o", "macvlan_mode=private"],
    );
    let p1 = scene.run("rv-e2e-c1", "rvnet-priv", &[]);
    let p2 = scene.run("rv-e2e-c2", "rvnet-priv", &[]);
    assert!(
        !pings(&p1, &ipv4_of(&p2)),
        "private-mode macvlans must not reach each other"
    );
    assert!(!pings(&p2, &ipv4_of(&p1)));
    // The same pair in bridge mode on another network (and parent) does reach.
    let mut scene2 = Scene::new("d");
    scene2.network(
        "rvnet-bridge",
        &[
            "--subnet",
            "10.91.0.0/24",
            "-o",
            &format!("parent={}", scene2.veth),
            "-o",
            "macvlan_mode=bridge",
        ],
    );
    let b1 = scene2.run("rv-e2e-d1", "rvnet-bridge", &[]);
    let b2 = scene2.run("rv-e2e-d2", "rvnet-bridge", &[]);
    assert!(pings(&b1, &ipv4_of(&b2)), "bridge mode is the control: it must ping");
    mark_ran("RUSTVLAN_E2E_MARKER", "docker_option_names_keep_the_built_in_behaviour");
}
