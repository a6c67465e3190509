"""ETSI GS QKD 004 V2.1.1 application interface of the node's KMS (gRPC over mutual TLS).

Two services on one `grpc.aio` server (see etsi004.proto for the wire contract):

* `Etsi004` for applications (SAEs): OPEN_CONNECT / GET_KEY / CLOSE. The caller is the subject CN
  of its client certificate; it must be an SAE attached to this KMS and OPEN_CONNECT's `source`.
* `Etsi004Peer` for the KMS at the other end of a stream's key association. The caller is the
  CN of its node certificate (= node name) and must be one of the configured `peers`.

A key stream joins an SAE here and one at a neighbour node over their key association (direct
links only for now: relayed associations need a peer KMS at the far end, which `peers` can
already name). Both applications OPEN_CONNECT with the same Key_stream_ID; each KMS records the
stream and tells the other (`Connect`). Index i of a stream is backed by key_chunk_size bytes of
stored keys, the same at both ends: the end whose association has master_parity 0 is the stream
master and picks them (`KeyStore.take_for_master`, which also fixes them in the ledger); the other
end asks it (`Assign`, idempotent) and takes the same keys by ID (`take_by_ids`). The master holds
the bytes it took for its own application until that application fetches them, CLOSEs, or the
QoS TTL passes; each end delivers an index to its application at most once.

Streams live in memory: a KMS restart forgets them (applications open again). Deliveries go through
`GroupCommitter`, so key bytes leave only after their ledger rows are durable. Key bytes are never
logged; status messages name IDs and counts only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, ClassVar, TypeVar

import grpc
import grpc.aio

from ..pki import CertPaths
from . import etsi004_pb2 as pb
from . import etsi004_pb2_grpc as pb_grpc
from .committer import GroupCommitter
from .errors import InsufficientKeys, KeysNotAvailable, KeyStoreError, UnknownAssociation
from .etsi014 import AssociationResolver, SaeDirectory
from .store import KeyStore
from .types import Association, MasterRequest, SlaveRequest

log = logging.getLogger(__name__)

JSON = "application/json"
UINT32 = 1 << 32
PEER_TIMEOUT = 5.0  # s: a KMS-to-KMS call, unless the application's QoS timeout is shorter
POLL = 0.05  # s: retry period of a GET_KEY waiting (QoS timeout) for key or the peer app
MAX_HELD = 4096  # chunks a master holds for its own application at most, per stream

RateOf = Callable[[str], float | None]
"""Current secret key rate (bit/s) of a key association, or None if unknown."""


# -- errors: each renders its own GS 004 status ------------------------------------------------
class Etsi004Error(Exception):
    """A call answered with a GS QKD 004 status other than SUCCESSFUL (a gRPC OK)."""

    status: ClassVar[int] = pb.NO_QKD_CONNECTION

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def fields(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message}


class InsufficientKey(Etsi004Error):
    status = pb.INSUFFICIENT_KEY


class KeyGone(InsufficientKey):
    """The key of an index was delivered already, expired or was released: waiting cannot help."""


class PeerAppNotConnected(Etsi004Error):
    status = pb.PEER_APPLICATION_NOT_CONNECTED


class NoQkdConnection(Etsi004Error):
    status = pb.NO_QKD_CONNECTION


class KeyStreamInUse(Etsi004Error):
    status = pb.KEY_STREAM_ID_IN_USE


class StreamTimeout(Etsi004Error):
    status = pb.TIMEOUT_ERROR


class QosNotMet(Etsi004Error):
    status = pb.QOS_NOT_MET

    def __init__(self, message: str, counter: pb.QoS) -> None:
        super().__init__(message)
        self.counter = counter

    def fields(self) -> dict[str, Any]:
        return {**super().fields(), "qos": self.counter}


class MetadataTooSmall(Etsi004Error):
    status = pb.METADATA_SIZE_INSUFFICIENT

    def __init__(self, needed: int) -> None:
        super().__init__(f"metadata needs {needed} bytes")
        self.needed = needed

    def fields(self) -> dict[str, Any]:
        return {**super().fields(), "metadata": pb.Metadata(size=self.needed)}


class Refused(Exception):
    """A call the GS has no status for: answered with a gRPC error code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _denied(message: str) -> Refused:
    return Refused(grpc.StatusCode.PERMISSION_DENIED, message)


