//! The HTML report: generated from synthetic data, every inline SVG parses
//! as XML with the expected chart elements, and — when `/usr/bin/chromium`
//! exists — the page renders headless to a non-empty PNG.

use std::process::Command;

use relay_load::report::{self, Report};

fn svgs(html: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("<svg") {
        let end = rest[i..].find("</svg>").expect("closed svg") + i + "</svg>".len();
        out.push(&rest[i..end]);
        rest = &rest[end..];
    }
    out
}

#[test]
fn html_report_svgs_parse() {
    let r = report::synthetic();
    let html = r.to_html();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // The title's markup characters are escaped.
    assert!(html.contains("synthetic report &lt;&amp;&gt; check"));
    let svgs = svgs(&html);
    assert_eq!(svgs.len(), 2, "timeline and histogram");
    for s in &svgs {
        let doc = roxmltree::Document::parse(s)
            .unwrap_or_else(|e| panic!("SVG does not parse: {e}\n{s}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert_eq!(
            doc.root_element().tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
    }
    let timeline = roxmltree::Document::parse(svgs[0]).expect("timeline");
    let polylines = timeline
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert_eq!(polylines, 3, "p50, p95, p99 lines");
    let hist = roxmltree::Document::parse(svgs[1]).expect("histogram");
    let bars = hist
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#4c78a8"))
        .count();
    assert_eq!(bars, 40);
    // Every sample is in some bar.
    let total: u64 = r.histogram.iter().map(|b| b.count).sum();
    assert_eq!(total, 5000);
}

#[test]
fn empty_report_still_valid_svg() {
    let r = Report {
        title: "empty".into(),
        ..Default::default()
    };
    for s in svgs(&r.to_html()) {
        roxmltree::Document::parse(s).expect("parses");
    }
    // JSON round trip.
    let j = serde_json::to_string(&report::synthetic()).expect("json");
    let back: Report = serde_json::from_str(&j).expect("back");
    assert_eq!(back.histogram.len(), 40);
}

#[test]
fn html_report_renders_in_headless_chromium() {
    // Panics with install instructions when Chromium is missing: a report
    // test that skips itself would pass without rendering anything.
    let chromium = relay_testkit::browser::chromium();
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("report.html");
    let png = dir.path().join("report.png");
    std::fs::write(&page, report::synthetic().to_html()).expect("write");
    let status = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .args(["--window-size=1000,1600", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        status.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    // A blank 1000×1600 page compresses to a few KB; charts and text make it larger.
    assert!(
        bytes.len() > 20_000,
        "screenshot too small ({} bytes): nothing rendered?",
        bytes.len()
    );
}
