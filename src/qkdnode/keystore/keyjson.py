"""ETSI GS QKD 014 key containers as JSON text, written and read a column at a time.

A simulated module at ~2 Mbit/s serves ~8,000 keys a second to its node's KMS, and a 50-node network
has 150 of them: per-key Python work in the 014 JSON (a dict per key, a Base64 call per key) was
the largest CPU cost of a booting network. The modules write the key container in one fixed layout,

    {"keys":[{"key_ID":"<uuid>","key_ID_extension":{"seq":<int>},"key":"<base64>"},...]}

with every record the same length when every seq has the same number of digits (seqs of one reply
are consecutive microsecond clock values: they do). Such a body is built here from three column
texts (IDs, seq digits, Base64) with strided slice assignment: one C-level operation per character
column, none per key. `parse_uniform_keys` reads a body in that layout the same way and accepts it
only if writing the columns it found back gives exactly the same bytes; any other body (another
device, another layout, anything unusual) returns None and the caller falls back to `json.loads`.
The same holds for the KMS's acknowledgement (`ack_body`), which the module compares byte for byte
with the one it expects for the keys it served.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

__all__ = ["KeyColumns", "ack_body", "ack_count", "keys_body", "parse_uniform_keys"]

_ID_LEN = 36
_HEAD = b'{"keys":['
_TAIL = b"]}"
_R1 = b'{"key_ID":"'
_R2 = b'","key_ID_extension":{"seq":'
_R3 = b'},"key":"'
_R4 = b'"}'
_ACK_HEAD = b'{"key_IDs":['
_ACK_TAIL = b"]}"
_A1 = b'{"key_ID":"'
_A2 = b'"}'
_DASHES = (8, 13, 18, 23)

KeyColumns = tuple[list[str], list[int], bytes]
"""(key_ID texts as sent, seqs, key material concatenated)"""


def _layout(digits: int, b64_len: int) -> tuple[int, int, int, int]:
    """(offset of the ID, of the seq, of the key, record stride incl. the ',') in a record."""
    id_at = len(_R1)
    seq_at = id_at + _ID_LEN + len(_R2)
    key_at = seq_at + digits + len(_R3)
    return id_at, seq_at, key_at, key_at + b64_len + len(_R4) + 1


def _columns(n: int, digits: int, b64_len: int, ids: bytes, seqs: bytes, keys: bytes) -> bytes:
    """The records of n keys, joined by ',' (no head or tail), from their column texts."""
    id_at, seq_at, key_at, stride = _layout(digits, b64_len)
    template = _R1 + b"-" * _ID_LEN + _R2 + b"0" * digits + _R3 + b"=" * b64_len + _R4 + b","
    out = bytearray(template * n)
    for j in range(_ID_LEN):
        out[id_at + j::stride] = ids[j::_ID_LEN]
    for j in range(digits):
        out[seq_at + j::stride] = seqs[j::digits]
    for j in range(b64_len):
        out[key_at + j::stride] = keys[j::b64_len]
    del out[-1:]
    return bytes(out)


def _b64_column(material: bytes, key_bytes: int) -> bytes:
    """Base64 of every key, concatenated (each key encoded on its own, with its padding)."""
    n = len(material) // key_bytes
    pad = (3 - key_bytes % 3) % 3
    if not pad:
        return base64.b64encode(material)
    rec = key_bytes + pad  # a whole number of 3-byte groups per key: one encode for all
    padded = bytearray(rec * n)
    for j in range(key_bytes):
        padded[j::rec] = material[j::key_bytes]
    text = bytearray(base64.b64encode(bytes(padded)))
    b64_len = rec // 3 * 4
    for p in range(1, pad + 1):
        text[b64_len - p::b64_len] = b"=" * n
    return bytes(text)


def keys_body(id_texts: Sequence[str], seqs: Sequence[int], material: bytes, key_bytes: int) -> bytes:
    """The `{"keys": [...]}` reply for these keys (canonical layout above)."""
    n = len(id_texts)
    if n == 0:
        return _HEAD + _TAIL
    seq_texts = list(map(str, seqs))
    lengths = set(map(len, seq_texts))
    ids = "".join(id_texts).encode()
    if len(lengths) == 1 and min(seqs) >= 0 and len(ids) == _ID_LEN * n:
        b64 = _b64_column(material, key_bytes)
        return _HEAD + _columns(n, lengths.pop(), len(b64) // n, ids, "".join(seq_texts).encode(), b64) + _TAIL
    kb = key_bytes
    b64e = base64.b64encode
    return (_HEAD + b",".join(
        b'{"key_ID":"%s","key_ID_extension":{"seq":%d},"key":"%s"}' % (t.encode(), s, b64e(material[i * kb:(i + 1) * kb]))
        for i, (t, s) in enumerate(zip(id_texts, seqs))
    ) + _TAIL)


def parse_uniform_keys(body: bytes, key_bytes: int) -> KeyColumns | None:
    """The keys of a reply in the canonical layout, checked; None if the body is in any other form
    (then parse it as JSON). Raises ValueError for a body in that layout with bad field values."""
    if not (body.startswith(_HEAD + _R1) and body.endswith(_R4 + _TAIL)):
        return None
    inner = body[len(_HEAD):-len(_TAIL)]
    id_at = len(_R1)
    seq_at = id_at + _ID_LEN + len(_R2)
    seq_end = inner.find(b"}", seq_at)
    key_at = seq_end + len(_R3)
    key_end = inner.find(b'"', key_at)
    if seq_end < 0 or key_end < 0:
        return None
    digits, b64_len = seq_end - seq_at, key_end - key_at
    if digits < 1 or b64_len < 4:
        return None
    stride = _layout(digits, b64_len)[3]
    if (len(inner) + 1) % stride:
        return None
    n = (len(inner) + 1) // stride
    ids, seqs, keys = bytearray(_ID_LEN * n), bytearray(digits * n), bytearray(b64_len * n)
    for j in range(_ID_LEN):
        ids[j::_ID_LEN] = inner[id_at + j::stride]
    for j in range(digits):
        seqs[j::digits] = inner[seq_at + j::stride]
    for j in range(b64_len):
        keys[j::b64_len] = inner[key_at + j::stride]
    if _columns(n, digits, b64_len, bytes(ids), bytes(seqs), bytes(keys)) != inner:
        return None  # not every record in the layout of the first
    # field values: UUIDs, plain decimal seqs, strict Base64 of key_bytes each
    if not ids.isascii() or ids.count(b"-") != 4 * n or any(ids[d::_ID_LEN] != b"-" * n for d in _DASHES):
        raise ValueError("every key_ID must be a UUID")
    try:
        packed = bytes.fromhex(ids.replace(b"-", b"").decode())
    except ValueError:
        raise ValueError("every key_ID must be a UUID") from None
    if len(packed) != 16 * n:
        raise ValueError("every key_ID must be a UUID")
    if not (seqs.isascii() and seqs.isdigit()) or (digits > 1 and b"0" in seqs[0::digits]):
        raise ValueError("seq must be a non-negative integer")
    seq_text = seqs.decode()
    first = int(seq_text[:digits])
    seq_list: list[int] = list(range(first, first + n))  # consecutive seqs: the usual case, checked
    if "".join(map(str, seq_list)) != seq_text:
        seq_list = [int(seq_text[o:o + digits]) for o in range(0, digits * n, digits)]
    material = _decode_b64_column(bytes(keys), n, b64_len, key_bytes)
    text = ids.decode()
    return [text[o:o + _ID_LEN] for o in range(0, _ID_LEN * n, _ID_LEN)], seq_list, material


def _decode_b64_column(text: bytes, n: int, b64_len: int, key_bytes: int) -> bytes:
    pad = (3 - key_bytes % 3) % 3
    if b64_len != (key_bytes + pad) // 3 * 4:
        raise ValueError(f"every key must be {key_bytes} bytes")
    if text.count(b"=") != pad * n or any(text[b64_len - p::b64_len] != b"=" * n for p in range(1, pad + 1)):
        raise ValueError("key is not Base64")
    try:
        raw = base64.b64decode(text.replace(b"=", b"A"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("key is not Base64") from None
    if not pad:
        return raw
    rec = key_bytes + pad
    out = bytearray(key_bytes * n)
    for j in range(key_bytes):
        out[j::key_bytes] = raw[j::rec]
    return bytes(out)


def ack_body(key_ids: Sequence[str]) -> bytes:
    """`{"key_IDs": [{"key_ID": ...}, ...]}` (the ack extension's request), compactly."""
    n = len(key_ids)
    if n and set(map(len, key_ids)) == {_ID_LEN}:
        stride = len(_A1) + _ID_LEN + len(_A2) + 1
        out = bytearray((_A1 + b"-" * _ID_LEN + _A2 + b",") * n)
        ids = "".join(key_ids).encode()
        if len(ids) == _ID_LEN * n:  # ASCII
            for j in range(_ID_LEN):
                out[len(_A1) + j::stride] = ids[j::_ID_LEN]
            del out[-1:]
            return _ACK_HEAD + bytes(out) + _ACK_TAIL
    return json.dumps({"key_IDs": [{"key_ID": k} for k in key_ids]}, separators=(",", ":")).encode()


def ack_count(body: bytes) -> int | None:
    """How many IDs an `ack_body` of this length holds (None: not that length)."""
    stride = len(_A1) + _ID_LEN + len(_A2) + 1
    k, rest = divmod(len(body) - len(_ACK_HEAD) - len(_ACK_TAIL) + 1, stride)
    return k if k > 0 and not rest else None
