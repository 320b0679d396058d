#!/usr/bin/env python3
"""Side by side: Eco²'s Python router (router.py, a model of it) and
`relay-router --profile eco2`, on the same private Redis, the same
prefilled events, in one run. Started by benches/peers/eco2-router.sh,
which provides the Redis server, the venv and the release binary.

Two phases:

1. Check (not timed): `--check-jobs` jobs' events are prefilled and routed
   by each router in turn while a subscriber listens on `sse:events:*`;
   the state string of every job and the messages of every shard channel
   must be byte-identical between the Python router and relay. A mismatch
   fails the run: a faster router that writes something else is no result.
2. Timed: per router, FLUSHALL, prefill (workload.py: Eco²'s producer
   script, pipelined), start the router, and time from the first delivery
   (`XINFO GROUPS` entries-read > 0) until every entry is read and acked
   (entries-read = appended, pending = 0), polled every 5–50 ms (1/200
   of the window so far). Over the
   same window: the router process's CPU (/proc/<pid>/stat, all threads)
   and Redis's (`INFO cpu`, user + sys). Afterwards every job's state must
   hold its final event.

The Python runs are sized smaller than relay's (`--py-jobs` vs
`--relay-jobs`): events/s is a rate over a backlog that never runs dry, so
it compares across sizes; both sizes are large enough that start-up and
the poll interval are under 1 % of the window.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

import redis

import workload

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Hang guard for one router run (not a timing assertion).
RUN_LIMIT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, all threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # Fields after the command name (which may hold spaces) start at state.
    rest = stat[stat.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def redis_cpu_s(r) -> float:
    cpu = r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def group_progress(r, shards: int):
    """(entries read, pending) summed over the shard streams' group."""
    pipe = r.pipeline(transaction=False)
    for s in range(shards):
        pipe.xinfo_groups(f"{workload.STREAM_PREFIX}:{s}")
    read = pending = 0
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception):
            continue  # stream or group not created yet
        for g in reply:
            if g["name"] == "eventrouter":
                read += int(g.get("entries-read") or 0)
                pending += int(g["pending"])
    return read, pending


class Router:
    """One router process: the Python model in a mode, or relay-router."""

    def __init__(self, kind: str, opts, log_dir: str):
        self.kind = kind
        self.metrics_port = None
        if kind.startswith("python"):
            mode = kind.split("-", 1)[1]
            self.cmd = [
                opts.python, os.path.join(HERE, "router.py"),
                "--redis-url", opts.redis_url,
                "--shards", str(workload.SHARDS),
                "--mode", mode,
            ]
        else:
            self.metrics_port = free_port()
            self.cmd = [
                opts.relay_router,
                "--redis-url", opts.redis_url,
                "--profile", "eco2",
                "--shards", str(workload.SHARDS),
                "--consumer", "relay-bench",
                "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
            ]
        self.log_path = os.path.join(log_dir, f"{kind}.log")
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        # For the driver's trap, should this script die before stop().
        with open(os.path.join(os.path.dirname(self.log_path), "pids"), "a") as f:
            f.write(f"{self.proc.pid}\n")

    def metric(self, name: str):
        """A counter's summed samples from relay-router's /metrics."""
        if self.metrics_port is None:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None


def route(r, router: Router, total: int):
    """Starts the router and waits until `total` entries are read and acked.
    Returns the timed window's figures."""
    router.start()
    deadline = time.monotonic() + RUN_LIMIT_S
    # Start of the window: the first delivery.
    while True:
        read, _ = group_progress(r, workload.SHARDS)
        if read > 0:
            t0, cpu0, rcpu0 = time.monotonic(), proc_cpu_s(router.proc.pid), redis_cpu_s(r)
            break
        if not router.alive():
            raise SystemExit(f"{router.kind} exited early, see {router.log_path}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{router.kind}: nothing delivered in {RUN_LIMIT_S} s")
        time.sleep(0.002)
    while True:
        read, pending = group_progress(r, workload.SHARDS)
        if read >= total and pending == 0:
            t1, cpu1, rcpu1 = time.monotonic(), proc_cpu_s(router.proc.pid), redis_cpu_s(r)
            break
        if not router.alive():
            raise SystemExit(f"{router.kind} exited early, see {router.log_path}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{router.kind}: {read}/{total} read, {pending} pending after {RUN_LIMIT_S} s")
        # A poll costs Redis ~50 µs of CPU: poll at 1/200 of the window so
        # far (5–50 ms), which keeps both the end's resolution and the
        # polling's share of Redis CPU under 0.5 %.
        time.sleep(min(0.05, max(0.005, (time.monotonic() - t0) / 200)))
    wall = t1 - t0
    return {
        "events": total,
        "wall_s": round(wall, 4),
        "events_per_s": round(total / wall, 1),
        "router_cpu_us_per_event": round((cpu1 - cpu0) * 1e6 / total, 2),
        "redis_cpu_us_per_event": round((rcpu1 - rcpu0) * 1e6 / total, 2),
        "router_cores": round((cpu1 - cpu0) / wall, 2),
        "redis_cores": round((rcpu1 - rcpu0) / wall, 2),
    }


