"""Configuration from the environment, validated once at process start.

Variable names of the contract (``NATS_URL``, ``REDIS_URL``, ``PORT``, ...) are
read as they are; the project's own tuning knobs are documented in the README.
An invalid value stops the process with one line naming the variable
(:func:`load_settings` / :class:`ConfigError`); values are never echoed, so a
secret in a URL cannot leak through an error message.
"""

from __future__ import annotations

import re
import ssl
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict


def _plain_seconds(value: object) -> object:
    # Operators write "30" far more often than ISO 8601 "PT30S"; accept both.
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return float(value)
    return value


PositiveSeconds = Annotated[timedelta, BeforeValidator(_plain_seconds), Field(gt=timedelta(0))]


def _blank_is_unset(value: object) -> object:
    # `NATS_CREDS=` in a compose file or .env means "not set", not "the file ''".
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _readable(path: Path | None) -> Path | None:
    # Checked at start, so a missing secret file stops the process with one line
    # instead of failing at the first (re)connect. The path is not echoed.
    if path is None:
        return None
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot read that file ({reason.lower()})") from None
    return path


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


def _blank_is_false(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return False
    return value


# 1/true/yes or 0/false/no (pydantic's booleans); empty is false.
Flag = Annotated[bool, BeforeValidator(_blank_is_false)]

ReadableFile = Annotated[Path | None, BeforeValidator(_blank_is_unset), AfterValidator(_readable)]
NatsCredsFile = Annotated[ReadableFile, AfterValidator(_nats_creds_file)]
NkeySeedFile = Annotated[ReadableFile, AfterValidator(_nkey_seed_file)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_blank_is_unset)]

# Query parameters of a URL whose values are redacted like a password.
_SECRET_QUERY_KEY = re.compile(r"pass|token|secret", re.IGNORECASE)


