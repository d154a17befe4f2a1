"""The benchmark's servers and processes, all its own.

Embedded NATS and Redis on free loopback ports (never the machine's 4222 or
6379), and the real ``orders-bridge`` / ``orders-worker`` console scripts as
subprocesses, configured as in production except for what a benchmark must set
(:data:`BENCH_ENV`). Tracing is left at its default: the ``OTEL_*`` variables are
unset, so spans are recorded but exported nowhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from dev.bench import naive, procfs
from dev.procs import bridge_command, celery_command, worker_command
from dev.servers import RedisServer
from dev.stack import Child, ProcessFailed, ServerStack, endpoint_text

__all__ = ["BENCH_ENV", "NAIVE_REDIS_DB", "BenchStack", "PhaseFailed", "ProcessFailed"]

# Enough stock that no order of the run fails for lack of it; a gateway that answers
# at once, so the figures are the pipeline's own cost.
BENCH_ENV = {
    "INVENTORY_DEFAULT_STOCK": "1000000000",
    "PAYMENT_LATENCY_MS": "0",
}
# The naive baseline's results live in a database of their own on the same server.
NAIVE_REDIS_DB = 1

# The naive worker loads a module of dev/, which is not installed: it imports it
# from this checkout, whatever the working directory.
_CHECKOUT = Path(__file__).resolve().parents[2]


class PhaseFailed(RuntimeError):
    """A phase measured something other than what it set out to (a failed workflow)."""


class BenchStack(ServerStack):
    """NATS, Redis and the processes of the phase running now; a context manager."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir, env=[BENCH_ENV])
        # A replica of ``redis`` while the replica phase runs (it starts and stops it);
        # set here so its CPU is counted with the other servers'.
        self.replica: RedisServer | None = None

    def __enter__(self) -> BenchStack:
        super().__enter__()
        return self

    @property
    def naive_redis_url(self) -> str:
        return self.redis.url.rsplit("/", 1)[0] + f"/{NAIVE_REDIS_DB}"

    # --- processes ------------------------------------------------------------------

    def start_pipeline(
        self, *, concurrency: int, bridges: int = 1, bridge_env: Mapping[str, str] | None = None
    ) -> None:
        """One ``orders-worker`` (prefork, ``concurrency`` children) and ``bridges``
        bridges, started together; returns when every one is ready. ``bridge_env`` is
        added to the bridges' environment (after :data:`BENCH_ENV`): the setting a
        phase compares, such as ``REDIS_WAIT_REPLICAS``."""
        hostname = _hostname("worker")
        started = [self.start("worker", lambda: _worker_command(concurrency, hostname), wait=False)]
        started += [
            self.start("bridge", bridge_command, bridge_env, wait=False) for _ in range(bridges)
        ]
        for child in started:
            self.wait_ready(child)

    def start_naive_worker(self, concurrency: int) -> Child:
        command = [
            *celery_command(),
            "-A", "dev.bench.naive_worker", "worker",
            "--pool", "prefork",
            "--concurrency", str(concurrency),
            "--queues", ",".join(naive.QUEUES),
            "--loglevel", "INFO",
            "--hostname", _hostname("naive"),
        ]  # fmt: skip
        env = {"REDIS_URL": self.naive_redis_url, **_checkout_on_pythonpath()}
        return self.start("naive-worker", lambda: command, env)

    def stop_all(self) -> None:
        """Every process of the phase (:meth:`ServerStack.stop_all`), then forgets them:
        the next phase's are its own."""
        super().stop_all()
        self.children = []

    def check_alive(self) -> None:
        for child in self.children:
            child.check_alive()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the bridges, the workers (pool children included),
        both servers and this process (the producer, or the naive baseline's client)."""
        cpu = {
            "bridge": sum(procfs.usage(p.pid).cpu_s for p in self.bridges),
            "workers": sum(procfs.usage(p.pid).cpu_s for p in self.workers),
        }
        servers = (("nats", self.nats), ("redis", self.redis), ("redis_replica", self.replica))
        for name, server in servers:
            if server is not None and server.pid is not None:
                cpu[name] = procfs.usage(server.pid).cpu_s
        own = os.times()  # this process alone: a profiler it runs is not the client
        cpu["bench_client"] = own.user + own.system
        return cpu


def metrics_text(proc: Child) -> str:
    """The Prometheus text a bridge serves on its HTTP port."""
    return endpoint_text(proc.port, "/metrics", timeout=5)


def _hostname(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:6]}@%h"


def _checkout_on_pythonpath() -> dict[str, str]:
    paths = [str(_CHECKOUT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def _worker_command(concurrency: int, hostname: str) -> list[str]:
    args = ["--pool", "prefork", "--concurrency", str(concurrency), "--hostname", hostname]
    return worker_command(*args)
