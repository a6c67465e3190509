"""Relay transport floor: `python bench/relay_floor.py` (about two minutes). A diagnostic, not a figure.

What one more hop costs a relay when the hops do no key work at all, per transport, measured the
way `relay_bench.py` measures `relay.hop_latency.p50`: chains of node processes on loopback, each
node passing the message to the next and the reply back (nested, as the commit pass does), one
client sending requests back to back; the per-hop figure is the difference of the p50 latencies of a
5-hop and a 1-hop chain, divided by 4 (median over interleaved rounds, so that the host's drift hits
every transport alike). Transports:

* `tcp`: asyncio streams (uvloop), 4-byte length prefix, no TLS: the floor of the machine and Python;
* `tls`: the same with mutual TLS 1.3 (the lab PKI's contexts);
* `grpc`: a grpc.aio bidirectional stream, no TLS, bytes in and out;
* `grpc-tls`: the same with mutual TLS (the forwarder's credentials and options);
* `forwarder`: the key forwarder's own transport (`forwarder/service.py`: `RelayServer`,
  `NeighbourChannels`, the Hop stream with mutual TLS, `RelayHop`/`CommitReply` protobuf messages of a
  one-key relay), the handler forwarding the commit downstream and nothing else.

`relay.hop_latency.p50` can only be as low as the `forwarder` line plus the hop's own work (its store
transaction, MAC and pad). Lines go to stderr, in the `# ...` form of the other benches' diagnostics.
"""

from __future__ import annotations

import asyncio
import pickle
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qkdnode import eventloop  # noqa: E402
from qkdnode.forwarder.service import Neighbour, NeighbourChannels, RelayServer, pb  # noqa: E402
from qkdnode.pki import CertificateAuthority, CertPaths, client_context, server_context  # noqa: E402

TRANSPORTS = ("tcp", "tls", "grpc", "grpc-tls", "forwarder")
ROUNDS = 3
REQUESTS = 400
GAPS_S = (0.0, 0.005)  # back to back; and with the nodes idle between requests, as in a relay bench
LONG = 5  # hops of the long chain (the short one has 1)
SERVICE = "qkdnet.bench.Floor"
PAYLOAD = b"x" * 400  # about a one-key RelayHop
Send = Callable[[bytes], Awaitable[bytes]]


def relay_hop() -> Any:
    return pb.RelayHop(relay_id="0" * 36, route_id="r" * 36, origin="o" * 36, target="t" * 36, hop=1,
                       link_id="l" * 36, key_size_bits=256, link_key_ids=["k" * 36] * 2, key_ids=["i" * 36],
                       ciphertext=b"c" * 32, tag=b"t" * 16)


# -- the next hop, per transport ---------------------------------------------------------------------
async def framed(reader: asyncio.StreamReader) -> bytes:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(n)


async def stream_sender(port: int, ctx: ssl.SSLContext | None) -> Send:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)

    async def send(msg: bytes) -> bytes:
        writer.write(struct.pack(">I", len(msg)) + msg)
        return await framed(reader)
    return send


def grpc_sender(port: int, channels: list[grpc.aio.Channel], tls: CertPaths | None = None) -> Send:
    if tls is None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    else:  # mutual TLS, as the forwarder's channels (the certificates name 127.0.0.1 too)
        creds = grpc.ssl_channel_credentials(tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes())
        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)
    channels.append(channel)
    call = channel.stream_stream(f"/{SERVICE}/Hop")()

    async def send(msg: bytes) -> bytes:
        await call.write(msg)
        reply = await call.read()
        assert isinstance(reply, bytes)
        return reply
    return send


