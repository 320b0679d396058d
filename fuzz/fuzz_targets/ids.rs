//! Small client-supplied values the gateway and API parse: `Last-Event-ID`
//! (native `{epoch}:{offset}` positions and eco2 stream ids) and the resume
//! that starts from it, stream access tokens (`relay_core::auth`), job ids,
//! stage/domain names and `traceparent`.
//!
//! Input: one mode byte, then
//! - `0`: a `Last-Event-ID` line, then bytes driving a resume from that
//!   position against a simulated job (history reads, live messages,
//!   duplicates, losses, reconnects, trimming). Invariants: a parsed position
//!   or stream id prints back to itself (canonical input) or to an equivalent
//!   value; the resume never panics on any position and, once everything
//!   settles, the client has every offset up to the job's top exactly once, in
//!   order, with a snapshot only where the job's history cannot continue the
//!   client's position.
//! - `1`: `token \n job \n now`, checked with `auth::verify`. Invariants: a
//!   token is accepted only if it is the one `issue_at` makes for that job
//!   and a later expiry; an issued token verifies, expires, is refused for
//!   another job or secret, and no one-byte change of it verifies.
//! - `2`: text checked as a job id, a stage, a domain and a `traceparent`.
//!   Invariants: accepted exactly when the documented rules hold; parsed
//!   values print back to the input (modulo the traceparent version).
#![no_main]

use std::collections::VecDeque;

use arbitrary::Unstructured;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use relay_core::auth::{self, AuthError};
use relay_core::backend::{HistoryPage, JobState, StreamId};
use relay_core::resume::{Action, Resume, Snapshot, SnapshotReason};
use relay_core::{Domain, Epoch, JobId, LiveEnvelope, Offset, Payload, Position, Record, Stage};
use relay_core::{Status, TraceContext};

const SECRET: &[u8] = relay_fuzz::seeds::SECRET;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let (line, ops) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            last_event_id(line, ops);
        }
        1 => token(rest),
        _ => names(&String::from_utf8_lossy(rest)),
    }
});

fn last_event_id(line: &[u8], ops: &[u8]) {
    // The gateway reads the header as visible ASCII, trimmed.
    let Ok(raw) = std::str::from_utf8(line) else {
        return;
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return;
    }
    let from = match raw.parse::<Position>() {
        Ok(p) => {
            let printed = p.to_string();
            assert_eq!(printed.parse::<Position>().unwrap(), p);
            let canonical = |s: &str| {
                s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
            };
            if raw.split(':').all(canonical) {
                assert_eq!(printed, raw, "canonical position does not print back");
            }
            p
        }
        Err(_) => {
            if let Ok(sid) = raw.parse::<StreamId>() {
                let printed = sid.to_string();
                assert_eq!(printed.parse::<StreamId>().unwrap(), sid);
            }
            // What the gateway resumes an unparsable id from.
            Position {
                epoch: Epoch(0),
                offset: Offset(0),
            }
        }
    };
    resume(from, ops);
}

const JOB_EPOCH: Epoch = Epoch(42);

fn payload(o: u64) -> Payload {
    Payload(Bytes::from(format!("j{{\"o\":{o}}}")))
}

fn env(o: u64) -> LiveEnvelope {
    LiveEnvelope {
        epoch: JOB_EPOCH,
        record: Record {
            offset: Offset(o),
            payload: payload(o),
        },
    }
}

/// A job's history as the backend holds it.
struct Job {
    applied: u64,
    /// Keep at most this many records (`None`: unbounded).
    keep: Option<u64>,
    /// Whether a read found the history trimmed past what it asked for.
    trimmed_seen: bool,
}

impl Job {
    fn first(&self) -> u64 {
        match self.keep {
            Some(k) if self.applied > k => self.applied - k + 1,
            _ => 1,
        }
    }

    fn page(&mut self, after: Offset, limit: usize) -> HistoryPage {
        if self.applied == 0 {
            return HistoryPage::default();
        }
        let first = self.first();
        if first > after.0.saturating_add(1) {
            self.trimmed_seen = true;
        }
        let start = first.max(after.0.saturating_add(1));
        HistoryPage {
            epoch: Some(JOB_EPOCH),
            top: Offset(self.applied),
            first: Some(Offset(first)),
            records: (start..=self.applied)
                .take(limit)
                .map(|o| env(o).record)
                .collect(),
        }
    }

    fn state(&self) -> Option<JobState> {
        (self.applied > 0).then(|| JobState {
            epoch: JOB_EPOCH,
            top: Offset(self.applied),
            seq: self.applied,
            record: env(self.applied).record,
        })
    }
}

