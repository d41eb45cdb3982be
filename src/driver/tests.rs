//! The driver's decisions against the fake kernel and the in-memory journal. The
//! same behaviours run against the real kernel in tests/kernel.rs and in the VM rig.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{EndpointRef, EndpointSpec, JoinSpec, NetworkSpec, SubnetSpec};
use crate::api::driver::join_answer;
use crate::error::ErrorKind;
use crate::kernel::fake::FakeKernel;
use crate::kernel::{ChildLink, Errno, Kernel, LinkType};
use crate::model::{IpvlanFlag, IpvlanMode, LinkMode, MacvlanMode};
use crate::plugin::Plugin;
use crate::store::{Journal, MemoryJournal, PoolDefaults};

/// A store for one test, in memory: plugins opened on it one after the other see what
/// the ones before committed, as after a restart. The sled store itself is tested in
/// tests/ (crash, disk, restart).
struct TestStore(Arc<MemoryJournal>);

fn test_store() -> TestStore {
    TestStore(Arc::default())
}

fn defaults() -> PoolDefaults {
    PoolDefaults {
        v4_range: "10.123.0.0/16".parse().unwrap(),
        v4_prefix: 24,
    }
}

fn open(dir: &TestStore, kernel: FakeKernel) -> Plugin<FakeKernel> {
    let (state, loaded) = dir.0.load(&defaults()).unwrap();
    Plugin::new(state, Arc::clone(&dir.0) as Arc<dyn Journal>, kernel, loaded.link_group)
}

fn kernel() -> FakeKernel {
    let k = FakeKernel::new();
    k.add_nic("eth0", 1500);
    k.add_nic("eth1", 9000);
    k
}

const NET_A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
const NET_B: &str = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222";
const NET_C: &str = "cccccccccccc3333333333333333333333333333333333333333333333333333";
const EP_1: &str = "111111111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const EP_2: &str = "222222222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn network(id: &str, generic: Value, subnet: &str, gateway: &str) -> NetworkSpec {
    let mut options = BTreeMap::new();
    options.insert("com.docker.network.generic".to_string(), generic);
    options.insert("com.docker.network.enable_ipv6".to_string(), json!(false));
    NetworkSpec {
        network_id: id.to_string(),
        options,
        ipv4: vec![SubnetSpec {
            address_space: "rustvlan-local".into(),
            pool: subnet.into(),
            gateway: Some(gateway.into()),
            aux_addresses: BTreeMap::new(),
        }],
        ipv6: vec![],
        host_address: None,
    }
}

fn internal(mut req: NetworkSpec) -> NetworkSpec {
    req.options.insert("com.docker.network.internal".into(), json!(true));
    req
}

fn endpoint(net: &str, ep: &str, address: &str, mac: &str) -> EndpointSpec {
    EndpointSpec {
        network_id: net.into(),
        endpoint_id: ep.into(),
        ipv4: Some(address.into()),
        ipv6: Some(String::new()),
        mac: Some(mac.into()),
        options: BTreeMap::new(),
    }
}

fn join(net: &str, ep: &str) -> JoinSpec {
    JoinSpec {
        endpoint: EndpointRef::new(net, ep),
        sandbox: Some("/var/run/docker/netns/x".into()),
    }
}

fn ep_req(net: &str, ep: &str) -> EndpointRef {
    EndpointRef::new(net, ep)
}

#[tokio::test]
async fn macvlan_endpoint_lifecycle() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    let answer = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    let mac = answer.chosen_mac.unwrap();
    assert_eq!(mac.0[0] & 0x03, 0x02, "{mac} must be a local unicast MAC");
    // A repeated CreateEndpoint answers the same.
    let again = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    assert_eq!(again.chosen_mac.unwrap(), mac);
    let other = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.3/24", ""))
        .await
        .unwrap_err();
    assert_eq!(
        other.message,
        "endpoint 111111111111 already exists with other settings"
    );

    let joined = p.driver.join(join(NET_A, EP_1)).await.unwrap();
    assert_eq!(joined.link_name, "rv111111111111");
    assert_eq!(joined.name_prefix, "eth");
    assert_eq!(joined.gateway, Some("10.77.0.1".parse().unwrap()));
    assert!(joined.routes.is_empty());
    let link = p.ledger.kernel.get("rv111111111111").unwrap();
    assert_eq!(link.kind, LinkType::Macvlan);
    assert_eq!(link.group, p.driver.group, "marked as this store's");
    assert_eq!(link.parent_index, Some(p.ledger.kernel.get("eth0").unwrap().index));

    p.driver.delete_endpoint(&ep_req(NET_A, EP_1)).await.unwrap();
    // The link goes off the request path: queued, then deleted by the deleter.
    assert!(p.ledger.kernel.get("rv111111111111").is_some());
    assert!(p.ledger.state().pending.contains_key("rv111111111111"));
    assert_eq!(p.driver.process_pending().await.unwrap(), 1);
    assert!(p.ledger.kernel.get("rv111111111111").is_none());
    assert!(p.ledger.state().pending.is_empty());
    // Idempotent.
    p.driver.delete_endpoint(&ep_req(NET_A, EP_1)).await.unwrap();
    p.driver.delete_network(NET_A).await.unwrap();
    p.driver.delete_network(NET_A).await.unwrap();
    assert_eq!(p.ledger.kernel.names(), vec!["eth0", "eth1"]);
    assert!(p.ledger.state().networks.is_empty() && p.ledger.state().endpoints.is_empty());
}

#[tokio::test]
async fn requested_mac_is_used_and_not_returned() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    let answer = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", "02:11:22:33:44:55"))
        .await
        .unwrap();
    assert!(
        answer.chosen_mac.is_none(),
        "only fields dockerd left empty are answered"
    );
    assert_eq!(
        p.ledger.state().endpoints[EP_1].mac.unwrap().to_string(),
        "02:11:22:33:44:55"
    );
    let dup = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_2, "10.77.0.3/24", "02:11:22:33:44:55"))
        .await
        .unwrap_err();
    assert_eq!(
        dup.message,
        "MAC address 02:11:22:33:44:55 is already used by endpoint 111111111111 on network aaaaaaaaaaaa"
    );
    let bcast = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_2, "10.77.0.3/24", "ff:ff:ff:ff:ff:ff"))
        .await
        .unwrap_err();
    assert_eq!(
        bcast.message,
        "Interface.MacAddress ff:ff:ff:ff:ff:ff is a multicast or broadcast address; a container needs a unicast MAC"
    );
    let outside = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_2, "10.99.0.3/24", ""))
        .await
        .unwrap_err();
    assert_eq!(
        outside.message,
        "address 10.99.0.3 is not in the subnets of network aaaaaaaaaaaa (10.77.0.0/24)"
    );
}

