//! The exact call sequences dockerd 20.10 sends (recorded with a stand-in plugin), played
//! against the real binary over its socket, with every answer asserted.

mod common;

use std::collections::BTreeMap;

use std::time::Duration;

use common::{Netns, Server, TempDir, require_root};
use rustvlan::dump::AddressUse;
use serde_json::{Value, json};

const NET: &str = "94b384ba5b0e4c1bb5ed4d1a2bd9cdf5e7bb8b2a5c6b9d2e3f4a5b6c7d8e9f00";
const EP1: &str = "1dc6aa7b0e5f42a6b6e1c1b7f0c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b83d";
const EP2: &str = "2ee7bb8c1f6053b7c7f2d2c8a1d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c4e";
const NO_OPTIONS: &str = r#"{"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}"#;

fn setup() -> Option<(Netns, TempDir, Server)> {
    if !require_root() {
        return None;
    }
    let ns = Netns::new();
    ns.veth("vp0", "vp0peer");
    let dir = TempDir::new();
    let server = Server::start(Some(&ns), dir.path());
    Some((ns, dir, server))
}

#[test]
fn network_create_run_and_rm_as_dockerd_sends_them() {
    let Some((ns, _dir, s)) = setup() else { return };

    // dockerd's first contact: empty bodies, no Content-Type.
    assert_eq!(
        s.post_raw("/Plugin.Activate", ""),
        (200, json!({"Implements": ["NetworkDriver", "IpamDriver"]}))
    );
    assert_eq!(
        s.post_raw("/NetworkDriver.GetCapabilities", ""),
        (
            200,
            json!({"Scope": "local", "ConnectivityScope": "global", "GwAllocChecker": true})
        )
    );
    assert_eq!(
        s.post_raw("/IpamDriver.GetCapabilities", ""),
        (
            200,
            json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
        )
    );
    assert_eq!(
        s.post_raw("/IpamDriver.GetDefaultAddressSpaces", ""),
        (
            200,
            json!({"LocalDefaultAddressSpace": "rustvlan-local", "GlobalDefaultAddressSpace": "rustvlan-global"})
        )
    );

    // docker network create --subnet 10.77.1.0/24 --gateway 10.77.1.1 --ip-range 10.77.1.128/25
    //   --aux-address host1=10.77.1.5 --ipam-opt com.example.ipamfoo=ipambar --ipv6 --subnet fd00:77::/64 -o parent=vp0 -o mode=bridge n2
    let pool = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Options": {"com.example.ipamfoo": "ipambar"}, "Pool": "10.77.1.0/24", "SubPool": "10.77.1.128/25", "V6": false}),
    );
    assert_eq!(
        pool,
        json!({"PoolID": "rustvlan-local/10.77.1.0/24#1", "Pool": "10.77.1.0/24", "Data": {}})
    );
    let pool_id = "rustvlan-local/10.77.1.0/24#1";
    assert_eq!(
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"Address": "10.77.1.1", "Options": {"RequestAddressType": "com.docker.network.gateway"}, "PoolID": pool_id})
        ),
        json!({"Address": "10.77.1.1/24", "Data": {}})
    );
    assert_eq!(
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"Address": "10.77.1.5", "Options": null, "PoolID": pool_id})
        ),
        json!({"Address": "10.77.1.5/24", "Data": {}})
    );
    let pool6 = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Options": {}, "Pool": "fd00:77::/64", "SubPool": "", "V6": true}),
    );
    assert_eq!(
        pool6,
        json!({"PoolID": "rustvlan-local/fd00:77::/64#2", "Pool": "fd00:77::/64", "Data": {}})
    );
    let pool6_id = "rustvlan-local/fd00:77::/64#2";
    // No --gateway for v6: the IPAM picks the first usable address.
    assert_eq!(
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}, "PoolID": pool6_id})
        ),
        json!({"Address": "fd00:77::1/64", "Data": {}})
    );
    assert_eq!(
        s.ok(
            "/NetworkDriver.CreateNetwork",
            json!({
                "IPv4Data": [{"AddressSpace": "rustvlan-local", "AuxAddresses": {"host1": "10.77.1.5/24"}, "Gateway": "10.77.1.1/24", "Pool": "10.77.1.0/24"}],
                "IPv6Data": [{"AddressSpace": "rustvlan-local", "Gateway": "fd00:77::1/64", "Pool": "fd00:77::/64"}],
                "NetworkID": NET,
                "Options": {"com.docker.network.enable_ipv6": true, "com.docker.network.generic": {"mode": "bridge", "parent": "vp0"}}
            })
        ),
        json!({})
    );

    // docker run --net n2 (no --ip): address from the ip-range, MAC chosen by rustvlan.
    assert_eq!(
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"Address": "", "Options": null, "PoolID": pool_id})
        ),
        json!({"Address": "10.77.1.128/24", "Data": {}})
    );
    assert_eq!(
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"Address": "", "Options": null, "PoolID": pool6_id})
        ),
        json!({"Address": "fd00:77::2/64", "Data": {}})
    );
    let created = s.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"EndpointID": EP1, "Interface": {"Address": "10.77.1.128/24", "AddressIPv6": "fd00:77::2/64", "MacAddress": ""},
               "NetworkID": NET, "Options": serde_json::from_str::<Value>(NO_OPTIONS).unwrap()}),
    );
    let mac = created["Interface"]["MacAddress"]
        .as_str()
        .expect("a MAC is answered")
        .to_string();
    assert_eq!(
        created,
        json!({"Interface": {"MacAddress": mac}}),
        "only the MAC is answered"
    );
    let first_octet = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first_octet & 0x03, 0x02, "{mac} is locally administered unicast");
    let joined = s.ok(
        "/NetworkDriver.Join",
        json!({"EndpointID": EP1, "NetworkID": NET, "Options": serde_json::from_str::<Value>(NO_OPTIONS).unwrap(),
               "SandboxKey": "/var/run/docker/netns/6d64b2446e09"}),
    );
    assert_eq!(
        joined,
        json!({
            "InterfaceName": {"SrcName": "rv1dc6aa7b0e5f", "DstPrefix": "eth"},
            "Gateway": "10.77.1.1",
            "GatewayIPv6": "fd00:77::1",
            "DisableGatewayService": true
        })
    );
    let link = ns.link_json("rv1dc6aa7b0e5f");
    assert_eq!(link["address"], json!(mac));
    assert_eq!(link["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "bridge");
    assert_eq!(
        s.ok(
            "/NetworkDriver.ProgramExternalConnectivity",
            json!({"EndpointID": EP1, "NetworkID": NET, "Options": serde_json::from_str::<Value>(NO_OPTIONS).unwrap()})
        ),
        json!({})
    );
    for _ in 0..2 {
        let info = s.ok(
            "/NetworkDriver.EndpointOperInfo",
            json!({"EndpointID": EP1, "NetworkID": NET}),
        );
        assert_eq!(info["Value"]["link_name"], "rv1dc6aa7b0e5f");
    }

    // docker run --ip 10.77.1.50 --mac-address 02:11:22:33:44:55
    assert_eq!(
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"Address": "10.77.1.50", "Options": null, "PoolID": pool_id})
        ),
        json!({"Address": "10.77.1.50/24", "Data": {}})
    );
    assert_eq!(
        s.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"EndpointID": EP2, "Interface": {"Address": "10.77.1.50/24", "AddressIPv6": "", "MacAddress": "02:11:22:33:44:55"},
                   "NetworkID": NET, "Options": {"com.docker.network.endpoint.macaddress": "AhEiM0RV"}})
        ),
        json!({}),
        "a MAC dockerd sent is not answered back"
    );
    let joined = s.ok(
        "/NetworkDriver.Join",
        json!({"EndpointID": EP2, "NetworkID": NET, "Options": {}, "SandboxKey": "/var/run/docker/netns/77"}),
    );
    assert_eq!(joined["InterfaceName"]["SrcName"], "rv2ee7bb8c1f60");
    assert_eq!(joined["Gateway"], "10.77.1.1");
    assert!(joined.get("GatewayIPv6").is_none(), "no v6 address, no v6 gateway");
    assert_eq!(ns.link_json("rv2ee7bb8c1f60")["address"], "02:11:22:33:44:55");

    // Container stop and removal, in dockerd's order.
    for ep in [EP1, EP2] {
        let ids = json!({"EndpointID": ep, "NetworkID": NET});
        assert_eq!(
            s.ok("/NetworkDriver.RevokeExternalConnectivity", ids.clone()),
            json!({})
        );
        assert_eq!(s.ok("/NetworkDriver.Leave", ids.clone()), json!({}));
        assert_eq!(s.ok("/NetworkDriver.DeleteEndpoint", ids), json!({}));
    }
    s.settle();
    assert!(!ns.has_link("rv1dc6aa7b0e5f") && !ns.has_link("rv2ee7bb8c1f60"));
    for (pool, address) in [
        (pool_id, "10.77.1.128"),
        (pool6_id, "fd00:77::2"),
        (pool_id, "10.77.1.50"),
    ] {
        assert_eq!(
            s.ok(
                "/IpamDriver.ReleaseAddress",
                json!({"Address": address, "PoolID": pool})
            ),
            json!({})
        );
    }

    // The next container gets the next address, not the one just released.
    assert_eq!(
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"Address": "", "Options": null, "PoolID": pool_id})
        )["Address"],
        "10.77.1.129/24"
    );
    s.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"Address": "10.77.1.129", "PoolID": pool_id}),
    );

    let state = s.state();
    let network = &state.networks[NET];
    assert_eq!(network.parent, "vp0");
    assert_eq!(
        network.ipv4[0].aux_addresses,
        BTreeMap::from([("host1".to_string(), "10.77.1.5/24".parse().unwrap())])
    );
    let pool = &state.pools[pool_id];
    assert_eq!(
        pool.sub_pool,
        Some("10.77.1.128/25".parse().unwrap()),
        "--ip-range is remembered per pool"
    );
    assert_eq!(
        pool.options,
        BTreeMap::from([("com.example.ipamfoo".to_string(), "ipambar".to_string())])
    );
    assert_eq!(
        pool.addresses,
        BTreeMap::from([
            ("10.77.1.1".parse().unwrap(), AddressUse::Gateway),
            ("10.77.1.5".parse().unwrap(), AddressUse::Allocated)
        ])
    );

    // docker network rm: IPAM first, then the driver.
    for (pool, gateway) in [(pool_id, "10.77.1.1"), (pool6_id, "fd00:77::1")] {
        s.ok(
            "/IpamDriver.ReleaseAddress",
            json!({"Address": gateway, "PoolID": pool}),
        );
    }
    s.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"Address": "10.77.1.5", "PoolID": pool_id}),
    );
    assert_eq!(s.ok("/IpamDriver.ReleasePool", json!({"PoolID": pool_id})), json!({}));
    assert_eq!(s.ok("/IpamDriver.ReleasePool", json!({"PoolID": pool6_id})), json!({}));
    assert_eq!(
        s.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NET})),
        json!({})
    );
    let state = s.state();
    assert!(state.holds_nothing(), "records left behind: {state:?}");
    assert!(ns.has_link("vp0"), "an existing parent is never removed");
}

