"""In-memory mirror of the store's blocks: key IDs, delivered flags, counters; never key material.

`KeyStore` rebuilds it from the database at open and after a failed commit, so it always equals the
committed state plus the changes of the transaction in progress. Package-internal.
"""

from __future__ import annotations

from bisect import bisect_right

from .types import Association


class Block:
    """One stored run of consecutive seq: packed 16-byte IDs and one delivered flag per key."""

    __slots__ = ("bid", "first_seq", "n", "ids", "taken", "n_taken")

    def __init__(self, bid: int, first_seq: int, n: int, ids: bytes) -> None:
        self.bid = bid
        self.first_seq = first_seq
        self.n = n
        self.ids = ids
        self.taken = bytearray(n)
        self.n_taken = 0

    def key_id(self, slot: int) -> bytes:
        return self.ids[slot * 16:slot * 16 + 16]


class AssocMirror:
    """Blocks (in seq order) and counters of one association."""

    __slots__ = ("info", "cursor", "last_seq", "dropped", "blocks", "starts",
                 "avail_own", "avail_other", "delivered", "hint", "breaks")

    def __init__(self, info: Association, cursor: int, last_seq: int, dropped: int) -> None:
        self.info = info
        self.cursor = cursor          # own-parity keys with seq < cursor are all delivered
        self.last_seq = last_seq
        self.dropped = dropped
        self.blocks: list[Block] = []
        self.starts: list[int] = []   # first_seq of each block, for bisect
        self.avail_own = 0
        self.avail_other = 0
        self.delivered = 0
        self.hint = 0                 # block index of the last ID lookup
        self.breaks = 0               # blocks appended not right after the previous one (stream gaps)

    def own_count(self, first_seq: int, n: int) -> int:
        """How many of the seqs first_seq .. first_seq+n-1 have this node's master parity."""
        return (n + ((first_seq & 1) == self.info.master_parity)) // 2

    def is_own(self, seq: int) -> bool:
        return (seq & 1) == self.info.master_parity

    def append(self, block: Block) -> None:
        """Add a block (seq above all others) and count its untaken keys."""
        if self.blocks and self.blocks[-1].first_seq + self.blocks[-1].n != block.first_seq:
            self.breaks += 1
        self.blocks.append(block)
        self.starts.append(block.first_seq)
        own = self.own_count(block.first_seq, block.n)
        own_taken = sum(block.taken[0 if self.is_own(block.first_seq) else 1::2])
        self.avail_own += own - own_taken
        self.avail_other += block.n - own - (block.n_taken - own_taken)

    def remove(self, gone: list[Block]) -> None:
        """Forget fully delivered blocks."""
        ids = {id(b) for b in gone}
        self.blocks = [b for b in self.blocks if id(b) not in ids]
        self.starts = [b.first_seq for b in self.blocks]
        self.hint = 0

    def block_of(self, seq: int) -> tuple[Block, int] | None:
        i = bisect_right(self.starts, seq) - 1
        if i >= 0:
            b = self.blocks[i]
            if seq < b.first_seq + b.n:
                return b, seq - b.first_seq
        return None

    def locate(self, key: bytes) -> tuple[Block, int] | None:
        """Find a key by its 16-byte ID, searching the blocks from where the last hit was.

        The peer's masters consume its parity in seq order, so dec_keys lookups nearly always hit
        the block of the previous lookup; an unknown ID costs one pass over the IDs in memory
        (16 bytes per stored key, a few ms for a million keys).
        """
        blocks = self.blocks
        nb = len(blocks)
        for k in range(nb):
            i = (self.hint + k) % nb
            ids = blocks[i].ids
            pos = ids.find(key)
            while pos != -1 and pos % 16:
                pos = ids.find(key, pos + 1)
            if pos != -1:
                self.hint = i
                return blocks[i], pos // 16
        return None


class Plan:
    """A validated delivery: per block the slots to hand out; `order` is the reply order if not seq."""

    __slots__ = ("blocks", "order")

    def __init__(self, blocks: list[tuple[Block, list[int]]],
                 order: list[tuple[Block, int]] | None = None) -> None:
        self.blocks = blocks
        self.order = order
