"""Configuration from the environment, validated once at process start.

Variable names of the contract (``NATS_URL``, ``REDIS_URL``, ``PORT``, ...) are
read as they are; the project's own tuning knobs are documented in the README.
An invalid value stops the process with one line naming the variable
(:func:`load_settings` / :class:`ConfigError`); values are never echoed, so a
secret in a URL cannot leak through an error message.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _plain_seconds(value: object) -> object:
    # Operators write "30" far more often than ISO 8601 "PT30S"; accept both.
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return float(value)
    return value


PositiveSeconds = Annotated[timedelta, BeforeValidator(_plain_seconds), Field(gt=timedelta(0))]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # --- contract -----------------------------------------------------------------
    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    port: int = Field(8080, ge=0, le=65535)
    inventory_default_stock: int = Field(1000, ge=0)
    payment_decline_above: Decimal = Field(Decimal("10000.00"), ge=0, allow_inf_nan=False)
    payment_transient_failure_rate: float = Field(0.0, ge=0.0, le=1.0)
    payment_latency_ms: int = Field(0, ge=0, le=60_000)

    # --- JetStream ----------------------------------------------------------------
    orders_max_age: PositiveSeconds = timedelta(days=7)
    orders_duplicate_window: PositiveSeconds = timedelta(minutes=2)
    stream_replicas: int = Field(1, ge=1, le=5)
    # Deliveries of one message before it is dead-lettered by the bridge.
    max_deliveries: int = Field(5, ge=1, le=100)
    ack_wait: PositiveSeconds = timedelta(seconds=30)

    # --- bridge -------------------------------------------------------------------
    bridge_max_in_flight: int = Field(256, ge=1, le=100_000)
    bridge_fetch_batch: int = Field(64, ge=1, le=10_000)
    # A workflow that shows no progress for this long is sent again (its steps are
    # idempotent, so a second run cannot charge or reserve twice).
    workflow_stall_timeout: PositiveSeconds = timedelta(seconds=90)
    # Messages pending but none fetched for this long: re-subscribe (nats.py pull
    # subscriptions can stall after a server restart, nats-io/nats.py#504).
    consumer_stall_timeout: PositiveSeconds = timedelta(seconds=30)
    drain_timeout: PositiveSeconds = timedelta(seconds=20)
    nak_delay_max: PositiveSeconds = timedelta(seconds=30)
    nats_connect_timeout: PositiveSeconds = timedelta(seconds=5)

    # --- input limits -------------------------------------------------------------
    max_message_bytes: int = Field(1_048_576, ge=64)
    max_items: int = Field(1000, ge=1)
    max_id_length: int = Field(128, ge=1)
    max_quantity: int = Field(1_000_000, ge=1)

    # --- Celery -------------------------------------------------------------------
    task_max_retries: int = Field(8, ge=0, le=100)
    task_retry_backoff_max: PositiveSeconds = timedelta(seconds=30)
    # Starts of one task that may end with its worker process dying before the
    # task refuses to run (and the order fails over to redelivery, then the DLQ).
    task_max_worker_losses: int = Field(3, ge=1, le=100)

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        for server in value.split(","):
            scheme = urlsplit(server.strip()).scheme
            if scheme not in {"nats", "tls", "ws", "wss"}:
                raise ValueError("each server must be a nats://, tls://, ws:// or wss:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class ConfigError(Exception):
    """An invalid setting; ``str()`` is the one line to show the operator."""


def load_settings(**overrides: object) -> Settings:
    """Read and validate the environment; raise :class:`ConfigError` naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        variable = str(error["loc"][0]).upper() if error["loc"] else "configuration"
        raise ConfigError(f"invalid setting {variable}: {error['msg']}") from None


def redact_url(url: str) -> str:
    """The URL without its password, fit for logs (comma-separated lists kept)."""
    redacted = []
    for part in url.split(","):
        parts = urlsplit(part.strip())
        if parts.password is not None:
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            user = f"{parts.username}:***@" if parts.username else "***@"
            parts = parts._replace(netloc=user + host)
        redacted.append(urlunsplit(parts))
    return ",".join(redacted)
