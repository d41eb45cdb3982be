//! Bad requests get their precise error and change nothing: the state dump before and
//! after each is byte-identical, and no link appears or disappears.

mod common;

use common::{Netns, Server, TempDir, report, require_root};
use serde_json::{Value, json};

const N1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const N2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const NEW: &str = "9999999999999999999999999999999999999999999999999999999999999999";
const E1: &str = "eeee111111111111111111111111111111111111111111111111111111111111";
const E2: &str = "eeee222222222222222222222222222222222222222222222222222222222222";
const POOL_A: &str = "rustvlan-local/10.70.0.0/24#1";
const POOL_FULL: &str = "rustvlan-local/10.71.0.0/30#2";

/// One case: where to send what, and the exact answer expected.
struct Case {
    path: &'static str,
    body: String,
    status: u16,
    error: &'static str,
}

fn case(path: &'static str, body: Value, status: u16, error: &'static str) -> Case {
    Case {
        path,
        body: body.to_string(),
        status,
        error,
    }
}

fn raw(path: &'static str, body: &str, status: u16, error: &'static str) -> Case {
    Case {
        path,
        body: body.to_string(),
        status,
        error,
    }
}

fn network(id: &str, generic: Value, pool: &str, gateway: &str) -> Value {
    json!({"NetworkID": id,
           "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": pool, "Gateway": gateway}],
           "Options": {"com.docker.network.generic": generic}})
}

fn baseline(s: &Server) {
    s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "10.70.0.0/24", "V6": false}),
    );
    s.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": POOL_A, "Address": "10.70.0.1", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    s.ok(
        "/NetworkDriver.CreateNetwork",
        network(N1, json!({"parent": "vp0"}), "10.70.0.0/24", "10.70.0.1/24"),
    );
    s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "10.71.0.0/30", "V6": false}),
    );
    for _ in 0..2 {
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": POOL_FULL, "Address": ""}),
        );
    }
    s.ok(
        "/NetworkDriver.CreateNetwork",
        network(
            N2,
            json!({"parent": "vp1", "ipvlan_mode": "l2"}),
            "10.72.0.0/24",
            "10.72.0.1/24",
        ),
    );
    s.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": POOL_A, "Address": "10.70.0.2"}),
    );
    s.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": N1, "EndpointID": E1, "Interface": {"Address": "10.70.0.2/24"}}),
    );
}

