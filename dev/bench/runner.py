"""The benchmark's phases in order, on one set of servers, with progress.

Each pipeline phase starts fresh processes (so a process's peak memory is that
phase's), warms them up with a few orders that are not timed, measures, and
stops them. Every phase has its own order ids; the servers are shared. The
replica phase, last, attaches a Redis replica for itself and detaches it after.
The light load of the latency phase is offered twice, each time to fresh
processes: bridges as configured, then bridges that send every order alone
(``WORKFLOW_BATCH_MAX=1``), so that group commit's cost at a light load shows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from nats.js import JetStreamContext

from dev.bench import batches, commandstats, load, profile
from dev.bench.phases import jetstream, naive_chord, pipeline, replica, resources
from dev.bench.plan import UNBATCHED_ENV, Plan, default_setting
from dev.bench.stack import BenchStack


class Display(Protocol):
    """Where the runner reports progress: one bar per phase and a line per result."""

    def phase(self, description: str, total: int) -> AbstractContextManager[load.Progress]: ...

    def note(self, text: str) -> None: ...


class Runner:
    def __init__(self, plan: Plan, log_dir: Path, display: Display) -> None:
        self.plan = plan
        self.log_dir = log_dir
        self.display = display
        self.results: dict[str, Any] = {}
        self._run_id = uuid.uuid4().hex[:6]
        self._batches = 0
        self._stack: BenchStack | None = None

    def run(self) -> dict[str, Any]:
        with BenchStack(self.log_dir) as stack:
            self._stack = stack
            if self._wanted("jetstream"):
                self._jetstream()
            if self._wanted("noop"):
                self._noop()
            if self._wanted("naive"):
                self._naive()
            if self._wanted("pipeline") or self._wanted("latency"):
                self._with_pipeline(self.plan.concurrency, 1, self._pipeline)
            if self._wanted("latency"):
                self._light_latencies()
            if self._wanted("scaling"):
                self._scaling()
            if self._wanted("resources"):
                self._with_pipeline(self.plan.concurrency, 1, self._resources)
            if self._wanted("replica"):
                self._replica()
        return self.results

    # --- phases -----------------------------------------------------------------------

    def _jetstream(self) -> None:
        batch = self._batch("js", self.plan.js_messages)
        with self.display.phase("JetStream ceiling: consume + ack", len(batch)) as progress:
            result = asyncio.run(
                jetstream.run(
                    self.stack.nats.url, batch, default_setting("bridge_fetch_batch"), progress
                )
            )
        self.results["jetstream"] = result
        self.display.note(f"JetStream ceiling: {result['msgs_per_s']:,} msgs/s")

    def _noop(self) -> None:
        tasks = self.plan.orders
        self.stack.start_naive_worker(self.plan.concurrency)
        try:
            with self.display.phase("Celery no-op tasks", tasks) as progress:
                result = naive_chord.run_noop(
                    self.stack.naive_redis_url,
                    tasks,
                    self.plan.warmup,
                    progress,
                    self.stack.check_alive,
                )
        finally:
            self.stack.stop_all()
        result["worker"] = f"celery prefork, concurrency {self.plan.concurrency}, acks_late"
        self.results["noop"] = result
        self.display.note(f"Celery no-op tasks: {result['tasks_per_s']:,} tasks/s")

    def _naive(self) -> None:
        batch = self._batch("naive", self.plan.orders)
        self.stack.start_naive_worker(self.plan.concurrency)
        try:
            with self.display.phase("naive Celery chord", len(batch)) as progress:
                cpu_before = self.stack.cpu_s()
                result = naive_chord.run(
                    self.stack.naive_redis_url,
                    batch,
                    self.plan.warmup,
                    progress,
                    self.stack.check_alive,
                )
                cpu_after = self.stack.cpu_s()
        finally:
            self.stack.stop_all()
        # Warm-up included: the client cannot tell the two apart in its CPU time.
        result["cpu_s_per_order"] = pipeline.per_order(
            cpu_before, cpu_after, len(batch) + self.plan.warmup
        )
        result["worker"] = f"celery prefork, concurrency {self.plan.concurrency}"
        self.results["naive"] = result
        self.display.note(f"naive chord: {result['orders_per_s']:,} orders/s")

    async def _pipeline(self, js: JetStreamContext) -> None:
        if self._wanted("pipeline"):
            redis_url = self.stack.redis.url
            before = commandstats.snapshot(redis_url)
            result = await self._throughput(
                js, "pipeline", f"pipeline ({self._shape(self.plan.concurrency, 1)})", profiled=True
            )
            result["redis_commands"] = commandstats.per_order(
                before, commandstats.snapshot(redis_url), result["orders"]
            )
            self.results["pipeline"] = result
            self.display.note(
                f"pipeline: {result['orders_per_s']:,} orders/s, "
                f"{result['redis_commands']['per_order']} Redis commands per order, "
                f"batches of {result['batch_size']['mean']} orders on average"
            )
        if self._wanted("latency"):
            await self._latency(js)

    async def _latency(self, js: JetStreamContext) -> None:
        rate = self.plan.latency_rate
        if rate is None:
            peak = self.results.get("pipeline", {}).get("orders_per_s")
            if not peak:
                self.display.note("latency skipped: no peak measured and no --latency-rate")
                return
            rate = self.plan.latency_fraction * peak
        result = await self._latency_at(js, "latency", rate, f"latency at {rate:.0f} orders/s")
        self.results["latency"] = result
        self.display.note(
            f"latency at {result['offered_rate']} orders/s: p50 {result['p50']} ms, "
            f"p95 {result['p95']} ms, p99 {result['p99']} ms"
        )

    def _light_latencies(self) -> None:
        """The light load, offered to fresh processes twice: bridges as configured,
        then bridges that send every order to Celery alone (:data:`UNBATCHED_ENV`),
        the same way, so that the two compare group commit's cost and nothing else."""
        self.results["latency_light"] = self._light_latency("light", {})
        self.results["latency_light_unbatched"] = self._light_latency(
            "light-unbatched", UNBATCHED_ENV
        )

    def _light_latency(self, ids: str, env: Mapping[str, str]) -> dict[str, Any]:
        rate = self.plan.light_rate
        setting = "".join(f", {k}={v}" for k, v in env.items())
        description = f"latency at {rate:g} orders/s{setting}"
        found: dict[str, Any] = {"bridge_env": dict(env)}

        async def measure(js: JetStreamContext) -> None:
            found.update(await self._latency_at(js, ids, rate, description))

        self._with_pipeline(self.plan.concurrency, 1, measure, bridge_env=env)
        self.display.note(f"{description}: p50 {found['p50']} ms, p99 {found['p99']} ms")
        return found

    def _scaling(self) -> None:
        shapes = [(c, 1) for c in self.plan.scaling] + [(self.plan.concurrency, self.plan.bridges)]
        points = []
        for concurrency, bridges in shapes:
            main = self.results.get("pipeline")
            if (concurrency, bridges) == (self.plan.concurrency, 1) and main is not None:
                point = main  # the same shape as the pipeline phase: not measured twice
            else:
                point = self._scale_point(concurrency, bridges)
            points.append(
                {
                    "worker_concurrency": concurrency,
                    "bridges": bridges,
                    "orders_per_s": point["orders_per_s"],
                    "orders": point["orders"],
                    "cpu_s_per_order": point["cpu_s_per_order"],
                    "batch_size": point["batch_size"],
                }
            )
            shape, mean = self._shape(concurrency, bridges), point["batch_size"]["mean"]
            self.display.note(
                f"{shape}: {point['orders_per_s']:,} orders/s, batches of {mean} on average"
            )
        self.results["scaling"] = points

    def _scale_point(self, concurrency: int, bridges: int) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def measure(js: JetStreamContext) -> None:
            tag, shape = f"scale-{concurrency}-{bridges}", self._shape(concurrency, bridges)
            found.update(await self._throughput(js, tag, shape))

        self._with_pipeline(concurrency, bridges, measure)
        return found

    async def _resources(self, js: JetStreamContext) -> None:
        batch = self._batch("burst", self.plan.burst)
        with self.display.phase(f"{len(batch):,} orders in flight", len(batch)) as progress:
            interval, timeout = self.plan.sample_interval_s, self._timeout(len(batch))
            result = await batches.measured(
                self.stack, resources.run(js, self.stack, batch, interval, progress, timeout)
            )
        self.results["resources"] = result
        self.display.note(
            f"{len(batch):,} in flight: bridge peak RSS {result['bridge_peak_rss_mb']} MB, "
            f"worker peak RSS {result['worker_peak_rss_mb']} MB, "
            f"batches of {result['batch_size']['mean']} on average"
        )

    def _replica(self) -> None:
        """The cost of REDIS_WAIT_REPLICAS: one replica attached to both runs, so they
        differ by the WAIT alone, not by the replication stream."""
        runs: dict[str, dict[str, Any]] = {}
        with replica.attached(self.stack):
            for name, setting in replica.MODES.items():
                runs[name] = self._replica_run(setting)
        result = replica.summary(runs)
        self.results["replica"] = result
        self.display.note(f"1 replica, throughput auto / 0: {result['ratio_auto_vs_off']}")

    def _replica_run(self, setting: str) -> dict[str, Any]:
        """Throughput, then latency at a light rate, of fresh bridges started with
        ``REDIS_WAIT_REPLICAS=setting``; each with the WAITs it took."""
        found: dict[str, Any] = {"redis_wait_replicas": setting}
        expected = replica.REPLICAS if setting == "auto" else 0
        label = f"1 replica, REDIS_WAIT_REPLICAS={setting}"
        rate = self.plan.replica_latency_rate

        async def measure(js: JetStreamContext) -> None:
            await replica.await_replicas(self.stack, expected)
            found["replicas_waited_for"] = expected
            throughput = self._throughput(js, f"replica-{setting}", f"pipeline, {label}")
            found.update(await replica.counted(self.stack, throughput))
            tag, description = f"replica-latency-{setting}", f"latency at {rate:g}/s, {label}"
            latency = self._latency_at(js, tag, rate, description)
            found["latency"] = await replica.counted(self.stack, latency)

        env = {"REDIS_WAIT_REPLICAS": setting}
        self._with_pipeline(self.plan.concurrency, 1, measure, bridge_env=env)
        self.display.note(replica.describe(found))
        return found

    # --- helpers ----------------------------------------------------------------------

    async def _latency_at(
        self, js: JetStreamContext, tag: str, rate: float, description: str
    ) -> dict[str, Any]:
        """Orders offered at ``rate`` for the plan's latency duration; with the
        batches the bridges sent meanwhile."""
        count = max(2, round(rate * self.plan.latency_seconds))
        batch = self._batch(tag, count)
        with self.display.phase(description, count) as progress:
            measurement = pipeline.latency(
                js, self.stack, batch, rate, progress, self._timeout(count)
            )
            return await batches.measured(self.stack, measurement)

    async def _throughput(
        self, js: JetStreamContext, tag: str, description: str, *, profiled: bool = False
    ) -> dict[str, Any]:
        """A burst of the plan's size; with the batches the bridges sent meanwhile."""
        batch = self._batch(tag, self.plan.orders)
        recorder: AbstractContextManager[Any] = nullcontext()
        if profiled and self.plan.profile_dir is not None:
            recorder = profile.recording(
                self.plan.profile_dir,
                {"bridge": self.stack.bridges[0].pid, "worker": self.stack.workers[0].pid},
            )
        with self.display.phase(description, len(batch)) as progress, recorder as folded:
            measurement = pipeline.throughput(
                js, self.stack, batch, progress, self._timeout(len(batch))
            )
            result = await batches.measured(self.stack, measurement)
        if folded:
            result["profiled"] = True
            result["profile"] = {name: profile.top_functions(path) for name, path in folded.items()}
        return result

    def _with_pipeline(
        self,
        concurrency: int,
        bridges: int,
        work: Callable[[JetStreamContext], Coroutine[Any, Any, None]],
        bridge_env: Mapping[str, str] | None = None,
    ) -> None:
        """Fresh processes of the given shape, warmed up, then ``work``; stopped after.
        ``bridge_env`` is added to the bridges' environment."""
        env = {**dict(self.plan.bridge_env), **(bridge_env or {})}
        self.stack.start_pipeline(concurrency=concurrency, bridges=bridges, bridge_env=env)
        try:
            asyncio.run(self._warm_then(work))
        finally:
            self.stack.stop_all()

    async def _warm_then(
        self, work: Callable[[JetStreamContext], Coroutine[Any, Any, None]]
    ) -> None:
        async with load.jetstream(self.stack.nats.url) as js:
            warm = self._batch("warmup", self.plan.warmup)
            await pipeline.throughput(
                js, self.stack, warm, lambda _: None, self._timeout(len(warm))
            )
            await work(js)

    @property
    def stack(self) -> BenchStack:
        assert self._stack is not None, "the servers are not running"
        return self._stack

    def _batch(self, tag: str, count: int) -> load.Batch:
        self._batches += 1
        return load.make_batch(
            f"bench-{self._run_id}-{tag}-{self._batches}", count, seed=self._batches
        )

    def _wanted(self, phase: str) -> bool:
        return phase not in self.plan.skip

    @staticmethod
    def _shape(concurrency: int, bridges: int) -> str:
        return f"1 worker x {concurrency} processes, {bridges} bridge{'s' if bridges > 1 else ''}"

    @staticmethod
    def _timeout(orders: int) -> float:
        # Generous: a machine ten times slower than this one still finishes.
        return 120.0 + orders / 2.0
