"""gRPC transport of the forwarder: the KeyRelay server and the channels to the neighbours.

Both directions are mutual TLS with the node certificates of the lab PKI (`pki` section of the node
config). The server requires a client certificate signed by the CA and then accepts a call only if
the certificate's subject CN names a configured neighbour; the client pins the server's identity
to the neighbour's name (`grpc.ssl_target_name_override`: the name must be in the certificate's
SAN), so a relay never reaches a node other than the one the route names.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ..pki import CertPaths
from .errors import NotNeighbour, PeerUnreachable, RelayError

try:
    from . import relay_pb2 as pb
    from . import relay_pb2_grpc as pb_grpc
except ImportError as exc:  # pragma: no cover - a source tree that was never installed
    raise ImportError(
        "qkdnode.forwarder: the gRPC stubs relay_pb2*.py are generated at install time; "
        "run `pip install -e .` (or `pip install .`) first"
    ) from exc

log = logging.getLogger(__name__)

__all__ = ["Neighbour", "NeighbourChannels", "RelayServer", "pb", "pb_grpc"]

MAX_MESSAGE = 8 * 1024 * 1024
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
    # gRPC sets SO_REUSEPORT by default: two servers on one port would then share its connections
    # silently (a neighbour reaching the wrong node); a taken port must fail to bind instead
    ("grpc.so_reuseport", 0),
]
R = TypeVar("R")
CALL_TIMEOUT_S = 15.0  # how long a call to a neighbour's forwarder may take


@dataclass(frozen=True)
class Neighbour:
    """A configured neighbour: certificate CN (= node name), qkdn_id, forwarder address."""

    name: str
    node_id: str
    host: str | None = None
    port: int | None = None


def _read(paths: CertPaths) -> tuple[bytes, bytes, bytes]:
    return paths.ca.read_bytes(), paths.key.read_bytes(), paths.cert.read_bytes()


def peer_name(context: grpc.aio.ServicerContext) -> str | None:
    """Subject CN of the caller's (verified) client certificate."""
    cns = context.auth_context().get("x509_common_name") or []
    return cns[0].decode() if len(cns) == 1 else None


Handler = Callable[[Any, str], Awaitable[Any]]


# Hop stream requests, by name (the HopMessage field), and the HopMessage field of each one's reply
_REPLY = {"prepare": "prepared", "commit": "committed", "abort": "aborted", "revoke": "revoked", "tails": "tails_known"}


