"""Sending Celery canvases from asyncio.

Celery's client is synchronous; sends run on a small thread pool so the event
loop never blocks on the broker. kombu's producer pool is thread-safe. Each send
runs in a copy of the caller's context, so the Celery instrumentation sees the
order's span and baggage (``run_in_executor`` alone would drop them).
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor

from celery.canvas import Signature


class Dispatcher:
    def __init__(self, threads: int = 4) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="celery-send")

    async def send(self, canvas: Signature) -> None:
        """Return once the first task of ``canvas`` is on the broker; raises if it is not."""
        loop = asyncio.get_running_loop()
        caller = contextvars.copy_context()
        await loop.run_in_executor(self._executor, caller.run, canvas.apply_async)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
