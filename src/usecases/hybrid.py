"""Use case 2: hybrid keys, a QKD key combined with a post-quantum (or classical) shared secret.

Each round, between the initiator (the coordinating process, SAE `saes[0]`) and the responder
(its own process, role `hybrid-responder`, SAE `saes[1]`):

1. A takes a QKD key with ETSI 014 `enc_keys`, makes an ephemeral KEM key pair and sends
   `{key_ID, kem, pk}`.
2. B takes the same QKD key with `dec_keys`, encapsulates to `pk` (shared secret `ss`, `ct`),
   derives the hybrid key and answers `{ct, confirm_B}`.
3. A decapsulates, derives the hybrid key, checks `confirm_B` and sends `confirm_A`; B checks it.

KEM: ML-KEM-768 (FIPS 203) from `cryptography` when it offers it (`cryptography` >= 44 with an
OpenSSL that has ML-KEM; version 50 here does), else X25519 ephemeral Diffie-Hellman in the same
KEM shape (documented fallback; `kem: x25519` forces it).

Combiner (concatenation KDF in the manner of ETSI TS 103 744 "CatKDF"):
`K = HKDF-SHA256(ikm = qkd_key | ss, salt = SHA-256(transcript), info = "qkdnet hybrid key v1")`,
both secrets of fixed length (32 bytes). HKDF is a PRF keyed by its ikm, so K stays
pseudorandom to an attacker who lacks either secret: it is secure if the QKD key is secret or the
KEM holds. The transcript binds both SAE IDs, the key ID, the KEM and its pk and ct. Confirmation
tags: `HMAC-SHA256(K, "confirm-B" | transcript hash)` and likewise `"confirm-A"`.

Metrics (Table 2, "latencies in serving a request"): hybrid keys established per second, and
the latency of one establishment (both 014 calls, the KEM and the two confirmations).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import statistics
import time
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import framing
from .client import Etsi014Client
from .encryptor import KEY_WAIT, wait_key
from .framing import FrameType
from .peer import Context, spawn
from .result import NotServed, UseCaseResult

INFO = b"qkdnet hybrid key v1"


class Kem(Protocol):
    name: str

    def keypair(self) -> tuple[Any, bytes]: ...

    def encapsulate(self, pk: bytes) -> tuple[bytes, bytes]: ...

    def decapsulate(self, sk: Any, ct: bytes) -> bytes: ...


class MlKem768:
    name = "ML-KEM-768"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import mlkem

        self._m = mlkem
        mlkem.MLKEM768PrivateKey.generate()  # raises UnsupportedAlgorithm where OpenSSL lacks it

    def keypair(self) -> tuple[Any, bytes]:
        sk = self._m.MLKEM768PrivateKey.generate()
        return sk, sk.public_key().public_bytes_raw()

    def encapsulate(self, pk: bytes) -> tuple[bytes, bytes]:
        ss, ct = self._m.MLKEM768PublicKey.from_public_bytes(pk).encapsulate()
        return ss, ct

    def decapsulate(self, sk: Any, ct: bytes) -> bytes:
        return sk.decapsulate(ct)  # type: ignore[no-any-return]


class X25519Kem:
    """Ephemeral X25519 shaped as a KEM: ct is the encapsulator's ephemeral public key."""

    name = "X25519"

    def keypair(self) -> tuple[Any, bytes]:
        sk = x25519.X25519PrivateKey.generate()
        return sk, sk.public_key().public_bytes_raw()

    def encapsulate(self, pk: bytes) -> tuple[bytes, bytes]:
        eph = x25519.X25519PrivateKey.generate()
        return eph.exchange(x25519.X25519PublicKey.from_public_bytes(pk)), eph.public_key().public_bytes_raw()

    def decapsulate(self, sk: Any, ct: bytes) -> bytes:
        return sk.exchange(x25519.X25519PublicKey.from_public_bytes(ct))  # type: ignore[no-any-return]


def kem_for(choice: str) -> Kem:
    """`auto`: ML-KEM-768 when `cryptography` offers it, else X25519."""
    if choice in ("auto", "ml-kem-768"):
        try:
            return MlKem768()
        except Exception:  # ImportError (older cryptography) or UnsupportedAlgorithm (OpenSSL)
            if choice == "ml-kem-768":
                raise
    return X25519Kem()


def kem_named(name: str) -> Kem:
    return MlKem768() if name == MlKem768.name else X25519Kem()


