"""A small QRNG entropy service (REST) and its client.

Server: ``GET /entropy?bytes=N`` (1 <= N <= 1 MiB) answers ``200`` with exactly N raw random bytes,
``Content-Type: application/octet-stream``; anything else is ``400`` with a JSON
``{"message": ...}``. The bytes come from ``os.urandom`` (the stand-in for a quantum random number
generator device). With ``--cert/--key`` it serves HTTPS (TLS 1.3); with ``--ca`` as well it
requires client certificates signed by that CA (the nodes present their node certificates).
Random bytes are never logged.

    python -m qkdnode.qrng --port 8400 [--host 127.0.0.1] [--cert C --key K [--ca CA]]

prints ``READY qrng port=N`` on stdout once it listens (port 0 picks a free port).

Client: `QrngClient(url, ssl_ctx)` is an async callable ``n -> n bytes``, the entropy source of
the key forwarder at the origin of a relay (node config ``qrng: {url: ...}``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from .eventloop import HARD_STOP_S, Shutdown, wait_for_stop_signal

MAX_BYTES = 1 << 20


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"message": message}).encode(),
                        content_type="application/json")


async def entropy(request: web.Request) -> web.Response:
    raw = request.query.get("bytes", "")
    if set(request.query) - {"bytes"} or not (raw.isascii() and raw.isdigit() and len(raw) <= 8):
        return _error(400, "bytes=N (a positive integer) is the only parameter")
    n = int(raw)
    if not 1 <= n <= MAX_BYTES:
        return _error(400, f"bytes must be between 1 and {MAX_BYTES}")
    return web.Response(body=os.urandom(n), content_type="application/octet-stream",
                        headers={"Cache-Control": "no-store"})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/entropy", entropy)
    return app


def server_ssl(cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def serve(host: str, port: int, ctx: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ctx)
    await site.start()
    return runner, int(runner.addresses[0][1])


class QrngClient:
    """Fetches entropy from a QRNG service; raises on anything but exactly n bytes."""

    def __init__(self, url: str, ssl_ctx: ssl.SSLContext | None = None, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/entropy"
        self.ssl_ctx = ssl_ctx
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, n: int) -> bytes:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_ctx if self.ssl_ctx is not None else True),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        out = bytearray()
        while len(out) < n:
            want = min(n - len(out), MAX_BYTES)
            async with self._session.get(self.url, params={"bytes": str(want)}) as r:
                body = await r.read()
                if r.status != 200 or len(body) != want:
                    raise OSError(f"QRNG answered HTTP {r.status} with {len(body)} of {want} bytes")
            out += body
        return bytes(out)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _main(args: argparse.Namespace) -> None:
    ctx = server_ssl(args.cert, args.key, args.ca)
    runner, port = await serve(args.host, args.port, ctx)
    print(f"READY qrng port={port}", flush=True)
    await wait_for_stop_signal()  # arms the hard stop (eventloop.HARD_STOP_S)
    await Shutdown("QRNG service", HARD_STOP_S - 1.0).step("HTTPS server", runner.cleanup())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qkdnode.qrng", description="QRNG entropy service (REST)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--cert", help="server certificate (PEM): serve HTTPS")
    parser.add_argument("--key", help="its private key (PEM)")
    parser.add_argument("--ca", help="CA certificate (PEM): require client certificates signed by it")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key) or (args.ca and not args.cert):
        parser.error("--cert and --key go together; --ca needs them")
    for f in (args.cert, args.key, args.ca):
        if f and not Path(f).is_file():
            parser.error(f"no such file: {f}")
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
