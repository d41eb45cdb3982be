//! P1: `docker run --rm --net N image true`, N on rustvlan (macvlan bridge) or on
//! Docker's built-in macvlan, each on its own veth parent, interleaved round by round.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::env::{Plugin, Veth, docker, docker_ok, ms};
use crate::stats::{summary, verdict};
use crate::{Bench, Section};

pub async fn run(b: &Bench) -> Section {
    let rounds = if b.smoke { 3 } else { 60 };
    let dir = b.scratch("p1");
    let mut plugin = Plugin::new(&b.rustvlan, Path::new("/run/docker/plugins/rustvlan.sock"), &dir);
    plugin.start();
    let (rv_parent, mv_parent) = (Veth::new("bp1rv"), Veth::new("bp1mv"));
    for net in ["bench-rv", "bench-mv"] {
        let _ = docker(&["network", "rm", net]);
    }
    docker_ok(&[
        "network",
        "create",
        "-d",
        "rustvlan",
        "--ipam-driver",
        "rustvlan",
        "--subnet",
        "10.140.0.0/24",
        "-o",
        &format!("parent={}", rv_parent.0),
        "bench-rv",
    ]);
    docker_ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.141.0.0/24",
        "-o",
        &format!("parent={}", mv_parent.0),
        "bench-mv",
    ]);
    let image = b.image.clone();
    let once = |net: &str| {
        let started = Instant::now();
        docker_ok(&["run", "--rm", "--net", net, &image, "true"]);
        ms(started.elapsed())
    };
    for _ in 0..3 {
        once("bench-rv");
        plugin.settle().await;
        once("bench-mv");
    }
    let (mut rv, mut mv) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // A B B A: neither driver always runs first, right after the other's teardown.
        if round % 2 == 1 {
            mv.push(once("bench-mv"));
        }
        rv.push(once("bench-rv"));
        // Untimed: the link rustvlan deletes off the request path is gone before the
        // other driver's next run starts, so neither pays for the other's kernel work.
        plugin.settle().await;
        if round % 2 == 0 {
            mv.push(once("bench-mv"));
        }
    }
    docker_ok(&["network", "rm", "bench-rv", "bench-mv"]);
    plugin.stop();

    let (srv, smv) = (summary(&rv), summary(&mv));
    let ratio = srv.median / smv.median;
    let (met, how) = verdict(ratio, 0.97, true);
    let plot = crate::svg::strips(
        "P1: docker run --rm --net N busybox true (lower is better)",
        "milliseconds per container start and stop",
        &[
            ("rustvlan (plugin)".into(), rv.clone()),
            ("Docker macvlan (built in)".into(), mv.clone()),
        ],
    );
    let sentence = format!(
        "Goal: median ratio ≤ 0.97. rustvlan {:.1} ms vs Docker's macvlan {:.1} ms: ratio {ratio:.3}, {how}.",
        srv.median, smv.median
    );
    Section {
        id: "p1",
        title: "P1 container start+stop".into(),
        results: json!({
            "rounds": rounds,
            "rustvlan_ms": srv.json(),
            "docker_macvlan_ms": smv.json(),
            "ratio": crate::stats::round(ratio),
            "goal": "ratio <= 0.97",
            "met": met,
            "samples": {"rustvlan_ms": rv, "docker_macvlan_ms": mv},
        }),
        table: vec![
            (
                "rustvlan".into(),
                format!("{:.1} ms ({:.1}–{:.1})", srv.median, srv.min, srv.max),
            ),
            (
                "Docker macvlan".into(),
                format!("{:.1} ms ({:.1}–{:.1})", smv.median, smv.min, smv.max),
            ),
            ("ratio".into(), format!("{ratio:.3}")),
        ],
        plots: vec![("p1.svg".into(), plot)],
        sentences: vec![sentence],
        notes: Value::Null,
    }
}
