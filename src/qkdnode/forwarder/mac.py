"""One-time pad and Wegman-Carter one-time MAC of a relay hop, keyed by QKD link key.

Pad layout
----------
A hop of `n` relayed keys of `K` bytes consumes whole link keys (`L` bytes each, in the order of
their IDs in the message) and uses their concatenation as::

    r (16 bytes) | s (16 bytes) | pad (n x K bytes) | unused tail (discarded)

so it takes ``ceil((32 + n*K) / L)`` link keys: with K = L = 32 (256-bit keys) exactly ``n + 1``,
i.e. one link bit per relayed bit plus one link key for the MAC, shared by the n keys of the message.

MAC
---
Polynomial evaluation hash over GF(p), p = 2^127 - 1 (Carter-Wegman; Poly1305-style encoding):
the authenticated bytes are cut into 15-byte chunks, each read little-endian with a 0x01 byte
appended (so chunks are < 2^121 < p and messages of different lengths differ), and

    h = (...((c_1 r + c_2) r + ...) + c_q) r  mod p,      tag = (h + s) mod 2^128  (16 bytes LE)

with r = the first 16 pad bytes mod 2^127 and s the next 16. r and s are fresh link key for every
message and hop, never reused: the tag is information-theoretically secure, an attacker who sees
one tag forges another message with probability at most q / p ~ q * 2^-127 for q chunks (a
64 KiB message: q = 4370, about 2^-115). Nothing here depends on computational assumptions; TLS
around the gRPC channel is a second, independent layer.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence

P127 = (1 << 127) - 1
MAC_KEY_BYTES = 32  # r (16) + s (16)
TAG_BYTES = 16
_CHUNK = 15
_DOMAIN = b"qkdnet-relay-hop-v1"


def link_keys_needed(n_keys: int, key_bytes: int, link_key_bytes: int) -> int:
    """Link keys one hop consumes to carry n keys of key_bytes: pad + MAC key, whole link keys."""
    if n_keys < 1 or key_bytes < 1 or link_key_bytes < 1:
        raise ValueError("sizes must be positive")
    return -(-(MAC_KEY_BYTES + n_keys * key_bytes) // link_key_bytes)


def poly_hash(r: int, data: bytes) -> int:
    """Polynomial hash of data over GF(2^127 - 1) at point r (see the module docstring)."""
    p = P127
    h = 0
    n = len(data)
    full = n - n % _CHUNK
    top = 1 << (8 * _CHUNK)
    frm = int.from_bytes
    for i in range(0, full, _CHUNK):
        h = (h + (frm(data[i:i + _CHUNK], "little") | top)) * r % p
    if full < n:
        rest = data[full:]
        h = (h + (frm(rest, "little") | (1 << (8 * len(rest))))) * r % p
    return h


def wc_tag(mac_key: bytes, data: bytes) -> bytes:
    """The 16-byte one-time tag of data under mac_key (r || s, 32 bytes, used once)."""
    if len(mac_key) != MAC_KEY_BYTES:
        raise ValueError("the MAC key is 32 bytes (r, s)")
    r = int.from_bytes(mac_key[:16], "little") & P127
    s = int.from_bytes(mac_key[16:], "little")
    return ((poly_hash(r, data) + s) & ((1 << 128) - 1)).to_bytes(TAG_BYTES, "little")


def wc_verify(mac_key: bytes, data: bytes, tag: bytes) -> bool:
    return len(tag) == TAG_BYTES and hmac.compare_digest(wc_tag(mac_key, data), tag)


def xor(data: bytes, pad: bytes) -> bytes:
    """data XOR pad (equal lengths): the one-time pad, both ways."""
    if len(data) != len(pad):
        raise ValueError("one-time pad length differs from the data")
    if not data:
        return b""
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(len(data), "big")


def split_material(material: bytes, payload_bytes: int) -> tuple[bytes, bytes]:
    """(mac_key, pad) from the concatenated link keys of a hop; the tail beyond is unused."""
    if len(material) < MAC_KEY_BYTES + payload_bytes:
        raise ValueError("not enough link key for this hop")
    return material[:MAC_KEY_BYTES], material[MAC_KEY_BYTES:MAC_KEY_BYTES + payload_bytes]


def _field(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def authenticated_bytes(*, relay_id: str, route_id: str, origin: str, target: str, hop: int,
                        link_id: str, key_size_bits: int, link_key_ids: Sequence[str],
                        key_ids: Sequence[str], ciphertext: bytes) -> bytes:
    """Canonical, unambiguous encoding of every field of a relay hop the tag covers."""
    parts = [_DOMAIN]
    for text in (relay_id, route_id, origin, target, link_id):
        parts.append(_field(text.encode()))
    parts.append(struct.pack(">II", hop, key_size_bits))
    for ids in (link_key_ids, key_ids):
        parts.append(struct.pack(">I", len(ids)))
        parts.extend(_field(i.encode()) for i in ids)
    parts.append(_field(ciphertext))
    return b"".join(parts)
