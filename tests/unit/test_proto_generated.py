"""The committed protobuf code is exactly what ``make proto`` generates from ``proto/``.

Catches an edited ``.proto`` whose generated code was not regenerated, and
hand edits of generated files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROTO = "orders/v1/orders.proto"
GENERATED = ("orders/v1/orders_pb2.py", "orders/v1/orders_pb2.pyi")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pb")
    # protoc finds the mypy plugin on PATH; the venv's bin is where pip put it,
    # and it may not be on PATH when the tests are run without activating the venv.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "proto",
            f"--python_out={out}",
            f"--mypy_out={out}",
            f"proto/{PROTO}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    return out


@pytest.mark.parametrize("relative", GENERATED)
def test_committed_code_matches_proto(regenerated: Path, relative: str) -> None:
    committed = ROOT / "bridge" / "pb" / relative
    assert committed.exists(), f"bridge/pb/{relative} is missing: run `make proto`"
    assert committed.read_bytes() == (regenerated / relative).read_bytes(), (
        f"bridge/pb/{relative} is out of date with proto/{PROTO}: run `make proto`"
    )