#[test]
fn pools_without_a_subnet_come_from_the_default_ranges() {
    let Some((_ns, _dir, s)) = setup() else { return };
    let v4 = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Options": {}, "Pool": "", "SubPool": "", "V6": false}),
    );
    assert_eq!(v4["Pool"], "10.123.0.0/24");
    let v4b = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-global", "Pool": "", "V6": false}),
    );
    assert_eq!(v4b["Pool"], "10.123.1.0/24");
    let gateway = s.ok(
        "/IpamDriver.RequestAddress",
        json!({"Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}, "PoolID": v4["PoolID"]}),
    );
    assert_eq!(gateway["Address"], "10.123.0.1/24");
    let v6 = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "", "V6": true}),
    );
    let pool = v6["Pool"].as_str().unwrap();
    assert!(
        pool.starts_with("fd") && pool.ends_with("::/64"),
        "a /64 of the store's ULA /48, got {pool}"
    );
}

#[test]
fn the_same_subnet_on_two_parents_is_two_pools() {
    let Some((ns, _dir, s)) = setup() else { return };
    ns.veth("vp1", "vp1peer");
    let mut pools = Vec::new();
    for (i, parent) in ["vp0", "vp1"].iter().enumerate() {
        let pool = s.ok(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.50.0.0/24", "V6": false}),
        );
        let id = pool["PoolID"].as_str().unwrap().to_string();
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"Address": "10.50.0.1", "Options": {"RequestAddressType": "com.docker.network.gateway"}, "PoolID": id}),
        );
        s.ok(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": format!("{i}{}", &NET[1..]),
                   "IPv4Data": [{"AddressSpace": "rustvlan-local", "Gateway": "10.50.0.1/24", "Pool": "10.50.0.0/24"}],
                   "Options": {"com.docker.network.generic": {"parent": parent}}}),
        );
        pools.push(id);
    }
    assert_ne!(pools[0], pools[1]);
    // A third network on vp0 with that subnet is refused by the driver.
    let (status, err) = s.post(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": format!("2{}", &NET[1..]),
               "IPv4Data": [{"AddressSpace": "rustvlan-local", "Gateway": "10.50.0.1/24", "Pool": "10.50.0.0/24"}],
               "Options": {"com.docker.network.generic": {"parent": "vp0"}}}),
    );
    assert_eq!(status, 409);
    assert_eq!(
        err,
        json!({"Err": "subnet 10.50.0.0/24 overlaps subnet 10.50.0.0/24 of network 04b384ba5b0e on parent vp0"})
    );
}

