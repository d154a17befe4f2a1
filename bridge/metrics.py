"""Prometheus metrics of the bridge, served at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("orders_bridge_messages_received", "Messages fetched", registry=r)
        self.acked = Counter("orders_bridge_messages_acked", "Messages acked", registry=r)
        self.nakd = Counter(
            "orders_bridge_messages_nakd", "Messages nak'd with a delay", registry=r
        )
        self.dead_lettered = Counter(
            "orders_bridge_messages_dead_lettered",
            "Messages sent to the DLQ",
            ["cause"],
            registry=r,
        )
        self.duplicates = Counter(
            "orders_bridge_duplicates",
            "Deliveries of orders whose outcome was already stored",
            registry=r,
        )
        self.outcomes = Counter(
            "orders_bridge_outcomes",
            "Outcome events published",
            ["outcome", "reason"],
            registry=r,
        )
        self.workflows_sent = Counter(
            "orders_bridge_workflows_sent", "Workflows sent to Celery", ["cause"], registry=r
        )
        self.in_flight = Gauge("orders_bridge_in_flight", "Messages being processed", registry=r)
        self.end_to_end = Histogram(
            "orders_bridge_end_to_end_seconds",
            "From the input stored in JetStream to its final ack or dead letter",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=r,
        )
        self.consumer_pending = Gauge(
            "orders_bridge_consumer_pending",
            "Messages of the durable consumer not yet delivered (last consumer info)",
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "orders_bridge_consumer_ack_pending",
            "Messages delivered to the bridges and not yet acked (last consumer info)",
            registry=r,
        )
        self.consumer_redelivered = Gauge(
            "orders_bridge_consumer_redelivered",
            "Messages delivered more than once and not yet acked (last consumer info)",
            registry=r,
        )
        self.ready = Gauge(
            "orders_bridge_ready",
            "1 while connected to NATS and Redis and consuming, else 0",
            registry=r,
        )
        self.latency = Histogram(
            "orders_bridge_processing_seconds",
            "From fetch to ack of one message",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.redis_replicas = Gauge(
            "orders_bridge_redis_wait_replicas",
            "Redis replicas an outcome waits for before it is published (REDIS_WAIT_REPLICAS)",
            registry=r,
        )
        self.redis_wait = Histogram(
            "orders_bridge_redis_wait_seconds",
            "One WAIT round trip for the outcomes of the orders finishing together",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.redis_replicas_behind = Counter(
            "orders_bridge_redis_replicas_behind",
            "WAITs the replicas did not answer in time (those outcomes were held back)",
            registry=r,
        )
        self.redis_server_changes = Counter(
            "orders_bridge_redis_server_changes",
            "New Redis server identities behind REDIS_URL (failovers, restarts)",
            registry=r,
        )
