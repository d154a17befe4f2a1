"""A honcho ``Manager`` for ``orders run`` that stops the bridge before the rest.

honcho SIGTERMs every process at once; the bridge would then wait its whole
DRAIN_TIMEOUT for orders that a worker already shutting down will not finish. So
the first Ctrl-C stops the bridge alone, and honcho's loop, seeing it stopped,
terminates the others; a second Ctrl-C terminates everything at once, a third
kills. When a process exits by itself, honcho's own rule applies: everything is
terminated at once. This relies on honcho 2's internals (``_start``,
``_killall``, ``_all_started``, ``_processes``, ``_procmgr``); the dependency is
pinned below 3.

honcho comes with the ``embedded`` extra: ``orders run`` imports this module
only once it has checked that honcho is installed.
"""

from __future__ import annotations

import datetime
import signal
from collections.abc import Callable
from typing import Any

from honcho.manager import Manager
from honcho.printer import Message


class BridgeFirstManager(Manager):
    """``bridge`` names the Procfile's process type to stop first; ``on_started``
    runs once every process is started, ``on_stopping`` when stopping begins."""

    _signals = 0
    _bridge_first = False

    def __init__(
        self, bridge: str, on_started: Callable[[], None], on_stopping: Callable[[], None]
    ) -> None:
        super().__init__()
        self._bridge = bridge
        self._on_started = on_started
        self._on_stopping = on_stopping

    def _start(self) -> None:
        # loop() has just installed its signal handlers: count signals on top.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._counting(signal.getsignal(signum)))
        # honcho ignores SIGHUP, which would leave every process running.
        on_term = signal.getsignal(signal.SIGTERM)
        assert callable(on_term)  # _counting's, installed just above
        signal.signal(signal.SIGHUP, lambda _, frame: on_term(signal.SIGTERM, frame))
        # honcho forks one helper per process here; threads start only
        # afterwards, so no fork copies a lock some thread holds.
        super()._start()
        self._on_started()

    def _counting(self, handler: Any) -> Callable[[int, Any], None]:
        def on_signal(signum: int, frame: Any) -> None:
            self._signals += 1
            handler(signum, frame)  # honcho's: sets the return code, calls terminate()

        return on_signal

    def terminate(self) -> None:
        self._on_stopping()
        if self._signals >= 3:
            self.kill()
            return
        bridge = self._processes.get(self._bridge)
        if (
            self._signals == 1
            and not self._bridge_first
            and bridge is not None
            and "pid" in bridge
            and not self._any_stopped()
        ):
            self._bridge_first = True
            self._system_print(
                "stopping the bridge first (it finishes in-flight orders); "
                "Ctrl-C again to stop everything now\n"
            )
            self._procmgr.terminate(bridge["pid"])
            return
        super().terminate()

    # honcho learns a process's pid from a message its helper sends after
    # starting it, and its _killall fails on a process whose pid it has not
    # seen yet: a signal in that window is acted on once every pid is known.
    _deferred_force: bool | None = None

    def _killall(self, force: bool = False) -> None:
        if not super()._all_started():
            self._deferred_force = force or bool(self._deferred_force)
            return
        super()._killall(force)

    def _all_started(self) -> bool:
        started: bool = super()._all_started()
        if started and self._deferred_force is not None:
            force, self._deferred_force = self._deferred_force, None
            super()._killall(force)
        return started

    def print_line(self, name: str, text: str) -> None:
        """Print ``text`` as a line of a process called ``name``: through honcho's
        queue, prefixed like the processes' lines and never cut into one."""
        self.events.put(
            Message(type="line", data=text, time=datetime.datetime.now(), name=name, colour=None)
        )

    def kill_started(self) -> None:
        """SIGKILL every process whose pid is known, outside the loop."""
        for process in self._processes.values():
            if "pid" in process and "returncode" not in process:
                self._procmgr.kill(process["pid"])
