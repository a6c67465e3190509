"""No process `qkdnet up` starts outlives it, even when `qkdnet up` is SIGKILLed.

Every child of the launcher (node daemons, the optical plant stub, the QRNG service, the
orchestrators, the use-case processes and their peers) runs in a process group of its own
(`spawn`: a new session). `qkdnet up` stops them with `terminate`: SIGTERM to each group, SIGKILL
to what is left after a grace, every child reaped, each wait bounded.

For the case where `qkdnet up` cannot do that (SIGKILL, a crash, a stop that was itself killed),
the launcher process starts one reaper process (`python -m orchestrator.reaper`, in its own
session, so that a signal to the launcher's group does not reach it) and tells it, over a pipe
that is the reaper's stdin, each group it starts (`+PGID`) and each group it has reaped
(`-PGID`). Only the launcher holds the write end (non-inheritable), and the kernel closes it
when the launcher exits, however it exits: EOF means "the launcher is gone". The reaper then
sends SIGTERM to every group still registered, waits up to `GRACE_S` for them, SIGKILLs what is
left, and exits.

Why not `prctl(PR_SET_PDEATHSIG)`: it must be set in each child between fork and exec
(`preexec_fn`, which is unsafe in a process with threads, and the launcher runs blocking calls in
threads) or in every child's own code; it fires when the forking *thread* exits, not the process;
and it reaches only direct children, not a use case's peer processes. The reaper covers whole
process groups, needs no code in the children, and works wherever process groups do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

#: seconds the reaper gives orphaned groups between SIGTERM and SIGKILL (their own hard stop is 5 s)
GRACE_S = 6.0


# -- launcher side ---------------------------------------------------------------------------------
class Reaper:
    """The launcher's handle on its reaper process (one per launcher process: `reaper()`)."""

    def __init__(self, log: Path | None = None) -> None:
        args = [sys.executable, "-m", "orchestrator.reaper", "--parent", str(os.getpid())]
        if log is not None:
            args += ["--log", str(log)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with self._lock:
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):  # the reaper is gone: nothing more it can do
                pass

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")


_REAPER: Reaper | None = None


def reaper(log: Path | None = None) -> Reaper:
    """This process's reaper, started at the first call (`log`: where it reports, if it acts)."""
    global _REAPER
    if _REAPER is None or _REAPER.proc.poll() is not None:
        _REAPER = Reaper(log)
    return _REAPER


async def spawn(*cmd: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """`asyncio.create_subprocess_exec` in a new session (process group = its pid), registered
    with the reaper; stop it with `terminate`."""
    proc = await asyncio.create_subprocess_exec(*cmd, start_new_session=True, **kwargs)
    reaper().watch(proc.pid)
    return proc


async def wait_ready(proc: asyncio.subprocess.Process, timeout: float, failure: str) -> bytes:
    """The first line a child prints on stdout, once it starts with READY (how every process
    `qkdnet up` starts says it is listening); RuntimeError(`failure`) if it does not within
    `timeout` s (or exits first)."""
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except asyncio.TimeoutError:
        line = b""
    if not line.startswith(b"READY"):
        raise RuntimeError(failure)
    return line


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when it has no process left."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def terminate(procs: list[asyncio.subprocess.Process], grace: float, kill_wait: float = 2.0) -> None:
    """Stop children started with `spawn`, all at once: SIGTERM to each one's group; after
    `grace` s SIGKILL to the group; then each child is reaped (waiting at most `kill_wait` s more)
    and whatever its group still holds is killed. Bounded by grace + kill_wait."""

    async def one(p: asyncio.subprocess.Process) -> None:
        if p.returncode is None:
            signal_group(p.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(p.wait(), grace)
            except asyncio.TimeoutError:
                signal_group(p.pid, signal.SIGKILL)
                try:
                    await asyncio.wait_for(p.wait(), kill_wait)
                except asyncio.TimeoutError:  # stuck in the kernel: the reaper keeps watching it
                    return
        signal_group(p.pid, signal.SIGKILL)  # members the leader left behind (a use case's peers)
        if _REAPER is not None:
            _REAPER.forget(p.pid)

    await asyncio.gather(*(one(p) for p in procs))


# -- the reaper process ------------------------------------------------------------------------------
def _members(pgid: int) -> bool:
    """Whether the group still has a process that is not a zombie (Linux: /proc; else killpg 0)."""
    if not Path("/proc/self/stat").exists():
        return signal_group(pgid, 0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def reap(groups: set[int], grace: float, out: TextIO | None) -> None:
    """SIGTERM every group, wait up to `grace` s for them to empty, SIGKILL what is left."""
    alive = {g for g in groups if signal_group(g, signal.SIGTERM)}
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {g for g in alive if _members(g)}
    for g in alive:
        signal_group(g, signal.SIGKILL)
    if out is not None and groups:
        out.write(f"reaper: the launcher exited; stopped {len(groups)} process group(s) "
                  f"({len(alive)} killed after {grace:g} s)\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m orchestrator.reaper",
                                 description="stop a launcher's process groups when the launcher exits")
    ap.add_argument("--parent", type=int, help="the launcher's pid (informational)")
    ap.add_argument("--log", type=Path, help="append a line here when groups had to be stopped")
    ap.add_argument("--grace", type=float, default=GRACE_S)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF on stdin ends the watch
    groups: set[int] = set()
    for raw in sys.stdin.buffer:  # until EOF: the launcher has exited
        line = raw.strip().decode(errors="replace")
        if line[:1] in "+-" and line[1:].isdigit():
            (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
    out = open(args.log, "a") if args.log is not None and groups else None
    try:
        reap(groups, args.grace, out)
    finally:
        if out is not None:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
