//! Latency recording: an HDR histogram in microseconds, plus a per-second
//! timeline for the report's "latency over time" chart.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds (1 µs … 1 h, 3 significant digits).
#[derive(Clone, Debug)]
pub struct Lat {
    h: Histogram<u64>,
}

impl Default for Lat {
    fn default() -> Self {
        Self::new()
    }
}

impl Lat {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::with_precision(3)
    }

    /// An empty histogram with `sigfig` significant digits (1..=5). Each
    /// digit less makes it about ten times smaller: 3 digits take ~190 KB,
    /// 2 digits ~25 KB.
    pub fn with_precision(sigfig: u8) -> Self {
        Self {
            h: Histogram::new_with_bounds(1, 3_600_000_000, sigfig.clamp(1, 5))
                .expect("valid histogram bounds"),
        }
    }

    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    /// Records microseconds (clamped into range).
    pub fn record_us(&mut self, us: u64) {
        let _ = self.h.record(us.clamp(1, 3_600_000_000));
    }

    /// Adds another histogram.
    pub fn merge(&mut self, other: &Lat) {
        let _ = self.h.add(&other.h);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// Quantile `q` (0..=1) in milliseconds; 0 when empty.
    pub fn q_ms(&self, q: f64) -> f64 {
        if self.h.is_empty() {
            return 0.0;
        }
        self.h.value_at_quantile(q) as f64 / 1000.0
    }

    /// Mean in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        if self.h.is_empty() {
            return 0.0;
        }
        self.h.mean() / 1000.0
    }

    /// Largest value in milliseconds.
    pub fn max_ms(&self) -> f64 {
        if self.h.is_empty() {
            return 0.0;
        }
        self.h.max() as f64 / 1000.0
    }

    /// Linear buckets between the smallest and the largest recorded value
    /// (ms): `(lo, hi, count)`.
    pub fn buckets(&self, n: usize) -> Vec<Bucket> {
        if self.h.is_empty() || n == 0 {
            return Vec::new();
        }
        let lo = self.h.min() as f64;
        // The top 0.1 % would stretch the axis; they go into the last bucket.
        let hi = (self.h.value_at_quantile(0.999) as f64).max(lo + 1.0);
        let width = (hi - lo) / n as f64;
        let mut out: Vec<Bucket> = (0..n)
            .map(|i| Bucket {
                lo_ms: (lo + width * i as f64) / 1000.0,
                hi_ms: (lo + width * (i + 1) as f64) / 1000.0,
                count: 0,
            })
            .collect();
        for v in self.h.iter_recorded() {
            let x = v.value_iterated_to() as f64;
            let i = (((x - lo) / width) as usize).min(n - 1);
            out[i].count += v.count_at_value();
        }
        out
    }

    /// p50/p95/p99/max summary (ms).
    pub fn summary(&self) -> LatSummary {
        LatSummary {
            count: self.count(),
            mean_ms: round3(self.mean_ms()),
            p50_ms: round3(self.q_ms(0.50)),
            p95_ms: round3(self.q_ms(0.95)),
            p99_ms: round3(self.q_ms(0.99)),
            p999_ms: round3(self.q_ms(0.999)),
            max_ms: round3(self.max_ms()),
        }
    }
}

/// Rounds to 3 decimals (µs in ms) for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A latency summary (ms).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatSummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// One histogram bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Lower bound, ms.
    pub lo_ms: f64,
    /// Upper bound, ms.
    pub hi_ms: f64,
    /// Samples in it.
    pub count: u64,
}

/// One window of the latency timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Window start, seconds since the run started.
    pub t: f64,
    /// Samples in the window.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// p95, ms.
    pub p95_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// A level shown next to the latency (VUs, or events/s).
    pub level: f64,
}

/// Latencies bucketed by time window.
#[derive(Clone, Debug)]
pub struct Timeline {
    window: f64,
    slots: Vec<(Lat, f64)>,
}

impl Timeline {
    /// Windows of `window_secs`.
    pub fn new(window_secs: f64) -> Self {
        Self {
            window: window_secs.max(0.001),
            slots: Vec::new(),
        }
    }

    fn slot(&mut self, t: f64) -> &mut (Lat, f64) {
        let i = (t.max(0.0) / self.window) as usize;
        if self.slots.len() <= i {
            // Two digits: every client opens a slot each window, and a
            // full-precision histogram per client per second was enough
            // allocation (and page faults) to stall the load tool itself.
            self.slots
                .resize_with(i + 1, || (Lat::with_precision(2), 0.0));
        }
        &mut self.slots[i]
    }

    /// Records a latency observed at `t` seconds.
    pub fn record(&mut self, t: f64, us: u64) {
        self.slot(t).0.record_us(us);
    }

    /// Sets the level (e.g. active VUs) at `t` (the maximum in a window wins).
    pub fn level(&mut self, t: f64, level: f64) {
        let s = self.slot(t);
        s.1 = s.1.max(level);
    }

    /// Merges another timeline with the same window.
    pub fn merge(&mut self, other: &Timeline) {
        for (i, (lat, level)) in other.slots.iter().enumerate() {
            let s = self.slot(i as f64 * self.window);
            s.0.merge(lat);
            s.1 = s.1.max(*level);
        }
    }

    /// The windows.
    pub fn windows(&self) -> Vec<Window> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, (lat, level))| Window {
                t: round3(i as f64 * self.window),
                count: lat.count(),
                p50_ms: round3(lat.q_ms(0.5)),
                p95_ms: round3(lat.q_ms(0.95)),
                p99_ms: round3(lat.q_ms(0.99)),
                level: *level,
            })
            .collect()
    }
}

/// Microseconds since the Unix epoch (the clock producers stamp and
/// clients compare against: same host).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub use relay_testkit::bench::pid_cpu;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_buckets() {
        let mut l = Lat::new();
        for i in 1..=1000u64 {
            l.record_us(i * 1000);
        }
        assert!((l.q_ms(0.5) - 500.0).abs() < 2.0);
        let b = l.buckets(10);
        assert_eq!(b.len(), 10);
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 1000);
        let mut t = Timeline::new(1.0);
        t.record(0.5, 1000);
        t.record(2.5, 3000);
        t.level(2.5, 7.0);
        let w = t.windows();
        assert_eq!(w.len(), 3);
        assert_eq!(w[1].count, 0);
        assert_eq!(w[2].level, 7.0);
    }
}
