"""Order state in Redis: one hash per order, changed only by the scripts below.

The hash is the order's memory across redeliveries, restarts and replays:

- ``epoch`` counts processing attempts: a delivery after the order was
  dead-lettered (a replay) starts a new one; charges and reservations are keyed
  on it, and a dead epoch can never record an outcome;
- ``run`` counts workflow sends within an epoch (a stalled or failed workflow is
  sent again; task ids differ per run, effects do not);
- ``outcome`` is set once per epoch by :data:`_FINALIZE`, atomically with the
  completion event the bridge waits for; ``published`` once the outcome event
  is stored in JetStream, after which the order is never processed again.

The worker side uses :class:`OrderState` (sync), the bridge :class:`AsyncOrderState`;
both run the same scripts and parse replies with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

from orders.adapters import redis_keys as keys
from orders.adapters.redis_client import decoded_hash
from orders.domain.model import FailureReason, OrderStatus, Outcome, OutcomeKind

DEAD_LETTERED = "DEAD_LETTERED"

# Start counts outlive any retry schedule; they are only bookkeeping.
_TASK_STARTS_TTL_S = 24 * 3600


class Next(StrEnum):
    """What the bridge must do with a delivered order, decided by :data:`_BEGIN`."""

    START = "start"  # send the workflow (run number in the reply)
    ATTACH = "attach"  # a workflow is running: wait for it
    ERRORED = "errored"  # the workflow failed on a transient fault (poll mode only)
    LOST = "lost"  # Redis has no state for the order (poll mode only): restore it
    PUBLISH = "publish"  # the outcome is decided: publish it
    DONE = "done"  # the outcome event is stored: just ack


@dataclass(frozen=True, slots=True)
class Begin:
    next: Next
    epoch: int
    run: int
    error: str = ""
    order_json: str = ""  # the order as first stored (for START and ATTACH)
    cause: str = ""  # why a START sends: new, retry, stalled, failover


# Times in the scripts come from Redis's own clock (``TIME``), never from an
# argument: the bridge compares ``updated_ms`` written by workers on other hosts,
# and host clocks disagree. Redis before 5 needs effects replication to write
# after ``TIME``; later versions always replicate effects.
_NOW_MS = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# The first content seen for an order id is the order: a later message with the
# same id but other content (a buggy producer) follows the stored one, so
# two versions can never race each other's effects.
#
# ``sent_on`` is the Redis server (its ``run_id``, as the bridge last saw it)
# through which the current run was sent. A run sent through another
# server than today's may have lost its broker messages in a failover to a
# replica that had not received them: it is sent again at once, not after the
# stall timeout. Epoch and run "known" are what the bridge remembers of an order
# it is waiting for; they let a hash that a failover lost be restored without
# reusing a run number (task ids, and so chord counters, are per run).
#
# KEYS: order   ARGV: stall ms, mode ('deliver' | 'poll'), order JSON, server,
#                     known epoch, known run
# Reply: next, epoch, run, error, stored order JSON (start and attach), cause of a
#        start ('new', 'retry', 'stalled', 'failover')
_BEGIN = (
    _NOW_MS
    + """
local h = KEYS[1]
local stall_ms, mode, server = tonumber(ARGV[1]), ARGV[2], ARGV[4]
local known_epoch, known_run = tonumber(ARGV[5]) or 0, tonumber(ARGV[6]) or 0
local f = redis.call('HMGET', h, 'published', 'outcome', 'dead', 'error', 'updated_ms',
                     'epoch', 'run', 'sent_on')
-- Published, even if that mark is all a lost hash kept: never processed again.
if f[1] and f[1] ~= '' then return {'done', tonumber(f[6]) or 1, tonumber(f[7]) or 0, ''} end
if not f[6] then
  -- Someone waiting on this order must not create it without its content.
  if mode == 'poll' then return {'lost', known_epoch, known_run, ''} end
  local epoch, run = math.max(known_epoch, 1), known_run + 1
  redis.call('HSET', h, 'status', 'RECEIVED', 'epoch', epoch, 'run', run, 'received_ms', now,
             'updated_ms', now, 'order', ARGV[3], 'sent_on', server)
  -- A late step of a lost run may have counted a payment already.
  redis.call('HSETNX', h, 'charges', 0)
  redis.call('HSETNX', h, 'refunds', 0)
  return {'start', epoch, run, '', ARGV[3], known_run > 0 and 'failover' or 'new'}
end
local epoch, run = tonumber(f[6]), tonumber(f[7]) or 0
if f[2] and f[2] ~= '' then return {'publish', epoch, run, ''} end
if mode == 'poll' then
  -- Someone is waiting on this run: report failures, never start a new epoch.
  if f[3] == '1' then return {'errored', epoch, run, 'order was dead-lettered'} end
  if f[4] and f[4] ~= '' then return {'errored', epoch, run, f[4]} end
