#!/usr/bin/env python3
"""A model of Eco²'s Python event router, the peer `relay-router --profile
eco2` is measured against (benches/peers/eco2-router.sh).

Eco²'s router (its `event_router` service: a StreamConsumer feeding an
EventProcessor) did this, and so does this model, command for command:

- one consumer in group `eventrouter` reads all shard streams
  `scan:events:0..N-1` with one `XREADGROUP … COUNT 100 BLOCK 5000 STREAMS
  … >` (the group is created at `0` with `MKSTREAM` when missing);
- per entry, in order:
  1. parse: the flat fields decoded, `result` parsed as JSON when it is
     non-empty and parses, `seq` and `progress` converted to integers when
     they parse, `stream_id` (the entry id) added;
  2. one `EVALSHA` of the state script (below) on
     `{domain}:state:{job}` and the router's own dedupe marker
     `router:published:{job}:{seq}`: a marker already there means a
     duplicate (return 0); otherwise the state string is replaced only
     when the event's seq is higher than the stored state's (read with
     `GET` + `cjson.decode`), `SETEX` 3600 s, and the marker is set,
     `SETEX` 7200 s; return 1;
  3. when the script returned 1, one `PUBLISH` of the same JSON on
     `sse:events:{shard}` (shard = md5(job_id)[0..8] mod N), on the
     router's second connection (Eco² published on a separate Pub/Sub
     Redis; here both connections go to the same server, as relay's do);
  4. one `XACK` of that entry.

So three round trips per event (`EVALSHA`, `PUBLISH`, `XACK`) plus one
`XREADGROUP` per 100 entries; nothing is pipelined, because Eco² pipelined
nothing on this path. The routed JSON is the compact form docs/ECO2_WIRE.md
specifies (field order kept, UTF-8 not escaped, `stream_id` last), so this
model's state and Pub/Sub bytes can be compared with relay's one for one.

Left out, each of which would only make the Python router slower: the
per-event OpenTelemetry span and `logger.info("event_processed")`, the
Prometheus counters and histograms, the FastAPI app around the loop, and
the reclaimer task (idle here: nothing stays pending for 5 minutes).

`--mode sync` (default) drives the loop with redis-py's blocking client;
`--mode asyncio` with `redis.asyncio` awaited one command at a time, which
is how Eco²'s service ran it (one coroutine, sequential awaits: the same
round trips, plus the event loop's cost per command). Both use redis-py's
pure-Python RESP parser, as Eco²'s requirements installed no `hiredis`.

Runs until killed; prints `ready` once its consumer group exists.

    python3 router.py --redis-url redis://127.0.0.1:6379 --shards 4
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys

import redis
import redis.asyncio as aioredis

GROUP = "eventrouter"
STATE_TTL_S = 3600
PUBLISHED_TTL_S = 7200
READ_COUNT = 100
BLOCK_MS = 5000

# KEYS[1] state string, KEYS[2] router marker; ARGV: routed JSON, seq,
# state TTL, marker TTL. Returns 0 for a duplicate, 1 to publish (also for
# an out-of-order event: it is published though the state keeps the higher seq).
STATE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local seq = tonumber(ARGV[2])
local higher = true
local cur = redis.call('GET', KEYS[1])
if cur then
  local stored = cjson.decode(cur)
  if seq <= (tonumber(stored.seq) or 0) then
    higher = false
  end
end
if higher then
  redis.call('SETEX', KEYS[1], ARGV[3], ARGV[1])
end
redis.call('SETEX', KEYS[2], ARGV[4], '1')
return 1
"""


def shard_for(job_id: str, shards: int) -> int:
    """md5(job_id)[0..8] as a big-endian integer, modulo the shard count."""
    return int.from_bytes(hashlib.md5(job_id.encode()).digest()[:8], "big") % shards


