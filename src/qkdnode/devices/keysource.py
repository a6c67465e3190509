"""The ETSI GS QKD 014 key server of one simulated QKD module (how Toshiba/IDQ devices export keys).

In MadQCI the vendor devices handed their keys to the node's KMS over ETSI GS QKD 014; here each
simulated module does the same, so the KMS side (`qkdnode.keystore.feeder.ModuleFeeder`) is a plain
014 client that can be pointed at a real device. HTTPS with mutual TLS 1.3: the only client is the
node's KMS, identified by the subject CN of its certificate (`kms_sae_id`); the "slave SAE" in the
URL is the KMS at the other end of the pair (`peer_kms_id`). Anything else gets 401.

Routes (GS 014 clause 5, no dec_keys: both ends serve the same keys in the same order):

* ``GET  /api/v1/keys/{peer_kms_id}/status`` - GS status fields; ``stored_key_count`` counts every
  buffered key (served-but-unacknowledged ones included, they are served again).
* ``GET|POST /api/v1/keys/{peer_kms_id}/enc_keys`` - ``number`` (default 1), optional ``size`` (must be
  the module's key size). Returns the next ``number`` keys in seq order, each
  ``{"key_ID", "key" (Base64), "key_ID_extension": {"seq": n}}``. Fewer buffered than asked: 503
  (standard behaviour; ask ``status`` first to size the request).
* ``POST /api/v1/keys/{peer_kms_id}/ack`` - **our extension**. Body ``{"key_IDs": [{"key_ID": ...}]}``
  after the KMS has stored the keys durably; reply ``{"acknowledged": n, "unknown": m}``. Served keys
  stay in the module (and are served again, first) until acknowledged, so a KMS crash between
  enc_keys and storage loses nothing. Unknown IDs (already acknowledged) are ignored, so a repeated
  ACK is harmless; acknowledging a key that was never served is a 400. A KMS that does not know the
  extension simply never acknowledges and keeps getting the same keys: it must use it.

``status_extension`` adds ``served_unacknowledged`` and ``link_up``. `KeyBuffer` (here) is the
module's export buffer that these routes read. Key bytes, headers and bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from ..keystore.errors import (
    BadRequest,
    InsufficientKeys,
    KeySizeNotSupported,
    RequestLimitExceeded,
    Unauthorized,
)
from ..keystore.etsi014 import ENC_FIELDS, guarded, int_param, json_object
from ..keystore.keyjson import ack_body, ack_count, keys_body
from ..pki import peer_common_name
from .keyrun import KeyRun, uuid_texts

log = logging.getLogger(__name__)

__all__ = [
    "ACK_PATH", "BufferedKey", "ExportingDevice", "KeyBuffer", "ModuleKeySource", "NotServed", "PREFIX",
]

PREFIX = "/api/v1/keys"
ACK_PATH = "ack"
_ACK_ITEM_FIELDS = frozenset({"key_ID", "key_ID_extension"})

def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


@dataclass(frozen=True, slots=True)
class BufferedKey:
    """One key waiting for export (its bytes never appear in repr or logs)."""

    key_id: str  #: canonical UUID text
    seq: int
    key: bytes = field(repr=False)


class NotServed(ValueError):
    """ACK of keys that were never served."""

    def __init__(self, key_ids: list[str]) -> None:
        super().__init__(f"{len(key_ids)} key(s) not served yet")
        self.key_ids = key_ids


class KeyBuffer:
    """A module's committed keys in seq order, bounded; served keys stay until acknowledged.

    Held as packed `KeyRun`s (no object per key: see `qkdnode.devices.keyrun`). Keys are served
    from the front in seq order, so the served keys are always a prefix of the buffer; their UUID
    texts are kept (`_served`) to answer the acknowledgement of that prefix without per-key work.
    """

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._runs: deque[KeyRun] = deque()
        self._n = 0
        self._served: list[str] = []  # UUID texts of the served prefix, in seq order

    def __len__(self) -> int:
        return self._n

    @property
    def room(self) -> int:
        return max(self.max_keys - self._n, 0)

    @property
    def served_unacked(self) -> int:
        return len(self._served)

    def served_ids(self) -> list[str]:
        """UUID texts of the served, unacknowledged keys, in seq order (a copy)."""
        return list(self._served)

    def append(self, keys: KeyRun | Iterable[BufferedKey]) -> None:
        run = keys if isinstance(keys, KeyRun) else None
        if run is None:
            items = list(keys)  # type: ignore[arg-type]
            if not items:
                return
            run = KeyRun.of(items, len(items[0].key))
        if len(run):
            self._runs.append(run)
            self._n += len(run)

    def _front(self, n: int) -> KeyRun:
        """The first `n` keys (fewer if fewer are buffered) as one run."""
        parts: list[KeyRun] = []
        need = n
        for run in self._runs:
            if need <= 0:
                break
            parts.append(run if len(run) <= need else run[:need])
            need -= len(parts[-1])
        if len(parts) == 1:
            return parts[0]
        kb = self._runs[0].key_bytes if self._runs else 1
        return KeyRun(b"".join(p.ids for p in parts), b"".join(p.seqs for p in parts),
                      b"".join(p.material for p in parts), kb)

    def _drop_front(self, n: int) -> None:
        while n > 0 and self._runs:
            run = self._runs[0]
            if len(run) <= n:
                self._runs.popleft()
                n -= len(run)
                self._n -= len(run)
            else:
                self._runs[0] = run[n:]
                self._n -= n
                n = 0

    def peek(self, n: int | None = None) -> list[BufferedKey]:
        """The first `n` (default: all) keys in seq order, without serving them."""
        run = self._front(self._n if n is None else n)
        return [BufferedKey(t, seq, key) for t, (_, seq, key) in zip(uuid_texts(run.ids), run)]

    def serve_run(self, n: int) -> tuple[KeyRun, list[str]]:
        """The first `n` keys in seq order (fewer if fewer are buffered), marked served, with their
        UUID texts."""
        run = self._front(n)
        k = len(run)
        if k > len(self._served):
            self._served.extend(uuid_texts(run.ids[16 * len(self._served):]))
        return run, self._served[:k]

    def serve(self, n: int) -> list[BufferedKey]:
        """The first `n` keys in seq order (fewer if fewer are buffered), marked served."""
        run, texts = self.serve_run(n)
        return [BufferedKey(t, seq, key) for t, (_, seq, key) in zip(texts, run)]

    def ack(self, key_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Drop served keys; returns (removed, unknown IDs). NotServed if any is not served yet.

        Unknown IDs (already acknowledged, or dropped) are not an error, so a repeated ACK is safe.
        """
        k = len(key_ids)
        if k and list(key_ids) == self._served[:k]:  # the usual case: the served prefix, in order
            self._drop_front(k)
            del self._served[:k]
            return k, []
        served = set(self._served)
        others = [x for x in key_ids if x not in served]
        if others:
            rest = set(uuid_texts(self._front(self._n).ids[16 * len(self._served):]))
            unserved = [x for x in others if x in rest]
            if unserved:
                raise NotServed(unserved)
        removed, unknown, gone = 0, [], set()
        for x in key_ids:
            if x in served and x not in gone:
                gone.add(x)
                removed += 1
            else:
                unknown.append(x)
        if gone:  # rebuild the served prefix without the acknowledged keys
            prefix = self._front(len(self._served))
            keep = [i for i, t in enumerate(self._served) if t not in gone]
            kept = KeyRun.of((BufferedKey(self._served[i], prefix.seq_list()[i], prefix[i][2]) for i in keep),
                             prefix.key_bytes)
            self._drop_front(len(self._served))
            self._served = [self._served[i] for i in keep]
            if len(kept):
                self._runs.appendleft(kept)
                self._n += len(kept)
        return removed, unknown

    def clear(self) -> int:
        """Drop everything (served or not); returns how many keys were dropped."""
        n = self._n
        self._runs.clear()
        self._n = 0
        self._served.clear()
        return n


