//! Server-Sent Events frame encoder.
//!
//! Every value written here is made safe for the wire: single-line fields
//! (`id`, `event`, comments) have CR, LF and NUL removed; `data` is split on
//! every line break (CRLF, CR or LF) into several `data:` lines, which an
//! EventSource joins back with `\n`, and NUL becomes U+FFFD. Nothing panics,
//! whatever the input (unlike `axum::response::sse::Event`).
//!
//! ```
//! use relay_sse::sse;
//! let frame = sse::event(Some("1:2"), Some("vision"), b"{\"a\":1}\r\nx");
//! assert_eq!(&frame[..], &b"id: 1:2\nevent: vision\ndata: {\"a\":1}\ndata: x\n\n"[..]);
//! ```

use bytes::{BufMut, Bytes, BytesMut};

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

fn put_line_value(buf: &mut BytesMut, value: &[u8]) {
    // Copy clean runs whole: values almost never contain CR, LF or NUL.
    let mut rest = value;
    while let Some(i) = memchr::memchr3(b'\r', b'\n', 0, rest) {
        buf.put_slice(&rest[..i]);
        if rest[i] == 0 {
            buf.put_slice(REPLACEMENT);
        }
        rest = &rest[i + 1..];
    }
    buf.put_slice(rest);
}

fn put_field(buf: &mut BytesMut, name: &str, value: &[u8]) {
    buf.put_slice(name.as_bytes());
    buf.put_slice(b": ");
    put_line_value(buf, value);
    buf.put_u8(b'\n');
}

fn put_data(buf: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        match memchr::memchr2(b'\r', b'\n', rest) {
            Some(i) => {
                put_field(buf, "data", &rest[..i]);
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
            None => {
                put_field(buf, "data", rest);
                return;
            }
        }
    }
}

/// Appends one event frame to `buf`.
pub fn put_event(buf: &mut BytesMut, id: Option<&str>, event: Option<&str>, data: &[u8]) {
    buf.reserve(data.len() + 64);
    if let Some(id) = id {
        put_field(buf, "id", id.as_bytes());
    }
    if let Some(event) = event {
        put_field(buf, "event", event.as_bytes());
    }
    put_data(buf, data);
    buf.put_u8(b'\n');
}

/// One event frame: optional `id:` and `event:`, then `data:` line(s).
pub fn event(id: Option<&str>, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    put_event(&mut buf, id, event, data);
    buf.freeze()
}

/// Appends a comment frame (`: text`), used as a heartbeat.
pub fn put_comment(buf: &mut BytesMut, text: &str) {
    buf.put_slice(b": ");
    put_line_value(buf, text.as_bytes());
    buf.put_slice(b"\n\n");
}

/// A comment frame (`: text`).
pub fn comment(text: &str) -> Bytes {
    let mut buf = BytesMut::new();
    put_comment(&mut buf, text);
    buf.freeze()
}

/// Appends a reconnection-delay hint (`retry: ms`).
pub fn put_retry(buf: &mut BytesMut, ms: u64) {
    buf.put_slice(format!("retry: {ms}\n\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{SseItem, SseParser};
    use proptest::prelude::*;

    #[test]
    fn unsafe_bytes_are_encoded() {
        let f = event(Some("a\nb\0"), Some("x\r"), b"l1\rl2\n\nl3\0");
        assert_eq!(
            &f[..],
            "id: ab\u{FFFD}\nevent: x\ndata: l1\ndata: l2\ndata: \ndata: l3\u{FFFD}\n\n".as_bytes()
        );
        assert_eq!(&comment("hi\nthere")[..], b": hithere\n\n");
    }

    proptest! {
        /// Whatever the data, a spec-following parser gets it back (line
        /// breaks normalised to `\n`, NUL to U+FFFD), split anywhere.
        #[test]
        fn data_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200), split in 0usize..400) {
            let data: Vec<u8> = String::from_utf8_lossy(&data).into_owned().into_bytes();
            let frame = event(Some("1:1"), Some("s"), &data);
            let split = split.min(frame.len());
            let mut p = SseParser::new();
            let mut items = p.push(&frame[..split]);
            items.extend(p.push(&frame[split..]));
            let events: Vec<_> = items.into_iter().filter_map(|i| match i { SseItem::Event(e) => Some(e), _ => None }).collect();
            prop_assert_eq!(events.len(), 1);
            let text = String::from_utf8_lossy(&data)
                .replace("\r\n", "\n").replace('\r', "\n").replace('\0', "\u{FFFD}");
            prop_assert_eq!(&events[0].data, &text);
            prop_assert_eq!(events[0].id.as_deref(), Some("1:1"));
        }
    }
}
