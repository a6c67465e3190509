"""Node processes forked by a node zygote (`qkdnode.zygote`) instead of started by exec, for
`qkdnet up`: a network's nodes share the pages of one pre-imported Python heap (see the zygote's
docstring for why), and each still is its own process, stopped and killed by its PID.

`ForkedProcess` offers the part of `asyncio.subprocess.Process` the launcher uses (`pid`,
`returncode`, `stdout.readline()`, `wait()`, `send_signal()`, `terminate()`, `kill()`), fed by the
zygote's JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any


log = logging.getLogger(__name__)


class SpawnError(Exception):
    """The zygote did not start, or refused to fork a node."""


class ForkedProcess:
    def __init__(self, ident: str, pid: int) -> None:
        self.ident = ident
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = asyncio.StreamReader()
        self._exited = asyncio.Event()

    def _exit(self, code: int) -> None:
        self.returncode = code
        self.stdout.feed_eof()
        self._exited.set()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


class Zygote:
    """The client side: start `python -m qkdnode.zygote`, ask it for node processes."""

    def __init__(self, log: Path, state_dir: Path | None = None) -> None:
        self.log = log
        self.state_dir = state_dir  # on the zygote's command line, so its nodes' show it too (ps, /proc)
        self.proc: asyncio.subprocess.Process | None = None
        self.children: dict[str, ForkedProcess] = {}
        self._waiting: dict[str, asyncio.Future[ForkedProcess]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        from .reaper import spawn

        log = open(self.log, "ab")
        self.proc = await spawn(
            sys.executable, "-m", "qkdnode.zygote", *(["--for", str(self.state_dir / "network.json")] if self.state_dir else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=log, limit=1 << 20)
        log.close()
        assert self.proc.stdout is not None
        try:
            first = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            ready = json.loads(first).get("ready") if first else False
        except (asyncio.TimeoutError, ValueError):
            ready = False
        if not ready:
            await self.stop()
            raise SpawnError(f"the node zygote did not start (see {self.log})")
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                msg: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            ident = str(msg.get("id"))
            if "pid" in msg and ident in self._waiting:
                child = ForkedProcess(ident, int(msg["pid"]))
                self.children[ident] = child
                self._waiting.pop(ident).set_result(child)
            elif "error" in msg and ident in self._waiting:
                self._waiting.pop(ident).set_exception(SpawnError(f"{ident}: {msg['error']}"))
            elif "out" in msg and ident in self.children:
                self.children[ident].stdout.feed_data(str(msg["out"]).encode() + b"\n")
            elif "exit" in msg and ident in self.children:
                log.info("%s (pid %s) exited with %s", ident, self.children[ident].pid, msg["exit"])
                self.children.pop(ident)._exit(int(msg["exit"]))
        for child in list(self.children.values()):  # the zygote is gone: so are its children
            child._exit(-int(signal.SIGKILL))
        self.children.clear()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(SpawnError("the node zygote exited"))

    async def spawn(self, ident: str, argv: list[str], log: Path, timeout: float = 30.0) -> ForkedProcess:
        if self.proc is None or self.proc.stdin is None or self.proc.returncode is not None:
            raise SpawnError("the node zygote is not running")
        if ident in self.children or ident in self._waiting:
            raise SpawnError(f"{ident} is running already")
        fut: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        self.proc.stdin.write((json.dumps({"spawn": ident, "argv": argv, "log": str(log)}) + "\n").encode())
        await self.proc.stdin.drain()
        child = await asyncio.wait_for(fut, timeout)
        from .reaper import reaper

        reaper().watch(child.pid)  # its own process group (the zygote's child calls setsid)
        return child

    async def stop(self, grace: float = 12.0) -> None:
        """SIGTERM to the zygote's group: it stops its children (SIGTERM, then SIGKILL) and exits;
        SIGKILL after `grace` (reaper.terminate, which also tells the reaper it is done)."""
        if self.proc is None:
            return
        from .reaper import terminate

        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        await terminate([self.proc], grace)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
