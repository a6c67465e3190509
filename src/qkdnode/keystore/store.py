"""The node's key store: QKD key material per key association, in one SQLite file (WAL, FULL sync).

Data model
----------
* A key **association** (`Association`) is one key stream shared with one remote node (`kind` 'link'
  for a direct QKD link, 'relay' for keys relayed hop by hop). Both nodes ingest the same stream, keys
  carry the same UUID key IDs and the same `seq` (order of arrival) at both ends.
* Keys are stored in **blocks**: runs of consecutive `seq` (at most `block_keys` keys) holding the packed
  16-byte key IDs and the concatenated key material. Ingest writes a few large rows instead of one row
  per key (about 10x faster); every key stays addressable by its ID (`mirror.AssocMirror.locate`).
* The **delivery ledger** (table `delivery`) has one row per handed-out key: key ID, seq, the SAE pair it
  went to, when. A key is 'available' until it has a ledger row, then 'delivered' for good.

Rules
-----
* Parity split, so that the two ends never hand the same key to different masters without talking:
  local masters (enc_keys at this node) only get keys with ``seq % 2 == master_parity``, in seq order;
  the two ends of an association are configured with opposite parities. dec_keys at this node may only
  fetch keys of the other parity, by key ID (the peer's master picked them). Masters take their keys
  in seq order, so the cursor of the next one is the last own-parity seq in the ledger plus 2; it is
  derived at open and kept in memory, and a delivery writes nothing but the ledger and the zeros.
* Fixed key size per association (default 256 bits): enc_keys must ask for exactly that size. Cutting
  or concatenating stored keys would need the peer to learn which keys were combined, which 014 cannot
  express, so other sizes are refused ("size must be N").
* Handing out a key overwrites its bytes with zeros (incremental BLOB write) and inserts its ledger row
  in the same transaction; the reply is only returned after that transaction has committed.
* One transaction per request, or one per group of requests (`deliver_batch`, group commit): a request
  that fails validation touches nothing; an SQLite failure rolls the whole group back.
* Capacity: at most `max_key_count` available keys per association; ingest stores what fits and drops
  (and counts) the rest.

Threading: all methods are synchronous and short; one lock serialises them, so they may be called from
any thread. `stats`, `association(s)` read immutable snapshots without the lock, so an event loop may
call them. Deliveries can be split in two phases (`begin_batch` does the work without fsync, then
`finish_batch` commits, possibly in another thread); `qkdnode.keystore.committer.GroupCommitter` uses
that so that an event loop never waits for an fsync and concurrent requests share one commit. Ingest
does an fsync: call it from a worker thread (`asyncio.to_thread`). WAL checkpoints run in a thread of
the store, never inside a commit. A file lock keeps other KeyStore instances and processes out.
The class keeps an in-memory mirror of the block index and counters (no key material), rebuilt from
the database at open and after any failed commit; published `Stats` only ever reflect committed state.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

from .batch import BatchWriter, OpenBatch
from .errors import (
    AssociationConflict,
    BadRequest,
    IngestError,
    InsufficientKeys,
    KeySizeNotSupported,
    KeysNotAvailable,
    KeyStoreError,
    RequestLimitExceeded,
    StorageError,
    UnknownAssociation,
)
from .intent import Intents, recover_intents
from .mirror import AssocMirror, Block, Plan
from .schema import SCHEMA
from .stream import check_stream, seq_runs
from .tails import Tails
from .types import (
    Association,
    AssociationKind,
    Delivery,
    DeliveryRequest,
    KeyRecord,
    KeyState,
    MasterRequest,
    SlaveRequest,
    Stats,
    key_id_str,
    parse_key_id,
)

log = logging.getLogger(__name__)



class KeyStore(Intents, Tails):
    """SQLite-backed key store of one node; see the module docstring for the rules."""

    FILE_NAME = "keystore.sqlite3"

    def __init__(self, state_dir: Path | str, *, block_keys: int = 1024,
                 checkpoint_interval: float = 0.5) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / self.FILE_NAME
        self.block_keys = block_keys
        self._lock = threading.Lock()
        self._writes = 0  # committed write transactions, for the checkpointer and KeyStore.sync
        self._synced = 0  # every transaction up to this count is durable
        self._lockfile = os.open(self.state_dir / (self.FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lockfile)
            raise StorageError(f"key store {self.path} is already open (another KeyStore or process)") from None
        self._conn: sqlite3.Connection | None = None
        self._assocs: dict[str, AssocMirror] = {}
        self._stats: dict[str, Stats] = {}
        try:
            self._conn = conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise StorageError("SQLite refused WAL mode")
            # Checkpoints run in a thread of their own (`_checkpoint_loop`), never in a commit.
            # cache_size: 2 MB of page cache. Ingest appends blocks and deliveries read recent ones,
            # so a larger cache only kept pages already written (32 MB: ~14 MB more per node once
            # its stores filled, and the same ingest rate; see bench/keys_bench.py).
            for pragma in ("synchronous=FULL", "secure_delete=ON", "cache_size=-2048",
                           "journal_size_limit=67108864", "foreign_keys=ON", "wal_autocheckpoint=0"):
                conn.execute(f"PRAGMA {pragma}")
            conn.executescript(SCHEMA)
            self._load()
            recover_intents(self)
        except BaseException:
            if self._conn is not None:
                self._conn.close()
            os.close(self._lockfile)
            raise
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, args=(checkpoint_interval,),
                                              name="keystore-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self, interval: float) -> None:
        """Checkpoint the WAL every `interval` s (if anything was written) from a connection of
        our own, under the store lock.

        Holding the lock means no write transaction is open, so the checkpoint completes and the
        next transaction restarts the WAL from its beginning: the WAL stays small and commits
        overwrite preallocated frames (fdatasync of an overwrite is 2-3x cheaper than of an append).
        The commit path never runs a checkpoint itself (wal_autocheckpoint=0).
        """
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            done = 0
            while not self._stop.wait(interval):
                with self._lock:
                    if self._conn is None:
                        return
                    if self._writes == done:
                        continue
                    done = self._writes
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error:
                        log.warning("WAL checkpoint of %s failed", self.path, exc_info=True)
        finally:
            conn.close()

    # -- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join()
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()
                self._conn = None
                os.close(self._lockfile)

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("key store is closed")
        return self._conn

    def _load(self) -> None:
        """(Re)build the in-memory mirror from the committed database."""
        conn = self._db()
        self._assocs = {}
        for row in conn.execute(
            "SELECT assoc_id, local_node_id, remote_node_id, kind, master_parity, key_size_bits,"
            " max_key_count, max_keys_per_request, last_seq, dropped FROM association"
        ):
            info = Association(*row[:8])
            last = conn.execute(  # the PRIMARY KEY (assoc_id, seq) index, read backwards
                "SELECT seq FROM delivery WHERE assoc_id = ? AND (seq & 1) = ? ORDER BY seq DESC LIMIT 1",
                (info.assoc_id, info.master_parity),
            ).fetchone()
            cursor = last[0] + 2 if last else 0
            self._assocs[info.assoc_id] = AssocMirror(info, cursor, row[8], row[9])
        blocks: dict[str, list[Block]] = {aid: [] for aid in self._assocs}
        for aid, bid, first, n, ids in conn.execute(
            "SELECT assoc_id, bid, first_seq, n, key_ids FROM block ORDER BY assoc_id, first_seq"
        ):
            blocks[aid].append(Block(bid, first, n, ids))
        for aid, count in conn.execute("SELECT assoc_id, count(*) FROM delivery GROUP BY assoc_id"):
            self._assocs[aid].delivered = count
        for aid, a in self._assocs.items():
            bl = blocks[aid]
            a.starts = [b.first_seq for b in bl]
            a.blocks = bl
            if bl:
                for (seq,) in conn.execute(
                    "SELECT seq FROM delivery WHERE assoc_id = ? AND seq >= ?", (aid, bl[0].first_seq)
                ):
                    found = a.block_of(seq)
                    if found is not None:
                        found[0].taken[found[1]] = 1
            a.blocks, a.starts = [], []
            for b in bl:
                b.n_taken = sum(b.taken)
                a.append(b)
        self._stats = {aid: self._make_stats(a) for aid, a in self._assocs.items()}

    # -- associations ------------------------------------------------------------------------

    def add_association(
        self,
        assoc_id: str,
        local_node_id: str,
        remote_node_id: str,
        *,
        master_parity: int,
        kind: AssociationKind = "link",
        key_size_bits: int = 256,
        max_key_count: int = 100_000,
        max_keys_per_request: int = 128,
    ) -> Association:
        """Create an association (idempotent when it exists with the same parameters)."""
        info = Association(assoc_id, local_node_id, remote_node_id, kind, master_parity,
                           key_size_bits, max_key_count, max_keys_per_request)
        if kind not in ("link", "relay") or master_parity not in (0, 1):
            raise BadRequest("kind must be 'link' or 'relay' and master_parity 0 or 1")
        if key_size_bits <= 0 or key_size_bits % 8 or max_key_count < 0 or max_keys_per_request < 1:
            raise BadRequest("key_size_bits must be a positive multiple of 8, limits positive")
        with self._lock:
            existing = self._assocs.get(assoc_id)
            if existing is not None:
                if existing.info != info:
                    raise AssociationConflict(f"association {assoc_id!r} exists with other parameters")
                return existing.info
            self._db().execute(
                "INSERT INTO association(assoc_id, local_node_id, remote_node_id, kind, master_parity,"
                " key_size_bits, max_key_count, max_keys_per_request, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (assoc_id, local_node_id, remote_node_id, kind, master_parity, key_size_bits,
                 max_key_count, max_keys_per_request, time.time()),
            )
            self._writes += 1
            a = AssocMirror(info, 0, -1, 0)
            self._assocs[assoc_id] = a
            self._stats[assoc_id] = self._make_stats(a)
            return info

    def set_limits(self, assoc_id: str, *, max_key_count: int | None = None,
                   max_keys_per_request: int | None = None) -> Association:
        """Change the capacity or the per-request limit of an association."""
        with self._lock:
            a = self._assoc(assoc_id)
            mkc = a.info.max_key_count if max_key_count is None else max_key_count
            mkr = a.info.max_keys_per_request if max_keys_per_request is None else max_keys_per_request
            if mkc < 0 or mkr < 1:
                raise BadRequest("limits must be positive")
            self._db().execute(
                "UPDATE association SET max_key_count = ?, max_keys_per_request = ? WHERE assoc_id = ?",
                (mkc, mkr, assoc_id),
            )
            self._writes += 1
            i = a.info
            a.info = Association(i.assoc_id, i.local_node_id, i.remote_node_id, i.kind,
                                 i.master_parity, i.key_size_bits, mkc, mkr)
            self._stats[assoc_id] = self._make_stats(a)
            return a.info

    def associations(self) -> list[Association]:
        return [a.info for a in list(self._assocs.values())]

    def association(self, assoc_id: str) -> Association:
        return self._assoc(assoc_id).info

    def _assoc(self, assoc_id: str) -> AssocMirror:
        a = self._assocs.get(assoc_id)
        if a is None:
            raise UnknownAssociation(assoc_id)
        return a

    # -- counters ----------------------------------------------------------------------------

    def stats(self, assoc_id: str) -> Stats:
        """Committed counters; lock-free (reads an immutable snapshot), safe from an event loop."""
        s = self._stats.get(assoc_id)
        if s is None:
            raise UnknownAssociation(assoc_id)
        return s

    def own_seq(self, assoc_id: str, k: int) -> int | None:
        """The seq of the k-th oldest key of this node's master parity not delivered yet (k >= 1),
        None if there are fewer: the key stream a peer must hold for the next k master takes. Seqs
        are not contiguous (a stream restarts at a higher seq; keys offered while the store was full
        are not stored), so this is counted on the stored keys, not computed from `last_seq`."""
        with self._lock:
            a = self._assoc(assoc_id)
            if k >= 1:
                for b, free in _own_untaken(a):
                    for x in free:
                        k -= 1
                        if not k:
                            return b.first_seq + x
            return None

    def _make_stats(self, a: AssocMirror) -> Stats:
        total = a.avail_own + a.avail_other
        return Stats(a.info.assoc_id, a.avail_own, a.avail_other, total, a.delivered,
                     total * a.info.key_size_bits, a.info.max_key_count, a.info.key_size_bits,
                     a.info.max_keys_per_request, a.dropped, a.last_seq)

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, assoc_id: str, keys: Iterable[tuple[str, int, bytes]]) -> int:
        """Store keys (key_id, seq, bytes) of the association's stream; returns how many were stored.

        seq must increase strictly, also across calls; sizes must match the association's key size.
        A violation refuses the whole call. Keys beyond the capacity are dropped and counted. The
        stored keys are durable when this returns.
        """
        ids: list[str] = []
        seqs: list[int] = []
        mats: list[bytes] = []
        try:
            for kid, seq, mat in keys:
                ids.append(kid)
                seqs.append(seq)
                mats.append(mat)
        except (TypeError, ValueError) as e:
            raise IngestError("keys must be (key_id, seq, bytes) tuples") from e
        with self._lock:
            a = self._assoc(assoc_id)
            check_stream(a.info.key_size_bits // 8, a.last_seq, ids, seqs, mats)
            if not ids:
                return 0
            room = max(a.info.max_key_count - a.avail_own - a.avail_other, 0)
            n_store = min(room, len(ids))
            dropped = len(ids) - n_store
            packed = bytes.fromhex("".join(ids[:n_store]).replace("-", ""))
            material = b"".join(mats[:n_store])
            runs = seq_runs(seqs[:n_store], self.block_keys)
            kb = a.info.key_size_bits // 8
            conn = self._db()
            now = time.time()
            purge = [b for b in a.blocks if b.n_taken == b.n]
            new_blocks: list[Block] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                if purge:
                    conn.executemany("DELETE FROM block WHERE bid = ?", [(b.bid,) for b in purge])
                for start, n in runs:
                    cur = conn.execute(
                        "INSERT INTO block(assoc_id, first_seq, n, created, key_ids, material)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (assoc_id, seqs[start], n, now, packed[start * 16:(start + n) * 16],
                         material[start * kb:(start + n) * kb]),
                    )
                    assert cur.lastrowid is not None
                    new_blocks.append(Block(cur.lastrowid, seqs[start], n, packed[start * 16:(start + n) * 16]))
                conn.execute(
                    "UPDATE association SET last_seq = ?, dropped = dropped + ? WHERE assoc_id = ?",
                    (seqs[-1], dropped, assoc_id),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback_and_reload()
                raise StorageError(f"ingest failed: {e}") from e
            self._writes += 1
            self._synced = self._writes
            if purge:
                a.remove(purge)
            for b in new_blocks:
                a.append(b)
            a.last_seq = seqs[-1]
            a.dropped += dropped
            self._stats[assoc_id] = self._make_stats(a)
            return n_store

    # -- delivery ----------------------------------------------------------------------------

    def take_for_master(self, assoc_id: str, master_sae: str, slave_sae: str,
                        number: int, size_bits: int) -> Delivery:
        """enc_keys: hand out `number` keys of this node's parity, oldest first."""
        return self._one(MasterRequest(assoc_id, master_sae, slave_sae, number, size_bits))

    def take_by_ids(self, assoc_id: str, key_ids: Sequence[str], master_sae: str,
                    slave_sae: str) -> Delivery:
        """dec_keys: hand out the keys with these IDs; all or nothing."""
        return self._one(SlaveRequest(assoc_id, tuple(key_ids), master_sae, slave_sae))

    def _one(self, req: DeliveryRequest) -> Delivery:
        out = self.deliver_batch([req])[0]
        if isinstance(out, KeyStoreError):
            raise out
        return out

    def deliver_batch(self, requests: Sequence[DeliveryRequest]) -> list[Delivery | KeyStoreError]:
        """Serve requests in order in ONE transaction (group commit), results in request order.

        A request that fails validation gets its error and touches nothing; the others are
        delivered, and all of them are committed (durable) before this returns. If the commit
        itself fails, every request of the group gets a StorageError and nothing is consumed.
        """
        batch = self.begin_batch(requests)
        assert batch is not None
        return self.finish_batch(batch)

    def begin_batch(self, requests: Sequence[DeliveryRequest], *, blocking: bool = True,
                    durable: bool = True, spend_intents: Sequence[tuple[str, int]] = ()) -> OpenBatch | None:
        """Phase 1 of `deliver_batch`: do all the work in an open transaction, without the fsync.

        Takes the store lock and keeps it until `finish_batch`, which may run in another thread
        (the event loop does phase 1, a commit thread does phase 2). With blocking=False, returns
        None at once if the store is busy. Nothing is released to callers before phase 2.
        durable=False commits without fsync: only for takes covered by an intent (`add_intent`)
        or followed by `sync` before anything depends on them. `spend_intents` (relay ID, n) lower
        an intent by the n keys this transaction takes for it, in the same transaction, deleting it
        at zero (all of it: the takes it announced are these).
        """
        if not self._lock.acquire(blocking):
            return None
        batch = OpenBatch(len(requests), durable)
        writer = BatchWriter(self._conn)
        try:
            conn = self._db()
            if not durable:
                conn.execute("PRAGMA synchronous=OFF")
            for req in requests:
                try:
                    a = self._assoc(req.assoc_id)
                    plan = self._plan_master(a, req) if isinstance(req, MasterRequest) else self._plan_slave(a, req)
                except KeyStoreError as e:
                    batch.results.append(e)
                    continue
                if not batch.began:
                    conn.execute("BEGIN IMMEDIATE")
                    batch.began = True
                batch.results.append(self._apply(writer, a, plan, req))
                batch.touched.add(req.assoc_id)
            writer.flush()
            if spend_intents:
                if not batch.began:
                    conn.execute("BEGIN IMMEDIATE")
                    batch.began = True
                conn.executemany("DELETE FROM intent WHERE relay_id = ? AND n <= ?", spend_intents)
                conn.executemany("UPDATE intent SET n = n - ? WHERE relay_id = ?", [(n, r) for r, n in spend_intents])
        except Exception as e:  # SQLite failure or a broken invariant: undo the whole group
            batch.fail(e)
            writer.discard()
        return batch

    def finish_batch(self, batch: OpenBatch) -> list[Delivery | KeyStoreError]:
        """Phase 2 of `deliver_batch`: COMMIT (durable), publish the counters, release the lock."""
        try:
            if batch.error is None and batch.began:
                try:
                    self._db().execute("COMMIT")
                    self._writes += 1
                    if batch.durable:
                        self._synced = self._writes
                except Exception as e:
                    batch.fail(e)
            if batch.error is not None:
                self._rollback_and_reload()
                return [StorageError(batch.error) for _ in range(batch.size)]
            batch.ticket = self._writes
            for aid in batch.touched:
                self._stats[aid] = self._make_stats(self._assocs[aid])
            return batch.results
        finally:
            if not batch.durable and self._conn is not None:
                try:
                    self._conn.execute("PRAGMA synchronous=FULL")
                except sqlite3.Error:
                    log.error("key store %s: cannot restore synchronous=FULL", self.path)
            self._lock.release()

    def _plan_master(self, a: AssocMirror, req: MasterRequest) -> Plan:
        info = a.info
        if req.size_bits != info.key_size_bits:
            raise KeySizeNotSupported(req.size_bits, info.key_size_bits)
        need = req.number
        if not 1 <= need <= info.max_keys_per_request:
            raise RequestLimitExceeded(need, info.max_keys_per_request)
        if a.avail_own < need:
            raise InsufficientKeys(need, a.avail_own)
        plan: list[tuple[Block, list[int]]] = []
        for b, free in _own_untaken(a):
            slots = list(islice(free, need))
            if slots:
                plan.append((b, slots))
                need -= len(slots)
                if not need:
                    return Plan(plan)
        raise IndexError("fewer own keys than counted")  # a broken invariant: the group is rolled back

    def _plan_slave(self, a: AssocMirror, req: SlaveRequest) -> Plan:
        ids = req.key_ids
        if not 1 <= len(ids) <= a.info.max_keys_per_request:
            raise RequestLimitExceeded(len(ids), a.info.max_keys_per_request)
        bad = [k for k in ids if parse_key_id(k) is None]
        if bad:
            raise BadRequest("key_ID must be a UUID", [{"key_ID": k} for k in bad])
        packed = [bytes.fromhex(k.replace("-", "")) for k in ids]
        if len(set(packed)) != len(packed):
            raise BadRequest("duplicate key_ID in request")
        problems: list[tuple[str, str]] = []
        per_block: dict[int, tuple[Block, list[int]]] = {}
        order: list[tuple[Block, int]] = []
        for text, key in zip(ids, packed, strict=True):
            found = a.locate(key)
            if found is None:
                problems.append((text, "unknown"))
                continue
            b, slot = found
            if ((b.first_seq + slot) & 1) == a.info.master_parity:
                problems.append((text, "reserved for masters at this KME"))
            elif b.taken[slot]:
                problems.append((text, "already delivered"))
            else:
                per_block.setdefault(b.bid, (b, []))[1].append(slot)
                order.append((b, slot))
        if problems:
            raise KeysNotAvailable(problems)
        return Plan(list(per_block.values()), order)

    def _apply(self, w: BatchWriter, a: AssocMirror, plan: Plan, req: DeliveryRequest) -> Delivery:
        """Read and zero the planned keys, queue their ledger rows; then update the mirror."""
        kb = a.info.key_size_bits // 8
        zero = bytes(kb)
        got: dict[tuple[int, int], bytes] = {}
        for b, slots in plan.blocks:
            blob = w.blob(b.bid)
            if isinstance(req, MasterRequest):  # every other slot: one read, one write
                lo, hi = slots[0] * kb, (slots[-1] + 1) * kb
                blob.seek(lo)
                buf = bytearray(blob.read(hi - lo))
                for s in slots:
                    o = s * kb - lo
                    got[b.bid, s] = bytes(buf[o:o + kb])
                    buf[o:o + kb] = zero
                blob.seek(lo)
                blob.write(buf)
            else:
                for s in slots:
                    blob.seek(s * kb)
                    got[b.bid, s] = blob.read(kb)
                    blob.seek(s * kb)
                    blob.write(zero)
        order = plan.order if plan.order is not None else [(b, s) for b, slots in plan.blocks for s in slots]
        now = time.time()
        aid = a.info.assoc_id
        out: Delivery = []
        for b, s in order:
            kid = key_id_str(b.ids[s * 16:s * 16 + 16])
            out.append((kid, got[b.bid, s]))
            w.ledger.append((aid, b.first_seq + s, kid, req.master_sae, req.slave_sae, now))
        n = len(out)
        if isinstance(req, MasterRequest):
            b, slots = plan.blocks[-1]
            a.cursor = b.first_seq + slots[-1] + 2
            a.avail_own -= n
        else:
            a.avail_other -= n
        for b, slots in plan.blocks:
            for s in slots:
                b.taken[s] = 1
            b.n_taken += len(slots)
        a.delivered += n
        return out

    # -- lookup ------------------------------------------------------------------------------

    def key_record(self, assoc_id: str, key_id: str) -> KeyRecord | None:
        """Metadata of a stored key (None if unknown or purged after full consumption)."""
        key = parse_key_id(key_id)
        with self._lock:
            a = self._assoc(assoc_id)
            found = a.locate(key) if key is not None else None
            if found is None:
                return None
            b, slot = found
            conn = self._db()
            (created,) = conn.execute("SELECT created FROM block WHERE bid = ?", (b.bid,)).fetchone()
            row = conn.execute(
                "SELECT master_sae, slave_sae, delivered_at FROM delivery WHERE assoc_id = ? AND seq = ?",
                (assoc_id, b.first_seq + slot),
            ).fetchone()
            state: KeyState = "delivered" if row else "available"
            master, slave, at = row if row else (None, None, None)
            return KeyRecord(key_id_str(b.ids[slot * 16:slot * 16 + 16]), b.first_seq + slot,
                             a.info.key_size_bits, created, state, master, slave, at)

    def _rollback_and_reload(self) -> None:
        conn = self._db()
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        self._load()


def _own_untaken(a: AssocMirror) -> Iterator[tuple[Block, Iterator[int]]]:
    """From the master cursor on, in seq order: each block with the slots of its keys of this node's
    parity not delivered yet (below the cursor all of them are delivered)."""
    for i in range(max(bisect_right(a.starts, a.cursor) - 1, 0), len(a.blocks)):
        b = a.blocks[i]
        s = max(a.cursor - b.first_seq, 0)
        if (b.first_seq + s) & 1 != a.info.master_parity:
            s += 1
        taken = b.taken
        yield b, (x for x in range(s, b.n, 2) if not taken[x])
