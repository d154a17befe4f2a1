"""This project's own processes started as children, for the benchmark and the
test suites: their commands, a clean environment, and the end of their logs.

A child runs the installed console script (``orders-bridge``, ``orders-worker``)
when the current interpreter has one next to it, as a deployment would, and the
module otherwise (a checkout run with ``python -m``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from bridge.settings import ALL_KINDS
from orders import names

_BIN = Path(sys.executable).parent


def bridge_command() -> list[str]:
    return _script("orders-bridge", "bridge.main")


def worker_command(*args: str) -> list[str]:
    """``orders-worker`` (every queue) with ``args`` added, e.g. ``--concurrency 2``."""
    entry_point = _BIN / "orders-worker"
    if entry_point.is_file():
        return [str(entry_point), *args]
    queues = ",".join(names.ALL_QUEUES)
    return [*celery_command(), "-A", "orders.worker", "worker", "-Q", queues, *args]


def celery_command() -> list[str]:
    return _script("celery", "celery")


def child_env(
    nats_url: str, redis_url: str, port: int, *overrides: Mapping[str, str]
) -> dict[str, str]:
    """The caller's environment less any pipeline setting or ``OTEL_*`` variable it
    carries (a developer's shell must not change what is tested or measured), plus
    the servers, the HTTP port, and ``overrides`` in order (a later one wins)."""
    setting_vars = {name.upper() for kind in ALL_KINDS for name in kind.model_fields}
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in setting_vars and not key.upper().startswith("OTEL_")
    }
    env.update(NATS_URL=nats_url, REDIS_URL=redis_url, PORT=str(port), PYTHONUNBUFFERED="1")
    for override in overrides:
        env.update(override)
    return env


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log``, in a session of its own:
    a prefork worker and its pool children can then be signalled as one group."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a child's log, headed by its path."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return f"--- last {lines} lines of {path} ---\n" + "\n".join(text[-lines:])


def _script(name: str, module: str) -> list[str]:
    entry_point = _BIN / name
    return [str(entry_point)] if entry_point.is_file() else [sys.executable, "-m", module]
