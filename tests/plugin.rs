//! rustvlan as a Docker managed plugin: `docker plugin create` from the directory
//! scripts/build-plugin.sh makes (RUSTVLAN_PLUGIN_DIR), push and install through a local
//! registry (RUSTVLAN_REGISTRY, Debian's docker-registry), the short driver name, upgrade,
//! and a fast `disable -f`. scripts/test.sh provides all three (with dockerd).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::docker::{Scene, docker, docker_ok, host_links, ipv4_of, pings, remove_network, require_dockerd};
use common::{BIN, check, mark_ran, report, settle};
use rustvlan::dump::StateDump;
use serde_json::{Value, json};

/// Where the managed plugin also answers, so dockerd finds it as plain `rustvlan`.
const SHORT_NAME_SOCKET: &str = "/run/docker/plugins/rustvlan.sock";

/// Plugins are global to dockerd: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// An input the test cannot do without: outside CI its absence skips, in CI it fails.
fn required_env(name: &str, what: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("RUSTVLAN_CI").is_some() => {
            panic!("{name} ({what}) is not set, and RUSTVLAN_CI forbids skipping the plugin suite")
        }
        _ => {
            eprintln!("SKIPPED: {name} ({what}) is not set; scripts/test.sh sets it");
            None
        }
    }
}

fn plugin_dir() -> Option<PathBuf> {
    required_env("RUSTVLAN_PLUGIN_DIR", "the directory scripts/build-plugin.sh made").map(PathBuf::from)
}

/// A plugin removed (disabled by force first) on drop, even when the test fails.
struct InstalledPlugin(String);

impl Drop for InstalledPlugin {
    fn drop(&mut self) {
        let _ = docker(&["plugin", "disable", "-f", &self.0]);
        let _ = docker(&["plugin", "rm", "-f", &self.0]);
    }
}

/// `rustvlan state --json` through the short-name socket, records only.
fn state_records() -> StateDump {
    let out = check(Command::new(BIN).args([
        "state",
        "--json",
        "--socket",
        SHORT_NAME_SOCKET,
        "--state-dir",
        "/nonexistent",
    ]));
    let dump: StateDump = serde_json::from_str(&out).unwrap();
    dump.records()
}

