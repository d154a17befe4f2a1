"""Flower as an operator meets it: the real ``orders-web`` console script against
the pipeline's Redis and a real worker, reached through its HTTP API with the
basic-auth credentials the process was started with.

Flower only knows what workers report while it listens (task events are not
stored anywhere else), and workers send task events only once Flower turns them
on, so it is started, and seen doing so, before any order is published. The same
running stack also checks that every metric the Grafana dashboard queries is
exported by the bridge or by Flower, so a renamed metric cannot leave a panel
silently empty.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline_stack as e2e
import pytest
from pipeline_stack import Pipeline
from prometheus_client.parser import text_string_to_metric_families

from bridge import codec
from dev.servers import LOOPBACK, free_port
from orders import names
from orders.domain.model import OutcomeKind, RawItem, RawOrder
from orders.web import BASIC_AUTH_VARIABLE, DEV_MODE_VARIABLE, EXIT_CONFIG

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "orders-pipeline.json"
ORDERS_WEB = Path(sys.executable).parent / "orders-web"

FLOWER_USER = "operator"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Task events travel worker -> Redis -> Flower after the outcome is already stored.
EVENTS_TIMEOUT_S = 30.0
REFUSAL_TIMEOUT_S = 60.0

# The pipeline's steps, and what each outcome adds after the chord callback.
WORKFLOW_STEPS = {names.TASK_RESERVE, names.TASK_CHARGE, names.TASK_SETTLE}
# The same steps for a batch of orders (one task each for the whole batch).
BATCH_STEPS = {names.TASK_RESERVE_BATCH, names.TASK_CHARGE_BATCH, names.TASK_SETTLE_BATCH}
# A declined order had its stock reserved and no charge made: release, then finalize.
DECLINE_COMPENSATION = {names.TASK_RELEASE, names.TASK_FINALIZE}
# Metric names in the dashboard's PromQL: the project's and Flower's prefixes.
DASHBOARD_METRIC = re.compile(r"\b(?:orders_bridge|flower)_[a-zA-Z0-9_]+\b")

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- Flower, the process --------------------------------------------------------------


@dataclass
class Flower:
    url: str
    auth: tuple[str, str]
    log: Path

    def get(self, path: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
        """Status and body of ``GET path``; ``auth`` as given (``None``: no header)."""
        headers = {}
        if auth is not None:
            token = base64.b64encode(":".join(auth).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with _NO_PROXY.open(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()

    def api(self, path: str) -> Any:
        status, body = self.get(path, self.auth)
        assert status == 200, f"GET {path}: {status} {body[:300]!r}"
        return json.loads(body)


def _flower_env(nats_url: str, redis_url: str, port: int, extra: dict[str, str]) -> dict[str, str]:
    env = e2e.process_env(nats_url, redis_url, port, extra)
    # The developer's shell must not open Flower up or set its credentials.
    for variable in (BASIC_AUTH_VARIABLE, DEV_MODE_VARIABLE):
        if variable not in extra:
            env.pop(variable, None)
    return env


@pytest.fixture(scope="module")
def flower(pipeline: Pipeline) -> Iterator[Flower]:
    """``orders-web`` on a free loopback port, listening to the pipeline's worker."""
    port = free_port()
    auth = (FLOWER_USER, secrets.token_urlsafe(12))
    log = pipeline.stack.log_dir / "flower.log"
    credentials = {BASIC_AUTH_VARIABLE: ":".join(auth)}
    env = _flower_env(pipeline.nats_url, pipeline.redis_url, port, credentials)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            # Extra arguments go to Flower: loopback only, as everything a test starts.
            [str(ORDERS_WEB), f"--address={LOOPBACK}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    running = Flower(f"http://{LOOPBACK}:{port}", auth, log)
    try:

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"orders-web exited with {process.returncode}\n{e2e.log_tail(log)}"
                )
            try:
                return running.get("/healthcheck")[0] == 200
            except OSError:
                return False

        e2e.wait_for(serving, START_TIMEOUT_S, "Flower's /healthcheck to answer 200", 0.2)
        # Workers send task events only once Flower turns them on (Celery's
        # enable_events, which Flower broadcasts every few seconds): wait for the
        # worker to say so, and for Flower to see it alive, so that no task of the
        # orders published next goes unseen.
        worker_log = pipeline.stack.worker_log()
        e2e.wait_for(
            lambda: "Events of group {task} enabled by remote" in worker_log.read_text(),
            START_TIMEOUT_S,
            "Flower to turn on the worker's task events",
            0.2,
        )
        e2e.wait_for(
            lambda: any(running.api("/api/workers?status=1").values()),
            START_TIMEOUT_S,
            "Flower to receive a worker's heartbeat",
            0.5,
        )
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    code = process.returncode
    assert code == 0, f"orders-web exited with {code} after SIGTERM\n{e2e.log_tail(log)}"


