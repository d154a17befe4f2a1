"""``--plot``: the latency distribution, the scaling curve and memory over time, in
one PNG. matplotlib comes with the ``bench`` extra and is imported only here."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install -e '.[bench]' (or run `make bench`)"
        ) from None


def plot(doc: dict[str, Any], path: Path) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    phases = doc["phases"]
    fig, (lat_ax, scale_ax, mem_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
    _latency(lat_ax, phases.get("latency"))
    _scaling(scale_ax, doc)
    _memory(mem_ax, phases.get("resources"))
    machine = doc["machine"]
    fig.suptitle(
        f"orders-pipeline benchmark: {machine['cpu_count']} x {machine['cpu_model']}, "
        f"Python {machine['python']}, {machine['date'][:10]}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency(ax: Any, latency: dict[str, Any] | None) -> None:
    ax.set_title("latency, input stored → outcome stored")
    if not latency:
        ax.text(0.5, 0.5, "skipped", ha="center", transform=ax.transAxes)
        return
    samples = latency["samples_ms"]
    ax.hist(samples, bins=60, color="#4c72b0")
    for name, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        ax.axvline(
            latency[name], color="black", linestyle=style, label=f"{name} {latency[name]} ms"
        )
    ax.set_xlabel(f"ms ({latency['orders']} orders offered at {latency['offered_rate']}/s)")
    ax.set_ylabel("orders")
    ax.legend()


def _scaling(ax: Any, doc: dict[str, Any]) -> None:
    ax.set_title("throughput at saturation")
    points = doc["scaling"] or []
    one_bridge = sorted(
        (p["worker_concurrency"], p["orders_per_s"]) for p in points if p["bridges"] == 1
    )
    if one_bridge:
        xs, ys = zip(*one_bridge, strict=True)
        ax.plot(xs, ys, marker="o", label="1 bridge")
        ax.set_xticks(xs)
    for p in points:
        if p["bridges"] > 1:
            ax.plot([p["worker_concurrency"]], [p["orders_per_s"]], marker="s", linestyle="",
                    label=f"{p['bridges']} bridges")  # fmt: skip
    if naive := doc["naive_chord_orders_per_s"]:
        ax.axhline(naive, color="grey", linestyle="--", label=f"naive Celery chord ({naive}/s)")
    ax.set_xlabel("worker processes (prefork children of one orders-worker)")
    ax.set_ylabel("orders/s")
    ax.set_ylim(bottom=0)
    ax.legend()


def _memory(ax: Any, resources: dict[str, Any] | None) -> None:
    ax.set_title("resident memory with a burst in flight")
    if not resources:
        ax.text(0.5, 0.5, "skipped", ha="center", transform=ax.transAxes)
        return
    samples = resources["samples"]
    t = [s["t_s"] for s in samples]
    ax.plot(t, [s["bridge_rss_mb"] for s in samples], label="bridge RSS")
    ax.plot(t, [s["workers_rss_mb"] for s in samples], label="worker tree RSS (sum)")
    ax.set_xlabel("s since the burst began")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    flight = ax.twinx()
    flight.plot(t, [s["published"] - s["done"] for s in samples], color="grey", alpha=0.5,
                label="orders in flight")  # fmt: skip
    flight.set_ylabel("orders in flight")
    flight.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = flight.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
