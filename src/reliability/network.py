"""A `qkdnet up` network run by a reliability driver: boot, kill and restart node processes, stop.

`qkdnet up` does not restart a node that dies; the driver restarts it from the config file the
launcher wrote (`DIR/nodes/NAME.yaml`, fixed ports), as an operator would, with its log appended
to `DIR/logs/NAME.log`. Restarted node processes are the driver's children and stopped by it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.reaper import wait_ready

from .sae import SaeClient


class NetworkError(Exception):
    """The network did not come up, or a node did not restart."""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@dataclass
class UpNetwork:
    state: Path
    proc: subprocess.Popen[bytes]
    net: dict[str, Any]
    restarted: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    _drains: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def up(cls, topology: Path | None, state: Path, *, orchestrate: bool = True, timeout: float = 120,
                 env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()) -> UpNetwork:
        state.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "orchestrator.netctl", "up", "--state-dir", str(state), "--timeout", str(timeout)]
        if topology is not None:
            args += ["--topology", str(topology)]
        if not orchestrate:
            args.append("--no-orchestrator")
        args += extra_args
        out = open(state / "qkdnet-up.out", "ab")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        path = state / "network.json"
        deadline = time.monotonic() + timeout + 60  # qkdnet up gives up first, after `timeout`
        while not path.exists():
            if proc.poll() is not None:
                raise NetworkError(f"qkdnet up exited with {proc.returncode}: "
                                   f"{(state / 'qkdnet-up.out').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGTERM)  # qkdnet up stops the processes it started
                try:
                    await asyncio.to_thread(proc.wait, 60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise NetworkError("network.json not written in time")
            await asyncio.sleep(0.1)
        return cls(state, proc, json.loads(path.read_text()))

    def pid(self, node: str) -> int:
        p = self.restarted.get(node)
        return p.pid if p is not None else int(self.net["nodes"][node]["pid"])

    def pids(self) -> dict[str, int]:
        return {n: self.pid(n) for n in self.net["nodes"]}

    def client(self, sae: str) -> SaeClient:
        info = self.net["saes"][sae]
        return SaeClient(sae, info, self.net["nodes"][info["node"]]["etsi014"]["url"])

    async def kill(self, node: str) -> None:
        """SIGKILL the node's process and wait until it is gone."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        p = self.restarted.get(node)
        if p is not None:
            await p.wait()
            return
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def restart(self, node: str, timeout: float = 180) -> None:
        """Start the node again from its config file; returns once it printed READY."""
        cfg = self.net["nodes"][node]["config"]
        log = open(self.state / "logs" / f"{node}.log", "ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qkdnode.cli", "run", "--config", cfg,
            stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL)
        log.close()
        self.restarted[node] = proc
        try:
            await wait_ready(proc, timeout, f"node {node} did not restart (see {self.state / 'logs' / f'{node}.log'})")
        except RuntimeError as e:
            raise NetworkError(str(e)) from None
        self._drains.append(asyncio.create_task(self._drain(proc)))

    @staticmethod
    async def _drain(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def wait_exit(self, timeout: float) -> int | None:
        """Wait for `qkdnet up` to end on its own (`--duration`); its exit code, None if it did not."""
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        for p in self.restarted.values():
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in self.restarted.values():
            try:
                await asyncio.wait_for(p.wait(), 10)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._drains:
            t.cancel()
