"""What every process's settings share: reading the environment, the log
settings, one-line errors, and URLs printed without their secrets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Query parameters of a URL whose values are redacted like a password.
_SECRET_QUERY_KEY = re.compile(r"pass|token|secret", re.IGNORECASE)


class ProcessSettings(BaseSettings):
    """The base of each process kind's settings (``WorkerSettings``, ``BridgeSettings``,
    ...): variable names as the fields', case-insensitive; variables another kind
    reads are ignored, so one environment file serves every process."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

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

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Passwords in URLs stay out of any printed configuration (SecretStr
        # fields mask themselves).
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in {"nats_url", "redis_url"} else value


class ConfigError(Exception):
    """An invalid setting; ``str()`` is the one line to show the operator."""


Kind = TypeVar("Kind", bound=ProcessSettings)


def load_settings(kind: type[Kind], **overrides: Any) -> Kind:
    """Read and validate the environment variables ``kind`` reads; raise
    :class:`ConfigError` naming the variable. ``overrides`` take the place of
    variables (validated as the environment's are) and must be fields of ``kind``."""
    unknown = sorted(set(overrides) - set(kind.model_fields))
    if unknown:
        # A caller's mistake, not an operator's: extra="ignore" would drop it silently.
        raise TypeError(f"{kind.__name__} has no setting {', '.join(unknown)}")
    try:
        return kind(**overrides)
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
