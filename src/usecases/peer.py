"""Peer processes of a use case.

The coordinating `qkd-usecase` process plays the first role of its use case (the sending
encryptor, the hybrid initiator, the OPoT ingress, the cloud clients) and starts every other role
as its own OS process, `python -m usecases.cli ... --role ROLE --peer-args JSON`, with its own SAE
certificate. A peer listens on 127.0.0.1 port 0, prints `READY <port>` on stdout, serves one
connection (its upstream), and answers the END frame with a STATS frame carrying its counts and
its 014 client tally, then exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .result import NotServed
from .spec import UseCaseSpec

READY_TIMEOUT = 60.0


@dataclass
class Context:
    """What every role of a use case knows: the running network and its own spec."""

    network: dict[str, Any]
    network_path: Path
    topology_path: Path
    spec: UseCaseSpec


Handler = Callable[[Context, dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Peer:
    role: str
    proc: asyncio.subprocess.Process
    port: int
    conns: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.conns.append(writer)
        return reader, writer

    async def close(self, timeout: float = 10.0) -> int | None:
        for w in self.conns:
            w.close()
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            if self.proc.returncode is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                return await self.proc.wait()


async def spawn(ctx: Context, role: str, args: dict[str, Any]) -> Peer:
    """Start a peer process for `role` and wait for its READY line."""
    cmd = [sys.executable, "-m", "usecases.cli", "--network", str(ctx.network_path),
           "--topology", str(ctx.topology_path), "--name", ctx.spec.name,
           "--role", role, "--peer-args", json.dumps(args)]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)).decode()
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise NotServed(f"peer {role} did not start within {READY_TIMEOUT:.0f} s") from None
    if not line.startswith("READY "):
        await proc.wait()
        raise NotServed(f"peer {role} exited with {proc.returncode} before it was ready")
    return Peer(role, proc, int(line.split()[1]))


async def serve(ctx: Context, handler: Handler, args: dict[str, Any]) -> None:
    """Peer side: listen, announce the port, run the handler on the first connection, return."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if done.done():
            writer.close()
            return
        try:
            await handler(ctx, args, reader, writer)
            if not done.done():
                done.set_result(None)
        except BaseException as exc:  # hand it to serve(), which exits non-zero with it
            if not done.done():
                done.set_exception(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    try:
        await done
    finally:
        server.close()
