"""The ``web`` process: ``orders-web`` (Procfile), Flower for the pipeline's Celery app.

Flower can revoke and terminate tasks and shows every order's arguments, so it
never starts open to the network: ``FLOWER_BASIC_AUTH`` ("user:password", several
separated by commas) is required unless ``ORDERS_DEV_MODE=1``. Flower reads
that variable itself as well; it is validated here first so that a malformed
value stops the process with one line (which never shows the password)
instead of a Flower that rejects every login.
"""

from __future__ import annotations

import sys

from pydantic import SecretStr

from orders.settings import ConfigError, WebSettings, WorkerSettings, load_settings

EXIT_CONFIG = 2

BASIC_AUTH_VARIABLE = "FLOWER_BASIC_AUTH"
DEV_MODE_VARIABLE = "ORDERS_DEV_MODE"  # WebSettings.orders_dev_mode


def basic_auth_entries(secret: SecretStr | None) -> list[str] | None:
    """The ``user:password`` entries of ``FLOWER_BASIC_AUTH`` (a setting typed as a
    secret), or ``None`` if unset or empty.

    Raises:
        ConfigError: an entry without a user or a password (the message names the
            entry's position, never its text).
    """
    value = secret.get_secret_value().strip() if secret is not None else ""
    if not value:
        return None
    entries = [entry.strip() for entry in value.split(",")]
    for position, entry in enumerate(entries, start=1):
        user, colon, password = entry.partition(":")
        if not (user and colon and password):
            raise ConfigError(
                f"invalid setting {BASIC_AUTH_VARIABLE}: entry {position} is not 'user:password'"
            )
    return entries


def _fail(message: str) -> None:
    print(f"orders-web: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


def main(argv: list[str] | None = None) -> None:
    """Serve Flower on ``$PORT`` (extra arguments go to Flower)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = load_settings(WebSettings)
        # Flower's Celery app is the worker's: a bad value of its settings stops
        # this process here, under its own name, rather than inside the import below.
        load_settings(WorkerSettings)
        credentials = basic_auth_entries(settings.flower_basic_auth)
    except ConfigError as exc:
        _fail(str(exc))
        return
    if credentials is None and not settings.orders_dev_mode:
        _fail(
            f"{BASIC_AUTH_VARIABLE} is not set (user:password); set {DEV_MODE_VARIABLE}=1 "
            "to run Flower without authentication on a development machine"
        )
        return

    # Imported only now: building the app reads the settings validated above.
    from orders.worker import app

    flower_args = ["flower", f"--port={settings.port}", "--address=0.0.0.0"]
    if credentials is not None:
        # In-process arguments, so the password does not appear in `ps`.
        flower_args.append(f"--basic-auth={','.join(credentials)}")
    sys.exit(app.start([*flower_args, *args]) or 0)
