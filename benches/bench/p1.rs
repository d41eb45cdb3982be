//! P1: `docker run --rm --net N image true`, N on rustvlan (macvlan bridge) or on
//! Docker's built-in macvlan, each on its own veth parent, interleaved round by round;
//! on whichever engine the run has (`p1` on dockerd 20.10, `p1-28` on 28).

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::env::{Plugin, Veth, create_network, docker_ok, ms};
use crate::stats::{summary, verdict};
use crate::{Bench, Section};

pub async fn run(b: &Bench) -> Section {
    let rounds = if b.smoke { 3 } else { 60 };
    let dir = b.scratch("p1");
    let mut plugin = Plugin::new(&b.rustvlan, Path::new("/run/docker/plugins/rustvlan.sock"), &dir);
    plugin.start();
    let (rv_parent, mv_parent) = (Veth::new("bp1rv"), Veth::new("bp1mv"));
    create_network("rustvlan", "bench-rv", "10.140.0.0/24", &rv_parent);
    create_network("macvlan", "bench-mv", "10.141.0.0/24", &mv_parent);
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
    let id = b.engine_id("p1");
    let plot = crate::svg::strips(
        &format!(
            "P1, dockerd {}: docker run --rm --net N busybox true (lower is better)",
            b.engine
        ),
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
        plots: vec![(format!("{id}.svg"), plot)],
        id,
        title: format!("P1 container start+stop, dockerd {}", b.engine),
        results: json!({
            "rounds": rounds,
            "engine": b.engine,
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
        sentences: vec![sentence],
        notes: Value::Null,
    }
}
