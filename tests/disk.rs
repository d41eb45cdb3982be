//! Reliability suite 6: disk trouble. A read-only, full or damaged state directory stops
//! `rustvlan serve` with a message saying what is wrong and what to do; it never starts
//! over a store that lost data. A disk that fills while serving fails the requests that
//! cannot be stored, and no answered allocation is lost or handed out twice.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, TempDir, check, report, require_root, run};
use rustvlan::dump::StateDump;
use serde_json::json;

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new();
        let path = dir.path().to_path_buf();
        std::mem::forget(dir); // removed after the unmount, below
        check(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&path),
        );
        Tmpfs(path)
    }

    fn remount(&self, opt: &str) {
        check(
            Command::new("mount")
                .args(["-o", &format!("remount,{opt}")])
                .arg(&self.0),
        );
    }

    fn fill(&self) {
        // dd stops at ENOSPC, which is the point.
        let _ = run(Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", self.0.join("fill").display())));
    }

    fn unfill(&self) {
        std::fs::remove_file(self.0.join("fill")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `rustvlan serve` and expects it to refuse to start: returns the last line of its
/// stderr. Err(()) if it started (and was stopped again).
fn refused(state_dir: &Path, socket: &Path) -> Result<String, ()> {
    // A SIGKILLed server leaves its socket file; the refusal must not make one.
    let _ = std::fs::remove_file(socket);
    let mut child = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!status.success(), "exited 0: {stderr}");
            assert!(!socket.exists(), "a refused start leaves no socket");
            return Ok(stderr.lines().last().unwrap_or("").to_string());
        }
        if socket.exists() || started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn store_with_records(state: &Path, socket_dir: &Path) -> Server {
    let mut s = Server::start(None, socket_dir);
    s.state_dir = state.to_path_buf();
    s.kill9();
    s.restart();
    let pool = s.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustvlan-local", "Pool": "10.44.0.0/16", "V6": false}),
    );
    for _ in 0..20 {
        s.ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": pool["PoolID"], "Address": ""}),
        );
    }
    s
}

/// The id of the first pool the plugin holds.
fn first_pool(s: &Server) -> String {
    s.state().pools.into_keys().next().expect("a pool")
}

#[test]
fn read_only_state_dir_is_refused() {
    if !require_root() {
        return;
    }
    let fs = Tmpfs::mount("4m");
    let sockets = TempDir::new();
    let mut s = store_with_records(&fs.0.join("state"), sockets.path());
    s.terminate();
    fs.remount("ro");
    let existing = refused(&fs.0.join("state"), &s.socket).expect("refused");
    let fresh = refused(&fs.0.join("new-state"), &s.socket).expect("refused");
    report(&format!(
        "disk read-only: existing store refused with {existing:?}; new store refused with {fresh:?}"
    ));
    assert!(
        existing.contains("Read-only file system") && existing.contains("make it writable"),
        "{existing}"
    );
    assert!(
        fresh.contains("cannot create the state directory") && fresh.contains("Read-only"),
        "{fresh}"
    );
    fs.remount("rw");
}

#[test]
fn full_disk_is_refused_at_start_and_fails_requests_cleanly_while_serving() {
    if !require_root() {
        return;
    }
    let fs = Tmpfs::mount("3m");
    let sockets = TempDir::new();
    let mut s = store_with_records(&fs.0.join("state"), sockets.path());
    let pool_id = first_pool(&s);
    let mut answered: Vec<String> = s.state().pools[&pool_id]
        .addresses
        .keys()
        .map(|ip| ip.to_string())
        .collect();

    // The disk fills while serving.
    fs.fill();
    let mut errors = Vec::new();
    for _ in 0..2000 {
        let (status, answer) = s.post("/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": ""}));
        match status {
            200 => answered.push(common::answered_address(&answer)),
            _ => errors.push(answer["Err"].as_str().unwrap().to_string()),
        }
        if errors.len() >= 2 {
            break;
        }
    }
    assert!(errors.len() >= 2, "the store never reported the full disk");
    assert!(errors[0].contains("No space left"), "{}", errors[0]);
    assert!(errors[1].contains("fix the disk and restart rustvlan"), "{}", errors[1]);
    s.kill9();

    // Full at start: refused.
    let at_start = refused(&s.state_dir, &s.socket).expect("refused");
    assert!(
        at_start.contains("No space left") && (at_start.contains("free space") || at_start.contains("make room")),
        "{at_start}"
    );

    // Room again: everything answered is there, and allocation goes on without duplicates.
    fs.unfill();
    s.restart();
    let state = s.state();
    let stored: Vec<String> = state.pools[&pool_id]
        .addresses
        .keys()
        .map(|ip| ip.to_string())
        .collect();
    let lost: Vec<&String> = answered.iter().filter(|a| !stored.contains(a)).collect();
    let next = s.ok("/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": ""}));
    let next = next["Address"].as_str().unwrap().split('/').next().unwrap().to_string();
    report(&format!(
        "disk full: while serving, {} allocations answered then {:?}, then {:?}; at start refused with {at_start:?}; \
         after freeing space: answered_lost={} next_address_duplicate={}",
        answered.len(),
        errors[0],
        errors[1],
        lost.len(),
        answered.contains(&next)
    ));
    assert!(lost.is_empty(), "answered but lost: {lost:?}");
    assert!(!answered.contains(&next), "{next} handed out twice");
}

