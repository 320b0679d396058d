// The scan iteration shared by scan-sse.js and scan-poll.js: configuration
// from the environment, the custom metrics, submit, follow (SSE or poll),
// classify. It does what `relay-load scan` does (relay-load/src/scan/), with
// k6's buffered `http.get` in place of a streaming reader: the gateway ends
// a job's stream right after its terminal event, so the body is complete
// when the job is (see load/k6/README.md for what that costs).

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

import { classify, feed, missing, newJob, parseSse } from './sse.js';

function env(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

function trimSlash(u) {
  return String(u).replace(/\/+$/, '');
}

// Parses `500ms`, `30s`, `2m`, `1h` or plain seconds into milliseconds.
export function parseDurationMs(s) {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$/.exec(String(s));
  if (!m) {
    throw new Error(`invalid duration ${JSON.stringify(s)}`);
  }
  const mul = { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2] || 's'];
  return Math.round(parseFloat(m[1]) * mul);
}

// `DURATION:TARGET,...` (relay-load's `--stages` syntax) into k6 stages.
export function parseStages(s) {
  const out = [];
  for (const part of String(s).split(',')) {
    const p = part.trim();
    if (p === '') {
      continue;
    }
    const i = p.indexOf(':');
    const target = i < 0 ? NaN : Number(p.slice(i + 1).trim());
    if (i < 0 || !Number.isInteger(target) || target < 0) {
      throw new Error(`stage ${JSON.stringify(p)}: expected DURATION:TARGET`);
    }
    out.push({ duration: `${parseDurationMs(p.slice(0, i))}ms`, target: target });
  }
  if (out.length === 0) {
    throw new Error('no stages');
  }
  return out;
}

// `MIN-MAX` milliseconds (or one number) into [min, max].
export function parseRange(s) {
  const parts = String(s).split('-').map((x) => Number(x.trim()));
  const lo = parts[0];
  const hi = parts.length > 1 ? parts[1] : lo;
  if (parts.length > 2 || !Number.isFinite(lo) || !Number.isFinite(hi) || lo < 0 || hi < lo) {
    throw new Error(`invalid range ${JSON.stringify(s)}: expected MIN-MAX`);
  }
  return [lo, hi];
}

// Everything the environment configures (see load/k6/README.md).
export function config() {
  const baseUrl = trimSlash(env('BASE_URL', 'http://127.0.0.1:8080'));
  const vus = Number(env('VUS', '50'));
  if (!Number.isInteger(vus) || vus < 1) {
    throw new Error(`VUS must be a positive integer, got ${JSON.stringify(__ENV.VUS)}`);
  }
  const stages = parseStages(
    env('STAGES', `${env('RAMP', '20s')}:${vus},${env('DURATION', '60s')}:${vus},${env('RAMP_DOWN', '10s')}:0`),
  );
  return {
    baseUrl: baseUrl,
    sseUrl: trimSlash(env('SSE_URL', baseUrl)),
    stages: stages,
    gracefulStop: `${parseDurationMs(env('GRACEFUL_STOP', '60s'))}ms`,
    think: parseRange(env('THINK_MS', '1000-3000')),
    iterationTimeoutMs: parseDurationMs(env('ITERATION_TIMEOUT', '120s')),
    pollMs: parseDurationMs(env('POLL_INTERVAL', '500ms')),
    imageUrl: env('IMAGE_URL', 'https://images.example.com/load/{n}.jpg'),
    userPrefix: env('USER_PREFIX', 'load-vu-'),
    idempotency: ['1', 'true', 'yes'].indexOf(env('IDEMPOTENCY', '0')) >= 0,
    completionMin: Number(env('COMPLETION_MIN', '1')),
    httpFailedMax: Number(env('HTTP_FAILED_MAX', '0.01')),
    submitP95Ms: Number(env('SUBMIT_P95_MS', '500')),
  };
}

// The k6 options of a scan script: one ramping-VU scenario and the thresholds.
export function options(cfg) {
  return {
    scenarios: {
      scan: {
        executor: 'ramping-vus',
        startVUs: 0,
        stages: cfg.stages,
        gracefulRampDown: cfg.gracefulStop,
        gracefulStop: cfg.gracefulStop,
      },
    },
    thresholds: {
      scan_completed: [`rate>=${cfg.completionMin}`],
      scan_duplicate_events: ['count==0'],
      http_req_failed: [`rate<${cfg.httpFailedMax}`],
      scan_submit_duration: [`p(95)<${cfg.submitP95Ms}`],
    },
    summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
  };
}

const completed = new Rate('scan_completed');
const outcomes = {
  completed: new Counter('scan_jobs_completed'),
  partial: new Counter('scan_jobs_partial'),
  failed: new Counter('scan_jobs_failed'),
  timeout: new Counter('scan_jobs_timeout'),
};
const duplicateEvents = new Counter('scan_duplicate_events');
const missingEvents = new Counter('scan_missing_events');
const reconnects = new Counter('scan_reconnects');
const submitDuration = new Trend('scan_submit_duration', true);
const e2eDuration = new Trend('scan_e2e_duration', true);
const modelDuration = new Trend('scan_model_duration', true);
const overheadDuration = new Trend('scan_overhead_duration', true);

