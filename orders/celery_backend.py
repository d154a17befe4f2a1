"""The result backend: Celery's Redis backend, used only for chord bookkeeping.

Nobody in this system waits on a Celery result (the bridge reads the completion
stream), yet Celery's async result machinery subscribes a pub/sub channel for
every chord-header result it creates (``ResultSet``'s barrier calls
``AsyncResult.then``) and keeps the result pending until it is fulfilled, which
never happens for results nobody stores. Each order sent left two pending
results and two subscriptions behind: memory grew about 5 KB per order in the
bridge and the workers, and every send paid for a subscribe.

The chord counter itself (``on_chord_part_return``, ``set_chord_size``) is
untouched: that is what makes the chord callback run.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


class ChordOnlyRedisBackend(RedisBackend):
    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def on_task_call(self, producer: Any, task_id: str) -> None:
        pass


def backend_url(redis_url: str) -> str:
    """``result_backend`` naming this class (Celery's ``<class>+<url>`` form)."""
    return f"{ChordOnlyRedisBackend.__module__}:{ChordOnlyRedisBackend.__qualname__}+{redis_url}"
