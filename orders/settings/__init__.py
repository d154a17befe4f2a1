"""Configuration from the environment, validated once at process start.

Each kind of process has a settings class with only the variables it reads: here
the order application's (:class:`WorkerSettings`, :class:`WebSettings`), in
:mod:`bridge.settings` the bridge's and the command line's. They are made of the
groups in :mod:`orders.settings.groups`, so a variable two kinds read is declared
once. Variable names of the contract (``NATS_URL``, ``REDIS_URL``, ``PORT``, ...)
are read as they are; the project's own tuning knobs are documented in the
README. An invalid value stops the process with one line naming the variable
(:func:`load_settings` / :class:`ConfigError`); values are never echoed, so a
secret in a URL cannot leak through an error message.
"""

from __future__ import annotations

from pydantic import Field

from orders.settings.base import ConfigError, ProcessSettings, load_settings, redact_url
from orders.settings.fields import Flag, OptionalSecret
from orders.settings.groups import CeleryOptions, OrderLimits, RedisConnection, Simulation

__all__ = [
    "CeleryOptions",
    "ConfigError",
    "OrderLimits",
    "ProcessSettings",
    "RedisConnection",
    "Simulation",
    "WebSettings",
    "WorkerSettings",
    "load_settings",
    "redact_url",
]


class WorkerSettings(CeleryOptions, OrderLimits, Simulation):
    """``orders-worker``: Redis, the Celery app, the order limits and the simulation."""

    # Starts of one task that may end with its worker process dying before the
    # task refuses to run (and the order fails over to redelivery, then the DLQ).
    task_max_worker_losses: int = Field(3, ge=1, le=100)


class WebSettings(ProcessSettings):
    """``orders-web``: Flower's port and access. Flower's Celery app is the worker's,
    so the web process reads :class:`WorkerSettings` too."""

    port: int = Field(8080, ge=0, le=65535)
    # Read by orders-web (format checked there); a secret, so masked wherever the
    # settings are printed.
    flower_basic_auth: OptionalSecret = None
    # A development machine: orders-web may serve Flower without authentication.
    orders_dev_mode: Flag = False