def states(r, jobs: int) -> list:
    pipe = r.pipeline(transaction=False)
    for j in range(jobs):
        pipe.get(f"{workload.DOMAIN}:state:{workload.job_id(j)}")
    return pipe.execute()


def check_final_states(values: list) -> int:
    """How many jobs' states are not their final event (should be 0)."""
    bad = 0
    last = workload.EVENTS_PER_JOB - 1
    for j, v in enumerate(values):
        try:
            s = json.loads(v) if v is not None else None
        except ValueError:
            s = None
        if not s or s.get("seq") != workload.FINAL_SEQ or s.get("stream_id") != workload.entry_id(j, last):
            bad += 1
    return bad


def commandstats(r) -> dict:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


class Listener:
    """Collects every message on `sse:events:*`, per channel, in order."""

    def __init__(self, url: str):
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.p = self.r.pubsub()
        self.p.psubscribe("sse:events:*")
        while True:  # the subscription is active once confirmed
            m = self.p.get_message(timeout=5)
            if m and m["type"] == "psubscribe":
                break
        self.messages = collections.defaultdict(list)
        self.count = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            m = self.p.get_message(timeout=0.2)
            if m and m["type"] == "pmessage":
                self.messages[m["channel"]].append(m["data"])
                self.count += 1

    def drain(self, expected: int, idle_s: float = 3.0):
        """Waits for `expected` messages (or `idle_s` without a new one)."""
        last, since = -1, time.monotonic()
        while self.count < expected:
            if self.count != last:
                last, since = self.count, time.monotonic()
            elif time.monotonic() - since > idle_s:
                break
            time.sleep(0.05)
        self.stop_flag.set()
        self.thread.join()
        self.p.close()
        self.r.close()


def per_job(messages: dict) -> dict:
    """Each channel's messages split per job, in the order received: the
    order a client sees. (Across jobs the order differs by design: relay
    publishes a batch's events grouped per job, Eco² in stream order.)"""
    out = {}
    for channel, ms in messages.items():
        for m in ms:
            out.setdefault((channel, json.loads(m)["job_id"]), []).append(m)
    return out


def check_phase(r, opts, kinds, log_dir):
    jobs = opts.check_jobs
    seen = {}
    for kind in kinds:
        r.flushall()
        total = workload.prefill(r, jobs)
        listener = Listener(opts.redis_url)
        router = Router(kind, opts, log_dir)
        try:
            route(r, router, total)
        finally:
            router.stop()
        listener.drain(total)
        seen[kind] = {
            "states": states(r, jobs),
            "messages": dict(listener.messages),
            "published": listener.count,
        }
    ref = seen["relay"]
    out = {"jobs": jobs, "events": jobs * workload.EVENTS_PER_JOB, "routers": {}}
    ok = True
    for kind in kinds:
        s = seen[kind]
        same_states = s["states"] == ref["states"]
        same_job_order = per_job(s["messages"]) == per_job(ref["messages"])
        same_multiset = collections.Counter(
            (c, m) for c, ms in s["messages"].items() for m in ms
        ) == collections.Counter((c, m) for c, ms in ref["messages"].items() for m in ms)
        out["routers"][kind] = {
            "published": s["published"],
            "states_present": sum(v is not None for v in s["states"]),
            "states_identical_to_relay": same_states,
            "per_job_order_identical_to_relay": same_job_order,
            "published_multiset_identical_to_relay": same_multiset,
            "final_states_wrong": check_final_states(s["states"]),
        }
        ok &= same_states and same_multiset and same_job_order and s["published"] == out["events"]
    out["ok"] = ok
    return out


