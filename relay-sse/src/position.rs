//! Where a client resumes from: its `Last-Event-ID` read as a history
//! position. Native ids are `{epoch}:{offset}`; eco2 ids are Redis stream
//! ids, found by searching the history for the record that carries one.

use std::sync::Arc;

use relay_core::backend::{Backend, StreamId};
use relay_core::keys::JobKeys;
use relay_core::{Decoded, Epoch, Offset, Payload, Position};

use crate::retry::retry;

/// A position in no history (epoch 0): resuming from it always ends in a
/// snapshot.
pub(crate) const UNKNOWN_POSITION: Position = Position {
    epoch: Epoch(0),
    offset: Offset::ZERO,
};

/// eco2: maps a `Last-Event-ID` stream id to a history position: right
/// after the retained record whose stream id *equals* it. Stream ids do not
/// follow history offsets (a restarted router routes new entries at once
/// while a dead consumer's pending entry is claimed later), so ids are never
/// compared by order. Not found (trimmed, another job's id, nonsense) → a
/// position that makes the resume answer with a snapshot.
pub(crate) async fn eco2_position(
    backend: &Arc<dyn Backend>,
    keys: &JobKeys,
    target: relay_core::backend::StreamId,
    page: usize,
) -> Result<Position, relay_core::BackendError> {
    let mut after = Offset::ZERO;
    let mut epoch = None;
    loop {
        let p = retry(|| backend.read_history(keys, after, page.max(1))).await?;
        let Some(e) = p.epoch else {
            return Ok(UNKNOWN_POSITION);
        };
        if epoch.is_some_and(|x| x != e) {
            return Ok(UNKNOWN_POSITION); // the history was re-created under us
        }
        epoch = Some(e);
        let Some(last) = p.records.last().map(|r| r.offset) else {
            return Ok(UNKNOWN_POSITION);
        };
        for rec in &p.records {
            let sid = match Payload::decode(&rec.payload) {
                Ok(Decoded::Eco2(r)) => r.stream_id.parse::<relay_core::backend::StreamId>().ok(),
                _ => None,
            };
            if sid == Some(target) {
                return Ok(Position {
                    epoch: e,
                    offset: rec.offset,
                });
            }
        }
        if last >= p.top {
            return Ok(UNKNOWN_POSITION);
        }
        after = last;
    }
}

/// The position of the client's last event id (see
/// [`crate::extract::LastEventId`]). With `stream_ids` (the eco2 routes) a
/// Redis stream id is looked up in the history too. Unparsable ids become
/// an unknown epoch (answered with a snapshot).
pub(crate) async fn client_position(
    backend: &Arc<dyn Backend>,
    keys: &JobKeys,
    stream_ids: bool,
    last_event_id: Option<&str>,
    history_page: usize,
) -> Result<Option<Position>, relay_core::BackendError> {
    let Some(raw) = last_event_id else {
        return Ok(None);
    };
    if let Ok(p) = raw.parse::<Position>() {
        return Ok(Some(p));
    }
    if stream_ids {
        if let Ok(sid) = raw.parse::<StreamId>() {
            let p = eco2_position(backend, keys, sid, history_page).await?;
            return Ok(Some(p));
        }
    }
    Ok(Some(UNKNOWN_POSITION))
}
