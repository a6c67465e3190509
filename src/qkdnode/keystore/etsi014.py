"""ETSI GS QKD 014 V1.1.1 key delivery server (aiohttp, HTTPS with mutual TLS 1.3).

The calling SAE is the subject CN of its client certificate, never a URL or header value. An SAE may
use an association only if it is attached to this KME and the resolver finds an association between
it and the SAE named in the URL; otherwise 401. Deliveries go through `GroupCommitter`, so each reply
leaves only after the delivery is committed. Key bytes and request headers are never logged.

Routes (GS 014 clause 5): GET /api/v1/keys/{slave_SAE_ID}/status,
GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys, GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys, and
GET /api/v1/openapi.yaml (our OpenAPI 3 description of this API).

The two ends of a QKD link store the link's key stream independently (each KMS's feeder pulls from its
own module), so the master's KME may hand out a key that this KME has not stored yet. A dec_keys
naming key IDs this store does not know, on an association a key stream feeds (`fed`), waits for the
stream while it advances (at most `DEC_WAIT_S`, giving up once it has not advanced for `DEC_IDLE_S`),
then answers 400 as before.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from ..pki import peer_common_name
from .committer import GroupCommitter
from .errors import BadRequest, KeysNotAvailable, KeyStoreError, StorageError, Unauthorized
from .limits import ApiLimits, SaeRateLimiter
from .store import KeyStore
from .stream import stream_moves
from .types import Delivery, MasterRequest, SlaveRequest

log = logging.getLogger(__name__)

PREFIX = "/api/v1/keys"
DEC_WAIT_S = 1.5  # how long dec_keys waits for this KME's copy of keys the master's KME may have handed out
DEC_IDLE_S = 0.3  # ... unless the key stream does not advance for that long (no feeder: the IDs are unknown)
OPENAPI_RESOURCE = "etsi014-openapi.yaml"
# response item: number of keys the reply delivers, for the metrics middleware (qkdnode.metrics)
DELIVERED_KEYS: Any = web.ResponseKey("qkd_keys", int) if hasattr(web, "ResponseKey") else "qkd_keys"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class SaeDirectory:
    """Which node (KME) each known SAE is attached to; `local_node_id` is this KME's ID."""

    local_node_id: str
    sae_nodes: dict[str, str] = field(default_factory=dict)

    def node_of(self, sae_id: str) -> str | None:
        return self.sae_nodes.get(sae_id)

    def is_local(self, sae_id: str) -> bool:
        return self.sae_nodes.get(sae_id) == self.local_node_id


class AssociationResolver(Protocol):
    """Picks the key association that serves a local SAE talking to a remote SAE (or None)."""

    def association_for(self, local_sae: str, remote_sae: str) -> str | None: ...


class NeighbourResolver:
    """Direct neighbours only: the association is the one configured for the remote SAE's node.

    `routes` maps remote node ID -> association ID (e.g. the 'link' associations of the store).
    Relayed associations can be added to `routes` the same way later.
    """

    def __init__(self, directory: SaeDirectory, routes: Mapping[str, str]) -> None:
        self.directory = directory
        self.routes = dict(routes)

    @classmethod
    def from_store(cls, directory: SaeDirectory, store: KeyStore) -> NeighbourResolver:
        return cls(directory, {a.remote_node_id: a.assoc_id for a in store.associations()
                               if a.local_node_id == directory.local_node_id})

    def association_for(self, local_sae: str, remote_sae: str) -> str | None:
        if not self.directory.is_local(local_sae):
            return None
        node = self.directory.node_of(remote_sae)
        return None if node is None else self.routes.get(node)


def error_response(err: KeyStoreError) -> web.Response:
    return web.Response(status=err.http_status, body=json.dumps(err.body()).encode(),
                        content_type="application/json")


