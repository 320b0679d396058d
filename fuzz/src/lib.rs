//! Shared helpers of relay's fuzz targets: the byte formats the targets read
//! (simple and delimiter-based, so libFuzzer's insert/erase mutations keep
//! most of an input meaningful) and the generator of realistic seed inputs
//! (`cargo run --example seeds`, called by `scripts/fuzz.sh`).

use bytes::Bytes;
use relay_core::codec::Fields;

pub mod seeds;

/// Separates the fields of a stream entry in a fuzz input.
pub const FIELD_SEP: u8 = 0x1e;
/// Separates a field's name from its value.
pub const NAME_SEP: u8 = 0x1f;
/// Makes the next byte literal (so a value may contain the separators).
pub const ESCAPE: u8 = 0x1b;

/// Splits `data` into stream-entry fields: `name 0x1f value 0x1e name …`,
/// with `0x1b` escaping the next byte. A name that is not UTF-8 is decoded
/// lossily (Redis field names reach relay as `String`s the same way).
pub fn fields_from_bytes(data: &[u8]) -> Fields {
    let mut fields = Vec::new();
    let mut name: Option<Vec<u8>> = None;
    let mut cur = Vec::new();
    let mut bytes = data.iter().copied();
    let finish = |name: Option<Vec<u8>>, cur: Vec<u8>, fields: &mut Fields| {
        let (n, v) = match name {
            Some(n) => (n, cur),
            None => (cur, Vec::new()),
        };
        if n.is_empty() && v.is_empty() {
            return;
        }
        fields.push((String::from_utf8_lossy(&n).into_owned(), Bytes::from(v)));
    };
    while let Some(b) = bytes.next() {
        match b {
            ESCAPE => {
                if let Some(next) = bytes.next() {
                    cur.push(next);
                }
            }
            NAME_SEP if name.is_none() => name = Some(std::mem::take(&mut cur)),
            FIELD_SEP => finish(name.take(), std::mem::take(&mut cur), &mut fields),
            _ => cur.push(b),
        }
    }
    finish(name, cur, &mut fields);
    fields
}

fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if matches!(b, FIELD_SEP | NAME_SEP | ESCAPE) {
            out.push(ESCAPE);
        }
        out.push(b);
    }
}

/// The inverse of [`fields_from_bytes`] (for seeds and regression inputs).
pub fn fields_to_bytes(fields: &[(String, Bytes)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(FIELD_SEP);
        }
        push_escaped(&mut out, k.as_bytes());
        out.push(NAME_SEP);
        push_escaped(&mut out, v);
    }
    out
}

/// Cut points derived from a 4-byte key: up to 7 positions in `0..=len`,
/// sorted (how a chunked reader might see `len` bytes arrive).
pub fn cut_points(key: [u8; 4], len: usize) -> Vec<usize> {
    let mut state = u32::from_le_bytes(key) | 1;
    let n = (key[0] & 7) as usize;
    let mut cuts: Vec<usize> = (0..n)
        .map(|_| {
            // xorshift32: deterministic, cheap, spreads the cuts.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as usize) % (len + 1)
        })
        .collect();
    cuts.sort_unstable();
    cuts
}

/// `data` split at `cuts` (from [`cut_points`]).
pub fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut prev = 0;
    for &c in cuts {
        out.push(&data[prev..c]);
        prev = c;
    }
    out.push(&data[prev..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_format_round_trips() {
        let f: Fields = vec![
            ("job".into(), Bytes::from_static(b"a\x1eb\x1fc\x1bd")),
            ("".into(), Bytes::from_static(b"v")),
            ("k".into(), Bytes::new()),
        ];
        assert_eq!(fields_from_bytes(&fields_to_bytes(&f)), f);
    }

    #[test]
    fn cuts_are_in_range_and_sorted() {
        for key in [[0u8; 4], [7, 1, 2, 3], [255; 4]] {
            let cuts = cut_points(key, 10);
            assert!(cuts.windows(2).all(|w| w[0] <= w[1]));
            assert!(cuts.iter().all(|c| *c <= 10));
            let data = [0u8; 10];
            assert_eq!(chunks(&data, &cuts).concat().len(), 10);
        }
    }
}
