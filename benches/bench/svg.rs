//! Plots drawn as SVG by hand: one row per variant, every sample a dot, the min–max
//! range a line, the median a bar; or plain bars for rates.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const LEFT: f64 = 230.0;
const RIGHT: f64 = 30.0;
const ROW: f64 = 46.0;
const TOP: f64 = 46.0;
const COLOURS: [&str; 6] = ["#1f6feb", "#d1242f", "#8250df", "#1a7f37", "#bf8700", "#57606a"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn nice_step(span: f64) -> f64 {
    let raw = span / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn frame(title: &str, unit: &str, rows: usize, max: f64, out: &mut String) -> impl Fn(f64) -> f64 + use<> {
    let height = TOP + rows as f64 * ROW + 40.0;
    let max = if max > 0.0 && max.is_finite() { max * 1.08 } else { 1.0 };
    let scale = move |v: f64| LEFT + v / max * (WIDTH - LEFT - RIGHT);
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="14" font-weight="bold">{}</text>"##,
        LEFT / 4.0,
        escape(title)
    );
    let step = nice_step(max);
    let mut tick = 0.0;
    let bottom = TOP + rows as f64 * ROW;
    while tick <= max {
        let x = scale(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="#d0d7de"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#57606a">{}</text>"##,
            bottom + 16.0,
            format_tick(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#57606a">{}</text>"##,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        bottom + 34.0,
        escape(unit)
    );
    scale
}

fn format_tick(v: f64) -> String {
    if v >= 1000.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Samples per variant (lower or higher is better, as the title says).
pub fn strips(title: &str, unit: &str, series: &[(String, Vec<f64>)]) -> String {
    let mut out = String::new();
    let max = series.iter().flat_map(|(_, s)| s.iter()).copied().fold(0.0, f64::max);
    let scale = frame(title, unit, series.len(), max, &mut out);
    for (i, (label, samples)) in series.iter().enumerate() {
        let y = TOP + i as f64 * ROW + ROW / 2.0;
        let colour = COLOURS[i % COLOURS.len()];
        let s = super::stats::summary(samples);
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 8.0,
            y + 4.0,
            escape(label)
        );
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="1.5"/>"##,
            scale(s.min),
            scale(s.max)
        );
        for (k, v) in samples.iter().enumerate() {
            let jitter = ((k * 7919) % 13) as f64 - 6.0;
            let _ = writeln!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{colour}" fill-opacity="0.45"/>"##,
                scale(*v),
                y + jitter
            );
        }
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="black" stroke-width="3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
            y - 13.0,
            y + 13.0,
            y - 16.0,
            format_tick(s.median),
            x = scale(s.median)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One bar per variant.
pub fn bars(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let mut out = String::new();
    let max = bars.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let scale = frame(title, unit, bars.len(), max, &mut out);
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = TOP + i as f64 * ROW + ROW / 2.0;
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{LEFT}" y="{:.1}" width="{:.1}" height="22" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            LEFT - 8.0,
            y + 4.0,
            escape(label),
            y - 11.0,
            (scale(*value) - LEFT).max(1.0),
            scale(*value) + 6.0,
            y + 4.0,
            format_tick(*value)
        );
    }
    out.push_str("</svg>\n");
    out
}
