//! Reliability suite 5: property-based fuzzing of every endpoint of an in-process server
//! (the real router, driver, IPAM and sled store; a fake kernel, since no link work
//! should be reached with garbage, and a real one would need root). 100 000 generated
//! bodies: random bytes, random JSON, and dockerd's own requests with fields swapped for
//! hostile values. Every answer must come within a second, be a JSON object, and carry
//! the right error key; nothing may panic; afterwards memory and disk still agree.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rustvlan::kernel::fake::FakeKernel;
use rustvlan::plugin::Plugin;
use rustvlan::store::{PoolDefaults, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

const CASES: u32 = 100_000;

/// Every route, with a well-formed body dockerd could send (mutated below).
fn templates() -> Vec<(&'static str, Value)> {
    let net = "f0".repeat(32);
    let ep = "e0".repeat(32);
    let pool = "rustvlan-local/10.20.0.0/24#1";
    vec![
        ("/Plugin.Activate", json!({})),
        ("/NetworkDriver.GetCapabilities", json!({})),
        (
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": net, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "10.20.0.0/24", "Gateway": "10.20.0.1/24", "AuxAddresses": {"a": "10.20.0.5/24"}}],
                   "IPv6Data": [], "Options": {"com.docker.network.generic": {"parent": "eth0", "macvlan_mode": "bridge"}, "com.docker.network.enable_ipv6": false}}),
        ),
        (
            "/NetworkDriver.GwAllocCheck",
            json!({"Options": {"com.docker.network.generic": {"parent": "eth0"}, "com.docker.network.internal": true}}),
        ),
        ("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net})),
        (
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": "10.20.0.2/24", "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
        ),
        (
            "/NetworkDriver.EndpointOperInfo",
            json!({"NetworkID": net, "EndpointID": ep}),
        ),
        (
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": net, "EndpointID": ep}),
        ),
        (
            "/NetworkDriver.Join",
            json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": "/x", "Options": {}}),
        ),
        ("/NetworkDriver.Leave", json!({"NetworkID": net, "EndpointID": ep})),
        (
            "/NetworkDriver.ProgramExternalConnectivity",
            json!({"NetworkID": net, "EndpointID": ep, "Options": {}}),
        ),
        (
            "/NetworkDriver.RevokeExternalConnectivity",
            json!({"NetworkID": net, "EndpointID": ep}),
        ),
        (
            "/NetworkDriver.DiscoverNew",
            json!({"DiscoveryType": 1, "DiscoveryData": {}}),
        ),
        (
            "/NetworkDriver.DiscoverDelete",
            json!({"DiscoveryType": 1, "DiscoveryData": {}}),
        ),
        (
            "/NetworkDriver.AllocateNetwork",
            json!({"NetworkID": net, "Options": {}, "IPv4Data": [], "IPv6Data": []}),
        ),
        ("/NetworkDriver.FreeNetwork", json!({"NetworkID": net})),
        ("/IpamDriver.GetCapabilities", json!({})),
        ("/IpamDriver.GetDefaultAddressSpaces", json!({})),
        (
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "rustvlan-local", "Pool": "10.20.0.0/24", "SubPool": "10.20.0.128/25", "Options": {}, "V6": false}),
        ),
        ("/IpamDriver.ReleasePool", json!({"PoolID": pool})),
        (
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool, "Address": "", "Options": null}),
        ),
        (
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID": pool, "Address": "10.20.0.2"}),
        ),
        ("/Rustvlan.State", json!({})),
        ("/NoSuch.Method", json!({})),
    ]
}

