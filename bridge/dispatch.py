"""Sending Celery canvases from asyncio.

Celery's client is synchronous; sends run on a small thread pool so the event
loop never blocks on the broker. kombu's producer pool is thread-safe.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from celery.canvas import Signature


class Dispatcher:
    def __init__(self, threads: int = 4) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="celery-send")

    async def send(self, canvas: Signature) -> None:
        """Return once the first task of ``canvas`` is on the broker; raises if it is not."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, canvas.apply_async)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
