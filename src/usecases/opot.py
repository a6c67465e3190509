"""Use case 3: OPoT, ordered proof of transit along a chain of SAEs `saes[0] .. saes[n-1]`.

`saes[0]` is the ingress (the coordinating process), `saes[1..n-2]` transit nodes and `saes[n-1]`
the verifier, each its own process with its own certificate (role `opot-node`). Consecutive nodes
i, i+1 share a QKD key K(i) (i takes it with ETSI 014 `enc_keys`, i+1 the same key by ID with
`dec_keys`), renewed every `rekey_seconds`.

Tags (a chained-HMAC variant of OPoT; MadQCI's OPoT used Shamir shares with QKD keys):
`tag(i) = HMAC-SHA256(K(i-1), "opot" | u8 i | u64 seq | SHA-256(payload) | tag(i-1))`, made by node
i-1 for node i, with tag(0) = 32 zero bytes. Node i checks tag(i) with the key it shares with its
predecessor before it makes tag(i+1), and drops the packet otherwise; the verifier checks the last
tag and that sequence numbers only grow. A packet that skips a node, passes the nodes in another
order, or whose payload changed does not verify: each key belongs to one consecutive pair and
every tag binds its position, the payload and the whole chain before it.

Packets alternate between OPoT (tagged and checked) and plain (forwarded untouched). Every node
adds the time it spent on OPoT work (tagging, checking and its share of key fetches) into the
packet; the verifier's acknowledgement travels back along the chain to the ingress.

Metrics (Table 2, "increased latency of processing a packet"): OPoT processing time added per
packet along the whole chain (mean), round-trip latency of OPoT and plain packets, packets
verified and their rate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import statistics
import struct
import time
from dataclasses import dataclass
from typing import Any

from . import framing
from .client import Etsi014Client
from .encryptor import KEY_WAIT, wait_key
from .framing import FrameType
from .peer import Context, Peer, spawn
from .result import NotServed, UseCaseResult

ZERO_TAG = bytes(32)
_HEAD = struct.Struct("!QBdB")  # seq, opot flag, processing seconds so far, key ID length
_ACK = struct.Struct("!QBd")  # seq, ok, processing seconds along the chain


class OpotError(Exception):
    """A packet whose proof of transit does not verify."""


def hop_tag(key: bytes, hop: int, seq: int, payload: bytes, prev_tag: bytes) -> bytes:
    msg = b"opot" + bytes([hop]) + seq.to_bytes(8, "big") + hashlib.sha256(payload).digest() + prev_tag
    return hmac.new(key, msg, hashlib.sha256).digest()


@dataclass
class Packet:
    seq: int
    opot: bool
    payload: bytes
    key_id: str = ""
    prev_tag: bytes = ZERO_TAG
    tag: bytes = ZERO_TAG
    proc: float = 0.0  # seconds of OPoT work so far

    def encode(self) -> bytes:
        kid = self.key_id.encode()
        return _HEAD.pack(self.seq, self.opot, self.proc, len(kid)) + kid + self.prev_tag + self.tag + self.payload

    @classmethod
    def decode(cls, raw: bytes) -> Packet:
        seq, opot, proc, n = _HEAD.unpack_from(raw)
        o = _HEAD.size
        kid = raw[o:o + n].decode()
        o += n
        return cls(seq, bool(opot), raw[o + 64:], kid, raw[o:o + 32], raw[o + 32:o + 64], proc)


def tag_for_next(pkt: Packet, hop: int, key: bytes, key_id: str) -> None:
    """Node hop-1 tags the packet for node `hop` with the key they share."""
    pkt.prev_tag, pkt.tag = pkt.tag, hop_tag(key, hop, pkt.seq, pkt.payload, pkt.tag)
    pkt.key_id = key_id


def check(pkt: Packet, hop: int, key: bytes) -> None:
    """Node `hop` checks the tag its predecessor made (OpotError if it does not verify)."""
    if not hmac.compare_digest(hop_tag(key, hop, pkt.seq, pkt.payload, pkt.prev_tag), pkt.tag):
        raise OpotError(f"packet {pkt.seq}: proof of transit fails at hop {hop}")


class Verifier:
    """The last node: the proof must verify and sequence numbers must grow (no replay, no reorder)."""

    def __init__(self, hop: int) -> None:
        self.hop = hop
        self.last_seq = -1

    def verify(self, pkt: Packet, key: bytes) -> None:
        check(pkt, self.hop, key)
        if pkt.seq <= self.last_seq:
            raise OpotError(f"packet {pkt.seq} after {self.last_seq}: replayed or reordered")
        self.last_seq = pkt.seq


class _Keys:
    """QKD keys one node shares with a neighbour, by key ID (downstream: taken with enc_keys and
    renewed every `rekey_seconds`; upstream: fetched with dec_keys on a new key ID)."""

    def __init__(self, kme: Etsi014Client, peer_sae: str, rekey_seconds: float) -> None:
        self.kme, self.peer, self.rekey_seconds = kme, peer_sae, rekey_seconds
        self.current: tuple[str, bytes] | None = None
        self.since = 0.0
        self.by_id: dict[str, bytes] = {}
        self.count = 0

    async def outgoing(self) -> tuple[str, bytes]:
        if self.current is None or time.monotonic() - self.since >= self.rekey_seconds:
            [self.current] = await wait_key(lambda: self.kme.enc_keys(self.peer, 1), time.monotonic() + KEY_WAIT)
            self.since = time.monotonic()
            self.count += 1
        return self.current

    async def incoming(self, key_id: str) -> bytes:
        key = self.by_id.get(key_id)
        if key is None:
            [(_, key)] = await wait_key(lambda: self.kme.dec_keys(self.peer, [key_id]), time.monotonic() + KEY_WAIT)
            self.by_id = {k: v for k, v in list(self.by_id.items())[-3:]}
            self.by_id[key_id] = key
            self.count += 1
        return key


async def run(ctx: Context, duration: float, result: UseCaseResult) -> dict[str, int]:
    saes = list(ctx.spec.saes)
    p = ctx.spec.params
    peers: list[Peer] = []
    try:
        next_port: int | None = None
        for i in range(len(saes) - 1, 0, -1):  # last first: each node connects to the next one
            peer = await spawn(ctx, "opot-node", {"index": i, "saes": saes, "next_port": next_port,
                                                  "rekey_seconds": p["rekey_seconds"]})
            peers.append(peer)
            next_port = peer.port
        reader, writer = await peers[-1].connect()
        async with Etsi014Client(ctx.network, saes[0]) as kme:
            stats = await _ingress(kme, saes, reader, writer, duration, p, result)
            tally = kme.tally()
    finally:
        for peer in peers:
            await peer.close()
    for s in stats:
        for k, v in s["tally"].items():
            tally[k] = tally.get(k, 0) + v
    return tally


async def _ingress(kme: Etsi014Client, saes: list[str], reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter, duration: float, p: dict[str, Any],
                   result: UseCaseResult) -> list[dict[str, Any]]:
    keys = _Keys(kme, saes[1], float(p["rekey_seconds"]))
    window = asyncio.Semaphore(int(p["window"]))
    sent: dict[int, tuple[float, bool]] = {}
    rtt = {True: [], False: []}  # type: dict[bool, list[float]]
    proc: list[float] = []
    stats_f: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()

    async def acks() -> None:
        while True:
            kind, raw = await framing.recv(reader)
            if kind == FrameType.STATS:
                stats_f.set_result(json.loads(raw))
                return
            seq, ok, chain_proc = _ACK.unpack(raw)
            t, opot = sent.pop(seq)
            if not ok:
                raise NotServed(f"packet {seq} did not verify along the chain")
            rtt[opot].append(time.perf_counter() - t)
            if opot:
                proc.append(chain_proc)
            window.release()

    ack_task = asyncio.create_task(acks())
    payload = bytearray(os.urandom(int(p["payload_bytes"])))
    t_start = time.perf_counter()
    end = time.monotonic() + duration
    seq = 0
    try:
        while time.monotonic() < end and not ack_task.done():
            acq = asyncio.ensure_future(window.acquire())
            await asyncio.wait({acq, ack_task}, return_when=asyncio.FIRST_COMPLETED)
            if not acq.done():
                acq.cancel()
                break
            payload[:8] = seq.to_bytes(8, "big")
            pkt = Packet(seq, seq % 2 == 0, bytes(payload))
            t = time.perf_counter()
            if pkt.opot:
                key_id, key = await keys.outgoing()
                tag_for_next(pkt, 1, key, key_id)
                pkt.proc = time.perf_counter() - t
            sent[seq] = (t, pkt.opot)
            await framing.send(writer, FrameType.DATA, pkt.encode())
            seq += 1
        await framing.send(writer, FrameType.END)
        await asyncio.wait_for(asyncio.shield(ack_task), 30)
    finally:
        ack_task.cancel()
    elapsed = time.perf_counter() - t_start
    stats = stats_f.result()
    verified = stats[0]["verified"]  # the verifier reports first
    if not proc or verified != len(proc) or sent:
        raise NotServed(f"ingress sent {(seq + 1) // 2} OPoT packets, verifier verified {verified}")
    result.metric("opot_added_latency", statistics.fmean(proc) * 1e3, "ms")
    result.metric("rtt_opot_p50", statistics.median(rtt[True]) * 1e3, "ms")
    result.metric("rtt_plain_p50", statistics.median(rtt[False]) * 1e3, "ms")
    result.metric("packets", len(proc), "count")
    result.metric("rate", len(proc) / elapsed, "packets/s")
    result.metric("keys", keys.count + sum(s["keys"] for s in stats), "count")
    return stats


async def node(ctx: Context, args: dict[str, Any], up_r: asyncio.StreamReader,
               up_w: asyncio.StreamWriter) -> None:
    """Peer role `opot-node`: a transit node, or the verifier when there is no next node."""
    i, saes = int(args["index"]), list(args["saes"])
    last = args["next_port"] is None
    async with Etsi014Client(ctx.network, saes[i]) as kme:
        upstream = _Keys(kme, saes[i - 1], float(args["rekey_seconds"]))
        downstream = None if last else _Keys(kme, saes[i + 1], float(args["rekey_seconds"]))
        verifier = Verifier(i) if last else None
        verified = 0
        down_r = down_w = None
        if not last:
            down_r, down_w = await asyncio.open_connection("127.0.0.1", int(args["next_port"]))

        def own_stats() -> dict[str, Any]:
            return {"index": i, "verified": verified, "tally": kme.tally(),
                    "keys": upstream.count + (downstream.count if downstream else 0)}

        async def relay_acks() -> None:  # downstream acks go upstream unchanged; STATS gets ours
            assert down_r is not None
            while True:
                kind, raw = await framing.recv(down_r)
                if kind == FrameType.STATS:
                    await framing.send_json(up_w, FrameType.STATS, [*json.loads(raw), own_stats()])
                    return
                framing.send_nowait(up_w, FrameType.ACK, raw)

        ack_task = asyncio.create_task(relay_acks()) if not last else None
        try:
            while True:
                kind, raw = await framing.recv(up_r)
                if kind == FrameType.END:
                    break
                pkt = Packet.decode(raw)
                t = time.perf_counter()
                ok = True
                if pkt.opot:
                    key = await upstream.incoming(pkt.key_id)
                    try:
                        if verifier is not None:
                            verifier.verify(pkt, key)
                            verified += 1
                        else:
                            check(pkt, i, key)
                            assert downstream is not None
                            key_id, dkey = await downstream.outgoing()
                            tag_for_next(pkt, i + 1, dkey, key_id)
                    except OpotError:
                        ok = False
                    pkt.proc += time.perf_counter() - t
                if last or not ok:
                    framing.send_nowait(up_w, FrameType.ACK, _ACK.pack(pkt.seq, ok, pkt.proc))
                    await up_w.drain()
                else:
                    assert down_w is not None
                    await framing.send(down_w, FrameType.DATA, pkt.encode())
            if last:
                await framing.send_json(up_w, FrameType.STATS, [own_stats()])
            else:
                assert down_w is not None and ack_task is not None
                await framing.send(down_w, FrameType.END)
                await asyncio.wait_for(ack_task, 30)
        finally:
            if ack_task is not None:
                ack_task.cancel()
            if down_w is not None:
                down_w.close()