/// The client's side: what it received, checked as it arrives.
struct Client {
    at: Option<Position>,
    snapshots: Vec<Snapshot>,
    outstanding: Option<Action>,
}

impl Client {
    fn handle(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Emit(e) => {
                    let pos = e.position();
                    assert_eq!(pos.epoch, JOB_EPOCH, "emitted another history");
                    match self.at {
                        Some(c) if c.epoch == JOB_EPOCH => assert_eq!(
                            c.offset.0.checked_add(1),
                            Some(pos.offset.0),
                            "gap or repeat: {c} -> {pos}"
                        ),
                        _ => assert_eq!(pos.offset, Offset(1), "must start at offset 1"),
                    }
                    assert_eq!(e.record.payload, payload(pos.offset.0));
                    self.at = Some(pos);
                }
                Action::Snapshot(s) => {
                    self.at = s.position();
                    self.snapshots.push(s);
                }
                read => {
                    assert!(self.outstanding.is_none(), "two reads outstanding");
                    self.outstanding = Some(read);
                }
            }
        }
    }
}

fn resume(from: Position, ops: &[u8]) {
    let mut u = Unstructured::new(ops);
    let total: u64 = u.int_in_range(0..=24).unwrap_or(3);
    let pre = u.int_in_range(0..=total).unwrap_or(0);
    let keep = if u.arbitrary().unwrap_or(false) {
        Some(u.int_in_range(1..=6).unwrap_or(2))
    } else {
        None
    };
    let mut job = Job {
        applied: pre,
        keep,
        trimmed_seen: false,
    };
    let mut r = Resume::new(Some(from)).with_buffer_limit(8);
    let mut client = Client {
        at: Some(from),
        snapshots: Vec::new(),
        outstanding: None,
    };
    let mut live: VecDeque<LiveEnvelope> = VecDeque::new();
    client.handle(r.start());

    let serve = |r: &mut Resume, client: &mut Client, job: &mut Job, limit: usize| match client
        .outstanding
        .take()
    {
        Some(Action::ReadHistory { after }) => {
            let page = job.page(after, limit);
            client.handle(r.on_history(page));
        }
        Some(Action::ReadState) => {
            let st = job.state();
            client.handle(r.on_state(st));
        }
        _ => {}
    };
    let mut steps = 0;
    while let Ok(op) = u.int_in_range(0u8..=6) {
        steps += 1;
        if steps > 200 {
            break;
        }
        match op {
            0 | 1 => {
                if job.applied < total {
                    job.applied += 1;
                    // Op 1: the live message is lost (no reconnect signalled).
                    if op == 0 {
                        live.push_back(env(job.applied));
                    }
                }
            }
            2 => {
                if let Some(e) = live.pop_front() {
                    client.handle(r.on_live(e));
                }
            }
            3 => {
                let limit = u.int_in_range(1..=4).unwrap_or(1);
                serve(&mut r, &mut client, &mut job, limit);
            }
            4 => {
                live.clear();
                client.handle(r.on_reconnect());
            }
            5 => client.handle(r.poll()),
            _ => {
                // A redelivered old message.
                let o = u.int_in_range(1..=job.applied.max(1)).unwrap_or(1);
                if o <= job.applied {
                    live.push_back(env(o));
                }
            }
        }
    }
    // Apply the rest, republish the last one (as a redelivery would), settle.
    while job.applied < total {
        job.applied += 1;
        live.push_back(env(job.applied));
    }
    if total > 0 {
        live.push_back(env(total));
    }
    for _ in 0..10_000 {
        if let Some(e) = live.pop_front() {
            client.handle(r.on_live(e));
        } else if client.outstanding.is_some() {
            serve(&mut r, &mut client, &mut job, 3);
        } else {
            break;
        }
    }
    assert!(
        client.outstanding.is_none() && live.is_empty(),
        "did not settle"
    );
    if total > 0 {
        assert_eq!(
            client.at,
            Some(Position {
                epoch: JOB_EPOCH,
                offset: Offset(total)
            }),
            "settled short of the job's top"
        );
    }
    // Snapshots only where exact resume was impossible.
    let exact = from.epoch == JOB_EPOCH && from.offset.0 <= pre && pre > 0;
    for s in &client.snapshots {
        match s.reason {
            SnapshotReason::EpochMismatch | SnapshotReason::Expired => assert!(!exact, "{s:?}"),
            SnapshotReason::Ahead => assert!(from.offset.0 > pre, "{s:?}"),
            SnapshotReason::Trimmed => assert!(job.trimmed_seen, "{s:?}"),
        }
    }
    if exact && keep.is_none() {
        assert!(client.snapshots.is_empty(), "{:?}", client.snapshots);
    }
}

