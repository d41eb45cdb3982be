//! SIGKILL the plugin with networks, endpoints and addresses in place, start it again on
//! the same store: everything is still there and allocation carries on without duplicates.

mod common;

use common::{Netns, Server, TempDir, require_root};
use rustvlan::dump::{AddressUse, LinkPlace};
use serde_json::json;

const NET: &str = "5e1f0c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

fn endpoint_id(n: u32) -> String {
    format!("{n:02}{}", "ab".repeat(31))
}

/// Records only: the kernel section differs between a live and an offline read.
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
    assert!(offline.kernel.is_none() && offline.unbound_addresses.is_none());
    assert_eq!(offline.records(), before.records());

    s.restart();
    let after = s.state();
    assert_eq!(after.records(), before.records(), "every record survives SIGKILL");
    assert_eq!(after.link_place(&endpoint_id(2)), Some(LinkPlace::HostNamespace));
    let uses: Vec<(String, AddressUse)> = after.pools[&pool_id]
        .addresses
        .iter()
        .map(|(ip, used)| (ip.to_string(), *used))
        .collect();
    assert_eq!(
        uses,
        [
            ("10.60.0.1", AddressUse::Gateway),
            ("10.60.0.2", AddressUse::Allocated),
            ("10.60.0.3", AddressUse::Allocated),
            ("10.60.0.4", AddressUse::Allocated)
        ]
        .map(|(ip, used)| (ip.to_string(), used))
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
    let link = s.state().endpoints[&endpoint_id(2)].link_name.clone();
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
    assert!(end.holds_nothing(), "records left behind: {end:?}");
}