# --- orders through the pipeline -------------------------------------------------------


@dataclass(frozen=True)
class Orders:
    """One order that completes and one the payment gateway declines (above
    ``PAYMENT_DECLINE_ABOVE``, 10000.00 by default), sent to Celery alone and as a
    batch."""

    completed: str
    declined: str
    batched_completed: str
    batched_declined: str


def _order(order_id: str, sku: str, quantity: int, unit_price: float) -> RawOrder:
    return RawOrder(
        order_id=order_id,
        customer_id="customer-flower",
        items=(RawItem(product_id=sku, quantity=quantity, unit_price=unit_price),),
        total_amount=round(quantity * unit_price, 2),
        currency="USD",
    )


def _await_kinds(pipeline: Pipeline, completed: str, declined: str) -> None:
    done, failed = pipeline.await_outcome(completed), pipeline.await_outcome(declined)
    assert done.kind is OutcomeKind.COMPLETED, done
    assert (failed.kind, failed.fields["reason"]) == (OutcomeKind.FAILED, "PAYMENT_DECLINED")


@pytest.fixture(scope="module")
def orders(flower: Flower, pipeline: Pipeline) -> Orders:
    """Each order seen through to its outcome. The first two are published one at a
    time, each after the previous one's outcome, so each is a workflow of its own;
    the last two are published while the bridge is stopped, so that its first fetch
    holds both and sends them as one batch (the worker, and Flower's events, run on)."""
    sent = Orders(
        completed=e2e.unique("flower-ok"),
        declined=e2e.unique("flower-declined"),
        batched_completed=e2e.unique("flower-batched-ok"),
        batched_declined=e2e.unique("flower-batched-declined"),
    )
    sku = e2e.unique("sku")
    pipeline.set_stock(sku, 10)
    ok, declined = (2, 19.99), (2, 5000.01)
    for order_id, (quantity, price) in ((sent.completed, ok), (sent.declined, declined)):
        pipeline.publish(
            codec.encode_order_created(_order(order_id, sku, quantity, price)), order_id
        )
        pipeline.await_outcome(order_id)
    _await_kinds(pipeline, sent.completed, sent.declined)

    code = pipeline.stack.stop_bridge()
    assert code == 0, f"orders-bridge exited with {code} after SIGTERM\n{pipeline.stack.logs()}"
    for order_id, (quantity, price) in (
        (sent.batched_completed, ok),
        (sent.batched_declined, declined),
    ):
        pipeline.publish(
            codec.encode_order_created(_order(order_id, sku, quantity, price)), order_id
        )
    pipeline.stack.start_bridge()
    _await_kinds(pipeline, sent.batched_completed, sent.batched_declined)
    return sent


def _tasks_of(flower: Flower, order_id: str) -> dict[str, dict[str, Any]]:
    """What an operator finds by typing the order id into Flower's search box: the
    order's own tasks (their ids start with it) and batch tasks naming it."""
    query = urllib.parse.urlencode({"search": order_id})
    return dict(flower.api(f"/api/tasks?{query}"))