#[tokio::test]
async fn ipvlan_l3_gets_connected_default_routes_and_refuses_macs() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0", "ipvlan_mode": "l3", "ipvlan_flag": "private"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    let err = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", "02:11:22:33:44:55"))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "ipvlan interfaces share the parent's MAC: MAC address 02:11:22:33:44:55 cannot be set on ipvlan network aaaaaaaaaaaa"
    );
    let answer = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    assert!(answer.chosen_mac.is_none(), "ipvlan answers no MAC");
    let joined = p.driver.join(join(NET_A, EP_1)).await.unwrap();
    assert_eq!(joined.gateway, None);
    let routes = serde_json::to_value(join_answer(joined).static_routes).unwrap();
    assert_eq!(routes, json!([{"Destination": "0.0.0.0/0", "RouteType": 1}]));
    assert_eq!(p.ledger.kernel.get("rv111111111111").unwrap().kind, LinkType::Ipvlan);
    assert_eq!(
        p.ledger.state().networks[NET_A].link,
        LinkMode::Ipvlan {
            mode: IpvlanMode::L3,
            flag: IpvlanFlag::Private
        }
    );
}

#[tokio::test]
async fn a_failed_join_leaves_no_link_and_leftovers_are_judged_by_their_mark() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    let before = p.ledger.kernel.names();
    p.ledger
        .kernel
        .fail_next_add(Errno::EINVAL, "creating macvlan link rv111111111111");
    let err = p.driver.join(join(NET_A, EP_1)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Kernel);
    assert_eq!(p.ledger.kernel.names(), before, "a failed Join leaves nothing behind");

    // A leftover carrying this endpoint's mark is replaced...
    p.driver.join(join(NET_A, EP_1)).await.unwrap();
    let first = p.ledger.kernel.get("rv111111111111").unwrap().index;
    p.driver.join(join(NET_A, EP_1)).await.unwrap();
    assert_ne!(p.ledger.kernel.get("rv111111111111").unwrap().index, first);
    // ...but a link rustvlan did not make is never touched.
    p.ledger.kernel.vanish("rv111111111111");
    let eth0 = p.ledger.kernel.get("eth0").unwrap().index;
    p.ledger
        .kernel
        .add_child(&ChildLink {
            name: "rv111111111111".into(),
            parent_index: eth0,
            mode: LinkMode::Macvlan {
                mode: MacvlanMode::Bridge,
            },
            mac: None,
            mtu: None,
            group: 0,
        })
        .await
        .unwrap();
    let err = p.driver.join(join(NET_A, EP_1)).await.unwrap_err();
    assert_eq!(
        err.message,
        "interface name rv111111111111 is taken by a link rustvlan did not make; remove that link"
    );
    p.driver.delete_endpoint(&ep_req(NET_A, EP_1)).await.unwrap();
    assert!(
        p.ledger.kernel.get("rv111111111111").is_some(),
        "DeleteEndpoint leaves a foreign link alone"
    );
}

#[tokio::test]
async fn parent_conflicts_are_refused_before_the_kernel_sees_them() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    let ipvlan = network(
        NET_B,
        json!({"parent": "eth0", "ipvlan_mode": "l2"}),
        "10.78.0.0/24",
        "10.78.0.1/24",
    );
    assert_eq!(
        p.driver.create_network(ipvlan).await.unwrap_err().message,
        "parent eth0 already carries macvlan network aaaaaaaaaaaa; macvlan and ipvlan networks cannot share a parent (the kernel refuses it)"
    );
    let passthru = network(
        NET_B,
        json!({"parent": "eth0", "macvlan_mode": "passthru"}),
        "10.78.0.0/24",
        "10.78.0.1/24",
    );
    assert_eq!(
        p.driver.create_network(passthru).await.unwrap_err().message,
        "macvlan passthru needs parent eth0 alone, but network aaaaaaaaaaaa uses it"
    );
    let overlap = network(NET_B, json!({"parent": "eth0"}), "10.77.0.0/16", "10.77.0.1/16");
    assert_eq!(
        p.driver.create_network(overlap).await.unwrap_err().message,
        "subnet 10.77.0.0/16 overlaps subnet 10.77.0.0/24 of network aaaaaaaaaaaa on parent eth0"
    );
    // A rustvlan-dhcp network without --subnet: its subnet comes with its leases, and
    // overlaps nothing it could be told from now.
    p.driver
        .create_network(network(NET_C, json!({"parent": "eth0"}), "0.0.0.0/0", "0.0.0.0/0"))
        .await
        .unwrap();
    // The same subnet on another parent is fine (moby#46438).
    p.driver
        .create_network(network(
            NET_B,
            json!({"parent": "eth1"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    assert_eq!(p.ledger.state().networks.len(), 3);
}

#[tokio::test]
async fn several_ipvlan_networks_share_a_parent_with_distinct_subnets() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0", "ipvlan_mode": "l3"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_network(network(
            NET_B,
            json!({"parent": "eth0", "ipvlan_mode": "l2"}),
            "10.78.0.0/24",
            "10.78.0.1/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    p.driver
        .create_endpoint(endpoint(NET_B, EP_2, "10.78.0.2/24", ""))
        .await
        .unwrap();
    p.driver.join(join(NET_A, EP_1)).await.unwrap();
    p.driver.join(join(NET_B, EP_2)).await.unwrap();
}

#[tokio::test]
async fn passthru_takes_one_endpoint() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0", "macvlan_mode": "passthru"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    let err = p
        .driver
        .create_endpoint(endpoint(NET_A, EP_2, "10.77.0.3/24", ""))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "macvlan passthru network aaaaaaaaaaaa already has endpoint 111111111111; passthru gives the parent to one container"
    );
    let other = network(NET_B, json!({"parent": "eth0"}), "10.78.0.0/24", "10.78.0.1/24");
    assert_eq!(
        p.driver.create_network(other).await.unwrap_err().message,
        "parent eth0 is taken by macvlan passthru network aaaaaaaaaaaa; passthru needs its parent alone"
    );
}

#[tokio::test]
async fn vlan_parents_are_made_shared_and_removed_with_their_last_network() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0.10"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    let vlan = p.ledger.kernel.get("eth0.10").expect("VLAN parent made");
    assert_eq!(vlan.kind, LinkType::Vlan);
    assert_eq!(vlan.parent_index, Some(p.ledger.kernel.get("eth0").unwrap().index));
    assert_eq!(vlan.group, p.driver.group);
    assert!(p.ledger.state().parents.contains_key("eth0.10"));
    // -o vlan=10 on eth0 names the same parent.
    p.driver
        .create_network(network(
            NET_B,
            json!({"parent": "eth0", "vlan": "10"}),
            "10.78.0.0/24",
            "10.78.0.1/24",
        ))
        .await
        .unwrap();
    assert_eq!(p.ledger.state().networks[NET_B].parent, "eth0.10");
    p.driver.delete_network(NET_A).await.unwrap();
    assert!(
        p.ledger.kernel.get("eth0.10").is_some(),
        "still used by the other network"
    );
    p.driver.delete_network(NET_B).await.unwrap();
    assert!(
        p.ledger.kernel.get("eth0.10").is_none(),
        "made by rustvlan, last user gone"
    );
    assert!(p.ledger.state().parents.is_empty());
}

