"""Memory and file descriptors of running processes, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcSample:
    pid: int
    rss_kb: int
    pss_kb: int  # proportional set size (shared pages split among their users); rss_kb where unreadable
    fds: int


def _field_kb(path: str, name: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def sample(pid: int) -> ProcSample | None:
    """The process's RSS, PSS and open file descriptors; None when it is gone."""
    rss = _field_kb(f"/proc/{pid}/status", "VmRSS")
    if rss is None:
        return None
    pss = _field_kb(f"/proc/{pid}/smaps_rollup", "Pss")
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    return ProcSample(pid, rss, pss if pss is not None else rss, fds)
