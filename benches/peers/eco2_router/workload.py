"""The benchmark's events, and how they are appended: Eco²'s scan pipeline
as its producers wrote it (docs/ECO2_WIRE.md).

Every job is the real scan pipeline's ten events, with the eco2 seq scheme:
`queued` (seq 0, written by the API, no trace fields), then `vision`,
`rule`, `answer`, `reward` started/completed (10/11 … 40/41) and `done`
completed (51), the vision result and the done result as JSON in `result`.

The events are deterministic: job `j`'s event `k` has the same fields and
the same stream entry id whatever the number of jobs, so two prefills give
both routers byte-identical input, and a small run's jobs are a prefix of a
large run's.

Appending is the Eco² worker's path: one script call per event that checks
the `published:{job}:{stage}:{seq}` marker, `XADD`s the flat string fields
to `scan:events:{shard}` and sets the marker (TTL 2 h) to the entry id. Two
deviations, both so the benchmark measures routers and nothing else:

- the entry id is given (`<ms>-<job index>`, seq-major) instead of `*`,
  which makes the input of the two routers identical down to `stream_id`;
- no `MAXLEN ~ 10000`: the prefilled backlog is larger than 10,000 entries
  per shard, and trimming would delete entries before they are routed.

The calls are pipelined (1,000 per round trip): the prefill is not timed.
"""

from __future__ import annotations

import hashlib
import json

SHARDS = 4
DOMAIN = "scan"
STREAM_PREFIX = f"{DOMAIN}:events"
# Base of the explicit entry ids (ms) and of the `ts` field (s).
ID_BASE_MS = 1_766_899_796_000
TS_BASE_S = 1_766_899_796
# Eco²'s marker TTL.
PUBLISHED_TTL_S = 7200

# (stage, status, seq, progress) of the scan pipeline, in order.
STEPS = [
    ("queued", "started", 0, "0"),
    ("vision", "started", 10, "0"),
    ("vision", "completed", 11, "25"),
    ("rule", "started", 20, "25"),
    ("rule", "completed", 21, "50"),
    ("answer", "started", 30, "50"),
    ("answer", "completed", 31, "75"),
    ("reward", "started", 40, "75"),
    ("reward", "completed", 41, "100"),
    ("done", "completed", 51, ""),
]
EVENTS_PER_JOB = len(STEPS)
FINAL_SEQ = STEPS[-1][2]

CLASSIFICATION = {
    "major_category": "재활용폐기물",
    "middle_category": "플라스틱류",
    "minor_category": "페트병",
}
SITUATION_TAGS = ["내용물_없음", "라벨_부착"]

# The producer's append: marker check, XADD with the given id, marker set.
# Written here from Eco²'s documented behaviour (docs/ECO2_WIRE.md), with
# the two deviations the module docstring names.
APPEND_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('GET', KEYS[1])}
end
local id = redis.call('XADD', KEYS[2], ARGV[1], unpack(ARGV, 3))
redis.call('SETEX', KEYS[1], ARGV[2], id)
return {1, id}
"""


def shard_for(job_id: str, shards: int = SHARDS) -> int:
    """md5(job_id)[0..8] as a big-endian integer, modulo the shard count."""
    return int.from_bytes(hashlib.md5(job_id.encode()).digest()[:8], "big") % shards


def job_id(j: int) -> str:
    """Job `j`'s id: a UUID-shaped string, as Eco²'s API made them."""
    h = hashlib.md5(f"eco2-bench-job-{j}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def entry_id(j: int, k: int) -> str:
    """The stream entry id of job `j`'s event `k`: seq-major, so every
    batch a router reads holds one event of many jobs."""
    return f"{ID_BASE_MS + k}-{j}"


def _result(job: str, stage: str, status: str) -> str:
    if status != "completed":
        return ""
    if stage == "vision":
        return json.dumps(
            {"classification": CLASSIFICATION, "situation_tags": SITUATION_TAGS},
            ensure_ascii=False,
        )
    if stage == "done":
        return json.dumps(
            {
                "task_id": job,
                "status": "completed",
                "message": "분석이 완료되었습니다.",
                "pipeline_result": {
                    "classification_result": {
                        "classification": CLASSIFICATION,
                        "situation_tags": SITUATION_TAGS,
                    },
                    "disposal_rules": {
                        "배출방법": "내용물을 비우고 라벨을 제거한 뒤 압착하여 배출",
                        "주의사항": ["뚜껑은 분리", "이물질 제거"],
                    },
                    "final_answer": {
                        "answer": "페트병은 라벨을 떼고 찌그러뜨려 투명 페트병 전용 수거함에 버려 주세요.",
                        "insufficiencies": [],
                    },
                },
                "reward": {"points": 10, "reason": "올바른 분리배출"},
                "error": None,
            },
            ensure_ascii=False,
        )
    return ""


def fields(j: int, k: int) -> list[tuple[str, str]]:
    """Job `j`'s event `k` as the producer's flat string fields, in order."""
    job = job_id(j)
    stage, status, seq, progress = STEPS[k]
    ts = f"{TS_BASE_S + k}.{(j * 7919 + k * 104729) % 1_000_000:06d}".rstrip("0")
    if ts.endswith("."):
        ts += "0"
    out = [
        ("job_id", job),
        ("stage", stage),
        ("status", status),
        ("seq", str(seq)),
        ("ts", ts),
        ("progress", progress),
        ("result", _result(job, stage, status)),
    ]
    if stage != "queued":
        trace = hashlib.md5(job.encode()).hexdigest()
        span = hashlib.md5(f"{job}:{seq}".encode()).hexdigest()[:16]
        out += [
            ("trace_id", trace),
            ("span_id", span),
            ("traceparent", f"00-{trace}-{span}-01"),
        ]
    return out


def prefill(r, jobs: int, chunk: int = 1000) -> int:
    """Appends `jobs` jobs' events seq-major through the producer script;
    returns the number of entries appended (a repeat appends nothing)."""
    script = r.register_script(APPEND_SCRIPT)
    appended = 0
    pipe = r.pipeline(transaction=False)
    queued = 0
    for k in range(EVENTS_PER_JOB):
        for j in range(jobs):
            job = job_id(j)
            stage, _, seq, _ = STEPS[k]
            flat = [x for kv in fields(j, k) for x in kv]
            script(
                keys=[
                    f"published:{job}:{stage}:{seq}",
                    f"{STREAM_PREFIX}:{shard_for(job)}",
                ],
                args=[entry_id(j, k), PUBLISHED_TTL_S, *flat],
                client=pipe,
            )
            queued += 1
            if queued == chunk:
                appended += sum(int(x[0]) for x in pipe.execute())
                queued = 0
    if queued:
        appended += sum(int(x[0]) for x in pipe.execute())
    return appended
