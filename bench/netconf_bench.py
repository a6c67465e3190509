"""NETCONF server figures: get-config latency and edit+commit latency on 1 000 links.

Runs a real `qkdnode` process whose running datastore holds 1 000 `qkd_link` entries, and drives
it with a minimal NETCONF client of its own (asyncssh + RFC 6242 chunked framing) over one SSH
session, so the figures are the server's, not ncclient's.

    python bench/netconf_bench.py [--iterations N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qkdnode.netconf.framing import FrameDecoder, Framing, encode  # noqa: E402
from qkdnode.netconf.nacm import default_config_xml  # noqa: E402

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
QKD = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES = "urn:etsi:qkd:yang:etsi-qkd-node-types"


def seed_running(state: Path, node_id: str, links: int) -> None:
    body = "".join(
        f"<qkd_link><qkdl_id>{uuid.uuid4()}</qkdl_id><qkdl_enable>true</qkdl_enable>"
        f"<qkdl_local><qkdn_id>{node_id}</qkdn_id><qkdi_id>{i}</qkdi_id></qkdl_local>"
        f"<qkdl_remote><qkdn_id>{uuid.uuid4()}</qkdn_id><qkdi_id>{i}</qkdi_id></qkdl_remote>"
        f'<qkdl_type xmlns:t="{TYPES}">t:PHYS</qkdl_type><phys_channel_att>5.5</phys_channel_att></qkd_link>'
        for i in range(links)
    )
    state.mkdir(parents=True, exist_ok=True)
    # a node's running datastore holds its RFC 8341 /nacm (the bench's user is in group admin)
    (state / "running.xml").write_text(
        f'<qkd_node xmlns="{QKD}"><qkdn_id>{node_id}</qkdn_id><qkd_links>{body}</qkd_links></qkd_node>'
        + default_config_xml({"admin": ["admin"]})
    )


class MiniClient:
    def __init__(self, proc: asyncssh.SSHClientProcess) -> None:
        self.proc = proc
        self.dec = FrameDecoder()
        self.framing = Framing.EOM
        self.mid = 0
        self.pending: list[bytes] = []

    async def recv(self) -> bytes:
        while not self.pending:
            data = await self.proc.stdout.read(65536)
            if not data:
                raise ConnectionError("server closed the session")
            self.pending.extend(self.dec.feed(data))
        return self.pending.pop(0)

    async def hello(self) -> None:
        await self.recv()
        self.proc.stdin.write(encode(
            f'<hello xmlns="{NC}"><capabilities><capability>urn:ietf:params:netconf:base:1.1</capability>'
            "</capabilities></hello>".encode(), Framing.EOM))
        self.framing = Framing.CHUNKED
        self.dec.switch_to_chunked()

    async def rpc(self, body: str) -> bytes:
        self.mid += 1
        self.proc.stdin.write(encode(f'<rpc xmlns="{NC}" message-id="{self.mid}">{body}</rpc>'.encode(), self.framing))
        reply = await self.recv()
        if b"<rpc-error>" in reply:
            raise RuntimeError(reply.decode()[:500])
        return reply


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class BenchNode:
    """A `qkdnode run` subprocess whose running datastore is seeded with `links` links."""

    def __init__(self, tmp: Path, name: str, links: int) -> None:
        state = tmp / name
        node_id = str(uuid.uuid4())
        seed_running(state, node_id, links)
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(f"name: {name}\nnode_id: {node_id}\nstate_dir: {state}\n"
                       "netconf: {host: 127.0.0.1, port: 0, users: [{username: admin, password: admin}]}\n")
        self.proc = subprocess.Popen([sys.executable, "-m", "qkdnode.cli", "run", "--config", str(cfg)],
                                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        self.port = int(line.split("netconf=")[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def session(port: int) -> tuple[asyncssh.SSHClientConnection, MiniClient]:
    conn = await asyncssh.connect("127.0.0.1", port, username="admin", password="admin",
                                  known_hosts=None, client_keys=None)
    sp = await conn.create_process(subsystem="netconf", encoding=None)
    c = MiniClient(sp)
    await c.hello()
    return conn, c


async def timed(c: MiniClient, body: str, n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        await c.rpc(body)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await c.rpc(body)
        lat.append((time.perf_counter() - t) * 1000)
    return lat


GET_CONFIG = "<get-config><source><running/></source></get-config>"


async def run(iterations: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        # get-config on a node datastore of typical size (a MadQCI node holds ~10 links)
        small = BenchNode(tmp, "small", 10)
        try:
            conn, c = await session(small.port)
            async with conn:
                lat = await timed(c, GET_CONFIG, iterations)
            print(f"netconf.get_config.p50 = {pct(lat, 0.5):.2f} ms (target <= 1)")
            print(f"netconf.get_config.p99 = {pct(lat, 0.99):.2f} ms (target <= 5)")
        finally:
            small.stop()
        big = BenchNode(tmp, "big", 1000)
        try:
            conn, c = await session(big.port)
            async with conn:
                lat = await timed(c, GET_CONFIG, max(50, iterations // 5))
                print(f"netconf.get_config_1k.p50 = {pct(lat, 0.5):.2f} ms (target <= 10)")  # 1 000 links, ~220 kB reply
                edits = []
                for i in range(max(30, iterations // 5) + 5):
                    link = uuid.uuid4()
                    edit = (
                        f"<edit-config><target><candidate/></target><config><qkd_node xmlns=\"{QKD}\"><qkd_links>"
                        f"<qkd_link><qkdl_id>{link}</qkdl_id><qkdl_enable>true</qkdl_enable>"
                        f'<qkdl_type xmlns:t="{TYPES}">t:PHYS</qkdl_type><phys_channel_att>7.25</phys_channel_att>'
                        f"</qkd_link></qkd_links></qkd_node></config></edit-config>"
                    )
                    t = time.perf_counter()
                    await c.rpc(edit)
                    await c.rpc("<commit/>")
                    if i >= 5:
                        edits.append((time.perf_counter() - t) * 1000)
                print(f"netconf.edit_commit_1k.p50 = {statistics.median(edits):.2f} ms (target <= 20)")
        finally:
            big.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=500)
    args = ap.parse_args()
    asyncio.run(run(args.iterations))


if __name__ == "__main__":
    main()
