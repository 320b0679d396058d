#!/usr/bin/env python3
"""Publishes one job's progress events to relay from Python, with redis-py.

Each event is one XADD of a native stream entry with a JSON body
(`enc=json`), exactly as docs/PRODUCERS.md specifies: the shard stream is
chosen from md5(job_id), the plain fields sit next to the body, and every
event has its own seq (a retry with the same seq is dropped by the router).

    pip install -r requirements.txt
    python3 produce.py --redis-url redis://127.0.0.1:6379 --job job-42

For every event it prints one JSON line: the event's fields and the stream
entry id it got.
"""

import argparse
import hashlib
import json
import sys
import time
import uuid

import redis

# Approximate bound on each shard stream, as relay's Publisher keeps it.
STREAM_MAXLEN = 100_000


def shard_for(job_id: str, shards: int) -> int:
    """The shard of a job: the first 8 bytes of md5(job_id) as a big-endian
    unsigned integer, modulo the shard count."""
    head = hashlib.md5(job_id.encode("utf-8")).digest()[:8]
    return int.from_bytes(head, "big") % shards


def publish(r, domain, shards, job_id, seq, stage, status, progress=None, data=None):
    """Appends one event; returns the stream entry id."""
    ts = int(time.time() * 1000)
    body = {
        "domain": domain,
        "job_id": job_id,
        "seq": seq,
        "stage": stage,
        "status": status,
        "ts": ts,
    }
    if progress is not None:
        body["progress"] = progress
    if data is not None:
        body["data"] = data
    fields = {
        "job": job_id,
        "seq": str(seq),
        "stage": stage,
        "status": status,
        "ts": str(ts),
        "enc": "json",
        "body": json.dumps(body, ensure_ascii=False, separators=(",", ":")),
    }
    # The braces are a Redis Cluster hash tag: the stream and its companion
    # keys share one slot. They are part of the name on every topology.
    stream = f"relay:{{{domain}:{shard_for(job_id, shards)}}}:events"
    return r.xadd(stream, fields, maxlen=STREAM_MAXLEN, approximate=True)


# The job: a stage that starts, reports progress, completes; then `done`.
STEPS = [
    (1, "convert", "started", 0, None),
    (2, "convert", "progress", 25, {"frames": 250}),
    (3, "convert", "progress", 50, {"frames": 500}),
    (4, "convert", "progress", 75, {"frames": 750}),
    (5, "convert", "completed", 100, {"frames": 1000}),
    (6, "done", "completed", 100, {"result": "ok", "note": "naïve café ✓"}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    ap.add_argument("--domain", default="scan")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--job", default=f"py-{uuid.uuid4()}")
    args = ap.parse_args()

    r = redis.Redis.from_url(args.redis_url, decode_responses=True)
    # One at a time, in order: a job's events reach clients in the order
    # they land on its shard stream.
    for seq, stage, status, progress, data in STEPS:
        entry_id = publish(r, args.domain, args.shards, args.job, seq, stage, status, progress, data)
        line = {"id": entry_id, "job_id": args.job, "seq": seq, "stage": stage,
                "status": status, "progress": progress, "data": data}
        print(json.dumps(line, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
