"""Screenshots of Flower for the README (``make screenshot``).

Runs ``orders run`` (what ``make run`` runs) in a temporary directory: embedded
NATS and Redis, the Procfile's processes and the demo orders. Once the demo's
table is printed and Flower shows every task of the pipeline finished, headless
Chromium saves Flower's tasks and workers pages to ``docs/``. Then Ctrl-C stops
everything, as it would for a person.

Chromium is the system's (Debian: ``apt-get install chromium``), driven by the
``playwright`` package (``pip install -e '.[screenshot]'``); Playwright's own
browser downloads are never used. ``CHROMIUM`` names another binary.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

from orders import names

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TASKS_PNG = DOCS / "flower-tasks.png"
WORKERS_PNG = DOCS / "flower-workers.png"
VIEWPORT = {"width": 1400, "height": 900}

DEMO_TIMEOUT_S = 240.0
TASKS_TIMEOUT_S = 60.0
PAGE_TIMEOUT_MS = 30_000
STOP_TIMEOUT_S = 90.0

SUMMARY = re.compile(r"demo: (\d+)/(\d+) outcomes as expected|demo failed|demo skipped")
FLOWER = re.compile(r"Flower:\s+(http://\S+?)/?\s+\(user (\S+), password (\S+)\)")
FINAL_STATES = {"SUCCESS", "FAILURE", "REVOKED", "REJECTED"}
# Settings `orders run` must not inherit: it embeds its own servers and sets these.
NOT_INHERITED = {"NATS_URL", "REDIS_URL", "PORT", "FLOWER_BASIC_AUTH", "ORDERS_DEV_MODE"}

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
T = TypeVar("T")


def fail(message: str) -> NoReturn:
    print(f"flower_screenshot: {message}", file=sys.stderr)
    sys.exit(1)


def say(message: str) -> None:
    print(f"flower_screenshot: {message}", flush=True)


class Output:
    """`orders run`'s output, read on a thread into a log file, so that waiting
    for a line has a deadline."""

    def __init__(self, stream: IO[str], log: Path) -> None:
        self.log = log
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        with open(self.log, "a") as out:
            for line in stream:
                out.write(line)
                out.flush()
                self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self._seen:
                if match := pattern.search(line):
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {pattern.pattern!r} within {timeout:g}s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"`orders run` ended before {pattern.pattern!r}")
            self._seen.append(line)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def chromium_path() -> str:
    if chosen := os.environ.get("CHROMIUM"):
        return shutil.which(chosen) or fail(f"CHROMIUM={chosen} is not an executable")
    for candidate in ("chromium", "chromium-browser"):
        if found := shutil.which(candidate):
            return found
    fail("no Chromium found: apt-get install chromium (or set CHROMIUM=/path/to/chrome)")


def start_orders_run(workdir: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    script = Path(sys.executable).parent / "orders"
    if script.is_file():
        command = [str(script), "run"]
    else:
        command = [sys.executable, "-c", "from bridge.cli import main; main()", "run"]
    return subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Our own Ctrl-C must not reach it unannounced: stop() sends it.
        start_new_session=True,
    )


def stop(process: subprocess.Popen[str]) -> int:
    """Ctrl-C (the bridge drains first), again if it lingers, then kill the group."""
    for _ in range(2):
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_S)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode


def poll(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while (result := predicate()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)
    return result


def flower_tasks(url: str, user: str, password: str) -> dict[str, dict[str, Any]]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"{url}/api/tasks", headers={"Authorization": f"Basic {token}"}
    )
    with _NO_PROXY.open(request, timeout=10) as response:
        return json.loads(response.read())


def all_tasks_finished(url: str, user: str, password: str) -> dict[str, dict[str, Any]] | None:
    """Flower's tasks once every pipeline task name is there and none is still running."""
    try:
        tasks = flower_tasks(url, user, password)
    except (OSError, ValueError):
        return None
    seen = {task.get("name") for task in tasks.values()}
    finished = all(task.get("state") in FINAL_STATES for task in tasks.values())
    return tasks if set(names.ALL_TASKS) <= seen and finished else None


def screenshot(url: str, user: str, password: str, chromium: str) -> None:
    """Flower's tasks and workers pages, as a logged-in person sees them."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        fail("playwright is not installed: pip install -e '.[screenshot]' (or `make screenshot`)")

    DOCS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            try:
                context = browser.new_context(
                    viewport=VIEWPORT,
                    http_credentials={"username": user, "password": password},
                )
                page = context.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_MS)

                # Both tables fill from AJAX calls after the page has loaded.
                page.goto(f"{url}/tasks", wait_until="networkidle")
                page.wait_for_selector("#tasks-table tbody tr td:has-text('SUCCESS')")
                page.screenshot(path=str(TASKS_PNG))
                say(f"saved {TASKS_PNG.relative_to(ROOT)}")

                page.goto(f"{url}/workers", wait_until="networkidle")
                page.wait_for_selector("#workers-table tbody tr td a")
                page.screenshot(path=str(WORKERS_PNG))
                say(f"saved {WORKERS_PNG.relative_to(ROOT)}")
            finally:
                browser.close()
    except Error as error:  # Playwright's own, timeouts included
        raise RuntimeError(f"Chromium: {error.message.splitlines()[0]}") from error


def main() -> None:
    chromium = chromium_path()
    with tempfile.TemporaryDirectory(prefix="flower-screenshot-") as tmp:
        workdir = Path(tmp)
        say(f"starting `orders run` in {workdir} (its output: {workdir / 'orders-run.log'})")
        process = start_orders_run(workdir)
        assert process.stdout is not None
        output = Output(process.stdout, workdir / "orders-run.log")
        try:
            summary = output.wait_for(SUMMARY, DEMO_TIMEOUT_S)
            if summary.group(1) is None or summary.group(1) != summary.group(2):
                raise RuntimeError(f"the demo did not go as expected: {summary.group(0)}")
            url, user, password = output.wait_for(FLOWER, 5).groups()
            say(f"{summary.group(0)}; Flower at {url}")
            tasks = poll(
                lambda: all_tasks_finished(url, user, password),
                TASKS_TIMEOUT_S,
                "Flower to show every pipeline task finished",
            )
            say(f"Flower shows {len(tasks)} tasks, all finished")
            screenshot(url, user, password, chromium)
        except (TimeoutError, RuntimeError) as error:
            stop(process)
            fail(f"{error}\n--- last lines of `orders run` ---\n{output.tail()}")
        except BaseException:
            stop(process)
            raise
        code = stop(process)
        if code != 0:
            fail(f"`orders run` exited with {code}\n{output.tail()}")
        say("stopped everything")


if __name__ == "__main__":
    main()
