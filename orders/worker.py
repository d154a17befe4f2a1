"""The ``worker`` process: ``orders-worker`` (Procfile) or ``celery -A orders.worker``.

``app`` is built from the environment at import, which reads settings but
connects to nothing; ``main`` validates settings first so a bad value stops
the process with one line instead of a traceback from deep inside Celery.

Logging and tracing are wired through Celery's signals: logs in the project's
format (``LOG_FORMAT``) instead of Celery's, and OpenTelemetry set up in each
prefork child after the fork, where tasks run (a tracer provider's export
thread does not survive a fork; opentelemetry-python-contrib#609), and flushed
before the child exits.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery, signals
from celery.platforms import EX_FAILURE
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from orders import names, telemetry
from orders.adapters.redis_client import redis_refusal
from orders.bootstrap import redis_client
from orders.celery_app import create_app
from orders.logs import configure_logging
from orders.settings import ConfigError, WorkerSettings, load_settings, redact_url

SERVICE_NAME = "orders-worker"


def _settings_from_env() -> WorkerSettings:
    try:
        settings = load_settings(WorkerSettings)
        telemetry.check_tracing_config()
    except ConfigError as exc:
        sys.exit(f"orders-worker: {exc}")
    return settings


settings = _settings_from_env()
app: Celery = create_app(settings)
app.autodiscover_tasks(["orders"], related_name="tasks", force=True)

# After an unrecoverable error (kombu's connection-loss race, kombu#582, when Redis
# goes away) Celery stops warm, and that stop was seen to hang: a process alive and
# consuming nothing, which no supervisor restarts. Its tasks are acked late, so they
# are redelivered anyway: past this deadline the process exits, and is restarted.
FAILED_STOP_DEADLINE_S = 10.0


# The base is app.Worker, Celery's Worker subclassed for this app at run time; mypy
# takes a base class by name only, so it checks against Celery's Worker itself.
if TYPE_CHECKING:
    from celery.apps.worker import Worker as _AppWorker
else:
    _AppWorker = app.Worker


class _BoundedStopWorker(_AppWorker):
    def stop(self, in_sighandler: bool = False, exitcode: int | None = None) -> None:
        if exitcode == EX_FAILURE:
            deadline = threading.Timer(FAILED_STOP_DEADLINE_S, os._exit, args=(EX_FAILURE,))
            deadline.daemon = True
            deadline.start()
        super().stop(in_sighandler=in_sighandler, exitcode=exitcode)


app.Worker = _BoundedStopWorker  # type: ignore[misc]  # stub: a property; Celery: a settable cached_property


@signals.setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connected, so Celery leaves the root logger to us.
    configure_logging(settings.log_format, settings.log_level)


def _start_tracing() -> None:
    telemetry.setup_tracing(SERVICE_NAME)
    CeleryInstrumentor().instrument()


@signals.worker_init.connect
def _tracing_in_main_process(sender: Any = None, **_: Any) -> None:
    # solo and thread pools run tasks in this process; prefork in its children.
    if "prefork" not in str(getattr(sender, "pool_cls", "prefork")).lower():
        _start_tracing()


@signals.worker_process_init.connect
def _tracing_in_child(**_: Any) -> None:
    _start_tracing()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush_tracing(**_: Any) -> None:
    telemetry.shutdown_tracing()


def _check_redis() -> None:
    """Stop on credentials or a certificate Redis refuses: Celery would retry
    them forever, one log line at a time. A Redis that does not answer yet is
    left to Celery's own connection retries."""
    client = redis_client(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        what = redis_refusal(exc)
        if what is not None:
            url = redact_url(settings.redis_url)
            sys.exit(f"orders-worker: cannot start: Redis {what} at {url}")
    finally:
        client.close()


def main(argv: list[str] | None = None) -> None:
    """Run a worker consuming every pipeline queue (extra arguments go to Celery)."""
    args = sys.argv[1:] if argv is None else argv
    configure_logging(settings.log_format, settings.log_level)  # before Celery says anything
    _check_redis()
    queues = ",".join(names.ALL_QUEUES)
    # Celery prints its start-up banner straight to stdout: not a JSON line.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    app.worker_main([*quiet, "worker", "--queues", queues, "--loglevel", settings.log_level, *args])
