"""Group commit of workflow sends (:mod:`relay.batching`), on a real event loop with a
dispatcher that records what it was given instead of talking to Celery."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relay.application import Run
from relay.batching import Batcher, Sent

pytestmark = pytest.mark.unit

ORDER = contextvars.ContextVar("ORDER", default="")


class RecordingDispatcher:
    def __init__(self, fails: bool = False) -> None:
        self.sent: list[tuple[Any, str, float]] = []  # canvas, ORDER seen, loop time
        self.fails = fails
        self.on_send: Callable[[], None] = lambda: None

    async def send(self, canvas: Any) -> None:
        self.sent.append((canvas, ORDER.get(), asyncio.get_running_loop().time()))
        self.on_send()
        if self.fails:
            raise ConnectionError("broker gone")


def single(run: Run[str]) -> Any:
    return ("single", run.key, ORDER.get())


def batch(runs: Sequence[Run[str]]) -> Any:
    return ("batch", [run.key for run in runs])


def batcher(
    dispatcher: RecordingDispatcher,
    max_size: int,
    linger_s: float,
    *,
    max_in_flight: int = 4,
    hold_s: float = 0.05,
) -> Batcher[str]:
    sizes.clear()
    return Batcher(
        cast(Any, dispatcher),
        single,
        batch,
        max_size=max_size,
        linger_s=linger_s,
        span_prefix="test",
        max_in_flight=max_in_flight,
        hold_s=hold_s,
        on_sent=sizes.append,
    )


sizes: list[int] = []


async def send_as(b: Batcher[str], key: str) -> Sent:
    """A handler: its own context, with its key in it, as the processor's scope does."""
    ORDER.set(key)
    return await b.send(Run(key, key, 1, 1, contextvars.copy_context()))


async def handlers(b: Batcher[str], keys: list[str]) -> list[Sent | BaseException]:
    tasks = [asyncio.create_task(send_as(b, key)) for key in keys]
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_the_sends_of_one_moment_go_as_one_canvas() -> None:
    dispatcher = RecordingDispatcher()
    results = asyncio.run(handlers(batcher(dispatcher, 8, 0.05), ["a", "b", "c", "d", "e"]))
    assert [r.size if isinstance(r, Sent) else r for r in results] == [5] * 5
    assert [canvas for canvas, _, _ in dispatcher.sent] == [("batch", ["a", "b", "c", "d", "e"])]
    # The batch is nobody's child: sent outside every member's context.
    assert [seen for _, seen, _ in dispatcher.sent] == [""]
    assert sizes == [5]


def test_a_full_batch_goes_at_once_and_the_rest_after_the_linger() -> None:
    dispatcher = RecordingDispatcher()

    async def scenario() -> float:
        started = asyncio.get_running_loop().time()
        await handlers(batcher(dispatcher, 3, 0.2), list("abcdefg"))
        return started

    started = asyncio.run(scenario())
    assert [canvas for canvas, _, _ in dispatcher.sent] == [
        ("batch", ["a", "b", "c"]),
        ("batch", ["d", "e", "f"]),
        ("single", "g", "g"),
    ]
    at = [when - started for _, _, when in dispatcher.sent]
    assert at[0] < 0.1 and at[1] < 0.1, at  # full: not held for the linger
    assert at[2] >= 0.19, at  # alone: it waited for company first
    assert sizes == [3, 3, 1]


def test_a_lone_send_goes_alone_in_its_own_context() -> None:
    dispatcher = RecordingDispatcher()
    asyncio.run(handlers(batcher(dispatcher, 8, 0.001), ["a"]))
    # Built and sent in the member's context, as an unbatched send is (its trace).
    assert [(canvas, seen) for canvas, seen, _ in dispatcher.sent] == [(("single", "a", "a"), "a")]


def test_a_failed_send_fails_every_member_of_its_batch() -> None:
    dispatcher = RecordingDispatcher(fails=True)
    results = asyncio.run(handlers(batcher(dispatcher, 8, 0.01), ["a", "b", "c"]))
    assert [type(r) for r in results] == [ConnectionError] * 3
    assert sizes == []  # nothing was sent


def test_a_member_cancelled_while_waiting_does_not_break_its_batch() -> None:
    dispatcher = RecordingDispatcher()

    async def scenario() -> list[Sent | BaseException]:
        b = batcher(dispatcher, 8, 0.05)
        tasks = [asyncio.create_task(send_as(b, key)) for key in ("a", "b", "c")]
        await asyncio.sleep(0.01)
        tasks[1].cancel()  # shutdown: this handler's message goes back to NATS
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert isinstance(results[0], Sent) and isinstance(results[2], Sent)
    assert isinstance(results[1], asyncio.CancelledError)
    # Still sent with the rest: the redelivery finds its run started and attaches.
    assert [canvas for canvas, _, _ in dispatcher.sent] == [("batch", ["a", "b", "c"])]


