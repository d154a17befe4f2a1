"""Fault injection against the whole pipeline: real servers, bridges and workers that
a test kills and restarts while a few thousand orders flow (:mod:`workload`), then
one check that every order ended exactly once (:mod:`invariants`).

- :class:`FaultStack`: :class:`dev.stack.ServerStack` with a Redis that fsyncs
  every write (so a test may kill it and find every acknowledged write again),
  any number of ``orders-bridge`` and ``orders-worker`` processes, each with its
  own log file; ``kill()`` is SIGKILL of the whole process group.
- What a test asks of a running process: a bridge's endpoints and metrics, a
  worker's pool children, what a worker's log says it was doing when it died.

The pipeline as a test sees it (outcome events, dead letters, order state) is the
e2e suite's :class:`pipeline_stack.Pipeline`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pipeline_stack as e2e
from prometheus_client.parser import text_string_to_metric_families

from dev.procs import bridge_command
from dev.servers import RedisServer, wait_until
from dev.stack import Child, ServerStack, endpoint_status, endpoint_text
from orders.worker import FAILED_STOP_DEADLINE_S

if TYPE_CHECKING:
    from workload import Workload

# The e2e suite's fast failure paths, plus timings that let a lost bridge or worker
# be noticed within seconds: a message unacked for ACK_WAIT is redelivered, a
# workflow without progress for WORKFLOW_STALL_TIMEOUT is sent again.
#
# A workflow waiting in a Celery queue shows no progress either, so the orders in
# flight must drain well within the stall timeout even on a busy machine (two
# loaded cores finish ~10 orders/s). Otherwise every queued workflow is sent
# again, which lengthens the queue, and throughput collapses: the bridge cannot
# tell a queued workflow from a lost one. Two bridges holding 32 orders each keep
# the queue wait at a few seconds.
FAULT_ENV = {
    **e2e.FAST_FAILURE_ENV,
    "MAX_DELIVERIES": "5",
    "ACK_WAIT": "10",
    "WORKFLOW_STALL_TIMEOUT": "10",
    "BRIDGE_MAX_IN_FLIGHT": "32",
}
START_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 15.0


# ---------------------------------------------------------------------------------
# Processes


class FaultStack(ServerStack):
    """Servers and processes of one fault test; use as a context manager."""

    def __init__(self, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        # Data directories under log_dir: they are kept for a failed test's post-mortem.
        super().__init__(
            log_dir,
            env=[e2e.FAST_FAILURE_ENV, FAULT_ENV, extra_env or {}],
            start_timeout=START_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            redis=RedisServer(data_dir=log_dir / "redis", appendfsync="always"),
        )
        self.workloads: list[Workload] = []
        self._pipeline: Any = None

    def __enter__(self) -> FaultStack:
        super().__enter__()
        return self

    def close(self) -> None:
        """Stop publishing, SIGTERM every process at once, SIGKILL what is left, then
        stop the servers."""
        for workload in self.workloads:
            workload.stop()
        try:
            self.stop_all()
        finally:
            if self._pipeline is not None:
                self._pipeline.close()
                self._pipeline = None
            self.stop_servers()

    @property
    def pipeline(self) -> Any:
        """The e2e suite's :class:`Pipeline`: outcomes, dead letters, state, stock."""
        if self._pipeline is None:
            self._pipeline = e2e.Pipeline(self, self.nats.url, self.redis.url)
        return self._pipeline

    # --- processes ----------------------------------------------------------------

    def add_bridge(self, env_overrides: dict[str, str] | None = None) -> Child:
        """Start a bridge on a port of its own and wait until ``/ready`` says 200."""
        return self.start("bridge", bridge_command, env_overrides)

    def add_worker(
        self, env_overrides: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> Child:
        """Start a worker (prefork, concurrency 2, every queue, unless ``args`` say
        otherwise: Celery takes an option's last value) and wait until it is ready."""
        name = f"worker-{len(self.workers) + 1}"

        def command() -> list[str]:  # a Celery hostname of its own at every (re)start
            return [*e2e.named_worker_command(f"{name}-{uuid.uuid4().hex[:6]}"), *args]

        return self.start("worker", command, env_overrides, name=name)

    def pool_children(self, worker: Child) -> list[int]:
        return _processes(lambda stat: stat[1] == worker.pid)

    @staticmethod
    def group_alive(proc: Child) -> bool:
        """Whether any process of ``proc``'s group (a worker's pool) still runs."""
        return bool(_processes(lambda stat: stat[2] == proc.pid))

    def kill_pool_child(self, worker: Child) -> int:
        """SIGKILL one prefork child of ``worker``; the parent replaces it. Returns its pid."""
        children = self.pool_children(worker)
        assert children, f"{worker} has no pool children"
        pid = random.choice(children)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def logs(self, lines: int = 40) -> str:
        tails = [super().logs(lines)]
        tails += [e2e.log_tail(s.log_path, 15) for s in (self.nats, self.redis)]
        return "\n".join(tails)


def _processes(match: Callable[[tuple[str, int, int]], bool]) -> list[int]:
    """Pids of live (not zombie) processes whose ``(state, ppid, pgid)`` match."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        state, ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if state != "Z" and match((state, int(ppid), int(pgrp))):
            found.append(int(entry.name))
    return found


# ---------------------------------------------------------------------------------
# A bridge's endpoints


def ready_status(bridge: Child) -> int | None:
    """HTTP status of the bridge's ``GET /ready``, ``None`` when it does not answer."""
    return endpoint_status(bridge.port, "/ready")


def bridge_metric(bridge: Child, sample: str, **labels: str) -> float:
    """One sample of the bridge's ``/metrics`` (a counter's name ends in ``_total``),
    0 when the bridge does not answer or has no such sample."""
    try:
        text = endpoint_text(bridge.port, "/metrics", timeout=3)
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return found.value
    return 0.0


def bridge_in_flight(bridge: Child) -> int:
    """Messages the bridge is processing right now (its ``orders_bridge_in_flight`` gauge)."""
    return int(bridge_metric(bridge, "orders_bridge_in_flight"))


def wait_bridge_in_flight(bridge: Child, count: int, timeout: float = 20.0) -> None:
    """Until ``bridge`` itself holds at least ``count`` messages: a fault aimed at one
    bridge of several must catch it holding some."""
    wait_until(
        lambda: bridge_in_flight(bridge) >= count,
        timeout,
        0.01,
        f"{bridge.name} to hold {count} messages",
    )


def wait_in_flight(stack: Any, count: int, timeout: float = 20.0) -> None:
    """Until the bridges of ``stack`` hold at least ``count`` unacknowledged orders
    between them, so that a fault hits mid-flow. On an idle machine the pipeline
    keeps up with a moderate rate and few orders are in flight at any moment: ask
    for more than one only where the test's rate builds a backlog."""
    wait_until(
        lambda: stack.pipeline.consumer_info().num_ack_pending >= count,
        timeout,
        0.01,
        f"{count} orders in flight",
    )


def wait_ready(stack: FaultStack, timeout: float = 60.0) -> None:
    """Every running bridge's ``/ready`` answers 200 (again)."""
    for bridge in stack.bridges:
        if bridge.alive:
            wait_until(lambda b=bridge: b.ready(), timeout, 0.3, f"{bridge.name}'s /ready = 200")


def restart_workers_kombu_crashed(stack: FaultStack, workers: list[Child]) -> list[Child]:
    """Restart, as a supervisor would, the workers that died of a lost Redis connection.

    kombu's Redis transport can ack a finished task on a channel that lost its
    connection and stop the worker with "Unrecoverable error: AttributeError ...
    'hostname'" (kombu#582, a long-standing race). Such a worker must exit by itself
    within its bounded stop, for the supervisor to see it (Celery's warm stop after
    that error can hang); a worker dead for any other reason fails the test.
    Returns the workers restarted."""
    crashed = [w for w in workers if "Unrecoverable error" in w.log.read_text(errors="replace")]
    wait_until(
        lambda: not any(w.alive for w in crashed),
        FAILED_STOP_DEADLINE_S + 20,
        0.5,
        "workers that hit an unrecoverable error to exit",
    )
    for worker in workers:
        if not worker.alive:
            assert worker in crashed, f"{worker} died for another reason"
            stack.restart(worker)
    return crashed


def unfinished_tasks(log: Path) -> set[str]:
    """Task ids a worker's log shows as received but never finished: what it was
    doing when it died."""
    received: set[str] = set()
    finished: set[str] = set()
    for line in log.read_text(errors="replace").splitlines():
        # "<time> INFO MainChildess <logger> [order=.. trace=..]: Task <name>[<id>] received",
        # "... succeeded in ...": the id is in the first brackets after "Task ".
        if "Task " not in line or not any(mark in line for mark in _TASK_EVENTS):
            continue
        task_id = line.split("Task ", 1)[1].split("[", 1)[-1].split("]", 1)[0]
        (received if "] received" in line else finished).add(task_id)
    return received - finished


_TASK_EVENTS = ("] received", " succeeded in ", "] retry:", "] raised ")
