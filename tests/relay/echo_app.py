"""A second application on the relay, as small as one can be: ``{"id", "text"}``
in, the text shouted back out. One Celery task, its own streams and Redis prefix,
nothing of the order pipeline: the proof that ``relay/`` is generic.

The worker process runs ``celery -A echo_app worker``; the environment names the
Redis and the names: ``ECHO_REDIS_URL``, ``ECHO_PREFIX`` (see :func:`echo_names`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import redis
from celery import Celery
from celery.canvas import Signature

from relay.application import Decided, OutcomeMessage, Poison, Run
from relay.config import Names
from relay.keys import LedgerKeys
from relay.ledger import Ledger
from relay.worker import LedgerTask

TASK_SHOUT = "echo.shout"
TASK_SHOUT_BATCH = "echo.shout_batch"


def echo_names(prefix: str) -> Names:
    """Streams, subjects and keys of one echo deployment; ``prefix`` keeps tests apart."""
    return Names(
        stream=f"ECHO_{prefix}",
        subjects=(f"echo.{prefix}.*",),
        input_subject=f"echo.{prefix}.in",
        consumer=f"echo-relay-{prefix}",
        dlq_stream=f"ECHO_DLQ_{prefix}",
        dlq_subjects=(f"echo-dlq.{prefix}.>",),
        dlq_subject=f"echo-dlq.{prefix}.in",
        dlq_reason_header="Echo-Reason",
        dlq_subject_header="Echo-Subject",
        dlq_sequence_header="Echo-Sequence",
        dlq_deliveries_header="Echo-Deliveries",
        redis_prefix=f"echo-{prefix}:",
        entry_word="job",
        span_prefix="echo",
        metrics_prefix="echo",
    )


def done_subject(names: Names) -> str:
    return names.input_subject.rsplit(".", 1)[0] + ".done"


def celery_app(redis_url: str) -> Celery:
    app = Celery("echo", broker=redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    return app


class EchoApplication:
    """The relay's :class:`~relay.application.Application` for ``{"id", "text"}``."""

    def __init__(self, celery: Celery, names: Names) -> None:
        self._celery = celery
        self._done = done_subject(names)

    def decode(self, data: bytes) -> dict[str, str]:
        try:
            item = json.loads(data)
        except ValueError:
            raise Poison("not JSON") from None
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise Poison("no id")
        return {"id": item["id"], "text": str(item.get("text", ""))}

    def key(self, item: dict[str, str]) -> str:
        return item["id"]

    def dump(self, item: dict[str, str]) -> str:
        return json.dumps(item, sort_keys=True)

    def load(self, stored: str) -> dict[str, str]:
        loaded: dict[str, str] = json.loads(stored)
        return loaded

    def immediate_outcome(self, item: dict[str, str]) -> Decided | None:
        # Nothing to shout: answered without a worker.
        return Decided(json.dumps({"error": "empty"})) if not item["text"] else None

    def workflow(self, item: dict[str, str], epoch: int, run: int) -> Signature:
        kwargs = {"key": item["id"], "epoch": epoch, "text": item["text"]}
        return self._celery.signature(TASK_SHOUT, kwargs=kwargs).set(
            task_id=f"{item['id']}:{epoch}:{run}"
        )

    def workflow_batch(self, runs: Sequence[Run[dict[str, str]]]) -> Signature:
        """One task shouts every input of the batch (each recorded on its own)."""
        jobs = [{"key": r.key, "epoch": r.epoch, "text": r.item["text"]} for r in runs]
        first = runs[0]
        return self._celery.signature(
            TASK_SHOUT_BATCH, kwargs={"keys": [r.key for r in runs], "jobs": jobs}
        ).set(task_id=f"batch:{first.key}:{first.epoch}:{first.run}:{len(runs)}")

    def compensation(self, item: dict[str, str], epoch: int) -> Signature | None:
        return None  # shouting has no effect to undo

    def outcome_message(self, key: str, outcome: str) -> OutcomeMessage:
        label = "failed" if "error" in json.loads(outcome) else "done"
        return OutcomeMessage(self._done, outcome.encode(), f"{key}:{label}", label)

    def scope(self, key: str) -> AbstractContextManager[None]:
        return nullcontext()


# --- the worker process ----------------------------------------------------------------

celery = celery_app(os.environ.get("ECHO_REDIS_URL", "redis://127.0.0.1:1/0"))
_ledger: Ledger | None = None


class EchoTask(LedgerTask):
    def ledger(self) -> Ledger:
        global _ledger
        if _ledger is None:
            names = echo_names(os.environ["ECHO_PREFIX"])
            client = redis.Redis.from_url(os.environ["ECHO_REDIS_URL"], decode_responses=True)
            _ledger = Ledger(client, LedgerKeys(names.redis_prefix, names.entry_word))
        return _ledger


@celery.task(name=TASK_SHOUT, base=EchoTask, bind=True)
def shout(self: EchoTask, *, key: str, epoch: int, text: str) -> None:
    outcome: dict[str, Any] = {"id": key, "shouted": text.upper()}
    self.ledger().finalize(key, epoch, json.dumps(outcome))


@celery.task(name=TASK_SHOUT_BATCH, base=EchoTask, bind=True)
def shout_batch(self: EchoTask, *, keys: list[str], jobs: list[dict[str, Any]]) -> None:
    for job in jobs:
        outcome: dict[str, Any] = {"id": job["key"], "shouted": job["text"].upper()}
        self.ledger().finalize(job["key"], job["epoch"], json.dumps(outcome))
