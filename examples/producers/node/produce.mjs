// Publishes one job's progress events to relay from Node.js, with the
// `redis` package (node-redis v4).
//
// Each event is one XADD of a native stream entry with a JSON body
// (`enc=json`), exactly as docs/PRODUCERS.md specifies: the shard stream is
// chosen from md5(job_id), the plain fields sit next to the body, and every
// event has its own seq (a retry with the same seq is dropped by the router).
//
//   npm ci
//   node produce.mjs --redis-url redis://127.0.0.1:6379 --job job-42
//
// For every event it prints one JSON line: the event's fields and the
// stream entry id it got.

import { createHash, randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { createClient } from "redis";

// Approximate bound on each shard stream, as relay's Publisher keeps it.
const STREAM_MAXLEN = 100000;

// The shard of a job: the first 8 bytes of md5(job_id) as a big-endian
// unsigned integer, modulo the shard count (BigInt: it is a 64-bit value).
export function shardFor(jobId, shards) {
  const head = createHash("md5").update(jobId, "utf8").digest().readBigUInt64BE(0);
  return Number(head % BigInt(shards));
}

// Appends one event; resolves to the stream entry id.
export async function publish(client, { domain, shards, jobId, seq, stage, status, progress, data }) {
  const ts = Date.now();
  const body = { domain, job_id: jobId, seq, stage, status, ts };
  if (progress !== undefined && progress !== null) body.progress = progress;
  if (data !== undefined && data !== null) body.data = data;
  const fields = {
    job: jobId,
    seq: String(seq),
    stage,
    status,
    ts: String(ts),
    enc: "json",
    body: JSON.stringify(body),
  };
  // The braces are a Redis Cluster hash tag: the stream and its companion
  // keys share one slot. They are part of the name on every topology.
  const stream = `relay:{${domain}:${shardFor(jobId, shards)}}:events`;
  return client.xAdd(stream, "*", fields, {
    TRIM: { strategy: "MAXLEN", strategyModifier: "~", threshold: STREAM_MAXLEN },
  });
}

// The job: a stage that starts, reports progress, completes; then `done`.
const STEPS = [
  [1, "convert", "started", 0, null],
  [2, "convert", "progress", 25, { frames: 250 }],
  [3, "convert", "progress", 50, { frames: 500 }],
  [4, "convert", "progress", 75, { frames: 750 }],
  [5, "convert", "completed", 100, { frames: 1000 }],
  [6, "done", "completed", 100, { result: "ok", note: "naïve café ✓" }],
];

async function main() {
  const { values } = parseArgs({
    options: {
      "redis-url": { type: "string", default: "redis://127.0.0.1:6379" },
      domain: { type: "string", default: "scan" },
      shards: { type: "string", default: "4" },
      job: { type: "string", default: `node-${randomUUID()}` },
    },
  });
  const domain = values.domain;
  const shards = Number.parseInt(values.shards, 10);
  const jobId = values.job;
  const client = createClient({ url: values["redis-url"] });
  client.on("error", (err) => console.error("redis:", err.message));
  await client.connect();
  try {
    // One at a time, in order: a job's events reach clients in the order
    // they land on its shard stream.
    for (const [seq, stage, status, progress, data] of STEPS) {
      const id = await publish(client, { domain, shards, jobId, seq, stage, status, progress, data });
      console.log(JSON.stringify({ id, job_id: jobId, seq, stage, status, progress, data }));
    }
  } finally {
    await client.quit();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
