"""Runs the relay-vs-Celery points and prints the table (called by
``benches/peers/celery.sh``, which starts every process first).

For each concurrency it runs the Celery driver, then the relay driver, each
as a subprocess printing one JSON object, and reads the CPU time
(utime + stime from /proc) of each side's processes before and after the
point: the side's workers (Celery: the prefork main process and its
children), its private redis-server, relay-router on the relay side, and
RabbitMQ's beam.smp on both. CPU per job is that sum over the whole point
(warm-up, window and drain) divided by the jobs completed in it, so work
and jobs cover the same span. The drivers' own CPU is reported apart.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid):
    """pid and every process below it."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def snapshot(groups):
    """CPU seconds per named group; a group is (pid, with_children)."""
    out = {}
    for name, (pid, tree) in groups.items():
        pids = descendants(pid) if tree else [pid]
        out[name] = sum(proc_cpu(p) for p in pids)
    return out


def parse_pids(spec):
    """``name=pid[+]`` comma-separated; ``+`` counts the process's children too."""
    groups = {}
    for item in filter(None, spec.split(",")):
        name, pid = item.split("=", 1)
        tree = pid.endswith("+")
        groups[name] = (int(pid.rstrip("+")), tree)
    return groups


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_point(side, cmd, concurrency, warmup, duration, groups):
    before = snapshot(groups)
    driver_before = children_cpu()
    full = cmd + ["--concurrency", str(concurrency), "--warmup", str(warmup),
                  "--duration", str(duration)]
    proc = subprocess.run(full, stdout=subprocess.PIPE, text=True, check=False)
    driver_cpu = children_cpu() - driver_before
    after = snapshot(groups)
    if proc.returncode != 0:
        raise SystemExit("%s driver failed (exit %d): %s" % (side, proc.returncode, shlex.join(full)))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = {k: round(after[k] - before[k], 3) for k in groups}
    jobs = max(result["total_completed"], 1)
    result["cpu_s"] = cpu
    result["cpu_ms_per_job"] = round(1000.0 * sum(cpu.values()) / jobs, 3)
    result["cpu_ms_per_job_by_process"] = {k: round(1000.0 * v / jobs, 3) for k, v in cpu.items()}
    result["driver_cpu_ms_per_job"] = round(1000.0 * driver_cpu / jobs, 3)
    return result


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 100:
        return "%.0f%s" % (v, unit)
    return "%.3g%s" % (v, unit) if isinstance(v, float) else "%s%s" % (v, unit)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,100,1000")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--celery-driver", required=True, help="command (shell words)")
    p.add_argument("--relay-driver", required=True, help="command (shell words)")
    p.add_argument("--celery-pids", required=True, help="name=pid[+],...")
    p.add_argument("--relay-pids", required=True, help="name=pid[+],...")
    p.add_argument("--json", required=True)
    p.add_argument("--meta", default="{}", help="JSON object merged into the report")
    args = p.parse_args()

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    points = []
    for c in [int(x) for x in args.concurrency.split(",")]:
        for side, cmd, pids in (("celery", args.celery_driver, args.celery_pids),
                                ("relay", args.relay_driver, args.relay_pids)):
            print("… %s, %d in flight" % (side, c), file=sys.stderr, flush=True)
            r = run_point(side, shlex.split(cmd), c, args.warmup, args.duration, parse_pids(pids))
            r["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            print("  %s" % json.dumps(r), file=sys.stderr, flush=True)
            points.append(r)
    finished = datetime.datetime.now(datetime.timezone.utc)

    rows = []
    by = {(r["side"], r["concurrency"]): r for r in points}
    for c in sorted({r["concurrency"] for r in points}):
        ce, re_ = by[("celery", c)], by[("relay", c)]
        rows.append({
            "concurrency": c,
            "celery": ce,
            "relay": re_,
            "jobs_per_s_ratio": ratio(re_["jobs_per_s"], ce["jobs_per_s"]),
            "p50_ratio": ratio(re_["p50_ms"], ce["p50_ms"]),
            "p99_ratio": ratio(re_["p99_ms"], ce["p99_ms"]),
            "cpu_per_job_ratio": ratio(re_["cpu_ms_per_job"], ce["cpu_ms_per_job"]),
        })

    head = ("| in flight | Celery jobs/s | relay jobs/s | relay/Celery | Celery p50 / p99 ms "
            "| relay p50 / p99 ms | p50 relay/Celery | p99 relay/Celery "
            "| CPU ms/job Celery | CPU ms/job relay |")
    print(head)
    print("|" + "---:|" * 10)
    for row in rows:
        ce, re_ = row["celery"], row["relay"]
        print("| %d | %s | %s | %s× | %s / %s | %s / %s | %s | %s | %s | %s |" % (
            row["concurrency"], fmt(ce["jobs_per_s"]), fmt(re_["jobs_per_s"]),
            fmt(row["jobs_per_s_ratio"]), fmt(ce["p50_ms"]), fmt(ce["p99_ms"]),
            fmt(re_["p50_ms"]), fmt(re_["p99_ms"]), fmt(row["p50_ratio"]),
            fmt(row["p99_ratio"]), fmt(ce["cpu_ms_per_job"]), fmt(re_["cpu_ms_per_job"])))
    print()
    print("CPU ms per job by process (whole point incl. warm-up and drain; drivers apart):")
    for row in rows:
        for side in ("celery", "relay"):
            r = row[side]
            parts = ", ".join("%s %s" % (k, fmt(v)) for k, v in r["cpu_ms_per_job_by_process"].items())
            print("  %-6s %5d in flight: %s; driver %s; %d jobs, %d lost" % (
                side, row["concurrency"], parts, fmt(r["driver_cpu_ms_per_job"]),
                r["total_completed"], r["lost"]))

    report = {
        "bench": "relay pipeline (4 no-op stages, AMQP, relay events) vs Celery (4-task chain)",
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": finished.isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                 "python": platform.python_version()},
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "rows": rows,
    }
    report.update(json.loads(args.meta))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print("\nJSON: %s" % args.json)
    lost = sum(r["lost"] for r in points)
    if lost:
        raise SystemExit("%d job(s) did not finish" % lost)


if __name__ == "__main__":
    main()
