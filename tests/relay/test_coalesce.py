"""One call for the requests of one moment (:mod:`relay.coalesce`), on a real event
loop with a call that records what it was asked and can be held open or fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from relay.coalesce import Coalescer

pytestmark = pytest.mark.unit

NAME = "test-coalescer"
T = TypeVar("T")


class Backend:
    """The batched call: records each call's requests and answers each request
    upper-cased. Call ``n`` (0-based) waits for ``hold(n)`` to be released, and
    raises if ``fail(n)`` was asked."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.cancelled: list[int] = []  # calls cancelled while in flight
        self._gates: dict[int, asyncio.Event] = {}
        self._failing: set[int] = set()

    def hold(self, n: int) -> asyncio.Event:
        return self._gates.setdefault(n, asyncio.Event())

    def fail(self, n: int) -> None:
        self._failing.add(n)

    async def __call__(self, requests: list[str]) -> list[str]:
        n = len(self.calls)
        self.calls.append(list(requests))
        try:
            if n in self._gates:
                await self._gates[n].wait()
        except asyncio.CancelledError:
            self.cancelled.append(n)
            raise
        if n in self._failing:
            raise ConnectionError(f"call {n} failed")
        return [r.upper() for r in requests]


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a scenario on a fresh loop; a caller left hanging fails it, not the suite."""

    async def bounded() -> T:
        async with asyncio.timeout(5):
            return await scenario()

    return asyncio.run(bounded())


async def turns(n: int = 3) -> None:
    """Let the loop run a few turns (tasks start, the flusher reaches its call)."""
    for _ in range(n):
        await asyncio.sleep(0)


def start(c: Coalescer[str, str], *requests: str) -> list[asyncio.Task[str]]:
    """Callers started in this loop turn, one task each (as handlers are)."""
    return [asyncio.create_task(ask(c, r)) for r in requests]


async def ask(c: Coalescer[str, str], request: str) -> str:
    return await c(request)


async def outcomes(tasks: list[asyncio.Task[str]]) -> list[str | BaseException]:
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def flusher() -> asyncio.Task[Any]:
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == NAME and not t.done()]
    return task


def test_requests_of_one_loop_turn_go_out_in_one_call() -> None:
    backend = Backend()

    async def scenario() -> list[str]:
        c = Coalescer(backend, max_batch=16, name=NAME)
        return list(await asyncio.gather(*(c(r) for r in "abcde")))

    assert run(scenario) == ["A", "B", "C", "D", "E"]
    assert backend.calls == [["a", "b", "c", "d", "e"]]


def test_requests_arriving_while_a_call_is_in_flight_go_together_in_the_next_call() -> None:
    backend = Backend()

    async def scenario() -> list[str | BaseException]:
        c = Coalescer(backend, max_batch=16, name=NAME)
        gate = backend.hold(0)
        first = start(c, "a")
        await turns()
        assert backend.calls == [["a"]]  # in flight
        # Arriving at different moments while it is: none goes out on its own.
        later = start(c, "b")
        await turns()
        later += start(c, "c")
        await turns()
        assert backend.calls == [["a"]]
        gate.set()
        return await outcomes(first + later)

    assert run(scenario) == ["A", "B", "C"]
    assert backend.calls == [["a"], ["b", "c"]]


def test_max_batch_splits_the_requests_into_calls_of_at_most_that_many() -> None:
    backend = Backend()

    async def scenario() -> list[str]:
        c = Coalescer(backend, max_batch=2, name=NAME)
        return list(await asyncio.gather(*(c(r) for r in "abcde")))

    assert run(scenario) == ["A", "B", "C", "D", "E"]
    assert backend.calls == [["a", "b"], ["c", "d"], ["e"]]


def test_a_failed_call_fails_every_request_of_that_call_and_none_of_the_next() -> None:
    backend = Backend()

    async def scenario() -> list[str | BaseException]:
        c = Coalescer(backend, max_batch=16, name=NAME)
        gate = backend.hold(0)
        backend.fail(0)
        failing = start(c, "a", "b", "c")
        await turns()
        following = start(c, "d", "e")  # arrive while the failing call is in flight
        await turns()
        gate.set()
        return await outcomes(failing + following)

    results = run(scenario)
    assert backend.calls == [["a", "b", "c"], ["d", "e"]]
    errors = results[:3]
    assert all(isinstance(e, ConnectionError) and str(e) == "call 0 failed" for e in errors)
    assert results[3:] == ["D", "E"]


@pytest.mark.parametrize("call_fails", [False, True], ids=["call-answers", "call-fails"])
def test_a_caller_cancelled_while_waiting_does_not_break_the_others(call_fails: bool) -> None:
    backend = Backend()

    async def scenario() -> tuple[list[str | BaseException], str]:
        c = Coalescer(backend, max_batch=16, name=NAME)
        gate = backend.hold(0)
        if call_fails:
            backend.fail(0)
        tasks = start(c, "a", "b", "c")
        await turns()
        tasks[1].cancel()  # its handler gave up (shutdown, a timeout) mid-call
        await turns()
        gate.set()
        results = await outcomes(tasks)
        # The coalescer still serves whoever asks next.
        return results, await c("d")

    results, after = run(scenario)
    assert isinstance(results[1], asyncio.CancelledError)
    if call_fails:
        assert [type(r) for r in (results[0], results[2])] == [ConnectionError] * 2
    else:
        assert (results[0], results[2]) == ("A", "C")
    assert after == "D"
    assert backend.calls == [["a", "b", "c"], ["d"]]


def test_cancelling_the_flusher_cancels_its_waiting_callers() -> None:
    backend = Backend()

    async def scenario() -> tuple[list[str | BaseException], str]:
        c = Coalescer(backend, max_batch=16, name=NAME)
        backend.hold(0)  # never released: the loop shuts down mid-call
        in_flight = start(c, "a", "b")
        await turns()
        queued = start(c, "c")  # waiting for the next call, which never comes
        await turns()
        flusher().cancel()
        # Each caller ends (cancelled) instead of waiting forever for an answer.
        results = await asyncio.wait_for(outcomes(in_flight + queued), 1)
        # A later request starts a flusher of its own.
        return results, await c("d")

    results, after = run(scenario)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert backend.cancelled == [0]
    assert backend.calls == [["a", "b"], ["d"]]
    assert after == "D"


def test_a_lone_request_is_answered_by_a_call_of_its_own() -> None:
    backend = Backend()

    async def scenario() -> list[str]:
        c = Coalescer(backend, max_batch=16, name=NAME)
        return [await c("a"), await c("b")]

    assert run(scenario) == ["A", "B"]
    assert backend.calls == [["a"], ["b"]]


def test_a_flusher_cancelled_before_it_ran_cancels_its_callers_too() -> None:
    backend = Backend()

    async def scenario() -> list[str | BaseException]:
        c = Coalescer(backend, max_batch=16, name=NAME)
        callers = start(c, "a", "b")
        await asyncio.sleep(0)  # both asked; their flusher is created, not yet run
        flusher().cancel()
        return await asyncio.wait_for(outcomes(callers), 1)

    results = run(scenario)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert backend.calls == []


def test_an_answer_that_is_an_error_is_that_requests_alone() -> None:
    """A call may answer one request with its own error (one entry a script could
    not handle): only that caller sees it."""

    async def call(requests: list[str]) -> list[str | Exception]:
        return [ValueError(r) if r == "bad" else r.upper() for r in requests]

    async def scenario() -> tuple[list[str], BaseException | None]:
        c: Coalescer[str, str] = Coalescer(call, max_batch=16, name=NAME)
        good_a, bad, good_b = start(c, "a", "bad", "b")
        await asyncio.wait([good_a, bad, good_b])
        return [good_a.result(), good_b.result()], bad.exception()  # raised, not returned

    answers, raised = run(scenario)
    assert answers == ["A", "B"]
    assert isinstance(raised, ValueError) and str(raised) == "bad"


def test_a_caller_cancelled_before_its_call_is_not_asked_for() -> None:
    """A handler cancelled while it waited (shutdown) must not have its request made:
    a ledger begin would start a run that nobody then sends."""
    backend = Backend()

    async def scenario() -> list[str | BaseException]:
        c = Coalescer(backend, max_batch=16, name=NAME)
        backend.hold(0)
        first = start(c, "a")
        await turns()  # call 0 in flight
        later = start(c, "b", "c")
        await turns()
        later[0].cancel()  # "b" gives up while call 0 is still in flight
        backend.hold(0).set()
        return await outcomes([*first, *later])

    results = run(scenario)
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], asyncio.CancelledError)
    assert backend.calls == [["a"], ["c"]]


def test_max_size_splits_the_requests_by_their_summed_size() -> None:
    backend = Backend()

    async def scenario() -> list[str]:
        c = Coalescer(backend, max_batch=16, name=NAME, size=len, max_size=4)
        return list(await asyncio.gather(*(c(r) for r in ["ab", "cd", "e", "fghijk", "l", "m"])))

    assert run(scenario) == ["AB", "CD", "E", "FGHIJK", "L", "M"]
    # At most 4 characters a call; one larger than that goes alone, never waits.
    assert backend.calls == [["ab", "cd"], ["e"], ["fghijk"], ["l", "m"]]
