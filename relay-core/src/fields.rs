//! A stream entry's raw fields: the one representation both wire profiles
//! (native `codec` and `eco2`) decode from, kept in a leaf module so the
//! two can share it without importing each other.

use bytes::Bytes;

/// Raw fields of a stream entry, in order.
pub type Fields = Vec<(String, Bytes)>;

/// The size of a stream entry as the limits count it: every field name and
/// value, in bytes (the producer's `max_event_bytes` and the router's
/// `max_entry_bytes` must measure the same thing).
pub fn fields_size(fields: &[(String, Bytes)]) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Looks a field up by name.
pub fn field<'a>(fields: &'a [(String, Bytes)], name: &str) -> Option<&'a Bytes> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}
