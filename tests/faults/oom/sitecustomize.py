"""Put on a test worker's PYTHONPATH: reserving stock for an order that holds the
poison SKU kills the worker process running it, every time, as an out-of-memory
kill would. Production code is untouched; Python imports this module at start-up."""

import os
import signal

from orders import services

POISON_SKU = "oom-poison-sku"
_reserve_step = services.reserve_step


def _reserve_or_die(p, order, epoch):  # type: ignore[no-untyped-def]
    if any(line.product_id == POISON_SKU for line in order.lines):
        os.kill(os.getpid(), signal.SIGKILL)
    return _reserve_step(p, order, epoch)


services.reserve_step = _reserve_or_die
