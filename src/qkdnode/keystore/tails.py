"""Stream tails of a link key association: keys one end stored and the other never will.

Both KMSes of a QKD link store the link's key stream from their own module. When a module pair
restarts (a node crashed, or the whole network was stopped), the keys one KMS had pulled from its
module but the other had not are gone from the other module: that end stored them, the other end
never will. A master at that end would hand such a key out (its half) and the peer's dec_keys could
never find it; a relay would name link keys the next hop does not hold.

A stream that restarted continues at a higher seq, so such keys sit at the *end* of a run of stored
seqs that the stream left behind (a later run exists). The two KMSes compare those ends over the
forwarder's channel (`forwarder/tails.py`): each asks its neighbour, for every closed run of its own
(`segment_ends`), the highest seq in it the neighbour holds or has delivered (`high_water`), and
forgets the keys above that (`forget`), as if it had never stored them. The neighbour only answers
once its own stream has gone past the run (else it may still store those keys).
"""

from __future__ import annotations

import sqlite3
import threading
from bisect import bisect_right
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from .mirror import AssocMirror

__all__ = ["Tails"]


class Tails:
    """The stream-tail methods of `KeyStore` (which provides the attributes below)."""

    _lock: threading.Lock

    if TYPE_CHECKING:
        def _db(self) -> sqlite3.Connection: ...
        def _assoc(self, assoc_id: str) -> AssocMirror: ...
        def _load(self) -> None: ...
        def _write(self, what: str, durable: bool, work: Callable[[sqlite3.Connection], object]) -> None: ...

    def stream_breaks(self, assoc_id: str) -> int:
        """A number that changes whenever a run of stored seqs may have closed (lock-free: one read)."""
        return self._assoc(assoc_id).breaks

    def segment_ends(self, assoc_id: str) -> list[tuple[int, int]]:
        """The closed runs of stored seqs, (first, last): each followed by a later run, and not by
        keys this node delivered (a run of delivered keys, whose blocks are gone, continues it)."""
        with self._lock:
            a = self._assoc(assoc_id)
            runs: list[tuple[int, int]] = []
            for b in a.blocks:
                if runs and runs[-1][1] + 1 == b.first_seq:
                    runs[-1] = (runs[-1][0], b.first_seq + b.n - 1)
                else:
                    runs.append((b.first_seq, b.first_seq + b.n - 1))
            conn = self._db()
            return [(f, e) for f, e in runs[:-1] if conn.execute(
                "SELECT 1 FROM delivery WHERE assoc_id = ? AND seq = ?", (assoc_id, e + 1)).fetchone() is None]

    def high_water(self, assoc_id: str, first: int, last: int) -> int | None:
        """The highest seq in [first, last] this store holds or has delivered (first - 1: none), or
        None while its own stream has not gone past `last` (it may still store some of them)."""
        with self._lock:
            a = self._assoc(assoc_id)
            if a.last_seq <= last:
                return None
            top = first - 1
            i = bisect_right(a.starts, last) - 1  # the last block starting in or before the range
            if i >= 0 and a.blocks[i].first_seq + a.blocks[i].n - 1 >= first:
                top = min(a.blocks[i].first_seq + a.blocks[i].n - 1, last)
            row = self._db().execute("SELECT max(seq) FROM delivery WHERE assoc_id = ? AND seq BETWEEN ? AND ?",
                                     (assoc_id, first, last)).fetchone()
            return max(top, row[0]) if row and row[0] is not None else top

    def forget(self, assoc_id: str, above: int, up_to: int) -> int:
        """Remove the stored keys with seq in (above, up_to], durably, as if never stored (their bytes
        are overwritten: secure_delete); returns how many."""
        with self._lock:
            a = self._assoc(assoc_id)
            kb = a.info.key_size_bits // 8
            cut = [(b.bid, b.first_seq, b.n) for b in a.blocks if b.first_seq <= up_to and b.first_seq + b.n - 1 > above]
            gone = 0

            def work(conn: sqlite3.Connection) -> None:
                nonlocal gone
                for bid, first, n in cut:
                    lo, hi = max(above + 1, first) - first, min(up_to, first + n - 1) - first + 1  # slots [lo, hi)
                    gone += hi - lo
                    if lo == 0 and hi == n:
                        conn.execute("DELETE FROM block WHERE bid = ?", (bid,))
                    elif hi == n:  # a tail of the block
                        conn.execute("UPDATE block SET n = ?, key_ids = substr(key_ids, 1, ?), "
                                     "material = substr(material, 1, ?) WHERE bid = ?", (lo, 16 * lo, kb * lo, bid))
                    else:  # never: a run's end is a block's end
                        raise sqlite3.IntegrityError(f"seqs {above + 1}..{up_to} end inside block {bid}")
            self._write("forgetting keys the peer never stored", True, work)
            self._load()
            return gone