def guarded(handler: _Handler) -> _Handler:
    """Render KeyStoreErrors as ETSI 014 errors; anything unexpected becomes a bare 503."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyStoreError as err:
            log.info("%s %s -> %d %s", request.method, request.path, err.http_status, err.message)
            return error_response(err)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(StorageError("internal error"))

    return wrapper


def _keys_response(delivery: Delivery) -> web.Response:
    b64 = base64.b64encode
    # key IDs are canonical UUIDs and Base64 needs no escaping: build the JSON directly.
    body = '{"keys":[' + ",".join(
        f'{{"key_ID":"{kid}","key":"{b64(key).decode()}"}}' for kid, key in delivery
    ) + "]}"
    response = web.Response(body=body.encode(), content_type="application/json")
    response[DELIVERED_KEYS] = len(delivery)  # for the metrics middleware (a count, never the keys)
    return response


def int_param(name: str, value: object, *, query: bool) -> int:
    """An integer from a query string (digits only) or a JSON number (int, not bool/float)."""
    if query and isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 12):
            raise BadRequest(f"{name} must be a positive integer", [{"parameter": name}])
        return int(value)
    if type(value) is not int:
        raise BadRequest(f"{name} must be an integer", [{"parameter": name}])
    return value


async def json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise BadRequest("Content-Type must be application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest("request body too large") from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting too deep
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest("unknown parameter(s): " + ", ".join(unknown),
                         [{"parameter": k} for k in unknown])
    return body


ENC_FIELDS = frozenset({"number", "size", "additional_slave_SAE_IDs",
                         "extension_mandatory", "extension_optional"})
_DEC_FIELDS = frozenset({"key_IDs", "key_IDs_extension"})


class Etsi014Server:
    """The 014 API of one KME over one key store; `start()` returns the bound port."""

    def __init__(self, store: KeyStore, directory: SaeDirectory, resolver: AssociationResolver,
                 ssl_ctx: ssl.SSLContext, *, host: str = "127.0.0.1", port: int = 0,
                 max_body: int | None = None, limits: ApiLimits | None = None) -> None:
        if ssl_ctx.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the 014 server needs a TLS context that requires client certificates")
        self.store = store
        self.directory = directory
        self.resolver = resolver
        self.ssl_ctx = ssl_ctx
        self.host = host
        self.port = port
        self.committer = GroupCommitter(store)
        self.fed: Callable[[str], bool] = lambda assoc_id: False  # is a QKD module's key stream feeding it here?
        self.limits = limits or ApiLimits()
        self.limiter = SaeRateLimiter(self.limits.rate, self.limits.burst)
        self.app = web.Application(client_max_size=max_body or self.limits.max_body)
        r = self.app.router
        r.add_get(PREFIX + "/{slave}/status", guarded(self.status))
        r.add_route("GET", PREFIX + "/{slave}/enc_keys", guarded(self.enc_keys_get))
        r.add_route("POST", PREFIX + "/{slave}/enc_keys", guarded(self.enc_keys_post))
        r.add_route("GET", PREFIX + "/{master}/dec_keys", guarded(self.dec_keys_get))
        r.add_route("POST", PREFIX + "/{master}/dec_keys", guarded(self.dec_keys_post))
        r.add_get("/api/v1/openapi.yaml", self.openapi)
        r.add_get("/api/v1/openapi.json", self.openapi_json)
        self._openapi = resources.files(__package__).joinpath(OPENAPI_RESOURCE).read_bytes()
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_ctx, backlog=512)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("ETSI 014 server of KME %s on %s:%d", self.directory.local_node_id, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.committer.aclose()

    # -- identity and authorisation -----------------------------------------------------------

    def _caller(self, request: web.Request) -> str:
        transport = request.transport
        cn = peer_common_name(transport.get_extra_info("peercert") if transport else None)
        if cn is None:
            raise Unauthorized("a client certificate naming the SAE is required")
        if not self.directory.is_local(cn):
            raise Unauthorized(f"SAE {cn} is not attached to KME {self.directory.local_node_id}")
        self.limiter.check(cn)
        return cn

    def _association(self, local_sae: str, remote_sae: str) -> str:
        assoc = self.resolver.association_for(local_sae, remote_sae)
        if assoc is None:
            raise Unauthorized(f"SAE {local_sae} has no key association with SAE {remote_sae}",
                               [{"SAE_ID": remote_sae}])
        return assoc

    # -- handlers ------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        slave = request.match_info["slave"]
        s = self.store.stats(self._association(master, slave))
        body = {
            "source_KME_ID": self.directory.local_node_id,
            "target_KME_ID": self.directory.node_of(slave),
            "master_SAE_ID": master,
            "slave_SAE_ID": slave,
            "key_size": s.key_size_bits,
            "stored_key_count": s.available_for_masters,
            "max_key_count": s.capacity,
            "max_key_per_request": s.max_keys_per_request,
            "max_key_size": s.key_size_bits,
            "min_key_size": s.key_size_bits,
            "max_SAE_ID_count": 0,
        }
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

    async def enc_keys_get(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        query = request.query
        unknown = sorted(set(query) - {"number", "size"})
        if unknown:
            raise BadRequest("unknown or unsupported query parameter(s): " + ", ".join(unknown),
                             [{"parameter": k} for k in unknown])
        if any(len(query.getall(k)) > 1 for k in query):
            raise BadRequest("number and size may be given once")
        return await self._enc_keys(request, master, query.get("number", "1"), query.get("size"), True)

    async def enc_keys_post(self, request: web.Request) -> web.Response:
        master = self._caller(request)
        body = await json_object(request, ENC_FIELDS)
        extra = body.get("additional_slave_SAE_IDs", [])
        if not isinstance(extra, list):
            raise BadRequest("additional_slave_SAE_IDs must be an array")
        if extra:
            raise BadRequest("additional_slave_SAE_IDs is not supported (max_SAE_ID_count is 0)",
                             [{"parameter": "additional_slave_SAE_IDs"}])
        mandatory = body.get("extension_mandatory", [])
        if not isinstance(mandatory, list) or not all(isinstance(e, dict) for e in mandatory):
            raise BadRequest("extension_mandatory must be an array of objects")
        if mandatory:
            names = sorted({k for e in mandatory for k in e})
            raise BadRequest("unsupported mandatory extension(s): " + ", ".join(names),
                             [{"extension": k} for k in names])
        return await self._enc_keys(request, master, body.get("number", 1), body.get("size"), False)

    async def _enc_keys(self, request: web.Request, master: str, number: object,
                        size: object, query: bool) -> web.Response:
        slave = request.match_info["slave"]
        assoc = self._association(master, slave)
        n = int_param("number", number, query=query)
        size_bits = (self.store.stats(assoc).key_size_bits if size is None
                     else int_param("size", size, query=query))
        delivery = await self.committer.deliver(MasterRequest(assoc, master, slave, n, size_bits))
        return _keys_response(delivery)

    async def dec_keys_get(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        unknown = sorted(set(request.query) - {"key_ID"})
        if unknown:
            raise BadRequest("unknown query parameter(s): " + ", ".join(unknown),
                             [{"parameter": k} for k in unknown])
        ids = request.query.getall("key_ID", [])
        if not ids:
            raise BadRequest("key_ID is required")
        return await self._dec_keys(request, slave, ids)

    async def dec_keys_post(self, request: web.Request) -> web.Response:
        slave = self._caller(request)
        body = await json_object(request, _DEC_FIELDS)
        items = body.get("key_IDs")
        if not isinstance(items, list) or not items:
            raise BadRequest("key_IDs must be a non-empty array")
        ids: list[str] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("key_ID"), str) or \
                    set(item) - {"key_ID", "key_ID_extension"}:
                raise BadRequest('each key_IDs item must be {"key_ID": "<UUID>"}')
            ids.append(item["key_ID"])
        return await self._dec_keys(request, slave, ids)

    async def _dec_keys(self, request: web.Request, slave: str, ids: list[str]) -> web.Response:
        master = request.match_info["master"]
        assoc = self._association(slave, master)
        req = SlaveRequest(assoc, tuple(ids), master, slave)
        deadline = time.monotonic() + DEC_WAIT_S
        while True:
            last = self.store.stats(assoc).last_seq
            try:
                return _keys_response(await self.committer.deliver(req))
            except KeysNotAvailable as err:
                if not self.fed(assoc) or not all(d.get("reason") == "unknown" for d in err.details) \
                        or not await stream_moves(self.store, assoc, last, min(time.monotonic() + DEC_IDLE_S, deadline)):
                    raise

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/yaml")

    async def openapi_json(self, request: web.Request) -> web.Response:
        """The same OpenAPI document as JSON (what schemathesis and most tools read)."""
        import yaml

        return web.Response(body=json.dumps(yaml.safe_load(self._openapi)).encode(), content_type="application/json")


async def start_etsi014_server(
    store: KeyStore,
    directory: SaeDirectory,
    resolver: AssociationResolver,
    ssl_ctx: ssl.SSLContext,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ApiLimits | None = None,
) -> tuple[Etsi014Server, int]:
    """Start a 014 server; returns it (stop with `await server.stop()`) and its port."""
    server = Etsi014Server(store, directory, resolver, ssl_ctx, host=host, port=port, limits=limits)
    return server, await server.start()
