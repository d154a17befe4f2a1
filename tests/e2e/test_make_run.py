"""``orders run`` (``make run``) as a newcomer meets it: embedded servers, the
Procfile's processes, the demo table; then Ctrl-C stops everything, exit 0,
and no process it started is left behind.

It runs in a temporary directory, so every process it starts (servers,
honcho's helpers, the Procfile's processes) has its working directory or its
data directory there: that is how the test finds them, without psutil.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

pytest.importorskip("honcho")

DEMO_TIMEOUT_S = 150.0
EXIT_TIMEOUT_S = 60.0
GONE_TIMEOUT_S = 10.0

# The console script's code, by the interpreter running the tests: `orders run`.
RUN = [sys.executable, "-c", "from bridge.cli import main; main()", "run"]
SUMMARY = re.compile(r"demo: (\d+)/(\d+) outcomes as expected|demo failed|demo skipped")
FLOWER = re.compile(r"Flower:\s+(http://\S+)\s+\(user (\S+), password (\S+)\)")
BRIDGE = re.compile(r"bridge:\s+(http://\S+)/health")
HINT = re.compile(r"try:\s+.*orders status (\S+) --json")
# What the processes look like in /proc/PID/cmdline.
EXPECTED_PROGRAMS = ("nats-server", "orders-bridge", "orders-worker", "orders-web")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def processes_under(directory: Path) -> dict[int, str]:
    """Live processes whose working directory or command line is inside ``directory``."""
    root = str(directory.resolve())
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:  # a zombie, or not ours to inspect
                cwd = ""
        except OSError:  # exited while we looked
            continue
        if cwd == root or cwd.startswith(root + "/") or root in cmdline:
            found[int(entry.name)] = cmdline.strip()
    return found


class Output:
    """Reads the child's output on a thread, so that waiting for a line has a deadline."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if match := pattern.search(line):
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern.pattern!r} within {timeout:g}s\n{self.text}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"`orders run` ended before {pattern.pattern!r}\n{self.text}")
            self.lines.append(line)

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                return
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines[-200:])


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        with _NO_PROXY.open(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def test_orders_run_shows_every_outcome_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # Never the machine's own NATS or Redis: unset, so `orders run` embeds its own.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"NATS_URL", "REDIS_URL", "PORT", "FLOWER_BASIC_AUTH", "ORDERS_DEV_MODE"}
    }
    proc = subprocess.Popen(
        RUN,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a Ctrl-C of the test run is not the signal under test
    )
    output = Output(proc.stdout)
    try:
        summary = output.wait_for(SUMMARY, DEMO_TIMEOUT_S)
        flower_url, user, password = output.wait_for(FLOWER, 5).groups()
        bridge_url = output.wait_for(BRIDGE, 5).group(1)
        order_id = output.wait_for(HINT, 5).group(1)

        assert summary.group(1) == summary.group(2) == "6", output.text  # not failed/skipped
        for expected in (
            "COMPLETED",
            "FAILED PAYMENT_DECLINED",
            "FAILED OUT_OF_STOCK",
            "FAILED INVALID_ORDER",
            "DLQ",
            "no second outcome, 1 charge",
        ):
            assert expected in output.text
        assert "MISMATCH" not in output.text
        assert order_id.startswith("demo-")

        assert http_status(f"{bridge_url}/health") == 200
        assert http_status(f"{bridge_url}/ready") == 200
        assert http_status(flower_url) == 401
        assert http_status(flower_url, (user, password)) == 200

        started = processes_under(tmp_path)
        commands = " ".join(started.values())
        for program in EXPECTED_PROGRAMS:
            assert program in commands, f"{program} not found among {started}"
        assert re.search(r"redis-server|valkey-server", commands), started

        proc.send_signal(signal.SIGINT)
        assert proc.wait(EXIT_TIMEOUT_S) == 0, output.text
        output.drain(2)

        deadline = time.monotonic() + GONE_TIMEOUT_S
        while (left := processes_under(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"still running after `orders run` exited: {left}"
        assert (tmp_path / ".run" / "nats").is_dir()
        assert (tmp_path / ".run" / "redis").is_dir()
    finally:
        if proc.poll() is None:  # the test failed: let it clean up, else kill it
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Whatever a failed run left behind (no-op when the test passed).
        for pid in processes_under(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
