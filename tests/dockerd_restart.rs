//! Reliability suite 3: dockerd restarts under running containers on a rustvlan
//! network: graceful, SIGKILL, and with --live-restore; then dockerd starting while the
//! plugin is down. After each: containers dockerd brings back have their network, new
//! containers get unique addresses, stale endpoints are gone, and nothing leaks (no link
//! on the host, no allocation without an endpoint).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::docker::{
    DockerdControl, Scene, docker, docker_ok, host_links, ipv4_of, pings, remove_network, require_dockerd,
};
use common::{Server, TempDir, mark_ran, report, run};
use serde_json::Value;

const SOCKET: &str = "/run/docker/plugins/rustvlan.sock";

fn running(container: &str) -> Option<u32> {
    let out = docker(&["inspect", "-f", "{{.State.Running}} {{.State.Pid}}", container]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    (parts.next() == Some("true")).then(|| parts.next().unwrap().parse().unwrap())
}

fn wait_running(container: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if running(container).is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Pings from inside a container's namespace without dockerd (it may be down).
fn ping_from_pid(pid: u32, ip_cidr: &str) -> bool {
    let ip = ip_cidr.split('/').next().unwrap();
    run(Command::new("nsenter").args([
        "-t",
        &pid.to_string(),
        "-n",
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        ip,
    ]))
    .status
    .success()
}

/// What the plugin holds against what dockerd runs, after a restart.
struct Audit {
    running: usize,
    endpoints: usize,
    allocations: usize,
    links_leaked: usize,
}

fn audit(plugin: &Server, network: &str, links_before: &BTreeSet<String>, scene: &Scene) -> Audit {
    plugin.settle();
    let inspect: Value = serde_json::from_str(&docker_ok(&["network", "inspect", network])).unwrap();
    let running = inspect[0]["Containers"].as_object().map_or(0, |c| c.len());
    let state = plugin.state();
    let endpoints = state.endpoints.len();
    let allocations = state.container_allocations();
    let expected: BTreeSet<String> = links_before
        .iter()
        .cloned()
        .chain([scene.veth.clone(), format!("{}p", scene.veth)])
        .collect();
    Audit {
        running,
        endpoints,
        allocations,
        links_leaked: host_links().difference(&expected).count(),
    }
}

fn run_sleeper(scene: &Scene, name: &str, net: &str, always: bool) -> String {
    let mut extra = vec!["--stop-timeout", "1"];
    if always {
        extra.extend(["--restart", "always"]);
    }
    scene.run(name, net, &extra)
}

/// Runs a new container and checks its address is not one already held.
fn fresh_container(scene: &Scene, name: &str, net: &str, held: &[String]) -> (String, bool) {
    let c = run_sleeper(scene, name, net, false);
    let ip = ipv4_of(&c);
    let unique = !held.contains(&ip);
    (ip, unique)
}

fn finish(scene: &mut Scene, plugin: &Server, network: &str) -> bool {
    scene.rm_containers();
    remove_network(network);
    scene.networks.clear();
    let state = plugin.state();
    state.networks.is_empty() && state.endpoints.is_empty() && state.pools.is_empty()
}

#[test]
fn dockerd_restarts_under_running_containers() {
    if !require_dockerd() {
        return;
    }
    let Some(dockerd) = DockerdControl::from_env() else {
        return;
    };
    let dir = TempDir::new();
    let mut plugin = Server::start_at(None, dir.path(), Path::new(SOCKET));
    let links_before = host_links();

    for (kind, signal, flags) in [
        ("graceful", "TERM", ""),
        ("sigkill", "KILL", ""),
        ("live-restore", "TERM", "--live-restore"),
    ] {
        if !flags.is_empty() {
            dockerd.stop("TERM");
            dockerd.start(flags);
        }
        let mut scene = Scene::new(&format!("d{}", &kind[..2]));
        let net = format!("rvnet-{kind}");
        scene.network(
            &net,
            &["--subnet", "10.87.0.0/24", "-o", &format!("parent={}", scene.veth)],
        );
        let c1 = run_sleeper(&scene, &format!("rv-{kind}-1"), &net, true);
        let c2 = run_sleeper(&scene, &format!("rv-{kind}-2"), &net, false);
        let (ip1, ip2) = (ipv4_of(&c1), ipv4_of(&c2));
        let pid1 = running(&c1).unwrap();
        assert!(pings(&c1, &ip2), "{kind}: before");

        let stopped = dockerd.stop(signal);
        // With dockerd down, do running containers still talk? (live-restore keeps them.)
        let talk_while_down = running_pid_alive(pid1) && ping_from_pid(pid1, &ip2);
        let restarted = dockerd.start(flags);
        let c1_back = wait_running(&c1, Duration::from_secs(30));
        let c2_running = running(&c2).is_some();
        let c1_ip = if c1_back { ipv4_of(&c1) } else { String::new() };
        let mut held = vec![c1_ip.clone()];
        if c2_running {
            held.push(ipv4_of(&c2));
        }
        let kept_connectivity = c2_running && c1_back && pings(&c1, &ipv4_of(&c2));
        let (ip3, unique) = fresh_container(&scene, &format!("rv-{kind}-3"), &net, &held);
        let reaches = c1_back && pings(&format!("rv-{kind}-3"), &c1_ip);
        let a = audit(&plugin, &net, &links_before, &scene);
        let line = format!(
            "dockerd {kind}: stop={:.1}s start={:.1}s containers_talking_while_dockerd_down={talk_while_down} \
             restart_always_back={c1_back} plain_container_running={c2_running} kept_connectivity={kept_connectivity} \
             addresses_before={ip1},{ip2} after={c1_ip} new={ip3} new_unique={unique} new_reaches_old={reaches} \
             running={} endpoints={} allocations={} links_leaked={}",
            stopped.as_secs_f64(),
            restarted.as_secs_f64(),
            a.running,
            a.endpoints,
            a.allocations,
            a.links_leaked
        );
        report(&line);
        assert!(c1_back, "{kind}: the restart-always container came back: {line}");
        assert!(unique && reaches, "{line}");
        assert_eq!(
            a.endpoints, a.running,
            "{kind}: one endpoint per running container (stale ones cleaned): {line}"
        );
        assert_eq!(a.allocations, a.endpoints, "{kind}: one address per endpoint: {line}");
        assert_eq!(a.links_leaked, 0, "{kind}: {line}");
        if kind == "live-restore" {
            assert!(
                talk_while_down && c2_running && kept_connectivity,
                "live-restore keeps containers talking: {line}"
            );
            assert_eq!(
                (ipv4_of(&c1), ipv4_of(&c2)),
                (ip1.clone(), ip2.clone()),
                "same addresses"
            );
        }
        assert!(
            finish(&mut scene, &plugin, &net),
            "{kind}: clean after rm and network rm"
        );
        if !flags.is_empty() {
            dockerd.stop("TERM");
            dockerd.start("");
        }
    }

    // Service mode gone wrong: dockerd starts while the plugin is down.
    let mut scene = Scene::new("dpd");
    let net = "rvnet-plugin-down";
    scene.network(
        net,
        &["--subnet", "10.87.1.0/24", "-o", &format!("parent={}", scene.veth)],
    );
    let c1 = run_sleeper(&scene, "rv-pd-1", net, true);
    dockerd.stop("TERM");
    plugin.terminate();
    let started = Instant::now();
    dockerd.start("");
    let start_time = started.elapsed();
    let c1_running_without_plugin = running(&c1).is_some();
    let t = Instant::now();
    let attempt = docker(&["run", "--rm", "--net", net, &image(), "true"]);
    let run_time = t.elapsed();
    // The error line; the 28 client follows it with "Run 'docker run --help' …".
    let user_sees = String::from_utf8_lossy(&attempt.stderr)
        .lines()
        .find(|l| l.contains("rustvlan"))
        .unwrap_or("")
        .trim()
        .to_string();
    plugin.restart();
    let recovered = docker(&["start", &c1]).status.success() && wait_running(&c1, Duration::from_secs(30));
    let c1_ip = if recovered { ipv4_of(&c1) } else { String::new() };
    let (ip2, unique) = fresh_container(&scene, "rv-pd-2", net, std::slice::from_ref(&c1_ip));
    let reaches = recovered && pings("rv-pd-2", &c1_ip);
    let a = audit(&plugin, net, &links_before, &scene);
    let plugin_errors = dockerd
        .log()
        .lines()
        .filter(|l| l.contains("rustvlan") && l.contains("level=error"))
        .count();
    let line = format!(
        "dockerd starting with the plugin down: start={:.1}s restart_always_running={c1_running_without_plugin} \
         docker_run_failed_after={:.1}s with {user_sees:?}; dockerd_log_errors_naming_rustvlan={plugin_errors}; \
         after the plugin started: docker_start_recovered={recovered} new={ip2} new_unique={unique} \
         new_reaches_old={reaches} endpoints={} allocations={} links_leaked={}",
        start_time.as_secs_f64(),
        run_time.as_secs_f64(),
        a.endpoints,
        a.allocations,
        a.links_leaked
    );
    report(&line);
    assert!(!attempt.status.success(), "docker run cannot work without the plugin");
    assert!(recovered && unique && reaches, "{line}");
    assert_eq!(a.endpoints, a.running, "{line}");
    assert_eq!(a.allocations, a.endpoints, "{line}");
    assert_eq!(a.links_leaked, 0, "{line}");
    assert!(finish(&mut scene, &plugin, net));
    mark_ran("RUSTVLAN_E2E_MARKER", "dockerd_restarts_under_running_containers");
}

fn running_pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn image() -> String {
    std::env::var("RUSTVLAN_TEST_IMAGE").unwrap_or_else(|_| "rvbb:latest".to_string())
}
