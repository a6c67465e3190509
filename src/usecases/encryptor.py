"""Use case 1: a pair of encryptors (usually in different domains) streaming AES-256-GCM frames,
rekeyed from QKD keys every `rekey_bytes` bytes or `rekey_seconds` seconds, whichever comes first.

* The sender (the coordinating process, SAE `saes[0]`) takes each key with ETSI 014 `enc_keys`
  for `saes[1]` and uses the 256-bit QKD key as the AES-256-GCM key. Its frames carry only the
  key ID, a sequence number and the ciphertext: `u8 len | key_ID | u64 seq | ciphertext+tag`,
  nonce = 4 zero bytes | seq (unique per key: seq never repeats), AAD = the header.
* The receiver is its own process (role `encryptor-rx`, SAE `saes[1]`, its own certificate): on a
  new key ID it gets the key with `dec_keys`, decrypts and authenticates every frame, checks the
  sequence number inside the plaintext and acknowledges each frame (`u64 seq | u8 ok`).
* The sender keeps at most `window` frames unacknowledged. A rekey waits for a key: the sender
  never uses a key beyond its byte or time budget (key shortage shows as lower throughput).

Metrics (Table 2, "encrypted data throughput / latencies"): throughput of verified plaintext,
per-frame latency (encryption, transfer, decryption, verification and the acknowledgement back),
and the number of rekeys.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import struct
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import framing
from .client import Etsi014Client, Etsi014Error
from .framing import FrameType
from .peer import Context, Peer, spawn
from .result import NotServed, UseCaseResult

_SEQ = struct.Struct("!Q")
_ACK = struct.Struct("!QB")
KEY_WAIT = 15.0  # seconds a side waits for a key before the use case is not served


class FrameAuthError(Exception):
    """A frame that does not decrypt and authenticate under the key its header names."""


def _header(key_id: str, seq: int) -> bytes:
    kid = key_id.encode()
    return bytes([len(kid)]) + kid + _SEQ.pack(seq)


def _nonce(seq: int) -> bytes:
    return b"\0\0\0\0" + _SEQ.pack(seq)


def seal(aead: AESGCM, key_id: str, seq: int, plaintext: bytes) -> bytes:
    """One frame: header (key ID, seq) in clear and authenticated, then ciphertext and tag."""
    head = _header(key_id, seq)
    return head + aead.encrypt(_nonce(seq), plaintext, head)


def parse_header(frame: bytes) -> tuple[str, int, int]:
    """(key ID, seq, header length) of a frame."""
    n = frame[0]
    if len(frame) < 1 + n + _SEQ.size + 16:
        raise FrameAuthError("truncated frame")
    key_id = frame[1:1 + n].decode()
    (seq,) = _SEQ.unpack_from(frame, 1 + n)
    return key_id, seq, 1 + n + _SEQ.size


def open_frame(aead: AESGCM, frame: bytes) -> tuple[int, bytes]:
    """(seq, plaintext) of a frame; FrameAuthError when it does not authenticate."""
    _, seq, hl = parse_header(frame)
    try:
        return seq, aead.decrypt(_nonce(seq), frame[hl:], frame[:hl])
    except InvalidTag:
        raise FrameAuthError(f"frame {seq} does not authenticate") from None


async def wait_key(fetch: Any, deadline: float) -> list[tuple[str, bytes]]:
    """Call a 014 key request until it answers, retrying while keys are short, up to `deadline`."""
    while True:
        try:
            return await fetch()  # type: ignore[no-any-return]
        except Etsi014Error as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise NotServed(f"014: {exc}") from None
            await asyncio.sleep(0.1)


async def run(ctx: Context, duration: float, result: UseCaseResult) -> dict[str, int]:
    """Sender side; returns the 014 tallies of both processes."""
    a, b = ctx.spec.saes
    peer: Peer = await spawn(ctx, "encryptor-rx", {"sae": b, "master": a})
    try:
        async with Etsi014Client(ctx.network, a) as kme:
            stats = await _send(ctx, kme, peer, duration, result)
            tally = kme.tally()
    finally:
        await peer.close()
    for k, v in stats["tally"].items():
        tally[k] = tally.get(k, 0) + v
    return tally


async def _send(ctx: Context, kme: Etsi014Client, peer: Peer, duration: float,
                result: UseCaseResult) -> dict[str, Any]:
    p = ctx.spec.params
    slave = ctx.spec.saes[1]
    frame_bytes, window = int(p["frame_bytes"]), int(p["window"])
    rekey_bytes, rekey_seconds = int(p["rekey_bytes"]), float(p["rekey_seconds"])
    max_bps = p["max_mbps"] * 1e6 / 8 if p["max_mbps"] else None
    reader, writer = await peer.connect()
    base = bytearray(os.urandom(frame_bytes))
    sent: dict[int, float] = {}
    latencies: list[float] = []
    acked_bytes = 0
    slots = asyncio.Semaphore(window)
    stats: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def acks() -> None:
        nonlocal acked_bytes
        while True:
            kind, payload = await framing.recv(reader)
            if kind == FrameType.STATS:
                stats.set_result(json.loads(payload))
                return
            seq, ok = _ACK.unpack(payload)
            t = sent.pop(seq)
            if not ok:
                raise NotServed(f"receiver rejected frame {seq}")
            latencies.append(time.perf_counter() - t)
            acked_bytes += frame_bytes
            slots.release()

    ack_task = asyncio.create_task(acks())
    t0 = time.perf_counter()
    end = time.monotonic() + duration
    keys = seq = key_bytes = 0
    key_t = 0.0
    aead: AESGCM | None = None
    key_id = ""
    try:
        while time.monotonic() < end and not ack_task.done():
            if aead is None or key_bytes + frame_bytes > rekey_bytes or time.monotonic() - key_t >= rekey_seconds:
                [(key_id, key)] = await wait_key(lambda: kme.enc_keys(slave, 1), time.monotonic() + KEY_WAIT)
                aead, key_bytes, key_t = AESGCM(key), 0, time.monotonic()
                keys += 1
            if slots.locked():  # window full: wait for an ack, or for the ack reader to fail
                acq = asyncio.ensure_future(slots.acquire())
                await asyncio.wait({acq, ack_task}, return_when=asyncio.FIRST_COMPLETED)
                if not acq.done():
                    acq.cancel()
                    break
            else:
                await slots.acquire()
            base[:8] = _SEQ.pack(seq)
            sent[seq] = time.perf_counter()
            framing.send_nowait(writer, FrameType.DATA, seal(aead, key_id, seq, bytes(base)))
            await writer.drain()
            seq += 1
            key_bytes += frame_bytes
            if max_bps:
                ahead = seq * frame_bytes / max_bps - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await framing.send(writer, FrameType.END)
        await asyncio.wait_for(asyncio.shield(ack_task), 30)
    finally:
        ack_task.cancel()
    elapsed = (time.perf_counter() - t0)
    peer_stats = stats.result()
    if seq == 0 or not latencies:
        raise NotServed("no frame went through")
    if peer_stats["bytes"] != acked_bytes or peer_stats["frames"] != seq or sent:
        raise NotServed(f"sent {seq} frames, receiver verified {peer_stats['frames']}")
    result.metric("throughput", acked_bytes * 8 / elapsed / 1e6, "Mbit/s")
    result.metric("latency_p50", statistics.median(latencies) * 1e3, "ms")
    result.metric("latency_mean", statistics.fmean(latencies) * 1e3, "ms")
    result.metric("rekeys", keys - 1, "count")
    result.metric("keys", keys, "count")
    result.metric("frames", seq, "count")
    result.metric("bytes", acked_bytes, "bytes")
    return peer_stats


async def receiver(ctx: Context, args: dict[str, Any], reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
    """Peer role `encryptor-rx`: decrypt and verify every frame, acknowledge it."""
    frames = nbytes = 0
    aeads: dict[str, AESGCM] = {}
    async with Etsi014Client(ctx.network, args["sae"]) as kme:
        while True:
            kind, frame = await framing.recv(reader)
            if kind == FrameType.END:
                break
            key_id, seq, _ = parse_header(frame)
            aead = aeads.get(key_id)
            if aead is None:
                [(_, key)] = await wait_key(lambda: kme.dec_keys(args["master"], [key_id]),
                                            time.monotonic() + KEY_WAIT)
                aead = aeads[key_id] = AESGCM(key)
                if len(aeads) > 4:
                    del aeads[next(iter(aeads))]
            try:
                got_seq, plain = open_frame(aead, frame)
                ok = got_seq == seq and plain[:8] == _SEQ.pack(seq)
            except FrameAuthError:
                ok = False
            if ok:
                frames += 1
                nbytes += len(plain)
            framing.send_nowait(writer, FrameType.ACK, _ACK.pack(seq, ok))
            await writer.drain()
        await framing.send_json(writer, FrameType.STATS, {"frames": frames, "bytes": nbytes, "tally": kme.tally()})
