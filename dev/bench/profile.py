"""Optional sampling profiles of the bridge and a worker while they run (py-spy).

``py-spy record`` attaches to a running process by pid (it needs ptrace rights:
root, or ``kernel.yama.ptrace_scope`` 0) and writes collapsed stacks, from which
:func:`top_functions` ranks where the samples fall. Only threads holding the GIL
are sampled (``--gil``): py-spy's own idle detection counts a thread blocked in
``epoll`` or on a queue as busy, which would rank waiting above working. Time
spent in system calls with the GIL released is therefore not in the profile
(it is in the process's system CPU time). Profiling takes CPU from what it
watches: figures of a profiled phase are flagged.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

SAMPLES_PER_S = 100
STOP_TIMEOUT_S = 30.0
# A function in this share of the samples of its kind of stack is an entry point.
SPINE_SHARE = 0.9


class ProfilerUnavailable(RuntimeError):
    """py-spy is not installed."""


def find_py_spy() -> str:
    beside_python = Path(sys.executable).parent / "py-spy"
    if beside_python.is_file():
        return str(beside_python)
    if on_path := shutil.which("py-spy"):
        return on_path
    raise ProfilerUnavailable("py-spy is not installed: pip install py-spy")


@contextlib.contextmanager
def recording(out_dir: Path, targets: dict[str, int]) -> Iterator[dict[str, Path]]:
    """Record each ``name: pid`` (and its subprocesses) for the duration of the block;
    yields the collapsed-stack file of each."""
    py_spy = find_py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {name: out_dir / f"{name}.folded" for name in targets}
    recorders = []
    for name, pid in targets.items():
        command = [
            py_spy, "record",
            "--pid", str(pid),
            "--subprocesses",
            "--gil",
            "--function",
            "--rate", str(SAMPLES_PER_S),
            "--format", "raw",
            "--output", str(outputs[name]),
        ]  # fmt: skip
        with open(out_dir / f"{name}.py-spy.log", "wb") as log:
            recorders.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    try:
        yield outputs
    finally:
        for recorder in recorders:
            with contextlib.suppress(ProcessLookupError):
                recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for recorder in recorders:
            try:
                recorder.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()


def top_functions(folded: Path, limit: int = 15) -> dict[str, object]:
    """Where the samples in ``folded`` fall, as percentages of all of them.

    ``self``: functions on top of the stack. ``total``: functions anywhere in it,
    without the entry points of each kind of stack (the event loop, a thread's
    bootstrap, Celery's start-up in the main process or in a pool child), which
    are in nearly all of that kind's samples and say nothing. ``by_process``: the
    main process and its children (a prefork pool).
    """
    stacks: list[tuple[tuple[int, str], list[str], int]] = []
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        all_frames = stack.split(";")
        frames = [f for f in all_frames if not f.startswith(("process ", "thread "))]
        if frames:
            # --subprocesses puts one "process PID:..." frame per generation on top.
            depth = sum(f.startswith("process ") for f in all_frames)
            stacks.append(((depth, frames[0]), frames, int(count_text)))
    samples = sum(count for _, _, count in stacks)
    if not samples:
        return {"samples": 0, "by_process": {}, "self": [], "total": []}

    kind_samples: Counter[tuple[int, str]] = Counter()
    kind_frames: Counter[tuple[tuple[int, str], str]] = Counter()
    for kind, frames, count in stacks:
        kind_samples[kind] += count
        for frame in set(frames):
            kind_frames[kind, frame] += count
    self_samples: Counter[str] = Counter()
    total_samples: Counter[str] = Counter()
    by_process: Counter[str] = Counter()
    for kind, frames, count in stacks:
        by_process["main process" if kind[0] <= 1 else "child processes"] += count
        self_samples[frames[-1]] += count
        for frame in set(frames):
            if kind_frames[kind, frame] < SPINE_SHARE * kind_samples[kind]:
                total_samples[frame] += count

    def ranked(counter: Counter[str]) -> list[dict[str, object]]:
        return [
            {"function": frame, "pct": round(100 * n / samples, 1)}
            for frame, n in counter.most_common(limit)
        ]

    return {
        "samples": samples,
        "by_process": {k: round(100 * n / samples, 1) for k, n in by_process.items()},
        "self": ranked(self_samples),
        "total": ranked(total_samples),
    }
