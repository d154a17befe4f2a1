"""Fixtures of the end-to-end tests: the pipeline's processes (from
:mod:`pipeline_stack`) on the session's servers, and their logs in a failure's report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline_stack import Pipeline, pipeline_of_its_own, running_pipeline

from dev.servers import NatsServer, RedisServer


@pytest.fixture(scope="module")
def pipeline(
    nats_server: NatsServer, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Bridge and worker on the session's servers, shared by a test module."""
    log_dir = tmp_path_factory.mktemp("e2e-pipeline")
    with running_pipeline(nats_server.url, redis_server.url, log_dir) as running:
        yield running


@pytest.fixture
def failing_gateway_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """A short-lived stack of its own whose payment gateway always fails transiently."""
    log_dir = tmp_path_factory.mktemp("e2e-failing-gateway")
    with pipeline_of_its_own(log_dir, {"PAYMENT_TRANSIENT_FAILURE_RATE": "1"}) as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Pipeline):
            report.sections.append(("pipeline logs", value.stack.logs()))
