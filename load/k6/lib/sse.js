// Pure helpers of the scan scripts: an SSE body parser and the per-job
// tracker that classifies a job the way `relay-load scan` does
// (relay-load/src/scan/iteration.rs). No k6 module is imported here, so
// selftest.js can exercise all of it without a server.

// The seqs a successful scan job emits (pipeline-scan's SeqScheme for the
// four stages vision, rule, answer, reward): queued 0, stage i started 10i
// and completed 10i+1, done 51. relay-load/tests/k6_scripts.rs checks this
// list against `relay_load::scan::expected_seqs()`.
export const EXPECTED_SEQS = [0, 10, 11, 20, 21, 30, 31, 40, 41, 51];

// The stage of a job's terminal event (`relay_core::event::DONE_STAGE`).
export const DONE_STAGE = 'done';

// Parses a whole `text/event-stream` body (k6 buffers the response until the
// stream ends) into `{ events: [{id, event, data}], retry }`, following the
// EventSource rules: lines end in CRLF, LF or CR; `:` starts a comment; one
// space after the colon is dropped; `data` lines are joined with `\n`; a
// blank line dispatches the event when it has data; a trailing block
// without its blank line is incomplete and dropped. `id` is the event's own
// `id:` field (null when it had none).
export function parseSse(body) {
  const events = [];
  let retry = null;
  let id = null;
  let event = '';
  let data = [];
  const lines = String(body || '').split(/\r\n|\r|\n/);
  for (const line of lines) {
    if (line === '') {
      if (data.length > 0) {
        events.push({ id: id, event: event || 'message', data: data.join('\n') });
      }
      id = null;
      event = '';
      data = [];
      continue;
    }
    if (line.charAt(0) === ':') {
      continue;
    }
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.charAt(0) === ' ') {
      value = value.slice(1);
    }
    if (name === 'data') {
      data.push(value);
    } else if (name === 'event') {
      event = value;
    } else if (name === 'id') {
      if (value.indexOf('\u0000') < 0) {
        id = value;
      }
    } else if (name === 'retry' && /^[0-9]+$/.test(value)) {
      retry = parseInt(value, 10);
    }
  }
  return { events: events, retry: retry };
}

// One job's stream as read so far, across reconnects.
export function newJob() {
  return {
    seqs: {}, // seq -> true
    ids: {}, // SSE event id -> true
    lastId: null, // for Last-Event-ID on a reconnect
    events: 0, // unique events
    duplicates: 0, // events whose id or seq was already seen
    modelMs: 0, // Σ `model_ms` of the stages' completed/failed events
    terminal: null, // null: not yet; 'completed' | 'failed'
    reconnects: 0,
    error: null, // an HTTP error that ended the job
    // false when the job is polled: no events are read, so none can be
    // missing (a `completed` result is the whole job)
    expectEvents: true,
  };
}

// Feeds parsed SSE events to `job`; returns true once the terminal event
// was read (events after it in the same body are ignored, as a client
// that stops at the terminal event would). An event counts as a duplicate
// when its `id:` or its `seq` was seen before in this job.
export function feed(job, events) {
  for (const ev of events) {
    if (job.terminal !== null) {
      return true;
    }
    let w;
    try {
      w = JSON.parse(ev.data);
    } catch (e) {
      continue; // not a job event (e.g. a comment-like payload)
    }
    if (!w || typeof w.seq !== 'number' || typeof w.stage !== 'string' || typeof w.status !== 'string') {
      continue; // e.g. a `snapshot` event
    }
    const dupId = ev.id !== null && job.ids[ev.id] === true;
    const dupSeq = job.seqs[w.seq] === true;
    if (ev.id !== null) {
      job.ids[ev.id] = true;
      job.lastId = ev.id;
    }
    if (dupId || dupSeq) {
      job.duplicates += 1;
      continue;
    }
    job.seqs[w.seq] = true;
    job.events += 1;
    if ((w.status === 'completed' || w.status === 'failed') && w.data && typeof w.data.model_ms === 'number') {
      job.modelMs += w.data.model_ms;
    }
    const terminal = w.stage === DONE_STAGE && (w.status === 'completed' || w.status === 'failed');
    if (terminal || ev.event === 'failed') {
      job.terminal = w.status === 'completed' ? 'completed' : 'failed';
      return true;
    }
  }
  return job.terminal !== null;
}

// Expected events the job never delivered (0 for a polled job).
export function missing(job) {
  if (!job.expectEvents) {
    return 0;
  }
  return EXPECTED_SEQS.filter((s) => job.seqs[s] !== true).length;
}

// The outcome, as `relay-load scan` classifies it: `completed` (terminal
// `done` and every expected event; polled: a `completed` result),
// `partial` (terminal `done`, events missing), `failed` (terminal failure or an HTTP error), `timeout` (no
// terminal event before the iteration deadline).
export function classify(job) {
  if (job.terminal === 'completed') {
    return missing(job) === 0 ? 'completed' : 'partial';
  }
  if (job.terminal === 'failed' || job.error !== null) {
    return 'failed';
  }
  return 'timeout';
}
