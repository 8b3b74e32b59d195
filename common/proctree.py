"""A process tree's members, CPU time and memory, read from Linux's /proc.

Used by the benchmarks (server CPU per request, memory of all server processes) and by the
tests (no process outlives `mxserve start`). PSS is the honest sum across processes: pages
shared by several processes (libmxnet, Python itself) are split between them, not counted
once per process as RSS would.
"""
from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def parent(pid: int) -> int:
    """The parent's pid (0 when `pid` is gone)."""
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else 0


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def _kib_field(pid: int, file: str, key: str) -> int:
    """A "Key:  N kB" line of a /proc/<pid> file, in bytes (0 when `pid` is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    return _kib_field(pid, "smaps_rollup", "Pss:")


def rss_bytes(pid: int) -> int:
    return _kib_field(pid, "status", "VmRSS:")


def role(pid: int) -> str:
    """Which part of an mxserve instance a process is, from its command line."""
    line = cmdline(pid)
    for marker, name in (("worker.broker", "broker"), ("worker.forkserver", "fork server"),
                         ("worker --archive", "worker"),
                         ("gunicorn", "gunicorn"), ("mxserve.instance.cli start", "launcher")):
        if marker in line:
            return name
    return line[:40]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
