"""The benchmark's results: one JSON document, and a table for people.

The document's top-level keys are the headline figures (``None`` when their
phase was skipped); ``phases`` holds everything each phase measured, samples
included, and ``targets`` says which of the issue's targets were met.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# The targets for the pipeline on this machine (issue 12: the Celery work amortised
# over many orders).
TARGET_RATIO_VS_NAIVE = 5.0
TARGET_P99_OVER_P50 = 3.0
TARGET_BRIDGE_RSS_MB = 150.0
TARGET_REDIS_COMMANDS_PER_ORDER = 30.0
# Light-load p50 over that of bridges with WORKFLOW_BATCH_MAX=1 in the same run.
TARGET_LIGHT_P50_VS_UNBATCHED = 1.2
_PACKAGES = ("celery", "kombu", "redis", "nats-py", "protobuf", "opentelemetry-sdk")


def document(
    results: dict[str, Any], parameters: dict[str, Any], machine: dict[str, Any]
) -> dict[str, Any]:
    pipeline = results.get("pipeline", {}).get("orders_per_s")
    naive = results.get("naive", {}).get("orders_per_s")
    latency = results.get("latency")
    resources = results.get("resources", {})
    ratio = round(pipeline / naive, 2) if pipeline and naive else None
    redis_commands = results.get("pipeline", {}).get("redis_commands") or {}
    commands_per_order = redis_commands.get("per_order")
    p99_over_p50 = _ratio(latency, latency, "p99", "p50")
    light, unbatched = results.get("latency_light"), results.get("latency_light_unbatched")
    light_vs_unbatched = _ratio(light, unbatched, "p50", "p50")
    bridge_rss = resources.get("bridge_peak_rss_mb")
    return {
        "pipeline_orders_per_s": pipeline,
        "naive_chord_orders_per_s": naive,
        "celery_noop_tasks_per_s": results.get("noop", {}).get("tasks_per_s"),
        "ratio_vs_naive": ratio,
        "redis_commands_per_order": commands_per_order,
        "redis_commands_by_command": redis_commands.get("by_command_per_order"),
        "batch_size": results.get("pipeline", {}).get("batch_size"),
        "jetstream_msgs_per_s": results.get("jetstream", {}).get("msgs_per_s"),
        "latency_ms": _latency_figures(latency),
        "latency_light_ms": _latency_figures(light),
        # The same light load through bridges that do not batch (WORKFLOW_BATCH_MAX=1).
        "latency_light_unbatched_ms": _latency_figures(unbatched),
        "light_p50_vs_unbatched": light_vs_unbatched,
        "scaling": results.get("scaling"),
        "burst_batch_size": resources.get("batch_size"),
        "bridge_peak_rss_mb": bridge_rss,
        "worker_peak_rss_mb": resources.get("worker_peak_rss_mb"),
        "cpu_s_per_order": resources.get("cpu_s_per_order")
        or results.get("pipeline", {}).get("cpu_s_per_order"),
        # Throughput with REDIS_WAIT_REPLICAS=auto over =0, one replica attached to both.
        "replica_wait_ratio": results.get("replica", {}).get("ratio_auto_vs_off"),
        "targets": {
            "ratio_vs_naive": _target(ratio, TARGET_RATIO_VS_NAIVE, at_least=True),
            "p99_over_p50": _target(p99_over_p50, TARGET_P99_OVER_P50, at_least=False),
            "light_p50_vs_unbatched": _target(
                light_vs_unbatched, TARGET_LIGHT_P50_VS_UNBATCHED, at_least=False
            ),
            "redis_commands_per_order": _target(
                commands_per_order, TARGET_REDIS_COMMANDS_PER_ORDER, at_least=False
            ),
            "bridge_peak_rss_mb": _target(
                bridge_rss, TARGET_BRIDGE_RSS_MB, at_least=False, strict=True
            ),
        },
        "machine": machine,
        "versions": _versions(),
        "parameters": parameters,
        "phases": results,
    }


def _ratio(
    top: dict[str, Any] | None, bottom: dict[str, Any] | None, top_key: str, bottom_key: str
) -> float | None:
    """``top[top_key] / bottom[bottom_key]`` to two places; ``None`` if either is missing."""
    if not top or not bottom or not bottom[bottom_key]:
        return None
    return round(float(top[top_key]) / float(bottom[bottom_key]), 2)


def _latency_figures(latency: dict[str, Any] | None) -> dict[str, Any] | None:
    if not latency:
        return None
    keys = ("p50", "p95", "p99", "mean", "max", "offered_rate", "achieved_rate")
    return {k: latency[k] for k in keys}


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


Row = tuple[str, str, str]  # measure, value, target


def table(doc: dict[str, Any]) -> Table:
    """The headline figures, each with its target where the issue set one."""
    out = Table(title="orders-pipeline benchmark", title_justify="left")
    out.add_column("measure")
    out.add_column("value", justify="right")
    out.add_column("target")
    phases = doc["phases"]
    for measure, shown, target in (
        *_throughput_rows(doc),
        *_latency_rows(doc),
        *_scaling_rows(doc["scaling"]),
        *_resource_rows(doc, phases.get("resources")),
        *_replica_rows(phases.get("replica")),
    ):
        out.add_row(measure, shown, target)
    return out


def _row(measure: str, value: object, unit: str = "", target: str = "") -> Row:
    shown = "skipped" if value is None else f"{value:,}{unit}" if unit else f"{value:,}"
    return (measure, shown, target)


def _sizes(sizes: dict[str, Any] | None) -> str | None:
    """A phase's batch sizes (:func:`dev.bench.batches.summary`) in one cell."""
    if not sizes:
        return None
    if not sizes["batches"]:
        return "no batches"
    return f"mean {sizes['mean']}, p50 ≤ {sizes['p50_at_most']}, max ≤ {sizes['max_at_most']}"


