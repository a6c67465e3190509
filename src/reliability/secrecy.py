"""Find key bytes in captured management-plane traffic and logs.

A *leak* is any 16-byte window of a key an SAE received (at any offset) found in a blob as raw bytes,
as hex (either case), or as base64 (standard or URL-safe alphabet, at any of the three alignments a
key can have inside a longer base64 text: windows of 15 bytes, i.e. 20 characters, starting at every
offset of the key). The scan is exact and linear in the blob size:

* raw: a window made only of text bytes (tab, LF, CR, 0x20-0x7e) is searched for directly; every other
  window holds a non-text byte, so it can only start within 15 bytes before a non-text byte of the
  blob, and only those positions are looked up;
* hex and base64: only runs of characters of those alphabets are looked up, window by window.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

WINDOW = 16
B64_WINDOW = 15  # bytes -> 20 base64 characters, no padding
_TEXT = frozenset(b"\t\n\r" + bytes(range(0x20, 0x7f)))
_NON_TEXT = re.compile(rb"[^\t\n\r\x20-\x7e]+")
_HEX_RUN = re.compile(rb"[0-9a-fA-F]{%d,}" % (2 * WINDOW))
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{20,}")


@dataclass(frozen=True)
class Leak:
    where: str
    offset: int
    form: str  # raw, hex, base64

    def __str__(self) -> str:
        return f"{self.where}@{self.offset}: {self.form}"


class KeyIndex:
    """Every 16-byte window of the keys, in each encoding."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self.raw_text: set[bytes] = set()
        self.raw_binary: set[bytes] = set()
        self.hex: set[bytes] = set()
        self.b64: set[bytes] = set()
        self.count = 0
        for key in keys:
            self.add(key)

    def add(self, key: bytes) -> None:
        if len(key) < WINDOW:
            raise ValueError("keys shorter than 16 bytes cannot be scanned for")
        self.count += 1
        for off in range(len(key) - WINDOW + 1):
            w = key[off:off + WINDOW]
            (self.raw_text if all(b in _TEXT for b in w) else self.raw_binary).add(w)
            self.hex.add(w.hex().encode())
        for off in range(len(key) - B64_WINDOW + 1):
            w = key[off:off + B64_WINDOW]
            self.b64.add(base64.b64encode(w))
            self.b64.add(base64.urlsafe_b64encode(w))

    def scan(self, where: str, blob: bytes) -> list[Leak]:
        leaks = []
        for w in self.raw_text:
            i = blob.find(w)
            if i >= 0:
                leaks.append(Leak(where, i, "raw"))
        if self.raw_binary:
            seen = -1
            for m in _NON_TEXT.finditer(blob):
                for i in range(max(m.start() - WINDOW + 1, seen + 1), m.end()):
                    if blob[i:i + WINDOW] in self.raw_binary:
                        leaks.append(Leak(where, i, "raw"))
                seen = m.end() - 1
        for m in _HEX_RUN.finditer(blob):
            run = m.group().lower()
            for i in range(len(run) - 2 * WINDOW + 1):
                if run[i:i + 2 * WINDOW] in self.hex:
                    leaks.append(Leak(where, m.start() + i, "hex"))
        for m in _B64_RUN.finditer(blob):
            run = m.group()
            for i in range(len(run) - 20 + 1):
                if run[i:i + 20] in self.b64:
                    leaks.append(Leak(where, m.start() + i, "base64"))
        return leaks


def scan(blobs: Mapping[str, bytes], keys: Iterable[bytes]) -> list[Leak]:
    index = KeyIndex(keys)
    return [leak for where, blob in blobs.items() for leak in index.scan(where, blob)]


def files_under(root: Path, *, skip: Iterable[str] = ()) -> dict[str, bytes]:
    """Every regular file under `root` whose name matches none of the `skip` globs."""
    patterns = list(skip)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(p.match(g) for g in patterns):
            out[str(p.relative_to(root))] = p.read_bytes()
    return out
