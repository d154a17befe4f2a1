"""``orders bench --quick`` as a developer runs it: every phase at tiny sizes, with
servers and processes of its own, ending in a JSON document of positive figures.

No figure is compared with a target here: on a shared two-core machine a time
says little. What is checked is that every phase ran and measured something, so
``make bench`` cannot rot between the runs that are read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e]

# About a minute on an idle machine; the replica phase adds two pipeline runs, the
# light latency with WORKFLOW_BATCH_MAX=1 one more.
RUN_TIMEOUT_S = 300.0
_ORDERS = Path(sys.executable).parent / "orders"


def _bench_command(*args: str) -> list[str]:
    if _ORDERS.is_file():
        return [str(_ORDERS), "bench", *args]
    return [sys.executable, "-c", "from bridge.cli import main; main()", "bench", *args]


def _log_tails(log_dir: Path, lines: int = 25) -> str:
    """The end of every process log of the run: what a hung phase was doing."""
    tails = []
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        tails.append(f"--- {log.name} ---\n" + "\n".join(text[-lines:]))
    return "\n".join(tails) or f"(no logs in {log_dir})"


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--json", str(out), "--log-dir", str(tmp_path / "logs")]
    plot = tmp_path / "bench.png"
    can_plot = importlib.util.find_spec("matplotlib") is not None
    if can_plot:
        args += ["--plot", str(plot)]
    # NATS_URL / REDIS_URL of the developer's shell must not matter: the benchmark
    # starts its own servers.
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1/0"}
    try:
        run = subprocess.run(
            _bench_command(*args),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"{timeout}\n{timeout.stderr!r}\n{_log_tails(tmp_path / 'logs')}")
    assert run.returncode == 0, (
        f"exit {run.returncode}\n{run.stdout}\n{run.stderr}\n{_log_tails(tmp_path / 'logs')}"
    )

    doc = json.loads(out.read_text())
    for key in (
        "pipeline_orders_per_s",
        "naive_chord_orders_per_s",
        "celery_noop_tasks_per_s",
        "ratio_vs_naive",
        "redis_commands_per_order",
        "jetstream_msgs_per_s",
        "bridge_peak_rss_mb",
    ):
        assert _positive(doc[key]), (key, doc[key])
    for key in ("p50", "p95", "p99", "offered_rate"):
        assert _positive(doc["latency_ms"][key]), (key, doc["latency_ms"])
        assert _positive(doc["latency_light_ms"][key]), (key, doc["latency_light_ms"])
        unbatched = doc["latency_light_unbatched_ms"]
        assert _positive(unbatched[key]), (key, unbatched)
    _check_unbatched(doc)
    # Counted by the server: the pipeline's scripts and kombu's queue commands among them.
    sizes = doc["batch_size"]
    assert sizes["orders"] >= doc["parameters"]["orders"] and _positive(sizes["mean"]), sizes
    by_command = doc["redis_commands_by_command"]
    assert _positive(by_command["evalsha"]), by_command
    assert abs(sum(by_command.values()) - doc["redis_commands_per_order"]) < 0.5, by_command
    shapes = {(p["worker_concurrency"], p["bridges"]) for p in doc["scaling"]}
    assert shapes == {(1, 1), (2, 1), (4, 1), (2, 2)}
    assert all(_positive(p["orders_per_s"]) for p in doc["scaling"]), doc["scaling"]
    for point in doc["scaling"]:
        _check_batches(point["batch_size"], doc["parameters"]["orders"])
    _check_batches(doc["burst_batch_size"], doc["parameters"]["burst"])
    assert all(_positive(rss) for rss in doc["worker_peak_rss_mb"])
    assert _positive(doc["cpu_s_per_order"]["workers"])
    assert doc["machine"]["cpu_count"] == os.cpu_count()
    assert doc["machine"]["cpu_model"] and doc["machine"]["python"] and doc["machine"]["date"]
    assert doc["parameters"]["orders"] > 0 and doc["parameters"]["burst"] > 0
    _check_replica(doc)
    assert "pipeline at saturation" in run.stdout  # the table
    assert "REDIS_WAIT_REPLICAS=auto" in run.stdout
    assert "WORKFLOW_BATCH_MAX=1" in run.stdout
    if can_plot:
        assert plot.stat().st_size > 10_000


def _check_batches(sizes: dict[str, Any], orders: int) -> None:
    """A burst's batch sizes: every order of it sent in one."""
    assert sizes["orders"] >= orders and sizes["batches"] > 0, sizes
    assert _positive(sizes["mean"]) and _positive(sizes["max_at_most"]), sizes


def _check_unbatched(doc: dict[str, Any]) -> None:
    """The light latency's baseline ran with bridges that sent no batch of two or
    more, and its ratio to the batched light latency is reported against 1.2."""
    phase = doc["phases"]["latency_light_unbatched"]
    assert phase["bridge_env"] == {"WORKFLOW_BATCH_MAX": "1"}, phase["bridge_env"]
    assert phase["batch_size"]["max_at_most"] in (None, 1), phase["batch_size"]
    assert _positive(doc["light_p50_vs_unbatched"]), doc["light_p50_vs_unbatched"]
    target = doc["targets"]["light_p50_vs_unbatched"]
    assert target["bound"] == 1.2 and target["value"] == doc["light_p50_vs_unbatched"], target


def _check_replica(doc: dict[str, Any]) -> None:
    """Both runs with the replica attached measured; only ``auto`` waited for it."""
    replica = doc["phases"]["replica"]
    assert _positive(doc["replica_wait_ratio"]), doc["replica_wait_ratio"]
    assert replica["replicas"] == 1 and _positive(replica["ratio_auto_vs_off"])
    for name, setting, waited_for in (("off", "0", 0), ("auto", "auto", 1)):
        run = replica[name]
        assert run["redis_wait_replicas"] == setting and run["replicas_waited_for"] == waited_for
        assert _positive(run["orders_per_s"]) and run["orders"] > 0, run
        assert set(run["wait"]) == {"round_trips", "mean_ms", "orders_per_wait"}, run["wait"]
        for key in ("p50", "p99", "offered_rate"):
            assert _positive(run["latency"][key]), (name, key, run["latency"])
    auto, off = replica["auto"]["wait"], replica["off"]["wait"]
    assert auto["round_trips"] > 0 and _positive(auto["mean_ms"]), auto
    assert _positive(auto["orders_per_wait"]), auto
    assert off == {"round_trips": 0, "mean_ms": None, "orders_per_wait": None}, off
