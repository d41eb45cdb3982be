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
        let dir = TempDir::new();
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://{ip}:{}", free_port()),
                peer_url: format!("http://{ip}:{}", free_port()),
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
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
            .command("etcd")
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
            .expect("starting etcd (Debian package etcd-server; scripts/test.sh installs it)");
        m.child = Some(child);
    }

    /// `program`, in the cluster's namespace.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
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

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
