"""Closed-loop driver of the Celery side: keeps N chains in flight.

Submits N jobs (``chain(...).apply_async()`` onto the run's queue), then for
each completion the last task pushed to Redis (popped with BRPOP, so first
in, first out) records the job's latency — submit start to completion seen
— and submits a new job, until the warm-up and the measured window are
over; then it stops submitting and waits for the jobs still in flight, so
the next point starts on empty queues. Only completions seen inside the
measured window count (jobs/s and latency percentiles). Prints one JSON
object.

    python driver.py --concurrency 100 --warmup 3 --duration 15
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis  # noqa: E402

import stats  # noqa: E402
import tasks  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, required=True, help="jobs in flight")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds to wait for in-flight jobs after the window")
    args = p.parse_args()

    r = redis.Redis.from_url(tasks.REDIS_URL)
    r.delete(tasks.DONE_KEY)
    run = "%x" % int(time.time() * 1000)
    counter = 0
    inflight = {}

    # Connect the producer before the clock starts (the first publish would
    # otherwise carry the AMQP connection set-up).
    with tasks.app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)

    def submit():
        nonlocal counter
        counter += 1
        job = "c%s-%d" % (run, counter)
        inflight[job] = time.perf_counter()
        tasks.job_chain(job).apply_async()

    start = time.perf_counter()
    measure_start = start + args.warmup
    measure_end = measure_start + args.duration
    latencies = []
    completed = 0
    for _ in range(args.concurrency):
        submit()
    drain_deadline = None
    while inflight:
        now = time.perf_counter()
        if now >= measure_end and drain_deadline is None:
            drain_deadline = now + args.drain_timeout
        if drain_deadline is not None and now > drain_deadline:
            break
        item = r.brpop(tasks.DONE_KEY, timeout=1)
        if item is None:
            continue
        done = [item[1]]
        more = r.rpop(tasks.DONE_KEY, 256)
        if more:
            done.extend(more)
        seen = time.perf_counter()
        for raw in done:
            t0 = inflight.pop(raw.decode(), None)
            if t0 is None:
                continue
            completed += 1
            if measure_start <= seen <= measure_end:
                latencies.append(seen - t0)
            if seen < measure_end:
                submit()
    out = stats.summary("celery", args.concurrency, latencies, args.duration,
                        counter, completed, len(inflight))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
