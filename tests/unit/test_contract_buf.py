"""``proto/`` as buf reads it (``proto/buf.yaml``): lint-clean, buf-formatted, and
compatible with the released ``orders.v1`` contract.

The baseline, ``proto/baseline/orders-v1.json``, is a buf image of the released
``orders.proto`` (``buf build --exclude-source-info``). ``buf breaking`` against it
is what fails the suite when a field is renumbered, retyped, renamed or deleted;
the tests below edit a copy of ``proto/`` in each of those ways to show that the
check is not a no-op, and add a field to show that what the contract allows passes.
buf comes from the ``buf-bin`` package (the dev extra) and needs no network here.

The Go producers' template, ``proto/buf.gen.go.yaml``, is run with a stand-in for
``protoc-gen-go`` (Go is not needed), which reports the Go package buf gives the file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
BASELINE = PROTO / "baseline" / "orders-v1.json"
ORDERS_PROTO = Path("orders", "v1", "orders.proto")
GO_TEMPLATE = PROTO / "buf.gen.go.yaml"
# What the README tells a Go producer to import (with their own prefix).
GO_PACKAGE = "example.com/yourteam/orders/gen/go/orders/v1;ordersv1"
# The normative text (README, The external contract), a sibling of the checkout.
CONTRACT = ROOT.parent / "shared" / "CONTRACT.md"
# buf's exit code for "breaking changes found", as opposed to 1 for any other error
# (a broken baseline, an unreadable config), which must not pass for a detection.
BREAKING_FOUND = 100


def buf_binary() -> str:
    """The ``buf`` that buf-bin put beside this virtualenv's python, else one on PATH."""
    # sys.executable is not resolved: a venv's python is a symlink out of the venv.
    beside_python = Path(sys.executable).parent / "buf"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("buf")
    if on_path is None:
        pytest.fail("buf not found: `make install` installs it (buf-bin, the dev extra)")
    return on_path


def buf(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf_binary(), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def edited_proto(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of ``proto/`` (its buf.yaml included) with one edit to orders.proto."""
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy)
    target = copy / ORDERS_PROTO
    text = target.read_text()
    assert text.count(old) == 1, f"{old!r} is not in orders.proto exactly once"
    target.write_text(text.replace(old, new))
    return copy


def breaking_rules(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The buf rule ids an ``--error-format json`` run reported."""
    return {json.loads(line)["type"] for line in result.stdout.splitlines() if line.strip()}


def test_buf_lint_is_clean() -> None:
    result = buf("lint", "proto")
    assert result.returncode == 0, f"buf lint proto:\n{result.stdout}{result.stderr}"


def test_proto_is_buf_formatted() -> None:
    result = buf("format", "proto", "--diff", "--exit-code")
    assert result.returncode == 0, (
        f"run `buf format -w proto` (then `make proto`):\n{result.stdout}{result.stderr}"
    )


def test_proto_is_compatible_with_the_released_contract() -> None:
    result = buf("breaking", "proto", "--against", BASELINE)
    assert result.returncode == 0, (
        "proto/ breaks the released orders.v1 contract; add a field instead "
        f"(shared/CONTRACT.md):\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        # Renumbered: field 5 disappears (and 6 appears) as far as the wire knows.
        ("string currency = 5;", "string currency = 6;", "FIELD_NO_DELETE"),
        ("double total_amount = 4;", "float total_amount = 4;", "FIELD_SAME_TYPE"),
        ("int32 quantity = 2;", "int64 quantity = 2;", "FIELD_SAME_TYPE"),
        ("  string detail = 3; // human-readable\n", "", "FIELD_NO_DELETE"),
        # Wire-compatible, but it breaks the JSON form and every producer's generated code.
        ("string payment_id = 2;", "string charge_id = 2;", "FIELD_SAME_NAME"),
    ],
    ids=["renumbered", "retyped-double", "retyped-int", "deleted", "renamed"],
)
def test_breaking_check_fails_on_an_incompatible_edit(
    tmp_path: Path, old: str, new: str, rule: str
) -> None:
    edited = edited_proto(tmp_path, old, new)
    result = buf("breaking", edited, "--against", BASELINE, "--error-format", "json")
    assert result.returncode == BREAKING_FOUND, f"not caught:\n{result.stdout}{result.stderr}"
    assert rule in breaking_rules(result), result.stdout


def test_breaking_check_accepts_a_new_field(tmp_path: Path) -> None:
    """The contract's own way to evolve: "More fields may be added (never renumbered)"."""
    old = 'string currency = 5; // ISO 4217; empty means "USD"\n'
    edited = edited_proto(tmp_path, old, old + "  string channel = 6;\n")
    result = buf("breaking", edited, "--against", BASELINE)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"


def test_baseline_is_the_contracts_messages(tmp_path: Path) -> None:
    """The baseline is the image of the messages ``shared/CONTRACT.md`` shows, so it
    cannot be re-cut from an edited proto unnoticed."""
    if not CONTRACT.is_file():
        pytest.skip(f"{CONTRACT} is not beside the checkout")
    block = re.search(r"```proto\n(.*?)```", CONTRACT.read_text(), re.DOTALL)
    assert block, "CONTRACT.md has no ```proto block"
    module = tmp_path / "contract"
    (module / ORDERS_PROTO).parent.mkdir(parents=True)
    # The block shows the messages; the file's header is the package it names.
    header = 'syntax = "proto3";\npackage orders.v1;\n'
    (module / ORDERS_PROTO).write_text(header + block.group(1))
    image = tmp_path / "contract.json"
    result = buf("build", module, "--exclude-source-info", "-o", image)
    assert result.returncode == 0, result.stderr
    assert json.loads(image.read_text()) == json.loads(BASELINE.read_text())


# A protoc plugin in Python: for each file to generate, a ``<name>.go_package`` file
# holding the go_package option buf set and the plugin's parameter.
STAND_IN_PLUGIN = """\
import sys
from google.protobuf.compiler import plugin_pb2

request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
response = plugin_pb2.CodeGeneratorResponse()
for proto in request.proto_file:
    if proto.name in request.file_to_generate:
        out = response.file.add()
        out.name = proto.name + ".go_package"
        out.content = proto.options.go_package + "\\n" + request.parameter + "\\n"
sys.stdout.buffer.write(response.SerializeToString())
"""


def test_go_template_generates_the_documented_package(tmp_path: Path) -> None:
    plugins = tmp_path / "bin"
    plugins.mkdir()
    script = plugins / "stand_in_plugin.py"
    script.write_text(STAND_IN_PLUGIN)
    # A shell wrapper rather than a python shebang, which a long venv path can overflow.
    plugin = plugins / "protoc-gen-go"
    plugin.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(script))}\n")
    plugin.chmod(0o755)
    env = {**os.environ, "PATH": f"{plugins}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "out"
    result = buf("generate", "proto", "--template", GO_TEMPLATE, "-o", out, env=env)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"
    generated = out / "gen" / "go" / ORDERS_PROTO.with_name("orders.proto.go_package")
    go_package, parameter = generated.read_text().splitlines()
    assert go_package == GO_PACKAGE
    assert parameter == "paths=source_relative"
