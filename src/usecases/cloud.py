"""Use case 4: key as a cloud service, many SAEs asking for keys at once.

The clients (`clients`, each with its own certificate and its own 014 connection pool, as tasks of
the coordinating process) run `concurrency` request loops between them. One request: the client
takes a key for the server SAE with ETSI 014 `enc_keys` and sends the server
`{key_ID, nonce, mac = HMAC-SHA256(key, "cloud" | client | key_ID | nonce)}`; the server (its own
process, role `cloud-server`, SAE `server`) gets the key by ID with `dec_keys` and checks the
MAC. A request is served when the server confirmed it: both ends hold the same key.

Metrics (Table 2, "number of requests served per second"): confirmed requests per second, and
the latency of one request (enc_keys, transfer, dec_keys, check).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import statistics
import sys
import time
from typing import Any

from . import framing
from .client import Etsi014Client, TransportError
from .encryptor import KEY_WAIT, wait_key
from .framing import FrameType
from .peer import Context, spawn
from .result import NotServed, UseCaseResult


def key_mac(key: bytes, client: str, key_id: str, nonce: bytes) -> bytes:
    return hmac.new(key, b"cloud|" + client.encode() + b"|" + key_id.encode() + b"|" + nonce, hashlib.sha256).digest()


async def run(ctx: Context, duration: float, result: UseCaseResult) -> dict[str, int]:
    server, clients = ctx.spec.server, list(ctx.spec.clients)
    concurrency = int(ctx.spec.params["concurrency"])
    peer = await spawn(ctx, "cloud-server", {"sae": server, "concurrency": concurrency})
    pending: dict[int, asyncio.Future[bool]] = {}
    latencies: list[float] = []
    try:
        reader, writer = await peer.connect()
        stats_f: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def answers() -> None:
            while True:
                kind, raw = await framing.recv(reader)
                msg = json.loads(raw)
                if kind == FrameType.STATS:
                    stats_f.set_result(msg)
                    return
                pending.pop(msg["id"]).set_result(bool(msg["ok"]))

        reader_task = asyncio.create_task(answers())
        kmes = [Etsi014Client(ctx.network, c, limit=concurrency) for c in clients]
        for k in kmes:
            await k.__aenter__()
        try:
            end = time.monotonic() + duration
            next_id = 0

            async def worker(kme: Etsi014Client) -> None:
                nonlocal next_id
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    [(kid, key)] = await wait_key(lambda: kme.enc_keys(server, 1), time.monotonic() + KEY_WAIT)
                    nonce = os.urandom(16)
                    rid, next_id = next_id, next_id + 1
                    fut = pending[rid] = asyncio.get_running_loop().create_future()
                    await framing.send_json(writer, FrameType.DATA, {
                        "id": rid, "client": kme.sae_id, "key_ID": kid, "nonce": base64.b64encode(nonce).decode(),
                        "mac": base64.b64encode(key_mac(key, kme.sae_id, kid, nonce)).decode()})
                    if not await asyncio.wait_for(fut, KEY_WAIT + 15):
                        raise NotServed(f"the server could not confirm the key {kid} of {kme.sae_id}")
                    latencies.append(time.perf_counter() - t0)

            t_start = time.perf_counter()
            workers = [asyncio.create_task(worker(kmes[w % len(kmes)])) for w in range(concurrency)]
            running = set(workers)
            try:
                while running:
                    done, _ = await asyncio.wait(running | {reader_task}, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        if t.exception() is not None:
                            raise t.exception()  # type: ignore[misc]
                    if reader_task.done():
                        raise NotServed("the server closed the connection")
                    running -= done
            finally:
                for w in workers:
                    w.cancel()
            elapsed = time.perf_counter() - t_start
            await framing.send(writer, FrameType.END)
            stats = await asyncio.wait_for(stats_f, 30)
            tally: dict[str, int] = {}
            for k in kmes:
                tally |= k.tally()
        finally:
            reader_task.cancel()
            for k in kmes:
                await k.__aexit__(None, None, None)
    finally:
        await peer.close()
    if not latencies or stats["confirmed"] != len(latencies):
        raise NotServed(f"clients had {len(latencies)} requests served, the server confirmed {stats['confirmed']}")
    result.metric("requests_per_s", len(latencies) / elapsed, "requests/s")
    result.metric("requests", len(latencies), "count")
    result.metric("latency_p50", statistics.median(latencies) * 1e3, "ms")
    result.metric("clients", len(clients), "count")
    for k, v in stats["tally"].items():
        tally[k] = tally.get(k, 0) + v
    return tally


async def server(ctx: Context, args: dict[str, Any], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    """Peer role `cloud-server`: confirm each client's key by fetching it with dec_keys."""
    confirmed = 0
    async with Etsi014Client(ctx.network, args["sae"], limit=int(args["concurrency"])) as kme:

        async def confirm(req: dict[str, Any]) -> None:
            nonlocal confirmed
            try:
                [(_, key)] = await wait_key(lambda: kme.dec_keys(req["client"], [req["key_ID"]]),
                                            time.monotonic() + KEY_WAIT)
            except (NotServed, TransportError) as exc:
                print(f"cloud-server: dec_keys for {req['client']}: {exc}", file=sys.stderr)
                ok = False
            else:
                mac = key_mac(key, req["client"], req["key_ID"], base64.b64decode(req["nonce"]))
                ok = hmac.compare_digest(mac, base64.b64decode(req["mac"]))
            confirmed += ok
            await framing.send_json(writer, FrameType.ACK, {"id": req["id"], "ok": ok})

        tasks: set[asyncio.Task[None]] = set()
        while True:
            kind, raw = await framing.recv(reader)
            if kind == FrameType.END:
                break
            t = asyncio.create_task(confirm(json.loads(raw)))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        await framing.send_json(writer, FrameType.STATS, {"confirmed": confirmed, "tally": kme.tally()})
