//! rustvlan's benchmarks against Docker's built-in macvlan, CNI, raw netlink and raw etcd (P1–P8).
//! `scripts/bench.sh` installs and starts what they need and runs this; it writes
//! results.json, REPORT.md and one SVG per plot into the output directory.
//!
//!   cargo bench --bench bench -- [--smoke] [--out DIR] [--only p1,p3] [--merge] [--rustvlan PATH]
//!
//! The dockerd under test is the one DOCKER_HOST names, driven with the client in
//! RUSTVLAN_DOCKER (default /usr/bin/docker), as in the tests. Comparisons that go through dockerd
//! carry its engine in their id off Debian 12's 20.10 (`p1` there, `p1-28` on 28).
//! `--merge` keeps the comparisons already in DIR/results.json and adds or replaces this
//! run's, so that one report covers runs against several engines.

/// The test kit the tests use too: commands, namespaces, the dockerd-like harness,
/// the docker client of the engine under test.
#[path = "../../tests/common/mod.rs"]
mod common;

mod env;
mod p1;
mod p2;
mod p3;
mod p4p5;
mod p6;
mod p7;
mod p8;
mod p9;
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
    /// The Docker engine under test: "20.10" (Debian 12's) or "28" (Debian sid's).
    pub engine: String,
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

    /// A comparison's id on this engine: `p1` on 20.10, `p1-28` on 28.
    pub fn engine_id(&self, base: &str) -> String {
        if self.engine == HOME_ENGINE {
            base.to_string()
        } else {
            format!("{base}-{}", self.engine)
        }
    }
}

/// The engine whose comparisons keep their plain ids (`p1`, `p1.svg`).
const HOME_ENGINE: &str = "20.10";

/// One comparison's outcome.
pub struct Section {
    pub id: String,
    pub title: String,
    pub results: Value,
    pub table: Vec<(String, String)>,
    pub plots: Vec<(String, String)>,
    pub sentences: Vec<String>,
    pub notes: Value,
}

impl Section {
    pub fn skipped(id: &str, title: &str, why: &str) -> Section {
        Section {
            id: id.to_string(),
            title: title.to_string(),
            results: json!({"skipped": why}),
            table: Vec::new(),
            plots: Vec::new(),
            sentences: vec![format!("Not run: {why}.")],
            notes: Value::Null,
        }
    }

    /// Writes its plots into `out`; what results.json keeps of it, enough to write the
    /// report again when a later run (another engine) merges its own comparisons in.
    fn save(&self, out: &Path, engine: &str, dockerd: &str) -> Value {
        for (file, svg) in &self.plots {
            std::fs::write(out.join(file), svg).unwrap();
        }
        json!({
            "title": self.title,
            "engine": engine,
            "dockerd": dockerd,
            "results": self.results,
            "table": self.table.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "plots": self.plots.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
            "sentences": self.sentences,
        })
    }
}

fn text(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The version of the dockerd under test, e.g. "20.10.24+dfsg1".
fn dockerd_version() -> String {
    text(Command::new(common::docker::docker_cli()).args(["version", "-f", "{{.Server.Version}}"]))
}

/// "20.10" for a 20.10.x dockerd, else its major version ("28").
fn engine_of(version: &str) -> String {
    if version.starts_with("20.10") {
        "20.10".into()
    } else {
        version.split('.').next().unwrap_or("").to_string()
    }
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
        "dockerd": {},
        "rustc": text(Command::new("rustc").arg("-V")),
        "virtualisation": text(Command::new("sh").args(["-c", "grep -qw hypervisor /proc/cpuinfo && echo 'virtual machine (hypervisor flag)' || echo 'bare metal'"])),
    })
}

/// Report order: by comparison number, then the home engine's before another's (p1, p1-28, p2 …).
fn order_key(id: &str) -> (u32, String) {
    let digits: String = id.chars().skip(1).take_while(char::is_ascii_digit).collect();
    (digits.parse().unwrap_or(u32::MAX), id.to_string())
}

