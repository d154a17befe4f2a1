"""How many times a task id was started, to bound tasks that kill their worker.

Redis has no "redelivered" flag (celery#9082): a task whose process dies (an
out-of-memory kill, a segfault) is requeued by ``task_reject_on_worker_lost``
and would kill the next worker too, forever. Counting starts per task id lets
the task refuse to run after a bounded number of lost attempts.
"""

from __future__ import annotations

import redis

from orders.adapters import redis_keys as keys

# Long enough to outlive any retry schedule; the counter is only bookkeeping.
_TTL_S = 24 * 3600


class TaskStarts:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def record(self, task_id: str) -> int:
        """Count one more start of ``task_id``; returns the count including this one."""
        key = keys.task_starts(task_id)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, _TTL_S)
            starts, _ = pipe.execute()
        return int(starts)
