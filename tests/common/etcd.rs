//! A real etcd cluster (Debian's etcd-server) on loopback ports (or on an address of a
//! network namespace the test made), for the shared-pool suites: made in a temporary
//! directory, members killed and restarted at will, all stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Netns, TempDir, free_port};

pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The namespace this member runs in; None: the cluster's.
    netns: Option<String>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    /// The namespace the members run in (and etcdctl with them); None: the test's own.
    netns: Option<String>,
    _dir: TempDir,
}

impl Cluster {
    /// `n` members on loopback, all started, with a leader.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_on(n, None, "127.0.0.1")
    }

    /// `n` members listening on `ip` inside `netns`, all started, with a leader.
    pub fn start_on(n: usize, netns: Option<&Netns>, ip: &str) -> Cluster {
        let places: Vec<(Option<String>, String)> = (0..n).map(|_| (None, ip.to_string())).collect();
        Cluster::start_placed(netns, &places)
    }

    /// One member per `(namespace, ip)` of `places`, each on its own "machine" (so that
    /// nftables can cut one off from its peers); etcdctl runs in `netns`.
    pub fn start_each(netns: &Netns, places: &[(&Netns, &str)]) -> Cluster {
        let places: Vec<(Option<String>, String)> = places
            .iter()
            .map(|(ns, ip)| (Some(ns.name.clone()), ip.to_string()))
            .collect();
        Cluster::start_placed(Some(netns), &places)
    }

    fn start_placed(netns: Option<&Netns>, places: &[(Option<String>, String)]) -> Cluster {
        let dir = TempDir::new();
        let mut members: Vec<Member> = places
            .iter()
            .enumerate()
            .map(|(i, (member_netns, ip))| Member {
                name: format!("m{i}"),
                client_url: format!("http://{ip}:{}", free_port()),
                peer_url: format!("http://{ip}:{}", free_port()),
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
                netns: member_netns.clone(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            members: Vec::new(),
            initial_cluster,
            netns: netns.map(|ns| ns.name.clone()),
            _dir: dir,
        };
        for m in &mut members {
            cluster.spawn(m);
        }
        cluster.members = members;
        cluster.wait_healthy();
        cluster
    }

    fn spawn(&self, m: &mut Member) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let child = self
            .command_in(m.netns.as_ref().or(self.netns.as_ref()), &etcd_program())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "rustvlan-test",
            ])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} (Debian package etcd-server; scripts/test.sh installs it): {e}",
                    etcd_program()
                )
            });
        m.child = Some(child);
    }

    /// `program`, in the cluster's namespace.
    fn command(&self, program: &str) -> Command {
        self.command_in(self.netns.as_ref(), program)
    }

    fn command_in(&self, netns: Option<&String>, program: &str) -> Command {
        match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// The client URLs, comma-separated, as `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl` against the members that run.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        self.command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints()))
            .args(["--command-timeout=3s"])
            .args(args)
            .output()
            .expect("etcdctl (Debian package etcd-client)")
    }

    /// Waits until a write goes through (a leader and a quorum).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(&["put", "/rustvlan-test/health", "ok"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd has no quorum after 30 s: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to member `i`.
    pub fn pause(&self, i: usize, pause: bool) {
        if let Some(pid) = self.pid(i) {
            super::signal(pid, if pause { "-STOP" } else { "-CONT" });
        }
    }

    /// Each member's `etcdctl endpoint status`: (version, is it the leader), None for one
    /// that does not answer.
    pub fn statuses(&self) -> Vec<Option<(String, bool)>> {
        self.members
            .iter()
            .map(|m| {
                let out = self
                    .command("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .arg(format!("--endpoints={}", m.client_url))
                    .args(["--command-timeout=2s", "endpoint", "status", "-w", "json"])
                    .output()
                    .ok()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let status = &v[0]["Status"];
                let leader = status["leader"].as_u64()? == status["header"]["member_id"].as_u64()?;
                Some((status["version"].as_str()?.to_string(), leader))
            })
            .collect()
    }

    /// The member that leads now, if one answers that it does.
    pub fn leader(&self) -> Option<usize> {
        self.statuses()
            .iter()
            .position(|s| s.as_ref().is_some_and(|(_, leads)| *leads))
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to every member: etcd is there and silent.
    pub fn pause_all(&self, pause: bool) {
        for m in &self.members {
            if let Some(child) = &m.child {
                super::signal(child.id(), if pause { "-STOP" } else { "-CONT" });
            }
        }
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none());
        let mut m = std::mem::replace(
            &mut self.members[i],
            Member {
                name: String::new(),
                client_url: String::new(),
                peer_url: String::new(),
                data_dir: PathBuf::new(),
                log: PathBuf::new(),
                child: None,
                netns: None,
            },
        );
        self.spawn(&mut m);
        self.members[i] = m;
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                format!(
                    "--- {}:\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The etcd server to run: RUSTVLAN_TEST_ETCD (another version's binary, e.g. Debian
/// sid's 3.5 that scripts/test.sh fetches), else Debian 12's `etcd` on PATH.
pub fn etcd_program() -> String {
    std::env::var("RUSTVLAN_TEST_ETCD").unwrap_or_else(|_| "etcd".to_string())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