#[test]
fn socket_is_private_and_requests_are_decoded_leniently() {
    let Some((_ns, dir, mut s)) = setup() else { return };
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&s.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    assert_eq!(meta.uid(), 0, "socket owner");

    // Unknown path: 404 with a JSON error.
    assert_eq!(
        s.post_raw("/NetworkDriver.Frobnicate", ""),
        (
            404,
            json!({"Err": "rustvlan does not implement /NetworkDriver.Frobnicate"})
        )
    );
    // Undecodable bodies: 400 naming the field.
    assert_eq!(
        s.post_raw("/NetworkDriver.DeleteNetwork", r#"{"NetworkID": 5}"#),
        (
            400,
            json!({"Err": "invalid NetworkDriver.DeleteNetwork request: field NetworkID: invalid type: integer `5`, expected a string at line 1 column 15"})
        )
    );
    assert_eq!(
        s.post_raw("/IpamDriver.RequestPool", "{}"),
        (
            400,
            json!({"Err": "invalid IpamDriver.RequestPool request: missing field `AddressSpace` at line 1 column 2",
                   "Error": "invalid IpamDriver.RequestPool request: missing field `AddressSpace` at line 1 column 2"})
        )
    );
    // An oversized body is refused.
    let huge = format!(r#"{{"NetworkID": "{}"}}"#, "a".repeat(1024 * 1024 + 10));
    let (status, err) = s.post_raw("/NetworkDriver.DeleteNetwork", &huge);
    assert_eq!(status, 413);
    assert_eq!(err, json!({"Err": "request body is larger than 1024 KiB"}));

    // A live socket is not stolen by a second instance...
    let second = s
        .command()
        .arg("serve")
        .arg("--socket")
        .arg(&s.socket)
        .arg("--state-dir")
        .arg(dir.path().join("other-state"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("another process is serving {}", s.socket.display())),
        "{stderr}"
    );

    // ...SIGTERM stops the plugin at once and removes the socket...
    let took = s.terminate();
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    assert!(!s.socket.exists(), "socket removed on SIGTERM");

    // ...and a stale socket left by a crash is replaced.
    s.restart();
    s.kill9();
    assert!(s.socket.exists(), "SIGKILL leaves the socket file");
    s.restart();
    assert_eq!(s.post_raw("/Plugin.Activate", "").0, 200);
    assert!(s.log_text().contains("replaced a stale socket"), "{}", s.log_text());
}