def _throughput_rows(doc: dict[str, Any]) -> list[Row]:
    targets = doc["targets"]
    rows = [
        _row("JetStream ceiling (consume + ack)", doc["jetstream_msgs_per_s"], " msgs/s"),
        _row("Celery no-op tasks (the floor)", doc["celery_noop_tasks_per_s"], " tasks/s"),
        _row("naive Celery chord", doc["naive_chord_orders_per_s"], " orders/s"),
        _row("pipeline at saturation", doc["pipeline_orders_per_s"], " orders/s"),
        _row(
            "pipeline / naive", doc["ratio_vs_naive"], "", _verdict(targets["ratio_vs_naive"], "≥")
        ),
        _row(
            "Redis commands per order (saturation)",
            doc["redis_commands_per_order"],
            "",
            _verdict(targets["redis_commands_per_order"], "≤"),
        ),
    ]
    if shown := _sizes(doc["batch_size"]):
        rows.append(("batch size at saturation (orders per canvas)", shown, ""))
    return rows


def _latency_rows(doc: dict[str, Any]) -> list[Row]:
    targets = doc["targets"]
    rows: list[Row] = []
    for name, latency, target in (
        ("latency", doc["latency_ms"], targets["p99_over_p50"]),
        ("light latency", doc["latency_light_ms"], None),
        ("light latency, WORKFLOW_BATCH_MAX=1", doc["latency_light_unbatched_ms"], None),
    ):
        if not latency:
            rows.append(_row(name, None))
            continue
        at = f" at {latency['offered_rate']} orders/s"
        rows.append(_row(f"{name} p50{at}", latency["p50"], " ms"))
        rows.append(_row(f"{name} p95{at}", latency["p95"], " ms"))
        verdict = _verdict(target, "p99/p50 ≤") if target else ""
        rows.append(_row(f"{name} p99{at}", latency["p99"], " ms", verdict))
    ratio, target = doc["light_p50_vs_unbatched"], targets["light_p50_vs_unbatched"]
    rows.append(_row("light p50 / p50 with WORKFLOW_BATCH_MAX=1", ratio, "", _verdict(target, "≤")))
    return rows


def _scaling_rows(scaling: list[dict[str, Any]] | None) -> list[Row]:
    rows: list[Row] = []
    for point in scaling or ():
        shape = f"{point['worker_concurrency']} worker processes, {point['bridges']} bridge(s)"
        rows.append(_row(f"scaling: {shape}", point["orders_per_s"], " orders/s"))
        if shown := _sizes(point.get("batch_size")):
            rows.append(("  its batch sizes (orders per canvas)", shown, ""))
    return rows


