"""One round trip for the requests of one moment.

The handlers of one fetch ask Redis the same kind of question within one event-loop
turn (their ledger ``begin``), and the waiters woken by one completion read do the
same (their poll, their confirm, their ``published`` mark). Asked one by one, every
order pays a round trip and a script call of its own; asked together, one call
answers them all. A :class:`Coalescer` gathers the requests of the current loop
turn, and those that arrive while its call is in flight, into the next call: no
timer, so a lone request waits one loop turn and nothing more.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
R = TypeVar("R")


class Coalescer(Generic[K, R]):
    def __init__(
        self,
        call: Callable[[list[K]], Awaitable[Sequence[R | Exception]]],
        *,
        max_batch: int,
        name: str,
        size: Callable[[K], int] | None = None,
        max_size: int = 0,
    ) -> None:
        """``call`` answers a list of requests with one result per request, in order.
        A result that is an exception is that request's alone (a fault of one entry
        must not fail the others asked with it); an exception ``call`` raises is
        every request's (the server was unreachable for all of them).

        A call takes at most ``max_batch`` requests and, when ``size`` is given, at
        most ``max_size`` of their summed sizes (a request larger than that goes
        alone): requests may carry whole messages, and one call is one command that
        the server buffers whole and runs without serving anyone else."""
        self._call = call
        self._max_batch = max_batch
        self._size = size
        self._max_size = max_size
        self._name = name
        self._pending: list[tuple[K, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, request: K) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._flusher is None or self._flusher.done():
            # Started after the callbacks already due this turn (the rest of a fetch's
            # handlers join), and in no request's context: the call is nobody's child.
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name=self._name, context=contextvars.Context()
            )
            self._flusher.add_done_callback(self._cancel_pending)
        return await future

    async def _flush(self) -> None:
        batch: list[tuple[K, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch = self._take()
                # A caller cancelled while it waited (shutdown) is not asked for: a
                # ledger `begin` would start a run that nobody sends.
                batch = [(request, future) for request, future in batch if not future.done()]
                if not batch:
                    continue
                try:
                    results = await self._call([request for request, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(
                            f"{self._name}: {len(results)} answers to {len(batch)} requests"
                        )
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller was cancelled meanwhile
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            for _, future in batch:  # cancelled mid-call (shutdown)
                future.cancel()

    def _take(self) -> list[tuple[K, asyncio.Future[R]]]:
        """The next call's requests, off the front of the queue (at least one)."""
        count = min(len(self._pending), self._max_batch)
        if self._size is not None:
            total = 0
            for n, (request, _) in enumerate(self._pending[:count]):
                total += self._size(request)
                if n and total > self._max_size:
                    count = n
                    break
        batch = self._pending[:count]
        del self._pending[:count]
        return batch

    def _cancel_pending(self, flusher: asyncio.Task[None]) -> None:
        """A flusher that ended without answering (cancelled, even before its first
        step): nobody waits for a call that never comes."""
        if flusher is self._flusher and flusher.cancelled():
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()
