"""gRPC transport of the forwarder: the KeyRelay server and the channels to the neighbours.

Both directions are mutual TLS with the node certificates of the lab PKI (`pki` section of the node
config). The server requires a client certificate signed by the CA and then accepts a call only if
the certificate's subject CN names a configured neighbour; the client pins the server's identity
to the neighbour's name (`grpc.ssl_target_name_override`: the name must be in the certificate's
SAN), so a relay never reaches a node other than the one the route names.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ..pki import CertPaths
from .errors import NotNeighbour, RelayError

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
_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
R = TypeVar("R")


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


class _Servicer(pb_grpc.KeyRelayServicer):
    """Checks the caller, runs the handler, renders RelayErrors as gRPC status + metadata."""

    def __init__(self, neighbours: Callable[[], dict[str, Neighbour]], node_name: str,
                 prepare: Handler, commit: Handler, abort: Handler) -> None:
        self._neighbours = neighbours
        self._node_name = node_name
        self._prepare, self._commit, self._abort = prepare, commit, abort

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

    async def Prepare(self, request: pb.PrepareRequest, context: grpc.aio.ServicerContext) -> pb.PrepareReply:
        return await self._run(self._prepare, request, context)

    async def Commit(self, request: pb.RelayHop, context: grpc.aio.ServicerContext) -> pb.CommitReply:
        return await self._run(self._commit, request, context)

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortReply:
        return await self._run(self._abort, request, context)


class RelayServer:
    """The KeyRelay gRPC server of one node (grpc.aio, mutual TLS)."""

    def __init__(self, pki: CertPaths, servicer: _Servicer) -> None:
        self.pki = pki
        self.servicer = servicer
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @classmethod
    def create(cls, pki: CertPaths, node_name: str, neighbours: Callable[[], dict[str, Neighbour]],
               prepare: Handler, commit: Handler, abort: Handler) -> RelayServer:
        return cls(pki, _Servicer(neighbours, node_name, prepare, commit, abort))

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
            await self.server.stop(grace)
            self.server = None


class NeighbourChannels:
    """One lazily opened mutual-TLS channel (and stub) per neighbour, keyed by node name."""

    def __init__(self, pki: CertPaths) -> None:
        self.pki = pki
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.KeyRelayStub, tuple[str, int]]] = {}

    def stub(self, nb: Neighbour) -> pb_grpc.KeyRelayStub:
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
        """Call `method` on the neighbour; its RelayError (or a transport failure) is raised as such."""
        stub = self.stub(nb)
        try:
            return await getattr(stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise RelayError.from_rpc_error(err, nb.name) from None

    async def close(self) -> None:
        for channel, _, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()
