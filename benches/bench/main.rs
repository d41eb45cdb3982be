//! rustvlan's benchmarks against Docker's built-in macvlan, CNI and raw netlink (P1–P6).
//! `scripts/bench.sh` installs and starts what they need and runs this; it writes
//! results.json, REPORT.md and one SVG per plot into the output directory.
//!
//!   cargo bench --bench bench -- [--smoke] [--out DIR] [--only p1,p3] [--rustvlan PATH]

#[allow(dead_code)]
#[path = "../../tests/common/harness.rs"]
mod harness;

mod env;
mod p1;
mod p2;
mod p3;
mod p4p5;
mod p6;
mod stats;
mod svg;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

pub struct Bench {
    pub smoke: bool,
    pub rustvlan: PathBuf,
    pub image: String,
    pub perf_image: String,
    pub plugin_layer_bytes: u64,
    scratch: PathBuf,
}

impl Bench {
    /// A fresh directory for one comparison's plugin state and sockets.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.scratch.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// One comparison's outcome.
pub struct Section {
    pub id: &'static str,
    pub title: String,
    pub results: Value,
    pub table: Vec<(String, String)>,
    pub plots: Vec<(String, String)>,
    pub sentences: Vec<String>,
    pub notes: Value,
}

impl Section {
    pub fn skipped(id: &'static str, title: &str, why: &str) -> Section {
        Section {
            id,
            title: title.to_string(),
            results: json!({"skipped": why}),
            table: Vec::new(),
            plots: Vec::new(),
            sentences: vec![format!("Not run: {why}.")],
            notes: Value::Null,
        }
    }
}

fn text(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    json!({
        "kernel": text(Command::new("uname").arg("-r")),
        "cpu": model,
        "cores": cores,
        "memory_gib": stats::round(mem as f64 / 1048576.0),
        "os": text(Command::new("sh").args(["-c", ". /etc/os-release && echo $PRETTY_NAME"])),
        "dockerd": text(Command::new("/usr/bin/docker").args(["version", "-f", "{{.Server.Version}}"])),
        "rustc": text(Command::new("rustc").arg("-V")),
        "virtualisation": text(Command::new("sh").args(["-c", "grep -qw hypervisor /proc/cpuinfo && echo 'virtual machine (hypervisor flag)' || echo 'bare metal'"])),
    })
}

fn write_report(out: &Path, smoke: bool, machine: &Value, sections: &[Section]) {
    std::fs::create_dir_all(out).unwrap();
    let commit = text(Command::new("git").args(["rev-parse", "--short", "HEAD"]));
    let date = text(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let results = json!({
        "date": date,
        "commit": commit,
        "smoke": smoke,
        "machine": machine,
        "comparisons": sections.iter().map(|s| (s.id.to_string(), json!({"title": s.title, "results": s.results}))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap() + "\n",
    )
    .unwrap();
    let mut md = String::new();
    let _ = writeln!(md, "# rustvlan benchmarks\n");
    let _ = writeln!(
        md,
        "{} run of `scripts/bench.sh` on {date}, commit `{commit}`. Every number and plot below is written by the \
         benchmark itself (`benches/bench/`); raw figures are in [results.json](results.json).\n",
        if smoke { "A smoke (short)" } else { "A full" }
    );
    let _ = writeln!(
        md,
        "**Machine:** {} cores ({}), {} GiB, {}, kernel {}, {}; dockerd {}; {}.\n",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or(""),
        machine["memory_gib"],
        machine["os"].as_str().unwrap_or(""),
        machine["kernel"].as_str().unwrap_or(""),
        machine["virtualisation"].as_str().unwrap_or(""),
        machine["dockerd"].as_str().unwrap_or(""),
        machine["rustc"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        md,
        "Comparisons run interleaved (A B A B …) in one run; figures are medians with min–max.\n"
    );
    let _ = writeln!(md, "## Goals\n");
    for s in sections {
        for sentence in &s.sentences {
            let _ = writeln!(md, "- **{}**: {sentence}", s.title);
        }
    }
    for s in sections {
        let _ = writeln!(md, "\n## {}\n", s.title);
        if !s.table.is_empty() {
            let _ = writeln!(md, "| measurement | result |\n|---|---|");
            for (k, v) in &s.table {
                let _ = writeln!(md, "| {k} | {v} |");
            }
            md.push('\n');
        }
        for (file, svg) in &s.plots {
            std::fs::write(out.join(file), svg).unwrap();
            let _ = writeln!(md, "![{}]({file})\n", s.title);
        }
        for sentence in &s.sentences {
            let _ = writeln!(md, "{sentence}\n");
        }
    }
    // Hand-written analysis (profiles, where the time goes) lives beside the report.
    if let Ok(notes) = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/ANALYSIS.md")) {
        let _ = writeln!(md, "\n{notes}");
    }
    std::fs::write(out.join("REPORT.md"), md).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // cargo bench passes --bench; ignore what is not ours.
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // `cargo test --all-targets` runs this binary too, without `--bench`: a benchmark
    // run there would take minutes and overwrite the committed report.
    if !flag("--bench") {
        eprintln!("[bench] not run: benchmarks run with `cargo bench` (scripts/bench.sh)");
        return;
    }
    let smoke = flag("--smoke");
    let out =
        PathBuf::from(value("--out").unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/bench").to_string()));
    let only: Option<Vec<String>> = value("--only").map(|v| v.split(',').map(str::to_string).collect());
    let rustvlan = PathBuf::from(value("--rustvlan").unwrap_or_else(|| env!("CARGO_BIN_EXE_rustvlan").to_string()));
    let scratch = std::env::temp_dir().join(format!("rustvlan-bench-{}", std::process::id()));
    let bench = Bench {
        smoke,
        rustvlan,
        image: std::env::var("RUSTVLAN_BENCH_IMAGE").unwrap_or_else(|_| "rvbb:latest".into()),
        perf_image: std::env::var("RUSTVLAN_BENCH_PERF_IMAGE").unwrap_or_else(|_| "rvperf:latest".into()),
        plugin_layer_bytes: std::env::var("RUSTVLAN_BENCH_LAYER_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        scratch: scratch.clone(),
    };
    let wanted = |id: &str| {
        only.as_ref()
            .is_none_or(|o| o.iter().any(|x| id.starts_with(x.as_str()) || x.starts_with(id)))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let machine = machine();
    let mut sections = Vec::new();
    runtime.block_on(async {
        if wanted("p1") {
            eprintln!("[bench] P1 container start+stop");
            sections.push(p1::run(&bench).await);
        }
        if wanted("p2") {
            eprintln!("[bench] P2 attach/detach cycle");
            sections.push(p2::run(&bench).await);
        }
        if wanted("p3") {
            eprintln!("[bench] P3 IPAM");
            sections.push(p3::run(&bench).await);
        }
        if wanted("p4") || wanted("p5") {
            eprintln!("[bench] P4 restart, P5 memory");
            sections.push(p4p5::run(&bench).await);
        }
        if wanted("p6") {
            eprintln!("[bench] P6 data plane");
            sections.push(p6::run(&bench).await);
        }
    });
    if std::env::var_os("RUSTVLAN_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        eprintln!("[bench] kept {}", scratch.display());
    }
    write_report(&out, smoke, &machine, &sections);
    for s in &sections {
        for sentence in &s.sentences {
            println!("[bench] {}: {sentence}", s.title);
        }
    }
    println!("[bench] wrote {}", out.join("REPORT.md").display());
}
