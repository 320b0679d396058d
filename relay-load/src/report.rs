//! The run report: a summary table for stdout, JSON, and a self-contained
//! HTML page with two hand-rolled inline SVG charts (latency over time with
//! the load level, and a latency histogram). No scripts, no external assets:
//! it opens from disk in any browser.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::{Bucket, LatSummary, Window};

/// Everything a run produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// `scan` or `relay`.
    pub scenario: String,
    /// Human title.
    pub title: String,
    /// The command line that produced it.
    pub command: String,
    /// Unix seconds at start.
    pub started_unix: u64,
    /// Machine and target description (cores, versions, URLs).
    pub environment: Vec<(String, String)>,
    /// The summary table: (metric, value).
    pub summary: Vec<(String, String)>,
    /// Structured figures (scenario specific).
    pub figures: serde_json::Value,
    /// What `timeline` and `histogram` measure (e.g. "E2E latency").
    pub latency_label: String,
    /// What `Window::level` is (e.g. "VUs").
    pub level_label: String,
    /// Latency summary of the charted measure.
    pub latency: LatSummary,
    /// Latency over time.
    pub timeline: Vec<Window>,
    /// Latency histogram.
    pub histogram: Vec<Bucket>,
}

impl Report {
    /// The summary as an aligned two-column table.
    pub fn table(&self) -> String {
        let w = self
            .summary
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let _ = writeln!(out, "{}", "─".repeat(self.title.chars().count().max(40)));
        for (k, v) in &self.summary {
            let pad = w - k.chars().count();
            let _ = writeln!(out, "  {k}{}  {v}", " ".repeat(pad));
        }
        out
    }

    /// The self-contained HTML report.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>{t}</title><style>\
             body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1000px}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
             td.v{{font-family:monospace}}h2{{margin-top:1.5em}}svg{{background:#fff;border:1px solid #ddd}}\
             pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}</style></head><body>\n\
             <h1>{t}</h1>\n<p><code>{c}</code></p>\n<h2>Summary</h2>\n<table>",
            t = esc(&self.title),
            c = esc(&self.command)
        );
        for (k, v) in &self.summary {
            let _ = write!(
                h,
                "<tr><th>{}</th><td class=\"v\">{}</td></tr>",
                esc(k),
                esc(v)
            );
        }
        h.push_str("</table>\n<h2>Environment</h2>\n<table>");
        for (k, v) in &self.environment {
            let _ = write!(
                h,
                "<tr><th>{}</th><td class=\"v\">{}</td></tr>",
                esc(k),
                esc(v)
            );
        }
        let _ = write!(
            h,
            "</table>\n<h2>{} over time</h2>\n{}\n<h2>{} histogram</h2>\n{}\n",
            esc(&self.latency_label),
            timeline_svg(&self.timeline, &self.latency_label, &self.level_label),
            esc(&self.latency_label),
            histogram_svg(&self.histogram, &self.latency_label)
        );
        let figures = serde_json::to_string_pretty(&self.figures).unwrap_or_default();
        let _ = write!(
            h,
            "<h2>Figures (JSON)</h2>\n<pre>{}</pre>\n</body></html>\n",
            esc(&figures)
        );
        h
    }
}

/// XML/HTML escape.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => o.push(c),
        }
    }
    o
}

const W: f64 = 900.0;
const H: f64 = 360.0;
const ML: f64 = 70.0;
const MR: f64 = 70.0;
const MT: f64 = 20.0;
const MB: f64 = 50.0;

/// A "nice" axis maximum and tick step for `max`.
fn nice(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn svg_open(out: &mut String, label: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" font-size=\"12\">",
        esc(label)
    );
}

fn axes(
    out: &mut String,
    xmax: f64,
    xstep: f64,
    ymax: f64,
    ystep: f64,
    xlabel: &str,
    ylabel: &str,
) {
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let mut y = 0.0;
    while y <= ymax + ystep * 0.01 {
        let py = MT + ph - y / ymax * ph;
        let _ = write!(
            out,
            "<line x1=\"{ML}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ML + pw,
            ML - 6.0,
            py + 4.0,
            fmt_num(y)
        );
        y += ystep;
    }
    let mut x = 0.0;
    while x <= xmax + xstep * 0.01 {
        let px = ML + x / xmax * pw;
        let _ = write!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            MT + ph,
            MT + ph + 5.0,
            MT + ph + 18.0,
            fmt_num(x)
        );
        x += xstep;
    }
    let _ = write!(
        out,
        "<rect x=\"{ML}\" y=\"{MT}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">{}</text>",
        ML + pw / 2.0,
        H - 10.0,
        esc(xlabel),
        MT + ph / 2.0,
        MT + ph / 2.0,
        esc(ylabel)
    );
}

/// One line of the timeline: name, colour, value of a window.
type Series = (&'static str, &'static str, fn(&Window) -> f64);