# -- one node of a chain: serve, pass on to the next node (if any) -------------------------------------
async def node(transport: str, certs: list[CertPaths], i: int, next_port: int) -> None:
    mine = certs[i]
    if transport == "forwarder":
        channels = NeighbourChannels(mine)
        nxt = Neighbour(f"n{i + 1}", f"n{i + 1}", "127.0.0.1", next_port)

        async def commit(req: Any, caller: str) -> Any:
            return await channels.call(nxt, "commit", req, 5) if next_port else pb.CommitReply(stored=1)

        async def other(req: Any, caller: str) -> Any:
            raise AssertionError("only commits in this bench")
        server = RelayServer.create(mine, f"n{i}", lambda: {f"n{i - 1}": Neighbour(f"n{i - 1}", "x")},
                                    {"prepare": other, "commit": commit, "abort": other, "revoke": other, "tails": other})
        port = await server.start()
    else:
        down: Send | None = None
        if next_port:
            down = grpc_sender(next_port, [], mine if transport == "grpc-tls" else None) \
                if transport.startswith("grpc") else \
                await stream_sender(next_port, client_context(mine) if transport == "tls" else None)

        async def pass_on(msg: bytes) -> bytes:
            return await down(msg) if down is not None else b"ok"
        if transport.startswith("grpc"):
            async def hop(requests: Any, context: grpc.aio.ServicerContext) -> None:
                async for msg in requests:
                    await context.write(await pass_on(msg))
            gserver = grpc.aio.server()
            gserver.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
                "Hop": grpc.stream_stream_rpc_method_handler(hop)}),))
            port = gserver.add_insecure_port("127.0.0.1:0") if transport == "grpc" else \
                gserver.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
                    [(mine.key.read_bytes(), mine.cert.read_bytes())], mine.ca.read_bytes(), require_client_auth=True))
            await gserver.start()
        else:
            async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while True:
                    try:
                        msg = await framed(reader)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                    reply = await pass_on(msg)
                    writer.write(struct.pack(">I", len(reply)) + reply)
            sserver = await asyncio.start_server(serve, "127.0.0.1", 0,
                                                 ssl=server_context(mine) if transport == "tls" else None)
            port = sserver.sockets[0].getsockname()[1]
    print(port, flush=True)
    await asyncio.sleep(3600)


# -- the client ------------------------------------------------------------------------------------------
async def p50(transport: str, certs: list[CertPaths], port: int, gap: float) -> float:
    grpc_channels: list[grpc.aio.Channel] = []
    if transport == "forwarder":
        channels = NeighbourChannels(certs[0])
        nb, msg = Neighbour("n1", "n1", "127.0.0.1", port), relay_hop()

        async def once() -> None:
            await channels.call(nb, "commit", msg, 5)
    else:
        send = grpc_sender(port, grpc_channels, certs[0] if transport == "grpc-tls" else None) \
            if transport.startswith("grpc") else \
            await stream_sender(port, client_context(certs[0]) if transport == "tls" else None)

        async def once() -> None:
            await send(PAYLOAD)
    lat: list[float] = []
    for _ in range(REQUESTS):
        t = time.perf_counter()
        await once()
        lat.append((time.perf_counter() - t) * 1000)
        if gap:
            await asyncio.sleep(gap)
    if transport == "forwarder":
        await channels.close()
    for channel in grpc_channels:
        await channel.close()
    return statistics.median(lat[REQUESTS // 5:])


def chain(transport: str, tmp: Path, hops: int) -> tuple[list[subprocess.Popen[str]], int]:
    procs: list[subprocess.Popen[str]] = []
    port = 0
    for i in range(hops, 0, -1):  # the far end first: each node needs its next one's port
        p = subprocess.Popen([sys.executable, __file__, "--node", transport, str(tmp), str(i), str(port)],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None
        port = int(p.stdout.readline())
    return procs, port


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="relay-floor-") as tmp:
        ca = CertificateAuthority(Path(tmp) / "ca")
        certs = [ca.issue_server(f"n{i}", Path(tmp) / f"n{i}") for i in range(LONG + 1)]
        (Path(tmp) / "certs.pickle").write_bytes(pickle.dumps(certs))
        per_hop: dict[tuple[str, float], list[float]] = {(t, g): [] for t in TRANSPORTS for g in GAPS_S}
        for _ in range(ROUNDS):
            for transport, gap in per_hop:
                got = {}
                for hops in (1, LONG):
                    procs, port = chain(transport, Path(tmp), hops)
                    try:
                        got[hops] = eventloop.run(p50(transport, certs, port, gap))
                    finally:
                        for p in procs:
                            p.kill()
                            p.wait()
                per_hop[transport, gap].append((got[LONG] - got[1]) / (LONG - 1))
        for (transport, gap), runs in per_hop.items():
            pace = f"{gap * 1000:.0f} ms between requests" if gap else "back to back"
            print(f"# relay floor, {transport}, {pace}: {statistics.median(runs):.2f} ms per hop "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in runs)})", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--node":
        transport, tmp, i, next_port = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        eventloop.run(node(transport, pickle.loads((tmp / "certs.pickle").read_bytes()), i, next_port))
    else:
        main()
