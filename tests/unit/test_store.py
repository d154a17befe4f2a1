"""``relay.store.store``: which refusals are retried, and for how long."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
import pytest
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError

from relay.store import store

pytestmark = pytest.mark.unit


class ScriptedJetStream:
    """Raises the scripted errors in turn, then acks."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts = 0

    async def publish(self, *_args: Any, **_kwargs: Any) -> Any:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return SimpleNamespace(duplicate=False)


def run_store(js: ScriptedJetStream, patience: float) -> Any:
    return asyncio.run(
        store(
            cast(Any, js),
            "ORDER.completed",
            b"x",
            headers={},
            stream="ORDERS",
            request_timeout=1.0,
            patience=patience,
        )
    )


def test_transient_refusals_are_retried_until_stored() -> None:
    js = ScriptedJetStream(
        NoStreamResponseError(),
        ServiceUnavailableError(code=503, description="no leader"),
        nats.errors.TimeoutError(),
    )
    run_store(js, patience=10)
    assert js.attempts == 4


def test_a_message_the_server_refuses_for_itself_is_not_retried() -> None:
    js = ScriptedJetStream(BadRequestError(code=400, description="maximum payload exceeded"))
    with pytest.raises(BadRequestError):
        run_store(js, patience=10)
    assert js.attempts == 1


def test_the_last_error_is_raised_once_patience_runs_out() -> None:
    js = ScriptedJetStream(*[NoStreamResponseError() for _ in range(100)])
    with pytest.raises(NoStreamResponseError):
        run_store(js, patience=0.5)
    assert 1 < js.attempts < 100
