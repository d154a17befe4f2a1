"""``orders run`` and ``orders bench`` (``bridge/cli/_dev_commands.py``): listed by
``orders --help`` everywhere, imported from the checkout's ``dev/`` only when
invoked, and one line with exit code 2 where there is no ``dev/`` (a wheel, the
Docker image)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import cli
from bridge.cli._dev_commands import DevCommand, _on_sys_path

pytestmark = pytest.mark.unit

DEV_COMMANDS = {"run": "make run", "bench": "make bench"}


def dev_command(name: str) -> DevCommand:
    command = cli.commands[name]
    assert isinstance(command, DevCommand)
    return command


@pytest.fixture
def without_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Both commands look for dev/ in a directory that has none, as an installed wheel."""
    for name in DEV_COMMANDS:
        monkeypatch.setattr(dev_command(name), "_source_root", tmp_path)


@pytest.mark.usefixtures("without_checkout")
def test_help_lists_the_dev_commands_without_dev() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0]: line for line in result.stdout.splitlines() if line[:2] == "  "}
    assert "Start NATS, Redis, the bridge" in listed["run"]
    assert "Measure the pipeline against its parts" in listed["bench"]


@pytest.mark.usefixtures("without_checkout")
@pytest.mark.parametrize("args", [[], ["--help"], ["--quick"]])
@pytest.mark.parametrize(("name", "make_target"), DEV_COMMANDS.items())
def test_outside_a_checkout_a_dev_command_ends_with_one_line_and_exit_2(
    name: str, make_target: str, args: list[str]
) -> None:
    result = CliRunner().invoke(cli, [name, *args])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"orders {name} is a development command" in lines[0]
    assert f"source checkout ({make_target})" in lines[0]


@pytest.mark.parametrize("name", DEV_COMMANDS)
def test_the_listed_summary_is_the_real_commands(name: str) -> None:
    stand_in = dev_command(name)
    real = stand_in.load()
    assert real.name == name
    for limit in (45, 70, 200):  # the listing's limit follows the terminal's width
        assert stand_in.get_short_help_str(limit) == real.get_short_help_str(limit)


@pytest.mark.parametrize(("name", "option"), [("run", "--procfile"), ("bench", "--quick")])
def test_from_the_checkout_help_is_the_real_commands(name: str, option: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {name} [OPTIONS]" in result.stdout
    assert option in result.stdout


def test_the_checkout_is_on_sys_path_only_during_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = list(sys.path)
    with _on_sys_path(tmp_path):
        assert sys.path[0] == str(tmp_path)
    assert sys.path == before

    monkeypatch.syspath_prepend(str(tmp_path))
    there = list(sys.path)
    with _on_sys_path(tmp_path):  # already there: left where it was
        assert sys.path == there
    assert sys.path == there