end
if f[3] == '1' then
  epoch = epoch + 1
  redis.call('HSET', h, 'epoch', epoch, 'run', 1, 'dead', '', 'error', '', 'status',
             'RECEIVED', 'reason', '', 'detail', '', 'updated_ms', now, 'sent_on', server)
  return {'start', epoch, 1, '', redis.call('HGET', h, 'order') or ARGV[3], 'new'}
end
local cause = nil
if server ~= '' and f[8] and f[8] ~= '' and f[8] ~= server then
  cause = 'failover'
elseif f[4] and f[4] ~= '' then
  cause = 'retry'
else
  -- A stalled run is sent again, each time after twice as long (up to 8x): when the
  -- workers are merely behind, re-sends must not pile more work on their queues.
  local stall = stall_ms * 2 ^ math.min(math.max(run - 1, 0), 3)
  if now - (tonumber(f[5]) or 0) > stall then cause = 'stalled' end
end
if cause then
  run = math.max(run, known_run) + 1
  redis.call('HSET', h, 'run', run, 'error', '', 'updated_ms', now, 'sent_on', server)
  return {'start', epoch, run, '', redis.call('HGET', h, 'order') or ARGV[3], cause}
end
return {'attach', epoch, run, '', redis.call('HGET', h, 'order') or ARGV[3]}
"""
)

# One round trip per task start: count the start of this task id (to bound tasks
# that kill their worker, see ``start_task``) and mark the order's progress
# (RECEIVED becomes PROCESSING).
# KEYS: order, task starts   ARGV: epoch, starts ttl
_START_TASK = (
    _NOW_MS
    + """
local starts = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  if redis.call('HGET', KEYS[1], 'status') == 'RECEIVED' then
    redis.call('HSET', KEYS[1], 'status', 'PROCESSING')
  end
  redis.call('HSET', KEYS[1], 'updated_ms', now)
end
return starts
"""
)

# KEYS: order, completions   ARGV: epoch, maxlen, kind, status, reason, detail,
#                                   payment_id, total_minor, currency, order_id
_FINALIZE = (
    _NOW_MS
    + """
