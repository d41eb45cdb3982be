//! Summaries of samples.

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p99: f64,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn summary(samples: &[f64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    Summary {
        n: sorted.len(),
        median: percentile(&sorted, 50.0),
        min: sorted.first().copied().unwrap_or(f64::NAN),
        max: sorted.last().copied().unwrap_or(f64::NAN),
        p99: percentile(&sorted, 99.0),
    }
}

impl Summary {
    pub fn json(&self) -> Value {
        json!({"n": self.n, "median": round(self.median), "min": round(self.min), "max": round(self.max), "p99": round(self.p99)})
    }
}

pub fn round(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        x
    }
}

/// "met by 12.3 %" / "missed by 4.0 %": how far `value` is on the good side of `goal`.
pub fn verdict(value: f64, goal: f64, lower_is_better: bool) -> (bool, String) {
    let met = if lower_is_better { value <= goal } else { value >= goal };
    let margin = ((value - goal) / goal * 100.0).abs();
    (met, format!("{} by {margin:.1} %", if met { "met" } else { "missed" }))
}