def _setting_error(variable: str, detail: str) -> PydanticCustomError:
    # A cross-field error has no field location; it names its variable itself.
    return PydanticCustomError(
        "setting", "{variable}: {detail}", {"variable": variable, "detail": detail}
    )


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
    # How long an outcome event or dead letter that JetStream refuses (a stream
    # leader election, a server restart) is retried in place before the input is
    # nak'd: each nak would spend one of the order's deliveries.
    publish_retry_window: PositiveSeconds = timedelta(seconds=60)
    nak_delay_max: PositiveSeconds = timedelta(seconds=30)
    nats_connect_timeout: PositiveSeconds = timedelta(seconds=5)
    # Before an outcome event is published, the Redis replicas acknowledge every
    # write it rests on (WAIT), so a failover to one of them cannot lose it.
    redis_wait_replicas: ReplicaCount = "auto"
    # Below the Redis clients' 15 s socket timeout, which would cut a longer WAIT off.
    redis_wait_timeout_ms: int = Field(1000, ge=1, le=10_000)
    # Also the primary's own fsync of its append-only file (WAITAOF 1 0, Redis and
    # Valkey 7.2+): with appendfsync everysec, up to a second more per outcome.
    redis_wait_aof: bool = False

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
    # Workers send task events from the start (Flower turns them on anyway, within
    # seconds of seeing a worker; they cost three publishes per task).
    task_events: bool = False

    # --- security (SECURITY.md) ----------------------------------------------------
    # Credentials in NATS_URL (user:password@, token@) need no setting; these are
    # the other forms nats-py supports. Paths, checked readable at start.
    nats_creds: NatsCredsFile = None  # user JWT + NKey seed (operator / decentralized auth)
    nats_nkey: NkeySeedFile = None  # NKey seed of a user in the server's authorization block
    nats_tls_ca: ReadableFile = None
    nats_tls_cert: ReadableFile = None
    nats_tls_key: ReadableFile = None
    # Where replies to this client go (JetStream API answers, pulled messages). A
    # prefix of its own lets the server's permissions keep other users, who may
    # subscribe to _INBOX.> for their own replies, from reading the bridge's.
    nats_inbox_prefix: str = Field("_INBOX", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    # Used when REDIS_URL is rediss:// (and only then: set otherwise, an error).
    redis_tls_ca: ReadableFile = None
    redis_tls_cert: ReadableFile = None
    redis_tls_key: ReadableFile = None
    # Read by orders-web (format checked there); a secret, so masked wherever the
    # settings are printed.
    flower_basic_auth: OptionalSecret = None
    # A development machine: orders-web may serve Flower without authentication.
    orders_dev_mode: Flag = False

    # --- logs ---------------------------------------------------------------------
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

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

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _publish_retries_within_duplicate_window(self) -> Settings:
        # A retried publish whose first attempt was stored but not acknowledged is
        # dropped by the stream's duplicate window, only while that window lasts:
        # retrying longer could store an outcome event or a dead letter twice.
        if self.publish_retry_window >= self.orders_duplicate_window:
            raise _setting_error(
                "PUBLISH_RETRY_WINDOW",
                "must be shorter than ORDERS_DUPLICATE_WINDOW "
                f"({self.orders_duplicate_window.total_seconds():g}s), or a retried "
                "publish could be stored twice",
            )
        return self

    @model_validator(mode="after")
    def _security_files(self) -> Settings:
        if self.nats_creds and self.nats_nkey:
            raise _setting_error("NATS_NKEY", "NATS_CREDS is set too; use one of them")
        _check_tls("NATS", self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key)
        _check_tls("REDIS", self.redis_tls_ca, self.redis_tls_cert, self.redis_tls_key)
        redis_tls = self.redis_tls_ca or self.redis_tls_cert or self.redis_tls_key
        if redis_tls and urlsplit(self.redis_url).scheme != "rediss":
            raise _setting_error(
                "REDIS_URL",
                "must be a rediss:// URL when REDIS_TLS_CA, REDIS_TLS_CERT or REDIS_TLS_KEY is set",
            )
        return self

    def __repr_args__(self) -> Any:
        # Passwords in URLs stay out of any printed configuration (SecretStr
        # fields mask themselves).
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in {"nats_url", "redis_url"} else value


def _userinfo(url: str) -> tuple[str, str | None] | None:
    parts = urlsplit(url.strip())
    if parts.username is None:
        return None
    return unquote(parts.username), None if parts.password is None else unquote(parts.password)


def _check_tls(prefix: str, ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """CA, certificate and key load as Python's ssl module will load them later."""
    if cert and not key:
        raise _setting_error(f"{prefix}_TLS_KEY", f"required with {prefix}_TLS_CERT")
    if key and not cert:
        raise _setting_error(f"{prefix}_TLS_CERT", f"required with {prefix}_TLS_KEY")
    context = ssl.create_default_context()
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError):
            raise _setting_error(f"{prefix}_TLS_CA", "no PEM certificate in that file") from None
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or "not a PEM certificate and its key"
            raise _setting_error(
                f"{prefix}_TLS_CERT",
                f"certificate and {prefix}_TLS_KEY do not load together ({reason})",
            ) from None


class ConfigError(Exception):
    """An invalid setting; ``str()`` is the one line to show the operator."""


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment; raise :class:`ConfigError` naming the variable."""
    try:
        # Any field's value, of any type: pydantic validates it as it does the environment's.
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        if not error["loc"] and error["type"] == "setting":
            context = error.get("ctx") or {}
            variable, message = context["variable"], context["detail"]
        else:
            variable = str(error["loc"][0]).upper() if error["loc"] else "configuration"
            message = error["msg"]
        raise ConfigError(f"invalid setting {variable}: {message}") from None


def redact_url(url: str) -> str:
    """The URL without its secrets, fit for logs (comma-separated lists kept).

    A password becomes ``***``; so does a user part without a password, which
    NATS reads as a token (``nats://TOKEN@host``), and the value of a query
    parameter named like a password, token or secret.
    """
    redacted = []
    for part in url.split(","):
        parts = urlsplit(part.strip())
        userinfo, at, host = parts.netloc.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            parts = parts._replace(netloc=(f"{user}:***@" if colon and user else "***@") + host)
        if parts.query:
            pairs = []
            for pair in parts.query.split("&"):
                key, equals, _ = pair.partition("=")
                pairs.append(f"{key}=***" if equals and _SECRET_QUERY_KEY.search(key) else pair)
            parts = parts._replace(query="&".join(pairs))
        redacted.append(urlunsplit(parts))
    return ",".join(redacted)