#[tokio::test]
async fn a_vlan_parent_rustvlan_did_not_make_is_kept() {
    let dir = test_store();
    let k = kernel();
    k.add_nic("eth0.20", 1500);
    let p = open(&dir, k);
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0.20"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    assert!(p.ledger.state().parents.is_empty());
    p.driver.delete_network(NET_A).await.unwrap();
    assert!(p.ledger.kernel.get("eth0.20").is_some());
}

#[tokio::test]
async fn missing_parents_and_mtus_are_clear_errors_and_change_nothing() {
    let dir = test_store();
    let p = open(&dir, kernel());
    let names = p.ledger.kernel.names();
    let err = p
        .driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth9"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.message, "parent interface eth9 does not exist");
    let err = p
        .driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth9.10"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "parent interface eth9 does not exist, so VLAN 10 cannot be made on it"
    );
    let err = p
        .driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0", "mtu": "9000"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.message, "mtu 9000 is above the MTU 1500 of parent eth0");
    let err = p
        .driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0.10", "mtu": "9000"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.message, "mtu 9000 is above the MTU 1500 of parent eth0");
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth1", "mtu": "9000"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    assert_eq!(p.ledger.kernel.names(), names);
}

#[tokio::test]
async fn internal_networks_keep_their_parent_and_get_no_gateway() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(internal(network(
            NET_B,
            json!({"parent": "eth0"}),
            "10.78.0.0/24",
            "10.78.0.1/24",
        )))
        .await
        .unwrap();
    assert_eq!(p.ledger.state().networks[NET_B].parent, "eth0");
    p.driver
        .create_endpoint(endpoint(NET_B, EP_2, "10.78.0.2/24", ""))
        .await
        .unwrap();
    let joined = p.driver.join(join(NET_B, EP_2)).await.unwrap();
    assert_eq!(joined.gateway, None);
    assert!(joined.routes.is_empty());
}

#[tokio::test]
async fn internal_networks_without_a_parent_get_a_dummy_and_no_gateway() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(internal(network(NET_A, json!({}), "10.77.0.0/24", "10.77.0.1/24")))
        .await
        .unwrap();
    let dummy = p.ledger.kernel.get("dm-aaaaaaaaaaaa").expect("dummy parent");
    assert_eq!(dummy.kind, LinkType::Dummy);
    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    let joined = p.driver.join(join(NET_A, EP_1)).await.unwrap();
    assert_eq!(joined.gateway, None);
    assert!(joined.routes.is_empty());
    p.driver.delete_endpoint(&ep_req(NET_A, EP_1)).await.unwrap();
    p.driver.delete_network(NET_A).await.unwrap();
    assert!(p.ledger.kernel.get("dm-aaaaaaaaaaaa").is_none());
}

#[tokio::test]
async fn a_kernel_without_dummy_support_gets_a_clear_error() {
    let dir = test_store();
    let k = kernel();
    k.without_kind("dummy");
    let p = open(&dir, k);
    let err = p
        .driver
        .create_network(internal(network(NET_A, json!({}), "10.77.0.0/24", "10.77.0.1/24")))
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "creating dummy link dm-aaaaaaaaaaaa: Operation not supported (os error 95): this kernel cannot make that kind of link (is the 8021q or dummy module available?)"
    );
    assert!(p.ledger.state().networks.is_empty());
}

#[tokio::test]
async fn delete_network_cleans_stale_endpoints() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    p.driver.join(join(NET_A, EP_1)).await.unwrap();
    p.driver.delete_network(NET_A).await.unwrap();
    assert!(p.ledger.kernel.get("rv111111111111").is_none());
    assert!(p.ledger.state().endpoints.is_empty());
}

#[tokio::test]
async fn reconcile_deletes_only_orphans_and_remakes_missing_parents() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0.10"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    p.driver.join(join(NET_A, EP_1)).await.unwrap();
    let eth0 = p.ledger.kernel.get("eth0").unwrap().index;
    let child = |name: &str, group: u32| ChildLink {
        name: name.into(),
        parent_index: eth0,
        mode: LinkMode::Macvlan {
            mode: MacvlanMode::Bridge,
        },
        mac: None,
        mtu: None,
        group,
    };
    // An orphan of this store, one of another rustvlan store, and one of nobody.
    p.ledger
        .kernel
        .add_child(&child("rvdeadbeef0001", p.driver.group))
        .await
        .unwrap();
    p.ledger
        .kernel
        .add_child(&child("rvdeadbeef0002", 0x4bad_c0de))
        .await
        .unwrap();
    p.ledger.kernel.add_child(&child("rvdeadbeef0003", 0)).await.unwrap();
    // A VLAN this store made whose record was never written (a crash), and one it did not make.
    p.ledger
        .kernel
        .add_vlan(
            "eth1.99",
            p.ledger.kernel.get("eth1").unwrap().index,
            99,
            crate::model::VlanProtocol::Ieee8021Q,
            p.driver.group,
        )
        .await
        .unwrap();
    p.ledger
        .kernel
        .add_vlan(
            "eth1.98",
            p.ledger.kernel.get("eth1").unwrap().index,
            98,
            crate::model::VlanProtocol::Ieee8021Q,
            0,
        )
        .await
        .unwrap();
    let report = p.driver.reconcile().await.unwrap();
    assert_eq!(report.orphan_links_deleted, vec!["rvdeadbeef0001"]);
    assert_eq!(report.orphan_parents_deleted, vec!["eth1.99"]);
    assert!(p.ledger.kernel.get("eth1.98").is_some() && p.ledger.kernel.get("eth0.10").is_some());
    assert!(p.ledger.kernel.get("rv111111111111").is_some(), "owned link kept");
    assert!(p.ledger.kernel.get("rvdeadbeef0002").is_some() && p.ledger.kernel.get("rvdeadbeef0003").is_some());

    // After a host reboot the VLAN rustvlan made is gone: it is made again.
    p.ledger.kernel.vanish("eth0.10");
    p.ledger.kernel.vanish("rv111111111111");
    let report = p.driver.reconcile().await.unwrap();
    assert_eq!(report.parents_recreated, vec!["eth0.10"]);
    assert_eq!(report.endpoints_without_host_link, 1);
    assert!(p.ledger.kernel.get("eth0.10").is_some());
}

#[tokio::test]
async fn state_survives_reopening_the_store() {
    let dir = test_store();
    {
        let p = open(&dir, kernel());
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0.10"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        p.driver
            .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
            .await
            .unwrap();
    }
    let p = open(&dir, kernel());
    let state = p.ledger.state();
    assert_eq!(state.networks[NET_A].parent, "eth0.10");
    assert_eq!(state.endpoints[EP_1].link_name, "rv111111111111");
    assert!(state.parents.contains_key("eth0.10"));
    assert_eq!(state.endpoint_by_link("rv111111111111").unwrap().id, EP_1);
}

