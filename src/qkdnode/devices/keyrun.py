"""`KeyRun`: the keys of one block (a tick's worth) held as three packed byte strings.

A simulated module at ~2 Mbit/s cuts ~8,000 keys a second; with one Python object per key (ID text,
seq, bytes, dataclass) a module's 100,000-key buffer took ~35 MB and most of a node's CPU went into
creating and destroying those objects. A run holds the 16-byte key IDs, the big-endian i64 seqs and
the key material each as one `bytes`, so cutting, sending, receiving, buffering and dropping keys are
a constant number of C-level operations per block, not per key. Per-key objects (`WireKey`,
`BufferedKey`) are made only on request (tests, the slow paths); the 014 JSON of served keys is
written from the columns (`qkdnode.keystore.keyjson`).

The photon-channel wire format is unchanged: `to_records()`/`from_records()` interleave and split the
`key_id:16s seq:i64 key[key_bytes]` records with strided slice assignment (one C operation per byte
column, independent of the number of keys).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = ["KeyRun", "new_key_ids", "uuid_texts"]

_ID = 16
_SEQ = 8


_VERSION4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def new_key_ids(n: int) -> bytes:
    """n random version-4 UUIDs, packed (16 bytes each); IDs are not secret: always os.urandom."""
    raw = bytearray(os.urandom(_ID * n))
    if n:
        raw[6::_ID] = raw[6::_ID].translate(_VERSION4)
        raw[8::_ID] = raw[8::_ID].translate(_VARIANT)
    return bytes(raw)


_DASHES = (8, 13, 18, 23)
#: position of hex digit j (0..31) in the 36-character UUID text
_TEXT_POS = [j + sum(1 for d in (8, 12, 16, 20) if j >= d) for j in range(32)]


def uuid_texts(ids: bytes) -> list[str]:
    """Canonical (lower-case) UUID text of each packed 16-byte ID, built column-wise."""
    n = len(ids) // _ID
    if n == 0:
        return []
    hexed = ids.hex().encode()
    out = bytearray(36 * n)
    for j, pos in enumerate(_TEXT_POS):
        out[pos::36] = hexed[j::32]
    for d in _DASHES:
        out[d::36] = b"-" * n
    text = out.decode()
    return [text[o:o + 36] for o in range(0, 36 * n, 36)]


class KeyRun(Sequence[Any]):
    """Keys in seq order: `ids` (16 n bytes), `seqs` (8 n bytes, big-endian i64), `material`
    (key_bytes n). Immutable; indexing yields `(key_id: bytes, seq: int, key: bytes)` tuples."""

    __slots__ = ("ids", "seqs", "material", "key_bytes", "_seq_list")

    def __init__(self, ids: bytes, seqs: bytes, material: bytes, key_bytes: int) -> None:
        n = len(ids) // _ID
        if key_bytes < 0 or (n and not key_bytes) or len(ids) != _ID * n or len(seqs) != _SEQ * n or len(material) != key_bytes * n:
            raise ValueError("key run fields do not hold the same number of keys")
        self.ids, self.seqs, self.material, self.key_bytes = ids, seqs, material, key_bytes
        self._seq_list: tuple[int, ...] | None = None

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def consecutive(cls, ids: bytes, seq0: int, material: bytes, key_bytes: int) -> KeyRun:
        n = len(ids) // _ID
        return cls(ids, struct.pack(f">{n}q", *range(seq0, seq0 + n)), material, key_bytes)

    @classmethod
    def of(cls, keys: Iterable[Any], key_bytes: int) -> KeyRun:
        """From objects with `key_id` (16 bytes or UUID text), `seq` and `key` (WireKey, BufferedKey)."""
        items = list(keys)
        ids = b"".join(k.key_id if isinstance(k.key_id, bytes) else bytes.fromhex(k.key_id.replace("-", ""))
                       for k in items)
        return cls(ids, struct.pack(f">{len(items)}q", *(k.seq for k in items)),
                   b"".join(k.key for k in items), key_bytes)

    @classmethod
    def empty(cls, key_bytes: int) -> KeyRun:
        return cls(b"", b"", b"", key_bytes)

    @classmethod
    def from_records(cls, data: bytes, n: int, key_bytes: int) -> KeyRun:
        """Split `n` interleaved `key_id seq key` records (the channel's TICK body)."""
        rec = _ID + _SEQ + key_bytes
        if len(data) != n * rec or (n and not key_bytes):
            raise ValueError("record block length does not match its key count")
        ids, seqs, mat = bytearray(_ID * n), bytearray(_SEQ * n), bytearray(key_bytes * n)
        if n:
            for j in range(_ID):
                ids[j::_ID] = data[j::rec]
            for j in range(_SEQ):
                seqs[j::_SEQ] = data[_ID + j::rec]
            for j in range(key_bytes):
                mat[j::key_bytes] = data[_ID + _SEQ + j::rec]
        return cls(bytes(ids), bytes(seqs), bytes(mat), key_bytes)

    def to_records(self) -> bytes:
        kb = self.key_bytes
        rec = _ID + _SEQ + kb
        n = len(self)
        out = bytearray(rec * n)
        if n:
            for j in range(_ID):
                out[j::rec] = self.ids[j::_ID]
            for j in range(_SEQ):
                out[_ID + j::rec] = self.seqs[j::_SEQ]
            for j in range(kb):
                out[_ID + _SEQ + j::rec] = self.material[j::kb]
        return bytes(out)

    # -- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids) // _ID

    def seq_list(self) -> tuple[int, ...]:
        if self._seq_list is None:
            self._seq_list = struct.unpack(f">{len(self)}q", self.seqs)
        return self._seq_list

    @property
    def first_seq(self) -> int:
        return struct.unpack_from(">q", self.seqs, 0)[0]

    @property
    def last_seq(self) -> int:
        return struct.unpack_from(">q", self.seqs, len(self.seqs) - _SEQ)[0]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise ValueError("key runs slice with step 1 only")
            b = max(a, b)
            kb = self.key_bytes
            return KeyRun(self.ids[_ID * a:_ID * b], self.seqs[_SEQ * a:_SEQ * b],
                          self.material[kb * a:kb * b], kb)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("key run index out of range")
        kb = self.key_bytes
        return (self.ids[_ID * i:_ID * (i + 1)], self.seq_list()[i], self.material[kb * i:kb * (i + 1)])

    def __iter__(self) -> Iterator[Any]:
        kb, ids, mat = self.key_bytes, self.ids, self.material
        for i, seq in enumerate(self.seq_list()):
            yield ids[_ID * i:_ID * (i + 1)], seq, mat[kb * i:kb * (i + 1)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyRun):
            return NotImplemented
        return (self.ids, self.seqs, self.material, self.key_bytes) == (
            other.ids, other.seqs, other.material, other.key_bytes)

    def __hash__(self) -> int:
        return hash((self.ids, self.seqs, self.key_bytes))

    def __repr__(self) -> str:  # never the key material
        n = len(self)
        return f"KeyRun({n} keys{f', seq {self.first_seq}..{self.last_seq}' if n else ''})"
