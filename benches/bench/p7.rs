//! P7: container churn under concurrency. N containers started C at a time (`docker run
//! -d … sleep 100000` from C client processes at once), then removed C at a time
//! (`docker rm -f`), on rustvlan (legacy plugin, rustvlan IPAM) or on Docker's built-in
//! macvlan (Docker's IPAM), each on its own veth parent and /24, on the same dockerd,
//! interleaved round by round. scripts/bench.sh runs it on dockerd 28. A full run does 8
//! rounds of 100 containers, 20 at a time (RUSTVLAN_BENCH_P7_ROUNDS overrides the 8).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::docker::docker_try;
use crate::env::{Plugin, Veth, create_network, docker, docker_ok, ms};
use crate::stats::{Summary, round, summary, verdict};
use crate::{Bench, Section};

const RV: &str = "bench-p7rv";
const MV: &str = "bench-p7mv";
/// The floor: the same churn with no network at all, so that the drivers' share shows.
const NONE: &str = "none";
/// On every container P7 starts, so that a round can check it left none behind.
const LABEL: &str = "rustvlan.bench=p7";

/// Runs `job(0..n)` on `clients` threads at once; the wall time, and the errors.
fn parallel(n: usize, clients: usize, job: impl Fn(usize) -> Result<(), String> + Sync) -> (f64, Vec<String>) {
    let started = Instant::now();
    let errors = crate::common::parallel(n, clients, job);
    (ms(started.elapsed()), errors)
}

