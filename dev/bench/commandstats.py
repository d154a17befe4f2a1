"""Redis commands per order, as the server counts them (``INFO commandstats``).

Every command counts, the ones scripts run included (Redis counts a ``redis.call``
inside ``EVALSHA`` under its own name, besides the ``EVALSHA``): what the server
executes per order is what bounds a fleet sharing one Redis. Counted over a
whole phase, so the workers' idle polling (kombu's ``BRPOP`` timeouts) and the
clients' health checks are in the figure too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis

# The commands listed by name in the results; the rest are summed as "other".
TOP = 15


def snapshot(url: str) -> Counter[str]:
    """Calls of each command since the server started."""
    client = redis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def per_order(before: Counter[str], after: Counter[str], orders: int) -> dict[str, Any]:
    """Commands per order between two snapshots; the second snapshot's own INFO left out."""
    calls = after - before
    calls["info"] -= 1
    calls = +calls  # drops what did not grow
    total = sum(calls.values())
    top = dict(calls.most_common(TOP))
    other = total - sum(top.values())
    by_command = {name: round(n / orders, 2) for name, n in top.items()}
    if other:
        by_command["other"] = round(other / orders, 2)
    return {
        "orders": orders,
        "commands": total,
        "per_order": round(total / orders, 1),
        "by_command_per_order": by_command,
    }