def test_a_batch_needs_two_members() -> None:
    with pytest.raises(ValueError, match="two inputs or more"):
        batcher(RecordingDispatcher(), 1, 0.001)


def test_the_batch_span_links_each_members_span(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    dispatcher = RecordingDispatcher()

    async def member(b: Batcher[str], key: str) -> int:
        with tracer.start_as_current_span(f"process {key}") as span:
            await send_as(b, key)
            return span.get_span_context().span_id

    async def scenario() -> list[int]:
        b = batcher(dispatcher, 8, 0.01)
        return list(await asyncio.gather(*(member(b, key) for key in ("a", "b", "c"))))

    member_ids = asyncio.run(scenario())
    [sent] = [s for s in spans.get_finished_spans() if s.name == "test send batch"]
    assert sent.parent is None  # a root of its own
    assert sorted(link.context.span_id for link in sent.links) == sorted(member_ids)
    assert sent.attributes is not None and sent.attributes["messaging.batch.message_count"] == 3


def test_while_its_canvases_are_at_work_new_sends_wait_for_one_to_finish() -> None:
    """Self-clocking: with one canvas allowed at work, inputs arriving one by one
    while it works go together in the next canvas, sent as soon as it finishes."""
    dispatcher = RecordingDispatcher()

    async def scenario() -> list[int]:
        b = batcher(dispatcher, 8, 0.001, max_in_flight=1, hold_s=10.0)
        first = await send_as(b, "a")
        assert b.in_flight == 1
        later = []
        for key in ("b", "c", "d"):  # one by one, each far beyond the linger
            later.append(asyncio.create_task(send_as(b, key)))
            await asyncio.sleep(0.01)
        assert len(dispatcher.sent) == 1  # held: the first canvas is still at work
        first.finish()
        first.finish()  # a second finish of the same run changes nothing
        sent = await asyncio.gather(*later)
        assert b.in_flight == 1  # the second canvas is at work now
        return [s.size for s in sent]

    assert asyncio.run(scenario()) == [3, 3, 3]
    assert [canvas for canvas, _, _ in dispatcher.sent] == [
        ("single", "a", "a"),
        ("batch", ["b", "c", "d"]),
    ]


def test_a_held_send_waits_at_most_the_hold_and_a_full_batch_not_at_all() -> None:
    dispatcher = RecordingDispatcher()

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        b = batcher(dispatcher, 3, 0.001, max_in_flight=1, hold_s=1.0)
        await send_as(b, "a")  # at work, never finished
        started = loop.time()
        await handlers(b, ["b", "c", "d"])  # full: goes at once
        full = loop.time() - started
        await send_as(b, "e")  # held, until the hold runs out
        return [full, loop.time() - started - full]

    full, held = asyncio.run(scenario())
    assert full < 0.5, full  # far below the hold, even on a busy machine
    assert held >= 0.99, held
    assert sizes == [1, 3, 1]


def test_a_canvas_that_could_not_be_sent_is_not_at_work() -> None:
    dispatcher = RecordingDispatcher(fails=True)

    async def scenario() -> int:
        b = batcher(dispatcher, 8, 0.001, max_in_flight=1)
        results = await handlers(b, ["a", "b"])
        assert [type(r) for r in results] == [ConnectionError] * 2
        return b.in_flight

    assert asyncio.run(scenario()) == 0


def test_a_member_cancelled_after_its_canvas_was_sent_finishes_its_ticket() -> None:
    dispatcher = RecordingDispatcher()

    async def scenario() -> tuple[int, Sent]:
        b = batcher(dispatcher, 2, 1.0, max_in_flight=1)
        cancelled = asyncio.create_task(send_as(b, "a"))
        other = asyncio.create_task(send_as(b, "b"))
        # Cancelled (shutdown) in the turn its canvas is sent, before it resumes with
        # its ticket: nobody else can finish that ticket.
        dispatcher.on_send = lambda: asyncio.get_running_loop().call_soon(cancelled.cancel)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return b.in_flight, await other

    in_flight, other = asyncio.run(scenario())
    # Its finish ended the canvas's time at work (a first member's finish does), so
    # it does not hold every later send while the other member still waits.
    assert in_flight == 0
    assert other.size == 2 and len(dispatcher.sent) == 1
