"""The workers' side of the relay: a Celery task base that keeps the ledger told.

Every task of a relay workflow takes the input's key and the epoch as keyword
arguments (``key_kwarg``, ``epoch``), or, for a batch of inputs, a list of
members that each carry them (``members_kwarg``). Before it runs, its start is counted: a
task that keeps killing its worker process (Redis has no "redelivered" flag,
celery#9082) refuses to run after ``max_worker_losses()`` lost attempts. When it
fails for good, the failure is recorded so that the waiting bridge learns it
now rather than after the stall timeout.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task

from relay.ledger import Ledger

log = logging.getLogger(__name__)


class WorkerLostTooOften(Exception):
    """Not transient: the task took its worker process down every time it ran."""


class LedgerTask(Task[Any, Any]):
    """Base of a relay workflow's tasks; subclasses say where the ledger is."""

    key_kwarg = "key"
    members_kwarg = "members"
    acks_late = True

    def ledger(self) -> Ledger:
        """The process's ledger (created once per worker process)."""
        raise NotImplementedError

    def max_worker_losses(self) -> int:
        """Starts that may end with the worker process dying before the task refuses."""
        return 3

    def inputs(self, kwargs: Any) -> list[tuple[str, int]]:
        """The (key, epoch) of each input this task works for."""
        key, epoch = kwargs.get(self.key_kwarg), kwargs.get("epoch")
        if key is not None and epoch is not None:
            return [(key, epoch)]
        members = kwargs.get(self.members_kwarg) or ()
        return [(m[self.key_kwarg], m["epoch"]) for m in members]

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        inputs = self.inputs(kwargs)
        if not inputs:
            return
        # One count per start of the task, and every input's entry marked (a start is
        # each one's sign of progress, so the bridge does not take a batch at work
        # for a stalled one): one script call for the whole batch.
        try:
            starts = self.ledger().start_tasks(task_id, inputs)
        except redis.RedisError:
            return  # cannot count now; the task's own Redis calls will retry it
        lost = starts - 1 - (self.request.retries or 0)
        if lost >= self.max_worker_losses():
            raise WorkerLostTooOften(
                f"{self.name} lost its worker process {lost} times (out of memory? crash?); "
                "not running it again"
            )

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Retries are exhausted (or the fault was not transient): tell the bridge
        # now rather than let it wait for the stall timeout. It naks the message,
        # and the next delivery sends the workflow again.
        detail = f"{self.name} failed: {type(exc).__name__}: {exc}"
        for key, epoch in self.inputs(kwargs):
            try:
                self.ledger().record_error(key, epoch, detail[:500])
            except redis.RedisError:
                log.warning("could not record the failure of %s: Redis unavailable", key)
