"""Groups of settings that more than one process kind reads. A kind's settings
class (``WorkerSettings``, ``BridgeSettings``, ...) is made of the groups it needs,
and a function that needs one group takes only that group."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from orders.settings.base import ProcessSettings
from orders.settings.fields import PositiveSeconds, ReadableFile, check_tls, setting_error


class RedisConnection(ProcessSettings):
    """Where Redis is and how to reach it (SECURITY.md)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Used when REDIS_URL is rediss:// (and only then: set otherwise, an error).
    redis_tls_ca: ReadableFile = None
    redis_tls_cert: ReadableFile = None
    redis_tls_key: ReadableFile = None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _redis_tls_files(self) -> RedisConnection:
        check_tls("REDIS", self.redis_tls_ca, self.redis_tls_cert, self.redis_tls_key)
        redis_tls = self.redis_tls_ca or self.redis_tls_cert or self.redis_tls_key
        if redis_tls and urlsplit(self.redis_url).scheme != "rediss":
            raise setting_error(
                "REDIS_URL",
                "must be a rediss:// URL when REDIS_TLS_CA, REDIS_TLS_CERT or REDIS_TLS_KEY is set",
            )
        return self


class CeleryOptions(RedisConnection):
    """The Celery application's configuration: the same in the processes that send
    tasks (the bridge) and those that run them, so its retry policy is one."""

    task_max_retries: int = Field(8, ge=0, le=100)
    task_retry_backoff_max: PositiveSeconds = timedelta(seconds=30)
    # Workers send task events from the start (Flower turns them on anyway, within
    # seconds of seeing a worker; they cost three publishes per task).
    task_events: bool = False


class OrderLimits(ProcessSettings):
    """How large a valid order may be (larger ones are INVALID_ORDER)."""

    max_items: int = Field(1000, ge=1)
    max_id_length: int = Field(128, ge=1)
    max_quantity: int = Field(1_000_000, ge=1)


class Simulation(ProcessSettings):
    """The simulated inventory and payment gateway of the contract."""

    inventory_default_stock: int = Field(1000, ge=0)
    payment_decline_above: Decimal = Field(Decimal("10000.00"), ge=0, allow_inf_nan=False)
    payment_transient_failure_rate: float = Field(0.0, ge=0.0, le=1.0)
    payment_latency_ms: int = Field(0, ge=0, le=60_000)
