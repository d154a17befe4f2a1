"""A loopback TCP proxy the tests control, to partition processes from a server.

- :meth:`TcpProxy.blackhole`: bytes stop flowing both ways while every socket
  stays open, as when a network drops packets; peers only notice through their
  own timeouts and pings (half-open connections).
- :meth:`TcpProxy.heal`: bytes flow again on the same connections.
- :meth:`TcpProxy.reset_all`: every connection is closed with a TCP reset, as when
  a partition ends with the peers' state gone.
- :meth:`TcpProxy.retarget`: new connections go to another server, as when a
  managed service fails over to a replica behind the same address.

New connections are accepted during a blackhole too (and then carry nothing), so
a reconnect attempt hangs instead of failing fast, like a real partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

from dev.servers import free_port

_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_port: int, listen_port: int | None = None) -> None:
        self.target_port = target_port
        self.port = listen_port or free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flow_changed: asyncio.Event | None = None

    @property
    def url_host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def blackhole(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()
        self._loop.call_soon_threadsafe(self._notify)

    def reset_all(self) -> None:
        """Close every proxied connection with RST; flow is restored for new ones."""
        self._call(self._reset())
        self.heal()

    def retarget(self, target_port: int) -> None:
        """New connections go to ``target_port``; open ones are reset."""
        self.target_port = target_port
        self.reset_all()

    @property
    def connections(self) -> int:
        return len(self._writers) // 2

    # --- inside the proxy's loop -----------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _notify(self) -> None:
        if self._flow_changed is not None:
            self._flow_changed.set()

    async def _start(self) -> None:
        self._flow_changed = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _reset(self) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    # SO_LINGER 0: close() sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        with contextlib.suppress(asyncio.CancelledError):  # the proxy is closing
            await asyncio.gather(
                self._pipe(client_r, server_w),
                self._pipe(server_r, client_w),
                return_exceptions=True,
            )
        for writer in (client_w, server_w):
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                break
            while not self._flowing.is_set():
                # Hold the bytes, as a partitioned network would (they are never
                # delivered if the connection is reset meanwhile).
                assert self._flow_changed is not None
                self._flow_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flow_changed.wait(), timeout=0.5)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