def _resource_rows(doc: dict[str, Any], resources: dict[str, Any] | None) -> list[Row]:
    if not resources:
        rows = [_row("peak RSS", None)]
    else:
        burst = f" ({resources['orders']:,} orders burst)"
        rss = _verdict(doc["targets"]["bridge_peak_rss_mb"], "<")
        rows = [_row(f"bridge peak RSS{burst}", doc["bridge_peak_rss_mb"], " MB", rss)]
        for n, worker_rss in enumerate(doc["worker_peak_rss_mb"], start=1):
            rows.append(_row(f"worker {n} peak RSS, pool included{burst}", worker_rss, " MB"))
        if shown := _sizes(doc.get("burst_batch_size")):
            rows.append((f"batch size{burst}", shown, ""))
    for role, seconds in (doc["cpu_s_per_order"] or {}).items():
        rows.append(_row(f"CPU per order: {role}", round(seconds * 1000, 2), " ms"))
    return rows


def _replica_rows(phase: dict[str, Any] | None) -> list[Row]:
    """Each run of the replica phase in three rows (throughput, its WAITs, latency at
    a light rate), then the throughput ratio; already formatted, as some pair figures."""
    if not phase:
        return [("Redis replica, REDIS_WAIT_REPLICAS", "skipped", "")]
    rows: list[Row] = []
    for name in ("off", "auto"):
        run = phase[name]
        setting = f"REDIS_WAIT_REPLICAS={run['redis_wait_replicas']}"
        rows.append((f"1 Redis replica, {setting}", f"{run['orders_per_s']:,} orders/s", ""))
        wait = run["wait"]
        waits = (
            f"{wait['round_trips']:,} x {wait['mean_ms']} ms, {wait['orders_per_wait']} orders each"
            if wait["round_trips"]
            else "none"
        )
        rows.append(("  its WAITs in the burst", waits, ""))
        if latency := run.get("latency"):
            figures = f"{latency['p50']} / {latency['p99']} ms"
            at = f"at {latency['offered_rate']} orders/s"
            rows.append((f"  its latency p50 / p99 {at}", figures, ""))
    rows.append(("1 Redis replica: throughput auto / 0", f"{phase['ratio_auto_vs_off']}", ""))
    return rows


def profile_table(profile: dict[str, Any], limit: int = 12) -> Table:
    """Where each profiled process spends its samples, inclusive of callees."""
    out = Table(title="profile: share of samples (callees included)", title_justify="left")
    for name in profile:
        out.add_column(name)
        out.add_column("%", justify="right")
    columns = [profile[name]["total"][:limit] for name in profile]
    for i in range(max((len(c) for c in columns), default=0)):
        cells: list[str] = []
        for column in columns:
            entry = column[i] if i < len(column) else None
            cells += [entry["function"], f"{entry['pct']}"] if entry else ["", ""]
        out.add_row(*cells)
    return out


def print_summary(console: Console, doc: dict[str, Any]) -> None:
    console.print(table(doc))
    if profile := doc["phases"].get("pipeline", {}).get("profile"):
        console.print(profile_table(profile))
    machine = doc["machine"]
    console.print(
        f"{machine['cpu_count']} x {machine['cpu_model']}, {machine['memory_gb']} GB, "
        f"Python {machine['python']}, {machine['date']}"
    )


def _target(
    value: float | None, bound: float, *, at_least: bool, strict: bool = False
) -> dict[str, Any]:
    if value is None:
        met = None
    elif at_least:
        met = value > bound if strict else value >= bound
    else:
        met = value < bound if strict else value <= bound
    return {"value": value, "bound": bound, "met": met}


def _verdict(target: dict[str, Any], relation: str) -> str:
    if target["met"] is None:
        return f"{relation} {target['bound']:g}"
    mark = "met" if target["met"] else "NOT met"
    return f"{relation} {target['bound']:g}: {mark} ({target['value']})"


def _versions() -> dict[str, str]:
    found = {}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
