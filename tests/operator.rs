//! The operator's view against the real kernel: `rustvlan status` (exit 0 when the
//! kernel agrees, 1 with the drift named when it does not, with or without a running
//! plugin) and the metrics on the plugin's socket and on `--metrics-listen`.
//!
//! The plugin runs in a namespace of its own (the "host"); a second namespace plays the
//! container, and the test moves the endpoint's link into it as dockerd does at Join.

mod common;

use std::process::{Command, Output};

use common::{BIN, Netns, Server, TempDir, check, require_root, run};
use rustvlan::status::{Drift, LinkIs, StatusReport};
use serde_json::json;

const NET: &str = "0be7a7025c0be7a7025c0be7a7025c0be7a7025c0be7a7025c0be7a7025c0be7";
const EP: &str = "e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1e9d1";

fn status(s: &Server, json: bool) -> Output {
    let mut cmd = s.command();
    cmd.arg("status")
        .arg("--socket")
        .arg(&s.socket)
        .arg("--state-dir")
        .arg(&s.state_dir);
    if json {
        cmd.arg("--json");
    }
    run(&mut cmd)
}

/// `rustvlan status --json` and its exit code.
fn report(s: &Server) -> (i32, StatusReport) {
    let out = status(s, true);
    let code = out.status.code().expect("exited");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json printed no report ({e}); exit {code}, stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, report)
}

fn text(s: &Server) -> (i32, String) {
    let out = status(s, false);
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The plugin's "host" namespace with the parent vp0, the "container" namespace, and
/// a directory for the plugin.
fn namespaces() -> (Netns, Netns, TempDir) {
    let host = Netns::new();
    host.veth("vp0", "vp0peer");
    (host, Netns::new(), TempDir::new())
}

/// A network with one endpoint, joined and moved into `sandbox` as eth0.
fn joined(s: &Server, host: &Netns, sandbox: &Netns) -> String {
    let pool = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "10.61.0.0/24", "SubPool": "", "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    s.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "10.61.0.1", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    s.ok(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "IPv4Data": [{"AddressSpace": "rustvlan-local", "Pool": "10.61.0.0/24", "Gateway": "10.61.0.1/24"}],
               "Options": {"com.docker.network.generic": {"parent": "vp0"}}}),
    );
    let address = s.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": null}),
    );
    s.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": address["Address"], "MacAddress": ""}}),
    );
    let join = s.ok(
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": sandbox.path()}),
    );
    let link = join["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
    host.ip(&["link", "set", &link, "netns", &sandbox.name]);
    sandbox.ip(&["link", "set", &link, "name", "eth0"]);
    pool_id
}

#[test]
fn status_is_clean_until_the_kernel_disagrees() {
    if !require_root() {
        return;
    }
    let (host, sandbox, dir) = namespaces();
    let mut s = Server::start(Some(&host), dir.path());
    let pool_id = joined(&s, &host, &sandbox);

    // Clean: exit 0, the endpoint found in its container under dockerd's name.
    let (code, clean) = report(&s);
    assert_eq!((code, &clean.drift), (0, &vec![]), "{}", clean.to_text());
    assert_eq!(
        clean.endpoints[0].link_is,
        LinkIs::Container {
            sandbox: sandbox.path().display().to_string(),
            name: "eth0".into()
        }
    );
    let pool = clean.pools.iter().find(|p| p.id == pool_id).unwrap();
    assert_eq!((pool.used, pool.free, pool.capacity), (2, 252, 254));
    let (code, screen) = text(&s);
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("DRIFT: none"), "{screen}");
    common::report(&format!("rustvlan status, clean:\n{screen}"));

    // A link with rustvlan's mark that no record owns, made behind its back.
    let group = s.state().link_group.to_string();
    host.ip(&[
        "link", "add", "rvstray", "link", "vp0", "group", &group, "type", "macvlan", "mode", "bridge",
    ]);
    let (code, drifted) = report(&s);
    assert_eq!(code, 1, "{}", drifted.to_text());
    assert_eq!(
        drifted.drift,
        vec![Drift::OrphanLink {
            link: "rvstray".into(),
            link_kind: "macvlan".into()
        }]
    );
    let (_, screen) = text(&s);
    assert!(screen.contains("orphan link rvstray"), "{screen}");
    host.ip(&["link", "del", "rvstray"]);
    assert_eq!(report(&s).0, 0);

    // The endpoint's link deleted inside the container, behind rustvlan's back.
    sandbox.ip(&["link", "del", "eth0"]);
    let (code, drifted) = report(&s);
    assert_eq!(code, 1, "{}", drifted.to_text());
    assert_eq!(
        drifted.drift,
        vec![Drift::EndpointLinkGone {
            endpoint: EP.into(),
            network: NET.into(),
            sandbox: sandbox.path().display().to_string()
        }]
    );
    let (_, screen) = text(&s);
    assert!(
        screen.contains("its link is gone from the container's namespace"),
        "{screen}"
    );
    common::report(&format!("rustvlan status, a link deleted behind its back:\n{screen}"));

    // With no plugin running, status reads the store and still sees it.
    s.terminate();
    let (code, offline) = report(&s);
    assert_eq!(code, 1, "{}", offline.to_text());
    assert_eq!(offline.source, rustvlan::status::Source::Store);
    assert_eq!(offline.drift, drifted.drift);
}

