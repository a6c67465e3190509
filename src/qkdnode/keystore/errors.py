"""Key store and ETSI GS QKD 014 errors.

Every error is a class that knows its ETSI 014 HTTP status and renders its own body
(`{"message": ..., "details": [{...}]}`, GS QKD 014 V1.1.1 clause 6.4 "Error"). The 014 server
catches `KeyStoreError` and sends `err.http_status` with `err.body()`; anything else becomes a
generic 503 without internals. Messages and details never contain key material.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar


class KeyStoreError(Exception):
    """Base class: a request that failed as a whole; nothing it touched was kept."""

    http_status: ClassVar[int] = 400

    def __init__(self, message: str, details: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[dict[str, Any]] = list(details)

    def body(self) -> dict[str, Any]:
        """The ETSI 014 error object."""
        out: dict[str, Any] = {"message": self.message}
        if self.details:
            out["details"] = self.details
        return out


# -- 400: the request is wrong -------------------------------------------------------------------


class BadRequest(KeyStoreError):
    """Malformed or out-of-range request parameters (ETSI 014: 400)."""


class KeySizeNotSupported(BadRequest):
    """A requested key size other than the association's fixed key size."""

    def __init__(self, asked: int, supported: int) -> None:
        super().__init__(
            f"size must be {supported}",
            [{"parameter": "size", "value": asked, "supported": supported}],
        )


class RequestLimitExceeded(BadRequest):
    """More keys in one request than max_key_per_request."""

    def __init__(self, asked: int, limit: int) -> None:
        super().__init__(
            f"number of keys must be between 1 and {limit}",
            [{"parameter": "number", "value": asked, "max_key_per_request": limit}],
        )


class KeysNotAvailable(BadRequest):
    """dec_keys: some key IDs are unknown, already delivered or not the peer's to choose."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        items = list(problems)
        ids = ", ".join(k for k, _ in items)
        super().__init__(
            f"key_ID not available: {ids}",
            [{"key_ID": k, "reason": reason} for k, reason in items],
        )
        self.key_ids = [k for k, _ in items]


class IngestError(BadRequest):
    """Keys offered to `ingest` violate the stream contract (size, UUID, seq order)."""


class UnknownAssociation(KeyStoreError):
    """No such key association in this store."""

    def __init__(self, assoc_id: str) -> None:
        super().__init__(f"unknown key association {assoc_id!r}")
        self.assoc_id = assoc_id


class AssociationConflict(KeyStoreError):
    """add_association with an ID that exists with different parameters."""


# -- 401: the caller may not do this --------------------------------------------------------------


class Unauthorized(KeyStoreError):
    """Unknown SAE, or an SAE asking for an association it does not belong to (ETSI 014: 401)."""

    http_status = 401


# -- 503: the KME cannot serve this now -----------------------------------------------------------


class InsufficientKeys(KeyStoreError):
    """Fewer keys available for local masters than asked for (ETSI 014: 503)."""

    http_status = 503

    def __init__(self, asked: int, available: int) -> None:
        super().__init__(
            f"keys exhausted: {asked} asked, {available} available",
            [{"number": asked, "stored_key_count": available}],
        )
        self.asked = asked
        self.available = available


class StorageError(KeyStoreError):
    """The database failed (I/O error, full disk); the request was rolled back."""

    http_status = 503
