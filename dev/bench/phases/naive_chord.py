"""The naive Celery baseline: a burst of orders enqueued straight onto Celery as
``chain(validate, chord([reserve, charge], complete))`` with trivial tasks
(:mod:`dev.bench.naive`), each awaited through the result backend.

Measured from the first ``apply_async`` to the last result read, after a few
workflows that warm the worker's pool up.

Results are read by polling their keys (one MGET of the oldest unfinished
workflows per round), not through ``AsyncResult.get()`` and its pub/sub result
consumer: the benchmark's smoke test once hung in this phase in CI, 240 s without
a result read (not reproduced here in five runs). A stored result cannot be missed
by a poll, and a phase in which nothing finishes for ``STALL_TIMEOUT_S`` now stops
with a message instead of waiting. What is measured, the worker side, is unchanged.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, cast

from celery import Celery, states
from celery.backends.redis import RedisBackend
from celery.canvas import Signature
from celery.result import AsyncResult

from dev.bench import load, naive
from dev.bench.stack import PhaseFailed

# No workflow finishing for this long means something is broken, not slow.
STALL_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.01
# Workflows finish roughly in the order sent, so each round reads the oldest unfinished
# ones only: the Redis the worker is measured on is not flooded with reads.
POLL_WINDOW = 200


class _TracksResults(Protocol):
    # Backend's own bookkeeping, which celery-types leaves out: the results it waits for,
    # (concrete, weak) maps of task id -> {id(result): result}.
    _pending_results: tuple[dict[str, dict[int, AsyncResult[Any]]], Mapping[str, Any]]


def run(
    redis_url: str,
    batch: load.Batch,
    warmup: int,
    progress: load.Progress,
    check: Callable[[], None] = lambda: None,
) -> dict[str, object]:
    """``check`` raises if a process of the baseline has died."""
    orders = [order.model_dump(mode="json") for order in batch.orders]
    app = naive.create_app(redis_url)
    try:
        _burst(app, (naive.workflow(app, o) for o in orders[:warmup]), lambda _: None, check)
        elapsed = _burst(app, (naive.workflow(app, o) for o in orders), progress, check)
    finally:
        _release_results(app)
        app.close()
    return {
        "orders": len(orders),
        "warmup": warmup,
        "elapsed_s": round(elapsed, 3),
        "orders_per_s": round(len(orders) / elapsed, 1),
    }


def run_noop(
    redis_url: str,
    tasks: int,
    warmup: int,
    progress: load.Progress,
    check: Callable[[], None] = lambda: None,
) -> dict[str, object]:
    """The floor: ``tasks`` no-op tasks on the same worker, each awaited the same way."""
    app = naive.create_app(redis_url)
    try:
        _burst(app, (naive.noop(app) for _ in range(warmup)), lambda _: None, check)
        elapsed = _burst(app, (naive.noop(app) for _ in range(tasks)), progress, check)
    finally:
        _release_results(app)
        app.close()
    return {
        "tasks": tasks,
        "warmup": warmup,
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(tasks / elapsed, 1),
    }


def _burst(
    app: Celery,
    canvases: Iterable[Signature],
    progress: load.Progress,
    check: Callable[[], None],
) -> float:
    """Send every canvas (built as it is sent, inside the timed interval), then poll
    until each has the result ``"completed"``."""
    backend = _redis_backend(app)
    started = time.perf_counter()
    pending = dict.fromkeys(
        backend.get_key_for_task(canvas.apply_async().id) for canvas in canvases
    )  # ordered: oldest first
    total = len(pending)
    done, last_progress = 0, time.monotonic()
    while pending:
        keys = list(itertools.islice(pending, POLL_WINDOW))
        for key, raw in zip(keys, backend.client.mget(keys), strict=True):
            if raw is None:
                continue
            meta = backend.decode_result(raw)
            if meta["status"] not in states.READY_STATES:
                continue
            if meta["result"] != "completed":
                raise PhaseFailed(f"naive workflow ended {meta['status']}: {meta['result']!r}")
            del pending[key]
            done += 1
            last_progress = time.monotonic()
            progress(done)
        if not pending:
            break
        if time.monotonic() - last_progress > STALL_TIMEOUT_S:
            raise TimeoutError(
                f"naive baseline: no workflow finished in {STALL_TIMEOUT_S:g}s; "
                f"{len(pending)} of {total} still unfinished"
            )
        check()
        time.sleep(POLL_INTERVAL_S)
    return time.perf_counter() - started


def _release_results(app: Celery) -> None:
    """Let go of the results the client still tracks.

    The Redis backend keeps every result object it subscribed to until its task's
    result arrives while someone waits (celery#4925); those of a chord header,
    frozen by the client when it sends the chain, are never waited for. Left
    alone, each would unsubscribe at interpreter exit, over a connection being
    torn down, and print a traceback.
    """
    backend = _redis_backend(app)
    concrete, _weak = cast(_TracksResults, backend)._pending_results
    for waiters in list(concrete.values()):
        for result in list(waiters.values()):
            backend.remove_pending_result(result)


def _redis_backend(app: Celery) -> RedisBackend:
    backend = app.backend
    assert isinstance(backend, RedisBackend)  # naive.create_app's backend is a redis:// URL
    return backend
