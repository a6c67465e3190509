"""One group commit of deliveries: its open transaction's results, and its coalesced writes."""

from __future__ import annotations

import sqlite3

from .errors import KeyStoreError
from .types import Delivery


class OpenBatch:
    """A group of delivery requests whose transaction is open (see `KeyStore.begin_batch`)."""

    __slots__ = ("size", "results", "touched", "began", "error", "durable", "ticket")

    def __init__(self, size: int, durable: bool = True) -> None:
        self.size = size
        self.durable = durable  # False: COMMIT without fsync (see KeyStore.sync)
        self.ticket = 0  # the store's commit count once committed (KeyStore.sync(ticket))
        self.results: list[Delivery | KeyStoreError] = []
        self.touched: set[str] = set()
        self.began = False
        self.error: str | None = None

    def fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = f"key store transaction failed ({type(e).__name__}); nothing was delivered"


class BatchWriter:
    """Coalesces the writes of one group: one BLOB handle per block, one ledger insert."""

    def __init__(self, conn: sqlite3.Connection | None) -> None:
        self.conn = conn
        self.blobs: dict[int, sqlite3.Blob] = {}
        self.ledger: list[tuple[str, int, str, str, str, float]] = []

    def blob(self, bid: int) -> sqlite3.Blob:
        b = self.blobs.get(bid)
        if b is None:
            assert self.conn is not None
            b = self.blobs[bid] = self.conn.blobopen("block", "material", bid)
        return b

    def discard(self) -> None:
        """Close the BLOB handles after a failure (the transaction is then rolled back)."""
        for b in self.blobs.values():
            try:
                b.close()
            except sqlite3.Error:
                pass
        self.blobs.clear()

    def flush(self) -> None:
        for b in self.blobs.values():
            b.close()
        self.blobs.clear()
        if self.conn is None:
            return
        if len(self.ledger) == 1:
            self.conn.execute("INSERT INTO delivery VALUES (?, ?, ?, ?, ?, ?)", self.ledger[0])
        elif self.ledger:
            self.conn.executemany("INSERT INTO delivery VALUES (?, ?, ?, ?, ?, ?)", self.ledger)
