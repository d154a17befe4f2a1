"""Memory and CPU time of a process and its descendants, from ``/proc`` (Linux).

A prefork Celery worker is a main process and its pool children, so its usage is
the sum over the tree. Summed resident sizes count pages shared since the fork
once per process: an upper bound on the tree's real footprint.
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_KB_PER_MB = 1024.0


@dataclass(frozen=True, slots=True)
class Usage:
    """A process tree at one moment."""

    rss_mb: float  # sum of VmRSS: resident now
    hwm_mb: float  # sum of VmHWM: each process's peak resident size so far
    cpu_s: float  # user + system time, reaped children included
    processes: int


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            parents.setdefault(int(ppid), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, ()))
    return found


def usage(pid: int) -> Usage:
    """Memory and CPU of ``pid``'s tree; processes that exit meanwhile are left out."""
    rss = hwm = cpu = 0.0
    count = 0
    for member in tree(pid):
        try:
            status = _status_kb(member)
            cpu += _cpu_s(member)
        except OSError:
            continue
        rss += status.get("VmRSS", 0) / _KB_PER_MB
        hwm += status.get("VmHWM", 0) / _KB_PER_MB
        count += 1
    return Usage(rss_mb=rss, hwm_mb=hwm, cpu_s=cpu, processes=count)


def _status_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _cpu_s(pid: int) -> float:
    # Fields 14-17: utime, stime, cutime, cstime. A live child's time is in its own
    # entry; a reaped child's in its parent's cutime/cstime: nothing counts twice.
    fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / _TICKS_PER_S


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(_mem_total_kb() / _KB_PER_MB / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        for line in (_PROC / "cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_kb() -> int:
    try:
        for line in (_PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