#[test]
fn a_damaged_store_is_refused_never_started_empty() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new();
    let state = dir.path().join("state");
    let mut s = store_with_records(&state, dir.path());
    let records = |s: &Server| StateDump {
        kernel: None,
        ..s.state()
    };
    let intact = records(&s);
    s.terminate();
    let pristine = dir.path().join("pristine");
    check(Command::new("cp").arg("-a").arg(&state).arg(&pristine));
    let restore = || {
        let _ = std::fs::remove_dir_all(&state);
        check(Command::new("cp").arg("-a").arg(&pristine).arg(&state));
    };

    // Garbage written over parts of sled's log.
    let db = state.join("db/db");
    let len = std::fs::metadata(pristine.join("db/db")).unwrap().len();
    let mut messages = Vec::new();
    let mut harmless = 0;
    for offset in [0, 100, 4096, len / 3, len / 2, len - 4096] {
        restore();
        let mut bytes = std::fs::read(&db).unwrap();
        for b in bytes.iter_mut().skip(offset as usize).take(64) {
            *b ^= 0x5a;
        }
        std::fs::write(&db, bytes).unwrap();
        let Ok(message) = refused(&state, &s.socket) else {
            // Damage to log space sled no longer uses is harmless: then every record must
            // be there.
            s.restart();
            assert_eq!(
                records(&s),
                intact,
                "offset {offset}: started, so the store must be whole"
            );
            s.terminate();
            harmless += 1;
            continue;
        };
        // sled detects most damage itself; where it silently drops the damaged tail of
        // its log, the generation recorded beside the store catches the loss.
        let detected = message.contains("looks damaged") && message.contains("restore it from a backup")
            || message.contains("lost acknowledged changes") && message.contains("restore a current copy");
        assert!(detected, "offset {offset}: {message}");
        messages.push(message);
    }

    // An older copy of the store put back (or a log tail sled dropped): changes that were
    // acknowledged are missing, and the generation beside the store says so.
    restore();
    let old = dir.path().join("old-db");
    check(Command::new("cp").arg("-a").arg(state.join("db")).arg(&old));
    s.restart();
    let pool_id = first_pool(&s);
    s.ok("/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": ""}));
    s.terminate();
    std::fs::remove_dir_all(state.join("db")).unwrap();
    check(Command::new("cp").arg("-a").arg(&old).arg(state.join("db")));
    let lost = refused(&state, &s.socket).expect("refused");
    assert!(
        lost.contains("lost acknowledged changes") && lost.contains("restore a current copy"),
        "{lost}"
    );
    // The documented way to accept the loss works.
    std::fs::remove_file(state.join("generation")).unwrap();
    s.restart();
    let by_sled = messages.iter().filter(|m| m.contains("looks damaged")).count();
    report(&format!(
        "disk damaged: of {} corruptions, {by_sled} refused by sled's checks, {} by the generation check (sled had \
         dropped the damaged tail), {harmless} hit unused log space and the store started whole; e.g. {:?}; an older \
         copy of the store refused with {lost:?}; deleting the generation file accepts the loss",
        messages.len() + harmless,
        messages.len() - by_sled,
        messages[0]
    ));
    assert!(!messages.is_empty());
}
