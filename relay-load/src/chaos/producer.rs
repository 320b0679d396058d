//! The producers: each scan is submitted with an idempotency key and
//! retried with the same key until the API accepts it (or `--submit-secs`
//! pass).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;

use super::load::{reqwest_reason, Ctx, Scan, Submit};

/// Submits `scan` until accepted, rejected (4xx) or out of time.
pub(super) async fn submit(ctx: &Ctx, scan: &mut Scan) {
    let key = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "image_url": format!("https://images.example.com/chaos/{}-{}.jpg", ctx.run_id, scan.n)
    });
    let until = (Instant::now() + ctx.submit_for).min(ctx.deadline);
    loop {
        scan.attempts += 1;
        let r = ctx
            .http
            .post(format!("{}/api/v1/scan", ctx.api_url))
            .header("X-User-ID", &scan.user)
            .header("X-Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        let reason = match r {
            Ok(resp) if resp.status().is_success() => {
                match resp.json::<serde_json::Value>().await {
                    Ok(v) => match v.get("job_id").and_then(|j| j.as_str()) {
                        Some(job) => {
                            scan.submit = Submit::Accepted(job.to_owned());
                            ctx.accepted.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        None => "2xx without job_id".to_owned(),
                    },
                    Err(e) => format!("2xx {}", reqwest_reason(&e)),
                }
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let code = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                if status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    scan.submit = Submit::Rejected(format!(
                        "HTTP {status} {}",
                        text.chars().take(300).collect::<String>()
                    ));
                    return;
                }
                format!("HTTP {} {code}", status.as_u16())
            }
            Err(e) => reqwest_reason(&e).to_owned(),
        };
        *scan.submit_errors.entry(reason).or_default() += 1;
        if Instant::now() >= until || ctx.stopped() {
            scan.submit = Submit::GaveUp;
            return;
        }
        let pause = rand::rng().random_range(200..500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
