"""An embedded ``nats-server`` with JetStream."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from dev.servers.binaries import find_nats_server
from dev.servers.process import LOOPBACK, ServerProcess, free_port


class NatsServer(ServerProcess):
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