_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Handler = Callable[[Any, _Req, grpc.aio.ServicerContext], Awaitable[_Resp]]


def _rendered(response: Callable[..., _Resp]) -> Callable[[_Handler[_Req, _Resp]], _Handler[_Req, _Resp]]:
    """Render Etsi004Error as a `response` with its status, Refused as a gRPC error; anything
    unexpected becomes INTERNAL without internals."""

    def wrap(fn: _Handler[_Req, _Resp]) -> _Handler[_Req, _Resp]:
        @wraps(fn)
        async def handler(self: Any, request: _Req, context: grpc.aio.ServicerContext) -> _Resp:
            try:
                return await fn(self, request, context)
            except Etsi004Error as e:
                log.info("%s -> status %d: %s", fn.__name__, e.status, e.message)
                return response(**e.fields())
            except Refused as e:
                log.info("%s refused (%s): %s", fn.__name__, e.code.name, e.message)
                await context.abort(e.code, e.message)
            except Exception:
                log.exception("%s failed", fn.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise AssertionError("unreachable")  # context.abort raises

        return handler

    return wrap


# -- value types ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerKms:
    """Another node's KMS: its node name (certificate CN), node ID and 004 address host:port."""

    name: str
    node_id: str
    address: str


def peers_from_config(raw: Mapping[str, Any] | None) -> dict[str, PeerKms]:
    """`peers: {NAME: {node_id: ID, etsi004: {host: H, port: P}}}` of a node config."""
    out = {}
    for name, p in (raw or {}).items():
        api = (p or {}).get("etsi004")
        if api and p.get("node_id"):
            out[str(name)] = PeerKms(str(name), str(p["node_id"]), f"{api.get('host', '127.0.0.1')}:{int(api['port'])}")
    return out


class IndexSet:
    """A set of stream indices, small when they come mostly in order: all below `floor`, and `above`."""

    def __init__(self) -> None:
        self.floor = 0
        self.above: set[int] = set()

    def __contains__(self, index: int) -> bool:
        return index < self.floor or index in self.above

    def add(self, index: int) -> None:
        if index >= self.floor:
            self.above.add(index)
            while self.floor in self.above:
                self.above.remove(self.floor)
                self.floor += 1


@dataclass
class Stream:
    """One key stream as this KMS sees it (the 'local' SAE is attached here)."""

    ksid: str
    local_sae: str
    remote_sae: str
    assoc: str
    peer: PeerKms
    master: bool
    chunk: int  # key_chunk_size (bytes), the same at both ends
    qos: pb.QoS | None = None  # the local application's, while it is connected
    local_open: bool = False
    peer_open: bool = False
    next_index: int = 0
    delivered: IndexSet = field(default_factory=IndexSet)  # indices delivered to the local application
    # master: key IDs of each index until both ends are done with it (then 'retired')
    assigned: dict[int, list[str]] = field(default_factory=dict)
    held: dict[int, tuple[bytearray, float]] = field(default_factory=dict)  # key bytes for the local app
    peer_asked: set[int] = field(default_factory=set)  # indices whose key IDs the peer KMS has
    retired: IndexSet = field(default_factory=IndexSet)
    ids_cache: dict[int, list[str]] = field(default_factory=dict)  # not master: from Assign, until delivered
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def saes(self) -> tuple[str, str]:
        """(master SAE, slave SAE) for the key store ledger: the master end's SAE first."""
        return (self.local_sae, self.remote_sae) if self.master else (self.remote_sae, self.local_sae)

    def drop_held(self, index: int) -> bytes:
        """The held key bytes of `index` (zeroed in the holder), retiring the index if the peer is done."""
        buf, _ = self.held.pop(index)
        key = bytes(buf)
        buf[:] = bytes(len(buf))
        self.retire(index)
        return key

    def retire(self, index: int) -> None:
        """Master: forget the key IDs of an index once neither end can still need them."""
        if index in self.peer_asked and index not in self.held:
            self.peer_asked.discard(index)
            self.assigned.pop(index, None)
            self.retired.add(index)

    def wipe(self) -> None:
        for index in list(self.held):
            self.drop_held(index)
        self.ids_cache.clear()


def parse_sae(text: str) -> str:
    """An SAE ID from "sae-1" or "qkd://sae-1"."""
    sae = text[len("qkd://"):] if text.startswith("qkd://") else text
    if not sae or "/" in sae or "@" in sae:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"not an SAE ID or qkd:// URI: {text!r}")
    return sae