/// Latency percentiles per window (lines) and the load level (grey area,
/// right axis).
pub fn timeline_svg(windows: &[Window], label: &str, level_label: &str) -> String {
    let mut out = String::new();
    svg_open(&mut out, &format!("{label} over time"));
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let tmax = windows.last().map(|w| w.t + 1.0).unwrap_or(1.0);
    let (xmax, xstep) = nice(tmax);
    let ymax_raw = windows.iter().map(|w| w.p99_ms).fold(0.0, f64::max);
    let (ymax, ystep) = nice(ymax_raw);
    let lmax_raw = windows.iter().map(|w| w.level).fold(0.0, f64::max);
    let (lmax, lstep) = nice(lmax_raw);
    axes(
        &mut out,
        xmax,
        xstep,
        ymax,
        ystep,
        "seconds since start",
        &format!("{label} (ms)"),
    );
    let px = |t: f64| ML + t / xmax * pw;
    // Level as a grey step area on the right axis.
    if lmax_raw > 0.0 {
        let mut d = format!("M{:.1},{:.1}", px(0.0), MT + ph);
        for w in windows {
            let y = MT + ph - w.level / lmax * ph;
            let _ = write!(
                d,
                " L{:.1},{y:.1} L{:.1},{y:.1}",
                px(w.t),
                px(w.t + 1.0).min(ML + pw)
            );
        }
        let _ = write!(
            d,
            " L{:.1},{:.1} Z",
            px(windows.last().map(|w| w.t + 1.0).unwrap_or(0.0)).min(ML + pw),
            MT + ph
        );
        let _ = write!(
            out,
            "<path d=\"{d}\" fill=\"#ddd\" fill-opacity=\"0.6\" stroke=\"none\"/>"
        );
        let mut l = 0.0;
        while l <= lmax + lstep * 0.01 {
            let y = MT + ph - l / lmax * ph;
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#888\">{}</text>",
                ML + pw + 6.0,
                y + 4.0,
                fmt_num(l)
            );
            l += lstep;
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#888\" text-anchor=\"middle\" transform=\"rotate(90 {:.1} {:.1})\">{}</text>",
            W - 14.0,
            MT + ph / 2.0,
            W - 14.0,
            MT + ph / 2.0,
            esc(level_label)
        );
    }
    let series: [Series; 3] = [
        ("p50", "#1f77b4", |w| w.p50_ms),
        ("p95", "#ff7f0e", |w| w.p95_ms),
        ("p99", "#d62728", |w| w.p99_ms),
    ];
    for (i, (name, color, f)) in series.iter().enumerate() {
        let mut pts = String::new();
        for w in windows.iter().filter(|w| w.count > 0) {
            let _ = write!(
                pts,
                "{:.1},{:.1} ",
                px(w.t + 0.5),
                MT + ph - f(w).min(ymax) / ymax * ph
            );
        }
        if !pts.is_empty() {
            let _ = write!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
                pts.trim_end()
            );
        }
        let lx = ML + 10.0 + 70.0 * i as f64;
        let _ = write!(
            out,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{name}</text>",
            MT + 10.0,
            lx + 16.0,
            MT + 14.0
        );
    }
    out.push_str("</svg>");
    out
}

/// Bars of a latency histogram.
pub fn histogram_svg(buckets: &[Bucket], label: &str) -> String {
    let mut out = String::new();
    svg_open(&mut out, &format!("{label} histogram"));
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let lo = buckets.first().map(|b| b.lo_ms).unwrap_or(0.0);
    let hi = buckets.last().map(|b| b.hi_ms).unwrap_or(1.0);
    let cmax = buckets.iter().map(|b| b.count).max().unwrap_or(0) as f64;
    let (ymax, ystep) = nice(cmax);
    // x axis in ms, offset to start at `lo` (ticks labelled absolutely).
    let span = (hi - lo).max(1e-6);
    let (xspan, xstep) = nice(span);
    let mut shifted = String::new();
    axes(
        &mut shifted,
        xspan,
        xstep,
        ymax,
        ystep,
        &format!("{label} (ms, from {})", fmt_num(lo)),
        "samples",
    );
    out.push_str(&shifted);
    let bw = pw / buckets.len().max(1) as f64 * (span / xspan);
    for (i, b) in buckets.iter().enumerate() {
        let h = b.count as f64 / ymax * ph;
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4c78a8\"><title>{}–{} ms: {}</title></rect>",
            ML + bw * i as f64,
            MT + ph - h,
            (bw - 1.0).max(0.5),
            fmt_num(b.lo_ms),
            fmt_num(b.hi_ms),
            b.count
        );
    }
    out.push_str("</svg>");
    out
}

/// A synthetic report, for the report-rendering tests.
pub fn synthetic() -> Report {
    use crate::stats::{Lat, Timeline};
    let mut lat = Lat::new();
    let mut tl = Timeline::new(1.0);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..5000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = i as f64 / 50.0;
        let us = 11_000_000 + (x % 3_000_000) + (i % 7) * 10_000;
        lat.record_us(us);
        tl.record(t, us);
        tl.level(t, (t * 5.0).min(250.0));
    }
    Report {
        scenario: "synthetic".into(),
        title: "relay-load synthetic report <&> check".into(),
        command: "relay-load (synthetic report)".into(),
        started_unix: 0,
        environment: vec![("cores".into(), "2".into())],
        summary: vec![
            ("iterations".into(), "5000".into()),
            ("E2E p95".into(), format!("{:.1} ms", lat.q_ms(0.95))),
        ],
        figures: serde_json::json!({"e2e": lat.summary()}),
        latency_label: "E2E latency".into(),
        level_label: "VUs".into(),
        latency: lat.summary(),
        timeline: tl.windows(),
        histogram: lat.buckets(40),
    }
}