fn wait_for_short_name_socket() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new(BIN)
        .args(["state", "--socket", SHORT_NAME_SOCKET, "--state-dir", "/nonexistent"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the plugin never answered on {SHORT_NAME_SOCKET}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn timed_disable(name: &str) -> Duration {
    let started = Instant::now();
    docker_ok(&["plugin", "disable", "-f", name]);
    started.elapsed()
}

/// A second build for `docker plugin upgrade`: the same rootfs with its own config.
fn second_build(dir: &Path) -> PathBuf {
    let v2 = dir.with_file_name(format!("{}-v2", dir.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::remove_dir_all(&v2);
    check(Command::new("cp").arg("-a").arg(dir).arg(&v2));
    let config = v2.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["description"] = json!(format!("{} (second build)", c["description"].as_str().unwrap()));
    std::fs::write(&config, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    v2
}

#[test]
fn created_plugin_serves_both_names_and_disables_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require_dockerd() {
        return;
    }
    let Some(dir) = plugin_dir() else { return };
    let name = "rustvlan/rustvlan";
    let tagged = "rustvlan/rustvlan:latest";
    let _ = docker(&["plugin", "rm", "-f", name]);
    docker_ok(&["plugin", "create", name, dir.to_str().unwrap()]);
    let plugin = InstalledPlugin(name.to_string());
    docker_ok(&["plugin", "enable", name]);
    wait_for_short_name_socket();
    let links_before = host_links();

    let mut scene = Scene::new("m");
    scene.network_with(
        tagged,
        "rvnet-tagged",
        &["--subnet", "10.92.0.0/24", "-o", &format!("parent={}", scene.veth)],
    );
    let a1 = scene.run("rv-e2e-m1", "rvnet-tagged", &[]);
    let a2 = scene.run("rv-e2e-m2", "rvnet-tagged", &[]);
    assert!(pings(&a1, &ipv4_of(&a2)), "tagged name: containers ping");
    let driver = docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{.Driver}} {{.IPAM.Driver}}",
        "rvnet-tagged",
    ]);
    assert_eq!(driver, format!("{tagged} {tagged}"));

    let mut short = Scene::new("n");
    short.network(
        "rvnet-short",
        &["--subnet", "10.93.0.0/24", "-o", &format!("parent={}", short.veth)],
    );
    let b1 = short.run("rv-e2e-n1", "rvnet-short", &[]);
    let b2 = short.run("rv-e2e-n2", "rvnet-short", &[]);
    assert!(pings(&b1, &ipv4_of(&b2)), "short name: containers ping");
    assert_eq!(
        docker_ok(&["network", "inspect", "-f", "{{.Driver}}", "rvnet-short"]),
        "rustvlan"
    );
    let records = state_records();
    assert_eq!(records.networks.len(), 2, "one plugin serves both names");

    scene.rm_containers();
    short.rm_containers();
    for n in ["rvnet-tagged", "rvnet-short"] {
        remove_network(n);
    }
    scene.networks.clear();
    short.networks.clear();
    let expected: std::collections::BTreeSet<String> = links_before
        .iter()
        .cloned()
        .chain([
            scene.veth.clone(),
            format!("{}p", scene.veth),
            short.veth.clone(),
            format!("{}p", short.veth),
        ])
        .collect();
    settle(state_records);
    assert_eq!(host_links(), expected, "no link left behind");
    assert!(state_records().networks.is_empty());

    let took = timed_disable(name);
    report(&format!(
        "managed plugin: docker plugin disable -f took {:.0} ms",
        took.as_secs_f64() * 1000.0
    ));
    assert!(took < Duration::from_secs(1), "disable -f took {took:?}");
    assert!(
        !Path::new(SHORT_NAME_SOCKET).exists(),
        "the short-name socket goes with the plugin"
    );
    drop(plugin);
    mark_ran(
        "RUSTVLAN_E2E_MARKER",
        "created_plugin_serves_both_names_and_disables_at_once",
    );
}

/// The Dockerfile's `prebuilt` stage (its from-source stage needs a rust image from a
/// registry this machine cannot reach) gives the same rootfs, and a working plugin.
#[test]
fn dockerfile_builds_a_plugin_rootfs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require_dockerd() {
        return;
    }
    let Some(dir) = plugin_dir() else { return };
    let repo = env!("CARGO_MANIFEST_DIR");
    let image = "rustvlan-rootfs:test";
    docker_ok(&["build", "-q", "--target", "prebuilt", "-t", image, repo]);
    let container = docker_ok(&["create", image]);
    let built = common::TempDir::new();
    let rootfs = built.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let mut export = Command::new(common::docker::docker_cli())
        .args(["export", &container])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&rootfs)
        .stdin(export.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(
        export.wait().unwrap().success() && untar.success(),
        "docker export | tar -x"
    );
    docker_ok(&["rm", &container]);
    let _ = docker(&["rmi", image]);
    assert_eq!(
        std::fs::read(rootfs.join("rustvlan")).unwrap(),
        std::fs::read(dir.join("rootfs/rustvlan")).unwrap(),
        "the same binary as scripts/build-plugin.sh's"
    );
    for d in ["run/docker/plugins", "var/lib/rustvlan", "host-plugins"] {
        assert!(rootfs.join(d).is_dir(), "{d} in the rootfs");
    }
    std::fs::copy(
        env!("CARGO_MANIFEST_DIR").to_string() + "/config.json",
        built.path().join("config.json"),
    )
    .unwrap();
    let name = "rustvlan/from-dockerfile";
    let _ = docker(&["plugin", "rm", "-f", name]);
    docker_ok(&["plugin", "create", name, built.path().to_str().unwrap()]);
    let plugin = InstalledPlugin(name.to_string());
    docker_ok(&["plugin", "enable", name]);
    let tagged = format!("{name}:latest");
    let mut scene = Scene::new("f");
    scene.network_with(
        &tagged,
        "rvnet-df",
        &["--subnet", "10.96.0.0/24", "-o", &format!("parent={}", scene.veth)],
    );
    let c = scene.run("rv-e2e-f1", "rvnet-df", &[]);
    assert!(ipv4_of(&c).starts_with("10.96.0."));
    scene.rm_containers();
    remove_network("rvnet-df");
    scene.networks.clear();
    drop(plugin);
    mark_ran("RUSTVLAN_E2E_MARKER", "dockerfile_builds_a_plugin_rootfs");
}

