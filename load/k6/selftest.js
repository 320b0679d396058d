// The scan scripts' offline self-test: runs the SSE parser, the job tracker
// and classification, and the environment parsers of lib/ on fixed inputs
// shaped like the gateway's output, without any server. One iteration; a
// failed check fails the `checks` threshold, so `k6 run` exits non-zero.
// `scripts/k6.sh check` runs it (scripts/test.sh's lint section).

import { check } from 'k6';

import { parseDurationMs, parseRange, parseStages } from './lib/scan.js';
import { classify, feed, missing, newJob, parseSse, EXPECTED_SEQS } from './lib/sse.js';

export const options = {
  vus: 1,
  iterations: 1,
  thresholds: { checks: ['rate==1'] },
};

const JOB = 'fc052f15-449f-4ce4-aa96-99d400ed7865';
const STAGES = ['vision', 'rule', 'answer', 'reward'];

// One SSE block as relay-sse writes it.
function block(n, seq, stage, status, data) {
  const ev = { domain: 'scan', job_id: JOB, seq: seq, stage: stage, status: status, progress: 0, ts: 1796527150135 + n };
  if (data !== undefined) {
    ev.data = data;
  }
  return `id: 4364573015367388:${n}\nevent: ${status === 'failed' ? 'error' : stage}\ndata: ${JSON.stringify(ev)}\n\n`;
}

// The blocks of a whole successful job, in order (ids 1..10).
function wholeJob() {
  const out = [block(1, 0, 'queued', 'started')];
  let n = 2;
  STAGES.forEach((stage, i) => {
    out.push(block(n++, 10 * (i + 1), stage, 'started'));
    out.push(block(n++, 10 * (i + 1) + 1, stage, 'completed', { model_ms: 100 }));
  });
  out.push(block(n, 51, 'done', 'completed', { status: 'completed' }));
  return out;
}

function run(body) {
  const job = newJob();
  feed(job, parseSse(body).events);
  return job;
}

export default function () {
  const all = wholeJob();

  const ok = run(`retry: 2000\n\n: keep-alive\n\n${all.join('')}`);
  check(ok, {
    'whole job: completed': (j) => classify(j) === 'completed',
    'whole job: 10 events, 0 duplicates, 0 missing': (j) => j.events === 10 && j.duplicates === 0 && missing(j) === 0,
    'whole job: model time summed from completed events': (j) => j.modelMs === 400,
    'whole job: last id kept for Last-Event-ID': (j) => j.lastId === '4364573015367388:10',
  });
  check(parseSse('retry: 2000\n\n').retry, { 'retry hint parsed': (r) => r === 2000 });

  const dupId = run(all.slice(0, 3).join('') + all[2] + all.slice(3).join(''));
  check(dupId, {
    'same id twice: one duplicate, still completed': (j) => j.duplicates === 1 && classify(j) === 'completed',
  });
  const dupSeq = run(all.slice(0, 3).join('') + all[2].replace(':3\n', ':99\n') + all.slice(3).join(''));
  check(dupSeq, { 'same seq under a new id: one duplicate': (j) => j.duplicates === 1 });

  const gap = run(all.filter((_, i) => i !== 3).join(''));
  check(gap, {
    'done with an event missing: partial': (j) => classify(j) === 'partial' && missing(j) === 1,
  });

  const polled = newJob();
  polled.expectEvents = false;
  polled.terminal = 'completed';
  check(polled, { 'polled job with a completed result: completed': (j) => classify(j) === 'completed' && missing(j) === 0 });

  const failed = run(all.slice(0, 2).join('') + block(3, 12, 'vision', 'failed') + block(4, 59, 'done', 'failed'));
  check(failed, { 'terminal failure: failed': (j) => classify(j) === 'failed' });

  const errored = newJob();
  errored.error = 'stream: HTTP 403';
  check(errored, { 'HTTP error: failed': (j) => classify(j) === 'failed' });

  // A stream cut before the terminal event, then resumed on a new connection.
  const resumed = newJob();
  const first = feed(resumed, parseSse(all.slice(0, 4).join('') + 'id: 4364573015367388:5\ndata: {"seq"').events);
  check(resumed, {
    'cut stream: no terminal yet, timeout so far': (j) => first === false && classify(j) === 'timeout',
    'cut stream: the incomplete trailing block is dropped': (j) => j.events === 4 && j.lastId === '4364573015367388:4',
  });
  const second = feed(resumed, parseSse(all.slice(4).join('')).events);
  check(resumed, {
    'resumed stream: completed across two bodies': (j) => second === true && classify(j) === 'completed' && j.duplicates === 0,
  });

  const after = run(all.join('') + block(11, 0, 'queued', 'started'));
  check(after, { 'events after the terminal one are not read': (j) => j.duplicates === 0 && j.events === 10 });

  const crlf = parseSse('id: a\r\nevent: x\r\ndata: 1\r\ndata: 2\r\n\r\nid:b\rdata\r\r');
  check(crlf.events, {
    'CRLF/CR line ends, joined data lines, optional space': (e) =>
      e.length === 2 && e[0].id === 'a' && e[0].event === 'x' && e[0].data === '1\n2' && e[1].id === 'b' && e[1].data === '',
  });

  check(null, {
    'expected seqs: queued, 4 stages, done': () => EXPECTED_SEQS.join(',') === '0,10,11,20,21,30,31,40,41,51',
    'durations parse': () =>
      parseDurationMs('500ms') === 500 && parseDurationMs('30s') === 30000 && parseDurationMs('2m') === 120000 && parseDurationMs('1.5') === 1500,
    'stages parse like relay-load --stages': () =>
      JSON.stringify(parseStages('30s:50, 90s:50,30s:0')) ===
      JSON.stringify([
        { duration: '30000ms', target: 50 },
        { duration: '90000ms', target: 50 },
        { duration: '30000ms', target: 0 },
      ]),
    'bad stages are refused': () => throws(() => parseStages('30s')) && throws(() => parseStages('')) && throws(() => parseStages('x:1')),
    'think range parses': () => parseRange('1000-3000').join() === '1000,3000' && parseRange('0').join() === '0,0',
    'bad think range is refused': () => throws(() => parseRange('3000-1000')) && throws(() => parseRange('a-b')),
  });
}

function throws(f) {
  try {
    f();
  } catch (e) {
    return true;
  }
  return false;
}
