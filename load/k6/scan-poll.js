// k6: ramping VUs, each iteration submits a scan to the scan API and polls
// the job's result endpoint (`GET result_url`, every POLL_INTERVAL) until it
// answers 200, then thinks 1–3 s. Configured by environment variables
// (load/k6/README.md):
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e VUS=200 load/k6/scan-poll.js
//
// Thresholds: completion 100 %, http_req_failed < 1 %, submit p95 < 500 ms
// (a polling client sees no events, so its duplicate count is 0 by design).

import { config, iteration, options as scanOptions } from './lib/scan.js';

const cfg = config();

export const options = scanOptions(cfg);

export default function () {
  iteration(cfg, 'poll');
}