#[test]
fn registry_install_and_upgrade_keep_networks_endpoints_and_addresses() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require_dockerd() {
        return;
    }
    let Some(dir) = plugin_dir() else { return };
    let Some(registry) = required_env("RUSTVLAN_REGISTRY", "a registry such as 127.0.0.1:5000") else {
        return;
    };
    // dockerd treats localhost registries as insecure, so plain HTTP works.
    let port = registry.rsplit(':').next().unwrap();
    let name = format!("localhost:{port}/rustvlan");
    let latest = format!("{name}:latest");
    let v2 = format!("{name}:v2");
    for n in [&name, &v2] {
        let _ = docker(&["plugin", "rm", "-f", n]);
    }
    // Publish two builds, then forget them locally.
    docker_ok(&["plugin", "create", &name, dir.to_str().unwrap()]);
    docker_ok(&["plugin", "push", &name]);
    docker_ok(&["plugin", "rm", &name]);
    let dir2 = second_build(&dir);
    docker_ok(&["plugin", "create", &v2, dir2.to_str().unwrap()]);
    docker_ok(&["plugin", "push", &v2]);
    docker_ok(&["plugin", "rm", &v2]);
    let manifest = check(Command::new("curl").args([
        "-fsS",
        "-H",
        "Accept: application/vnd.docker.distribution.manifest.v2+json",
        &format!("http://{registry}/v2/rustvlan/manifests/latest"),
    ]));
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    let layer: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    report(&format!(
        "managed plugin: compressed layer {layer} bytes ({:.2} MiB)",
        layer as f64 / 1048576.0
    ));

    // Pools with a subnet are shared through a real etcd; the host id is left empty,
    // so the plugin takes the host's machine id (mounted from /etc/machine-id).
    let etcd = common::etcd::Cluster::start(1);
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap().trim().to_string();
    let etcd_get = |key: String, flag: &str| {
        let out = etcd.etcdctl(&["get", flag, &key]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let live = || !etcd_get(format!("/rustvlan/v1/hosts/{machine_id}"), "--print-value-only").is_empty();
    let claims = || {
        let keys = etcd_get(format!("/rustvlan/v1/byhost/{machine_id}/"), "--prefix");
        keys.lines().filter(|l| l.starts_with("/rustvlan/")).count()
    };
    docker_ok(&[
        "plugin",
        "install",
        "--grant-all-permissions",
        &name,
        &format!("RUSTVLAN_ETCD_ENDPOINTS={}", etcd.endpoints()),
    ]);
    let plugin = InstalledPlugin(name.clone());
    wait_for_short_name_socket();
    assert!(live(), "the plugin announced the machine id to etcd");

    let mut short = Scene::new("r");
    short.network(
        "rvnet-reg",
        &["--subnet", "10.94.0.0/24", "-o", &format!("parent={}", short.veth)],
    );
    let c1 = short.run("rv-e2e-r1", "rvnet-reg", &[]);
    let c2 = short.run("rv-e2e-r2", "rvnet-reg", &[]);
    let (ip1, ip2) = (ipv4_of(&c1), ipv4_of(&c2));
    assert!(pings(&c1, &ip2), "short name after install: containers ping");
    let mut tagged = Scene::new("t");
    tagged.network_with(
        &latest,
        "rvnet-reg-tagged",
        &["--subnet", "10.95.0.0/24", "-o", &format!("parent={}", tagged.veth)],
    );
    let t1 = tagged.run("rv-e2e-t1", "rvnet-reg-tagged", &[]);
    let t2 = tagged.run("rv-e2e-t2", "rvnet-reg-tagged", &[]);
    assert!(pings(&t1, &ipv4_of(&t2)), "tagged name after install: containers ping");

    assert_eq!(claims(), 4, "the four containers' addresses are claimed in etcd");

    // Upgrade under running containers.
    let before = state_records();
    let took = timed_disable(&name);
    assert!(live(), "stopped with containers' addresses held, the host stays live");
    report(&format!(
        "managed plugin: disable -f before upgrade took {:.0} ms",
        took.as_secs_f64() * 1000.0
    ));
    assert!(took < Duration::from_secs(1), "disable -f took {took:?}");
    docker_ok(&[
        "plugin",
        "upgrade",
        "--grant-all-permissions",
        "--skip-remote-check",
        &name,
        &v2,
    ]);
    docker_ok(&["plugin", "enable", &name]);
    wait_for_short_name_socket();
    let reference = docker_ok(&["plugin", "inspect", "-f", "{{.PluginReference}}", &name]);
    assert!(reference.ends_with(":v2"), "upgraded to the second build: {reference}");
    assert_eq!(
        state_records(),
        before,
        "networks, endpoints and addresses survive the upgrade"
    );
    assert!(live(), "the upgraded plugin took its own record over");
    assert!(
        pings(&c1, &ip2) && pings(&c2, &ip1),
        "running containers keep their network"
    );

    // A container from before the upgrade is removed cleanly; a new one gets a fresh address.
    let links_before_rm = host_links();
    docker_ok(&["rm", "-f", &c1]);
    settle(state_records);
    assert_eq!(host_links(), links_before_rm, "no link leaked by the removal");
    let after_rm = state_records();
    assert_eq!(after_rm.endpoints.len(), 3, "its endpoint is gone");
    let c3 = short.run("rv-e2e-r3", "rvnet-reg", &[]);
    let ip3 = ipv4_of(&c3);
    assert!(ip3 != ip1 && ip3 != ip2, "{ip3} is fresh (before: {ip1}, {ip2})");
    assert!(pings(&c3, &ip2));

    short.rm_containers();
    tagged.rm_containers();
    for n in ["rvnet-reg", "rvnet-reg-tagged"] {
        remove_network(n);
    }
    short.networks.clear();
    tagged.networks.clear();
    let end = state_records();
    assert!(
        end.networks.is_empty() && end.endpoints.is_empty() && end.pools.is_empty(),
        "records left behind: {end:?}"
    );
    // Releases delete their claims just after answering.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while claims() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "claims left in etcd: {}",
            claims()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir2);
    mark_ran(
        "RUSTVLAN_E2E_MARKER",
        "registry_install_and_upgrade_keep_networks_endpoints_and_addresses",
    );
}
