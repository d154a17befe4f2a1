"""Network faults between the pipeline's processes and its servers, and a probe that
times how the processes notice them and recover.

- :class:`PartitionStack`: a :class:`~harness.FaultStack` whose bridges and workers
  reach NATS and Redis through one :class:`~tcp_proxy.TcpProxy` per server, while
  the test's own producer and checker (``Workload``, ``stack.pipeline``) use the
  real servers: a partition cuts the pipeline off, never the test's view of it.
- :class:`Probe`: background threads that sample every bridge's ``/ready`` and
  ``/health`` (one thread per bridge: a ``/ready`` may take its full check timeout
  while a server hangs) and the number of outcome events stored in JetStream, so a
  test can ask when something first happened after a given moment.
- :func:`log_times`: when lines matching a text appeared in a bridge's or worker's
  log, relative to a moment of the test (both log formats carry local timestamps).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
from harness import FaultStack, ready_status
from tcp_proxy import TcpProxy

from dev.outcomes import count_stored_outcomes
from dev.stack import Child, endpoint_status


class PartitionStack(FaultStack):
    """Bridges and workers talk to NATS and Redis through proxies the test controls."""

    def __init__(self, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(log_dir, extra_env)
        self.nats_proxy: TcpProxy | None = None
        self.redis_proxy: TcpProxy | None = None

    def __enter__(self) -> PartitionStack:
        super().__enter__()
        try:
            self.nats_proxy = TcpProxy(self.nats.port)
            self.nats_proxy.start()
            self.redis_proxy = TcpProxy(self.redis.port)
            self.redis_proxy.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        # Healed first, so that bridges can drain and workers shut down warm on SIGTERM.
        proxies = [p for p in (self.nats_proxy, self.redis_proxy) if p is not None]
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy.heal()
        try:
            super().close()
        finally:
            for proxy in proxies:
                with contextlib.suppress(Exception):
                    proxy.close()

    def proxy(self, server: str) -> TcpProxy:
        proxy = {"nats": self.nats_proxy, "redis": self.redis_proxy}[server]
        assert proxy is not None, "use PartitionStack as a context manager"
        return proxy

    @property
    def proxied_env(self) -> dict[str, str]:
        return {
            "NATS_URL": f"nats://{self.proxy('nats').url_host_port}",
            "REDIS_URL": f"redis://{self.proxy('redis').url_host_port}/0",
        }

    # The URLs go into each process's own overrides, so a restart keeps them.
    def add_bridge(self, env_overrides: dict[str, str] | None = None) -> Child:
        return super().add_bridge({**self.proxied_env, **(env_overrides or {})})

    def add_worker(self, env_overrides: dict[str, str] | None = None) -> Child:
        return super().add_worker({**self.proxied_env, **(env_overrides or {})})


# ---------------------------------------------------------------------------------
# Observing


def health_status(bridge: Child) -> int | None:
    """HTTP status of the bridge's ``GET /health``, ``None`` when it does not answer."""
    return endpoint_status(bridge.port, "/health")


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    bridge: str
    ready: int | None
    health: int | None


class Probe:
    """Samples the bridges' endpoints and the stored outcome count in the background."""

    def __init__(self, stack: FaultStack, interval: float = 0.25) -> None:
        self.stack = stack
        self.interval = interval
        self.samples: list[Sample] = []
        self.outcomes: list[tuple[float, int]] = []  # (time.monotonic(), outcome events stored)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Probe:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        for bridge in self.stack.bridges:
            self._threads.append(threading.Thread(target=self._sample, args=(bridge,), daemon=True))
        self._threads.append(
            threading.Thread(target=lambda: asyncio.run(self._count()), daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _sample(self, bridge: Child) -> None:
        while not self._stop.is_set():
            if bridge.alive:
                ready, health = ready_status(bridge), health_status(bridge)
                with self._lock:
                    self.samples.append(Sample(time.monotonic(), bridge.name, ready, health))
            self._stop.wait(self.interval)

    async def _count(self) -> None:
        nc = await nats.connect(self.stack.nats.url, name="fault-probe", max_reconnect_attempts=-1)
        try:
            js = nc.jetstream(timeout=3)
            while not self._stop.is_set():
                with contextlib.suppress(Exception):
                    stored = await count_stored_outcomes(js)
                    with self._lock:
                        self.outcomes.append((time.monotonic(), stored))
                await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    # --- questions ----------------------------------------------------------------

    def first(
        self,
        bridge: Child,
        after: float,
        predicate: Callable[[Sample], bool],
        before: float = float("inf"),
    ) -> float | None:
        """Seconds from ``after`` to the first sample of ``bridge`` matching ``predicate``."""
        with self._lock:
            samples = list(self.samples)
        for sample in samples:
            if sample.bridge == bridge.name and after <= sample.t < before and predicate(sample):
                return sample.t - after
        return None

    def during(self, bridge: Child, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.bridge == bridge.name and start <= s.t < end]

    def wait_for(
        self,
        bridge: Child,
        after: float,
        predicate: Callable[[Sample], bool],
        timeout: float,
    ) -> float | None:
        """Like :meth:`first`, waiting up to ``timeout`` seconds from ``after``."""
        while True:
            found = self.first(bridge, after, predicate)
            if found is not None or time.monotonic() > after + timeout:
                return found
            time.sleep(0.1)

    def outcomes_at(self, t: float) -> int:
        """The last outcome count sampled at or before ``t``."""
        with self._lock:
            counts = [n for at, n in self.outcomes if at <= t]
        return counts[-1] if counts else 0

    def first_outcome_after(self, t: float, timeout: float = 120.0) -> float | None:
        """Seconds from ``t`` until the stored outcome count first grew past its value at ``t``."""
        base = self.outcomes_at(t)
        while True:
            with self._lock:
                later = [at for at, n in self.outcomes if at > t and n > base]
            if later:
                return later[0] - t
            if time.monotonic() > t + timeout:
                return None
            time.sleep(0.2)


def not_ready(sample: Sample) -> bool:
    return sample.ready != 200


def ready(sample: Sample) -> bool:
    return sample.ready == 200


def unhealthy(sample: Sample) -> bool:
    return sample.health != 200


def healthy(sample: Sample) -> bool:
    return sample.health == 200


# Bridge: "2025-01-01 12:00:00,123 WARNING bridge: ..."; Celery: "[2025-01-01 12:00:00,123: ..."
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def log_times(log: Path, text: str, since_wall: float) -> list[float]:
    """Seconds after ``since_wall`` (``time.time()``) at which lines containing ``text``
    were logged (lines without a timestamp are skipped)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if text not in line or not (match := _STAMP.match(line)):
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= since_wall - 0.001:
            found.append(at - since_wall)
    return found


def first_log_time(logs: list[Path], text: str, since_wall: float) -> float | None:
    times = [t for log in logs if log.exists() for t in log_times(log, text, since_wall)]
    return min(times) if times else None


def fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s"


def counts_in(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text)


def print_timings(title: str, timings: dict[str, Any]) -> None:
    body = ", ".join(
        f"{k} {fmt(v) if isinstance(v, float | None) else v}" for k, v in timings.items()
    )
    print(f"[timings] {title}: {body}", flush=True)
