"""Prometheus metrics of a relay process, served at ``GET /metrics``, named
``<prefix>_...`` after the application (``orders_bridge_messages_acked``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    def __init__(self, prefix: str = "relay", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._deliveries(prefix, self.registry)
        self._consumer(prefix, self.registry)
        self._redis(prefix, self.registry)

    def _deliveries(self, prefix: str, r: CollectorRegistry) -> None:
        self.received = Counter(f"{prefix}_messages_received", "Messages fetched", registry=r)
        self.acked = Counter(f"{prefix}_messages_acked", "Messages acked", registry=r)
        self.nakd = Counter(f"{prefix}_messages_nakd", "Messages nak'd with a delay", registry=r)
        self.dead_lettered = Counter(
            f"{prefix}_messages_dead_lettered",
            "Messages sent to the DLQ",
            ["cause"],
            registry=r,
        )
        self.duplicates = Counter(
            f"{prefix}_duplicates",
            "Deliveries of inputs whose outcome was already stored",
            registry=r,
        )
        self.outcomes = Counter(
            f"{prefix}_outcomes",
            "Outcome events published",
            ["outcome", "reason"],
            registry=r,
        )
        self.workflows_sent = Counter(
            f"{prefix}_workflows_sent", "Workflows sent to Celery", ["cause"], registry=r
        )
        self.in_flight = Gauge(f"{prefix}_in_flight", "Messages being processed", registry=r)
        self.end_to_end = Histogram(
            f"{prefix}_end_to_end_seconds",
            "From the input stored in JetStream to its final ack or dead letter",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=r,
        )

    def _consumer(self, prefix: str, r: CollectorRegistry) -> None:
        self.consumer_pending = Gauge(
            f"{prefix}_consumer_pending",
            "Messages of the durable consumer not yet delivered (last consumer info)",
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            f"{prefix}_consumer_ack_pending",
            "Messages delivered to the bridges and not yet acked (last consumer info)",
            registry=r,
        )
        self.consumer_redelivered = Gauge(
            f"{prefix}_consumer_redelivered",
            "Messages delivered more than once and not yet acked (last consumer info)",
            registry=r,
        )
        self.ready = Gauge(
            f"{prefix}_ready",
            "1 while connected to NATS and Redis and consuming, else 0",
            registry=r,
        )
        self.workflow_batch_size = Histogram(
            f"{prefix}_workflow_batch_size",
            "New workflows sent to Celery in one canvas (1: alone)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.latency = Histogram(
            f"{prefix}_processing_seconds",
            "From fetch to ack of one message",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )

    def _redis(self, prefix: str, r: CollectorRegistry) -> None:
        self.redis_replicas = Gauge(
            f"{prefix}_redis_wait_replicas",
            "Redis replicas an outcome waits for before it is published (REDIS_WAIT_REPLICAS)",
            registry=r,
        )
        self.redis_wait = Histogram(
            f"{prefix}_redis_wait_seconds",
            "One WAIT round trip for the outcomes of the orders finishing together",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.redis_replicas_behind = Counter(
            f"{prefix}_redis_replicas_behind",
            "WAITs the replicas did not answer in time (those outcomes were held back)",
            registry=r,
        )
        self.redis_server_changes = Counter(
            f"{prefix}_redis_server_changes",
            "New Redis server identities behind REDIS_URL (failovers, restarts)",
            registry=r,
        )
