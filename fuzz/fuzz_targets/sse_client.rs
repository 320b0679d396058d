//! The SSE client parser (`relay_sse::client::SseParser`), which reads what a
//! server sends (relay's tests, end-to-end suite and load tool rely on it).
//!
//! Input: one mode byte, four bytes that choose where the stream is cut into
//! chunks, then
//! - mode even: raw stream bytes. Invariants: the items do not depend on how
//!   the stream is cut; they equal those of an independent whole-stream
//!   implementation of the WHATWG parsing rules; no event name is empty, no
//!   value holds a line break, no id holds NUL.
//! - mode odd: frames built from the bytes (`arbitrary`), written with
//!   relay's encoder (`relay_sse::sse`). Invariant: the parser returns
//!   exactly those frames, with the encoder's documented cleaning applied.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relay_sse::client::{SseEvent, SseItem, SseParser};
use relay_sse::sse;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (head, rest) = data.split_at(5);
    let key = [head[1], head[2], head[3], head[4]];
    if head[0] % 2 == 0 {
        raw_stream(rest, key);
    } else if let Ok(frames) = Vec::<Frame>::arbitrary_take_rest(Unstructured::new(rest)) {
        encoded_frames(&frames, key);
    }
});

/// Parses `data` delivered in the chunks `key` chooses.
fn parse_chunked(data: &[u8], key: [u8; 4]) -> (Vec<SseItem>, String) {
    let cuts = relay_fuzz::cut_points(key, data.len());
    let mut p = SseParser::new();
    let mut items = Vec::new();
    for chunk in relay_fuzz::chunks(data, &cuts) {
        items.extend(p.push(chunk));
    }
    (items, p.last_event_id().to_owned())
}

fn raw_stream(data: &[u8], key: [u8; 4]) {
    let mut whole = SseParser::new();
    let items = whole.push(data);
    let (chunked, last_id) = parse_chunked(data, key);
    assert_eq!(chunked, items, "items depend on chunking");
    assert_eq!(last_id, whole.last_event_id());
    // Byte by byte is the most fragmented delivery.
    let mut bytewise = SseParser::new();
    let mut one = Vec::new();
    for b in data {
        one.extend(bytewise.push(std::slice::from_ref(b)));
    }
    assert_eq!(one, items, "byte-by-byte delivery differs");

    for item in &items {
        match item {
            SseItem::Event(e) => {
                assert!(!e.event.is_empty());
                assert!(!e.event.contains(['\r', '\n']));
                assert!(!e.data.contains('\r'));
                if let Some(id) = &e.id {
                    assert!(!id.contains(['\r', '\n', '\0']));
                }
            }
            SseItem::Comment(c) => assert!(!c.contains(['\r', '\n'])),
            SseItem::Retry(_) => {}
        }
    }
    let (reference, ref_last_id) = reference_parse(data);
    assert_eq!(items, reference, "differs from the reference parser");
    assert_eq!(whole.last_event_id(), ref_last_id);
}

/// The WHATWG "event stream interpretation" over the whole stream at once:
/// decode (dropping one leading BOM), split into lines on CRLF, CR or LF,
/// ignore the unterminated tail. Plus relay's documented extensions: comments
/// and `retry:` are reported, each event carries its own `id:` if it had one.
fn reference_parse(data: &[u8]) -> (Vec<SseItem>, String) {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = Vec::new();
    let mut rest: &str = &text;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    let mut out = Vec::new();
    let mut data_buf = String::new();
    let mut has_data = false;
    let mut event_type = String::new();
    let mut id: Option<String> = None;
    let mut last_id = String::new();
    for line in lines {
        if line.is_empty() {
            if has_data {
                out.push(SseItem::Event(SseEvent {
                    id: id.take(),
                    event: if event_type.is_empty() {
                        "message".into()
                    } else {
                        std::mem::take(&mut event_type)
                    },
                    data: std::mem::take(&mut data_buf),
                }));
            }
            has_data = false;
            data_buf.clear();
            event_type.clear();
            id = None;
            continue;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(SseItem::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_owned(),
            ));
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if has_data {
                    data_buf.push('\n');
                }
                data_buf.push_str(value);
                has_data = true;
            }
            "event" => event_type = value.to_owned(),
            "id" if !value.contains('\0') => {
                id = Some(value.to_owned());
                last_id = value.to_owned();
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    out.push(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
    }
    (out, last_id)
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Event {
        id: Option<String>,
        event: Option<String>,
        data: Vec<u8>,
    },
    Comment(String),
    Retry(u64),
}

/// A single-line value as the encoder writes it: CR and LF dropped, NUL
/// replaced by U+FFFD.
fn clean_line(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .collect()
}

fn encoded_frames(frames: &[Frame], key: [u8; 4]) {
    let mut buf = BytesMut::new();
    let mut expected = Vec::new();
    for f in frames {
        match f {
            Frame::Event { id, event, data } => {
                sse::put_event(&mut buf, id.as_deref(), event.as_deref(), data);
                let text = String::from_utf8_lossy(data)
                    .replace("\r\n", "\n")
                    .replace('\r', "\n")
                    .replace('\0', "\u{FFFD}");
                expected.push(SseItem::Event(SseEvent {
                    id: id.as_deref().map(clean_line),
                    event: event
                        .as_deref()
                        .map(clean_line)
                        .filter(|e| !e.is_empty())
                        .unwrap_or_else(|| "message".into()),
                    data: text,
                }));
            }
            Frame::Comment(text) => {
                sse::put_comment(&mut buf, text);
                expected.push(SseItem::Comment(clean_line(text)));
            }
            Frame::Retry(ms) => {
                sse::put_retry(&mut buf, *ms);
                expected.push(SseItem::Retry(*ms));
            }
        }
    }
    let (items, _) = parse_chunked(&buf, key);
    assert_eq!(items, expected);
    let (reference, _) = reference_parse(&buf);
    assert_eq!(reference, expected);
}