class ExportingDevice(Protocol):
    """What the key server needs of a module (`qkdnode.devices.module.QKDModule` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def peer_name(self) -> str: ...
    @property
    def key_size_bits(self) -> int: ...
    @property
    def buffer(self) -> KeyBuffer: ...
    @property
    def link_up(self) -> bool: ...


class ModuleKeySource:
    """014 server of one module; `start()` returns the bound port."""

    def __init__(self, module: ExportingDevice, ssl_ctx: ssl.SSLContext, *, kms_sae_id: str,
                 peer_kms_id: str, host: str = "127.0.0.1", port: int = 0,
                 max_key_per_request: int = 8192, max_body: int = 4 * 1024 * 1024) -> None:
        if ssl_ctx.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the module's 014 server needs a TLS context requiring client certificates")
        self.module = module
        self.ssl_ctx = ssl_ctx
        self.kms_sae_id = kms_sae_id
        self.peer_kms_id = peer_kms_id
        self.host = host
        self.port = port
        self.max_key_per_request = max_key_per_request
        self.served = 0
        self.acknowledged = 0
        self.app = web.Application(client_max_size=max_body)
        r = self.app.router
        r.add_get(PREFIX + "/{slave}/status", guarded(self.status))
        r.add_get(PREFIX + "/{slave}/enc_keys", guarded(self.enc_keys_get))
        r.add_post(PREFIX + "/{slave}/enc_keys", guarded(self.enc_keys_post))
        r.add_post(PREFIX + "/{slave}/" + ACK_PATH, guarded(self.ack))
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_ctx).start()
        self.port = self._runner.addresses[0][1]
        log.info("014 key source of QKD module %s on %s:%d", self.module.name, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- authorisation ---------------------------------------------------------------------------

    def _authorise(self, request: web.Request) -> str:
        transport = request.transport
        cn = peer_common_name(transport.get_extra_info("peercert") if transport else None)
        if cn != self.kms_sae_id:
            raise Unauthorized(f"SAE {cn} may not use QKD module {self.module.name}")
        slave = request.match_info["slave"]
        if slave != self.peer_kms_id:
            raise Unauthorized(f"QKD module {self.module.name} has no keys shared with SAE {slave}",
                               [{"SAE_ID": slave}])
        return cn

    # -- handlers --------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        master = self._authorise(request)
        m, size = self.module, self.module.key_size_bits
        return _json(200, {
            "source_KME_ID": m.name,
            "target_KME_ID": m.peer_name,
            "master_SAE_ID": master,
            "slave_SAE_ID": self.peer_kms_id,
            "key_size": size,
            "stored_key_count": len(m.buffer),
            "max_key_count": m.buffer.max_keys,
            "max_key_per_request": self.max_key_per_request,
            "max_key_size": size,
            "min_key_size": size,
            "max_SAE_ID_count": 0,
            "status_extension": {"served_unacknowledged": m.buffer.served_unacked, "link_up": m.link_up},
        })

    async def enc_keys_get(self, request: web.Request) -> web.Response:
        self._authorise(request)
        q = request.query
        unknown = sorted(set(q) - {"number", "size"})
        if unknown:
            raise BadRequest("unknown or unsupported query parameter(s): " + ", ".join(unknown),
                             [{"parameter": k} for k in unknown])
        if any(len(q.getall(k)) > 1 for k in q):
            raise BadRequest("number and size may be given once")
        return self._enc_keys(q.get("number", "1"), q.get("size"), query=True)

    async def enc_keys_post(self, request: web.Request) -> web.Response:
        self._authorise(request)
        body = await json_object(request, ENC_FIELDS)
        if body.get("additional_slave_SAE_IDs"):
            raise BadRequest("additional_slave_SAE_IDs is not supported (max_SAE_ID_count is 0)",
                             [{"parameter": "additional_slave_SAE_IDs"}])
        mandatory = body.get("extension_mandatory", [])
        if not isinstance(mandatory, list) or mandatory:
            raise BadRequest("no mandatory extension is supported", [{"parameter": "extension_mandatory"}])
        return self._enc_keys(body.get("number", 1), body.get("size"), query=False)

    def _enc_keys(self, number: object, size: object, *, query: bool) -> web.Response:
        n = int_param("number", number, query=query)
        if not 1 <= n <= self.max_key_per_request:
            raise RequestLimitExceeded(n, self.max_key_per_request)
        own = self.module.key_size_bits
        if size is not None and int_param("size", size, query=query) != own:
            raise KeySizeNotSupported(int_param("size", size, query=query), own)
        buf = self.module.buffer
        if len(buf) < n:
            raise InsufficientKeys(n, len(buf))
        run, texts = buf.serve_run(n)
        self.served += n
        body = keys_body(texts, run.seq_list(), run.material, run.key_bytes)
        return web.Response(body=body, content_type="application/json")

    async def ack(self, request: web.Request) -> web.Response:
        self._authorise(request)
        served = self.module.buffer.served_ids()
        if request.content_type == "application/json" and served:
            # the usual ACK names the served keys in order, in the layout `ack_body` writes: compare
            # the bytes instead of parsing (any other body takes the general path below)
            k = ack_count(await request.read())
            if k is not None and k <= len(served) and await request.read() == ack_body(served[:k]):
                removed, _ = self.module.buffer.ack(served[:k])
                self.acknowledged += removed
                return _json(200, {"acknowledged": removed, "unknown": 0})
        body = await json_object(request, frozenset({"key_IDs"}))
        items = body.get("key_IDs")
        if not isinstance(items, list) or not items:
            raise BadRequest("key_IDs must be a non-empty array")
        # whole-list checks (one ACK names up to max_key_per_request keys)
        ids: list[str] = []
        if set(map(type, items)) == {dict} and all(map(_ACK_ITEM_FIELDS.issuperset, items)):
            ids = [item.get("key_ID") for item in items]
        if not ids or set(map(type, ids)) != {str}:
            raise BadRequest('each key_IDs item must be {"key_ID": "<UUID>"}')
        try:
            removed, unknown = self.module.buffer.ack(ids)
        except NotServed as e:
            raise BadRequest("key_ID not served yet: " + ", ".join(e.key_ids),
                             [{"key_ID": k, "reason": "not served"} for k in e.key_ids]) from None
        self.acknowledged += removed
        return _json(200, {"acknowledged": removed, "unknown": len(unknown)})
