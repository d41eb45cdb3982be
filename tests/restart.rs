//! SIGKILL the plugin with networks, endpoints and addresses in place, start it again on
//! the same store: everything is still there and allocation carries on without duplicates.

mod common;

use common::{Netns, Server, TempDir, require_root};
use serde_json::{Value, json};

const NET: &str = "5e1f0c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

fn endpoint_id(n: u32) -> String {
    format!("{n:02}{}", "ab".repeat(31))
}

/// Records only: the kernel section differs between a live and an offline read.
fn records(state: &Value) -> Value {
    let mut s = state.clone();
    s.as_object_mut().unwrap().remove("kernel");
    s.as_object_mut().unwrap().remove("unbound_addresses");
    s
}

#[test]
fn sigkill_and_restart_keep_everything() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    ns.veth("vp0", "vp0peer");
    let dir = TempDir::new();
    let mut s = Server::start(Some(&ns), dir.path());

    let pool = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "10.60.0.0/24", "SubPool": "", "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    s.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    s.ok(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "10.60.0.0/24", "Gateway": "10.60.0.1/24"}],
               "Options": {"com.docker.network.generic": {"parent": "vp0"}}}),
    );
    let mut macs = Vec::new();
    for n in 2..=4u32 {
        let address = s.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool_id, "Address": "", "Options": null}),
        );
        assert_eq!(address["Address"], format!("10.60.0.{n}/24"));
        let created = s.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NET, "EndpointID": endpoint_id(n), "Interface": {"Address": format!("10.60.0.{n}/24"), "MacAddress": ""}}),
        );
        macs.push(created["Interface"]["MacAddress"].clone());
    }
    s.ok(
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": endpoint_id(2), "SandboxKey": "/x"}),
    );
    let before = s.state();

    s.kill9();
    // With nothing serving, `rustvlan state` reads the store itself: same records.
    let offline = s.state();
    assert!(offline.get("kernel").is_none() && offline.get("unbound_addresses").is_none());
    assert_eq!(records(&offline), records(&before));

    s.restart();
    let after = s.state();
    assert_eq!(records(&after), records(&before), "every record survives SIGKILL");
    assert_eq!(after["kernel"]["endpoint_links"][endpoint_id(2)], "in host namespace");
    assert_eq!(
        after["pools"][&pool_id]["addresses"],
        json!({"10.60.0.1": "gateway", "10.60.0.2": "allocated", "10.60.0.3": "allocated", "10.60.0.4": "allocated"})
    );

    // Allocation continues after the last address, with no duplicate.
    let next = s.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": null}),
    );
    assert_eq!(next["Address"], "10.60.0.5/24");
    s.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": "10.60.0.3"}),
    );
    let next = s.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": null}),
    );
    assert_eq!(
        next["Address"], "10.60.0.6/24",
        "a released address is not handed straight back"
    );
    // A repeated CreateEndpoint after the restart still answers the MAC chosen before it.
    let again = s.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": endpoint_id(3), "Interface": {"Address": "10.60.0.3/24", "MacAddress": ""}}),
    );
    assert_eq!(again["Interface"]["MacAddress"], macs[1]);

    // The link made before the crash is found and removed after it.
    let link = s.state()["endpoints"][endpoint_id(2)]["link_name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ns.has_link(&link));
    s.ok(
        "/NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": NET, "EndpointID": endpoint_id(2)}),
    );
    s.settle();
    assert!(!ns.has_link(&link));
    for n in [3, 4] {
        s.ok(
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": NET, "EndpointID": endpoint_id(n)}),
        );
    }
    s.ok("/IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    s.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET}));
    let end = s.state();
    for key in ["networks", "endpoints", "pools", "parents"] {
        assert_eq!(end[key], json!({}), "{key} left behind");
    }
}