class _Servicer(pb_grpc.KeyRelayServicer):
    """Checks the caller, runs the handler, renders RelayErrors as gRPC status + metadata
    (unary calls) or as `Failure` replies (the Hop stream)."""

    def __init__(self, neighbours: Callable[[], dict[str, Neighbour]], node_name: str,
                 handlers: Mapping[str, Handler]) -> None:
        if set(handlers) != set(_REPLY):
            raise ValueError(f"a handler for each of {sorted(_REPLY)} is needed")
        self._neighbours = neighbours
        self._node_name = node_name
        self._handlers = dict(handlers)
        self.closing = asyncio.Event()  # set by RelayServer.stop: Hop streams end after their requests

    async def _run(self, handler: Handler, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = peer_name(context)
        try:
            if caller is None or caller not in self._neighbours():
                raise NotNeighbour(f"{self._node_name}: certificate {caller or '(no CN)'} is not a neighbour's")
            return await handler(request, caller)
        except RelayError as err:
            await context.abort(err.code, err.message, trailing_metadata=err.metadata())
        except Exception:
            log.exception("relay call from %s failed", caller)
            await context.abort(grpc.StatusCode.INTERNAL, f"{self._node_name}: internal error")

    async def Hop(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """The neighbour's long-lived stream: each request runs in its own task, replies as they finish."""
        caller = peer_name(context)
        if caller is None or caller not in self._neighbours():
            err = NotNeighbour(f"{self._node_name}: certificate {caller or '(no CN)'} is not a neighbour's")
            await context.abort(err.code, err.message, trailing_metadata=err.metadata())
        write_lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(msg: pb.HopMessage) -> None:
            kind = msg.WhichOneof("body")
            reply = pb.HopMessage(call_id=msg.call_id)
            try:
                if kind not in _REPLY:
                    raise RelayError(f"{self._node_name}: unexpected message {kind}")
                getattr(reply, _REPLY[kind]).CopyFrom(await self._handlers[kind](getattr(msg, kind), caller))
            except RelayError as err:
                reply.failure.kind, reply.failure.message = err.kind, err.message
            except Exception:
                log.exception("relay call from %s failed", caller)
                reply.failure.kind, reply.failure.message = RelayError.kind, f"{self._node_name}: internal error"
            async with write_lock:
                await context.write(reply)

        async def read_all() -> None:
            while (msg := await context.read()) is not grpc.aio.EOF:
                t = asyncio.create_task(serve(msg))
                tasks.add(t)
                t.add_done_callback(tasks.discard)

        # one waiter for the whole stream (not one per message): it ends at EOF or when the server closes
        reading = asyncio.ensure_future(read_all())
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait((reading, closing), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            closing.cancel()
            reading.cancel()
            for t in tasks:
                t.cancel()

    async def Prepare(self, request: pb.PrepareRequest, context: grpc.aio.ServicerContext) -> pb.PrepareReply:
        return await self._run(self._handlers["prepare"], request, context)

    async def Commit(self, request: pb.RelayHop, context: grpc.aio.ServicerContext) -> pb.CommitReply:
        return await self._run(self._handlers["commit"], request, context)

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortReply:
        return await self._run(self._handlers["abort"], request, context)


class RelayServer:
    """The KeyRelay gRPC server of one node (grpc.aio, mutual TLS)."""

    def __init__(self, pki: CertPaths, servicer: _Servicer) -> None:
        self.pki = pki
        self.servicer = servicer
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @classmethod
    def create(cls, pki: CertPaths, node_name: str, neighbours: Callable[[], dict[str, Neighbour]],
               handlers: Mapping[str, Handler]) -> RelayServer:
        """`handlers`: the handler of each Hop request, by name (prepare, commit, abort, revoke, tails)."""
        return cls(pki, _Servicer(neighbours, node_name, handlers))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        ca, key, cert = _read(self.pki)
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        self.server = grpc.aio.server(options=_OPTIONS)
        pb_grpc.add_KeyRelayServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_secure_port(f"{host}:{port}", creds)
        if self.port == 0:
            raise OSError(f"key forwarder cannot listen on {host}:{port}")
        await self.server.start()
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        if self.server is not None:
            self.servicer.closing.set()  # long-lived streams would hold the whole grace period
            await self.server.stop(grace)
            self.server = None


def _expire(fut: asyncio.Future[pb.HopMessage]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class HopStream:
    """The client end of one Hop stream to a neighbour: concurrent requests, replies by call_id."""

    def __init__(self, stub: pb_grpc.KeyRelayStub, peer: str,
                 on_broken: Callable[[str], None] | None = None) -> None:
        self.peer = peer
        self._on_broken = on_broken
        self._call = stub.Hop()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[pb.HopMessage]] = {}
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read())
        self.broken = False

    async def _read(self) -> None:
        reason = "stream closed"
        try:
            while (msg := await self._call.read()) is not grpc.aio.EOF:
                fut = self._waiting.pop(msg.call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except grpc.aio.AioRpcError as err:
            reason = f"{err.code().name}: {err.details() or 'no details'}"
            kind = next((v for k, v in (err.trailing_metadata() or ()) if k == "relay-error"), None)
            if kind == NotNeighbour.kind:
                reason = err.details() or reason
        except asyncio.CancelledError:
            reason = "stream cancelled"
            self._on_broken = None  # closed by this node: not news to report
        finally:
            self.broken = True
            if self._on_broken is not None:
                self._on_broken(self.peer)
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(PeerUnreachable(f"neighbour {self.peer}: {reason}"))
            self._waiting.clear()

    async def request(self, field: str, body: Any, timeout: float) -> pb.HopMessage:
        if self.broken:
            raise PeerUnreachable(f"neighbour {self.peer}: stream closed")
        call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[pb.HopMessage] = loop.create_future()
        self._waiting[call_id] = fut
        msg = pb.HopMessage(call_id=call_id)
        getattr(msg, field).CopyFrom(body)
        expiry = loop.call_later(timeout, _expire, fut)  # cheaper than wait_for, on every message
        try:
            async with self._write_lock:
                await self._call.write(msg)
            return await fut
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as err:
            self.broken = True
            raise PeerUnreachable(f"neighbour {self.peer}: {type(err).__name__}") from None
        except TimeoutError:
            raise PeerUnreachable(f"neighbour {self.peer}: no answer within {timeout:.0f} s") from None
        finally:
            expiry.cancel()
            self._waiting.pop(call_id, None)

    async def close(self) -> None:
        self._on_broken = None
        self._call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class NeighbourChannels:
    """One lazily opened mutual-TLS channel (stub and Hop stream) per neighbour, keyed by node name;
    `on_broken(name)` is called when a neighbour's stream ends other than by `close()` (the
    neighbour stopped, restarted or became unreachable)."""

    def __init__(self, pki: CertPaths, on_broken: Callable[[str], None] | None = None) -> None:
        self.pki = pki
        self.on_broken = on_broken
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.KeyRelayStub, tuple[str, int]]] = {}
        self._streams: dict[str, HopStream] = {}
        self.closed = False  # by close(): the node is stopping, no call goes out any more

    def stub(self, nb: Neighbour) -> pb_grpc.KeyRelayStub:
        if self.closed:
            raise PeerUnreachable(f"neighbour {nb.name}: this node's forwarder is stopping")
        if nb.host is None or nb.port is None:
            raise RelayError(f"no forwarder address configured for neighbour {nb.name}")
        addr = (nb.host, nb.port)
        found = self._stubs.get(nb.name)
        if found is not None and found[2] == addr:
            return found[1]
        ca, key, cert = _read(self.pki)
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.aio.secure_channel(f"{nb.host}:{nb.port}", creds,
                                          options=[*_OPTIONS, ("grpc.ssl_target_name_override", nb.name)])
        stub = pb_grpc.KeyRelayStub(channel)
        self._stubs[nb.name] = (channel, stub, addr)
        return stub

    async def call(self, nb: Neighbour, method: str, request: Any, timeout: float) -> Any:
        """Call `method` (prepare, commit, abort, revoke, tails) on the neighbour over its Hop stream; the
        neighbour's RelayError (or a transport failure) is raised as such."""
        stub = self.stub(nb)
        stream = self._streams.get(nb.name)
        if stream is None or stream.broken:
            if stream is not None:
                await stream.close()
            try:
                stream = self._streams[nb.name] = HopStream(stub, nb.name, self.on_broken)
            except grpc.aio.UsageError:  # its channel was closed meanwhile (the node is stopping)
                raise PeerUnreachable(f"neighbour {nb.name}: this node's forwarder is stopping") from None
        reply = await stream.request(method, request, timeout)
        if reply.WhichOneof("body") == "failure":
            raise RelayError.from_failure(reply.failure.kind, reply.failure.message)
        return getattr(reply, _REPLY[method])

    async def unary(self, nb: Neighbour, method: str, request: Any, timeout: float) -> Any:
        """The same as a unary call (Prepare, Commit, Abort)."""
        try:
            return await getattr(self.stub(nb), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise RelayError.from_rpc_error(err, nb.name) from None

    async def close(self) -> None:
        self.closed = True
        for stream in self._streams.values():
            await stream.close()
        self._streams.clear()
        for channel, _, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()
