// k6: ramping VUs, each iteration submits a scan to the scan API and reads
// the job's SSE stream from the gateway to its terminal event, then thinks
// 1–3 s. Configured by environment variables (load/k6/README.md):
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e VUS=200 -e DURATION=60s load/k6/scan-sse.js
//
// Thresholds: completion 100 %, 0 duplicate events, http_req_failed < 1 %,
// submit p95 < 500 ms (all adjustable, see the README).

import { config, iteration, options as scanOptions } from './lib/scan.js';

const cfg = config();

export const options = scanOptions(cfg);

export default function () {
  iteration(cfg, 'sse');
}
