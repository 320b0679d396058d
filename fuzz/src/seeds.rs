//! Realistic seed inputs for every fuzz target, built with relay's own
//! encoders so they match what producers, the router, the gateway and
//! clients really exchange. `cargo run --example seeds -- <dir>` writes them
//! as `<dir>/<target>/<name>`; `scripts/fuzz.sh seed` merges them into the
//! committed corpora.

use bytes::BytesMut;
use relay_core::codec::{native_fields, Encoding, LiveEnvelope, Payload, Record};
use relay_core::eco2::Eco2Entry;
use relay_core::{auth, Epoch, Event, JobId, Offset, Stage, Status, TraceContext};

use crate::fields_to_bytes;

/// The gateway secret of the `http_front` and `ids` targets.
pub const SECRET: &[u8] = b"fuzz-secret";
/// Jobs the `http_front` target's in-memory backend holds (a native-route
/// id and one long enough for the eco2 routes).
pub const FRONT_JOBS: &[&str] = &["job-1", "fc052f15-449f-4ce4-aa96-99d400ed7865"];
/// Their history epoch.
pub const FRONT_EPOCH: u64 = 7_777_777;
/// An expiry far in the future (2100-01-01) for seed tokens.
pub const FAR_EXPIRY: u64 = 4_102_444_800;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn event(job: &str, seq: u64, stage: &str, status: Status) -> Event {
    Event::new("scan", job, seq, stage, status)
        .expect("valid seed event")
        .with_ts(1_766_899_796_475)
}

fn events() -> Vec<Event> {
    let trace = TraceContext::parse_traceparent(TRACEPARENT).expect("valid traceparent");
    vec![
        event("job-1", 10, "vision", Status::Started).with_progress(10),
        event("job-1", 11, "vision", Status::Completed)
            .with_progress(25)
            .with_data(serde_json::json!({"classification": {"major_category": "재활용폐기물", "middle_category": "종이"}, "confidence": 0.93}))
            .with_trace(trace),
        event("fc052f15-449f-4ce4-aa96-99d400ed7865", 51, "done", Status::Completed)
            .with_progress(100)
            .with_data(serde_json::json!({"final_answer": "Flatten the box.", "reward": {"points": 10}, "list": [1, -2, 3.5, null, true, "x"]})),
        event("job-1", 32, "answer", Status::Failed).with_data(serde_json::json!("model timed out")),
    ]
}

fn eco2_entries() -> Vec<Eco2Entry> {
    let job = JobId::new("abc-123").expect("valid job");
    let trace = TraceContext::parse_traceparent(TRACEPARENT).expect("valid traceparent");
    let stage = |s: &str| Stage::new(s).expect("valid stage");
    vec![
        Eco2Entry::build(
            &job,
            &stage("vision"),
            "completed",
            11,
            "1766899796.475799",
            Some(25),
            None,
            Some(&trace),
        ),
        Eco2Entry::build(
            &job,
            &stage("queued"),
            "started",
            0,
            "1766899796.1",
            None,
            None,
            None,
        ),
        Eco2Entry::build(
            &job,
            &stage("done"),
            "completed",
            51,
            "1766899799.5",
            Some(100),
            Some(
                &serde_json::json!({"task_id": "abc-123", "status": "completed", "pipeline_result": {"final_answer": {"answer": "종이류로 배출"}}, "reward": null}),
            ),
            Some(&trace),
        ),
        Eco2Entry::build(
            &job,
            &stage("done"),
            "failed",
            59,
            "1766899799.5",
            None,
            Some(&serde_json::json!({"error": "enqueue failed"})),
            None,
        ),
    ]
}

fn with_mode(mode: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(body);
    v
}