def timed(r, opts, kind, jobs, log_dir):
    r.flushall()
    t = time.monotonic()
    total = workload.prefill(r, jobs)
    prefill_s = time.monotonic() - t
    if total != jobs * workload.EVENTS_PER_JOB:
        raise SystemExit(f"prefill appended {total} of {jobs * workload.EVENTS_PER_JOB}")
    r.config_resetstat()
    router = Router(kind, opts, log_dir)
    try:
        res = route(r, router, total)
        applied = router.metric("relay_router_events_applied_total")
    finally:
        router.stop()
    calls = commandstats(r)
    values = states(r, jobs)
    res.update(
        router=kind,
        jobs=jobs,
        prefill_s=round(prefill_s, 2),
        final_states_wrong=check_final_states(values),
        # The states of the check's jobs, hashed: equal across routers.
        check_jobs_state_sha256=hashlib.sha256(
            "\n".join(v or "-" for v in values[: opts.check_jobs]).encode()
        ).hexdigest(),
        redis_calls_per_event={
            k: round(v / total, 3)
            for k, v in sorted(calls.items())
            if k in ("evalsha", "eval", "publish", "xack", "xreadgroup", "setex", "set", "get", "exists", "hmget", "hset", "pexpire", "hdel")
        },
    )
    if applied is not None:
        res["relay_events_applied_metric"] = applied
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--relay-router", required=True, help="path of the release relay-router")
    ap.add_argument("--python", default=sys.executable, help="interpreter for router.py")
    ap.add_argument("--py-jobs", type=int, default=6000)
    ap.add_argument("--relay-jobs", type=int, default=20000)
    ap.add_argument("--check-jobs", type=int, default=200)
    ap.add_argument("--python-modes", default="sync,asyncio")
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--meta", default="{}", help="JSON merged into the report's meta")
    opts = ap.parse_args()

    r = redis.Redis.from_url(opts.redis_url, decode_responses=True)
    py_kinds = [f"python-{m}" for m in opts.python_modes.split(",") if m]
    kinds = py_kinds + ["relay"]
    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()

    print(f"check: {opts.check_jobs} jobs × {workload.EVENTS_PER_JOB} events through each router ...", flush=True)
    check = check_phase(r, opts, kinds, opts.log_dir)
    for kind, c in check["routers"].items():
        print(f"  {kind:15} published {c['published']}, states {c['states_present']}, "
              f"states = relay: {c['states_identical_to_relay']}, "
              f"per-job order = relay: {c['per_job_order_identical_to_relay']}, "
              f"messages (multiset) = relay: {c['published_multiset_identical_to_relay']}")
    if not check["ok"]:
        print("check FAILED: the routers' outputs differ; no timing reported", file=sys.stderr)
        return 1

    results = []
    for kind in kinds:
        jobs = opts.relay_jobs if kind == "relay" else opts.py_jobs
        print(f"timed: {kind}, {jobs} jobs × {workload.EVENTS_PER_JOB} events ...", flush=True)
        res = timed(r, opts, kind, jobs, opts.log_dir)
        if res["final_states_wrong"]:
            print(f"{kind}: {res['final_states_wrong']} jobs without their final state", file=sys.stderr)
            return 1
        results.append(res)
    hashes = {x["check_jobs_state_sha256"] for x in results}
    load_end = os.getloadavg()

    relay = next(x for x in results if x["router"] == "relay")
    def cpu(x):
        return x["router_cpu_us_per_event"] + x["redis_cpu_us_per_event"]

    for x in results:
        x["relay_events_per_s_ratio"] = round(relay["events_per_s"] / x["events_per_s"], 1)
        x["total_cpu_us_per_event"] = round(cpu(x), 2)
        x["cpu_per_event_vs_relay"] = round(cpu(x) / cpu(relay), 1)
    best_py = max((x for x in results if x["router"] != "relay"), key=lambda x: x["events_per_s"])

    print()
    print(f"{'router':15} {'events':>8} {'wall s':>7} {'events/s':>10} {'router CPU µs/ev':>17} "
          f"{'Redis CPU µs/ev':>16} {'relay × ev/s':>13} {'CPU/ev ÷ relay':>15}")
    for x in results:
        print(f"{x['router']:15} {x['events']:>8} {x['wall_s']:>7.2f} {x['events_per_s']:>10,.0f} "
              f"{x['router_cpu_us_per_event']:>17.1f} {x['redis_cpu_us_per_event']:>16.1f} "
              f"{x['relay_events_per_s_ratio']:>13.1f} {x['cpu_per_event_vs_relay']:>15.1f}")
    ratio = relay["events_per_s"] / best_py["events_per_s"]
    print(f"\nrelay-router / fastest Python router ({best_py['router']}): {ratio:.1f}× events/s "
          f"(target ≥ 50×: {'met' if ratio >= 50 else 'NOT met'})")
    print(f"states of the first {opts.check_jobs} jobs identical across the timed runs: {len(hashes) == 1}")
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")

    report = {
        "bench": "eco2-router",
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "meta": {
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "redis_server": r.info("server")["redis_version"],
            "events_per_job": workload.EVENTS_PER_JOB,
            "shards": workload.SHARDS,
            **json.loads(opts.meta),
        },
        "check": check,
        "results": results,
        "relay_vs_fastest_python": round(ratio, 1),
        "fastest_python": best_py["router"],
        "target_ratio": 50,
        "target_met": ratio >= 50,
        "timed_states_identical": len(hashes) == 1,
    }
    with open(opts.json_out, "w") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    print(f"JSON: {opts.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
