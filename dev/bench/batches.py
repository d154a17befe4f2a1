"""The batch sizes the bridges sent during a phase, from their
``orders_bridge_workflow_batch_size`` histogram (group commit: one canvas for the
new workflows of one moment). A histogram keeps buckets, not sizes: the p50 and
the maximum are bucket bounds ("at most"). Bridges that do not batch
(``WORKFLOW_BATCH_MAX=1``) record no batch at all."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dev.bench.stack import BenchStack, metrics_text

BATCH_SIZE = "orders_bridge_workflow_batch_size"


async def measured(stack: BenchStack, measurement: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``measurement``'s result, with the batches the bridges sent while it ran
    (:func:`summary`) as its ``batch_size``."""
    before = snapshot(stack)
    result = await measurement
    result["batch_size"] = summary(before, snapshot(stack))
    return result


def snapshot(stack: BenchStack) -> Counter[str]:
    """Cumulative bucket counts (by ``le``) and the histogram's sum, every bridge's."""
    found: Counter[str] = Counter()
    for bridge in stack.bridges:
        for family in text_string_to_metric_families(metrics_text(bridge)):
            if family.name != BATCH_SIZE:
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    found[sample.labels["le"]] += int(sample.value)
                elif sample.name.endswith("_sum"):
                    found["sum"] += int(sample.value)
    return found


def summary(before: Counter[str], after: Counter[str]) -> dict[str, Any]:
    """Batches sent between two snapshots: how many, the orders in them, the mean
    size, and the bucket bounds holding the median and the largest batch."""
    delta = {k: after[k] - before.get(k, 0) for k in after}
    bounds = sorted((float(le), n) for le, n in delta.items() if le != "sum")
    batches = bounds[-1][1] if bounds else 0
    if not batches:
        return {"batches": 0, "orders": 0, "mean": None, "p50_at_most": None, "max_at_most": None}

    def bound_holding(rank: float) -> float | None:
        for le, cumulative in bounds:
            if cumulative >= rank:
                return None if math.isinf(le) else le
        return None

    return {
        "batches": batches,
        "orders": delta["sum"],
        "mean": round(delta["sum"] / batches, 1),
        "p50_at_most": bound_holding(batches / 2),
        "max_at_most": bound_holding(batches),
    }
