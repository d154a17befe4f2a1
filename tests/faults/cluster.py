"""A :class:`~harness.FaultStack` whose NATS is a three-node JetStream cluster.

- :class:`NatsCluster`: three :class:`~dev.servers.NatsServer` on loopback,
  routed to each other, each with its own client port and file store; any node
  can be killed and started again (same ports, same store).
- :class:`ClusterStack`: the harness's stack on that cluster, with
  ``STREAM_REPLICAS=3``. Bridges and workers get ``NATS_URL`` listing every node.

The workload's producer and the e2e helpers connect with ``nats.connect(url)``,
which takes one URL (or a list), not ``NATS_URL``'s comma-separated form; while a
``ClusterStack`` is open their ``nats`` module is seen through :class:`_ServerList`,
which splits such a string.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import workload
from harness import FaultStack, e2e

from dev.servers import NatsServer, ServerStartError, free_port, wait_until

CLUSTER_NAME = "orders-faults"
META_LEADER_TIMEOUT_S = 60.0
START_ATTEMPTS = 3


class NatsCluster:
    """``size`` NATS servers forming one JetStream cluster; nodes named ``n1``..``nN``."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        self._base_dir = base_dir
        self._size = size
        self.nodes = self._configure()

    def _configure(self) -> dict[str, NatsServer]:
        ports = [(free_port(), free_port()) for _ in range(self._size)]  # (client, route)
        nodes = {}
        for i, (client_port, route_port) in enumerate(ports):
            name = f"n{i + 1}"
            routes = ", ".join(
                f"nats-route://127.0.0.1:{r}" for j, (_, r) in enumerate(ports) if j != i
            )
            config = (
                f"server_name: {name}\n"
                f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route_port}\n"
                f"  routes: [{routes}]\n}}\n"
                "jetstream: enabled\n"  # the store directory comes from NatsServer's -sd
            )
            nodes[name] = NatsServer(client_port, store_dir=self._base_dir / name, config=config)
        return nodes

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    @property
    def url(self) -> str:
        """Every node, comma-separated: the form ``NATS_URL`` takes."""
        return ",".join(self.urls)

    def start(self) -> None:
        """Start every node (each serves clients before the cluster has formed), then
        wait until JetStream has a meta leader.

        The ports were free a moment before the servers bind them; another process
        (a parallel test session) may take one meanwhile: then all start again on new
        ports, with fresh stores."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                for node in self.nodes.values():
                    node.start()
                break
            except ServerStartError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt == START_ATTEMPTS:
                    raise
                shutil.rmtree(self._base_dir, ignore_errors=True)
                self.nodes = self._configure()
        self.wait_meta_leader()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def restart(self, name: str) -> None:
        """Start a stopped or killed node again on its ports and store."""
        self.nodes[name].start()

    def wait_meta_leader(self, timeout: float = META_LEADER_TIMEOUT_S) -> None:
        wait_until(
            lambda: self._try(lambda js: js.account_info()) is not None,
            timeout,
            0.5,
            "the NATS cluster to elect a JetStream meta leader",
        )

    def stream_cluster(self, stream: str) -> Any:
        """The stream's ``ClusterInfo`` (leader and replicas), ``None`` while no node answers."""
        info = self._try(lambda js: js.stream_info(stream))
        return None if info is None else info.cluster

    def stream_leader(self, stream: str, timeout: float = 30.0, *, not_on: str = "") -> str:
        """The server name of the stream's leader, waiting for one (other than
        ``not_on``, a node just killed) to be elected."""
        found: list[str] = []

        def elected() -> bool:
            info = self.stream_cluster(stream)
            if info is not None and info.leader and info.leader != not_on:
                found.append(info.leader)
            return bool(found)

        wait_until(elected, timeout, 0.3, f"a leader of stream {stream}")
        return found[-1]

    def consumer_leader(self, stream: str, consumer: str) -> str | None:
        info = self._try(lambda js: js.consumer_info(stream, consumer))
        return None if info is None or info.cluster is None else info.cluster.leader

    def logs(self, lines: int = 15) -> str:
        return "\n".join(e2e.log_tail(node.log_path, lines) for node in self.nodes.values())

    def _try(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """``work(js)`` on a short connection to any live node; ``None`` on any error."""

        async def run() -> Any:
            nc = await nats.connect(
                self.urls, allow_reconnect=False, connect_timeout=2, error_cb=_quiet
            )
            try:
                return await work(nc.jetstream(timeout=2))
            finally:
                await nc.close()

        try:
            return asyncio.run(run())
        except Exception:
            return None


async def _quiet(_: Exception) -> None:
    """Instead of nats.py's default error callback, which prints a traceback for every
    node it finds dead."""


class _ServerList:
    """The ``nats`` module, except that ``connect`` also takes a comma-separated list."""

    def __getattr__(self, name: str) -> Any:
        return getattr(nats, name)

    @staticmethod
    async def connect(servers: Any = "nats://127.0.0.1:4222", **options: Any) -> Any:
        if isinstance(servers, str) and "," in servers:
            servers = [s.strip() for s in servers.split(",")]
        return await nats.connect(servers, **options)


class ClusterStack(FaultStack):
    """The fault stack on a three-node cluster, every stream replicated three times."""

    def __init__(self, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(log_dir, {"STREAM_REPLICAS": "3", **(extra_env or {})})
        self.nats: NatsCluster = NatsCluster(log_dir / "nats")  # type: ignore[assignment]
        self._patched: list[tuple[Any, Any]] = []

    def __enter__(self) -> ClusterStack:
        for module in (workload, e2e):
            self._patched.append((module, module.nats))
            module.nats = _ServerList()
        super().__enter__()
        return self

    def close(self) -> None:
        try:
            super().close()
        finally:
            for module, original in reversed(self._patched):
                module.nats = original
            self._patched.clear()

    def logs(self, lines: int = 40) -> str:
        tails = [e2e.log_tail(p.log, lines) for p in self.children]
        tails += [self.nats.logs(), e2e.log_tail(self.redis.log_path, 15)]
        return "\n".join(tails)

    def wait_node_current(self, stream: str, name: str, timeout: float = 60.0) -> float:
        """Until ``name`` is a current replica (or the leader) of ``stream`` again;
        returns the seconds waited."""
        started = time.monotonic()

        def current() -> bool:
            info = self.nats.stream_cluster(stream)
            if info is None:
                return False
            if info.leader == name:
                return True
            return any(p.name == name and p.current for p in info.replicas or [])

        wait_until(current, timeout, 0.5, f"{name} to be a current replica of {stream}")
        return time.monotonic() - started
