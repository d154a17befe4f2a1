"""Group commit of workflow sends: the new workflows of one moment go to Celery as
one canvas (:meth:`relay.application.BatchingApplication.workflow_batch`).

The handlers of one fetch reach their send within the same event-loop turn, or a
millisecond apart, once their ledger ``begin`` returns. Sent together, N inputs
pay Celery's per-message costs (a publish, a receive, an ack, a chord counter)
once instead of N times. A send waits at most ``linger_s`` for company, not at
all once the batch is full, and alone (no batch) when nothing else came. Every
member awaits the batch's one send and sees its error, so each marks itself
unsent as a single send would.

Inputs that arrive one by one at a steady rate would each find no company within
a millisecond, and cost what unbatched ones cost exactly when the rate is high.
So the batcher is self-clocked, as group commit in a database is: while
``max_in_flight`` of its canvases are at work (sent, and no member finished yet),
the workers are busy with what it sent before, and new inputs wait for the next
canvas, for at most ``hold_s``, instead of queueing behind them one by one. The
canvas goes as soon as one in flight finishes, or when it is full. Under a light
load nothing is in flight and nothing is held; the harder the workers work, the
larger the batches and the less each input costs them.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic

from celery.canvas import Signature

from relay.application import ItemT, Run
from relay.dispatch import Dispatcher
from relay.tracing import batch_span


@dataclass(eq=False)
class Sent:
    """A run's canvas, on the broker: ``size`` inputs went in it. The run's waiter
    calls :meth:`finish` once its workflow is over (outcome, failure, or given up):
    the first member to finish ends the canvas's time at work."""

    size: int
    _on_finished: Callable[[], None] = field(repr=False)
    _finished: bool = field(default=False, repr=False)

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._on_finished()


class _Canvas:
    """One canvas at work: done once, by its first member that finishes."""

    def __init__(self, done: Callable[[], None]) -> None:
        self._done = done
        self._open = True

    def member_finished(self) -> None:
        if self._open:
            self._open = False
            self._done()


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
        max_in_flight: int = 2,
        hold_s: float = 0.05,
        on_sent: Callable[[int], None] = lambda size: None,
    ) -> None:
        if max_size < 2:
            raise ValueError("a batch holds two inputs or more")
        if max_in_flight < 1:
            raise ValueError("at least one canvas must be allowed at work")
        self._dispatcher = dispatcher
        self._single = single
        self._batch = batch
        self._max_size = max_size
        self._linger_s = linger_s
        self._span_prefix = span_prefix
        self._on_sent = on_sent
        self._max_in_flight = max_in_flight
        self._hold_s = max(hold_s, linger_s)
        self._in_flight = 0  # canvases sent (or being sent) whose members all wait
        self._waiting: list[tuple[Run[ItemT], asyncio.Future[Sent]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Canvases at work: sent, and none of their members finished yet."""
        return self._in_flight

    async def send(self, run: Run[ItemT]) -> Sent:
        """Return once ``run``'s canvas is on the broker; call :meth:`Sent.finish`
        when the run's workflow is over."""
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[Sent] = loop.create_future()
        self._waiting.append((run, sent))
        if len(self._waiting) >= self._max_size:
            self._flush()
        elif self._timer is None:
            busy = self._in_flight >= self._max_in_flight
            wait = self._hold_s if busy else self._linger_s
            # In a context of its own: the batch is nobody's child.
            self._timer = loop.call_later(wait, self._flush, context=_empty())
        try:
            return await sent
        except asyncio.CancelledError:
            # Cancelled (shutdown) after its canvas was sent: nobody will finish the
            # ticket, so it is finished here, or the canvas would count as at work.
            if sent.done() and not sent.cancelled() and sent.exception() is None:
                sent.result().finish()
            raise

    def _canvas_finished(self) -> None:
        self._in_flight -= 1
        if self._waiting and self._in_flight < self._max_in_flight and self._timer is not None:
            # Held for a canvas to finish: one has.
            self._timer.cancel()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._linger_s, self._flush, context=_empty())

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        members, self._waiting = self._waiting, []
        if not members:
            return
        self._in_flight += 1
        canvas = _Canvas(self._canvas_finished)
        task = asyncio.get_running_loop().create_task(self._send(members, canvas), context=_empty())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(
        self, members: list[tuple[Run[ItemT], asyncio.Future[Sent]]], canvas: _Canvas
    ) -> None:
        runs = [run for run, _ in members]
        try:
            if len(runs) == 1:
                # Alone: in its own context, as an unbatched send is.
                await runs[0].context.run(self._send_single, runs[0])
            else:
                with batch_span(self._span_prefix, [run.context for run in runs]):
                    await self._dispatcher.send(self._batch(runs))
        except BaseException as exc:
            canvas.member_finished()  # not at work: it never reached the broker
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
                sent.set_result(Sent(len(runs), canvas.member_finished))
            else:  # its member was cancelled meanwhile (shutdown): it will not finish
                canvas.member_finished()

    def _send_single(self, run: Run[ItemT]) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._dispatcher.send(self._single(run)))


def _empty() -> contextvars.Context:
    return contextvars.Context()
