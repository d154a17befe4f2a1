"""This project's processes started as children against NATS and Redis, for the
test suites and the benchmark: one place that starts them, waits until they are
ready, restarts, kills and stops them, and shows the end of their logs.

- :class:`Child`: one ``orders-bridge``, ``orders-worker`` or naive worker, with
  its name, HTTP port, environment and log file; a restart keeps all four.
- :class:`Processes`: the children of one stack, against servers given by URL.
- :class:`ServerStack`: the same, with a NATS and a Redis server of its own
  (killable by a fault test, measured by the benchmark); a context manager.

Commands, environment and spawning are :mod:`dev.procs`'; what the processes
are configured with (fast failures, the benchmark's stock) is the caller's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPResponse
from pathlib import Path
from typing import Literal, cast

from dev.procs import child_env, log_tail, spawn
from dev.servers import NatsServer, RedisServer, free_port, wait_until

Role = Literal["bridge", "worker", "naive-worker"]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
READY_INTERVAL_S = 0.2
# A worker logs "celery@host ready." once it consumes its queues.
WORKER_READY_MARK = " ready."

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessFailed(RuntimeError):
    """A child exited, or did not become ready in time."""


@dataclass
class Child:
    """One process of a stack; ``Processes.restart`` spawns it again as it was."""

    role: Role
    name: str
    port: int
    # Called at every spawn: a worker's Celery hostname is a new one each time.
    command: Callable[[], list[str]]
    # The child's own environment, after the stack's: e.g. a proxy's REDIS_URL.
    env: dict[str, str] = field(default_factory=dict)
    log: Path = Path()
    popen: subprocess.Popen[bytes] | None = None
    spawned: int = 0

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen is not None and (code := self.popen.poll()) is not None:
            raise ProcessFailed(f"{self.name} exited with code {code}\n{log_tail(self.log)}")

    def ready(self) -> bool:
        """A bridge answers ``GET /ready`` with 200; a worker has logged that it is ready."""
        self.check_alive()
        if self.role == "bridge":
            return endpoint_status(self.port, "/ready") == 200
        return WORKER_READY_MARK in self.log.read_text(errors="replace")

    def __str__(self) -> str:
        return f"{self.name} (pid {self.popen.pid if self.popen else '-'})"


class Processes:
    """The children of one stack, each logging to a file of its own in ``log_dir``.

    ``env`` is every child's configuration over :func:`dev.procs.child_env`'s
    clean environment, layer by layer (a later one wins); a child's own ``env``
    comes last."""

    def __init__(
        self,
        log_dir: Path,
        *,
        nats_url: str = "",
        redis_url: str = "",
        env: Sequence[Mapping[str, str]] = (),
        start_timeout: float = START_TIMEOUT_S,
        close_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        self.log_dir = log_dir
        self._nats_url, self._redis_url = nats_url, redis_url
        self.env_layers = list(env)
        self.start_timeout = start_timeout
        self.close_timeout = close_timeout
        self.children: list[Child] = []
        # Never reset: a name, and so a log file, is not used twice by one stack.
        self._started: Counter[str] = Counter()

    def urls(self) -> tuple[str, str]:
        """(NATS_URL, REDIS_URL) a child is started with; read at every spawn."""
        return self._nats_url, self._redis_url

    @property
    def bridges(self) -> list[Child]:
        return [c for c in self.children if c.role == "bridge"]

    @property
    def workers(self) -> list[Child]:
        return [c for c in self.children if c.role != "bridge"]

    def start(
        self,
        role: Role,
        command: Callable[[], list[str]],
        env: Mapping[str, str] | None = None,
        *,
        name: str | None = None,
        port: int | None = None,
        wait: bool = True,
    ) -> Child:
        """Spawn a new child (named ``<role>-<n>`` unless ``name`` says otherwise, on a
        free port unless given one); with ``wait``, return once it is ready."""
        self._started[role] += 1
        child = Child(
            role,
            name or f"{role}-{self._started[role]}",
            free_port() if port is None else port,
            command,
            dict(env or {}),
        )
        self.children.append(child)
        self._spawn(child)
        if wait:
            self.wait_ready(child)
        return child

    def wait_ready(self, child: Child) -> None:
        try:
            wait_until(
                child.ready, self.start_timeout, READY_INTERVAL_S, f"{child.name} to be ready"
            )
        except TimeoutError as exc:
            raise ProcessFailed(f"{exc}\n{log_tail(child.log)}") from None

    def restart(self, child: Child) -> Child:
        """Kill the child if it still runs, then start it again (same name, port, env)."""
        if child.alive:
            self.kill(child)
        self._spawn(child)
        self.wait_ready(child)
        return child

    def kill(self, child: Child) -> None:
        """SIGKILL the child and everything in its group (a worker's pool children)."""
        assert child.popen is not None, f"{child.name} was never started"
        _kill_group(child.popen)

    def stop(self, child: Child, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (a bridge drains, a worker shuts down warm), SIGKILL if it hangs;
        then SIGKILL what is left of its group. Returns its exit code."""
        popen = child.popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout)
        _kill_group(popen)
        return popen.returncode

    def stop_all(self) -> None:
        """SIGTERM every child at once, so that they drain side by side, then SIGKILL
        whatever is left of their groups after ``close_timeout``."""
        running = [c.popen for c in self.children if c.popen is not None and c.alive]
        for popen in running:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.close_timeout
        for popen in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(max(0.1, deadline - time.monotonic()))
        for child in self.children:
            if child.popen is not None:
                _kill_group(child.popen)  # pool children that outlived their parent too

    def logs(self, lines: int = 30) -> str:
        return "\n".join(log_tail(c.log, lines) for c in self.children)

    def _spawn(self, child: Child) -> None:
        child.spawned += 1
        suffix = "" if child.spawned == 1 else f".{child.spawned}"
        child.log = self.log_dir / f"{child.name}{suffix}.log"
        nats_url, redis_url = self.urls()
        env = child_env(nats_url, redis_url, child.port, *self.env_layers, child.env)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child.popen = spawn(child.command(), env, child.log)


class ServerStack(Processes):
    """:class:`Processes` against a NATS and a Redis server of the stack's own, with
    their data under ``log_dir`` (kept for a failed run's post-mortem)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        env: Sequence[Mapping[str, str]] = (),
        start_timeout: float = START_TIMEOUT_S,
        close_timeout: float = STOP_TIMEOUT_S,
        redis: RedisServer | None = None,
    ) -> None:
        super().__init__(log_dir, env=env, start_timeout=start_timeout, close_timeout=close_timeout)
        self.nats = NatsServer(store_dir=log_dir / "nats")
        self.redis = redis or RedisServer(data_dir=log_dir / "redis")

    def urls(self) -> tuple[str, str]:
        return self.nats.url, self.redis.url

    def __enter__(self) -> ServerStack:
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
        """Every child (:meth:`stop_all`), then the servers."""
        try:
            self.stop_all()
        finally:
            self.stop_servers()

    def stop_servers(self) -> None:
        self.redis.stop()
        self.nats.stop()


def endpoint_status(port: int, path: str, timeout: float = 3) -> int | None:
    """HTTP status of a loopback endpoint, ``None`` when nothing answers."""
    try:
        with _http_get(port, path, timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return None


def endpoint_text(port: int, path: str, timeout: float = 5) -> str:
    """The body of a loopback endpoint (e.g. a bridge's ``/metrics``); raises ``OSError``."""
    with _http_get(port, path, timeout) as response:
        return response.read().decode()


def _http_get(port: int, path: str, timeout: float) -> HTTPResponse:
    # OpenerDirector.open() is typed Any, as what it returns depends on the scheme.
    return cast(HTTPResponse, _NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=timeout))


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    # Signalled before the wait: the unreaped leader keeps its pid, so the group
    # id cannot have been reused by an unrelated process.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()
