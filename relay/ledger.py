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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import redis
import redis.asyncio
import redis.exceptions

from relay.coalesce import Coalescer
from relay.keys import COMPLETIONS_MAXLEN, LedgerKeys
from relay.redis_replies import decoded_hash

# Start counts outlive any retry schedule; they are only bookkeeping.
TASK_STARTS_TTL_S = 24 * 3600
DEAD_LETTERED = "DEAD_LETTERED"  # the reason an abandoned entry shows
# Entries one coalesced script call decides, reads or marks at most (a fetch's worth
# and more; the script holds Redis for about a microsecond per entry and field).
COALESCE_MAX = 256
# And the inputs one coalesced begin carries at most (each is stored for re-sends). A
# fetch of real orders (about 0.5 KB each) is far below it; messages of up to
# MAX_MESSAGE_BYTES (1 MB) go one call each rather than one call of hundreds of MB.
COALESCE_MAX_BYTES = 1 << 20


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


def _begin(reply: list[Any]) -> Begin | redis.exceptions.ResponseError:
    if reply[0] == "failed":  # this entry alone (begin.lua)
        return redis.exceptions.ResponseError(reply[3])
    try:
        return Begin(
            next=Next(reply[0]),
            epoch=int(reply[1]),
            run=int(reply[2]),
            error=reply[3],
            input=reply[4] if len(reply) > 4 else "",
            cause=reply[5] if len(reply) > 5 else "",
        )
    except (ValueError, IndexError) as exc:  # this entry alone, as a script error is
        return redis.exceptions.ResponseError(f"unreadable begin reply {reply[:4]!r}: {exc}")


@dataclass(frozen=True, slots=True)
class Record:
    """One outcome to record: ``fields`` are the application's own, set with it."""

    key: str
    epoch: int
    outcome: str
    fields: dict[str, str]


def _finalize_call(keys: LedgerKeys, records: Sequence[Record]) -> tuple[list[str], list[Any]]:
    args: list[Any] = [COMPLETIONS_MAXLEN]
    for r in records:
        args += [r.epoch, r.key, r.outcome, len(r.fields)]
        args += [x for pair in r.fields.items() for x in pair]
    return [keys.completions, *(keys.entry(r.key) for r in records)], args


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
        return self.start_tasks(task_id, [(key, epoch)])

    def start_tasks(self, task_id: str, inputs: Iterable[tuple[str, int]]) -> int:
        """:meth:`start_task` for a task working for several inputs (a batch): one
        count of its starts, and each (key, epoch) entry's progress marked."""
        inputs = list(inputs)
        reply = self._start_task(
            keys=[self.keys.task_starts(task_id), *(self.keys.entry(k) for k, _ in inputs)],
            args=[TASK_STARTS_TTL_S, *(epoch for _, epoch in inputs)],
        )
        return int(reply)

    def finalize(
        self, key: str, epoch: int, outcome: str, fields: dict[str, str] | None = None
    ) -> bool:
        """Record the outcome once per epoch and announce it; ``False`` if already
        decided (or the epoch is dead). ``fields`` are set with it."""
        [recorded] = self.finalize_many([Record(key, epoch, outcome, fields or {})])
        return recorded

    def finalize_many(self, records: Sequence[Record]) -> list[bool]:
        """:meth:`finalize` for several inputs in one script call, announced by one
        completion event; whether each was recorded, in order."""
        if not records:
            return []
        keys, args = _finalize_call(self.keys, records)
        return [bool(done) for done in self._finalize(keys=keys, args=args)]

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

    # Per key: its entry, None when there is none, or the error of that key alone.
    entries: list[Entry | redis.exceptions.ResponseError | None]
    acked: int  # replicas that acknowledged (the number asked when none were)
    fsynced: bool  # the primary's fsync was confirmed (``True`` when not asked)


def _confirmed_entry(key: str, flat: list[Any]) -> Entry | redis.exceptions.ResponseError | None:
    if flat and flat[0] is None:  # this entry alone could not be read (confirm.lua)
        return redis.exceptions.ResponseError(flat[1])
    try:
        return entry_from(key, dict(zip(flat[::2], flat[1::2], strict=True)))
    except ValueError as exc:  # a corrupt field fails this entry alone
        return redis.exceptions.ResponseError(f"{key}: unreadable entry: {exc}")


class _Ask(NamedTuple):
    """A begin asked; every field after ``key`` is an ARGV of ``begin.lua``, in order."""

    key: str
    stall_ms: int
    mode: str
    input: str
    server: str
    known_epoch: int
    known_run: int


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
        # The handlers of one moment share one call (relay.coalesce).
        self._begins = Coalescer(
            self._begin_many,
            max_batch=COALESCE_MAX,
            name="ledger-begin",
            size=lambda ask: len(ask.input),  # stored in the entry for re-sends
            max_size=COALESCE_MAX_BYTES,
        )
        self._publishes = Coalescer(
            self._mark_published_many, max_batch=COALESCE_MAX, name="ledger-published"
        )

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
        mode = "resend" if resend else "poll" if poll else "deliver"
        return await self._begins(
            _Ask(key, int(stall_timeout_s * 1000), mode, input, server, known[0], known[1])
        )

    async def _begin_many(self, asks: list[_Ask]) -> list[Begin | redis.exceptions.ResponseError]:
        replies = await self._begin(
            keys=[self.keys.entry(ask.key) for ask in asks],
            args=[arg for ask in asks for arg in ask[1:]],
        )
        return [_begin(reply) for reply in replies]

    async def finalize(
        self, key: str, epoch: int, outcome: str, fields: dict[str, str] | None = None
    ) -> bool:
        """As :meth:`Ledger.finalize`, for an outcome the bridge decides itself."""
        keys, args = _finalize_call(self.keys, [Record(key, epoch, outcome, fields or {})])
        [recorded] = await self._finalize(keys=keys, args=args)
        return bool(recorded)

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
        in one round trip: ``confirm.lua`` over the entries, then ``WAIT replicas`` (when
        ``replicas > 0``) and ``WAITAOF 1 0`` (when ``aof``) on the same connection."""
        write = "1" if replicas > 0 or aof else "0"
        try:
            replies = await self._confirm_round_trip(keys, write, replicas, aof, timeout_ms)
        except redis.exceptions.NoScriptError:
            # A server that never saw the script: one that was failed over to.
            await self.redis.script_load(script("confirm"))
            replies = await self._confirm_round_trip(keys, write, replicas, aof, timeout_ms)
        entries = [_confirmed_entry(key, flat) for key, flat in zip(keys, replies[0], strict=True)]
        rest = replies[1:]
        acked = int(rest.pop(0)) if replicas > 0 else replicas
        fsynced = bool(int(rest.pop(0)[0])) if aof else True
        return Confirmed(entries, acked, fsynced)

    async def _confirm_round_trip(
        self, keys: list[str], write: str, replicas: int, aof: bool, timeout_ms: int
    ) -> list[Any]:
        # EVALSHA by hand: a pipeline given registered scripts asks SCRIPT EXISTS
        # first, a second round trip on every call.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(self._confirm.sha, len(keys), *map(self.keys.entry, keys), write)
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
        await self._publishes((key, label))

    async def _mark_published_many(self, marks: list[tuple[str, str]]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, label in marks:
                pipe.hset(self.keys.entry(key), "published", label or "1")
            # A mark that fails (a key of another type) is that entry's error alone.
            return list(await pipe.execute(raise_on_error=False))

    async def entry(self, key: str) -> Entry | None:
        return entry_from(key, decoded_hash(await self.redis.hgetall(self.keys.entry(key))))
