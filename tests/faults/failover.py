"""A Redis primary with a real replica behind one address, failed over as a managed
service does it (ElastiCache, Memorystore, a Sentinel pair).

- :class:`FailoverStack`: a :class:`~harness.FaultStack` whose bridges and workers
  reach Redis through one :class:`~tcp_proxy.TcpProxy` (the address that survives
  the failover), and whose replica replicates through another, so a test can cut
  the replication link and make the replica miss the primary's last writes.
- :meth:`FailoverStack.fail_over`: SIGKILL the primary, promote the replica
  (``REPLICAOF NO ONE``), point the address at it. The test's own checker
  (``stack.pipeline``) reads whichever server is the primary.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import redis
from harness import FaultStack
from tcp_proxy import TcpProxy

from dev.servers import RedisServer, wait_until
from dev.stack import Child

REPLICA_SYNC_TIMEOUT_S = 30.0


class FailoverStack(FaultStack):
    def __init__(self, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(log_dir, extra_env)
        self.address: TcpProxy | None = None  # what REDIS_URL points at
        self.replication_link: TcpProxy | None = None  # the replica's way to the primary
        self.replica: RedisServer | None = None
        self.failed_over = False

    def __enter__(self) -> FailoverStack:
        super().__enter__()
        try:
            self.address = TcpProxy(self.redis.port)
            self.address.start()
            self.replication_link = TcpProxy(self.redis.port)
            self.replication_link.start()
            self.replica = RedisServer(
                data_dir=self.log_dir / "replica",
                appendfsync="always",
                extra_args=("--replicaof", "127.0.0.1", str(self.replication_link.port)),
            )
            self.replica.start()
            wait_until(
                lambda: self.online_replicas() == 1,
                REPLICA_SYNC_TIMEOUT_S,
                0.1,
                "the replica to be in sync",
            )
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        proxies = [p for p in (self.address, self.replication_link) if p is not None]
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy.heal()
        try:
            super().close()
        finally:
            if self.replica is not None:
                self.replica.stop()
            for proxy in proxies:
                with contextlib.suppress(Exception):
                    proxy.close()

    # --- the processes reach Redis through the address ----------------------------------

    @property
    def redis_address_url(self) -> str:
        assert self.address is not None, "use FailoverStack as a context manager"
        return f"redis://{self.address.url_host_port}/0"

    def add_bridge(self, env_overrides: dict[str, str] | None = None) -> Child:
        return super().add_bridge({"REDIS_URL": self.redis_address_url, **(env_overrides or {})})

    def add_worker(self, env_overrides: dict[str, str] | None = None) -> Child:
        return super().add_worker({"REDIS_URL": self.redis_address_url, **(env_overrides or {})})

    @property
    def primary(self) -> RedisServer:
        if self.failed_over:
            assert self.replica is not None
            return self.replica
        return self.redis

    @property
    def pipeline(self) -> Any:
        """The e2e suite's view of the pipeline, on the server that is the primary now."""
        if self._pipeline is None:
            import pipeline_stack as e2e

            self._pipeline = e2e.Pipeline(self, self.nats.url, self.primary.url)
        return self._pipeline

    # --- the fault ---------------------------------------------------------------------

    def online_replicas(self) -> int:
        with redis.Redis.from_url(self.redis.url, socket_timeout=5) as client:
            info = client.info("replication")
        return sum(
            1
            for key, value in info.items()
            if key.startswith("slave") and isinstance(value, dict) and value["state"] == "online"
        )

    def replication_offsets(self) -> tuple[int, int]:
        """(primary's offset, replica's offset): how far the replica is behind."""
        assert self.replica is not None
        with redis.Redis.from_url(self.redis.url, socket_timeout=5) as primary:
            ahead = int(primary.info("replication")["master_repl_offset"])
        with redis.Redis.from_url(self.replica.url, socket_timeout=5) as replica:
            behind = int(replica.info("replication")["master_repl_offset"])
        return ahead, behind

    def cut_replication(self) -> None:
        """Bytes stop flowing to the replica; the primary still counts it online."""
        assert self.replication_link is not None
        self.replication_link.blackhole()

    def fail_over(self) -> None:
        """SIGKILL the primary, promote the replica, move the address to it."""
        assert self.replica is not None and self.address is not None
        self.redis.kill()
        with redis.Redis.from_url(self.replica.url, socket_timeout=5) as replica:
            replica.execute_command("REPLICAOF", "NO", "ONE")
        self.failed_over = True
        self.address.retarget(self.replica.port)
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
