"""Waiting for many workflows at once on one Redis stream.

The workflow's last step appends ``{key, event}`` to a stream in the same
script that records the outcome (``relay/lua/finalize.lua``; a batch step that
records several at once appends one ``{keys, event}``, ``keys`` a JSON list). One
reader per bridge blocks on ``XREAD`` for a batch of entries and wakes the
handlers waiting for those entries: one round trip per batch, not one result
subscription or poll per input. Every bridge reads the whole stream and ignores
entries it is not waiting for.

An entry can be missed (the reader was reconnecting, the stream was trimmed);
waiters therefore also re-read their entry now and then, so a missed
wake-up costs latency, never an input.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict

import redis.asyncio
from redis.exceptions import RedisError

from relay.backoff import Backoff
from relay.redis_replies import decoded_entries, decoded_xread

log = logging.getLogger(__name__)


class CompletionWatcher:
    def __init__(
        self, client: redis.asyncio.Redis, stream: str, block_ms: int = 1000, batch: int = 1000
    ) -> None:
        self._redis = client
        self._stream = stream
        self._block_ms = block_ms
        self._batch = batch
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._reread = False
        self.healthy = False

    def expect(self, key: str) -> asyncio.Event:
        """An event set whenever the entry's workflow reports; :meth:`forget` it after."""
        event = asyncio.Event()
        self._waiters[key].add(event)
        return event

    def forget(self, key: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[key]

    def server_changed(self) -> None:
        """Redis failed over (or restarted): the new server's stream may end before
        the last entry read, so read on from its newest, and wake every waiter to
        re-check its entry there."""
        self._reread = True
        self._wake_all()

    async def run(self) -> None:
        """Read the stream until cancelled; survives Redis outages."""
        last_id: str | None = None
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                if last_id is None or self._reread:
                    self._reread = False
                    newest = decoded_entries(await self._redis.xrevrange(self._stream, count=1))
                    last_id = newest[0][0] if newest else "0-0"
                reply = decoded_xread(
                    await self._redis.xread(
                        {self._stream: last_id}, count=self._batch, block=self._block_ms
                    )
                )
                self.healthy = True
                backoff.reset()
                for _stream, entries in reply:
                    for entry_id, fields in entries:
                        last_id = entry_id
                        for key in _keys(fields):
                            self._wake(key)
            except RedisError as exc:
                self.healthy = False
                pause = backoff.pause()
                log.warning("completion stream unavailable (%s); retrying in %.1fs", exc, pause)
                # Everyone waiting re-checks its entry once Redis is back.
                self._wake_all()
                await asyncio.sleep(pause)

    def _wake(self, key: str) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()


def _keys(fields: dict[str, str]) -> list[str]:
    """The keys a completion event names (a malformed one names none: the waiters'
    own re-reads cover it)."""
    if "keys" in fields:
        try:
            keys = json.loads(fields["keys"])
        except ValueError:
            return []
        return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []
    return [fields.get("key", "")]
