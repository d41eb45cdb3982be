//! Helpers for tests that drive a real dockerd with the client of its engine
//! (RUSTVLAN_DOCKER, /usr/bin/docker by default). scripts/test.sh sets DOCKER_HOST and
//! RUSTVLAN_DOCKER for each engine it runs, and builds the image named by
//! RUSTVLAN_TEST_IMAGE.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use serde_json::Value;

use super::{Veth, check, require_root, run};

/// The docker client of the engine under test: Debian 12's /usr/bin/docker, or Docker
/// 28's from the cache scripts/lib/env.sh unpacks it into.
pub fn docker_cli() -> String {
    std::env::var("RUSTVLAN_DOCKER").unwrap_or_else(|_| "/usr/bin/docker".to_string())
}

/// The engine's version as dockerd reports it (`20.10.24+dfsg1`, `28.5.2+dfsg4`).
pub fn engine_version() -> String {
    docker_ok(&["version", "--format", "{{.Server.Version}}"])
}

/// Docker 28 and later (IPv6-only networks, gateway checks, ...).
pub fn engine_is_28_or_later() -> bool {
    engine_version()
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 28)
}

pub fn image() -> String {
    std::env::var("RUSTVLAN_TEST_IMAGE").unwrap_or_else(|_| "rvbb:latest".to_string())
}

pub fn docker(args: &[&str]) -> Output {
    run(Command::new(docker_cli()).args(args))
}

