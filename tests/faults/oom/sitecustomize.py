"""Put on a test worker's PYTHONPATH: reserving stock for an order that holds the
poison SKU kills the worker process running it, every time, as an out-of-memory
kill would, whether the order is reserved alone or as part of a batch (which then
dies with it). Production code is untouched; Python imports this module at start-up."""

import os
import signal

from orders import services

POISON_SKU = "oom-poison-sku"
_reserve_steps = services.reserve_steps


def _reserve_or_die(p, placed):  # type: ignore[no-untyped-def]
    if any(line.product_id == POISON_SKU for order, _ in placed for line in order.lines):
        os.kill(os.getpid(), signal.SIGKILL)
    return _reserve_steps(p, placed)


# reserve_step (one order) goes through reserve_steps, looked up at call time.
services.reserve_steps = _reserve_or_die