local f = redis.call('HMGET', KEYS[1], 'epoch', 'outcome', 'dead')
if f[1] ~= ARGV[1] or (f[2] and f[2] ~= '') or f[3] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'outcome', ARGV[3], 'status', ARGV[4], 'reason', ARGV[5],
           'detail', ARGV[6], 'payment_id', ARGV[7], 'total_minor', ARGV[8],
           'currency', ARGV[9], 'error', '', 'updated_ms', now)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'order_id',
           ARGV[#ARGV], 'event', 'outcome')
return 1
"""
)

# KEYS: order, completions   ARGV: epoch, maxlen, detail, order_id
_RECORD_ERROR = (
    _NOW_MS
    + """
local f = redis.call('HMGET', KEYS[1], 'epoch', 'outcome', 'dead')
if f[1] ~= ARGV[1] or (f[2] and f[2] ~= '') or f[3] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'error', ARGV[3], 'updated_ms', now)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'order_id',
           ARGV[#ARGV], 'event', 'error')
return 1
"""
)

# KEYS: order, completions   ARGV: epoch, maxlen, detail, order_id.  0 when an outcome won.
_ABANDON = (
    _NOW_MS
    + """
local f = redis.call('HMGET', KEYS[1], 'epoch', 'outcome')
if f[1] ~= ARGV[1] or (f[2] and f[2] ~= '') then return 0 end
redis.call('HSET', KEYS[1], 'dead', '1', 'status', 'FAILED', 'reason', 'DEAD_LETTERED',
           'detail', ARGV[3], 'error', '', 'updated_ms', now)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'order_id',
           ARGV[#ARGV], 'event', 'abandoned')
return 1
"""
)

# KEYS: order, ledger   ARGV: 'charges' | 'refunds', ledger entry.  Counts each payment once.
_COUNT_PAYMENT = """
if redis.call('HSETNX', KEYS[2], ARGV[2], '1') == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  return 1
end
return 0
"""


# The order's state, read for publishing its outcome (or its dead letter). With
# ``ARGV[1] == '1'``, also a write of the caller's own (``confirmed_ms``): a ``WAIT``
# on the same connection then covers every write before it in the replication
# stream, those of the workers that recorded the outcome included (Redis 7.2+
# waits for a connection's last *write*, earlier versions for its last command).
# KEYS: order   ARGV: '1' to write, else '0'.   Reply: HGETALL's flat list
_CONFIRM = (
    _NOW_MS
    + """
local fields = redis.call('HGETALL', KEYS[1])
if ARGV[1] == '1' and #fields > 0 then
  redis.call('HSET', KEYS[1], 'confirmed_ms', now)
end
return fields
"""
)


@dataclass(frozen=True, slots=True)
class OrderView:
    """What ``orders status`` shows."""

    order_id: str
    status: str
    reason: str
    detail: str
    charges: int
    refunds: int
    epoch: int
    run: int
    outcome: Outcome | None
    published: bool
    dead: bool
    order_json: str  # the order as first stored

    def as_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "status": self.status,
            "reason": self.reason or None,
            "charges": self.charges,
            "refunds": self.refunds,
        }


def _begin(reply: list[Any]) -> Begin:
    return Begin(
        next=Next(reply[0]),
        epoch=int(reply[1]),
        run=int(reply[2]),
        error=reply[3],
        order_json=reply[4] if len(reply) > 4 else "",
        cause=reply[5] if len(reply) > 5 else "",
    )


def _finalize_args(epoch: int, outcome: Outcome) -> list[Any]:
    return [
        epoch,
        keys.COMPLETIONS_MAXLEN,
        outcome.kind.value,
        outcome.status.value,
        outcome.reason.value if outcome.reason else "",
        outcome.detail,
        outcome.payment_id,
        outcome.total_minor,
        outcome.currency,
        outcome.order_id,
    ]


def _view(order_id: str, fields: dict[str, str]) -> OrderView | None:
    if not fields:
        return None
    outcome = None
    if fields.get("outcome"):
        reason = fields.get("reason") or None
        outcome = Outcome(
            order_id=order_id,
            kind=OutcomeKind(fields["outcome"]),
            reason=FailureReason(reason) if reason else None,
            detail=fields.get("detail", ""),
            payment_id=fields.get("payment_id", ""),
            total_minor=int(fields.get("total_minor") or 0),
            currency=fields.get("currency", ""),
        )
    return OrderView(
        order_id=order_id,
        status=fields.get("status", OrderStatus.RECEIVED.value),
        reason=fields.get("reason", ""),
        detail=fields.get("detail", ""),
        charges=int(fields.get("charges") or 0),
        refunds=int(fields.get("refunds") or 0),
        epoch=int(fields.get("epoch") or 1),
        run=int(fields.get("run") or 1),
        outcome=outcome,
        published=bool(fields.get("published")),
        dead=fields.get("dead") == "1",
        order_json=fields.get("order", ""),
    )


class OrderState:
    """Order state for workflow steps and the CLI (sync). Every method is idempotent."""

    def __init__(self, client: redis.Redis) -> None:
        """``client`` must be created with ``decode_responses=True``."""
        self._redis = client
        self._start_task = client.register_script(_START_TASK)
        self._finalize = client.register_script(_FINALIZE)
        self._record_error = client.register_script(_RECORD_ERROR)
        self._count_payment = client.register_script(_COUNT_PAYMENT)

    def start_task(self, order_id: str, epoch: int, task_id: str) -> int:
        """Count a start of ``task_id`` and mark the order's progress (unless it moved
        to another epoch); returns the starts of ``task_id`` including this one.

        Redis has no "redelivered" flag (celery#9082): a task whose process dies
        (an out-of-memory kill) is requeued by ``task_reject_on_worker_lost`` and
        would kill the next worker too, forever. The count lets it refuse to run
        after a bounded number of lost attempts.
        """
        return int(
            self._start_task(
                keys=[keys.order(order_id), keys.task_starts(task_id)],
                args=[epoch, _TASK_STARTS_TTL_S],
            )
        )

    def finalize(self, epoch: int, outcome: Outcome) -> bool:
        """Record the outcome once per epoch and announce it; ``False`` if already decided."""
        return bool(
            self._finalize(
                keys=[keys.order(outcome.order_id), keys.COMPLETIONS_STREAM],
                args=_finalize_args(epoch, outcome),
            )
        )

    def record_error(self, order_id: str, epoch: int, detail: str) -> bool:
        return bool(
            self._record_error(
                keys=[keys.order(order_id), keys.COMPLETIONS_STREAM],
                args=[epoch, keys.COMPLETIONS_MAXLEN, detail, order_id],
            )
        )

    def count_charge(self, order_id: str, payment_id: str) -> None:
        self._count_payment(
            keys=[keys.order(order_id), keys.ledger(order_id)],
            args=["charges", f"charge:{payment_id}"],
        )

    def count_refund(self, order_id: str, payment_id: str) -> None:
        self._count_payment(
            keys=[keys.order(order_id), keys.ledger(order_id)],
            args=["refunds", f"refund:{payment_id}"],
        )

    def view(self, order_id: str) -> OrderView | None:
        return _view(order_id, decoded_hash(self._redis.hgetall(keys.order(order_id))))


class AsyncOrderState:
    """Order state for the bridge (asyncio)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        """``client`` must be created with ``decode_responses=True``."""
        self._redis = client
        self._begin = client.register_script(_BEGIN)
        self._finalize = client.register_script(_FINALIZE)
        self._abandon = client.register_script(_ABANDON)
        self._confirm = client.register_script(_CONFIRM)

    async def begin(
        self,
        order_id: str,
        stall_timeout_s: float,
        *,
        poll: bool = False,
        order_json: str = "",
        server: str = "",
        known: tuple[int, int] = (0, 0),
    ) -> Begin:
        """Decide what to do with a delivery of ``order_json`` (``poll=False``) or with
        an order being waited on (``poll=True``: a failed workflow is reported, not
        restarted; a missing state is reported as ``LOST``, not created).

        ``server`` is the identity of the Redis server as the bridge last saw it
        (see ``bridge.redis_watch``): a run sent through another one is sent again.
        ``known`` is the (epoch, run) the bridge is waiting for, so that a state a
        failover lost is restored without reusing a run number.
        """
        reply = await self._begin(
            keys=[keys.order(order_id)],
            args=[
                int(stall_timeout_s * 1000),
                "poll" if poll else "deliver",
                order_json,
                server,
                *known,
            ],
        )
        return _begin(reply)

    async def finalize(self, epoch: int, outcome: Outcome) -> bool:
        return bool(
            await self._finalize(
                keys=[keys.order(outcome.order_id), keys.COMPLETIONS_STREAM],
                args=_finalize_args(epoch, outcome),
            )
        )

    async def abandon(self, order_id: str, epoch: int, detail: str) -> bool:
        """Mark the order dead-lettered in this epoch, before compensating it: from here
        on no outcome can be recorded for the epoch, so no late step can complete it.
        ``False`` if an outcome was recorded first (then publish that instead)."""
        return bool(
            await self._abandon(
                keys=[keys.order(order_id), keys.COMPLETIONS_STREAM],
                args=[epoch, keys.COMPLETIONS_MAXLEN, detail, order_id],
            )
        )

    async def confirm(
        self, order_ids: list[str], *, replicas: int, aof: bool, timeout_ms: int
    ) -> tuple[list[OrderView | None], int, bool]:
        """The state of ``order_ids`` and how far the writes it rests on are replicated,
        in one round trip: :data:`_CONFIRM` per order, then ``WAIT replicas`` (when
        ``replicas > 0``) and ``WAITAOF 1 0`` (when ``aof``) on the same connection.

        Returns the views, the replicas that acknowledged (``replicas`` itself when
        none were asked for) and whether the primary's fsync was confirmed
        (``True`` when not asked for)."""
        write = "1" if replicas > 0 or aof else "0"
        try:
            replies = await self._confirm_round_trip(order_ids, write, replicas, aof, timeout_ms)
        except redis.exceptions.NoScriptError:
            # A server that never saw the script: one that was failed over to.
            await self._redis.script_load(_CONFIRM)
            replies = await self._confirm_round_trip(order_ids, write, replicas, aof, timeout_ms)
        views = [
            _view(order_id, dict(zip(flat[::2], flat[1::2], strict=True)))
            for order_id, flat in zip(order_ids, replies, strict=False)
        ]
        rest = replies[len(order_ids) :]
        acked = int(rest.pop(0)) if replicas > 0 else replicas
        fsynced = bool(int(rest.pop(0)[0])) if aof else True
        return views, acked, fsynced

    async def _confirm_round_trip(
        self, order_ids: list[str], write: str, replicas: int, aof: bool, timeout_ms: int
    ) -> list[Any]:
        # EVALSHA by hand: a pipeline given registered scripts asks SCRIPT EXISTS
        # first, a second round trip on every call.
        async with self._redis.pipeline(transaction=False) as pipe:
            for order_id in order_ids:
                pipe.evalsha(self._confirm.sha, 1, keys.order(order_id), write)
            if replicas > 0:
                pipe.execute_command("WAIT", replicas, timeout_ms)
            if aof:
                pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
            return list(await pipe.execute())

    async def mark_unsent(self, order_id: str) -> None:
        """The workflow could not be sent: the next delivery must send it, not wait
        for a workflow that does not exist."""
        await self._redis.hset(keys.order(order_id), "error", "workflow could not be sent")

    async def mark_published(self, order_id: str, kind: OutcomeKind) -> None:
        await self._redis.hset(keys.order(order_id), "published", kind.value)

    async def view(self, order_id: str) -> OrderView | None:
        return _view(order_id, decoded_hash(await self._redis.hgetall(keys.order(order_id))))
