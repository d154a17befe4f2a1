"""The value types settings are made of, and the checks that span fields.

Each type accepts what an operator writes in an environment file (``30`` as
well as ``PT30S``, an empty value as "not set") and says what is wrong in a
message that never echoes the value, so a secret cannot leak through it.
"""

from __future__ import annotations

import re
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr
from pydantic_core import PydanticCustomError


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


def _blank_is_false(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return False
    return value


# 1/true/yes or 0/false/no (pydantic's booleans); empty is false.
Flag = Annotated[bool, BeforeValidator(_blank_is_false)]

ReadableFile = Annotated[Path | None, BeforeValidator(_blank_is_unset), AfterValidator(_readable)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_blank_is_unset)]


def setting_error(variable: str, detail: str) -> PydanticCustomError:
    """An error of a check across fields: it has no field location, so it names its
    variable itself (:func:`orders.settings.load_settings` shows that name)."""
    return PydanticCustomError(
        "setting", "{variable}: {detail}", {"variable": variable, "detail": detail}
    )


def check_tls(prefix: str, ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """CA, certificate and key load as Python's ssl module will load them later."""
    if cert and not key:
        raise setting_error(f"{prefix}_TLS_KEY", f"required with {prefix}_TLS_CERT")
    if key and not cert:
        raise setting_error(f"{prefix}_TLS_CERT", f"required with {prefix}_TLS_KEY")
    context = ssl.create_default_context()
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError):
            raise setting_error(f"{prefix}_TLS_CA", "no PEM certificate in that file") from None
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or "not a PEM certificate and its key"
            raise setting_error(
                f"{prefix}_TLS_CERT",
                f"certificate and {prefix}_TLS_KEY do not load together ({reason})",
            ) from None
