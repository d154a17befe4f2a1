"""The Redis server behind ``REDIS_URL``, as the bridge sees it: which server it is,
and how many replicas must hold a write before an outcome may be published.

Managed Redis fails over behind one address: the replica is promoted, and
whatever it had not received yet is gone, broker messages included. Two things
follow, and both live here:

- :class:`RedisWatch` asks the server every second who it is (its ``run_id``:
  a promoted replica or a restarted server is another process) and how many
  replicas are online. A new identity is a
  failover or a restart: the bridge re-checks every entry it is waiting for at
  once (``on_change``), and the ledger re-sends every run that was sent through
  the previous server, instead of waiting for ``WORKFLOW_STALL_TIMEOUT``.
- :class:`OutcomeBarrier` reads an entry's outcome for publishing and, on the
  same connection, ``WAIT``\\ s until the replicas acknowledge every write before
  it (and ``WAITAOF`` for the primary's fsync, when asked). Entries that finish
  together share one round trip (:mod:`relay.coalesce`): requests that arrive
  while one is in flight go out together in the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError, ResponseError

from relay.coalesce import Coalescer
from relay.config import Limits
from relay.ledger import COALESCE_MAX, AsyncLedger, Entry
from relay.metrics import RelayMetrics

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
# After replicas failed to confirm, fetching pauses this long (renewed by every
# failure): new orders could not be finished either.
BEHIND_PAUSE_S = 2.0


class ReplicasBehind(Exception):
    """The replicas did not acknowledge in time: the outcome must not be published yet."""


class RedisWatch:
    """Identity and replicas of the Redis server, refreshed every :data:`CHECK_INTERVAL_S`."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        limits: Limits,
        metrics: RelayMetrics,
        on_change: Callable[[], None],
    ) -> None:
        self._redis = client
        self._wanted = limits.redis_wait_replicas
        self._want_aof = limits.redis_wait_aof
        self._metrics = metrics
        self._on_change = on_change
        # The server's run_id, "" until first seen. Not its replication id: a primary
        # without a backlog takes a new one when its first replica attaches (nothing
        # lost), and bridges that started before and after would disagree on it.
        self.identity = ""
        self.online_replicas = 0
        self.waitaof = False  # the server has WAITAOF and its append-only file is on

    @property
    def replicas_to_wait_for(self) -> int:
        return self.online_replicas if self._wanted == "auto" else self._wanted

    async def run(self) -> None:
        """Refresh until cancelled; a server that does not answer keeps what was known."""
        refused = False
        while True:
            try:
                await self.refresh()
            except ResponseError as exc:
                if not refused:  # INFO renamed or denied (some managed services)
                    log.warning(
                        "Redis refuses INFO (%s): failovers are noticed only by "
                        "WORKFLOW_STALL_TIMEOUT, and REDIS_WAIT_REPLICAS=auto waits for no "
                        "replica; set it to the number of replicas",
                        exc,
                    )
                refused = True
            except (RedisError, OSError):
                pass
            await asyncio.sleep(CHECK_INTERVAL_S)

    async def current_identity(self) -> str:
        """The identity asked now rather than up to a second ago (or the last known)."""
        with contextlib.suppress(RedisError, OSError):
            await self.refresh()
        return self.identity

    async def refresh(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.info("server")
            pipe.info("replication")
            if self._want_aof:
                pipe.info("persistence")
            replies: list[dict[str, Any]] = await pipe.execute()
        server, replication = replies[0], replies[1]
        identity = str(server.get("run_id", ""))
        # Replicas still in their first sync do not acknowledge offsets yet.
        self.online_replicas = sum(
            1 for key, value in replication.items() if key.startswith("slave") and _online(value)
        )
        self._metrics.redis_replicas.set(self.replicas_to_wait_for)
        if self._want_aof:
            self.waitaof = _has_waitaof(server) and bool(replies[2].get("aof_enabled"))
        previous, self.identity = self.identity, identity
        if previous and identity != previous:
            log.warning(
                "the Redis server changed (failover or restart: %s -> %s); re-checking every "
                "entry in flight",
                previous,
                identity,
            )
            self._metrics.redis_server_changes.inc()
            self._on_change()


def _online(replica: object) -> bool:
    return isinstance(replica, dict) and replica.get("state") == "online"


def _has_waitaof(server: dict[str, Any]) -> bool:
    # Valkey reports redis_version 7.2.4 for compatibility, and has WAITAOF since.
    version = str(server.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return parts >= (7, 2)


class OutcomeBarrier:
    """An entry for publishing its outcome, once the replicas hold what it rests on."""

    def __init__(
        self,
        ledger: AsyncLedger,
        watch: RedisWatch,
        limits: Limits,
        metrics: RelayMetrics,
    ) -> None:
        self._ledger = ledger
        self._watch = watch
        self._timeout_ms = limits.redis_wait_timeout_ms
        self._want_aof = limits.redis_wait_aof
        self._metrics = metrics
        # Entries that finish together share one round trip (relay.coalesce).
        self._confirms = Coalescer(
            self._confirm_many, max_batch=COALESCE_MAX, name="outcome-barrier"
        )
        self._behind_until = 0.0
        self.problem = ""

    @property
    def behind(self) -> bool:
        """Replicas failed to confirm a moment ago (the consumer pauses fetching)."""
        return time.monotonic() < self._behind_until

    async def confirm(self, key: str) -> Entry | None:
        """The entry, after every write before it reached the replicas that
        :class:`RedisWatch` says to wait for. Raises :class:`ReplicasBehind` when
        they do not acknowledge within ``REDIS_WAIT_TIMEOUT_MS``, and Redis errors."""
        return await self._confirms(key)

    async def _confirm_many(self, keys: list[str]) -> list[Entry | ResponseError | None]:
        replicas = self._watch.replicas_to_wait_for
        aof = self._want_aof and self._watch.waitaof
        started = time.monotonic()
        confirmed = await self._ledger.confirm(
            keys, replicas=replicas, aof=aof, timeout_ms=self._timeout_ms
        )
        if replicas or aof:
            self._metrics.redis_wait.observe(time.monotonic() - started)
        acked, fsynced = confirmed.acked, confirmed.fsynced
        if acked < replicas or not fsynced:
            first = not self.problem
            self._behind_until = time.monotonic() + BEHIND_PAUSE_S
            self.problem = (
                f"{acked} of {replicas} Redis replicas acknowledged within "
                f"{self._timeout_ms} ms" + ("" if fsynced else "; the primary's fsync did not")
            )
            if first:  # news once, not per order
                log.warning("outcomes held back, fetching paused: %s", self.problem)
            self._metrics.redis_replicas_behind.inc()
            raise ReplicasBehind(self.problem)
        if self.problem:
            log.info("Redis replicas acknowledge again; publishing held outcomes")
        self._behind_until = 0.0
        self.problem = ""
        return confirmed.entries
