"""The ingest contract of a key stream: what `KeyStore.ingest` accepts, how it cuts blocks, and
waiting for a stream that a feeder is still storing."""

from __future__ import annotations

import asyncio
import time
from itertools import islice
from operator import lt
from typing import TYPE_CHECKING

from .errors import IngestError
from .types import UUIDS_RE

if TYPE_CHECKING:
    from .store import KeyStore

POLL_S = 0.002


def check_stream(key_bytes: int, last_seq: int, ids: list[str], seqs: list[int], mats: list[bytes]) -> None:
    """Raise IngestError unless every key is `key_bytes` long, every ID a UUID and seq increases
    strictly from above `last_seq`. Whole-list checks at C speed: no per-key Python loop."""
    if not ids:
        return
    if set(map(type, mats)) != {bytes} or set(map(len, mats)) != {key_bytes}:
        raise IngestError(f"every key must be {key_bytes} bytes")
    if set(map(type, ids)) != {str} or set(map(len, ids)) != {36} or not UUIDS_RE.fullmatch("".join(ids)):
        raise IngestError("every key_id must be a UUID (8-4-4-4-12 hex)")
    if set(map(type, seqs)) != {int}:
        raise IngestError("seq must be int")
    if seqs[0] <= last_seq or not all(map(lt, seqs, islice(seqs, 1, None))):
        raise IngestError(f"seq must increase strictly (after {last_seq})")


def seq_runs(seqs: list[int], block_keys: int) -> list[tuple[int, int]]:
    """Split positions into (start, length) runs of consecutive seq, at most block_keys long."""
    if not seqs:
        return []
    out: list[tuple[int, int]] = []
    if seqs[-1] - seqs[0] == len(seqs) - 1:
        bounds = [0, len(seqs)]
    else:
        bounds = [0] + [i for i in range(1, len(seqs)) if seqs[i] != seqs[i - 1] + 1] + [len(seqs)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        for s in range(lo, hi, block_keys):
            out.append((s, min(block_keys, hi - s)))
    return out


async def stream_moves(store: KeyStore, assoc_id: str, last: int, until: float) -> bool:
    """Whether the association's key stream goes beyond `last` (its feeder stores more keys) before
    the monotonic time `until` (read from the lock-free counters, every `POLL_S`)."""
    while store.stats(assoc_id).last_seq == last:
        if time.monotonic() >= until:
            return False
        await asyncio.sleep(POLL_S)
    return True
