"""The settings of the bridge and of the ``orders`` command line, each with only
the variables it reads (:mod:`orders.settings` has the groups they share)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from orders.settings import (
    CeleryOptions,
    OrderLimits,
    RedisConnection,
    Simulation,
    WebSettings,
    WorkerSettings,
)
from orders.settings.base import ProcessSettings
from orders.settings.fields import PositiveSeconds, ReadableFile, check_tls, setting_error


def _nats_creds_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    text = path.read_text(errors="replace")
    if "BEGIN NATS USER JWT" not in text or "BEGIN USER NKEY SEED" not in text:
        raise ValueError("not a NATS credentials file (a user JWT and its NKey seed)")
    return path


def _nkey_seed_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    seed = path.read_text(errors="replace").strip()
    if not re.fullmatch(r"SU[A-Z2-7]{56}", seed):
        raise ValueError("not an NKey user seed file (one line starting with SU)")
    return path


NatsCredsFile = Annotated[ReadableFile, AfterValidator(_nats_creds_file)]
NkeySeedFile = Annotated[ReadableFile, AfterValidator(_nkey_seed_file)]


def _replica_count(value: object) -> object:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if not re.fullmatch(r"\d{1,3}", text):
            raise ValueError("must be auto, or a number of replicas (0 turns the wait off)")
        return int(text)
    return value


# ``auto``: as many replicas as the primary reports online; a number: exactly that many.
ReplicaCount = Annotated[
    Literal["auto"] | Annotated[int, Field(ge=0, le=100)], BeforeValidator(_replica_count)
]


class NatsConnection(ProcessSettings):
    """Where NATS is and how to authenticate (SECURITY.md). Credentials in NATS_URL
    (user:password@, token@) need no setting; these are the other forms nats-py
    supports. Paths, checked readable at start."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_connect_timeout: PositiveSeconds = timedelta(seconds=5)
    nats_creds: NatsCredsFile = None  # user JWT + NKey seed (operator / decentralized auth)
    nats_nkey: NkeySeedFile = None  # NKey seed of a user in the server's authorization block
    nats_tls_ca: ReadableFile = None
    nats_tls_cert: ReadableFile = None
    nats_tls_key: ReadableFile = None
    # Where replies to this client go (JetStream API answers, pulled messages). A
    # prefix of its own lets the server's permissions keep other users, who may
    # subscribe to _INBOX.> for their own replies, from reading the bridge's.
    nats_inbox_prefix: str = Field("_INBOX", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        for server in value.split(","):
            scheme = urlsplit(server.strip()).scheme
            if scheme not in {"nats", "tls", "ws", "wss"}:
                raise ValueError("each server must be a nats://, tls://, ws:// or wss:// URL")
        if len({_userinfo(server) for server in value.split(",")} - {None}) > 1:
            # nats-py sends one user/password or token to every server of the pool
            # (and to servers a cluster announces), so they cannot differ.
            raise ValueError("servers must not carry different credentials")
        return value

    @model_validator(mode="after")
    def _nats_security_files(self) -> NatsConnection:
        if self.nats_creds and self.nats_nkey:
            raise setting_error("NATS_NKEY", "NATS_CREDS is set too; use one of them")
        check_tls("NATS", self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key)
        return self


class Topology(ProcessSettings):
    """What the streams and the durable consumer are made of. Whoever finds them
    missing creates them (the bridge, and ``orders publish`` before the first
    bridge ran), so both read these."""

    orders_max_age: PositiveSeconds = timedelta(days=7)
    orders_duplicate_window: PositiveSeconds = timedelta(minutes=2)
    stream_replicas: int = Field(1, ge=1, le=5)
    # Deliveries of one message before it is dead-lettered by the bridge.
    max_deliveries: int = Field(5, ge=1, le=100)
    ack_wait: PositiveSeconds = timedelta(seconds=30)
    # Messages one bridge processes at once; the consumer's max_ack_pending follows it.
    bridge_max_in_flight: int = Field(256, ge=1, le=100_000)


class MessageLimits(OrderLimits):
    """The order limits, and the largest input message read at all."""

    max_message_bytes: int = Field(1_048_576, ge=64)


class BridgeSettings(NatsConnection, CeleryOptions, Topology, MessageLimits):
    """``orders-bridge``: NATS, Redis, the Celery app it sends workflows with, the
    topology, the input limits and its own timing."""

    port: int = Field(8080, ge=0, le=65535)
    bridge_fetch_batch: int = Field(64, ge=1, le=10_000)
    # A workflow that shows no progress for this long is sent again (its steps are
    # idempotent, so a second run cannot charge or reserve twice).
    workflow_stall_timeout: PositiveSeconds = timedelta(seconds=90)
    # Messages pending but none fetched for this long: re-subscribe (nats.py pull
    # subscriptions can stall after a server restart, nats-io/nats.py#504).
    consumer_stall_timeout: PositiveSeconds = timedelta(seconds=30)
    drain_timeout: PositiveSeconds = timedelta(seconds=20)
    # How long an outcome event or dead letter that JetStream refuses (a stream
    # leader election, a server restart) is retried in place before the input is
    # nak'd: each nak would spend one of the order's deliveries.
    publish_retry_window: PositiveSeconds = timedelta(seconds=60)
    nak_delay_max: PositiveSeconds = timedelta(seconds=30)
    # Group commit: new workflows of one moment (one fetch) sent to Celery as one
    # canvas, at most this many; waiting at most the linger for company. 1: alone.
    workflow_batch_max: int = Field(32, ge=1, le=1000)
    workflow_batch_linger_ms: float = Field(1.0, ge=0, le=100)
    # Self-clocking: while this many of the bridge's canvases are at work, new
    # workflows wait (at most the hold) for the next canvas instead of going one by
    # one: batches grow with the load (relay.batching).
    workflow_batches_in_flight: int = Field(2, ge=1, le=1000)
    workflow_batch_hold_ms: float = Field(50.0, ge=0, le=10_000)
    # Before an outcome event is published, the Redis replicas acknowledge every
    # write it rests on (WAIT), so a failover to one of them cannot lose it.
    redis_wait_replicas: ReplicaCount = "auto"
    # Below the Redis clients' 15 s socket timeout, which would cut a longer WAIT off.
    redis_wait_timeout_ms: int = Field(1000, ge=1, le=10_000)
    # Also the primary's own fsync of its append-only file (WAITAOF 1 0, Redis and
    # Valkey 7.2+): with appendfsync everysec, up to a second more per outcome.
    redis_wait_aof: bool = False

    @model_validator(mode="after")
    def _publish_retries_within_duplicate_window(self) -> BridgeSettings:
        # A retried publish whose first attempt was stored but not acknowledged is
        # dropped by the stream's duplicate window, only while that window lasts:
        # retrying longer could store an outcome event or a dead letter twice.
        if self.publish_retry_window >= self.orders_duplicate_window:
            raise setting_error(
                "PUBLISH_RETRY_WINDOW",
                "must be shorter than ORDERS_DUPLICATE_WINDOW "
                f"({self.orders_duplicate_window.total_seconds():g}s), or a retried "
                "publish could be stored twice",
            )
        return self


class CliSettings(NatsConnection, RedisConnection, Topology, MessageLimits, Simulation):
    """The ``orders`` command line: both servers, the topology ``publish`` may
    create, the limits its orders keep to, and the stock and decline threshold it
    reports and aims at."""


def _userinfo(url: str) -> tuple[str, str | None] | None:
    parts = urlsplit(url.strip())
    if parts.username is None:
        return None
    return unquote(parts.username), None if parts.password is None else unquote(parts.password)


# Every process kind's settings, for tools that check or clear all of them at once
# (``orders run`` validates each before starting anything).
ALL_KINDS: tuple[type[ProcessSettings], ...] = (
    BridgeSettings,
    CliSettings,
    WorkerSettings,
    WebSettings,
)
