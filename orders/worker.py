"""The ``worker`` process: ``orders-worker`` (Procfile) or ``celery -A orders.worker``.

``app`` is built from the environment at import, which reads settings but
connects to nothing; ``main`` validates settings first so a bad value stops
the process with one line instead of a traceback from deep inside Celery.
"""

from __future__ import annotations

import sys

from celery import Celery

from orders import names
from orders.celery_app import create_app
from orders.settings import ConfigError, load_settings


def _app_from_env() -> Celery:
    try:
        return create_app(load_settings())
    except ConfigError as exc:
        sys.exit(f"orders-worker: {exc}")


app = _app_from_env()
app.autodiscover_tasks(["orders"], related_name="tasks", force=True)


def main(argv: list[str] | None = None) -> None:
    """Run a worker consuming every pipeline queue (extra arguments go to Celery)."""
    args = sys.argv[1:] if argv is None else argv
    app.worker_main(["worker", "--queues", ",".join(names.ALL_QUEUES), "--loglevel", "INFO", *args])
