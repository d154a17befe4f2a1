"""The delivery ledger: one Redis hash per input, changed only by the scripts in
``relay/lua/``, which this module alone loads.

The hash is the input's memory across redeliveries, restarts, failovers and
replays:

- ``epoch`` counts processing attempts: a delivery after the input was
  dead-lettered (a replay) starts a new one; the application keys its effects
  (charges, reservations) on it, and a dead epoch can never record an outcome;
- ``run`` counts workflow sends within an epoch (a stalled or failed workflow is
  sent again; task ids differ per run, effects do not);
- ``outcome`` is set once per epoch (``finalize.lua``), atomically with the
  completion event the bridge waits for: the application's opaque text;
- ``published`` once the outcome message is stored in JetStream, after which the
  input is never processed again.

Workers use :class:`Ledger` (sync), the bridge :class:`AsyncLedger`; both run the
same scripts and read replies with the same functions. Applications may keep
fields of their own in the same hash (``finalize`` sets some), and read them from
:attr:`Entry.fields`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

from relay.keys import COMPLETIONS_MAXLEN, LedgerKeys
from relay.redis_replies import decoded_hash

# Start counts outlive any retry schedule; they are only bookkeeping.
TASK_STARTS_TTL_S = 24 * 3600
DEAD_LETTERED = "DEAD_LETTERED"  # the reason an abandoned entry shows


@cache
def script(name: str) -> str:
    """The Lua source of ``relay/lua/<name>.lua`` after the clock prelude
    (``now.lua``: every script keeps time)."""
    folder = resources.files("relay") / "lua"
    return (folder / "now.lua").read_text() + (folder / f"{name}.lua").read_text()


class Next(StrEnum):
    """What the bridge must do with a delivered input, decided by ``begin.lua``."""

    START = "start"  # send the workflow (run number in the reply)
    ATTACH = "attach"  # a workflow is running: wait for it
    ERRORED = "errored"  # the workflow failed on a transient fault (poll mode only)
    LOST = "lost"  # Redis has no entry for the input (poll mode only): restore it
    PUBLISH = "publish"  # the outcome is decided: publish it
    DONE = "done"  # the outcome message is stored: just ack


@dataclass(frozen=True, slots=True)
class Begin:
    next: Next
    epoch: int
    run: int
    error: str = ""
    input: str = ""  # the input as first stored (for START and ATTACH)
    cause: str = ""  # why a START sends: new, retry, stalled, failover


@dataclass(frozen=True, slots=True)
class Entry:
    """One input's ledger hash, read."""

    key: str
    epoch: int
    run: int
    outcome: str | None  # the application's outcome text, once recorded
    published: bool
    dead: bool
    detail: str  # why it was dead-lettered
    input: str  # the input as first stored
    fields: dict[str, str]  # the whole hash, the application's fields included


def entry_from(key: str, fields: dict[str, str]) -> Entry | None:
    if not fields:
        return None
    return Entry(
        key=key,
        epoch=int(fields.get("epoch") or 1),
        run=int(fields.get("run") or 1),
        outcome=fields.get("outcome") or None,
        published=bool(fields.get("published")),
        dead=fields.get("dead") == "1",
        detail=fields.get("detail", ""),
        input=fields.get("input", ""),
        fields=fields,
    )


def _begin(reply: list[Any]) -> Begin:
    return Begin(
        next=Next(reply[0]),
        epoch=int(reply[1]),
        run=int(reply[2]),
        error=reply[3],
        input=reply[4] if len(reply) > 4 else "",
        cause=reply[5] if len(reply) > 5 else "",
    )


def _finalize_args(key: str, epoch: int, outcome: str, fields: dict[str, str]) -> list[Any]:
    return [epoch, COMPLETIONS_MAXLEN, key, outcome, *(x for pair in fields.items() for x in pair)]


class Ledger:
    """The workers' side (sync). Every method is idempotent."""

    def __init__(self, client: redis.Redis, keys: LedgerKeys) -> None:
        """``client`` must be created with ``decode_responses=True``."""
        self.redis = client
        self.keys = keys
        self._start_task = client.register_script(script("start_task"))
        self._finalize = client.register_script(script("finalize"))
        self._record_error = client.register_script(script("record_error"))

    def start_task(self, key: str, epoch: int, task_id: str) -> int:
        """Count a start of ``task_id`` and mark the entry's progress (unless it moved
        to another epoch); returns the starts of ``task_id`` including this one.

        Redis has no "redelivered" flag (celery#9082): a task whose process dies
        (an out-of-memory kill) is requeued by ``task_reject_on_worker_lost`` and
        would kill the next worker too, forever. The count lets it refuse to run
        after a bounded number of lost attempts.
        """
        reply = self._start_task(
            keys=[self.keys.entry(key), self.keys.task_starts(task_id)],
            args=[epoch, TASK_STARTS_TTL_S],
        )
        return int(reply)

    def finalize(
        self, key: str, epoch: int, outcome: str, fields: dict[str, str] | None = None
    ) -> bool:
        """Record the outcome once per epoch and announce it; ``False`` if already
        decided (or the epoch is dead). ``fields`` are set with it."""
        reply = self._finalize(
            keys=[self.keys.entry(key), self.keys.completions],
            args=_finalize_args(key, epoch, outcome, fields or {}),
        )
        return bool(reply)

    def record_error(self, key: str, epoch: int, detail: str) -> bool:
        reply = self._record_error(
            keys=[self.keys.entry(key), self.keys.completions],
            args=[epoch, COMPLETIONS_MAXLEN, key, detail],
        )
        return bool(reply)

    def entry(self, key: str) -> Entry | None:
        return entry_from(key, decoded_hash(self.redis.hgetall(self.keys.entry(key))))


