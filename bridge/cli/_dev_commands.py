"""``orders run`` and ``orders bench``: commands whose code is not in this package
but in the ``dev/`` folder of the source checkout, which is neither packaged nor
in the image.

Each is listed by a :class:`DevCommand` carrying a static summary, so that
``orders --help`` and every other command work without ``dev/``; the real command
is imported only when it is invoked. Where ``dev/`` is absent (an installed wheel,
the Docker image) invoking it ends with one line and exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

import bridge
from bridge.cli._common import EXIT_CONFIG, CommandError

# The directory holding the bridge package: a source checkout when dev/ is beside
# it (`make install` installs the checkout in editable mode).
SOURCE_ROOT = Path(bridge.__file__).resolve().parent.parent


class DevCommand(click.Command):
    """A stand-in for the command ``target`` (``"module:attribute"``) of ``dev/``.

    ``help`` / ``short_help`` repeat what the real command declares, for the
    listing of ``orders --help``; everything else (parsing, ``--help``, running)
    is the real command's, imported from the checkout at ``source_root``.
    """

    def __init__(
        self,
        name: str,
        target: str,
        *,
        make_target: str,
        help: str | None = None,
        short_help: str | None = None,
        source_root: Path = SOURCE_ROOT,
    ) -> None:
        super().__init__(name, help=help, short_help=short_help, add_help_option=False)
        self.target = target
        self._make_target = make_target
        self._source_root = source_root

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The group invokes whatever command the context holds: the real one.
        return self.load().make_context(info_name, args, parent=parent, **extra)

    def load(self) -> click.Command:
        """The real command; a :class:`CommandError` (exit 2) outside a checkout."""
        if not (self._source_root / "dev" / "__init__.py").is_file():
            raise CommandError(
                f"orders {self.name} is a development command: "
                f"run it from a source checkout ({self._make_target})",
                EXIT_CONFIG,
            )
        module_name, _, attribute = self.target.partition(":")
        with _on_sys_path(self._source_root):
            # By name: orders and bridge never import dev (an import-linter contract).
            module = importlib.import_module(module_name)
        command = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


@contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    """``directory`` first on ``sys.path`` during the block, unless already there.

    Only for the import: once imported, ``dev`` finds its own submodules through
    its ``__path__``, and the checkout's other folders stay out of everyone's way.
    """
    entry = str(directory)
    if entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)