def parse_entry(data: dict, msg_id: str) -> dict:
    """The event dict the router publishes, from one entry's raw fields."""
    event = {}
    for k, v in data.items():
        event[k.decode() if isinstance(k, bytes) else k] = (
            v.decode() if isinstance(v, bytes) else v
        )
    result = event.get("result")
    if isinstance(result, str) and result:
        try:
            event["result"] = json.loads(result)
        except json.JSONDecodeError:
            pass
    for name in ("seq", "progress"):
        if name in event:
            try:
                event[name] = int(event[name])
            except (ValueError, TypeError):
                pass
    event["stream_id"] = msg_id
    return event


def plan(event: dict, stream: str, shards: int):
    """(state key, marker key, channel, seq, routed JSON) for one event, or
    None when it has no job id (skipped, as Eco² skipped it)."""
    job = event.get("job_id")
    if not job:
        return None
    try:
        seq = int(event.get("seq", 0))
    except (ValueError, TypeError):
        seq = 0
    domain = stream.split(":", 1)[0]
    return (
        f"{domain}:state:{job}",
        f"router:published:{job}:{seq}",
        f"sse:events:{shard_for(job, shards)}",
        seq,
        json.dumps(event, ensure_ascii=False, separators=(",", ":")),
    )


def run_sync(args) -> None:
    streams = redis.Redis.from_url(args.redis_url, decode_responses=False)
    pubsub = redis.Redis.from_url(args.pubsub_url or args.redis_url, decode_responses=True)
    keys = [f"{args.domain}:events:{s}" for s in range(args.shards)]
    for key in keys:
        try:
            streams.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
    script = streams.register_script(STATE_SCRIPT)
    print("ready", flush=True)
    read_from = {k: ">" for k in keys}
    while True:
        reply = streams.xreadgroup(
            GROUP, args.consumer, read_from, count=READ_COUNT, block=BLOCK_MS
        )
        for stream, messages in reply or []:
            stream = stream.decode()
            for msg_id, data in messages:
                msg_id = msg_id.decode()
                try:
                    p = plan(parse_entry(data, msg_id), stream, args.shards)
                    if p is not None:
                        state_key, marker, channel, seq, routed = p
                        if script(
                            keys=[state_key, marker],
                            args=[routed, seq, STATE_TTL_S, PUBLISHED_TTL_S],
                        ) == 1:
                            pubsub.publish(channel, routed)
                except Exception as e:  # Eco² logged and acked anyway
                    print(f"process error {stream} {msg_id}: {e}", file=sys.stderr)
                streams.xack(stream, GROUP, msg_id)


async def run_asyncio(args) -> None:
    streams = aioredis.Redis.from_url(args.redis_url, decode_responses=False)
    pubsub = aioredis.Redis.from_url(args.pubsub_url or args.redis_url, decode_responses=True)
    keys = [f"{args.domain}:events:{s}" for s in range(args.shards)]
    for key in keys:
        try:
            await streams.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
    script = streams.register_script(STATE_SCRIPT)
    print("ready", flush=True)
    read_from = {k: ">" for k in keys}
    while True:
        reply = await streams.xreadgroup(
            GROUP, args.consumer, read_from, count=READ_COUNT, block=BLOCK_MS
        )
        for stream, messages in reply or []:
            stream = stream.decode()
            for msg_id, data in messages:
                msg_id = msg_id.decode()
                try:
                    p = plan(parse_entry(data, msg_id), stream, args.shards)
                    if p is not None:
                        state_key, marker, channel, seq, routed = p
                        if await script(
                            keys=[state_key, marker],
                            args=[routed, seq, STATE_TTL_S, PUBLISHED_TTL_S],
                        ) == 1:
                            await pubsub.publish(channel, routed)
                except Exception as e:  # Eco² logged and acked anyway
                    print(f"process error {stream} {msg_id}: {e}", file=sys.stderr)
                await streams.xack(stream, GROUP, msg_id)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    ap.add_argument("--pubsub-url", default=None, help="default: --redis-url")
    ap.add_argument("--domain", default="scan")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--consumer", default="event-router-0")
    ap.add_argument("--mode", choices=["sync", "asyncio"], default="sync")
    args = ap.parse_args()
    if args.mode == "sync":
        run_sync(args)
    else:
        asyncio.run(run_asyncio(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
