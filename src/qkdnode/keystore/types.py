"""Public value types of the key store (no key material in any of them but `Delivery`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

AssociationKind = Literal["link", "relay"]
KeyState = Literal["available", "delivered"]
Delivery = list[tuple[str, bytes]]
"""Delivered keys: (key_ID in canonical UUID form, key bytes)."""

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
UUIDS_RE = re.compile(rf"(?:{UUID_RE.pattern})*")

@dataclass(frozen=True, slots=True)
class Association:
    """One key stream shared with one remote node."""

    assoc_id: str
    local_node_id: str
    remote_node_id: str
    kind: AssociationKind
    master_parity: int
    key_size_bits: int = 256
    max_key_count: int = 100_000
    max_keys_per_request: int = 128


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters of one association (committed state; never key bytes)."""

    assoc_id: str
    available_for_masters: int
    available_for_peer: int
    available_total: int
    delivered: int
    stored_bits: int
    capacity: int
    key_size_bits: int
    max_keys_per_request: int
    dropped: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """Metadata of one stored key (never its bytes)."""

    key_id: str
    seq: int
    size_bits: int
    created: float
    state: KeyState
    master_sae: str | None
    slave_sae: str | None
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class MasterRequest:
    """enc_keys: `number` fresh keys of this node's parity for master -> slave."""

    assoc_id: str
    master_sae: str
    slave_sae: str
    number: int
    size_bits: int


@dataclass(frozen=True, slots=True)
class SlaveRequest:
    """dec_keys: the keys with these IDs (of the peer's parity), all or nothing."""

    assoc_id: str
    key_ids: tuple[str, ...]
    master_sae: str
    slave_sae: str


DeliveryRequest = MasterRequest | SlaveRequest


def key_id_str(packed: bytes) -> str:
    """Canonical lower-case UUID text of a 16-byte key ID."""
    h = packed.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_key_id(text: object) -> bytes | None:
    """16-byte form of a UUID in 8-4-4-4-12 hex form, or None."""
    if not isinstance(text, str) or not UUID_RE.fullmatch(text):
        return None
    return bytes.fromhex(text.replace("-", ""))
