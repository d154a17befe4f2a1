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
    p99_over_p50 = round(latency["p99"] / latency["p50"], 2) if latency and latency["p50"] else None
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
        "latency_light_ms": _latency_figures(results.get("latency_light")),
        "scaling": results.get("scaling"),
        "bridge_peak_rss_mb": bridge_rss,
        "worker_peak_rss_mb": resources.get("worker_peak_rss_mb"),
        "cpu_s_per_order": resources.get("cpu_s_per_order")
        or results.get("pipeline", {}).get("cpu_s_per_order"),
        # Throughput with REDIS_WAIT_REPLICAS=auto over =0, one replica attached to both.
        "replica_wait_ratio": results.get("replica", {}).get("ratio_auto_vs_off"),
        "targets": {
            "ratio_vs_naive": _target(ratio, TARGET_RATIO_VS_NAIVE, at_least=True),
            "p99_over_p50": _target(p99_over_p50, TARGET_P99_OVER_P50, at_least=False),
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


def _latency_figures(latency: dict[str, Any] | None) -> dict[str, Any] | None:
    if not latency:
        return None
    keys = ("p50", "p95", "p99", "mean", "max", "offered_rate", "achieved_rate")
    return {k: latency[k] for k in keys}


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def table(doc: dict[str, Any]) -> Table:
    """The headline figures, each with its target where the issue set one."""
    out = Table(title="orders-pipeline benchmark", title_justify="left")
    out.add_column("measure")
    out.add_column("value", justify="right")
    out.add_column("target")
    phases = doc["phases"]
    targets = doc["targets"]

    def row(measure: str, value: object, unit: str = "", target: str = "") -> None:
        shown = "skipped" if value is None else f"{value:,}{unit}" if unit else f"{value:,}"
        out.add_row(measure, shown, target)

    row("JetStream ceiling (consume + ack)", doc["jetstream_msgs_per_s"], " msgs/s")
    row("Celery no-op tasks (the floor)", doc["celery_noop_tasks_per_s"], " tasks/s")
    row("naive Celery chord", doc["naive_chord_orders_per_s"], " orders/s")
    row("pipeline at saturation", doc["pipeline_orders_per_s"], " orders/s")
    row("pipeline / naive", doc["ratio_vs_naive"], "", _verdict(targets["ratio_vs_naive"], "≥"))
    row(
        "Redis commands per order (saturation)",
        doc["redis_commands_per_order"],
        "",
        _verdict(targets["redis_commands_per_order"], "≤"),
    )
    sizes = doc["batch_size"]
    if sizes and sizes["batches"]:
        shown = f"mean {sizes['mean']}, p50 ≤ {sizes['p50_at_most']}, max ≤ {sizes['max_at_most']}"
        out.add_row("batch size at saturation (orders per canvas)", shown, "")
    for name, latency, target in (
        ("latency", doc["latency_ms"], targets["p99_over_p50"]),
        ("light latency", doc["latency_light_ms"], None),
    ):
        if not latency:
            row(name, None)
            continue
        at = f" at {latency['offered_rate']} orders/s"
        row(f"{name} p50{at}", latency["p50"], " ms")
        row(f"{name} p95{at}", latency["p95"], " ms")
        verdict = _verdict(target, "p99/p50 ≤") if target else ""
        row(f"{name} p99{at}", latency["p99"], " ms", verdict)
    for point in doc["scaling"] or ():
        shape = f"{point['worker_concurrency']} worker processes, {point['bridges']} bridge(s)"
        row(f"scaling: {shape}", point["orders_per_s"], " orders/s")
    resources = phases.get("resources")
    if resources:
        burst = f" ({resources['orders']:,} orders burst)"
        row(f"bridge peak RSS{burst}", doc["bridge_peak_rss_mb"], " MB",
            _verdict(targets["bridge_peak_rss_mb"], "<"))  # fmt: skip
        for n, rss in enumerate(doc["worker_peak_rss_mb"], start=1):
            row(f"worker {n} peak RSS, pool included{burst}", rss, " MB")
    else:
        row("peak RSS", None)
    for role, seconds in (doc["cpu_s_per_order"] or {}).items():
        row(f"CPU per order: {role}", round(seconds * 1000, 2), " ms")
    for measure, shown in _replica_rows(phases.get("replica")):
        out.add_row(measure, shown, "")
    return out


def _replica_rows(phase: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Each run of the replica phase in three rows (throughput, its WAITs, latency at
    a light rate), then the throughput ratio; already formatted, as some pair figures."""
    if not phase:
        return [("Redis replica, REDIS_WAIT_REPLICAS", "skipped")]
    rows: list[tuple[str, str]] = []
    for name in ("off", "auto"):
        run = phase[name]
        setting = f"REDIS_WAIT_REPLICAS={run['redis_wait_replicas']}"
        rows.append((f"1 Redis replica, {setting}", f"{run['orders_per_s']:,} orders/s"))
        wait = run["wait"]
        waits = (
            f"{wait['round_trips']:,} x {wait['mean_ms']} ms, {wait['orders_per_wait']} orders each"
            if wait["round_trips"]
            else "none"
        )
        rows.append(("  its WAITs in the burst", waits))
        if latency := run.get("latency"):
            figures = f"{latency['p50']} / {latency['p99']} ms"
            rows.append((f"  its latency p50 / p99 at {latency['offered_rate']} orders/s", figures))
    rows.append(("1 Redis replica: throughput auto / 0", f"{phase['ratio_auto_vs_off']}"))
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