@dataclass(frozen=True, slots=True)
class Confirmed:
    """What :meth:`AsyncLedger.confirm` read and how far it is replicated."""

    entries: list[Entry | None]
    acked: int  # replicas that acknowledged (the number asked when none were)
    fsynced: bool  # the primary's fsync was confirmed (``True`` when not asked)


class AsyncLedger:
    """The bridge's side (asyncio)."""

    def __init__(self, client: redis.asyncio.Redis, keys: LedgerKeys) -> None:
        """``client`` must be created with ``decode_responses=True``."""
        self.redis = client
        self.keys = keys
        self._begin = client.register_script(script("begin"))
        self._finalize = client.register_script(script("finalize"))
        self._abandon = client.register_script(script("abandon"))
        self._confirm = client.register_script(script("confirm"))

    async def begin(
        self,
        key: str,
        stall_timeout_s: float,
        *,
        poll: bool = False,
        resend: bool = False,
        input: str = "",
        server: str = "",
        known: tuple[int, int] = (0, 0),
    ) -> Begin:
        """Decide what to do with a delivery of ``input`` (``poll=False``) or with an
        entry being waited on (``poll=True``: a failed workflow is reported, not
        restarted; a missing entry is reported as ``LOST``, not created), or
        ``resend=True``: a poll that sends a failed run again (``START``, cause
        ``retry``) instead of reporting it; a dead-lettered entry is still ``ERRORED``.

        ``server`` is the identity of the Redis server as the bridge last saw it
        (see :mod:`relay.redis_watch`): a run sent through another one is sent
        again. ``known`` is the (epoch, run) the bridge is waiting for, so that an
        entry a failover lost is restored without reusing a run number.
        """
        reply = await self._begin(
            keys=[self.keys.entry(key)],
            args=[
                int(stall_timeout_s * 1000),
                "resend" if resend else "poll" if poll else "deliver",
                input,
                server,
                *known,
            ],
        )
        return _begin(reply)

    async def finalize(
        self, key: str, epoch: int, outcome: str, fields: dict[str, str] | None = None
    ) -> bool:
        """As :meth:`Ledger.finalize`, for an outcome the bridge decides itself."""
        reply = await self._finalize(
            keys=[self.keys.entry(key), self.keys.completions],
            args=_finalize_args(key, epoch, outcome, fields or {}),
        )
        return bool(reply)

    async def abandon(self, key: str, epoch: int, detail: str) -> bool:
        """Mark the entry dead-lettered in this epoch, before compensating it: from
        here on no outcome can be recorded for the epoch, so no late step can
        complete it. ``False`` if an outcome was recorded first (publish that)."""
        reply = await self._abandon(
            keys=[self.keys.entry(key), self.keys.completions],
            args=[epoch, COMPLETIONS_MAXLEN, key, detail],
        )
        return bool(reply)

    async def confirm(
        self, keys: list[str], *, replicas: int, aof: bool, timeout_ms: int
    ) -> Confirmed:
        """The entries of ``keys`` and how far the writes they rest on are replicated,
        in one round trip: ``confirm.lua`` per entry, then ``WAIT replicas`` (when
        ``replicas > 0``) and ``WAITAOF 1 0`` (when ``aof``) on the same connection."""
        write = "1" if replicas > 0 or aof else "0"
        try:
            replies = await self._confirm_round_trip(keys, write, replicas, aof, timeout_ms)
        except redis.exceptions.NoScriptError:
            # A server that never saw the script: one that was failed over to.
            await self.redis.script_load(script("confirm"))
            replies = await self._confirm_round_trip(keys, write, replicas, aof, timeout_ms)
        entries = [
            entry_from(key, dict(zip(flat[::2], flat[1::2], strict=True)))
            for key, flat in zip(keys, replies, strict=False)
        ]
        rest = replies[len(keys) :]
        acked = int(rest.pop(0)) if replicas > 0 else replicas
        fsynced = bool(int(rest.pop(0)[0])) if aof else True
        return Confirmed(entries, acked, fsynced)

    async def _confirm_round_trip(
        self, keys: list[str], write: str, replicas: int, aof: bool, timeout_ms: int
    ) -> list[Any]:
        # EVALSHA by hand: a pipeline given registered scripts asks SCRIPT EXISTS
        # first, a second round trip on every call.
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.evalsha(self._confirm.sha, 1, self.keys.entry(key), write)
            if replicas > 0:
                pipe.execute_command("WAIT", replicas, timeout_ms)
            if aof:
                pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
            return list(await pipe.execute())

    async def mark_unsent(self, key: str) -> None:
        """The workflow could not be sent: the next delivery must send it, not wait
        for a workflow that does not exist."""
        await self.redis.hset(self.keys.entry(key), "error", "workflow could not be sent")

    async def mark_published(self, key: str, label: str) -> None:
        await self.redis.hset(self.keys.entry(key), "published", label or "1")

    async def entry(self, key: str) -> Entry | None:
        return entry_from(key, decoded_hash(await self.redis.hgetall(self.keys.entry(key))))