fn cases() -> Vec<Case> {
    let ep = |iface: Value| json!({"NetworkID": N1, "EndpointID": E2, "Interface": iface});
    vec![
        // ---- bodies
        raw(
            "/NetworkDriver.CreateNetwork",
            "{",
            400,
            "invalid NetworkDriver.CreateNetwork request: EOF while parsing an object at line 1 column 1",
        ),
        raw(
            "/NetworkDriver.CreateNetwork",
            "",
            400,
            "NetworkDriver.CreateNetwork came with an empty body, without its arguments (NetworkID, Options, \
             IPv4Data, IPv6Data); dockerd sends that when it retries a call whose connection broke. Nothing was \
             changed: run the docker command again",
        ),
        // dockerd 28 retries a call whose connection broke with an empty body.
        raw(
            "/IpamDriver.RequestAddress",
            "",
            400,
            "IpamDriver.RequestAddress came with an empty body, without its arguments (PoolID, Address, Options); \
             dockerd sends that when it retries a call whose connection broke. Nothing was changed: run the docker \
             command again",
        ),
        raw(
            "/NetworkDriver.CreateEndpoint",
            "",
            400,
            "NetworkDriver.CreateEndpoint came with an empty body, without its arguments (NetworkID, EndpointID, \
             Interface, Options); dockerd sends that when it retries a call whose connection broke. Nothing was \
             changed: run the docker command again",
        ),
        Case {
            path: "/IpamDriver.RequestPool",
            body: format!(r#"{{"AddressSpace": "{}"}}"#, "x".repeat(2 << 20)),
            status: 413,
            error: "request body is larger than 1024 KiB",
        },
        raw(
            "/NetworkDriver.CreateNetwork",
            "[]",
            400,
            "NetworkDriver.CreateNetwork needs a JSON object in the request body",
        ),
        raw(
            "/NetworkDriver.DeleteNetwork",
            "\"x\"",
            400,
            "NetworkDriver.DeleteNetwork needs a JSON object in the request body",
        ),
        raw(
            "/NetworkDriver.CreateNetwork",
            r#"{"NetworkID": "x"} trailing"#,
            400,
            "invalid NetworkDriver.CreateNetwork request: trailing characters at line 1 column 20",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            json!({"Options": {}}),
            400,
            "invalid NetworkDriver.CreateNetwork request: missing field `NetworkID` at line 1 column 14",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": 7}),
            400,
            "invalid NetworkDriver.CreateNetwork request: field NetworkID: invalid type: integer `7`, expected a string at line 1 column 14",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": NEW, "IPv4Data": {}}),
            400,
            "invalid NetworkDriver.CreateNetwork request: field IPv4Data: invalid type: map, expected a sequence at line 1 column 12",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": "../etc"}),
            400,
            "NetworkID \"../etc\" is not a valid id (1-128 letters, digits, '-', '_' or '.')",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"Address": ""}),
            400,
            "invalid IpamDriver.RequestAddress request: missing field `PoolID` at line 1 column 14",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "V6": "yes"}),
            400,
            "invalid IpamDriver.RequestPool request: field V6: invalid type: string \"yes\", expected a boolean at line 1 column 43",
        ),
        // ---- network options
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp2", "color": "blue"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "unknown option color; valid options: parent, vlan, kind, mode, macvlan_mode, ipvlan_mode, ipvlan_flag, \
             mtu, com.docker.network.driver.mtu, host_access, host_access_ip, vlan_protocol (namespaced keys such as \
             com.example.key are accepted and ignored)",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.81.0.0/24", "Options": {"ipamfoo": "bar"}}),
            400,
            "unknown IPAM option ipamfoo; valid IPAM options: segment, scope (namespaced keys such as com.example.key are \
             accepted and ignored)",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.81.0.0/24", "Options": {"segment": ""}}),
            400,
            "--ipam-opt segment=\"\" is not a segment name: use 1 to 64 letters, digits, '-', '_' or '.', the same on \
             every network of that L2 segment",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.81.0.0/24", "Options": {"scope": "global"}}),
            400,
            "--ipam-opt scope=\"global\": use scope=local (this host alone) or scope=shared (the default: shared \
             through etcd when rustvlan has --etcd-endpoints)",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.81.0.0/24", "Options": {"segment": "site a"}}),
            400,
            "--ipam-opt segment=\"site a\" is not a segment name: use 1 to 64 letters, digits, '-', '_' or '.', the \
             same on every network of that L2 segment",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": N1, "EndpointID": E2, "Interface": {"Address": "10.70.0.3/24"},
                   "Options": {"colour": "blue"}}),
            400,
            "unknown endpoint option colour; valid endpoint options: none (namespaced keys such as com.example.key \
             are accepted and ignored)",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp2", "kind": "ipvlan", "macvlan_mode": "bridge"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "macvlan_mode=bridge is a macvlan option but kind is ipvlan",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp2", "macvlan_mode": "turbo"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "unknown macvlan mode \"turbo\"; valid modes: bridge (default), private, vepa, passthru",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp2", "ipvlan_mode": "l4"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "unknown ipvlan mode \"l4\"; valid modes: l2 (default), l3, l3s",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(NEW, json!({"parent": "vp2.0"}), "10.80.0.0/24", "10.80.0.1/24"),
            400,
            "VLAN id 0 in parent vp2.0 is outside 1-4094",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(NEW, json!({"parent": "vp2.4095"}), "10.80.0.0/24", "10.80.0.1/24"),
            400,
            "VLAN id 4095 in parent vp2.4095 is outside 1-4094",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp2", "vlan": "4096"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "VLAN id 4096 in option vlan is outside 1-4094",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp2", "vlan": "abc"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "VLAN id \"abc\" in option vlan is not a number from 1 to 4094",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "averyverylongnic0"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "parent \"averyverylongnic0\" is 17 bytes long; interface names have at most 15",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(NEW, json!({"parent": "nosuchnic"}), "10.80.0.0/24", "10.80.0.1/24"),
            400,
            "parent interface nosuchnic does not exist",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp2", "mtu": "9000"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "mtu 9000 is above the MTU 1500 of parent vp2",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp2", "mtu": "20"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            400,
            "mtu must be a number from 68 to 65535, got \"20\"",
        ),
        // ---- subnets
        case(
            "/NetworkDriver.CreateNetwork",
            network(NEW, json!({"parent": "vp2"}), "10.80.0.0/24", "10.81.0.1/24"),
            400,
            "IPv4Data[0].Gateway 10.81.0.1 is outside subnet 10.80.0.0/24",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(NEW, json!({"parent": "vp2"}), "fd00:80::/64", "fd00:80::1/64"),
            400,
            "IPv4Data[0].Pool fd00:80::/64 is not an IPv4 subnet",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(NEW, json!({"parent": "vp2"}), "10.80.0.300/24", "10.80.0.1/24"),
            400,
            "IPv4Data[0].Pool \"10.80.0.300/24\" is not a subnet in CIDR notation",
        ),
        // ---- parent conflicts
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp0", "macvlan_mode": "passthru"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            409,
            "macvlan passthru needs parent vp0 alone, but network 111111111111 uses it",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(
                NEW,
                json!({"parent": "vp0", "ipvlan_mode": "l3"}),
                "10.80.0.0/24",
                "10.80.0.1/24",
            ),
            409,
            "parent vp0 already carries macvlan network 111111111111; macvlan and ipvlan networks cannot share a parent (the kernel refuses it)",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(NEW, json!({"parent": "vp0"}), "10.70.0.0/16", "10.70.0.1/16"),
            409,
            "subnet 10.70.0.0/16 overlaps subnet 10.70.0.0/24 of network 111111111111 on parent vp0",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(N1, json!({"parent": "vp2"}), "10.80.0.0/24", "10.80.0.1/24"),
            409,
            "network 111111111111 already exists with other settings",
        ),
        // ---- endpoints
        case(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NEW, "EndpointID": E2, "Interface": {"Address": "10.70.0.9/24"}}),
            404,
            "network 999999999999 not found",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": N2, "EndpointID": E2, "Interface": {"Address": "10.72.0.9/24", "MacAddress": "02:00:00:00:00:09"}}),
            400,
            "ipvlan interfaces share the parent's MAC: MAC address 02:00:00:00:00:09 cannot be set on ipvlan network 222222222222",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            ep(json!({"Address": "10.70.0.9/24", "MacAddress": "ff:ff:ff:ff:ff:ff"})),
            400,
            "Interface.MacAddress ff:ff:ff:ff:ff:ff is a multicast or broadcast address; a container needs a unicast MAC",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            ep(json!({"Address": "10.70.0.9/24", "MacAddress": "01:00:5e:00:00:01"})),
            400,
            "Interface.MacAddress 01:00:5e:00:00:01 is a multicast or broadcast address; a container needs a unicast MAC",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            ep(json!({"Address": "10.70.0.9/24", "MacAddress": "02:00:00:00:00"})),
            400,
            "Interface.MacAddress \"02:00:00:00:00\" is not a MAC address (expected six hex octets like 02:42:0a:00:00:02)",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            ep(json!({"Address": "10.70.0.9"})),
            400,
            "Interface.Address \"10.70.0.9\" is not an address in CIDR notation",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            ep(json!({"Address": "fd00::9/64"})),
            400,
            "Interface.Address fd00::9/64 is not an IPv4 address",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            ep(json!({"Address": "10.99.0.9/24"})),
            400,
            "address 10.99.0.9 is not in the subnets of network 111111111111 (10.70.0.0/24)",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": N1, "EndpointID": E1, "Interface": {"Address": "10.70.0.3/24"}}),
            409,
            "endpoint eeee11111111 already exists with other settings",
        ),
        case(
            "/NetworkDriver.Join",
            json!({"NetworkID": N1, "EndpointID": E2, "SandboxKey": "/x"}),
            404,
            "endpoint eeee22222222 not found",
        ),
        case(
            "/NetworkDriver.Join",
            json!({"NetworkID": N2, "EndpointID": E1, "SandboxKey": "/x"}),
            400,
            "endpoint eeee11111111 belongs to network 111111111111, not 222222222222",
        ),
        case(
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": N2, "EndpointID": E1}),
            400,
            "endpoint eeee11111111 belongs to network 111111111111, not 222222222222",
        ),
        // ---- IPAM
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "elsewhere", "Pool": "10.80.0.0/24"}),
            400,
            "unknown address space \"elsewhere\"; rustvlan serves \"rustvlan-local\" and \"rustvlan-global\"",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.80.0.0/33"}),
            400,
            "Pool \"10.80.0.0/33\" is not a subnet in CIDR notation",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.80.0.7/24"}),
            400,
            "Pool 10.80.0.7/24 has host bits set; the subnet is 10.80.0.0/24",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.80.0.0/24", "V6": true}),
            400,
            "Pool 10.80.0.0/24 is an IPv4 subnet but V6 is true",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "fd00:80::/64", "V6": false}),
            400,
            "Pool fd00:80::/64 is an IPv6 subnet but V6 is false",
        ),
        case(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.80.0.0/24", "SubPool": "10.81.0.0/25"}),
            400,
            "SubPool 10.81.0.0/25 (--ip-range) is not inside Pool 10.80.0.0/24",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": POOL_A, "Address": "10.99.0.1"}),
            400,
            "address 10.99.0.1 is outside pool 10.70.0.0/24",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": POOL_A, "Address": "10.70.0.0"}),
            400,
            "address 10.70.0.0 is the network address of pool 10.70.0.0/24",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": POOL_A, "Address": "10.70.0.255"}),
            400,
            "address 10.70.0.255 is the broadcast address of pool 10.70.0.0/24",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": POOL_A, "Address": "10.70.0.1"}),
            409,
            "address 10.70.0.1 is already in use in pool 10.70.0.0/24",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": POOL_A, "Address": "fd00::1"}),
            400,
            "address fd00::1 is outside pool 10.70.0.0/24",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": POOL_A, "Address": "ten"}),
            400,
            "Address \"ten\" is not an IP address",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": POOL_FULL, "Address": ""}),
            409,
            "no free address left in pool 10.71.0.0/30",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": "rustvlan-local/10.70.0.0/24#77", "Address": ""}),
            404,
            "unknown pool ID \"rustvlan-local/10.70.0.0/24#77\"",
        ),
        case(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": "LocalDefault/10.70.0.0/24", "Address": ""}),
            400,
            "pool ID \"LocalDefault/10.70.0.0/24\" was not issued by rustvlan",
        ),
        case(
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID": POOL_A, "Address": "10.99.0.1"}),
            400,
            "address 10.99.0.1 is outside pool 10.70.0.0/24",
        ),
        case(
            "/IpamDriver.ReleasePool",
            json!({"PoolID": "LocalDefault/10.70.0.0/24"}),
            400,
            "pool ID \"LocalDefault/10.70.0.0/24\" was not issued by rustvlan",
        ),
        // ---- not errors, and still no change: repeats and unknown ids
        case(
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID": POOL_A, "Address": "10.70.0.77"}),
            200,
            "",
        ),
        case(
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID": "rustvlan-local/10.70.0.0/24#77", "Address": "10.70.0.2"}),
            200,
            "",
        ),
        case(
            "/IpamDriver.ReleasePool",
            json!({"PoolID": "rustvlan-local/10.70.0.0/24#77"}),
            200,
            "",
        ),
        case(
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": N1, "EndpointID": E2}),
            200,
            "",
        ),
        case("/NetworkDriver.DeleteNetwork", json!({"NetworkID": NEW}), 200, ""),
        case(
            "/NetworkDriver.Leave",
            json!({"NetworkID": N1, "EndpointID": E2}),
            200,
            "",
        ),
        case(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": N1, "EndpointID": E1, "Interface": {"Address": "10.70.0.2/24"}}),
            200,
            "",
        ),
        case(
            "/NetworkDriver.CreateNetwork",
            network(N1, json!({"parent": "vp0"}), "10.70.0.0/24", "10.70.0.1/24"),
            200,
            "",
        ),
    ]
}

