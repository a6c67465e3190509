"""Relay intents and durability barriers of the key store: takes without fsync, safe across a crash.

A relaying node records an intent durably when it prepares a hop (`Intents.add_intent`: relay,
link key association, number of keys of its master half), then takes the keys without fsync when
the hop is committed (`KeyStore.begin_batch(durable=False, spend_intents=...)`), lowering the
intent by what the take covered in the same transaction (a relay prepared for several commits spends
it a commit at a time; zero deletes it), and makes that transaction durable later (`sync`, one small durable commit
shared by every waiter up to it: in WAL mode an fsync of a later commit persists every frame before
it).

Recovery at open (`recover_intents`): after a crash the database is a prefix of the committed
transactions (WAL frames are replayed in order up to the last durable one), so an intent still
present means its take was lost or never ran. Every take of a node's master half is in seq order
from the master cursor, and any later durable commit would have kept the lost take, so the keys
such a take used are exactly the next ones after the cursor: recovery consumes that many (ledger
rows as the take would have written them) and deletes the intents, in one durable transaction. A
pad that may have left the node is never used again; a relay that was only prepared costs its keys.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import KeyStoreError, StorageError
from .types import MasterRequest

if TYPE_CHECKING:
    from .mirror import AssocMirror
    from .store import KeyStore

log = logging.getLogger(__name__)

__all__ = ["Intents", "recover_intents"]


class Intents:
    """The intent and barrier methods of `KeyStore` (which provides the attributes below)."""

    path: Path
    _lock: threading.Lock
    _writes: int
    _synced: int

    if TYPE_CHECKING:
        def _db(self) -> sqlite3.Connection: ...
        def _assoc(self, assoc_id: str) -> AssocMirror: ...
        def _rollback_and_reload(self) -> None: ...

    def _write(self, what: str, durable: bool, work: Callable[[sqlite3.Connection], object]) -> None:
        """One write transaction (the caller holds the store lock); without fsync unless durable."""
        conn = self._db()
        if not durable:
            conn.execute("PRAGMA synchronous=OFF")
        try:
            conn.execute("BEGIN IMMEDIATE")
            work(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback_and_reload()
            raise StorageError(f"{what} failed: {e}") from e
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous=FULL")
        self._writes += 1
        if durable:
            self._synced = self._writes

    def add_intent(self, relay_id: str, assoc_id: str, n: int, master_sae: str, slave_sae: str) -> None:
        """Record, durably, that a prepared relay will take n keys of this node's master half of
        `assoc_id` (see the module docstring)."""
        with self._lock:
            self._assoc(assoc_id)
            self._write("recording a relay intent", True, lambda c: c.execute(
                "INSERT INTO intent VALUES (?, ?, ?, ?, ?)", (relay_id, assoc_id, n, master_sae, slave_sae)))

    def drop_intents(self, relay_ids: Sequence[str]) -> None:
        """Forget intents whose relays will not take their keys (without fsync: an intent a crash
        brings back only costs its keys)."""
        with self._lock:
            self._write("dropping relay intents", False, lambda c: c.executemany(
                "DELETE FROM intent WHERE relay_id = ?", [(r,) for r in relay_ids]))

    def intents(self) -> dict[str, int]:
        """Keys announced by recorded intents, per association."""
        with self._lock:
            return dict(self._db().execute("SELECT assoc_id, sum(n) FROM intent GROUP BY assoc_id").fetchall())

    @property
    def synced(self) -> int:
        """Commits up to this count are durable (compare with `OpenBatch.ticket`)."""
        return self._synced

    def sync(self, ticket: int) -> None:
        """Durability barrier: when this returns, every commit up to `ticket` is durable (one small
        durable commit, or nothing if one happened since)."""
        with self._lock:
            if self._synced < ticket:
                self._write("key store sync", True, lambda c: c.execute("UPDATE barrier SET n = n + 1 WHERE id = 0"))


def recover_intents(store: KeyStore) -> int:
    """Consume the keys of the intents left in the store (see the module docstring); returns how many."""
    rows = store._db().execute("SELECT relay_id, assoc_id, n, master_sae, slave_sae FROM intent").fetchall()
    if not rows:
        return 0
    left = {aid: a.avail_own for aid, a in store._assocs.items()}
    requests: list[MasterRequest] = []
    for _, aid, n, master, slave in rows:
        a = store._assocs.get(aid)
        if a is None:
            continue
        k = min(n, left[aid])
        left[aid] -= k
        lim = a.info.max_keys_per_request
        requests += [MasterRequest(aid, master, slave, min(lim, k - i), a.info.key_size_bits) for i in range(0, k, lim)]
    batch = store.begin_batch(requests, spend_intents=[(r[0], r[2]) for r in rows])
    assert batch is not None
    results = store.finish_batch(batch)
    failed = [r for r in results if isinstance(r, KeyStoreError)]
    if failed:
        raise failed[0]
    consumed = sum(len(r) for r in results)  # type: ignore[arg-type]
    log.warning("key store %s: %d relay hop(s) were in flight at the last stop; %d link keys they may "
                "have used are consumed", store.path, len(rows), consumed)
    return consumed
