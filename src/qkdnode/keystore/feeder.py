"""KMS side of a QKD module's ETSI GS QKD 014 export: pull keys, store them durably, acknowledge.

`ModuleFeeder` is a plain 014 client (mutual TLS, one keep-alive connection) of the module's key
server (`qkdnode.devices.keysource`), or of any device speaking 014 plus our ``ack`` extension. One
round: ``GET status`` (how many keys the module holds), ``POST enc_keys`` for
``min(batch, stored_key_count, max_key_per_request, room in the store)`` keys, ingest them into the
`KeyStore` (blocking, durable on return: run in a thread), then ``POST ack`` with their IDs. The module
removes keys only on ACK and serves unacknowledged keys again first, so a crash anywhere in the round
loses nothing: keys served again whose seq is not above the store's ``last_seq`` were already stored
(ingest is atomic and seq-ordered) and are only acknowledged, not ingested twice.

When the store is full the feeder stops pulling; the module's buffer then fills and the module stops
generating, as a real device does when its KMS stops collecting keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from .errors import KeyStoreError
from .store import KeyStore
from .types import parse_key_id

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
                 assoc_id: str, *, batch: int = 1024, poll_s: float = 0.2,
                 max_backoff_s: float = 5.0, request_timeout_s: float = 30.0) -> None:
        if batch < 1 or poll_s <= 0:
            raise ValueError("batch >= 1 and poll_s > 0 required")
        self.base = url.rstrip("/") + f"/api/v1/keys/{peer_kms_id}"
        self.ssl_ctx = ssl_ctx
        self.store = store
        self.assoc_id = assoc_id
        self.batch = batch
        self.poll_s = poll_s
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
        backoff = self.poll_s
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
            if got == 0:  # nothing buffered (or store full): poll again later
                await asyncio.sleep(self.poll_s)

    # -- one round -------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        async with self._http().request(method, f"{self.base}/{path}", json=body) as r:
            try:
                data = await r.json(content_type=None)
            except ValueError:
                raise FeederError(f"{method} {path}: HTTP {r.status}, body is not JSON") from None
            return r.status, data

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
        code, reply = await self._call("POST", "enc_keys", {"number": n})
        if code == 503:
            return 0
        if code != 200 or not isinstance(reply, dict):
            raise FeederError(f"enc_keys: HTTP {code}: {_message(reply)}")
        keys = _parse_keys(reply, st.key_size_bits // 8)
        last = self.store.stats(self.assoc_id).last_seq
        new = [k for k in keys if k[1] > last]
        if new:
            stored_n = await asyncio.to_thread(self.store.ingest, self.assoc_id, new)
            self.keys_pulled += stored_n
            self.keys_dropped += len(new) - stored_n
        self.keys_repeated += len(keys) - len(new)
        # acknowledge with the IDs exactly as the module sent them (a device may use upper case)
        ids = [item["key_ID"] for item in reply["keys"]]
        code, ack = await self._call("POST", "ack", {"key_IDs": [{"key_ID": k} for k in ids]})
        if code != 200:
            raise FeederError(f"ack: HTTP {code}: {_message(ack)}")
        self.rounds += 1
        return len(keys)


def _message(body: object) -> str:
    message = body.get("message") if isinstance(body, dict) else None
    return message[:200] if isinstance(message, str) else "no message"


def _parse_keys(reply: dict[str, Any], key_bytes: int) -> list[tuple[str, int, bytes]]:
    """(key_ID, seq, bytes) in seq order; FeederError on anything malformed."""
    items = reply.get("keys")
    if not isinstance(items, list) or not items:
        raise FeederError("enc_keys reply has no keys")
    out: list[tuple[str, int, bytes]] = []
    for item in items:
        if not isinstance(item, dict):
            raise FeederError("enc_keys: key item is not an object")
        kid, ext, b64 = item.get("key_ID"), item.get("key_ID_extension"), item.get("key")
        packed = parse_key_id(kid)
        seq = ext.get("seq") if isinstance(ext, dict) else None
        if packed is None or type(seq) is not int or not isinstance(b64, str):
            raise FeederError("enc_keys: key item needs key_ID (UUID), key_ID_extension.seq and key")
        try:
            key = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise FeederError("enc_keys: key is not Base64") from None
        if len(key) != key_bytes:
            raise FeederError(f"enc_keys: key of {len(key)} bytes, expected {key_bytes}")
        h = packed.hex()
        out.append((f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", seq, key))
    if any(a[1] >= b[1] for a, b in zip(out, out[1:])):
        raise FeederError("enc_keys: keys are not in increasing seq order")
    return out
