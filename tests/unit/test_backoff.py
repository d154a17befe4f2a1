"""The bridge's one backoff: doubling pauses up to a cap, jitter within 50-100 %."""

from __future__ import annotations

import pytest

from relay.backoff import Backoff, for_attempt

pytestmark = pytest.mark.unit


def test_pauses_double_up_to_the_cap_and_start_over_after_a_reset() -> None:
    backoff = Backoff(0.1, 0.5)
    assert [backoff.pause() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.pause() == 0.1


def test_jittered_pauses_stay_within_half_and_all_of_the_nominal() -> None:
    backoff = Backoff(1.0, 4.0, jitter=True)
    for nominal in (1.0, 2.0, 4.0, 4.0):
        assert nominal * 0.5 <= backoff.pause() <= nominal


@pytest.mark.parametrize(("attempt", "nominal"), [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0)])
def test_a_pause_for_an_attempt_doubles_from_the_first(attempt: int, nominal: float) -> None:
    for _ in range(20):
        assert nominal * 0.5 <= for_attempt(attempt, 0.5, 30.0) <= nominal
