"""What every embedded server shares: loopback ports, waiting, and the lifecycle
of a child process (spawn, wait until ready, stop, kill, restart, clean up).

Children are started with ``start_new_session=True``. A Ctrl-C in a terminal
signals the whole foreground process group; in a session of their own the
servers do not receive it, so the caller decides the shutdown order (drain the
bridge and workers first, then stop the servers) instead of the servers dying
under clients that are still draining. The price is that they no longer die
with the terminal: every server is stopped by the context exit or, failing
that, killed by an ``atexit`` hook. Neither runs if this process is killed
with SIGKILL, or by a SIGTERM it does not handle, so long-running callers
should turn SIGTERM into a normal exit. The session also gives each server its
own process group, which ``kill()`` signals as a whole so that a forked child
(a Redis AOF rewrite) cannot outlive its parent.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, cast

LOOPBACK = "127.0.0.1"
_LOG_TAIL_LINES = 40


class ServerUnavailable(RuntimeError):
    """A server binary could not be found."""


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready in time."""


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        # getsockname() is typed Any: its shape depends on the family, (host, port) here.
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it returns true; raise ``TimeoutError`` after ``timeout`` s.

    Exceptions raised by ``predicate`` propagate, so a predicate can fail fast.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class ServerProcess:
    """Lifecycle shared by the servers: spawn, wait until ready, stop, kill, clean up."""

    name = "server"

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None,
        startup_timeout: float,
        stop_timeout: float,
    ) -> None:
        self._owns_dir = data_dir is None
        self._dir = (
            Path(tempfile.mkdtemp(prefix=f"orders-{self.name}-"))
            if data_dir is None
            else Path(data_dir)
        )
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None

    # Subclasses provide these.
    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """Process id while running, else ``None``."""
        if not self.running:
            return None
        assert self._process is not None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Spawn the server and return once it serves clients."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._dir.mkdir(parents=True, exist_ok=True)
        command = self._command()
        # The child keeps its own descriptor; ours can be closed at once.
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
            )
        atexit.register(self._at_exit)
        try:
            wait_until(
                self._alive_and_ready,
                self._startup_timeout,
                what=f"{self.name} to become ready",
            )
        except TimeoutError as exc:
            self.kill()
            raise ServerStartError(f"{exc}\n{self._log_tail()}") from None
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait up to ``timeout`` s for a clean shutdown, then SIGKILL."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self._stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the server's process group and reap it: a crash, for fault tests."""
        process = self._process
        if process is None:
            return
        self._kill_group(process)
        self._forget()

    def restart(self) -> None:
        """Stop if running, then start on the same ports and the same data directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the data directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _alive_and_ready(self) -> bool:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            # Popen.args is typed as any form a command can take; ours is _command()'s list.
            command = cast(list[str], self._process.args)
            raise ServerStartError(
                f"{self.name} exited with code {code} during startup: "
                f"{' '.join(command)}\n{self._log_tail()}"
            )
        return self._is_ready()

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        # Signalled before the wait: the unreaped leader keeps its pid, so the
        # group id cannot have been reused by an unrelated process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _forget(self) -> None:
        self._process = None
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        self.kill()
        if self._owns_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        tail = "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty)"
        return f"--- last lines of {self.log_path} ---\n{tail}"