mod sweeping {
    use super::*;
    use crate::ipam::{AddressRequest, PoolRequest};
    use crate::model::Family;

    async fn pool(p: &Plugin<FakeKernel>, cidr: &str) -> String {
        p.ipam
            .request_pool(PoolRequest {
                dhcp: false,
                address_space: "rustvlan-local".into(),
                pool: cidr.into(),
                sub_pool: String::new(),
                options: BTreeMap::new(),
                family: Family::V4,
            })
            .await
            .unwrap()
            .pool_id
    }

    async fn address(p: &Plugin<FakeKernel>, pool_id: &str, ip: &str, gateway: bool) {
        p.ipam
            .request_address(AddressRequest {
                pool_id: pool_id.into(),
                address: Some(ip.parse().unwrap()),
                gateway,
                options: BTreeMap::new(),
            })
            .await
            .unwrap();
    }

    fn allocated(p: &Plugin<FakeKernel>) -> Vec<String> {
        let state = p.ledger.state();
        state
            .ipam
            .pools()
            .flat_map(|pool| pool.allocated().map(|(ip, _)| ip.to_string()).collect::<Vec<_>>())
            .collect()
    }

    #[tokio::test]
    async fn unused_addresses_of_claimed_pools_go_after_two_sweeps() {
        let dir = test_store();
        let p = open(&dir, kernel());
        let id = pool(&p, "10.77.0.0/24").await;
        address(&p, &id, "10.77.0.1", true).await;
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        assert_eq!(
            p.ledger
                .state()
                .ipam
                .pools()
                .next()
                .unwrap()
                .record
                .claimed_by
                .as_deref(),
            Some(NET_A),
            "CreateNetwork claims the pool"
        );
        for ip in ["10.77.0.2", "10.77.0.3"] {
            address(&p, &id, ip, false).await;
        }
        p.driver
            .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
            .await
            .unwrap();

        let first = p.ipam.sweep(false).await.unwrap();
        assert!(first.is_empty(), "the first sweep only marks");
        assert_eq!(first.addresses_marked, 1);
        // In flight at the first sweep, bound before the second: kept.
        address(&p, &id, "10.77.0.4", false).await;
        let second = p.ipam.sweep(false).await.unwrap();
        assert_eq!(
            second.addresses_reclaimed,
            [(id.clone(), vec!["10.77.0.3".to_string()])].into(),
            "unused across a whole grace period: released"
        );
        p.driver
            .create_endpoint(endpoint(NET_A, EP_2, "10.77.0.4/24", ""))
            .await
            .unwrap();
        let third = p.ipam.sweep(false).await.unwrap();
        assert!(third.is_empty() && third.addresses_marked == 0);
        assert_eq!(allocated(&p), vec!["10.77.0.1", "10.77.0.2", "10.77.0.4"]);
    }