function record(job, startMs, endMs) {
  const outcome = classify(job);
  completed.add(outcome === 'completed');
  for (const k of Object.keys(outcomes)) {
    outcomes[k].add(k === outcome ? 1 : 0);
  }
  // Added every iteration (0 included) so the thresholds always have data.
  duplicateEvents.add(job.duplicates);
  missingEvents.add(job.terminal === 'completed' ? missing(job) : 0);
  reconnects.add(job.reconnects);
  if (outcome === 'completed' && endMs !== null) {
    const e2e = endMs - startMs;
    e2eDuration.add(e2e);
    if (job.modelMs > 0) {
      modelDuration.add(job.modelMs);
      overheadDuration.add(Math.max(0, e2e - job.modelMs));
    }
  }
  return outcome;
}

// POST /api/v1/scan; returns the parsed response body or null (the job is
// then recorded as failed).
function submit(cfg, job) {
  const n = Math.floor(Math.random() * 1e15);
  const headers = {
    'Content-Type': 'application/json',
    'X-User-ID': `${cfg.userPrefix}${__VU}`,
  };
  if (cfg.idempotency) {
    headers['X-Idempotency-Key'] = `k6-${__VU}-${__ITER}-${n}`;
  }
  const res = http.post(
    `${cfg.baseUrl}/api/v1/scan`,
    JSON.stringify({ image_url: cfg.imageUrl.replace('{n}', String(n)) }),
    { headers: headers, timeout: cfg.iterationTimeoutMs, tags: { name: 'scan_submit' } },
  );
  submitDuration.add(res.timings.duration);
  let body = null;
  try {
    body = res.json();
  } catch (e) {
    body = null;
  }
  const ok = check(res, {
    'submit 200 with a job id': (r) => r.status === 200 && body !== null && typeof body.job_id === 'string',
  });
  if (!ok) {
    job.error = `submit: HTTP ${res.status}`;
    return null;
  }
  return body;
}

// Reads the job's SSE stream until its terminal event, reconnecting with
// `Last-Event-ID` (like an EventSource, at most 10 connections) when a
// stream ends before it.
function follow(cfg, job, url, deadline) {
  for (let attempt = 0; attempt < 10 && job.terminal === null; attempt++) {
    const left = deadline - Date.now();
    if (left <= 0) {
      return;
    }
    const headers = { Accept: 'text/event-stream' };
    if (job.lastId !== null) {
      headers['Last-Event-ID'] = job.lastId;
    }
    const res = http.get(url, { headers: headers, timeout: left, tags: { name: 'scan_events' } });
    if (res.status === 200) {
      const parsed = parseSse(res.body);
      if (feed(job, parsed.events)) {
        return;
      }
      job.reconnects += 1;
      sleep(Math.min(parsed.retry === null ? 200 : parsed.retry, 2000) / 1000);
    } else if (res.status === 204) {
      // The gateway says we are at a finished job's end, yet no terminal
      // event was read: nothing more will come.
      job.error = 'stream: 204 before the terminal event';
      return;
    } else if (res.status >= 400 && res.status < 500) {
      job.error = `stream: HTTP ${res.status}`;
      return;
    } else {
      job.reconnects += 1; // network error or 5xx: try again
      sleep(0.2);
    }
  }
}

// Polls GET result_url until 200 (completed or failed); 202 and 404 mean
// "not yet", anything else ends the job as failed.
function poll(cfg, job, url, deadline) {
  job.expectEvents = false;
  while (Date.now() < deadline) {
    const res = http.get(url, {
      timeout: Math.max(1, deadline - Date.now()),
      tags: { name: 'scan_result' },
    });
    if (res.status === 200) {
      let body = null;
      try {
        body = res.json();
      } catch (e) {
        body = null;
      }
      const ok = body !== null && body.status === 'completed';
      job.terminal = ok ? 'completed' : 'failed';
      return;
    }
    if (res.status !== 202 && res.status !== 404 && res.status !== 0) {
      job.error = `result: HTTP ${res.status}`;
      return;
    }
    sleep(cfg.pollMs / 1000);
  }
}

// One iteration: submit, follow the job (`mode` 'sse' or 'poll') to its end,
// record the outcome, think. Returns the outcome.
export function iteration(cfg, mode) {
  const job = newJob();
  const start = Date.now();
  const deadline = start + cfg.iterationTimeoutMs;
  let end = null;
  const body = submit(cfg, job);
  if (body !== null) {
    if (mode === 'sse') {
      const path = body.stream_url || `/api/v1/scan/${body.job_id}/events`;
      follow(cfg, job, `${cfg.sseUrl}${path}`, deadline);
    } else {
      const path = body.result_url || `/api/v1/scan/${body.job_id}/result`;
      poll(cfg, job, `${cfg.baseUrl}${path}`, deadline);
    }
    end = Date.now();
  }
  const outcome = record(job, start, end);
  check(outcome, { 'job completed': (o) => o === 'completed' });
  const [lo, hi] = cfg.think;
  sleep((lo + Math.random() * (hi - lo)) / 1000);
  return outcome;
}
