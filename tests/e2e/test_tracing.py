"""One trace per order, from the producer to the last task, exported over OTLP/HTTP.

Real processes: ``orders publish`` (the producer), ``orders-bridge`` and
``orders-worker`` (prefork children), each exporting to a real OTLP receiver
that decodes the protobuf requests. For each order, completed or compensated,
the spans must share one trace id, form one tree rooted at the producer's span,
and carry the order's id; the workflow's steps, the chord callback, the
compensations, any retries and the outcome publish must all be in it.

The gateway fails half the attempts transiently (before or after charging), so
retries happen: with 20 orders the chance that none does is below 1e-6.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from otlp_receiver import OtlpReceiver, ReceivedSpan
from pipeline_stack import Pipeline, process_env, running_pipeline, unique, wait_for

from dev.servers import NatsServer, RedisServer
from orders import names
from orders.domain.model import OutcomeKind

pytestmark = pytest.mark.e2e

ORDERS = 20
DECLINE_EVERY = 4  # orders 4, 8, ...: payment declined, stock released
TRACING_ENV = {
    "LOG_FORMAT": "json",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the receiver soon after they end
    "PAYMENT_TRANSIENT_FAILURE_RATE": "0.5",
    "TASK_MAX_RETRIES": "10",  # a run of bad luck is retried, not failed
    "TASK_RETRY_BACKOFF_MAX": "1",
}
STEPS = [names.TASK_RESERVE, names.TASK_CHARGE, names.TASK_SETTLE]
# An order sent in a batch (group commit) runs each step inside a batch task, in a
# span of its own trace named after the batch task and the order.
IN_BATCH = {
    names.TASK_RESERVE: names.TASK_RESERVE_BATCH,
    names.TASK_CHARGE: names.TASK_CHARGE_BATCH,
    names.TASK_SETTLE: names.TASK_SETTLE_BATCH,
}
# A declined payment: its stock is released, then the outcome recorded (no refund:
# nothing was charged).
COMPENSATIONS = [names.TASK_RELEASE, names.TASK_FINALIZE]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_pipeline(
    receiver: OtlpReceiver,
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    env = {**TRACING_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    log_dir = tmp_path_factory.mktemp("e2e-tracing")
    with running_pipeline(nats_server.url, redis_server.url, log_dir, env) as running:
        yield running


def test_every_order_is_one_trace_from_producer_to_last_task(
    traced_pipeline: Pipeline, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    order_ids = _publish(traced_pipeline, receiver, tmp_path)
    outcomes = {oid: traced_pipeline.await_outcome(oid).kind for oid in order_ids}
    declined = {oid for oid in order_ids if int(oid.rsplit("-", 1)[1]) % DECLINE_EVERY == 0}
    assert {oid for oid, kind in outcomes.items() if kind is OutcomeKind.FAILED} == declined

    def gaps(order_id: str, seen: set[str]) -> set[str]:
        outcome = names.SUBJECT_FAILED if order_id in declined else names.SUBJECT_COMPLETED
        wanted = {
            f"publish {names.SUBJECT_CREATED}",
            f"process {names.SUBJECT_CREATED}",
            f"publish {outcome}",
        }
        for task in COMPENSATIONS if order_id in declined else []:
            wanted |= {f"run/{task}", f"apply_async/{task}"}
        missing = wanted - seen
        for task in STEPS:  # alone, or its part of a batch task
            alone = {f"run/{task}", f"apply_async/{task}"}
            if not alone <= seen and f"{IN_BATCH[task]} {order_id}" not in seen:
                missing.add(f"run/{task} or {IN_BATCH[task]} {order_id}")
        return missing

    def missing() -> dict[str, set[str]]:
        by_order = _spans_by_order(receiver.spans())
        found = {oid: gaps(oid, {s.name for s in by_order[oid]}) for oid in order_ids}
        return {oid: gap for oid, gap in found.items() if gap}

    try:
        wait_for(lambda: not missing(), 60, "every order's spans at the OTLP receiver", 0.5)
    except TimeoutError:
        pytest.fail(f"spans never tagged with their order id arrived: {missing()}")
    by_order = _spans_by_order(receiver.spans())

    retried = 0
    for order_id in order_ids:
        spans = by_order[order_id]
        _assert_one_tree(order_id, spans, receiver.spans())
        retried += _retries(spans) + _split(order_id, spans)
        services = {s.name.split(" ")[0].split("/")[0]: s.service for s in spans}
        assert services["publish"] in {"orders-cli", "orders-bridge"}
        assert services["process"] == "orders-bridge"
        steps = [s for s in spans if s.name.startswith(("run/", *IN_BATCH.values()))]
        assert steps and {s.service for s in steps} == {"orders-worker"}, order_id
        process = next(s for s in spans if s.name == f"process {names.SUBJECT_CREATED}")
        assert process.attributes["messaging.system"] == "nats"
        assert process.attributes["messaging.destination.name"] == names.SUBJECT_CREATED
        assert process.attributes["messaging.message.id"] == order_id
    assert retried > 0, "no task was retried (nor an order split out of its batch)"
    _assert_logs_name_order_and_trace(traced_pipeline, by_order)


def _assert_logs_name_order_and_trace(
    pipeline: Pipeline, by_order: dict[str, list[ReceivedSpan]]
) -> None:
    """LOG_FORMAT=json: every line of the bridge's and the worker's logs is a JSON
    object, and every line that mentions one of the orders carries its id and the
    id of its trace (as the OTLP receiver got it)."""
    trace_of = {oid: spans[0].trace_id for oid, spans in by_order.items()}
    about_orders = 0
    for log in (pipeline.stack.bridge_log, pipeline.stack.worker_log(1)):
        for number, line in enumerate(log.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{log.name}:{number} is not JSON: {line!r}")
            mentioned = [oid for oid in trace_of if f"{oid}:" in entry["message"]]
            for order_id in mentioned:
                about_orders += 1
                assert entry.get("order_id") == order_id, f"{log.name}:{number}: {entry}"
                assert entry.get("trace_id") == trace_of[order_id], f"{log.name}:{number}: {entry}"
    assert about_orders > 0, "no log line mentions an order"


def _publish(pipeline: Pipeline, receiver: OtlpReceiver, tmp_path: Path) -> list[str]:
    prefix = unique("traced")
    env = process_env(
        pipeline.nats_url,
        pipeline.redis_url,
        0,
        {**TRACING_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
    )
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "orders"),
            "publish",
            "--count",
            str(ORDERS),
            "--decline-every",
            str(DECLINE_EVERY),
            "--prefix",
            prefix,
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["count"] == ORDERS
    return [f"{prefix}-{n}" for n in range(1, ORDERS + 1)]


def _spans_by_order(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    grouped: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        if (order_id := span.attributes.get("order.id")) is not None:
            grouped[str(order_id)].append(span)
    return grouped


def _assert_one_tree(
    order_id: str, spans: list[ReceivedSpan], everything: list[ReceivedSpan]
) -> None:
    trace_ids = {s.trace_id for s in spans}
    assert len(trace_ids) == 1, f"{order_id}: spans in {len(trace_ids)} traces"
    [trace_id] = trace_ids
    in_trace = [s for s in everything if s.trace_id == trace_id]
    untagged = [s.name for s in in_trace if s.attributes.get("order.id") != order_id]
    assert not untagged, f"{order_id}: spans of its trace without its order id: {untagged}"
    ids = {s.span_id for s in in_trace}
    roots = [s for s in in_trace if not s.parent_span_id]
    assert [r.name for r in roots] == [f"publish {names.SUBJECT_CREATED}"], (
        f"{order_id}: expected the producer's span as the only root, got {[r.name for r in roots]}"
    )
    orphans = [s.name for s in in_trace if s.parent_span_id and s.parent_span_id not in ids]
    assert not orphans, f"{order_id}: spans whose parent is not in the trace: {orphans}"


def _split(order_id: str, spans: list[ReceivedSpan]) -> int:
    """1 when a transient fault sent the order on alone out of its batch (its batch
    step's span and the single workflow's are both in its trace)."""
    names_seen = {s.name for s in spans}
    batched = f"{names.TASK_CHARGE_BATCH} {order_id}" in names_seen
    return int(batched and f"run/{names.TASK_CHARGE}" in names_seen)


def _retries(spans: list[ReceivedSpan]) -> int:
    runs: dict[str, int] = defaultdict(int)
    for span in spans:
        if span.name.startswith("run/"):
            runs[span.name] += 1
    return sum(n - 1 for n in runs.values())