/// `docker ARGS`, its stderr as the error when it fails.
pub fn docker_try(args: &[&str]) -> Result<(), String> {
    let out = docker(args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn docker_ok(args: &[&str]) -> String {
    check(Command::new(docker_cli()).args(args)).trim().to_string()
}

/// `docker network rm`, which must succeed (see `try_remove_network`).
pub fn remove_network(name: &str) {
    if let Err(error) = try_remove_network(name) {
        panic!("{error}");
    }
}

/// `docker network rm`. "has active endpoints" is retried for a few seconds, in case
/// dockerd's endpoint count lags the containers just removed; any other error fails at
/// once. A count that stays up with nothing attached is dockerd's own drift (see
/// tests/load.rs). The error names what dockerd still shows attached.
pub fn try_remove_network(name: &str) -> Result<(), String> {
    try_remove_network_by(&docker, name)
}

/// [`try_remove_network`] through another dockerd's CLI (`docker`).
pub fn try_remove_network_by(docker: &dyn Fn(&[&str]) -> Output, name: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = docker(&["network", "rm", name]);
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !stderr.contains(ACTIVE_ENDPOINTS) || std::time::Instant::now() >= deadline {
            let attached = docker(&["network", "inspect", "--format", "{{json .Containers}}", name]);
            return Err(format!(
                "docker network rm {name}: {stderr}; containers dockerd shows attached: {}",
                String::from_utf8_lossy(&attached.stdout).trim()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// dockerd's refusal to remove a network it still counts endpoints on.
pub const ACTIVE_ENDPOINTS: &str = "has active endpoints";

/// dockerd must answer; outside CI a missing one skips with the reason, in CI it fails.
pub fn require_dockerd() -> bool {
    if !require_root() {
        return false;
    }
    let cli = docker_cli();
    let reason = match Command::new(&cli)
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("cannot run {cli}: {e}"),
    };
    if std::env::var_os("RUSTVLAN_CI").is_some() {
        panic!("dockerd is not reachable ({reason}), and RUSTVLAN_CI forbids skipping the end-to-end suite");
    }
    eprintln!("SKIPPED: dockerd is not reachable ({reason}); scripts/test.sh starts one");
    false
}

pub fn host_links() -> BTreeSet<String> {
    let out = check(Command::new("ip").args(["-j", "link", "show"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// What a test made in the host namespace and in dockerd, removed on drop even when
/// the test fails.
pub struct Scene {
    pub label: String,
    /// The parent: one end of a veth pair (deleted after the containers and networks).
    pub veth: String,
    pub networks: Vec<String>,
    _parent: Veth,
}

impl Scene {
    pub fn new(tag: &str) -> Scene {
        let parent = Veth::new(&format!("e2e{tag}"));
        Scene {
            label: format!("rustvlan-e2e={tag}"),
            veth: parent.0.clone(),
            networks: Vec::new(),
            _parent: parent,
        }
    }

    /// `docker network create -d DRIVER --ipam-driver DRIVER ARGS NAME`.
    pub fn network_with(&mut self, driver: &str, name: &str, args: &[&str]) {
        let _ = docker(&["network", "rm", name]);
        let mut all = vec!["network", "create", "-d", driver, "--ipam-driver", driver];
        all.extend_from_slice(args);
        all.push(name);
        docker_ok(&all);
        self.networks.push(name.to_string());
    }

    /// A network of the legacy plugin `rustvlan`.
    pub fn network(&mut self, name: &str, args: &[&str]) {
        self.network_with("rustvlan", name, args);
    }

    /// `docker run -d` a sleeper; returns its name.
    pub fn run(&self, name: &str, net: &str, extra: &[&str]) -> String {
        let _ = docker(&["rm", "-f", name]);
        let image = image();
        let mut args = vec!["run", "-d", "--name", name, "--label", &self.label, "--net", net];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&image, "sleep", "100000"]);
        docker_ok(&args);
        name.to_string()
    }

    pub fn rm_containers(&self) {
        let ids = docker_ok(&["ps", "-aq", "--filter", &format!("label={}", self.label)]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            docker_ok(&args);
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.rm_containers());
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

pub fn ipv4_of(container: &str) -> String {
    let out = docker_ok(&["exec", container, "ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 on eth0 of {container}: {out}"))
        .to_string()
}

pub fn mac_of(container: &str) -> String {
    docker_ok(&["exec", container, "cat", "/sys/class/net/eth0/address"])
}

pub fn pings(from: &str, to_cidr: &str) -> bool {
    let ip = to_cidr.split('/').next().unwrap();
    docker(&["exec", from, "ping", "-c", "2", "-W", "2", ip])
        .status
        .success()
}

/// The dockerd scripts/test.sh started (RUSTVLAN_DOCKERD_DIR), for tests that stop and
/// start it. Started again through scripts/lib/env.sh, so it keeps its socket.
pub struct DockerdControl {
    pub dir: std::path::PathBuf,
}

impl DockerdControl {
    pub fn from_env() -> Option<DockerdControl> {
        match std::env::var("RUSTVLAN_DOCKERD_DIR") {
            Ok(dir) if !dir.is_empty() => Some(DockerdControl { dir: dir.into() }),
            _ if std::env::var_os("RUSTVLAN_CI").is_some() => {
                panic!("RUSTVLAN_DOCKERD_DIR is not set, and RUSTVLAN_CI forbids skipping the dockerd restart suite")
            }
            _ => {
                eprintln!("SKIPPED: RUSTVLAN_DOCKERD_DIR (the dockerd scripts/test.sh starts) is not set");
                None
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("dockerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends `signal` (TERM or KILL) and waits until dockerd is gone.
    pub fn stop(&self, signal: &str) -> std::time::Duration {
        let started = std::time::Instant::now();
        let pid = self.pid().expect("dockerd pid file");
        check(Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]));
        let proc = format!("/proc/{pid}/stat");
        while std::fs::read_to_string(&proc).is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z")) {
            assert!(
                started.elapsed().as_secs() < 60,
                "dockerd {pid} did not stop within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        started.elapsed()
    }

    /// Starts it again with `extra` flags; returns how long until it answered.
    pub fn start(&self, extra: &str) -> std::time::Duration {
        let started = std::time::Instant::now();
        let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib/env.sh");
        let script = format!("source {lib} && rv_dockerd_start \"$1\"");
        let out = run(Command::new("bash")
            .args(["-c", &script, "bash", self.dir.to_str().unwrap()])
            .env("RV_DOCKERD_EXTRA_ARGS", extra)
            .env("RV_DOCKERD_TIMEOUT", "240"));
        assert!(
            out.status.success(),
            "starting dockerd failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}