fn stream_entry(out: &mut Vec<(&'static str, String, Vec<u8>)>) {
    let mut add = |name: String, data: Vec<u8>| out.push(("stream_entry", name, data));
    for (i, ev) in events().iter().enumerate() {
        for enc in [Encoding::MsgPack, Encoding::Json] {
            let fields = native_fields(ev, enc).expect("encodable");
            add(
                format!("native-{i}-{enc}"),
                with_mode(0, &fields_to_bytes(&fields)),
            );
            let payload = Payload::from_event(ev, enc).expect("encodable");
            add(format!("payload-{i}-{enc}"), with_mode(1, &payload.0));
            let env = LiveEnvelope {
                epoch: Epoch(4_503_599_627_370_495),
                record: Record {
                    offset: Offset(i as u64 + 1),
                    payload,
                },
            };
            add(format!("envelope-{i}-{enc}"), with_mode(1, &env.encode()));
        }
        // An entry without `enc` (MessagePack by default) and without `stage`.
        let mut fields = native_fields(ev, Encoding::MsgPack).expect("encodable");
        fields.retain(|(k, _)| k != "enc" && k != "stage");
        add(
            format!("native-{i}-minimal"),
            with_mode(0, &fields_to_bytes(&fields)),
        );
    }
    for (i, e) in eco2_entries().iter().enumerate() {
        add(
            format!("eco2-{i}"),
            with_mode(0, &fields_to_bytes(&e.to_fields())),
        );
        let json = e.routed_json(&format!("1766899796476-{i}"));
        add(format!("routed-{i}"), with_mode(1, json.as_bytes()));
        let env = format!("12345:{}:{json}", i + 1);
        add(format!("routed-envelope-{i}"), with_mode(1, env.as_bytes()));
    }
    add("structured-a".into(), with_mode(2, b"\x01scan\x00job-1\x00vision\x00\x02\x07\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00"));
    add("structured-b".into(), with_mode(2, &[0xa5; 64]));
}

fn sse_client(out: &mut Vec<(&'static str, String, Vec<u8>)>) {
    let mut add = |name: &str, key: [u8; 4], data: &[u8]| {
        let mut v = vec![0, key[0], key[1], key[2], key[3]];
        v.extend_from_slice(data);
        out.push(("sse_client", name.to_owned(), v));
    };
    // What relay's gateway writes (native framing, a snapshot, eco2 framing).
    let mut native = BytesMut::new();
    relay_sse::sse::put_retry(&mut native, 2000);
    for ev in events() {
        let data = serde_json::to_vec(&ev).expect("encodable");
        let id = format!("7777777:{}", ev.seq);
        relay_sse::sse::put_event(&mut native, Some(&id), Some(ev.stage.as_str()), &data);
    }
    relay_sse::sse::put_comment(&mut native, "heartbeat");
    relay_sse::sse::put_event(
        &mut native,
        Some("7777777:4"),
        Some("snapshot"),
        br#"{"reason":"trimmed","epoch":7777777,"offset":4,"event":null}"#,
    );
    add("native", [0, 0, 0, 0], &native);
    add("native-split", [5, 17, 99, 3], &native);
    let crlf = String::from_utf8_lossy(&native).replace('\n', "\r\n");
    add("native-crlf", [7, 1, 2, 3], crlf.as_bytes());
    let cr = String::from_utf8_lossy(&native).replace('\n', "\r");
    add("native-cr", [3, 9, 9, 9], cr.as_bytes());
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&native);
    add("bom", [2, 1, 0, 0], &bom);

    let mut eco2 = BytesMut::new();
    for (i, e) in eco2_entries().iter().enumerate() {
        let sid = format!("1766899796476-{i}");
        let json = e.routed_json(&sid);
        let name = if e.status == "failed" {
            "error"
        } else {
            e.stage.as_str()
        };
        relay_sse::sse::put_event(&mut eco2, Some(&sid), Some(name), json.as_bytes());
    }
    add("eco2", [4, 200, 13, 77], &eco2);
    add(
        "spec-examples",
        [6, 5, 4, 3],
        b"data: YHOO\ndata: +2\ndata: 10\n\n: test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\nevent: add\ndata: 73857293\n\nretry: 10000\nid: a\0b\ndata\ndata\n\ndata:\n\nevent\ndata: tail-without-blank-line",
    );
    out.push((
        "sse_client",
        "frames-a".into(),
        vec![
            1, 3, 0, 0, 0, 0, 1, b'7', 0, 1, b'x', 4, b'a', b'\n', b'b', b'\r', 1, 2, 0xff,
        ],
    ));
}

fn request(target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("GET {target} HTTP/1.1\r\nHost: relay.example\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn http_front(out: &mut Vec<(&'static str, String, Vec<u8>)>) {
    let native = JobId::new(FRONT_JOBS[0]).expect("valid job");
    let eco2 = JobId::new(FRONT_JOBS[1]).expect("valid job");
    let tn = auth::issue_at(SECRET, &native, FAR_EXPIRY);
    let te = auth::issue_at(SECRET, &eco2, FAR_EXPIRY);
    let bearer_n = format!("Bearer {tn}");
    let pos = format!("{FRONT_EPOCH}:1");
    let reqs: Vec<(&str, Vec<u8>)> = vec![
        (
            "native-bearer-resume",
            request(
                "/v1/jobs/job-1/events",
                &[
                    ("Accept", "text/event-stream"),
                    ("Authorization", &bearer_n),
                    ("Last-Event-ID", &pos),
                    ("Cache-Control", "no-cache"),
                ],
            ),
        ),
        (
            "native-query-token",
            request(
                &format!("/v1/jobs/job-1/events?token={tn}&last_event_id={FRONT_EPOCH}%3A2"),
                &[
                    ("Connection", "keep-alive, Close"),
                    ("Origin", "https://app.example"),
                ],
            ),
        ),
        (
            "native-wrong-job",
            request(&format!("/v1/jobs/job-2/events?token={tn}"), &[]),
        ),
        (
            "native-stale-epoch",
            request(
                "/v1/jobs/job-1/events",
                &[("Authorization", &bearer_n), ("Last-Event-ID", "1:99")],
            ),
        ),
        (
            "eco2-stream",
            request(
                &format!("/api/v1/stream?job_id={}&token={te}", FRONT_JOBS[1]),
                &[
                    ("Last-Event-ID", "1766899796476-0"),
                    ("Content-Length", "0"),
                ],
            ),
        ),
        (
            "eco2-events",
            request(
                &format!("/api/v1/scan/{}/events?token={te}", FRONT_JOBS[1]),
                &[("Last-Event-ID", "0-1")],
            ),
        ),
        ("eco2-short-job", request("/api/v1/chat/short/events", &[])),
        ("no-auth", request("/v1/jobs/job-1/events", &[])),
        (
            "bad-job-id",
            request(
                "/v1/jobs/job%201/events",
                &[("Authorization", "Bearer x.y.z")],
            ),
        ),
        (
            "upgrade",
            request("/v1/jobs/job-1/events", &[("Upgrade", "websocket")]),
        ),
        (
            "post-body",
            b"POST /v1/jobs/job-1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                .to_vec(),
        ),
        (
            "http10",
            b"GET /v1/jobs/job-1/events HTTP/1.0\r\n\r\n".to_vec(),
        ),
        (
            "state",
            request(&format!("/v1/jobs/job-1/state?token={tn}"), &[]),
        ),
        (
            "partial",
            b"GET /v1/jobs/job-1/events HTTP/1.1\r\nHost: x\r\n".to_vec(),
        ),
    ];
    for (name, r) in reqs {
        out.push(("http_front", name.to_owned(), r));
    }
}

fn ids(out: &mut Vec<(&'static str, String, Vec<u8>)>) {
    let mut add = |name: &str, data: Vec<u8>| out.push(("ids", name.to_owned(), data));
    let ops: &[u8] = &[
        12, 3, 1, 0, 2, 3, 0, 0, 2, 4, 3, 1, 5, 3, 6, 2, 3, 2, 2, 0, 3,
    ];
    for (name, line) in [
        ("pos", "42:3"),
        ("pos-zero", "42:0"),
        ("pos-other-epoch", "7:2"),
        ("pos-ahead", "42:100"),
        ("pos-max", "18446744073709551615:18446744073709551615"),
        ("pos-js-max", "9007199254740991:1"),
        ("pos-padded", " 42:+3 "),
        ("stream-id", "1766899796476-0"),
        ("stream-id-ms", "1766899796476"),
        ("garbage", "x:y"),
    ] {
        let mut v = vec![0];
        v.extend_from_slice(line.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(ops);
        add(name, v);
    }
    let job = JobId::new("job-1").expect("valid job");
    let t = auth::issue_at(SECRET, &job, FAR_EXPIRY);
    add(
        "token-valid",
        format!("\x01{t}\njob-1\n1766899796").into_bytes(),
    );
    add(
        "token-expired",
        format!("\x01{t}\njob-1\n{FAR_EXPIRY}").into_bytes(),
    );
    add("token-other-job", format!("\x01{t}\njob-2\n0").into_bytes());
    add("token-garbage", b"\x01a.b.c\njob-1\n0".to_vec());
    for (name, s) in [
        ("job-id", "fc052f15-449f-4ce4-aa96-99d400ed7865"),
        ("job-id-bad", "job 1/../x"),
        ("traceparent", TRACEPARENT),
        (
            "traceparent-v1",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ),
        ("status", "completed"),
    ] {
        add(name, format!("\x02{s}").into_bytes());
    }
}

fn scan_api(out: &mut Vec<(&'static str, String, Vec<u8>)>) {
    let mut add = |name: &str, mode: u8, user: &str, idem: &str, body: &str| {
        out.push((
            "scan_api",
            name.to_owned(),
            format!("{}{user}\n{idem}\n{body}", mode as char).into_bytes(),
        ));
    };
    add(
        "ok",
        0,
        "user-1",
        "idem-key-1",
        r#"{"image_url":"https://images.example.com/a.jpg","user_input":"이거 어떻게 버려요?","model":"gpt-4o-mini"}"#,
    );
    add(
        "ok-null",
        0,
        "u@example.com",
        "",
        r#"{"image_url":"http://93.184.216.34/a.jpg","user_input":null,"model":null}"#,
    );
    add(
        "allow-list",
        1,
        "user:2",
        "k",
        r#"{"image_url":"https://cdn.example.com./x.png"}"#,
    );
    add(
        "allow-private",
        2,
        "user_3",
        "k2",
        r#"{"image_url":"http://127.0.0.1:8080/a.jpg"}"#,
    );
    add(
        "short-limit",
        4,
        "u",
        "k",
        r#"{"image_url":"https://example.org/a-very-long-path/with/segments/image.jpg"}"#,
    );
    for (name, url) in [
        ("loopback", "http://127.0.0.1/a.jpg"),
        ("decimal-ip", "http://2130706433/a.jpg"),
        ("hex-ip", "http://0x7f.1/a.jpg"),
        ("metadata", "http://169.254.169.254/latest/meta-data"),
        ("v6-loopback", "http://[::1]/a.jpg"),
        ("v6-mapped", "http://[::ffff:10.0.0.1]/a.jpg"),
        ("v6-global", "http://[2606:4700::1111]/a.jpg"),
        ("v6-nat64", "http://[64:ff9b::5db8:d822]/a.jpg"),
        ("localhost", "http://LOCALHOST./a.jpg"),
        ("creds", "https://user:pw@example.com/a.jpg"),
        ("ftp", "ftp://example.com/a.jpg"),
    ] {
        add(
            name,
            0,
            "user-1",
            "",
            &format!(r#"{{"image_url":"{url}"}}"#),
        );
    }
    add(
        "bad-model",
        0,
        "user-1",
        "",
        r#"{"image_url":"https://example.com/a.jpg","model":"gpt-5"}"#,
    );
    add(
        "not-object",
        0,
        "user-1",
        "",
        r#"["https://example.com/a.jpg"]"#,
    );
    add("wrong-type", 0, "user-1", "", r#"{"image_url":42}"#);
    add(
        "dup-key",
        0,
        "user-1",
        "",
        r#"{"image_url":"http://10.0.0.1/","image_url":"https://example.com/a.jpg"}"#,
    );
    add("bad-json", 0, "", "bad key", r#"{"image_url":"#);
}

/// Every seed: (target, name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    stream_entry(&mut out);
    sse_client(&mut out);
    http_front(&mut out);
    ids(&mut out);
    scan_api(&mut out);
    out
}
