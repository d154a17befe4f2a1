"""The Celery application: configuration chosen for a pipeline that must not lose
or repeat work. Creating the app connects to nothing.
"""

from __future__ import annotations

from celery import Celery

from orders import names
from orders.adapters.redis_client import REDIS_SOCKET_TIMEOUT_S, tls_options
from orders.celery_backend import backend_url
from orders.settings import CeleryOptions

# A task taken by a worker and not acked returns to its queue after this long
# (kombu's Redis transport has no broker-side redelivery on disconnect). It must
# exceed the longest time a task legitimately stays unacked: its run time plus
# an ETA wait for a retry (``task_retry_backoff_max``), or Redis would hand the
# same task to a second worker. Five minutes covers both with margin while a
# worker killed with SIGKILL gets its tasks back within minutes, not the
# default hour; the bridge re-sends a stalled workflow sooner anyway.
VISIBILITY_TIMEOUT_S = 300

# Chord counters live in the result backend and expire with ``result_expires``
# (celery#5484 and friends): a chord whose header outlives it never fires. An
# order may legitimately wait in JetStream for as long as the stream keeps it,
# so the counters live as long (results themselves are not stored: tasks
# ignore them, so this keeps only chord bookkeeping).
RESULT_EXPIRES_S = 7 * 24 * 3600


def create_app(settings: CeleryOptions) -> Celery:
    app = Celery("orders", broker=settings.redis_url, backend=backend_url(settings.redis_url))
    redis_options = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    app.conf.update(
        # Never pickle: a message on the broker must not be able to run code.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Ack after the task ran, and requeue when the worker process dies under
        # it: every step is idempotent, so running twice is safe, losing is not.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Nobody reads task results: the bridge waits on the completion stream.
        # Not storing them also keeps clients from subscribing a result channel
        # per task sent.
        task_ignore_result=True,
        result_expires=RESULT_EXPIRES_S,
        broker_transport_options=redis_options,
        result_backend_transport_options=redis_options,
        redis_socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        redis_socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
        redis_backend_health_check_interval=10,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_routes=names.TASK_ROUTES,
        task_default_queue=names.QUEUE_ORDERS,
        task_create_missing_queues=True,
        # One unacked task per process: with acks_late, a prefetched task would sit
        # behind a slow one (payment latency) instead of going to an idle worker.
        worker_prefetch_multiplier=1,
        # Task events cost three publishes per task, and publishing them was 39 %
        # of a worker's main process in the benchmark's profile. Flower turns them
        # on in every worker it sees (Celery's enable_events, every few seconds), so
        # they are paid for only while someone watches.
        worker_send_task_events=settings.task_events,
        # By name, not "*": a "*" annotation would override the compensations'
        # unlimited retries (Celery applies it after the specific ones).
        task_annotations={name: _retry_policy(name, settings) for name in names.ALL_TASKS},
    )
    if tls := tls_options(settings):
        # rediss://: without these kombu connects WITHOUT verifying the server's
        # certificate (CERT_NONE, with a warning) and the result backend refuses
        # to start; with them, both verify it as the state clients do.
        app.conf.update(broker_use_ssl=tls, redis_backend_use_ssl=tls)
    return app


def _retry_policy(task_name: str, settings: CeleryOptions) -> dict[str, int]:
    policy = {"retry_backoff_max": int(settings.task_retry_backoff_max.total_seconds())}
    if task_name in names.CAPPED_RETRY_TASKS:
        policy["max_retries"] = settings.task_max_retries
    return policy
