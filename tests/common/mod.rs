//! Shared by the integration tests: the real `rustvlan` binary, run inside a network
//! namespace the test makes (so tests never touch the host's interfaces), spoken to
//! over its unix socket with a real HTTP client.
#![allow(dead_code)]

pub mod docker;
pub mod etcd;
pub mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustvlan::dump::StateDump;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_rustvlan");

/// Root is needed for namespaces and links. Outside CI, a non-root run skips with the
/// reason; in CI (RUSTVLAN_CI=1) that would hide tests, so it fails instead.
pub fn require_root() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        if std::env::var_os("RUSTVLAN_CI").is_some() {
            panic!("this test needs root, and RUSTVLAN_CI forbids skipping it");
        }
        eprintln!("SKIPPED: this test needs root (network namespaces and links)");
    }
    root
}

/// Appends `test` to the file named by the environment variable `marker`, if set, so
/// that scripts/test.sh can tell a suite really ran from one that skipped.
pub fn mark_ran(marker: &str, test: &str) {
    if let Some(path) = std::env::var_os(marker) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{test}").unwrap();
    }
}

/// Polls a state dump until it has no queued link deletes (5 s at most).
pub fn settle(state: impl Fn() -> StateDump) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = state();
        if s.pending_deletes.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queued link deletes did not finish: {:?}",
            s.pending_deletes.keys()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A line of figures for the end of the test run: printed now, and appended to the file
/// named by RUSTVLAN_REPORT (scripts/test.sh prints that file last, so CI output ends
/// with every suite's summary even though cargo captures passing tests' output).
pub fn report(line: &str) {
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("RUSTVLAN_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn check(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair in the root namespace, both ends up; removed on drop.
pub struct Veth(pub String);

impl Veth {
    pub fn new(name: &str) -> Veth {
        let _ = run(Command::new("ip").args(["link", "del", name]));
        for args in [
            vec!["link", "add", name, "type", "veth", "peer", "name", &format!("{name}p")],
            vec!["link", "set", name, "up"],
            vec!["link", "set", &format!("{name}p"), "up"],
        ] {
            check(Command::new("ip").args(&args));
        }
        Veth(name.to_string())
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["link", "del", &self.0]));
    }
}

