//! Reliability suite 7: security checks. The socket is root's alone, the plugin listens on
//! nothing else, request bodies are capped, and the product code has no `unsafe` and
//! starts no processes (links are made with netlink, never with `ip` or a shell).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Netns, Server, TempDir, report, require_root};

/// Socket inodes the process holds open.
fn socket_inodes(pid: u32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect()
}

/// Internet sockets of the process (listening TCP, any UDP), from /proc/PID/net.
fn internet_sockets(pid: u32) -> Vec<String> {
    let mine = socket_inodes(pid);
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && mine.contains(cols[9]) {
                found.push(format!("{table} {} state {}", cols[1], cols[3]));
            }
        }
    }
    found
}

/// Lines of Rust source under `dir` that contain `needle` outside comments.
fn code_lines_with(dir: &Path, needle: &str) -> Vec<String> {
    code_lines_matching(dir, needle, false)
}

/// Lines of code containing `needle`; with `unjustified`, only those that no
/// `// SAFETY:` comment in the five lines above explains.
fn code_lines_matching(dir: &Path, needle: &str, unjustified: bool) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(code_lines_matching(&path, needle, unjustified));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap();
                let explained = lines[n.saturating_sub(5)..n].iter().any(|l| l.contains("// SAFETY:"));
                if code.contains(needle) && !(unjustified && explained) {
                    hits.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    hits
}

#[test]
fn socket_listeners_body_cap_and_code() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let dir = TempDir::new();
    let s = Server::start(Some(&ns), dir.path());
    let meta = std::fs::metadata(&s.socket).unwrap();
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");
    assert_eq!(meta.uid(), 0, "socket owner");
    let dhcp = std::fs::metadata(s.socket.with_file_name("rustvlan-dhcp.sock")).unwrap();
    assert_eq!(
        (dhcp.permissions().mode() & 0o777, dhcp.uid()),
        (0o600, 0),
        "the rustvlan-dhcp socket is root's alone too"
    );

    let listeners = internet_sockets(s.pid());
    assert!(listeners.is_empty(), "the plugin has internet sockets: {listeners:?}");

    let cap = rustvlan::api::MAX_BODY;
    let over = format!(r#"{{"NetworkID": "{}"}}"#, "a".repeat(cap));
    let (status, answer) = s.post_raw("/NetworkDriver.DeleteNetwork", &over);
    assert_eq!(status, 413, "{answer}");
    // Just under the cap is read (and then judged on its content).
    let under = format!(r#"{{"NetworkID": "{}"}}"#, "a".repeat(cap - 100));
    let (status, _) = s.post_raw("/NetworkDriver.DeleteNetwork", &under);
    assert_eq!(status, 200, "an unknown network id: nothing to delete");

    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let unsafe_code = code_lines_with(&src, "unsafe");
    let unexplained = code_lines_matching(&src, "unsafe", true);
    let processes = code_lines_with(&src, "Command::new");
    report(&format!(
        "security: socket_mode={mode:04o} socket_owner=root internet_sockets={} body_cap={} KiB (over it: 413) \
         unsafe_in_src={} processes_started_by_src={}",
        listeners.len(),
        cap / 1024,
        unsafe_code.len(),
        processes.len()
    ));
    // The DHCP packet socket's `sockaddr_ll` is the one place that needs it.
    assert!(
        unexplained.is_empty(),
        "unsafe in product code without a SAFETY comment: {unexplained:?}"
    );
    assert!(processes.is_empty(), "product code starts processes: {processes:?}");
}