def _states(tasks: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Task name -> state. Each step of one delivery runs once, so names are unique."""
    return {task["name"]: task["state"] for task in tasks.values()}


def _await_states(flower: Flower, order_id: str, expected: set[str]) -> dict:
    """Wait until Flower has every ``expected`` task of the order in a final state."""

    def settled() -> dict[str, dict[str, Any]] | None:
        tasks = _tasks_of(flower, order_id)
        states = _states(tasks)
        done = expected <= states.keys() and all(
            state in {"SUCCESS", "FAILURE"} for state in states.values()
        )
        return tasks if done else None

    try:
        return e2e.wait_for(settled, EVENTS_TIMEOUT_S, f"Flower to show {order_id}'s tasks", 0.5)
    except TimeoutError as error:
        raise AssertionError(
            f"{error}: saw {_states(_tasks_of(flower, order_id))}\n{e2e.log_tail(flower.log)}"
        ) from error


def _batch_tasks(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {tid: task for tid, task in tasks.items() if task["name"] in BATCH_STEPS}


# --- the tests -------------------------------------------------------------------------


def test_flower_lists_the_worker_with_the_pipeline_queues_and_tasks(flower: Flower) -> None:
    workers = flower.api("/api/workers?refresh=1")

    assert workers, "Flower lists no worker"
    for name, info in workers.items():
        queues = {queue["name"] for queue in info.get("active_queues") or []}
        assert queues == set(names.ALL_QUEUES), f"{name} consumes {sorted(queues)}"
        # Entries may carry annotations after the name ("name [rate_limit=...]").
        registered = {entry.split()[0] for entry in info.get("registered") or []}
        assert set(names.ALL_TASKS) <= registered, f"{name} registered {sorted(registered)}"
    assert all(flower.api("/api/workers?status=1").values())


def test_flower_shows_every_step_of_a_completed_order_succeeded(
    flower: Flower, orders: Orders
) -> None:
    tasks = _await_states(flower, orders.completed, WORKFLOW_STEPS)

    assert _states(tasks) == dict.fromkeys(WORKFLOW_STEPS, "SUCCESS")
    assert all(tid.startswith(f"{orders.completed}:") for tid in tasks), sorted(tasks)
    workers = set(flower.api("/api/workers?status=1"))
    assert {task["worker"] for task in tasks.values()} <= workers


def test_flower_shows_the_compensation_of_a_declined_order(flower: Flower, orders: Orders) -> None:
    expected = WORKFLOW_STEPS | DECLINE_COMPENSATION
    tasks = _await_states(flower, orders.declined, expected)

    # Declined is a business outcome, a value: every step succeeds, and the
    # chord callback sends the compensation. Nothing was charged, so no refund.
    assert _states(tasks) == dict.fromkeys(expected, "SUCCESS")
    assert all(tid.startswith(f"{orders.declined}:") for tid in tasks), sorted(tasks)
    types = set(flower.api("/api/task/types")["task-types"])
    assert expected <= types


def test_flower_search_finds_each_order_of_a_batch_in_its_batch_tasks(
    flower: Flower, orders: Orders
) -> None:
    completed = _await_states(flower, orders.batched_completed, BATCH_STEPS)
    declined = _await_states(flower, orders.batched_declined, BATCH_STEPS | DECLINE_COMPENSATION)

    assert _states(completed) == dict.fromkeys(BATCH_STEPS, "SUCCESS")
    assert _states(declined) == dict.fromkeys(BATCH_STEPS | DECLINE_COMPENSATION, "SUCCESS")
    # One batch: the same three tasks, whose arguments name both orders first.
    assert _batch_tasks(completed).keys() == _batch_tasks(declined).keys()
    for task in _batch_tasks(completed).values():
        assert task["kwargs"].startswith("{'order_ids': ["), task["kwargs"][:200]
        assert orders.batched_completed in task["kwargs"]
        assert orders.batched_declined in task["kwargs"]
    # The declined order's compensation is its own (named by it), not the batch's.
    compensation = {tid for tid, t in declined.items() if t["name"] in DECLINE_COMPENSATION}
    assert all(orders.batched_declined in tid for tid in compensation), compensation


@pytest.mark.parametrize("path", ["/api/workers", "/api/tasks", "/api/task/types", "/", "/tasks"])
def test_flower_refuses_requests_without_the_right_credentials(flower: Flower, path: str) -> None:
    user, password = flower.auth

    assert flower.get(path)[0] == 401
    assert flower.get(path, (user, password + "x"))[0] == 401
    assert flower.get(path, ("someone-else", password))[0] == 401
    assert flower.get(path, flower.auth)[0] == 200


def test_orders_web_refuses_to_start_without_basic_auth() -> None:
    # Servers nobody listens on: it must refuse before connecting anywhere.
    env = _flower_env(f"nats://{LOOPBACK}:1", f"redis://{LOOPBACK}:1/0", free_port(), {})

    result = subprocess.run(
        [str(ORDERS_WEB)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT_S,
    )

    assert result.returncode == EXIT_CONFIG, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("orders-web: ") and BASIC_AUTH_VARIABLE in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


# --- the dashboard's metrics exist ------------------------------------------------------


def _exprs(node: Any) -> Iterator[str]:
    """Every PromQL expression in a dashboard: panel targets (rows nest panels) and
    query variables."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and "query" in value:
                yield str(value["query"])
            elif key == "definition" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


# Sample names a metric family may expose, by type (prometheus-client's text format).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def _exported(text: str) -> set[str]:
    """Every series name a scrape can have: a family declared without samples yet
    (a labelled counter nothing incremented) still names its series."""
    found: set[str] = set()
    for family in text_string_to_metric_families(text):
        found.add(family.name)
        found.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        found.update(sample.name for sample in family.samples)
    return found


def test_every_metric_the_dashboard_queries_is_exported(
    flower: Flower, orders: Orders, pipeline: Pipeline
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(dashboard))
    used = {name for expr in exprs for name in DASHBOARD_METRIC.findall(expr)}
    assert used, f"no metric found in {DASHBOARD}"
    assert all(DASHBOARD_METRIC.search(expr) for expr in exprs), exprs

    status, flower_text = flower.get("/metrics", flower.auth)
    assert status == 200
    bridge_url = f"http://{LOOPBACK}:{pipeline.stack.port}/metrics"
    with _NO_PROXY.open(bridge_url, timeout=10) as response:
        bridge_text = response.read().decode()
    exported = _exported(flower_text.decode()) | _exported(bridge_text)

    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries metrics no process exports: {missing}"