/// Runs `job(i)` for i in 0..n on `threads` threads at once; the failures.
pub fn parallel(n: usize, threads: usize, job: impl Fn(usize) -> Result<(), String> + Sync) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.min(n) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if let Err(e) = job(i) {
                        failures.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// The bare address of a RequestAddress answer (`{"Address": "10.0.0.2/24"}`).
pub fn answered_address(answer: &Value) -> String {
    let cidr = answer["Address"]
        .as_str()
        .unwrap_or_else(|| panic!("no Address in {answer}"));
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

/// A loopback TCP port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A network namespace, deleted (with its links) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Where `ip netns` keeps it, for setns.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn new() -> Netns {
        let name = unique("rvt");
        check(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip` inside the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    pub fn try_ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// A veth pair inside the namespace, both ends up.
    pub fn veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.try_ip(&["link", "show", "dev", name]).status.success()
    }

    /// `ip -d -j link show` of one link, parsed.
    pub fn link_json(&self, name: &str) -> Value {
        let out = self.ip(&["-d", "-j", "link", "show", "dev", name]);
        let v: Value = serde_json::from_str(&out).expect("ip -j output");
        v[0].clone()
    }

    pub fn link_names(&self) -> Vec<String> {
        let out = self.ip(&["-j", "link", "show"]);
        let v: Value = serde_json::from_str(&out).expect("ip -j output");
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique("rustvlan-it-"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The store's directory for a server whose files are in `dir`: `dir/state`, or, with
/// RUSTVLAN_TEST_STATE_BASE, a directory of that name there (the VM's crash run keeps
/// its stores on the 9p share that way, while sockets stay on the guest's own /tmp).
fn state_dir_for(dir: &Path) -> PathBuf {
    match std::env::var_os("RUSTVLAN_TEST_STATE_BASE") {
        Some(base) => PathBuf::from(base).join(dir.file_name().expect("a named directory")),
        None => dir.join("state"),
    }
}

/// Sends a signal (`-STOP`, `-CONT`, …) to a process with procps' kill.
pub fn signal(pid: u32, signal: &str) {
    check(Command::new("kill").args([signal, &pid.to_string()]));
}

/// A running `rustvlan serve`.
pub struct Server {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    netns: Option<String>,
    runtime: tokio::runtime::Runtime,
    /// More `serve` arguments for the next (re)start.
    pub extra_args: Vec<String>,
    /// Environment variables for the next (re)start (injected faults).
    pub extra_env: Vec<(String, String)>,
}

impl Server {
    /// Starts the plugin inside `netns` with its socket and store in `dir`.
    pub fn start(netns: Option<&Netns>, dir: &Path) -> Server {
        Server::start_at(netns, dir, &dir.join("rustvlan.sock"))
    }

    /// Like [`Server::start`], with more `serve` arguments.
    pub fn start_with(netns: Option<&Netns>, dir: &Path, args: &[&str]) -> Server {
        Server::start_full(netns, dir, &dir.join("rustvlan.sock"), args)
    }

    /// Like [`Server::start`], with the socket at `socket`.
    pub fn start_at(netns: Option<&Netns>, dir: &Path, socket: &Path) -> Server {
        Server::start_full(netns, dir, socket, &[])
    }

    /// Like [`Server::start_at`], with more `serve` arguments.
    pub fn start_full(netns: Option<&Netns>, dir: &Path, socket: &Path, args: &[&str]) -> Server {
        let mut server = Server {
            child: None,
            socket: socket.to_path_buf(),
            state_dir: state_dir_for(dir),
            log: dir.join("rustvlan.log"),
            netns: netns.map(|n| n.name.clone()),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            extra_env: Vec::new(),
        };
        server.restart();
        server
    }

    pub fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.env_remove("RUSTVLAN_SOCKET").env_remove("RUSTVLAN_STATE_DIR");
        cmd
    }

    /// Starts (again) and waits until the socket answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--log-level", "debug"])
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting rustvlan");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.try_post("/Plugin.Activate", "") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("rustvlan exited with {status} while starting:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "rustvlan did not answer within 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process is there and does nothing.
    pub fn pause(&self, pause: bool) {
        signal(self.pid(), if pause { "-STOP" } else { "-CONT" });
    }

    /// SIGTERM; returns how long the process took to exit.
    pub fn terminate(&mut self) -> Duration {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        check(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "rustvlan exited with {status} after SIGTERM:\n{}",
            self.log_text()
        );
        started.elapsed()
    }

    pub fn try_post(&self, path: &str, body: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let (status, bytes) = self
            .runtime
            .block_on(rustvlan::client::post(&self.socket, path, body.to_string()))?;
        Ok((status, bytes.to_vec()))
    }

    /// POSTs a raw body and parses the JSON answer.
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, bytes) = self
            .try_post(path, body)
            .unwrap_or_else(|e| panic!("POST {path}: {e:#}\n{}", self.log_text()));
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "POST {path}: answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, value)
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string())
    }

    /// POSTs and requires a 200, returning the answer.
    pub fn ok(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, body.clone());
        assert_eq!(status, 200, "POST {path} {body} answered {status} {answer}");
        answer
    }

    /// `rustvlan state --json`, through the same binary a user runs.
    pub fn state(&self) -> StateDump {
        serde_json::from_str(&self.state_text()).expect("state --json prints a state dump")
    }

    /// Waits until the links queued for deletion (DeleteEndpoint answers before the
    /// kernel has deleted them) are gone.
    pub fn settle(&self) {
        settle(|| self.state());
    }

    /// The state as raw text, for byte-for-byte comparisons.
    pub fn state_text(&self) -> String {
        check(
            self.command()
                .arg("state")
                .arg("--json")
                .arg("--socket")
                .arg(&self.socket)
                .arg("--state-dir")
                .arg(&self.state_dir),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