    /// An address unbound at one sweep, released, and unbound again at the next for
    /// another container is that container's: kept.
    #[tokio::test]
    async fn a_mark_is_forgotten_when_its_address_is_released_and_taken_again() {
        let dir = test_store();
        let p = open(&dir, kernel());
        let id = pool(&p, "10.78.0.0/24").await;
        address(&p, &id, "10.78.0.1", true).await;
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0"}),
                "10.78.0.0/24",
                "10.78.0.1/24",
            ))
            .await
            .unwrap();
        address(&p, &id, "10.78.0.2", false).await;
        let first = p.ipam.sweep(false).await.unwrap();
        assert_eq!(first.addresses_marked, 1, "between RequestAddress and CreateEndpoint");
        p.ipam.release_address(&id, "10.78.0.2".parse().unwrap()).await.unwrap();
        address(&p, &id, "10.78.0.2", false).await;
        let second = p.ipam.sweep(false).await.unwrap();
        assert!(second.is_empty(), "another container's moment: {second:?}");
        assert_eq!(allocated(&p), vec!["10.78.0.1", "10.78.0.2"]);
    }

    fn lease(pool_id: &str, ip: &str, mac: u8) -> crate::model::LeaseRecord {
        crate::model::LeaseRecord {
            pool_id: pool_id.into(),
            address: format!("{ip}/24").parse().unwrap(),
            router: None,
            routes: Vec::new(),
            server: "10.79.0.254".parse().unwrap(),
            parent: "eth0".into(),
            mac: crate::model::MacAddr([2, 0, 0, 0, 0, mac]),
            client_id: String::new(),
            lease_secs: 120,
            t1_secs: 60,
            t2_secs: 105,
            acked_at: 0,
            renewals: 0,
            trouble: None,
        }
    }

    async fn put_lease(p: &Plugin<FakeKernel>, lease: crate::model::LeaseRecord) {
        p.ledger
            .commit(|_| Ok(((), vec![crate::state::Change::PutLease(lease)])))
            .await
            .unwrap();
    }

    fn leased(p: &Plugin<FakeKernel>) -> Vec<String> {
        p.ledger
            .state()
            .leases
            .values()
            .map(|l| l.address.ip().to_string())
            .collect()
    }

    /// A lease no endpoint holds is renewed forever unless the sweep releases it: after
    /// a whole grace period (renewals meanwhile do not save it), or at once when its
    /// pool's network is gone.
    #[tokio::test]
    async fn leases_no_endpoint_holds_go_after_two_sweeps_and_with_their_network() {
        let dir = test_store();
        let p = open(&dir, kernel());
        let id = pool(&p, "10.79.0.0/24").await;
        address(&p, &id, "10.79.0.1", true).await;
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0"}),
                "10.79.0.0/24",
                "10.79.0.1/24",
            ))
            .await
            .unwrap();
        address(&p, &id, "10.79.0.2", false).await;
        p.driver
            .create_endpoint(endpoint(NET_A, EP_1, "10.79.0.2/24", ""))
            .await
            .unwrap();
        put_lease(&p, lease(&id, "10.79.0.2", 2)).await;
        put_lease(&p, lease(&id, "10.79.0.3", 3)).await;
        put_lease(&p, lease("rustvlan-local/10.99.0.0/24#999", "10.99.0.9", 9)).await;

        let first = p.ipam.sweep(false).await.unwrap();
        assert!(first.is_empty(), "the first sweep only marks: {first:?}");
        assert_eq!(
            first.leases_marked, 2,
            "10.79.0.3, and the lease of a pool that is gone"
        );
        let renewed = crate::model::LeaseRecord {
            renewals: 1,
            acked_at: 60,
            ..lease(&id, "10.79.0.3", 3)
        };
        put_lease(&p, renewed).await;
        let second = p.ipam.sweep(false).await.unwrap();
        let released: Vec<String> = second
            .leases_reclaimed
            .iter()
            .map(|l| l.address.ip().to_string())
            .collect();
        assert_eq!(released, vec!["10.79.0.3", "10.99.0.9"], "a renewal does not save it");
        assert_eq!(leased(&p), vec!["10.79.0.2"]);

        // A lease released and taken again by another endpoint between two sweeps is
        // that endpoint's moment: kept.
        put_lease(&p, lease(&id, "10.79.0.4", 4)).await;
        assert_eq!(p.ipam.sweep(false).await.unwrap().leases_marked, 1);
        p.ledger
            .commit(|_| {
                Ok((
                    (),
                    vec![crate::state::Change::DelLease(lease(&id, "10.79.0.4", 4).key())],
                ))
            })
            .await
            .unwrap();
        put_lease(&p, lease(&id, "10.79.0.4", 5)).await;
        assert!(p.ipam.sweep(false).await.unwrap().leases_reclaimed.is_empty());

        p.driver.delete_endpoint(&ep_req(NET_A, EP_1)).await.unwrap();
        p.driver.delete_network(NET_A).await.unwrap();
        let now = p.ipam.sweep(true).await.unwrap();
        let mut released: Vec<String> = now
            .leases_reclaimed
            .iter()
            .map(|l| l.address.ip().to_string())
            .collect();
        released.sort();
        assert_eq!(released, vec!["10.79.0.2", "10.79.0.4"], "its network is gone");
        assert!(leased(&p).is_empty());
    }

    #[tokio::test]
    async fn orphan_pools_go_and_other_drivers_pools_stay() {
        let dir = test_store();
        let p = open(&dir, kernel());
        let claimed = pool(&p, "10.77.0.0/24").await;
        address(&p, &claimed, "10.77.0.1", true).await;
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        // Another driver's network using rustvlan's IPAM: never claimed.
        let foreign = pool(&p, "10.88.0.0/24").await;
        address(&p, &foreign, "10.88.0.1", true).await;
        address(&p, &foreign, "10.88.0.7", false).await;
        // The network goes but dockerd never released its pool.
        p.driver.delete_network(NET_A).await.unwrap();
        let now = p.ipam.sweep(true).await.unwrap();
        assert_eq!(now.pools_reclaimed, vec![claimed.clone()]);
        assert!(now.addresses_reclaimed.is_empty());
        assert_eq!(allocated(&p), vec!["10.88.0.1", "10.88.0.7"]);
        p.ipam.release_pool(&foreign).await.unwrap();
    }

    #[tokio::test]
    async fn the_same_subnet_on_two_parents_claims_two_pools() {
        let dir = test_store();
        let p = open(&dir, kernel());
        let a = pool(&p, "10.77.0.0/24").await;
        address(&p, &a, "10.77.0.1", true).await;
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        let b = pool(&p, "10.77.0.0/24").await;
        address(&p, &b, "10.77.0.1", true).await;
        p.driver
            .create_network(network(
                NET_B,
                json!({"parent": "eth1"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        let state = p.ledger.state();
        let claims: Vec<Option<&str>> = state.ipam.pools().map(|p| p.record.claimed_by.as_deref()).collect();
        assert_eq!(claims, vec![Some(NET_A), Some(NET_B)]);
    }
}

mod queued_deletes {
    use super::*;

    async fn joined(p: &Plugin<FakeKernel>, ep: &str, address: &str, mac: &str) {
        p.driver
            .create_endpoint(endpoint(NET_A, ep, address, mac))
            .await
            .unwrap();
        p.driver.join(join(NET_A, ep)).await.unwrap();
    }

    #[tokio::test]
    async fn deletes_are_batched_and_names_are_not_reused_meanwhile() {
        let dir = test_store();
        let p = open(&dir, kernel());
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        let ids: Vec<String> = (0..5).map(|n| format!("{n:012}{}", "a".repeat(52))).collect();
        for (n, id) in ids.iter().enumerate() {
            joined(&p, id, &format!("10.77.0.{}/24", n + 2), "").await;
        }
        for id in &ids {
            p.driver.delete_endpoint(&ep_req(NET_A, id)).await.unwrap();
        }
        assert_eq!(p.ledger.state().pending.len(), 5);
        // A new endpoint whose id starts like a queued link's name gets another name.
        let again = format!("{:012}{}", 0, "b".repeat(52));
        p.driver
            .create_endpoint(endpoint(NET_A, &again, "10.77.0.9/24", ""))
            .await
            .unwrap();
        assert_eq!(p.ledger.state().endpoints[&again].link_name, "rv000000000000b");
        assert_eq!(p.driver.process_pending().await.unwrap(), 5);
        assert_eq!(p.ledger.kernel.group_deletes(), 1, "five deletes, one batch");
        assert_eq!(p.ledger.kernel.names(), vec!["eth0", "eth1"]);
    }

    #[tokio::test]
    async fn ids_alike_in_their_first_thirteen_characters_get_random_names() {
        let dir = test_store();
        let p = open(&dir, kernel());
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        let mut names = std::collections::BTreeSet::new();
        for n in 0..4 {
            let id = format!("{}{n:051}", "0".repeat(13));
            p.driver
                .create_endpoint(endpoint(NET_A, &id, &format!("10.77.0.{}/24", n + 2), ""))
                .await
                .unwrap();
            let name = p.ledger.state().endpoints[&id].link_name.clone();
            assert!(name.len() <= 15 && name.starts_with("rv"), "{name}");
            assert!(names.insert(name));
        }
    }

    #[tokio::test]
    async fn a_join_that_a_queued_delete_would_block_waits_for_it() {
        let dir = test_store();
        let p = open(&dir, kernel());
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0", "macvlan_mode": "passthru"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        joined(&p, EP_1, "10.77.0.2/24", "").await;
        p.driver.delete_endpoint(&ep_req(NET_A, EP_1)).await.unwrap();
        // The passthru parent is free again only once the old link is gone.
        joined(&p, EP_2, "10.77.0.3/24", "").await;
        assert!(p.ledger.state().pending.is_empty());
        assert!(p.ledger.kernel.get("rv111111111111").is_none() && p.ledger.kernel.get("rv222222222222").is_some());
    }

    #[tokio::test]
    async fn deletes_queued_before_a_crash_finish_at_start_up() {
        let dir = test_store();
        {
            let p = open(&dir, kernel());
            p.driver
                .create_network(network(
                    NET_A,
                    json!({"parent": "eth0"}),
                    "10.77.0.0/24",
                    "10.77.0.1/24",
                ))
                .await
                .unwrap();
            joined(&p, EP_1, "10.77.0.2/24", "").await;
            p.driver.delete_endpoint(&ep_req(NET_A, EP_1)).await.unwrap();
            // The process dies before the deleter ran.
        }
        let k = kernel();
        let p = open(&dir, k);
        // The link survived the crash (same kernel, new process): re-create it as it was.
        let eth0 = p.ledger.kernel.get("eth0").unwrap().index;
        p.ledger
            .kernel
            .add_child(&ChildLink {
                name: "rv111111111111".into(),
                parent_index: eth0,
                mode: LinkMode::Macvlan {
                    mode: MacvlanMode::Bridge,
                },
                mac: None,
                mtu: None,
                group: p.driver.group,
            })
            .await
            .unwrap();
        assert_eq!(p.ledger.state().pending.len(), 1, "the queue is on disk");
        let report = p.driver.reconcile().await.unwrap();
        assert_eq!(report.pending_deletes_finished, 1);
        assert!(
            report.orphan_links_deleted.is_empty(),
            "a queued link is not an orphan: {:?}",
            report.orphan_links_deleted
        );
        assert!(p.ledger.kernel.get("rv111111111111").is_none());
        assert!(p.ledger.state().pending.is_empty());
    }
}

#[tokio::test]
async fn join_finds_a_parent_that_was_made_again() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0.10"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
        .await
        .unwrap();
    p.driver.join(join(NET_A, EP_1)).await.unwrap(); // caches the parent's index
    p.ledger.kernel.vanish("eth0.10");
    p.ledger.kernel.vanish("rv111111111111");
    p.driver.reconcile().await.unwrap(); // makes eth0.10 again, with a new index
    p.driver
        .create_endpoint(endpoint(NET_A, EP_2, "10.77.0.3/24", ""))
        .await
        .unwrap();
    p.driver.join(join(NET_A, EP_2)).await.unwrap();
    let vlan = p.ledger.kernel.get("eth0.10").unwrap();
    assert_eq!(
        p.ledger.kernel.get("rv222222222222").unwrap().parent_index,
        Some(vlan.index)
    );
}

#[tokio::test]
async fn gateways_are_skipped_where_containers_get_none() {
    let dir = test_store();
    let p = open(&dir, kernel());
    let check = |generic: Value, internal: bool| {
        let mut options = BTreeMap::new();
        options.insert("com.docker.network.generic".to_string(), generic);
        if internal {
            options.insert("com.docker.network.internal".to_string(), json!(true));
        }
        let needs = p.driver.gateway_needs(&options).unwrap();
        assert_eq!(needs.ipv4, needs.ipv6);
        !needs.ipv4
    };
    assert!(
        !check(json!({"parent": "eth0"}), false),
        "a parent and a LAN: a gateway"
    );
    assert!(check(json!({"parent": "eth0"}), true), "--internal: none");
    assert!(check(json!({}), false), "no parent: an isolated dummy, none");
    assert!(
        check(json!({"parent": "eth0", "ipvlan_mode": "l3"}), false),
        "ipvlan l3 routes through the device"
    );
    let err = p
        .driver
        .gateway_needs(&BTreeMap::from([(
            "com.docker.network.generic".to_string(),
            json!({"macvlan_mod": "bridge"}),
        )]))
        .unwrap_err();
    assert!(err.message.contains("did you mean macvlan_mode?"), "{}", err.message);
}

#[tokio::test]
async fn unknown_bare_endpoint_options_are_refused_and_namespaced_ones_ignored() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    let mut req = endpoint(NET_A, EP_1, "10.77.0.2/24", "");
    req.options = BTreeMap::from([("colour".to_string(), json!("blue"))]);
    let err = p.driver.create_endpoint(req).await.unwrap_err();
    assert_eq!(
        err.message,
        "unknown endpoint option colour; valid endpoint options: none (namespaced keys such as com.example.key \
         are accepted and ignored)"
    );
    assert!(p.ledger.state().endpoints.is_empty());
    let mut req = endpoint(NET_A, EP_1, "10.77.0.2/24", "");
    req.options = BTreeMap::from([
        ("com.docker.network.endpoint.ifname".to_string(), json!("foo0")),
        ("com.docker.network.portmap".to_string(), json!([])),
    ]);
    p.driver.create_endpoint(req).await.unwrap();
}

#[tokio::test]
async fn ipv6_only_networks_and_family_mismatches() {
    let dir = test_store();
    let p = open(&dir, kernel());
    let v6_only = |id: &str, enable_ipv4: bool, with_v4: bool| {
        let mut req = network(id, json!({"parent": "eth0"}), "10.79.0.0/24", "10.79.0.1/24");
        req.options
            .insert("com.docker.network.enable_ipv4".into(), json!(enable_ipv4));
        req.options.insert("com.docker.network.enable_ipv6".into(), json!(true));
        if !with_v4 {
            req.ipv4 = vec![];
        }
        req.ipv6 = vec![SubnetSpec {
            address_space: "rustvlan-local".into(),
            pool: "fd00:79::/64".into(),
            gateway: None,
            aux_addresses: BTreeMap::new(),
        }];
        req
    };
    let err = p.driver.create_network(v6_only(NET_A, true, false)).await.unwrap_err();
    assert!(
        err.message.starts_with("IPv4 is enabled but IPv4Data has no subnet"),
        "{}",
        err.message
    );
    let err = p.driver.create_network(v6_only(NET_A, false, true)).await.unwrap_err();
    assert!(err.message.starts_with("IPv4 is disabled"), "{}", err.message);
    assert!(p.ledger.state().networks.is_empty());
    p.driver.create_network(v6_only(NET_A, false, false)).await.unwrap();
    let mut req = endpoint(NET_A, EP_1, "", "");
    req.ipv6 = Some("fd00:79::2/64".into());
    p.driver.create_endpoint(req).await.unwrap();
    let joined = p.driver.join(join(NET_A, EP_1)).await.unwrap();
    assert_eq!(joined.gateway, None);
}

/// `rustvlan status` against the fake kernel: the records beside what the kernel shows.
mod status {
    use super::*;
    use crate::status::{Drift, LinkIs, Observation, Source, StatusReport, observe};

    const SANDBOX: &str = "/var/run/docker/netns/x";

    async fn report(p: &Plugin<FakeKernel>) -> StatusReport {
        let records = p.dump().await.unwrap().records();
        let seen: Observation = observe(&*p.ledger.kernel, &records).await.unwrap();
        StatusReport::build(&records, &seen, Source::Plugin)
    }

    async fn joined_plugin(dir: &TestStore) -> Plugin<FakeKernel> {
        let p = open(dir, kernel());
        p.driver
            .create_network(network(
                NET_A,
                json!({"parent": "eth0"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ))
            .await
            .unwrap();
        p.driver
            .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.2/24", ""))
            .await
            .unwrap();
        let joined = p.driver.join(join(NET_A, EP_1)).await.unwrap();
        p.ledger
            .kernel
            .move_into(&joined.link_name, std::path::Path::new(SANDBOX), "eth0");
        p
    }

    #[tokio::test]
    async fn a_joined_endpoint_is_found_in_its_container_and_nothing_drifts() {
        let dir = test_store();
        let p = joined_plugin(&dir).await;
        let status = report(&p).await;
        assert_eq!(status.drift, vec![], "{}", status.to_text());
        assert_eq!(
            status.endpoints[0].link_is,
            LinkIs::Container {
                sandbox: SANDBOX.into(),
                name: "eth0".into()
            }
        );
        assert_eq!(status.networks[0].endpoints, 1);
        assert!(
            status.pools.is_empty(),
            "the network's pool came from no RequestPool here"
        );
    }

    #[tokio::test]
    async fn leave_forgets_the_sandbox() {
        let dir = test_store();
        let p = joined_plugin(&dir).await;
        p.driver.leave(&ep_req(NET_A, EP_1)).await;
        let records = p.dump().await.unwrap();
        assert_eq!(records.endpoints[EP_1].sandbox, None);
        // dockerd moved the link back: in the host namespace again.
        p.ledger.kernel.remove_namespace(std::path::Path::new(SANDBOX));
        let status = report(&p).await;
        assert_eq!(status.endpoints[0].link_is, LinkIs::NotJoined);
        assert_eq!(status.drift, vec![]);
    }

    #[tokio::test]
    async fn a_link_deleted_in_the_container_is_drift() {
        let dir = test_store();
        let p = joined_plugin(&dir).await;
        p.ledger.kernel.set_namespace(std::path::Path::new(SANDBOX), vec![]);
        let status = report(&p).await;
        assert_eq!(
            status.drift,
            vec![Drift::EndpointLinkGone {
                endpoint: EP_1.into(),
                network: NET_A.into(),
                sandbox: SANDBOX.into()
            }]
        );
        assert_eq!(status.endpoints[0].link_is, LinkIs::Missing);
        assert!(
            status
                .to_text()
                .contains("its link is gone from the container's namespace")
        );
    }

    #[tokio::test]
    async fn another_containers_link_on_the_same_parent_is_not_taken_for_ours() {
        let dir = test_store();
        let p = joined_plugin(&dir).await;
        let mut links = p
            .ledger
            .kernel
            .links_in(std::path::Path::new(SANDBOX))
            .await
            .unwrap()
            .unwrap();
        // Same mark and parent, another MAC: a link of another endpoint.
        links[0].mac = Some(crate::model::MacAddr([2, 0, 0, 0, 0, 9]));
        p.ledger.kernel.set_namespace(std::path::Path::new(SANDBOX), links);
        let status = report(&p).await;
        assert!(
            matches!(status.drift[..], [Drift::EndpointLinkGone { .. }]),
            "{:?}",
            status.drift
        );
    }

    #[tokio::test]
    async fn a_vanished_container_namespace_is_drift() {
        let dir = test_store();
        let p = joined_plugin(&dir).await;
        p.ledger.kernel.remove_namespace(std::path::Path::new(SANDBOX));
        let status = report(&p).await;
        assert!(
            matches!(status.drift[..], [Drift::ContainerGone { .. }]),
            "{:?}",
            status.drift
        );
    }

    #[tokio::test]
    async fn marked_links_nobody_owns_and_missing_parents_are_drift() {
        let dir = test_store();
        let p = joined_plugin(&dir).await;
        let eth0 = p.ledger.kernel.get("eth0").unwrap();
        // rvstray carries the mark; "theirs" is the same kind of link without it:
        // someone else's, not drift.
        for (name, group) in [("rvstray", p.driver.group), ("theirs", 0)] {
            p.ledger
                .kernel
                .add_child(&ChildLink {
                    name: name.into(),
                    parent_index: eth0.index,
                    mode: LinkMode::Macvlan {
                        mode: MacvlanMode::Bridge,
                    },
                    mac: None,
                    mtu: None,
                    group,
                })
                .await
                .unwrap();
        }
        let status = report(&p).await;
        assert_eq!(
            status.drift,
            vec![Drift::OrphanLink {
                link: "rvstray".into(),
                link_kind: "macvlan".into()
            }]
        );
        p.ledger.kernel.vanish("rvstray");
        p.ledger.kernel.vanish("eth0");
        let status = report(&p).await;
        assert_eq!(
            status.drift,
            vec![Drift::ParentMissing {
                parent: "eth0".into(),
                networks: vec![NET_A.into()]
            }]
        );
        assert!(matches!(status.endpoints[0].link_is, LinkIs::Unknown { .. }));
    }

    #[tokio::test]
    async fn drift_seen_only_once_is_not_reported() {
        let dir = test_store();
        let p = joined_plugin(&dir).await;
        p.ledger.kernel.set_namespace(std::path::Path::new(SANDBOX), vec![]);
        let mut first = report(&p).await;
        assert_eq!(first.drift.len(), 1);
        // The container was removed meanwhile: the second look has no such endpoint.
        p.driver.leave(&ep_req(NET_A, EP_1)).await;
        let second = report(&p).await;
        first.confirm_drift(&second);
        assert_eq!(first.drift, vec![]);
    }

    #[test]
    fn pools_count_used_free_and_capacity() {
        let records: crate::dump::StateDump = serde_json::from_value(json!({
            "schema": 1, "next_pool_seq": 2, "default_v6_range": null, "link_group": 7,
            "networks": {}, "endpoints": {}, "parents": {}, "pending_deletes": {},
            "pools": {"rustvlan-local/10.9.0.0/24#1": {
                "address_space": "rustvlan-local", "pool": "10.9.0.0/24", "sub_pool": "10.9.0.128/25",
                "options": {}, "cursor": null,
                "addresses": {"10.9.0.1": "gateway", "10.9.0.130": "allocated"}}}
        }))
        .unwrap();
        let status = StatusReport::build(&records, &Observation::default(), Source::Store);
        let pool = &status.pools[0];
        assert_eq!((pool.used, pool.free, pool.capacity), (2, 252, 254));
    }
}

fn with_host_aux(mut req: NetworkSpec, aux: &str) -> NetworkSpec {
    req.ipv4[0].aux_addresses = [("host".to_string(), aux.to_string())].into();
    req
}

#[tokio::test]
async fn host_access_with_an_aux_address_makes_one_shim_with_routes_and_cleans_up() {
    let dir = test_store();
    let k = kernel();
    k.put_address("eth0", "10.77.0.2/24".parse().unwrap());
    let p = open(&dir, k);
    let req = || {
        network(
            NET_A,
            json!({"parent": "eth0", "host_access": "on"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        )
    };
    // Docker's default IPAM: the host's address comes from --aux-address host=IP.
    let err = p.driver.create_network(req()).await.unwrap_err();
    assert!(err.message.contains("--aux-address host=IP"), "{}", err.message);
    p.driver
        .create_network(with_host_aux(req(), "10.77.0.250/24"))
        .await
        .unwrap();
    let shim = super::host_access::shim_name("eth0");
    assert!(p.ledger.kernel.is_ready_shim(&shim));
    assert_eq!(
        p.ledger.kernel.addresses_of(&shim),
        vec!["10.77.0.250/32".parse().unwrap()]
    );

    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.5/24", ""))
        .await
        .unwrap();
    let answer = p.driver.join(join(NET_A, EP_1)).await.unwrap();
    let routes = serde_json::to_value(join_answer(answer).static_routes).unwrap();
    assert_eq!(
        routes,
        json!([{"Destination": "10.77.0.2/32", "RouteType": 0, "NextHop": "10.77.0.250"}])
    );
    assert_eq!(
        p.ledger.kernel.routes(),
        vec![("10.77.0.5/32".parse().unwrap(), shim.clone())]
    );

    // Start-up reconcile keeps the shim: it is no orphan.
    let report = p.driver.reconcile().await.unwrap();
    assert!(report.orphan_links_deleted.is_empty(), "{report:?}");
    assert!(p.ledger.kernel.get(&shim).is_some());

    p.driver.delete_endpoint(&ep_req(NET_A, EP_1)).await.unwrap();
    assert!(p.ledger.kernel.routes().is_empty());
    p.driver.delete_network(NET_A).await.unwrap();
    assert!(p.ledger.kernel.get(&shim).is_none(), "the last network takes the shim");
}

#[tokio::test]
async fn reconcile_remakes_a_missing_shim_with_its_address_and_routes() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(with_host_aux(
            network(
                NET_A,
                json!({"parent": "eth0", "host_access": "on"}),
                "10.77.0.0/24",
                "10.77.0.1/24",
            ),
            "10.77.0.250/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_endpoint(endpoint(NET_A, EP_1, "10.77.0.5/24", ""))
        .await
        .unwrap();
    p.driver.join(join(NET_A, EP_1)).await.unwrap();
    drop(p);
    // A reboot: no shim, no route, no container link in the host namespace.
    let p = open(&dir, kernel());
    let report = p.driver.reconcile().await.unwrap();
    let shim = super::host_access::shim_name("eth0");
    assert_eq!(report.host_access.shims_recreated, vec![shim.clone()]);
    assert_eq!(
        p.ledger.kernel.addresses_of(&shim),
        vec!["10.77.0.250/32".parse().unwrap()]
    );
    assert_eq!(p.ledger.kernel.routes(), vec![("10.77.0.5/32".parse().unwrap(), shim)]);
}

#[tokio::test]
async fn qinq_outer_vlan_is_shared_and_goes_with_the_last_inner_one() {
    let dir = test_store();
    let p = open(&dir, kernel());
    p.driver
        .create_network(network(
            NET_A,
            json!({"parent": "eth0.100.10"}),
            "10.77.0.0/24",
            "10.77.0.1/24",
        ))
        .await
        .unwrap();
    p.driver
        .create_network(network(
            NET_B,
            json!({"parent": "eth0", "vlan": "100.20"}),
            "10.78.0.0/24",
            "10.78.0.1/24",
        ))
        .await
        .unwrap();
    let outer = p.ledger.kernel.get("eth0.100").expect("outer VLAN made");
    assert_eq!(
        p.ledger.kernel.get("eth0.100.10").unwrap().parent_index,
        Some(outer.index)
    );
    assert_eq!(
        p.ledger.kernel.get("eth0.100.20").unwrap().parent_index,
        Some(outer.index)
    );
    assert_eq!(p.ledger.state().parents.len(), 3);

    p.driver.delete_network(NET_A).await.unwrap();
    assert!(p.ledger.kernel.get("eth0.100.10").is_none());
    assert!(
        p.ledger.kernel.get("eth0.100").is_some(),
        "eth0.100.20 still hangs off it"
    );
    p.driver.delete_network(NET_B).await.unwrap();
    assert!(
        p.ledger.kernel.get("eth0.100").is_none(),
        "gone with the last inner VLAN"
    );
    assert!(p.ledger.state().parents.is_empty());
}

/// What README's "Adding a front-end" says a front-end calls, in that order, with the
/// engine's own types only: pool, gateway, network, address, endpoint, Join, Leave, and
/// the deletes, after which nothing is left.
#[tokio::test]
async fn a_front_end_drives_the_engine_without_docker_json() {
    use crate::ipam::{AddressRequest, PoolRequest};
    use crate::model::Family;
    let dir = test_store();
    let p = open(&dir, kernel());
    let grant = p
        .ipam
        .request_pool(PoolRequest {
            dhcp: false,
            address_space: "rustvlan-local".into(),
            pool: "10.88.0.0/24".into(),
            sub_pool: String::new(),
            options: BTreeMap::new(),
            family: Family::V4,
        })
        .await
        .unwrap();
    let address = |gateway: bool| AddressRequest {
        pool_id: grant.pool_id.clone(),
        address: None,
        gateway,
        options: BTreeMap::new(),
    };
    let options = BTreeMap::from([("com.docker.network.generic".to_string(), json!({"parent": "eth0"}))]);
    assert!(p.driver.gateway_needs(&options).unwrap().ipv4);
    let gateway = p.ipam.request_address(address(true)).await.unwrap();
    let spec = NetworkSpec {
        network_id: NET_A.into(),
        options,
        ipv4: vec![SubnetSpec {
            address_space: "rustvlan-local".into(),
            pool: grant.pool.to_string(),
            gateway: Some(gateway.to_string()),
            aux_addresses: BTreeMap::new(),
        }],
        ipv6: vec![],
        host_address: None,
    };
    p.create_network(spec).await.unwrap();
    let ip = p.ipam.request_address(address(false)).await.unwrap();
    let created = p
        .driver
        .create_endpoint(EndpointSpec {
            network_id: NET_A.into(),
            endpoint_id: EP_1.into(),
            ipv4: Some(ip.to_string()),
            ..EndpointSpec::default()
        })
        .await
        .unwrap();
    let mac = created.chosen_mac.expect("a macvlan endpoint without a MAC gets one");
    let joined = p
        .driver
        .join(JoinSpec {
            endpoint: EndpointRef::new(NET_A, EP_1),
            sandbox: None,
        })
        .await
        .unwrap();
    assert_eq!(joined.gateway, Some(gateway.ip()));
    let link = p.ledger.kernel.get(&joined.link_name).expect("Join made the link");
    assert_eq!(link.mac, Some(mac));
    let endpoint = EndpointRef::new(NET_A, EP_1);
    p.driver.leave(&endpoint).await;
    p.driver.delete_endpoint(&endpoint).await.unwrap();
    p.ipam.release_address(&grant.pool_id, ip.ip()).await.unwrap();
    p.driver.delete_network(NET_A).await.unwrap();
    p.ipam.release_address(&grant.pool_id, gateway.ip()).await.unwrap();
    p.ipam.release_pool(&grant.pool_id).await.unwrap();
    p.driver.process_pending().await.unwrap();
    let state = p.ledger.state();
    assert!(state.networks.is_empty() && state.endpoints.is_empty() && state.pending.is_empty());
    assert_eq!(state.ipam.pools().count(), 0);
    assert!(p.ledger.kernel.get(&joined.link_name).is_none(), "the link is gone");
}