#[test]
fn status_fails_with_exit_2_when_it_cannot_check() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new();
    let out = run(Command::new(BIN)
        .args(["status", "--socket"])
        .arg(dir.path().join("none.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("nothing")));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("there is no rustvlan store in"), "{stderr}");
}

/// A metric's value in the text exposition: the line starting with `series`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[test]
fn metrics_count_requests_and_read_pools_from_the_state() {
    if !require_root() {
        return;
    }
    let (host, sandbox, dir) = namespaces();
    let mut s = Server::start(Some(&host), dir.path());
    s.terminate();
    // Port 0: the kernel picks one; the log says which.
    s.extra_args = vec!["--metrics-listen".into(), "127.0.0.1:0".into()];
    s.restart();
    let pool_id = joined(&s, &host, &sandbox);
    // A refused call counts under its outcome.
    let (code, _) = s.post(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": "unknown", "EndpointID": EP, "Interface": {}}),
    );
    assert_eq!(code, 404);

    let socket_text = check(s.command().arg("metrics").arg("--socket").arg(&s.socket));
    let pool_labels = format!(r#"{{pool="{pool_id}",subnet="10.61.0.0/24",network="{}"}}"#, &NET[..12]);
    for (series, expected) in [
        ("rustvlan_endpoints ", 1.0),
        (r#"rustvlan_networks{kind="macvlan",mode="bridge"} "#, 1.0),
        (&format!("rustvlan_pool_allocated_addresses{pool_labels} "), 2.0),
        (&format!("rustvlan_pool_capacity_addresses{pool_labels} "), 254.0),
        (
            r#"rustvlan_requests_total{call="NetworkDriver.Join",outcome="ok"} "#,
            1.0,
        ),
        (
            r#"rustvlan_requests_total{call="NetworkDriver.CreateEndpoint",outcome="not_found"} "#,
            1.0,
        ),
        (
            r#"rustvlan_request_duration_seconds_count{call="IpamDriver.RequestAddress"} "#,
            2.0,
        ),
        (r#"rustvlan_link_operations_total{op="add_child",outcome="ok"} "#, 1.0),
        ("rustvlan_links_pending_delete ", 0.0),
    ] {
        assert_eq!(
            value(&socket_text, series),
            Some(expected),
            "{series}in:\n{socket_text}"
        );
    }
    assert!(value(&socket_text, "rustvlan_store_commit_duration_seconds_count ").unwrap() >= 1.0);
    assert!(value(&socket_text, "rustvlan_process_start_time_seconds ").unwrap() > 1.7e9);

    // The TCP listener: the same metrics, and never the plugin API.
    let log = s.log_text();
    let addr = log
        .lines()
        .rev()
        .find_map(|l| l.split("metrics=Some(").nth(1))
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string();
    let url = format!("http://{addr}/metrics");
    let tcp_text = String::from_utf8(host.exec(&["curl", "-sf", &url]).stdout).unwrap();
    assert_eq!(
        value(&tcp_text, "rustvlan_endpoints "),
        Some(1.0),
        "{url} answered:\n{tcp_text}"
    );
    let api = host.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("http://{addr}/Plugin.Activate"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&api.stdout),
        "404",
        "the plugin API must not be on TCP"
    );
}

#[test]
fn a_taken_metrics_port_stops_start_up_with_the_fix() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(Command::new(BIN)
        .args(["serve", "--metrics-listen", &addr, "--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state")));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen for metrics on {addr}; choose another --metrics-listen"
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("s.sock").exists(), "no socket is left behind");
    let out = run(Command::new(BIN).args(["serve", "--metrics-listen", "localhost:9477"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an address and port like 127.0.0.1:9477"));
}
