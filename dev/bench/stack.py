"""The benchmark's servers and processes, all its own.

Embedded NATS and Redis on free loopback ports (never the machine's 4222 or
6379), and the real ``orders-bridge`` / ``orders-worker`` console scripts as
subprocesses, configured as in production except for what a benchmark must set
(:data:`BENCH_ENV`). Tracing is left at its default: the ``OTEL_*`` variables are
unset, so spans are recorded but exported nowhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from typing import cast

from dev.bench import naive, procfs
from dev.procs import (
    bridge_command,
    celery_command,
    child_env,
    log_tail,
    spawn,
    worker_command,
)
from dev.servers import NatsServer, RedisServer, free_port, wait_until

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

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessFailed(RuntimeError):
    """A process of the benchmark exited or did not become ready."""


class PhaseFailed(RuntimeError):
    """A phase measured something other than what it set out to (a failed workflow)."""


@dataclass
class Proc:
    role: str  # "bridge" | "worker" | "naive-worker"
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def usage(self) -> procfs.Usage:
        return procfs.usage(self.pid)

    def check_alive(self) -> None:
        if (code := self.popen.poll()) is not None:
            raise ProcessFailed(f"{self.name} exited with code {code}\n{log_tail(self.log)}")


class BenchStack:
    """NATS, Redis and the processes of the phase running now; a context manager."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.nats = NatsServer(store_dir=log_dir / "nats")
        self.redis = RedisServer(data_dir=log_dir / "redis")
        self.procs: list[Proc] = []
        # A replica of ``redis`` while the replica phase runs (it starts and stops it);
        # set here so its CPU is counted with the other servers'.
        self.replica: RedisServer | None = None
        self._spawned = 0

    def __enter__(self) -> BenchStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.nats.start()
            self.redis.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop_all()
        self.redis.stop()
        self.nats.stop()

    @property
    def naive_redis_url(self) -> str:
        return self.redis.url.rsplit("/", 1)[0] + f"/{NAIVE_REDIS_DB}"

    @property
    def bridges(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "bridge"]

    @property
    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.role in ("worker", "naive-worker")]

    # --- processes ------------------------------------------------------------------

    def start_pipeline(
        self, *, concurrency: int, bridges: int = 1, bridge_env: Mapping[str, str] | None = None
    ) -> None:
        """One ``orders-worker`` (prefork, ``concurrency`` children) and ``bridges``
        bridges, started together; returns when every one is ready. ``bridge_env`` is
        added to the bridges' environment (after :data:`BENCH_ENV`): the setting a
        phase compares, such as ``REDIS_WAIT_REPLICAS``."""
        worker = self._spawn("worker", _worker_command(concurrency, self._hostname("worker")))
        started = [worker] + [
            self._spawn("bridge", bridge_command(), env=bridge_env) for _ in range(bridges)
        ]
        for proc in started:
            self._wait_ready(proc)

    def start_naive_worker(self, concurrency: int) -> Proc:
        command = [
            *celery_command(),
            "-A", "dev.bench.naive_worker", "worker",
            "--pool", "prefork",
            "--concurrency", str(concurrency),
            "--queues", ",".join(naive.QUEUES),
            "--loglevel", "INFO",
            "--hostname", self._hostname("naive"),
        ]  # fmt: skip
        proc = self._spawn(
            "naive-worker", command, redis_url=self.naive_redis_url, env=_checkout_on_pythonpath()
        )
        self._wait_ready(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM every process at once (bridges drain, workers shut down warm),
        SIGKILL whatever is left of their groups."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            # Pool children that outlived their parent too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait()
        self.procs = []

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the bridges, the workers (pool children included),
        both servers and this process (the producer, or the naive baseline's client)."""
        cpu = {
            "bridge": sum(p.usage().cpu_s for p in self.bridges),
            "workers": sum(p.usage().cpu_s for p in self.workers),
        }
        servers = (("nats", self.nats), ("redis", self.redis), ("redis_replica", self.replica))
        for name, server in servers:
            if server is not None and server.pid is not None:
                cpu[name] = procfs.usage(server.pid).cpu_s
        own = os.times()  # this process alone: a profiler it runs is not the client
        cpu["bench_client"] = own.user + own.system
        return cpu

    def logs(self) -> str:
        return "\n".join(log_tail(p.log) for p in self.procs)

    def _hostname(self, kind: str) -> str:
        return f"bench-{kind}-{uuid.uuid4().hex[:6]}@%h"

    def _spawn(
        self,
        role: str,
        command: list[str],
        redis_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        self._spawned += 1
        name = f"{role}-{self._spawned}"
        log = self.log_dir / f"{name}.log"
        port = free_port()
        child = child_env(self.nats.url, redis_url or self.redis.url, port, BENCH_ENV, env or {})
        popen = spawn(command, child, log)
        proc = Proc(role, name, popen, log, port)
        self.procs.append(proc)
        return proc

    def _wait_ready(self, proc: Proc) -> None:
        ready: Callable[[Proc], bool] = _bridge_ready if proc.role == "bridge" else _worker_ready
        try:
            wait_until(lambda: ready(proc), START_TIMEOUT_S, 0.2, f"{proc.name} to be ready")
        except TimeoutError as exc:
            raise ProcessFailed(f"{exc}\n{log_tail(proc.log)}") from None


def metrics_text(proc: Proc) -> str:
    """The Prometheus text a bridge serves on its HTTP port."""
    with _http_get(f"http://127.0.0.1:{proc.port}/metrics", timeout=5) as response:
        return response.read().decode()


def _http_get(url: str, timeout: float) -> HTTPResponse:
    # OpenerDirector.open() is typed Any, as what it returns depends on the scheme.
    return cast(HTTPResponse, _NO_PROXY.open(url, timeout=timeout))


def _checkout_on_pythonpath() -> dict[str, str]:
    paths = [str(_CHECKOUT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def _worker_command(concurrency: int, hostname: str) -> list[str]:
    args = ["--pool", "prefork", "--concurrency", str(concurrency), "--hostname", hostname]
    return worker_command(*args)


def _worker_ready(proc: Proc) -> bool:
    proc.check_alive()
    return " ready." in proc.log.read_text(errors="replace")


def _bridge_ready(proc: Proc) -> bool:
    proc.check_alive()
    try:
        with _http_get(f"http://127.0.0.1:{proc.port}/ready", timeout=3) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except OSError:
        return False