/// "P1" for p1 and p1-28, "P4/P5" for p4p5.
fn short_name(id: &str) -> String {
    id.split('-')
        .next()
        .unwrap_or(id)
        .to_uppercase()
        .replace("P4P5", "P4/P5")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// REPORT.md, from what results.json holds.
fn write_report(out: &Path, results: &Value) {
    let machine = &results["machine"];
    let (date, commit) = (
        results["date"].as_str().unwrap_or(""),
        results["commit"].as_str().unwrap_or(""),
    );
    let mut ids: Vec<&String> = results["comparisons"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    ids.sort_by_key(|id| order_key(id));
    let comparison = |id: &str| &results["comparisons"][id];
    // Which dockerd each comparison ran beside, in engine order.
    let mut engines: Vec<(String, String, Vec<String>)> = Vec::new();
    for id in &ids {
        let c = comparison(id);
        let engine = c["engine"].as_str().unwrap_or("").to_string();
        let version = c["dockerd"].as_str().unwrap_or("").to_string();
        match engines.iter_mut().find(|(e, _, _)| *e == engine) {
            Some((_, _, names)) => names.push(short_name(id)),
            None => engines.push((engine, version, vec![short_name(id)])),
        }
    }
    engines.sort_by(|a, b| a.0.cmp(&b.0));
    let dockerds = engines
        .iter()
        .map(|(_, v, _)| v.as_str())
        .collect::<Vec<_>>()
        .join(" and ");
    let mut md = String::new();
    let _ = writeln!(md, "# rustvlan benchmarks\n");
    let _ = writeln!(
        md,
        "{} run of `scripts/bench.sh` on {date}, commit `{commit}`. Every number and plot below is written by the \
         benchmark itself (`benches/bench/`); raw figures are in [results.json](results.json).\n",
        if results["smoke"].as_bool().unwrap_or(false) {
            "A smoke (short)"
        } else {
            "A full"
        }
    );
    let _ = writeln!(
        md,
        "**Machine:** {} cores ({}), {} GiB, {}, kernel {}, {}; dockerd {dockerds}; {}.\n",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or(""),
        machine["memory_gib"],
        machine["os"].as_str().unwrap_or(""),
        machine["kernel"].as_str().unwrap_or(""),
        machine["virtualisation"].as_str().unwrap_or(""),
        machine["rustc"].as_str().unwrap_or("")
    );
    if engines.len() > 1 {
        let runs = engines
            .iter()
            .map(|(e, v, names)| format!("dockerd {v} (engine {e}) for {}", names.join(", ")))
            .collect::<Vec<_>>()
            .join("; then ");
        let _ = writeln!(
            md,
            "**Engines:** one private dockerd at a time, each started for the run: {runs}.\n"
        );
    }
    let _ = writeln!(
        md,
        "Comparisons run interleaved (A B A B …) in one run; figures are medians with min–max.\n"
    );
    let _ = writeln!(md, "## Goals\n");
    for id in &ids {
        let c = comparison(id);
        for sentence in strs(&c["sentences"]) {
            let _ = writeln!(md, "- **{}**: {sentence}", c["title"].as_str().unwrap_or(id));
        }
    }
    for id in &ids {
        let c = comparison(id);
        let title = c["title"].as_str().unwrap_or(id);
        let _ = writeln!(md, "\n## {title}\n");
        let table = c["table"].as_array().cloned().unwrap_or_default();
        if !table.is_empty() {
            let _ = writeln!(md, "| measurement | result |\n|---|---|");
            for row in &table {
                let _ = writeln!(
                    md,
                    "| {} | {} |",
                    row[0].as_str().unwrap_or(""),
                    row[1].as_str().unwrap_or("")
                );
            }
            md.push('\n');
        }
        for file in strs(&c["plots"]) {
            let _ = writeln!(md, "![{title}]({file})\n");
        }
        for sentence in strs(&c["sentences"]) {
            let _ = writeln!(md, "{sentence}\n");
        }
    }
    // Hand-written analysis (profiles, where the time goes) lives beside the report.
    if let Ok(notes) = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-report/ANALYSIS.md")) {
        let _ = writeln!(md, "\n{notes}");
    }
    std::fs::write(out.join("REPORT.md"), md).unwrap();
}

/// results.json: this run's comparisons, merged into the ones already in `out` when
/// `merge` (a run on another engine adds its own to the same report).
fn write_results(out: &Path, smoke: bool, merge: bool, engine: &str, dockerd: &str, sections: &[Section]) -> Value {
    std::fs::create_dir_all(out).unwrap();
    let path = out.join("results.json");
    let old: Value = if merge {
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let mut machine = machine();
    let mut dockerds = old["machine"]["dockerd"].as_object().cloned().unwrap_or_default();
    if !dockerd.is_empty() {
        dockerds.insert(engine.to_string(), json!(dockerd));
    }
    machine["dockerd"] = Value::Object(dockerds);
    let mut comparisons = old["comparisons"].as_object().cloned().unwrap_or_default();
    for s in sections {
        comparisons.insert(s.id.clone(), s.save(out, engine, dockerd));
    }
    let results = json!({
        "date": text(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        "commit": text(Command::new("git").args(["rev-parse", "--short", "HEAD"])),
        "smoke": smoke || old["smoke"].as_bool().unwrap_or(false),
        "machine": machine,
        "comparisons": comparisons,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap() + "\n").unwrap();
    results
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
    let out = PathBuf::from(
        value("--out").unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/bench-report").to_string()),
    );
    let only: Option<Vec<String>> = value("--only").map(|v| v.split(',').map(str::to_string).collect());
    let rustvlan = PathBuf::from(value("--rustvlan").unwrap_or_else(|| env!("CARGO_BIN_EXE_rustvlan").to_string()));
    let merge = flag("--merge");
    let scratch = std::env::temp_dir().join(format!("rustvlan-bench-{}", std::process::id()));
    let dockerd = dockerd_version();
    let engine = std::env::var("RUSTVLAN_BENCH_ENGINE")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| engine_of(&dockerd));
    eprintln!(
        "[bench] dockerd {dockerd} (engine {engine}) through {}",
        common::docker::docker_cli()
    );
    let bench = Bench {
        smoke,
        rustvlan,
        image: std::env::var("RUSTVLAN_BENCH_IMAGE").unwrap_or_else(|_| "rvbb:latest".into()),
        perf_image: std::env::var("RUSTVLAN_BENCH_PERF_IMAGE").unwrap_or_else(|_| "rvperf:latest".into()),
        plugin_layer_bytes: std::env::var("RUSTVLAN_BENCH_LAYER_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        engine: engine.clone(),
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
        if wanted("p7") {
            eprintln!("[bench] P7 container churn");
            sections.push(p7::run(&bench).await);
        }
        if wanted("p8") {
            eprintln!("[bench] P8 shared allocations on etcd");
            sections.push(p8::run(&bench).await);
        }
        if wanted("p9") {
            eprintln!("[bench] P9 DHCP leases");
            sections.push(p9::run(&bench).await);
        }
    });
    if std::env::var_os("RUSTVLAN_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        eprintln!("[bench] kept {}", scratch.display());
    }
    let results = write_results(&out, smoke, merge, &engine, &dockerd, &sections);
    write_report(&out, &results);
    for s in &sections {
        for sentence in &s.sentences {
            println!("[bench] {}: {sentence}", s.title);
        }
    }
    println!("[bench] wrote {}", out.join("REPORT.md").display());
}