/// Values dockerd never sends, and some it does.
fn hostile_value() -> impl Strategy<Value = Value> {
    let strings = prop_oneof![
        Just(String::new()),
        Just("10.20.0.0/24".to_string()),
        Just("10.20.0.1/24".to_string()),
        Just("10.20.0.255".to_string()),
        Just("0.0.0.0/0".to_string()),
        Just("::/0".to_string()),
        Just("fd00::/64".to_string()),
        Just("fd00::1/128".to_string()),
        Just("10.20.0.0/33".to_string()),
        Just("256.1.1.1".to_string()),
        Just("eth0.4095".to_string()),
        Just("eth0.10".to_string()),
        Just("a".repeat(300)),
        Just("../../etc/passwd".to_string()),
        Just("ff:ff:ff:ff:ff:ff".to_string()),
        Just("02:00:00:00:00:01".to_string()),
        Just("rustvlan-local/10.20.0.0/24#1".to_string()),
        Just("rustvlan-local/10.20.0.0/24#18446744073709551615".to_string()),
        Just("rustvlan-local/10.20.0.0/24#".to_string()),
        Just("#1".to_string()),
        Just("passthru".to_string()),
        Just("l3s".to_string()),
        Just("\u{0}\u{1f}\u{feff}".to_string()),
        "\\PC{0,20}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        Just(json!(u64::MAX)),
        strings.prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces one field somewhere in `body` (top level or one level down) with `value`.
fn mutate(mut body: Value, pick: usize, value: Value, drop_it: bool) -> Value {
    let Value::Object(map) = &mut body else { return body };
    if map.is_empty() {
        map.insert("Unexpected".into(), value);
        return body;
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    let key = &keys[pick % keys.len()];
    if drop_it {
        map.remove(key);
        return body;
    }
    match map.get_mut(key) {
        Some(Value::Object(inner)) if !inner.is_empty() && pick.is_multiple_of(2) => {
            let inner_keys: Vec<String> = inner.keys().cloned().collect();
            let k = inner_keys[(pick / 2) % inner_keys.len()].clone();
            inner.insert(k, value);
        }
        Some(Value::Array(items)) if !items.is_empty() && pick.is_multiple_of(2) => {
            if let Some(Value::Object(first)) = items.first_mut()
                && !first.is_empty()
            {
                let inner_keys: Vec<String> = first.keys().cloned().collect();
                let k = inner_keys[(pick / 2) % inner_keys.len()].clone();
                first.insert(k, value);
            } else {
                items[0] = value;
            }
        }
        _ => {
            map.insert(key.clone(), value);
        }
    }
    body
}

#[derive(Debug, Clone)]
enum FuzzBody {
    Bytes(Vec<u8>),
    Json(Value),
    Mutated { pick: usize, value: Value, drop_it: bool },
    Valid,
}

fn case() -> impl Strategy<Value = (usize, FuzzBody)> {
    let routes = templates().len();
    let body = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(FuzzBody::Bytes),
        2 => hostile_value().prop_map(FuzzBody::Json),
        6 => (any::<usize>(), hostile_value(), prop::bool::weighted(0.15))
            .prop_map(|(pick, value, drop_it)| FuzzBody::Mutated { pick, value, drop_it }),
        1 => Just(FuzzBody::Valid),
    ];
    (0..routes, body)
}

#[test]
fn a_hundred_thousand_generated_bodies() {
    let dir = std::env::temp_dir().join(format!("rustvlan-fuzz-{}", std::process::id()));
    // tmpfs when there is one: the store flushes after every change.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::Path::new("/dev/shm").join(dir.file_name().unwrap())
    } else {
        dir
    };
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (router, plugin) = runtime.block_on(async {
        let store = Arc::new(Store::open(&dir).unwrap());
        let defaults = PoolDefaults {
            v4_range: "10.123.0.0/16".parse().unwrap(),
            v4_prefix: 24,
        };
        let (state, loaded) = store.load(&defaults).unwrap();
        let kernel = FakeKernel::new();
        kernel.add_nic("eth0", 1500);
        let plugin = Arc::new(Plugin::new(state, store, kernel, loaded.link_group));
        (rustvlan::api::router(Arc::clone(&plugin)), plugin)
    });
    let templates = templates();
    let statuses: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |(route, body)| {
        let (path, template) = &templates[route];
        let bytes = match body {
            FuzzBody::Bytes(b) => b,
            FuzzBody::Json(v) => v.to_string().into_bytes(),
            FuzzBody::Mutated { pick, value, drop_it } => {
                mutate(template.clone(), pick, value, drop_it).to_string().into_bytes()
            }
            FuzzBody::Valid => template.to_string().into_bytes(),
        };
        let request = Request::post(*path).body(Body::from(bytes.clone())).unwrap();
        let (status, answer) = runtime.block_on(async {
            let response = tokio::time::timeout(Duration::from_secs(1), router.clone().oneshot(request))
                .await
                .map_err(|_| TestCaseError::fail(format!("{path}: no answer within 1 s")))?
                .unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, TestCaseError>((status, body))
        })?;
        let slot = match status {
            200 => 0,
            400 => 1,
            404 => 2,
            405 | 413 => 3,
            409 => 4,
            _ => 5,
        };
        statuses[slot].fetch_add(1, Ordering::Relaxed);
        let value: Value = serde_json::from_slice(&answer).map_err(|e| {
            TestCaseError::fail(format!(
                "{path} {}: answer is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes),
                answer
            ))
        })?;
        prop_assert!(value.is_object(), "{path}: answer is not an object: {value}");
        prop_assert!(
            matches!(status, 200 | 400 | 404 | 409 | 413 | 500),
            "{path}: unexpected status {status}"
        );
        if status == 200 {
            prop_assert!(
                value.get("Err").is_none() && value.get("Error").is_none(),
                "{path}: 200 with an error: {value}"
            );
        } else {
            let err = value["Err"].as_str().unwrap_or("");
            prop_assert!(!err.is_empty(), "{path}: {status} without Err: {value}");
            if path.starts_with("/IpamDriver.") {
                prop_assert_eq!(&value["Error"], &value["Err"], "{}: IPAM error without Error", path);
            }
            prop_assert!(
                status != 500,
                "{path}: a 500 from garbage means a bug or a kernel call: {value}"
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Memory and disk still agree: what a restart would load is what was served.
    let served = runtime.block_on(plugin.dump()).unwrap();
    drop(router);
    drop(plugin);
    let counts: Vec<u64> = statuses.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let reopened = loop {
        match Store::open(&dir) {
            Ok(s) => break s,
            Err(e) if format!("{e}").contains("could not acquire lock") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    let on_disk = rustvlan::dump::StateDump::of_records(&reopened.records().unwrap());
    let served = rustvlan::dump::StateDump {
        kernel: None,
        unbound_addresses: None,
        ..served
    };
    assert_eq!(on_disk, served, "the store and memory disagree after fuzzing");
    let _ = std::fs::remove_dir_all(&dir);
    common::report(&format!(
        "fuzz: bodies={CASES} routes={} panics=0 hangs=0 non_json_answers=0 wrong_error_keys=0 answers: 200={} 400={} 404={} 405/413={} 409={} other={}",
        templates.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5]
    ));
}