def parse_ksid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "key_stream_id must be a UUID") from None


def _common_name(context: grpc.aio.ServicerContext) -> str | None:
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


# -- the KMS side of GS 004 ----------------------------------------------------------------------
class Etsi004Kms:
    """GS 004 for the SAEs of one node, and the KMS-to-KMS service; `start()` returns the port."""

    def __init__(self, store: KeyStore, directory: SaeDirectory, resolver: AssociationResolver,
                 node_name: str, peers: Mapping[str, PeerKms], pki: CertPaths, *,
                 rate_of: RateOf | None = None,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self.store = store
        self.interceptors = list(interceptors)  # e.g. the node's metrics (qkdnode.metrics)
        self.directory = directory
        self.resolver = resolver
        self.node_name = node_name
        self.peers = dict(peers)  # may be completed after start (tests bind port 0 first)
        self.pki = pki
        self.rate_of = rate_of
        self.streams: dict[str, Stream] = {}
        self.committer = GroupCommitter(store)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._channels: dict[str, tuple[grpc.aio.Channel, pb_grpc.Etsi004PeerStub]] = {}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        creds = grpc.ssl_server_credentials(
            [(self.pki.key.read_bytes(), self.pki.cert.read_bytes())],
            root_certificates=self.pki.ca.read_bytes(), require_client_auth=True,
        )
        server = grpc.aio.server(interceptors=self.interceptors or None,
                                 options=[("grpc.so_reuseport", 0)])  # a taken port must not be shared
        pb_grpc.add_Etsi004Servicer_to_server(AppService(self), server)
        pb_grpc.add_Etsi004PeerServicer_to_server(PeerService(self), server)
        self.port = server.add_secure_port(f"{host}:{port}", creds)
        if not self.port:
            raise OSError(f"ETSI 004 server cannot listen on {host}:{port}")
        await server.start()
        self._server = server
        log.info("ETSI 004 server of KMS %s on %s:%d", self.node_name, host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(5)
            self._server = None
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
        for st in self.streams.values():
            st.wipe()
        self.streams.clear()
        await self.committer.aclose()

    # -- identities and routes ------------------------------------------------------------------
    def caller_sae(self, context: grpc.aio.ServicerContext) -> str:
        cn = _common_name(context)
        if cn is None or not self.directory.is_local(cn):
            raise _denied(f"{cn or 'the caller'} is not an SAE attached to KMS {self.node_name}")
        return cn

    def caller_node(self, context: grpc.aio.ServicerContext) -> PeerKms:
        cn = _common_name(context)
        peer = self.peers.get(cn or "")
        if peer is None:
            raise _denied(f"{cn or 'the caller'} is not a known peer KMS")
        return peer

    def _association(self, local_sae: str, remote_sae: str, remote_node: str) -> Association:
        assoc = self.resolver.association_for(local_sae, remote_sae)
        try:
            info = self.store.association(assoc) if assoc is not None else None
        except UnknownAssociation:
            info = None
        if info is None:
            raise NoQkdConnection(f"no key association between {local_sae} and {remote_sae}")
        if info.remote_node_id != remote_node:
            raise NoQkdConnection(f"{remote_sae} is not at a neighbour node (relayed streams are not served)")
        return info

    def _route(self, src: str, dst: str) -> tuple[Association, PeerKms]:
        node = self.directory.node_of(dst)
        if node is None:
            raise NoQkdConnection(f"unknown SAE {dst}")
        if node == self.directory.local_node_id:
            raise NoQkdConnection(f"{dst} is attached to this KMS: no QKD connection between them")
        info = self._association(src, dst, node)
        peer = next((p for p in self.peers.values() if p.node_id == node), None)
        if peer is None:
            raise NoQkdConnection(f"no ETSI 004 address known for the KMS of {dst}")
        return info, peer

    def _master_name(self, info: Association, peer: PeerKms) -> str:
        return self.node_name if info.master_parity == 0 else peer.name

    def _check_qos(self, asked: pb.QoS, info: Association) -> pb.QoS:
        """The effective QoS, or QosNotMet with a counter proposal."""
        qos = pb.QoS()
        qos.CopyFrom(asked)
        kb = info.key_size_bits // 8
        qos.key_chunk_size = qos.key_chunk_size or kb
        qos.metadata_mimetype = qos.metadata_mimetype or JSON
        problems = []
        n = -(-qos.key_chunk_size // kb)
        if qos.key_chunk_size % kb or n > info.max_keys_per_request:
            problems.append(f"key_chunk_size must be a multiple of {kb} up to {kb * info.max_keys_per_request}")
            qos.key_chunk_size = min(n, info.max_keys_per_request) * kb
        if qos.metadata_mimetype != JSON:
            problems.append(f"metadata_mimetype must be {JSON}")
            qos.metadata_mimetype = JSON
        rate = self.rate_of(info.assoc_id) if self.rate_of is not None else None
        if rate is not None and qos.min_bps > rate:
            problems.append(f"min_bps {qos.min_bps} exceeds the link's key rate {int(rate)} bit/s")
            qos.min_bps = int(rate)
        if problems:
            raise QosNotMet("; ".join(problems), qos)
        return qos

    # -- KMS-to-KMS client ----------------------------------------------------------------------
    def _peer_stub(self, peer: PeerKms) -> pb_grpc.Etsi004PeerStub:
        got = self._channels.get(peer.name)
        if got is None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.pki.ca.read_bytes(), private_key=self.pki.key.read_bytes(),
                certificate_chain=self.pki.cert.read_bytes(),
            )
            # the peer's certificate must name the peer node (its DNS SAN), whatever the address
            channel = grpc.aio.secure_channel(peer.address, creds,
                                              options=[("grpc.ssl_target_name_override", peer.name)])
            got = self._channels[peer.name] = (channel, pb_grpc.Etsi004PeerStub(channel))
        return got[1]

    async def _call_peer(self, peer: PeerKms, method: str, request: Any, timeout: float) -> Any:
        try:
            return await getattr(self._peer_stub(peer), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise StreamTimeout(f"KMS {peer.name} did not answer {method} in time") from None
            raise NoQkdConnection(f"KMS {peer.name} refused or is unreachable ({e.code().name})") from None

    # -- OPEN_CONNECT ---------------------------------------------------------------------------
    async def open_connect(self, req: pb.OpenConnectRequest, caller: str) -> pb.OpenConnectResponse:
        src, dst = parse_sae(req.source), parse_sae(req.destination)
        if src != caller:
            raise _denied(f"source {src} is not the calling SAE {caller}")
        ksid = parse_ksid(req.key_stream_id) if req.key_stream_id else str(uuid.uuid4())
        info, peer = self._route(src, dst)
        qos = self._check_qos(req.qos, info)
        st = self.streams.get(ksid)
        created = st is None
        if st is None:
            st = Stream(ksid, src, dst, info.assoc_id, peer, info.master_parity == 0, qos.key_chunk_size)
            self.streams[ksid] = st
        elif st.local_open or (st.local_sae, st.remote_sae, st.peer.name) != (src, dst, peer.name):
            raise KeyStreamInUse(f"key stream {ksid} is in use")
        elif st.chunk != qos.key_chunk_size:
            qos.key_chunk_size = st.chunk
            raise QosNotMet(f"the peer application opened with key_chunk_size {st.chunk}", qos)
        st.local_open, st.qos = True, qos
        request = pb.PeerConnectRequest(key_stream_id=ksid, source=src, destination=dst, qos=qos,
                                        master_node=self._master_name(info, peer))
        try:
            reply = await self._call_peer(peer, "Connect", request, self._peer_timeout(qos))
            if reply.status not in (pb.SUCCESSFUL, pb.PEER_NOT_CONNECTED):
                err = QosNotMet(reply.message, reply.qos) if reply.status == pb.QOS_NOT_MET else None
                raise err or _status_error(reply.status, f"KMS {peer.name}: {reply.message}")
        except Etsi004Error:
            st.local_open, st.qos = False, None
            if created and not st.peer_open and self.streams.get(ksid) is st:
                del self.streams[ksid]
            raise
        if reply.status == pb.SUCCESSFUL:
            st.peer_open = True  # never reset here: only the peer's Close says it left
        status = pb.SUCCESSFUL if st.peer_open else pb.PEER_NOT_CONNECTED
        log.info("stream %s: %s -> %s opened at %s (status %d)", ksid, src, dst, self.node_name, status)
        return pb.OpenConnectResponse(status=status, qos=qos, key_stream_id=ksid)

    @staticmethod
    def _peer_timeout(qos: pb.QoS | None) -> float:
        return min(PEER_TIMEOUT, qos.timeout / 1000) if qos is not None and qos.timeout else PEER_TIMEOUT

    def _own_stream(self, ksid: str, caller: str) -> Stream:
        st = self.streams.get(parse_ksid(ksid)) if ksid else None
        if st is None or not st.local_open:
            raise NoQkdConnection(f"no open key stream {ksid!r} at KMS {self.node_name}")
        if st.local_sae != caller:
            raise _denied(f"key stream {st.ksid} belongs to another SAE")
        return st

    # -- GET_KEY --------------------------------------------------------------------------------
    async def get_key(self, req: pb.GetKeyRequest, caller: str) -> pb.GetKeyResponse:
        st = self._own_stream(req.key_stream_id, caller)
        qos = st.qos or pb.QoS()
        index = req.index if req.HasField("index") else st.next_index
        want_meta = req.metadata.size if req.HasField("metadata") else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + qos.timeout / 1000 if qos.timeout else None
        last: Etsi004Error | None = None  # why the previous attempt could not deliver
        while True:
            try:
                key, meta = await self._one_chunk(st, index, want_meta, deadline)
                break
            except (InsufficientKey, PeerAppNotConnected) as e:
                if deadline is None or isinstance(e, KeyGone):
                    raise
                last = e
                left = deadline - loop.time()
                if left <= 0:
                    raise StreamTimeout(f"timeout after {qos.timeout} ms: {e.message}") from None
                await asyncio.sleep(min(POLL, left))
            except StreamTimeout:
                # the last retry's call to the peer KMS was cut by our own deadline: the reason is
                # still the previous answer, not a silent peer
                if last is None or deadline is None or loop.time() < deadline:
                    raise
                raise StreamTimeout(f"timeout after {qos.timeout} ms: {last.message}") from None
        st.next_index = max(st.next_index, index + 1) % UINT32
        out = pb.GetKeyResponse(status=pb.SUCCESSFUL, index=index, key_buffer=key)
        if meta is not None:
            out.metadata.CopyFrom(pb.Metadata(size=len(meta), buffer=meta))
        return out

    async def _one_chunk(self, st: Stream, index: int, want_meta: int | None,
                         deadline: float | None) -> tuple[bytes, bytes | None]:
        async with st.lock:
            if index in st.delivered:
                raise KeyGone(f"index {index} of stream {st.ksid} was already delivered")
            if not st.local_open:
                raise NoQkdConnection(f"key stream {st.ksid} was closed")
            if st.master:
                ids = await self._assign(st, index, peer_side=False)
                meta = _metadata(index, ids, want_meta)
                st.delivered.add(index)
                return st.drop_held(index), meta
            ids = st.ids_cache.get(index) or await self._ask_master(st, index, deadline)
            st.ids_cache[index] = ids  # until delivered: retries never ask the master again
            meta = _metadata(index, ids, want_meta)  # before taking: status 8 consumes nothing
            master_sae, slave_sae = st.saes()
            try:
                got = await self.committer.deliver(SlaveRequest(st.assoc, tuple(ids), master_sae, slave_sae))
            except KeysNotAvailable as e:
                if all(d.get("reason") == "unknown" for d in e.details):  # not ingested here yet
                    raise InsufficientKey(f"keys of index {index} have not reached {self.node_name} yet") from None
                raise KeyGone(f"keys of index {index} not available here: {e.message}") from None
            except KeyStoreError as e:
                raise InsufficientKey(f"keys of index {index}: {e.message}") from None
            del st.ids_cache[index]
            st.delivered.add(index)
            return b"".join(k for _, k in got), meta

    async def _ask_master(self, st: Stream, index: int, deadline: float | None) -> list[str]:
        timeout = PEER_TIMEOUT
        if deadline is not None:
            timeout = max(min(PEER_TIMEOUT, deadline - asyncio.get_running_loop().time()), 0.001)
        reply = await self._call_peer(st.peer, "Assign", pb.AssignRequest(key_stream_id=st.ksid, index=index),
                                      timeout)
        if reply.status != pb.SUCCESSFUL:
            raise _status_error(reply.status, f"KMS {st.peer.name}: {reply.message}")
        return list(reply.key_ids)

    async def _assign(self, st: Stream, index: int, *, peer_side: bool) -> list[str]:
        """Master only, under st.lock: the key IDs backing `index`, taking keys if it is new.

        peer_side: asked by the peer KMS (needs the local application connected), else by the local
        application (needs the peer application connected)."""
        self._expire(st)
        if index in st.retired:
            raise KeyGone(f"index {index} of stream {st.ksid} was delivered at both ends")
        ids = st.assigned.get(index)
        if ids is not None:
            if not peer_side and index not in st.held:
                raise KeyGone(f"the key of index {index} expired (TTL) or was released")
            return ids
        if not (st.local_open if peer_side else st.peer_open):
            raise PeerAppNotConnected(f"the peer application of stream {st.ksid} is not connected")
        if len(st.held) >= MAX_HELD:
            raise InsufficientKey(f"{MAX_HELD} key chunks of stream {st.ksid} are waiting to be fetched")
        info = self.store.association(st.assoc)
        kb = info.key_size_bits // 8
        master_sae, slave_sae = st.saes()
        try:
            got = await self.committer.deliver(
                MasterRequest(st.assoc, master_sae, slave_sae, st.chunk // kb, info.key_size_bits))
        except InsufficientKeys as e:
            raise InsufficientKey(f"{e.asked} keys needed, {e.available} available") from None
        except KeyStoreError as e:
            raise InsufficientKey(e.message) from None
        ids = [kid for kid, _ in got]
        st.assigned[index] = ids
        st.held[index] = (bytearray(b"".join(k for _, k in got)), asyncio.get_running_loop().time())
        return ids

    @staticmethod
    def _expire(st: Stream) -> None:
        ttl = st.qos.ttl if st.qos is not None else 0
        if not ttl:
            return
        now = asyncio.get_running_loop().time()
        for i in [i for i, (_, t) in st.held.items() if now - t > ttl]:
            st.drop_held(i)

    # -- CLOSE ----------------------------------------------------------------------------------
    async def close(self, req: pb.CloseRequest, caller: str) -> pb.CloseResponse:
        st = self._own_stream(req.key_stream_id, caller)
        st.local_open, st.qos = False, None
        st.wipe()
        if not st.peer_open:
            self.streams.pop(st.ksid, None)
        try:
            await self._call_peer(st.peer, "Close", pb.PeerCloseRequest(key_stream_id=st.ksid), PEER_TIMEOUT)
        except Etsi004Error as e:  # the stream is closed here regardless
            log.warning("stream %s: telling KMS %s about CLOSE failed: %s", st.ksid, st.peer.name, e.message)
        log.info("stream %s closed by %s at %s", st.ksid, caller, self.node_name)
        return pb.CloseResponse(status=pb.SUCCESSFUL)

    # -- KMS-to-KMS server side -----------------------------------------------------------------
    async def peer_connect(self, req: pb.PeerConnectRequest, peer: PeerKms) -> pb.PeerConnectResponse:
        src, dst = req.source, req.destination
        if self.directory.node_of(src) != peer.node_id:
            raise _denied(f"SAE {src} is not attached to node {peer.name}")
        if not self.directory.is_local(dst):
            raise NoQkdConnection(f"SAE {dst} is not attached to KMS {self.node_name}")
        ksid = parse_ksid(req.key_stream_id)
        info = self._association(dst, src, peer.node_id)
        if req.master_node != self._master_name(info, peer):
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          f"master of association {info.assoc_id} is {self._master_name(info, peer)}")
        chunk = req.qos.key_chunk_size
        kb = info.key_size_bits // 8
        st = self.streams.get(ksid)
        if st is None:
            if not chunk or chunk % kb or chunk // kb > info.max_keys_per_request:
                raise QosNotMet(f"key_chunk_size {chunk} not servable", pb.QoS(key_chunk_size=kb))
            self.streams[ksid] = Stream(ksid, dst, src, info.assoc_id, peer, info.master_parity == 0,
                                        chunk, peer_open=True)
            return pb.PeerConnectResponse(status=pb.PEER_NOT_CONNECTED)
        if st.peer_open or (st.local_sae, st.remote_sae, st.peer.name) != (dst, src, peer.name):
            raise KeyStreamInUse(f"key stream {ksid} is in use")
        if st.chunk != chunk:
            raise QosNotMet(f"key_chunk_size is {st.chunk} at {self.node_name}",
                            st.qos or pb.QoS(key_chunk_size=st.chunk))
        st.peer_open = True
        return pb.PeerConnectResponse(status=pb.SUCCESSFUL if st.local_open else pb.PEER_NOT_CONNECTED)

    async def peer_assign(self, req: pb.AssignRequest, peer: PeerKms) -> pb.AssignResponse:
        st = self._peer_stream(req.key_stream_id, peer)
        if not st.master:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"{self.node_name} is not master of {st.ksid}")
        async with st.lock:
            ids = await self._assign(st, req.index, peer_side=True)
            st.peer_asked.add(req.index)
            st.retire(req.index)
        return pb.AssignResponse(status=pb.SUCCESSFUL, key_ids=ids)

    async def peer_close(self, req: pb.PeerCloseRequest, peer: PeerKms) -> pb.PeerCloseResponse:
        st = self._peer_stream(req.key_stream_id, peer)
        st.peer_open = False
        if not st.local_open:
            st.wipe()
            self.streams.pop(st.ksid, None)
        return pb.PeerCloseResponse(status=pb.SUCCESSFUL)

    def _peer_stream(self, ksid: str, peer: PeerKms) -> Stream:
        st = self.streams.get(parse_ksid(ksid))
        if st is None:
            raise NoQkdConnection(f"unknown key stream {ksid} at KMS {self.node_name}")
        if st.peer.name != peer.name:
            raise _denied(f"key stream {ksid} is not shared with {peer.name}")
        return st


def _status_error(status: int, message: str) -> Etsi004Error:
    """The error class of a GS 004 status received from a peer KMS."""
    classes: dict[int, type[Etsi004Error]] = {
        pb.INSUFFICIENT_KEY: InsufficientKey, pb.PEER_APPLICATION_NOT_CONNECTED: PeerAppNotConnected,
        pb.KEY_STREAM_ID_IN_USE: KeyStreamInUse, pb.TIMEOUT_ERROR: StreamTimeout,
    }
    return classes.get(status, NoQkdConnection)(message)


def _metadata(index: int, key_ids: list[str], capacity: int | None) -> bytes | None:
    """application/json metadata of a chunk if the application asked for it (status 8 if it
    does not fit the application's buffer)."""
    if capacity is None:
        return None
    meta = json.dumps({"index": index, "key_IDs": key_ids}, separators=(",", ":")).encode()
    if len(meta) > capacity:
        raise MetadataTooSmall(len(meta))
    return meta


# -- gRPC servicers: identity first, then the KMS ------------------------------------------------
class AppService(pb_grpc.Etsi004Servicer):
    def __init__(self, kms: Etsi004Kms) -> None:
        self.kms = kms

    @_rendered(pb.OpenConnectResponse)
    async def OPEN_CONNECT(self, request: pb.OpenConnectRequest, context: grpc.aio.ServicerContext
                           ) -> pb.OpenConnectResponse:
        return await self.kms.open_connect(request, self.kms.caller_sae(context))

    @_rendered(pb.GetKeyResponse)
    async def GET_KEY(self, request: pb.GetKeyRequest, context: grpc.aio.ServicerContext) -> pb.GetKeyResponse:
        return await self.kms.get_key(request, self.kms.caller_sae(context))

    @_rendered(pb.CloseResponse)
    async def CLOSE(self, request: pb.CloseRequest, context: grpc.aio.ServicerContext) -> pb.CloseResponse:
        return await self.kms.close(request, self.kms.caller_sae(context))


class PeerService(pb_grpc.Etsi004PeerServicer):
    def __init__(self, kms: Etsi004Kms) -> None:
        self.kms = kms

    @_rendered(pb.PeerConnectResponse)
    async def Connect(self, request: pb.PeerConnectRequest, context: grpc.aio.ServicerContext
                      ) -> pb.PeerConnectResponse:
        return await self.kms.peer_connect(request, self.kms.caller_node(context))

    @_rendered(pb.AssignResponse)
    async def Assign(self, request: pb.AssignRequest, context: grpc.aio.ServicerContext) -> pb.AssignResponse:
        return await self.kms.peer_assign(request, self.kms.caller_node(context))

    @_rendered(pb.PeerCloseResponse)
    async def Close(self, request: pb.PeerCloseRequest, context: grpc.aio.ServicerContext
                    ) -> pb.PeerCloseResponse:
        return await self.kms.peer_close(request, self.kms.caller_node(context))


# -- a client for applications -------------------------------------------------------------------
class Etsi004Client:
    """An SAE's GS 004 client: mTLS with the SAE's client certificate (CN = SAE ID).

    `server_name` is the name the KMS certificate must carry (default: the host of `address`)."""

    def __init__(self, address: str, certs: CertPaths, *, server_name: str | None = None) -> None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=certs.ca.read_bytes(), private_key=certs.key.read_bytes(),
            certificate_chain=certs.cert.read_bytes(),
        )
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self.channel = grpc.aio.secure_channel(address, creds, options=options)
        self.stub = pb_grpc.Etsi004Stub(self.channel)

    async def open_connect(self, source: str, destination: str, qos: pb.QoS | None = None,
                           key_stream_id: str = "", timeout: float = 10) -> pb.OpenConnectResponse:
        return await self.stub.OPEN_CONNECT(pb.OpenConnectRequest(
            source=source, destination=destination, qos=qos, key_stream_id=key_stream_id), timeout=timeout)

    async def get_key(self, key_stream_id: str, index: int | None = None, *,
                      metadata_size: int | None = None, timeout: float = 30) -> pb.GetKeyResponse:
        req = pb.GetKeyRequest(key_stream_id=key_stream_id, index=index)
        if metadata_size is not None:
            req.metadata.CopyFrom(pb.Metadata(size=metadata_size))
        return await self.stub.GET_KEY(req, timeout=timeout)

    async def close(self, key_stream_id: str, timeout: float = 10) -> pb.CloseResponse:
        return await self.stub.CLOSE(pb.CloseRequest(key_stream_id=key_stream_id), timeout=timeout)

    async def aclose(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Etsi004Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def start_etsi004_server(
    store: KeyStore, directory: SaeDirectory, resolver: AssociationResolver, node_name: str,
    peers: Mapping[str, PeerKms], pki: CertPaths, host: str = "127.0.0.1", port: int = 0,
    rate_of: RateOf | None = None, interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[Etsi004Kms, int]:
    """Start a 004 server; returns it (stop with `await kms.stop()`) and its port."""
    kms = Etsi004Kms(store, directory, resolver, node_name, peers, pki, rate_of=rate_of, interceptors=interceptors)
    return kms, await kms.start(host, port)
