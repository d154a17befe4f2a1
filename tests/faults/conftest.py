"""A fresh :class:`~harness.FaultStack` per test, and its logs in the report of a failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FaultStack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    """NATS and Redis of the test's own (killable); the test adds bridges and workers."""
    with FaultStack(tmp_path) as fault_stack:
        yield fault_stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, FaultStack):
            report.sections.append(("fault stack logs", value.logs()))