def transcript(a: str, b: str, key_id: str, kem: str, pk: bytes, ct: bytes) -> bytes:
    """SHA-256 over a length-prefixed encoding of everything both sides agreed on."""
    h = hashlib.sha256()
    for part in (a.encode(), b.encode(), key_id.encode(), kem.encode(), pk, ct):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


def combine(qkd_key: bytes, kem_secret: bytes, transcript_hash: bytes) -> bytes:
    """The hybrid key: secure if either input secret is."""
    if len(qkd_key) != 32 or len(kem_secret) != 32:
        raise ValueError("both secrets must be 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=transcript_hash, info=INFO).derive(qkd_key + kem_secret)


def confirm(key: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return hmac.new(key, label + transcript_hash, hashlib.sha256).digest()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


async def run(ctx: Context, duration: float, result: UseCaseResult) -> dict[str, int]:
    a, b = ctx.spec.saes
    kem = kem_for(str(ctx.spec.params["kem"]))
    result.info["kem"] = kem.name
    peer = await spawn(ctx, "hybrid-responder", {"sae": b, "master": a})
    latencies: list[float] = []
    try:
        reader, writer = await peer.connect()
        async with Etsi014Client(ctx.network, a) as kme:
            t_start = time.perf_counter()
            end = time.monotonic() + duration
            while time.monotonic() < end:
                t0 = time.perf_counter()
                [(kid, qk)] = await wait_key(lambda: kme.enc_keys(b, 1), time.monotonic() + KEY_WAIT)
                sk, pk = kem.keypair()
                await framing.send_json(writer, FrameType.DATA, {"key_ID": kid, "kem": kem.name, "pk": _b64(pk)})
                answer = await framing.recv_json(reader, FrameType.ACK)
                if "error" in answer:
                    raise NotServed(f"responder: {answer['error']}")
                ct = base64.b64decode(answer["ct"])
                th = transcript(a, b, kid, kem.name, pk, ct)
                key = combine(qk, kem.decapsulate(sk, ct), th)
                if not hmac.compare_digest(confirm(key, b"confirm-B", th), base64.b64decode(answer["confirm"])):
                    raise NotServed("the responder derived a different hybrid key")
                await framing.send_json(writer, FrameType.DATA, {"confirm": _b64(confirm(key, b"confirm-A", th))})
                done = await framing.recv_json(reader, FrameType.ACK)
                if not done.get("ok"):
                    raise NotServed("the responder rejected the initiator's confirmation")
                latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - t_start
            await framing.send(writer, FrameType.END)
            stats = await asyncio.wait_for(framing.recv_json(reader, FrameType.STATS), 30)
            tally = kme.tally()
    finally:
        await peer.close()
    if not latencies or stats["established"] != len(latencies):
        raise NotServed(f"initiator established {len(latencies)} hybrid keys, responder {stats['established']}")
    result.metric("hybrid_keys", len(latencies), "count")
    result.metric("rate", len(latencies) / elapsed, "keys/s")
    result.metric("latency_p50", statistics.median(latencies) * 1e3, "ms")
    result.metric("latency_mean", statistics.fmean(latencies) * 1e3, "ms")
    for k, v in stats["tally"].items():
        tally[k] = tally.get(k, 0) + v
    return tally


async def responder(ctx: Context, args: dict[str, Any], reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    """Peer role `hybrid-responder`."""
    established = 0
    a, b = args["master"], args["sae"]
    async with Etsi014Client(ctx.network, b) as kme:
        while True:
            kind, payload = await framing.recv(reader)
            if kind == FrameType.END:
                break
            hello = json.loads(payload)
            kid, kem = hello["key_ID"], kem_named(hello["kem"])
            [(_, qk)] = await wait_key(lambda: kme.dec_keys(a, [kid]), time.monotonic() + KEY_WAIT)
            pk = base64.b64decode(hello["pk"])
            ss, ct = kem.encapsulate(pk)
            th = transcript(a, b, kid, kem.name, pk, ct)
            key = combine(qk, ss, th)
            await framing.send_json(writer, FrameType.ACK, {"ct": _b64(ct), "confirm": _b64(confirm(key, b"confirm-B", th))})
            fin = await framing.recv_json(reader, FrameType.DATA)
            ok = hmac.compare_digest(confirm(key, b"confirm-A", th), base64.b64decode(fin["confirm"]))
            established += ok
            await framing.send_json(writer, FrameType.ACK, {"ok": ok})
        await framing.send_json(writer, FrameType.STATS, {"established": established, "tally": kme.tally()})
