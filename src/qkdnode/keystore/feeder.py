"""KMS side of a QKD module's ETSI GS QKD 014 export: pull keys, store them durably, acknowledge.

`ModuleFeeder` is a plain 014 client (mutual TLS, one keep-alive connection) of the module's key
server (`qkdnode.devices.keysource`), or of any device speaking 014 plus our ``ack`` extension. One
round: ``GET status`` (how many keys the module holds), ``POST enc_keys`` for
``min(batch, stored_key_count, max_key_per_request, room in the store)`` keys, ingest them into the
`KeyStore` (blocking, durable on return: run in a thread), then ``POST ack`` with their IDs. The module
removes keys only on ACK and serves unacknowledged keys again first, so a crash anywhere in the round
loses nothing: keys served again whose seq is not above the store's ``last_seq`` were already stored
(ingest is atomic and seq-ordered) and are only acknowledged, not ingested twice.

A round without keys is followed by a pause of `poll_s`, doubling while the module stays empty up to
`max_idle_s` (a module delivers keys once per tick). Replies in the layout our modules write are
read column-wise (`qkdnode.keystore.keyjson`), any other 014 reply as plain JSON.

When the store is full the feeder stops pulling; the module's buffer then fills and the module stops
generating, as a real device does when its KMS stops collecting keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
from bisect import bisect_right
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter, lt
from typing import Any

import aiohttp

from .errors import KeyStoreError
from .keyjson import ack_body, parse_uniform_keys
from .store import KeyStore
from .types import UUIDS_RE

log = logging.getLogger(__name__)

__all__ = ["FeederError", "FeederStats", "ModuleFeeder"]


class FeederError(Exception):
    """The module answered something unusable (message never contains key material)."""


@dataclass(frozen=True)
class FeederStats:
    keys_pulled: int  #: keys received and stored (new ones)
    keys_repeated: int  #: keys served again that were already stored
    keys_dropped: int  #: keys the store refused because it was full
    rounds: int
    errors: int
    last_error: str | None
    running: bool


class ModuleFeeder:
    """Polls one module's 014 server and feeds one key association of the KeyStore."""

    def __init__(self, url: str, ssl_ctx: ssl.SSLContext, peer_kms_id: str, store: KeyStore,
                 assoc_id: str, *, batch: int = 8192, poll_s: float = 0.2, max_idle_s: float = 1.0,
                 max_backoff_s: float = 5.0, request_timeout_s: float = 30.0) -> None:
        if batch < 1 or poll_s <= 0:
            raise ValueError("batch >= 1 and poll_s > 0 required")
        self.base = url.rstrip("/") + f"/api/v1/keys/{peer_kms_id}"
        self.ssl_ctx = ssl_ctx
        self.store = store
        self.assoc_id = assoc_id
        self.batch = batch
        self.poll_s = poll_s
        self.max_idle_s = max_idle_s  #: empty polls back off from poll_s up to this
        self.max_backoff_s = max_backoff_s
        self.request_timeout_s = request_timeout_s
        self.keys_pulled = 0
        self.keys_repeated = 0
        self.keys_dropped = 0
        self.rounds = 0
        self.errors = 0
        self.last_error: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("feeder already started")
        self.store.association(self.assoc_id)  # UnknownAssociation now rather than in the loop
        self._task = asyncio.create_task(self._run(), name=f"feeder-{self.assoc_id}")

    async def stop(self) -> None:
        """Stop after the current step; a round cut short is completed by the next start (re-serve)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stats(self) -> FeederStats:
        return FeederStats(self.keys_pulled, self.keys_repeated, self.keys_dropped, self.rounds,
                           self.errors, self.last_error, self._task is not None and not self._task.done())

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_ctx, limit=1, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            )
        return self._session

    async def _run(self) -> None:
        backoff = idle = self.poll_s
        while True:
            try:
                got = await self.pull_once()
            except (aiohttp.ClientError, OSError, TimeoutError, FeederError, KeyStoreError) as e:
                self.errors += 1
                text = f"{type(e).__name__}: {e}"
                if text != self.last_error:
                    log.warning("feeder %s: %s (retrying, backoff up to %.1f s)", self.assoc_id, text,
                                self.max_backoff_s)
                self.last_error = text
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = self.poll_s
            self.last_error = None
            if got == 0:  # nothing buffered (or store full): poll again later, less often while idle
                await asyncio.sleep(idle)
                idle = min(idle * 2, max(self.max_idle_s, self.poll_s))
            else:
                idle = self.poll_s

    # -- one round -------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: dict[str, Any] | bytes | None = None) -> tuple[int, Any]:
        code, raw = await self._call_raw(method, path, body)
        return code, _json(method, path, code, raw)

    async def _call_raw(self, method: str, path: str, body: dict[str, Any] | bytes | None = None) -> tuple[int, bytes]:
        kw: dict[str, Any] = ({"data": body, "headers": {"Content-Type": "application/json"}}
                              if isinstance(body, bytes) else {"json": body})
        async with self._http().request(method, f"{self.base}/{path}", **kw) as r:
            return r.status, await r.read()

    async def pull_once(self) -> int:
        """One status -> enc_keys -> ingest -> ack round; returns the keys served (0: none)."""
        st = self.store.stats(self.assoc_id)
        room = st.capacity - st.available_total
        if room <= 0:
            return 0
        code, status = await self._call("GET", "status")
        if code != 200 or not isinstance(status, dict):
            raise FeederError(f"status: HTTP {code}: {_message(status)}")
        stored, limit, size = (status.get(k) for k in ("stored_key_count", "max_key_per_request", "key_size"))
        if not all(type(v) is int for v in (stored, limit, size)):
            raise FeederError("status lacks stored_key_count/max_key_per_request/key_size")
        assert isinstance(stored, int) and isinstance(limit, int) and isinstance(size, int)
        if size != st.key_size_bits:
            raise FeederError(f"module key size {size} != association key size {st.key_size_bits}")
        n = min(self.batch, stored, limit, room)
        if n <= 0:
            return 0
        code, raw = await self._call_raw("POST", "enc_keys", {"number": n})
        if code == 503:
            return 0
        kb = st.key_size_bits // 8
        uniform = None
        if code == 200:
            try:  # the layout our modules write, read column-wise (keyjson); anything else as JSON
                uniform = parse_uniform_keys(raw, kb)
            except ValueError as e:
                raise FeederError(f"enc_keys: {e}") from None
        if uniform is not None:
            sent_ids, seqs, material = uniform
            if not all(map(lt, seqs, islice(seqs, 1, None))):
                raise FeederError("enc_keys: keys are not in increasing seq order")
            keys = [material[o:o + kb] for o in range(0, len(material), kb)]
            lower = "".join(sent_ids).lower()
            key_ids = [lower[o:o + 36] for o in range(0, len(lower), 36)]
        else:
            reply = _json("POST", "enc_keys", code, raw)
            if code != 200 or not isinstance(reply, dict):
                raise FeederError(f"enc_keys: HTTP {code}: {_message(reply)}")
            key_ids, seqs, keys = _parse_keys(reply, kb)
            sent_ids = [item["key_ID"] for item in reply["keys"]]
        last = self.store.stats(self.assoc_id).last_seq
        first_new = bisect_right(seqs, last)  # seqs increase: the repeated ones come first
        new = len(keys) - first_new
        if new:
            stored_n = await asyncio.to_thread(
                self.store.ingest, self.assoc_id,
                zip(key_ids[first_new:], seqs[first_new:], keys[first_new:], strict=True))
            self.keys_pulled += stored_n
            self.keys_dropped += new - stored_n
        self.keys_repeated += first_new
        # acknowledge with the IDs exactly as the module sent them (a device may use upper case)
        code, ack = await self._call("POST", "ack", ack_body(sent_ids))
        if code != 200:
            raise FeederError(f"ack: HTTP {code}: {_message(ack)}")
        self.rounds += 1
        return len(keys)


def _json(method: str, path: str, code: int, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise FeederError(f"{method} {path}: HTTP {code}, body is not JSON") from None


def _message(body: object) -> str:
    message = body.get("message") if isinstance(body, dict) else None
    return message[:200] if isinstance(message, str) else "no message"


def _parse_keys(reply: dict[str, Any], key_bytes: int) -> tuple[list[str], list[int], list[bytes]]:
    """(key_IDs as canonical lower-case text, seqs, key bytes) in seq order; FeederError on anything
    malformed. Whole-list checks at C speed (a module at 2 Mbit/s serves ~8,000 keys a second)."""
    items = reply.get("keys")
    if not isinstance(items, list) or not items:
        raise FeederError("enc_keys reply has no keys")
    if set(map(type, items)) != {dict}:
        raise FeederError("enc_keys: key item is not an object")
    try:
        kids = list(map(itemgetter("key_ID"), items))
        exts = list(map(itemgetter("key_ID_extension"), items))
        b64s = list(map(itemgetter("key"), items))
        if set(map(type, exts)) != {dict}:
            raise KeyError("key_ID_extension")
        seqs = list(map(itemgetter("seq"), exts))
    except KeyError:
        raise FeederError("enc_keys: key item needs key_ID (UUID), key_ID_extension.seq and key") from None
    joined = "".join(kids) if set(map(type, kids)) == {str} else ""
    if (set(map(len, kids)) != {36} or not UUIDS_RE.fullmatch(joined) or set(map(type, seqs)) != {int}
            or set(map(type, b64s)) != {str}):
        raise FeederError("enc_keys: key item needs key_ID (UUID), key_ID_extension.seq and key")
    keys = _b64_keys(b64s, key_bytes)
    if not all(map(lt, seqs, islice(seqs, 1, None))):
        raise FeederError("enc_keys: keys are not in increasing seq order")
    lower = joined.lower()
    return [lower[o:o + 36] for o in range(0, len(lower), 36)], seqs, keys


def _b64_keys(b64s: list[str], key_bytes: int) -> list[bytes]:
    """Decode every key (strict Base64) and check its size."""
    n = len(b64s)
    text_len = 4 * -(-key_bytes // 3)
    pad = (3 - key_bytes % 3) % 3
    if pad and set(map(len, b64s)) == {text_len}:
        # all keys in one decode: drop each key's padding to a zero digit, so every key is a whole
        # number of 3-byte groups (key_bytes + pad bytes), then cut the pad bytes off again
        joined = "".join(b64s)
        if joined.count("=") == pad * n and all(joined[text_len - p::text_len] == "=" * n for p in range(1, pad + 1)):
            try:
                raw = base64.b64decode(joined.replace("=", "A"), validate=True)
            except (binascii.Error, ValueError):
                raise FeederError("enc_keys: key is not Base64") from None
            rec = key_bytes + pad
            return [raw[o:o + key_bytes] for o in range(0, rec * n, rec)]
    try:
        keys = [base64.b64decode(b, validate=True) for b in b64s]
    except (binascii.Error, ValueError):
        raise FeederError("enc_keys: key is not Base64") from None
    for key in keys:
        if len(key) != key_bytes:
            raise FeederError(f"enc_keys: key of {len(key)} bytes, expected {key_bytes}")
    return keys
