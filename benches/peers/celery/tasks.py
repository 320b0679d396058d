"""The Celery side of the relay-vs-Celery bench: a chain of 4 no-op tasks.

The worker is started by ``benches/peers/celery.sh`` as the issue measured
Celery: prefork pool, ``-c 2``, ``acks_late=True``,
``worker_prefetch_multiplier=100``, no result backend. The first three tasks
return their argument; the fourth pushes the job id onto a Redis list, which
the driver (``driver.py``) pops to time the job.

Settings come from the environment (set by the script):
``CELERY_BENCH_BROKER`` (AMQP URL), ``CELERY_BENCH_QUEUE`` (a queue and
exchange name unique to the run, deleted at the end), ``CELERY_BENCH_REDIS``
(the private redis-server of the Celery side) and ``CELERY_BENCH_DONE_KEY``
(the list the last task pushes to). ``CELERY_BENCH_CONFIRM_PUBLISH=1`` turns on
publisher confirms (off by default, as in the issue's measurement and in
Celery's defaults): every publish then waits for the broker's confirm, as
relay's AMQP transport does for each hop.
"""

import os

import redis
from celery import Celery, chain
from kombu import Exchange, Queue

BROKER = os.environ.get("CELERY_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("CELERY_BENCH_QUEUE", "celerybench")
REDIS_URL = os.environ.get("CELERY_BENCH_REDIS", "redis://127.0.0.1:6379/0")
DONE_KEY = os.environ.get("CELERY_BENCH_DONE_KEY", "celerybench:done")
CONFIRM_PUBLISH = os.environ.get("CELERY_BENCH_CONFIRM_PUBLISH", "0") == "1"

app = Celery("celerybench", broker=BROKER)
app.conf.update(
    # As the issue measured it.
    task_acks_late=True,
    worker_prefetch_multiplier=100,
    # No result backend: completion is signalled by the last task itself.
    task_ignore_result=True,
    result_backend=None,
    # Everything under names unique to this run, so the script can delete
    # exactly what it created.
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_queues=(Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE),),
    # No pidbox (remote control) queue, no event exchange traffic.
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    broker_transport_options={"confirm_publish": CONFIRM_PUBLISH},
)

_redis = None


def _client():
    """One Redis connection per process (made after the prefork fork)."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(REDIS_URL)
    return _redis


@app.task(name="bench.step")
def step(job):
    """A no-op stage: passes the job id on."""
    return job


@app.task(name="bench.last")
def last(job):
    """The fourth no-op stage: tells the driver the job is done."""
    _client().lpush(DONE_KEY, job)
    return job


def job_chain(job):
    """The 4-task chain of one job."""
    return chain(step.s(job), step.s(), step.s(), last.s())
