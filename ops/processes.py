"""Child processes that must not outlive their starter: free ports, whole process trees stopped.

Used by the loopback federation (ops/loopback.py) and by tests that start a Ray head.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_processes(procs: list[subprocess.Popen], grace: float = 10) -> None:
    """SIGTERM each process and all its descendants (in order), SIGKILL what is left after `grace` s.

    Descendants are collected first: the SuperLink and SuperNodes start flower-superexec in a
    session of its own (Ray its workers), which a signal to a process group would not reach.
    """
    family = [[proc.pid, *descendants(proc.pid)] for proc in procs]
    for pids in family:
        for pid in pids:
            send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    while time.monotonic() < deadline and any(alive(p) for pids in family for p in pids[1:]):
        time.sleep(0.2)
    for pids in family:
        for pid in pids:
            send_signal(pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()