#[test]
fn bad_input_gets_a_precise_error_and_changes_nothing() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    for (a, b) in [("vp0", "vp0p"), ("vp1", "vp1p"), ("vp2", "vp2p")] {
        ns.veth(a, b);
    }
    let dir = TempDir::new();
    let s = Server::start(Some(&ns), dir.path());
    baseline(&s);
    let state = s.state_text();
    let links = ns.link_names();
    let cases = cases();
    let mut failures = Vec::new();
    for c in &cases {
        let (status, answer) = s.post_raw(c.path, &c.body);
        let got = answer["Err"].as_str().unwrap_or("");
        if status != c.status || got != c.error {
            failures.push(format!(
                "{} {}\n    expected {} {:?}\n    got      {status} {answer}",
                c.path, c.body, c.status, c.error
            ));
        }
        if c.path.starts_with("/IpamDriver.") && status != 200 && answer["Error"] != answer["Err"] {
            failures.push(format!(
                "{} {}: IPAM error lacks the Error key: {answer}",
                c.path, c.body
            ));
        }
        if s.state_text() != state {
            failures.push(format!("{} {}: the state changed", c.path, c.body));
        }
        if ns.link_names() != links {
            failures.push(format!("{} {}: links changed: {:?}", c.path, c.body, ns.link_names()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    report(&format!(
        "bad input: {} cases, each with its precise answer, state and links unchanged",
        cases.len()
    ));
}
