"""Group commit of workflow sends: the new workflows of one moment go to Celery as
one canvas (:meth:`relay.application.BatchingApplication.workflow_batch`).

The handlers of one fetch reach their send within the same event-loop turn, or a
millisecond apart, once their ledger ``begin`` returns. Sent together, N inputs
pay Celery's per-message costs (a publish, a receive, an ack, a chord counter)
once instead of N times. A send waits at most ``linger_s`` for company, not at
all once the batch is full, and alone (no batch) when nothing else came. Every
member awaits the batch's one send and sees its error, so each marks itself
unsent as a single send would.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Generic

from celery.canvas import Signature

from relay.application import ItemT, Run
from relay.dispatch import Dispatcher
from relay.tracing import batch_span


class Batcher(Generic[ItemT]):
    def __init__(
        self,
        dispatcher: Dispatcher,
        single: Callable[[Run[ItemT]], Signature],
        batch: Callable[[Sequence[Run[ItemT]]], Signature],
        *,
        max_size: int,
        linger_s: float,
        span_prefix: str,
        on_sent: Callable[[int], None] = lambda size: None,
    ) -> None:
        if max_size < 2:
            raise ValueError("a batch holds two inputs or more")
        self._dispatcher = dispatcher
        self._single = single
        self._batch = batch
        self._max_size = max_size
        self._linger_s = linger_s
        self._span_prefix = span_prefix
        self._on_sent = on_sent
        self._waiting: list[tuple[Run[ItemT], asyncio.Future[int]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def send(self, run: Run[ItemT]) -> int:
        """Return once ``run``'s canvas is on the broker: the number of inputs it
        carried (1: sent alone)."""
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[int] = loop.create_future()
        self._waiting.append((run, sent))
        if len(self._waiting) >= self._max_size:
            self._flush()
        elif self._timer is None:
            # In a context of its own: the batch is nobody's child.
            self._timer = loop.call_later(self._linger_s, self._flush, context=_empty())
        return await sent

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        members, self._waiting = self._waiting, []
        if not members:
            return
        task = asyncio.get_running_loop().create_task(self._send(members), context=_empty())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, members: list[tuple[Run[ItemT], asyncio.Future[int]]]) -> None:
        runs = [run for run, _ in members]
        try:
            if len(runs) == 1:
                # Alone: in its own context, as an unbatched send is.
                await runs[0].context.run(self._send_single, runs[0])
            else:
                with batch_span(self._span_prefix, [run.context for run in runs]):
                    await self._dispatcher.send(self._batch(runs))
        except BaseException as exc:
            # A failed send fails every member; a cancelled one (the dispatcher shut
            # down) cancels them, so no member waits for a send that never comes.
            for _, sent in members:
                if sent.done():  # a member cancelled meanwhile (shutdown)
                    continue
                if isinstance(exc, Exception):
                    sent.set_exception(exc)
                else:
                    sent.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        self._on_sent(len(runs))
        for _, sent in members:
            if not sent.done():
                sent.set_result(len(runs))

    def _send_single(self, run: Run[ItemT]) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._dispatcher.send(self._single(run)))


def _empty() -> contextvars.Context:
    return contextvars.Context()
