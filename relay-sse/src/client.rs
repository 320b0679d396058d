//! A Server-Sent Events client parser that works on raw bytes.
//!
//! [`SseParser`] follows the WHATWG EventSource parsing rules: chunks may be
//! split anywhere (inside a field, between CR and LF, inside a UTF-8
//! sequence), lines end in CRLF, CR or LF, a leading BOM is skipped, `data:`
//! lines are joined with `\n`, comments and `retry:` are reported, and a
//! trailing incomplete event at end of stream is discarded. [`SseReader`]
//! wraps any byte stream (e.g. `reqwest::Response::bytes_stream()`) and
//! yields parsed items. Used by relay's tests, its end-to-end suite and its
//! load tool.
//!
//! ```
//! use relay_sse::client::{SseItem, SseParser};
//! let mut p = SseParser::new();
//! let mut items = p.push(b"id: 7:1\r\nevent: vision\r\ndata: {\"a\":");
//! items.extend(p.push(b"1}\r\ndata: x\r\n\r\n: ping\n\n"));
//! match &items[0] {
//!     SseItem::Event(e) => {
//!         assert_eq!(e.id.as_deref(), Some("7:1"));
//!         assert_eq!(e.event, "vision");
//!         assert_eq!(e.data, "{\"a\":1}\nx");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(items[1], SseItem::Comment("ping".into()));
//! ```

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The `event:` name (`message` when absent).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// What the parser reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event.
    Event(SseEvent),
    /// A comment line (text after `:`, one leading space removed): heartbeats.
    Comment(String),
    /// A `retry:` reconnection delay, in milliseconds.
    Retry(u64),
}

/// Incremental SSE parser. Feed it bytes with [`push`](Self::push).
#[derive(Clone, Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    skip_lf: bool,
    bom_checked: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    last_event_id: String,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last event id seen (what an EventSource sends as `Last-Event-ID`).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Parses a chunk; returns the items it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        let mut out = Vec::new();
        if !self.bom_checked {
            // The BOM may itself be split; wait for 3 bytes (or a mismatch).
            self.line.extend_from_slice(chunk);
            let bom = b"\xEF\xBB\xBF";
            let n = self.line.len().min(3);
            if self.line[..n] != bom[..n] {
                self.bom_checked = true;
            } else if n == 3 {
                self.bom_checked = true;
                self.line.drain(..3);
            } else {
                return out;
            }
            let pending = std::mem::take(&mut self.line);
            self.scan(&pending, &mut out);
            return out;
        }
        self.scan(chunk, &mut out);
        out
    }

    fn scan(&mut self, mut chunk: &[u8], out: &mut Vec<SseItem>) {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(i) = chunk.iter().position(|b| *b == b'\r' || *b == b'\n') {
            self.line.extend_from_slice(&chunk[..i]);
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out);
            if chunk[i] == b'\r' {
                match chunk.get(i + 1) {
                    Some(b'\n') => chunk = &chunk[i + 2..],
                    Some(_) => chunk = &chunk[i + 1..],
                    None => {
                        self.skip_lf = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[i + 1..];
            }
        }
        self.line.extend_from_slice(chunk);
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseItem>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.find(':') {
            Some(0) => {
                let c = &line[1..];
                out.push(SseItem::Comment(
                    c.strip_prefix(' ').unwrap_or(c).to_owned(),
                ));
                return;
            }
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_owned());
                self.last_event_id = value.to_owned();
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    out.push(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        let id = self.id.take();
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(SseItem::Event(SseEvent {
            id,
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".into()),
            data: std::mem::take(&mut self.data),
        }));
    }
}

/// Reads [`SseItem`]s from a byte stream.
pub struct SseReader<E> {
    stream: Pin<Box<dyn Stream<Item = Result<Bytes, E>> + Send>>,
    parser: SseParser,
    ready: std::collections::VecDeque<SseItem>,
}

impl<E> std::fmt::Debug for SseReader<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseReader")
            .field("parser", &self.parser)
            .finish_non_exhaustive()
    }
}

impl<E> SseReader<E> {
    /// Wraps a byte stream.
    pub fn new(stream: impl Stream<Item = Result<Bytes, E>> + Send + 'static) -> Self {
        Self {
            stream: Box::pin(stream),
            parser: SseParser::new(),
            ready: Default::default(),
        }
    }

    /// The next item; `None` at end of stream.
    pub async fn next_item(&mut self) -> Option<Result<SseItem, E>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Ok(item));
            }
            match self.stream.next().await? {
                Ok(chunk) => self.ready.extend(self.parser.push(&chunk)),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next event, skipping comments and retry hints; `None` at end.
    pub async fn next_event(&mut self) -> Option<Result<SseEvent, E>> {
        loop {
            match self.next_item().await? {
                Ok(SseItem::Event(e)) => return Some(Ok(e)),
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The last event id seen.
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut p = SseParser::new();
        chunks.iter().flat_map(|c| p.push(c)).collect()
    }

    fn ev(id: Option<&str>, event: &str, data: &str) -> SseItem {
        SseItem::Event(SseEvent {
            id: id.map(Into::into),
            event: event.into(),
            data: data.into(),
        })
    }

    #[test]
    fn crlf_split_between_cr_and_lf() {
        let items = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(items, vec![ev(None, "message", "a\nb")]);
    }

    #[test]
    fn cr_only_lines_bom_comments_retry() {
        let items = parse_all(&[
            b"\xEF\xBB",
            b"\xBF: hi\rretry: 1500\rid: 5\revent: x\rdata\r\r",
        ]);
        assert_eq!(
            items,
            vec![
                SseItem::Comment("hi".into()),
                SseItem::Retry(1500),
                ev(Some("5"), "x", "")
            ]
        );
    }

    #[test]
    fn no_data_no_dispatch_and_trailing_partial_dropped() {
        let items = parse_all(&[b"event: x\n\nid: 1\ndata: y"]);
        assert!(items.is_empty());
    }

    proptest! {
        /// Any way of splitting a stream yields the same items.
        #[test]
        fn split_anywhere(cuts in proptest::collection::vec(0usize..120, 0..6), crlf in any::<bool>()) {
            let text = "id: 1:1\nevent: vision\ndata: {\"k\":\"종이\"}\ndata: two\n\n: hb\n\nretry: 10\n\nid: 1:2\ndata: z\n\n";
            let text = if crlf { text.replace('\n', "\r\n") } else { text.to_owned() };
            let bytes = text.as_bytes();
            let whole = parse_all(&[bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&bytes[prev..c]); prev = c; }
            chunks.push(&bytes[prev..]);
            prop_assert_eq!(parse_all(&chunks), whole.clone());
            prop_assert_eq!(whole.len(), 4);
        }
    }
}