fn mac(job: &str, expiry: u64) -> Vec<u8> {
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET).unwrap();
    m.update(format!("{job}\n{expiry}").as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let tok = lines.next().unwrap_or("");
    let job = lines.next().unwrap_or("job-1");
    let now: u64 = lines
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let Ok(job) = JobId::new(job) else {
        return;
    };

    // Any token: accepted only if it is the issued one for this job.
    let verdict = auth::verify(SECRET, Some(tok), &job, now);
    if verdict.is_ok() || verdict == Err(AuthError::Expired) || verdict == Err(AuthError::WrongJob)
    {
        let t = tok.trim();
        assert!(t.len() <= auth::MAX_TOKEN_LEN);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let expiry: u64 = parts[1].parse().unwrap();
        let token_job = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            mac(&token_job, expiry)
        );
        // Canonical base64 only: the job and signature parts are the issued ones.
        assert_eq!(parts[0], URL_SAFE_NO_PAD.encode(&token_job));
        assert_eq!(parts[2], URL_SAFE_NO_PAD.encode(mac(&token_job, expiry)));
        match verdict {
            Ok(()) => assert!(token_job == job.as_str() && now < expiry),
            Err(AuthError::Expired) => assert!(token_job == job.as_str() && now >= expiry),
            _ => assert_ne!(token_job, job.as_str()),
        }
    }

    // The issued token for (job, expiry = now + something).
    let expiry = now.wrapping_add(data.len() as u64 * 1000 + 1);
    let issued = auth::issue_at(SECRET, &job, expiry);
    assert!(issued.len() <= auth::MAX_TOKEN_LEN);
    let at = |t: &str, now| auth::verify(SECRET, Some(t), &job, now);
    if expiry > 0 {
        assert_eq!(at(&issued, expiry - 1), Ok(()));
    }
    assert_eq!(at(&issued, expiry), Err(AuthError::Expired));
    assert_eq!(
        auth::verify(b"another secret", Some(&issued), &job, 0),
        Err(AuthError::Invalid)
    );
    let stem = &job.as_str()[..job.as_str().len().min(127)];
    let other = [format!("{stem}x"), format!("{stem}y")]
        .into_iter()
        .find(|o| o != job.as_str())
        .map(|o| JobId::new(o).unwrap())
        .unwrap();
    assert_eq!(
        auth::verify(SECRET, Some(&issued), &other, 0),
        Err(AuthError::WrongJob)
    );
    // No one-byte change of an issued token verifies.
    if let Some(&b) = data.last() {
        let mut bytes = issued.clone().into_bytes();
        let i = (data.first().copied().unwrap_or(0) as usize * 7 + data.len()) % bytes.len();
        if bytes[i] != b {
            bytes[i] = b;
            if let Ok(changed) = String::from_utf8(bytes) {
                let v = auth::verify(SECRET, Some(&changed), &job, 0);
                assert!(
                    v.is_err(),
                    "changed token {changed:?} verifies (was {issued:?})"
                );
            }
        }
    }
}

fn names(s: &str) {
    let id_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    let rule = |max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(id_byte);

    let job = JobId::new(s);
    assert_eq!(job.is_ok(), rule(128), "job id {s:?}");
    assert_eq!(
        JobId::from_bytes(s.as_bytes()).ok(),
        job.as_ref().ok().cloned()
    );
    if let Ok(j) = job {
        assert_eq!(j.as_str(), s);
        assert_eq!(j.to_string(), s);
        let json = serde_json::to_string(&j).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), j);
    } else {
        let json = serde_json::to_string(s).unwrap();
        assert!(serde_json::from_str::<JobId>(&json).is_err());
    }
    assert_eq!(Stage::new(s).is_ok(), rule(64), "stage {s:?}");
    assert_eq!(Domain::new(s).is_ok(), rule(64), "domain {s:?}");
    if let Ok(st) = s.parse::<Status>() {
        assert_eq!(st.as_str(), s);
    }

    if let Ok(t) = TraceContext::parse_traceparent(s) {
        let printed = t.traceparent();
        // Versions other than 00 are accepted and re-sent as 00.
        assert_eq!(&printed[2..], &s[2..]);
        assert_eq!(TraceContext::parse_traceparent(&printed).unwrap(), t);
        assert_eq!(t.trace_id.len(), 32);
        assert_eq!(t.span_id.len(), 16);
    }
}