/// The containers P7 started that still exist.
fn leftovers() -> Vec<String> {
    docker_ok(&["ps", "-aq", "--filter", &format!("label={LABEL}")])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Removes whatever P7 left behind; how many there were.
fn sweep() -> usize {
    let ids = leftovers();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
    ids.len()
}

struct Churn {
    start_ms: f64,
    remove_ms: f64,
    /// Containers still there after every `docker rm -f` had answered (swept, untimed).
    leftover: usize,
}

/// One round on one network: `n` containers started `clients` at a time, then removed so.
fn churn(b: &Bench, net: &str, n: usize, clients: usize) -> Churn {
    let tag = match net {
        RV => "rv",
        MV => "mv",
        _ => "no",
    };
    let name = |i: usize| format!("bp7-{tag}-{i}");
    let (start_ms, errors) = parallel(n, clients, |i| {
        docker_try(&[
            "run",
            "-d",
            "--name",
            &name(i),
            "--label",
            LABEL,
            "--net",
            net,
            &b.image,
            "sleep",
            "100000",
        ])
    });
    if !errors.is_empty() {
        sweep();
        panic!(
            "P7: {} of {n} starts on {net} failed, first: {}",
            errors.len(),
            errors[0]
        );
    }
    let (remove_ms, errors) = parallel(n, clients, |i| docker_try(&["rm", "-f", &name(i)]));
    if !errors.is_empty() {
        sweep();
        panic!(
            "P7: {} of {n} removals on {net} failed, first: {}",
            errors.len(),
            errors[0]
        );
    }
    let leftover = sweep();
    if leftover > 0 {
        eprintln!("[bench] P7: {leftover} containers on {net} outlived their docker rm -f; removed");
    }
    Churn {
        start_ms,
        remove_ms,
        leftover,
    }
}

/// `docker network rm`, retried for a while: right after many parallel `docker rm -f`,
/// dockerd may still count endpoints that are gone.
fn remove_network(net: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let out = docker(&["network", "rm", net]);
        if out.status.success() {
            return attempts - 1;
        }
        assert!(
            Instant::now() < deadline,
            "P7: docker network rm {net} still fails after {attempts} attempts: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn secs(ms: f64) -> String {
    format!("{:.2} s", ms / 1000.0)
}

fn range(s: &Summary) -> String {
    format!(
        "{:.2} s ({:.2}–{:.2})",
        s.median / 1000.0,
        s.min / 1000.0,
        s.max / 1000.0
    )
}

pub async fn run(b: &Bench) -> Section {
    let (rounds, containers, clients) = if b.smoke {
        (1, 10, 5)
    } else {
        let rounds = std::env::var("RUSTVLAN_BENCH_P7_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        (rounds, 100, 20)
    };
    let dir = b.scratch("p7");
    let mut plugin = Plugin::new(&b.rustvlan, Path::new("/run/docker/plugins/rustvlan.sock"), &dir);
    plugin.start();
    let (rv_parent, mv_parent) = (Veth::new("bp7rv"), Veth::new("bp7mv"));
    sweep();
    create_network("rustvlan", RV, "10.142.0.0/24", &rv_parent);
    create_network("macvlan", MV, "10.143.0.0/24", &mv_parent);

    // Warm-up: one batch on each, untimed.
    churn(b, RV, clients, clients);
    plugin.settle().await;
    churn(b, MV, clients, clients);

    let (mut rv, mut mv, mut none) = (Vec::new(), Vec::new(), Vec::new());
    let mut settle_ms = Vec::new();
    // Where rustvlan's time goes during its timed rounds, from its own metrics.
    let mut profile = std::collections::BTreeMap::<String, f64>::new();
    for round in 0..rounds {
        // Rotated, so that no variant always runs first.
        let mut order = [RV, MV, NONE];
        order.rotate_left(round % 3);
        for net in order {
            let sums_before = if net == RV {
                plugin.time_sums().await
            } else {
                Default::default()
            };
            let c = churn(b, net, containers, clients);
            if net == RV {
                for (series, v) in plugin.time_sums().await {
                    *profile.entry(series.clone()).or_default() += v - sums_before.get(&series).copied().unwrap_or(0.0);
                }
            }
            eprintln!(
                "[bench] P7 round {}/{rounds} {net}: start {}, removal {}",
                round + 1,
                secs(c.start_ms),
                secs(c.remove_ms)
            );
            if net == NONE {
                none.push(c);
            } else if net == RV {
                rv.push(c);
                // Untimed, as in P1: the links rustvlan deletes off the request path are
                // gone before the next round starts. How long that takes is kept.
                let started = Instant::now();
                plugin.settle().await;
                settle_ms.push(ms(started.elapsed()));
            } else {
                mv.push(c);
            }
        }
    }
    let network_rm_retries: usize = [RV, MV].iter().map(|n| remove_network(n)).sum();
    plugin.stop();

    let series = |v: &[Churn], f: fn(&Churn) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    let start = |c: &Churn| c.start_ms;
    let remove = |c: &Churn| c.remove_ms;
    let total = |c: &Churn| c.start_ms + c.remove_ms;
    let (rv_start, rv_remove, rv_total) = (series(&rv, start), series(&rv, remove), series(&rv, total));
    let (mv_start, mv_remove, mv_total) = (series(&mv, start), series(&mv, remove), series(&mv, total));
    let (s_rv_start, s_rv_remove, s_rv_total) = (summary(&rv_start), summary(&rv_remove), summary(&rv_total));
    let (s_mv_start, s_mv_remove, s_mv_total) = (summary(&mv_start), summary(&mv_remove), summary(&mv_total));
    let no_total = series(&none, total);
    let s_no_total = summary(&no_total);
    let s_settle = summary(&settle_ms);
    let ratio = s_rv_total.median / s_mv_total.median;
    let ratio_start = s_rv_start.median / s_mv_start.median;
    let ratio_remove = s_rv_remove.median / s_mv_remove.median;
    let leftover: usize = rv.iter().chain(&mv).chain(&none).map(|c| c.leftover).sum();
    // The network's share: each round's total less the same round's `--net none` total.
    let share = |v: &[Churn]| {
        v.iter()
            .zip(&none)
            .map(|(c, n)| total(c) - total(n))
            .collect::<Vec<f64>>()
    };
    let (rv_share, mv_share) = (share(&rv), share(&mv));
    let (s_rv_share, s_mv_share) = (summary(&rv_share), summary(&mv_share));
    let share_ratio = s_rv_share.median / s_mv_share.median;
    let (met, how) = verdict(share_ratio, 0.6, true);
    let profile_lines = profile_sentence(&profile, rounds, s_rv_share.median);

    let to_s = |v: &[f64]| v.iter().map(|x| x / 1000.0).collect::<Vec<f64>>();
    let plot = crate::svg::strips(
        &format!(
            "P7, dockerd {}: {containers} containers started then removed, {clients} at a time (lower is better)",
            b.engine
        ),
        "seconds per round and phase",
        &[
            ("rustvlan: total".into(), to_s(&rv_total)),
            ("Docker macvlan: total".into(), to_s(&mv_total)),
            ("rustvlan: start phase".into(), to_s(&rv_start)),
            ("Docker macvlan: start phase".into(), to_s(&mv_start)),
            ("rustvlan: removal phase".into(), to_s(&rv_remove)),
            ("Docker macvlan: removal phase".into(), to_s(&mv_remove)),
            ("no network (--net none): total".into(), to_s(&no_total)),
        ],
    );
    let mut sentences = vec![format!(
        "Goal: the network's share ≤ 0.6× the built-in's ({containers} containers started {clients} at a time, then \
         removed so; a share is a round's total less the same round's `--net none` total). rustvlan {} vs Docker's \
         macvlan {}: ratio {share_ratio:.3}, {how}.",
        secs(s_rv_share.median),
        secs(s_mv_share.median)
    )];
    sentences.push(format!(
        "Totals: rustvlan {}, Docker's macvlan {} (ratio {ratio:.3}), no network at all {}: most of a container's \
         time is dockerd's own work, the same with every driver or none.",
        secs(s_rv_total.median),
        secs(s_mv_total.median),
        secs(s_no_total.median),
    ));
    sentences.push(profile_lines);
    if leftover > 0 {
        sentences.push(format!(
            "{leftover} containers outlived a `docker rm -f` that had answered; they were removed, untimed."
        ));
    }
    let per_s = |s: &Summary| containers as f64 / (s.median / 1000.0);
    Section {
        id: "p7".into(),
        title: format!("P7 container churn, dockerd {}", b.engine),
        results: json!({
            "engine": b.engine,
            "rounds": rounds,
            "containers": containers,
            "concurrency": clients,
            "rustvlan_ms": {"start": s_rv_start.json(), "remove": s_rv_remove.json(), "total": s_rv_total.json()},
            "docker_macvlan_ms": {"start": s_mv_start.json(), "remove": s_mv_remove.json(), "total": s_mv_total.json()},
            "no_network_total_ms": s_no_total.json(),
            "ratio": round(ratio),
            "network_share_ms": {"rustvlan": s_rv_share.json(), "docker_macvlan": s_mv_share.json()},
            "network_share_ratio": round(share_ratio),
            "rustvlan_time_sums_s_per_round": profile.iter().map(|(k, v)| (k.clone(), json!(round(v / rounds as f64)))).collect::<serde_json::Map<_, _>>(),
            "ratio_start": round(ratio_start),
            "ratio_remove": round(ratio_remove),
            "rustvlan_settle_ms": s_settle.json(),
            "leftover_containers": leftover,
            "network_rm_retries": network_rm_retries,
            "goal": "network share ratio <= 0.6",
            "met": met,
            "samples": {
                "rustvlan_start_ms": rv_start, "rustvlan_remove_ms": rv_remove,
                "docker_macvlan_start_ms": mv_start, "docker_macvlan_remove_ms": mv_remove,
                "rustvlan_settle_ms": settle_ms,
            },
        }),
        table: vec![
            ("rustvlan, total".into(), range(&s_rv_total)),
            ("Docker macvlan, total".into(), range(&s_mv_total)),
            ("ratio, total".into(), format!("{ratio:.3}")),
            ("no network (--net none), total".into(), range(&s_no_total)),
            ("rustvlan, network share".into(), range(&s_rv_share)),
            ("Docker macvlan, network share".into(), range(&s_mv_share)),
            ("ratio, network share".into(), format!("{share_ratio:.3}")),
            (
                "rustvlan, start phase".into(),
                format!("{}, {:.1} containers/s", range(&s_rv_start), per_s(&s_rv_start)),
            ),
            (
                "Docker macvlan, start phase".into(),
                format!("{}, {:.1} containers/s", range(&s_mv_start), per_s(&s_mv_start)),
            ),
            ("ratio, start phase".into(), format!("{ratio_start:.3}")),
            (
                "rustvlan, removal phase".into(),
                format!("{}, {:.1} containers/s", range(&s_rv_remove), per_s(&s_rv_remove)),
            ),
            (
                "Docker macvlan, removal phase".into(),
                format!("{}, {:.1} containers/s", range(&s_mv_remove), per_s(&s_mv_remove)),
            ),
            ("ratio, removal phase".into(), format!("{ratio_remove:.3}")),
            (
                "rustvlan's deferred link deletions after the last rm (untimed)".into(),
                format!("{:.1} ms ({:.1}–{:.1})", s_settle.median, s_settle.min, s_settle.max),
            ),
        ],
        plots: vec![("p7.svg".into(), plot)],
        sentences,
        notes: Value::Null,
    }
}

/// Where rustvlan's time went in its timed rounds, per round: inside each plugin call
/// (summed over concurrent calls, so more than wall time), its link operations and its
/// store commits (write and fsync).
fn profile_sentence(profile: &std::collections::BTreeMap<String, f64>, rounds: usize, share_ms: f64) -> String {
    let per_round = |pred: &dyn Fn(&str) -> bool| -> f64 {
        profile.iter().filter(|(k, _)| pred(k)).map(|(_, v)| v).sum::<f64>() / rounds.max(1) as f64
    };
    let mut calls: Vec<(String, f64)> = profile
        .iter()
        .filter(|(k, _)| k.starts_with("rustvlan_request_duration_seconds_sum"))
        .map(|(k, v)| {
            let call = k.split("call=\"").nth(1).and_then(|c| c.split('"').next()).unwrap_or(k);
            (call.to_string(), v / rounds.max(1) as f64)
        })
        .filter(|(_, v)| *v > 0.0005)
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    let calls: Vec<String> = calls.iter().map(|(c, v)| format!("{c} {:.0} ms", v * 1000.0)).collect();
    format!(
        "Where rustvlan's share goes, per round, from its own metrics: {:.0} ms inside plugin calls in all (summed \
         over concurrent calls: {}), of which {:.0} ms in kernel link operations and {:.0} ms in store commits \
         (write and fsync); the share itself is {:.0} ms of wall time, the rest being dockerd's work around the \
         calls and its waiting on them.",
        per_round(&|k| k.starts_with("rustvlan_request_duration_seconds_sum")) * 1000.0,
        calls.join(", "),
        per_round(&|k| k.starts_with("rustvlan_link_operation_duration_seconds_sum")) * 1000.0,
        per_round(&|k| k.starts_with("rustvlan_store_commit_duration_seconds_sum")) * 1000.0,
        share_ms
    )
}
