"""The naive Celery baseline: a burst of orders enqueued straight onto Celery as
``chain(validate, chord([reserve, charge], complete))`` with trivial tasks
(:mod:`bridge.bench.naive`), each awaited through the result backend.

Measured from the first ``apply_async`` to the last result read, after a few
workflows that warm the worker's pool up.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from bridge.bench import load, naive

RESULT_TIMEOUT_S = 300.0


def run(
    redis_url: str, batch: load.Batch, warmup: int, progress: load.Progress
) -> dict[str, object]:
    orders = [order.model_dump(mode="json") for order in batch.orders]
    app = naive.create_app(redis_url)
    try:
        _burst(app, orders[:warmup], lambda _: None)
        elapsed = _burst(app, orders, progress)
    finally:
        _release_results(app)
        app.close()
    return {
        "orders": len(orders),
        "warmup": warmup,
        "elapsed_s": round(elapsed, 3),
        "orders_per_s": round(len(orders) / elapsed, 1),
    }


def _burst(app: Celery, orders: list[dict[str, Any]], progress: load.Progress) -> float:
    started = time.perf_counter()
    results = [naive.workflow(app, order).apply_async() for order in orders]
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    for done, result in enumerate(results, start=1):
        outcome = result.get(timeout=max(1.0, deadline - time.monotonic()))
        if outcome != "completed":
            raise RuntimeError(f"naive workflow ended with {outcome!r}")
        progress(done)
    return time.perf_counter() - started


def _release_results(app: Celery) -> None:
    """Let go of the results the client still tracks.

    The Redis backend keeps every result object it subscribed to until its task's
    result arrives while someone waits (celery#4925); those of a chord header,
    frozen by the client when it sends the chain, are never waited for. Left
    alone, each would unsubscribe at interpreter exit, over a connection being
    torn down, and print a traceback.
    """
    concrete, _weak = app.backend._pending_results
    for waiters in list(concrete.values()):
        for result in list(waiters.values()):
            app.backend.remove_pending_result(result)
