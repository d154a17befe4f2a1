"""How big each phase of the benchmark is, and the settings its processes run with
(recorded in the JSON document's ``parameters``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge.settings import BridgeSettings
from dev.bench.phases import replica
from dev.bench.stack import BENCH_ENV

# The bridges' environment for the light latency's baseline: every order sent to
# Celery alone, no group commit (issue 12: light-load p50 at most 1.2x this one's).
UNBATCHED_ENV = {"WORKFLOW_BATCH_MAX": "1"}

PHASES = ("jetstream", "noop", "naive", "pipeline", "latency", "scaling", "resources", "replica")


@dataclass(frozen=True)
class Plan:
    """How big each phase is."""

    orders: int = 2000  # the naive burst, the pipeline burst and each scaling point
    js_messages: int = 20_000
    latency_seconds: float = 20.0
    latency_fraction: float = 0.7  # of the pipeline's peak, unless latency_rate is set
    latency_rate: float | None = None
    # A light load, where a batch is one order: its latency is a single order's.
    light_rate: float = 10.0
    burst: int = 10_000  # orders in flight for the resources phase
    warmup: int = 50  # untimed orders through fresh processes
    concurrency: int = 2  # prefork children of the worker, as Celery's default here
    scaling: tuple[int, ...] = (1, 2, 4)
    bridges: int = 2  # the second scaling axis
    # Light: what the replica phase's latency shows is the WAIT's, not queueing's.
    replica_latency_rate: float = 10.0
    sample_interval_s: float = 1.0
    skip: frozenset[str] = field(default_factory=frozenset)
    profile_dir: Path | None = None
    # Bridge settings every phase's bridges run with (``--bridge-setting``), under
    # what a phase sets itself (the unbatched light run, the replica modes).
    bridge_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def quick(cls) -> Plan:
        """Tiny sizes: every phase runs, in well under a minute."""
        return cls(
            orders=40,
            js_messages=2000,
            latency_seconds=3.0,
            burst=150,
            warmup=5,
            sample_interval_s=0.25,
        )

    def sized(self, **changes: Any) -> Plan:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def parameters(self) -> dict[str, object]:
        values = asdict(self)
        values["skip"] = sorted(self.skip)
        values["profile_dir"] = str(self.profile_dir) if self.profile_dir else None
        values["scaling"] = list(self.scaling)
        values["scaling_mode"] = (
            "one orders-worker with prefork concurrency C (C pool processes), one bridge; "
            f"then {self.bridges} bridges with concurrency {self.concurrency}"
        )
        values["bridge_fetch_batch"] = default_setting("bridge_fetch_batch")
        values["bridge_max_in_flight"] = default_setting("bridge_max_in_flight")
        for name in (
            "workflow_batch_max",
            "workflow_batch_linger_ms",
            "workflow_batches_in_flight",
            "workflow_batch_hold_ms",
        ):
            values[name] = default_setting(name)
        values["bridge_env"] = dict(self.bridge_env)
        values["light_unbatched"] = (
            f"{self.light_rate:g} orders/s for {self.latency_seconds:g} s again, fresh "
            "processes, bridges with " + ", ".join(f"{k}={v}" for k, v in UNBATCHED_ENV.items())
        )
        values["pipeline_worker"] = f"orders-worker --pool prefork --concurrency {self.concurrency}"
        values["naive_worker"] = f"celery worker --pool prefork --concurrency {self.concurrency}"
        values["process_env"] = dict(BENCH_ENV)
        values["replica_phase"] = (
            f"{replica.REPLICAS} Redis replica attached; bridges with "
            + ", then ".join(f"REDIS_WAIT_REPLICAS={v}" for v in replica.MODES.values())
        )
        values["tracing"] = "OTEL_* unset: spans recorded, not exported"
        return values


def default_setting(setting: str) -> Any:
    """A pipeline setting's default: what the benchmark's processes run with."""
    return BridgeSettings.model_fields[setting].default
