//! What the comparisons share: commands, the plugin process, a keep-alive client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::common::docker::{docker, docker_ok};
pub use crate::common::{Veth, run};

/// A command's output, trimmed; it must succeed.
pub fn check(cmd: &mut Command) -> String {
    crate::common::check(cmd).trim().to_string()
}

/// `docker network create` of a rustvlan network (with rustvlan's IPAM) or of Docker's
/// built-in macvlan (with Docker's IPAM) on `parent`, after removing a leftover of it.
pub fn create_network(driver: &str, name: &str, subnet: &str, parent: &Veth) {
    let _ = docker(&["network", "rm", name]);
    let parent = format!("parent={}", parent.0);
    let mut args = vec!["network", "create", "-d", driver];
    if driver == "rustvlan" {
        args.extend(["--ipam-driver", "rustvlan"]);
    }
    args.extend(["--subnet", subnet, "-o", &parent, name]);
    docker_ok(&args);
}

pub fn ip(args: &[&str]) -> String {
    check(Command::new("ip").args(args))
}

/// A named network namespace; removed on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Netns(name.to_string())
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.0]));
    }
}

/// A rustvlan process.
pub struct Plugin {
    child: Option<Child>,
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    /// More `serve` arguments.
    pub extra_args: Vec<String>,
}

impl Plugin {
    pub fn new(bin: &Path, socket: &Path, dir: &Path) -> Plugin {
        Plugin {
            child: None,
            bin: bin.to_path_buf(),
            socket: socket.to_path_buf(),
            state_dir: dir.join("state"),
            log: dir.join("rustvlan.log"),
            extra_args: Vec::new(),
        }
    }

    /// Starts it; returns the time from spawn to the first answer on its socket.
    pub fn start(&mut self) -> Duration {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args([
                "--log-level",
                &std::env::var("RUSTVLAN_BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            ])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        loop {
            if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) {
                use std::io::{Read, Write};
                let req = "POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let mut answer = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1 200")
                {
                    return started.elapsed();
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "rustvlan exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(started.elapsed() < Duration::from_secs(30), "rustvlan did not answer");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// VmRSS and VmHWM (peak), in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// `GET /metrics` on the socket: how long it took (ms) and how many bytes it answered.
    pub async fn scrape(&self) -> (f64, usize) {
        let started = Instant::now();
        let (status, body) = rustvlan::client::get(&self.socket, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        (started.elapsed().as_secs_f64() * 1000.0, body.len())
    }

    /// Every `*_seconds_sum` series of `GET /metrics` (the time spent in plugin calls,
    /// link operations and store commits), by series name and labels.
    pub async fn time_sums(&self) -> std::collections::BTreeMap<String, f64> {
        let (status, body) = rustvlan::client::get(&self.socket, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| series.split('{').next().is_some_and(|n| n.ends_with("_seconds_sum")))
            .filter_map(|(series, v)| Some((series.to_string(), v.parse().ok()?)))
            .collect()
    }

    /// Finishes the links queued for deletion now (DeleteEndpoint answers before the
    /// kernel has deleted its link, and deletes are batched), so that one variant's
    /// background work does not fall into the next variant's measurement.
    pub async fn settle(&self) {
        let (status, body) = rustvlan::client::post(&self.socket, "/Rustvlan.Settle", "")
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One keep-alive connection to the plugin, as dockerd keeps one.
pub struct Conn(rustvlan::client::Client);

impl Conn {
    pub async fn connect(socket: &Path) -> Conn {
        Conn(rustvlan::client::Client::new(socket))
    }

    pub async fn call(&mut self, path: &str, body: String) -> (u16, Value) {
        let (status, bytes) = self.0.post(path, body).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn ok(&mut self, path: &str, body: Value) -> Value {
        let (status, answer) = self.call(path, body.to_string()).await;
        assert_eq!(status, 200, "{path} {body}: {answer}");
        answer
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
