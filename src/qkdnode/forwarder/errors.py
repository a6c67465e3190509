"""Relay errors: each class knows its gRPC status, its wire name and its ETSI 014 rendering.

A node that fails a Prepare/Commit/Abort aborts the call with the class's gRPC status, the message
(prefixed with the node's name) and the trailing metadata ``relay-error: <kind>``; the caller
rebuilds the same class from it (`RelayError.from_rpc_error`) and passes it upstream unchanged,
so the origin learns which node failed and why. At the origin, `RelayUnavailable` turns it into
an ETSI 014 error (503 with ``message`` and ``details``). Messages never contain key material.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

from ..keystore.errors import KeyStoreError

KIND_KEY = "relay-error"


class RelayError(Exception):
    """A relay that failed as a whole; its reservations are released."""

    kind: ClassVar[str] = "relay-failed"
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNAVAILABLE
    http_status: ClassVar[int] = 503
    _by_kind: ClassVar[dict[str, type[RelayError]]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        RelayError._by_kind[cls.kind] = cls

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((KIND_KEY, self.kind),)

    @classmethod
    def from_rpc_error(cls, err: grpc.aio.AioRpcError, peer: str) -> RelayError:
        kind = next((v for k, v in (err.trailing_metadata() or ()) if k == KIND_KEY), None)
        if isinstance(kind, bytes):
            kind = kind.decode()
        known = cls._by_kind.get(str(kind)) if kind else None
        if known is not None:
            return known(err.details() or known.kind)
        return PeerUnreachable(f"neighbour {peer}: {err.code().name}: {err.details() or 'no details'}")

    @classmethod
    def from_failure(cls, kind: str, message: str) -> RelayError:
        return cls._by_kind.get(kind, RelayError)(message)


RelayError._by_kind[RelayError.kind] = RelayError


class NoRoute(RelayError):
    """A node of the path has no (valid) VIRT link entry for the relay."""

    kind = "no-route"
    code = grpc.StatusCode.FAILED_PRECONDITION


class LinkKeyShort(RelayError):
    """A hop's link key association holds fewer free keys than the hop needs."""

    kind = "link-key-exhausted"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RelayStoreFull(RelayError):
    """The target's relay key association has no room for the keys."""

    kind = "relay-store-full"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateLimited(RelayError):
    """The route's virt_bandwidth (token bucket at the origin) is used up."""

    kind = "rate-limited"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class MacMismatch(RelayError):
    """A hop's tag did not verify: the message was altered (or the link keys differ)."""

    kind = "mac-mismatch"
    code = grpc.StatusCode.DATA_LOSS


class NotNeighbour(RelayError):
    """The caller's certificate does not name a configured neighbour (or the expected one)."""

    kind = "not-a-neighbour"
    code = grpc.StatusCode.PERMISSION_DENIED


class UnknownRelay(RelayError):
    """Commit/Abort of a relay that was never prepared here, or whose reservation expired."""

    kind = "unknown-relay"
    code = grpc.StatusCode.NOT_FOUND


class BadRelayMessage(RelayError):
    """A field is malformed or contradicts the prepared relay."""

    kind = "bad-message"
    code = grpc.StatusCode.INVALID_ARGUMENT


class LinkKeyMismatch(RelayError):
    """The receiver does not hold the link keys the sender named (stream behind or diverged)."""

    kind = "link-key-mismatch"
    code = grpc.StatusCode.FAILED_PRECONDITION


class EntropyUnavailable(RelayError):
    """The configured QRNG did not deliver."""

    kind = "entropy-unavailable"


class PeerUnreachable(RelayError):
    """The next hop did not answer (transport failure, timeout)."""

    kind = "unreachable"


class RelayUnavailable(KeyStoreError):
    """ETSI 014 rendering of a failed relay at the origin: 503, nothing delivered."""

    http_status = 503

    def __init__(self, err: RelayError, route_id: str, target: str) -> None:
        super().__init__(
            f"key relay failed: {err.message}",
            [{"reason": err.kind, "route": route_id, "target_KME_ID": target}],
        )
        self.error = err
