"""KeyStore: parity split, all-or-nothing requests, erasure, limits, persistence and crash safety.

The crash test runs a child process that ingests and hands out keys in a loop and reports every
delivered key over a pipe (flushed per key); it is SIGKILLed at random moments, restarted, and at
the end no key may have been reported twice and every stored key must still be accounted for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from qkdnode.keystore import (
    AssociationConflict,
    BadRequest,
    GroupCommitter,
    IngestError,
    InsufficientKeys,
    KeySizeNotSupported,
    KeysNotAvailable,
    KeyStore,
    MasterRequest,
    RequestLimitExceeded,
    SlaveRequest,
    StorageError,
    UnknownAssociation,
)


def stream(n: int, start: int = 0) -> list[tuple[str, int, bytes]]:
    return [(str(uuid.UUID(bytes=hashlib.sha256(b"id%d" % s).digest()[:16], version=4)), s,
             hashlib.sha256(b"key%d" % s).digest()) for s in range(start, start + n)]


def kid(seq: int) -> str:
    return stream(1, seq)[0][0]


def material(seq: int) -> bytes:
    return stream(1, seq)[0][2]


@pytest.fixture
def pair(tmp_path: Path) -> Any:
    a, b = KeyStore(tmp_path / "A", block_keys=64), KeyStore(tmp_path / "B", block_keys=64)
    a.add_association("l", "A", "B", master_parity=0, max_keys_per_request=8)
    b.add_association("l", "B", "A", master_parity=1, max_keys_per_request=8)
    keys = stream(300)
    assert a.ingest("l", keys) == b.ingest("l", keys) == 300
    yield a, b
    a.close()
    b.close()


def test_parity_split_and_same_keys_at_both_ends(pair: Any) -> None:
    a, b = pair
    got_a = a.take_for_master("l", "a1", "b1", 3, 256)
    got_b = b.take_for_master("l", "b1", "a1", 3, 256)
    assert [k for k, _ in got_a] == [kid(0), kid(2), kid(4)]
    assert [k for k, _ in got_b] == [kid(1), kid(3), kid(5)]
    assert b.take_by_ids("l", [k for k, _ in reversed(got_a)], "a1", "b1") == list(reversed(got_a))
    assert a.take_by_ids("l", [k for k, _ in got_b], "b1", "a1") == got_b
    assert all(v == material(int(i)) for (_, v), i in zip(got_a, (0, 2, 4), strict=True))
    st = a.stats("l")
    assert (st.available_for_masters, st.available_for_peer, st.delivered) == (147, 147, 6)
    assert st.stored_bits == 294 * 256 and st.capacity == 100_000
    assert all(isinstance(v, (int, str)) for v in (getattr(st, f) for f in st.__slots__))
    rec = b.key_record("l", kid(2))
    assert rec is not None and (rec.state, rec.master_sae, rec.slave_sae, rec.seq) == ("delivered", "a1", "b1", 2)
    rec = b.key_record("l", kid(6))
    assert rec is not None and rec.state == "available" and rec.delivered_at is None


def test_own_seq_counts_stored_keys_across_seq_gaps(pair: Any) -> None:
    """own_seq(k): the seq of the k-th oldest own-parity key not delivered (what a relay's next hop must
    hold), counted on the stored keys: a restarted stream's higher seqs and keys taken out of order."""
    a, b = pair
    a.ingest("l", [(str(uuid.uuid4()), 10_000 + s, os.urandom(32)) for s in range(10)])  # a gap after seq 299
    assert [a.own_seq("l", k) for k in (1, 2, 150, 151, 155)] == [0, 2, 298, 10_000, 10_008]
    assert a.own_seq("l", 156) is None and a.own_seq("l", 0) is None
    assert b.own_seq("l", 1) == 1  # b's own parity
    got = a.take_for_master("l", "m", "s", 3, 256)  # seqs 0, 2, 4
    assert a.own_seq("l", 1) == 6
    b.take_by_ids("l", [k for k, _ in got], "m", "s")
    assert b.own_seq("l", 1) == 1  # the peer's takes do not touch b's own half


def test_stream_tails_runs_high_water_and_forget(tmp_path: Path) -> None:
    """keystore/tails.py: closed runs of the stream, how far a store holds a run (delivered keys count),
    and forgetting a run's tail durably (across a reopen), blocks cut where needed."""
    st = KeyStore(tmp_path / "s", block_keys=4)
    st.add_association("l", "A", "B", master_parity=0)
    st.ingest("l", stream(10))  # seqs 0..9 in blocks 0-3, 4-7, 8-9
    assert st.segment_ends("l") == [] and st.high_water("l", 0, 9) is None  # the stream has not gone past 9
    st.ingest("l", stream(4, 100))
    assert st.segment_ends("l") == [(0, 9)] and st.high_water("l", 0, 9) == 9 and st.high_water("l", 20, 30) == 19
    got = st.take_for_master("l", "m", "s", 5, 256)  # own parity 0..8: their blocks stay (odd keys left)
    assert [parse_seq(st, k) for k, _ in got] == [0, 2, 4, 6, 8]
    assert st.forget("l", 5, 9) == 4  # 6..9: block 4-7 cut to 4-5, block 8-9 gone
    assert st.high_water("l", 0, 9) == 8  # 8 was delivered: it counts
    assert st.segment_ends("l") == []  # nor is 5 a run's end: 6 was delivered here
    st.close()
    st = KeyStore(tmp_path / "s", block_keys=4)
    assert st.stats("l").available_total == 3 + 4  # 1, 3, 5 and 100..103
    assert st.take_for_master("l", "m", "s", 1, 256)[0][1] == material(100)  # the cursor moved past the gap
    st.close()


def parse_seq(st: KeyStore, key_id: str) -> int:
    return next(s for k, s, _ in stream(200) if k == key_id)


def test_take_by_ids_all_or_nothing(pair: Any) -> None:
    _, b = pair
    b.take_by_ids("l", [kid(10)], "a1", "b1")
    before = b.stats("l")
    unknown = str(uuid.uuid4())
    with pytest.raises(KeysNotAvailable) as e:
        b.take_by_ids("l", [kid(12), kid(10), unknown, kid(13)], "a1", "b1")
    assert e.value.key_ids == [kid(10), unknown, kid(13)]
    reasons = [d["reason"] for d in e.value.details]
    assert reasons == ["already delivered", "unknown", "reserved for masters at this KME"]
    assert b.stats("l") == before
    assert b.take_by_ids("l", [kid(12).upper()], "a1", "b1") == [(kid(12), material(12))]
    with pytest.raises(BadRequest):
        b.take_by_ids("l", ["nope"], "a1", "b1")
    with pytest.raises(BadRequest):
        b.take_by_ids("l", [kid(14), kid(14)], "a1", "b1")
    with pytest.raises(RequestLimitExceeded):
        b.take_by_ids("l", [kid(2 * i) for i in range(9)], "a1", "b1")
    with pytest.raises(RequestLimitExceeded):
        b.take_by_ids("l", [], "a1", "b1")


def test_master_limits_and_exhaustion(tmp_path: Path) -> None:
    with KeyStore(tmp_path) as s:
        s.add_association("l", "A", "B", master_parity=1, max_keys_per_request=4)
        s.ingest("l", stream(7))  # odd seqs 1, 3, 5
        for number in (0, -1, 5):
            with pytest.raises(RequestLimitExceeded):
                s.take_for_master("l", "a", "b", number, 256)
        with pytest.raises(KeySizeNotSupported, match="size must be 256"):
            s.take_for_master("l", "a", "b", 1, 512)
        with pytest.raises(InsufficientKeys, match="4 asked, 3 available") as e:
            s.take_for_master("l", "a", "b", 4, 256)
        assert e.value.http_status == 503
        assert s.stats("l").available_for_masters == 3
        assert [k for k, _ in s.take_for_master("l", "a", "b", 3, 256)] == [kid(1), kid(3), kid(5)]
        with pytest.raises(UnknownAssociation):
            s.take_for_master("x", "a", "b", 1, 256)
        with pytest.raises(UnknownAssociation):
            s.stats("x")


def test_ingest_contract(tmp_path: Path) -> None:
    with KeyStore(tmp_path) as s:
        s.add_association("l", "A", "B", master_parity=0, max_key_count=10)
        bad = [
            [(kid(0), 0, b"short")],
            [("not-a-uuid", 0, material(0))],
            [(kid(0), 0, material(0)), (kid(1), 0, material(1))],
            [(kid(1), 1, material(1)), (kid(0), 0, material(0))],
            [(kid(0), "0", material(0))],
            [(kid(0), True, material(0))],
            [(kid(0), 0, bytearray(material(0)))],
            [(kid(0), 0)],
        ]
        for keys in bad:
            with pytest.raises(IngestError):
                s.ingest("l", keys)  # type: ignore[arg-type]
        assert s.stats("l").available_total == 0 and s.stats("l").last_seq == -1
        assert s.ingest("l", []) == 0
        # gaps in seq are fine (several blocks); beyond the capacity keys are dropped and counted
        keys = stream(3) + stream(4, 10) + stream(6, 20)
        assert s.ingest("l", keys) == 10
        st = s.stats("l")
        assert (st.available_total, st.dropped, st.last_seq) == (10, 3, 25)
        with pytest.raises(IngestError, match="after 25"):
            s.ingest("l", stream(1, 25))
        assert [k for k, _ in s.take_for_master("l", "a", "b", 5, 256)] == [kid(x) for x in (0, 2, 10, 12, 20)]
        assert s.ingest("l", stream(5, 30)) == 5
        s.set_limits("l", max_key_count=0)
        assert s.ingest("l", stream(2, 40)) == 0 and s.stats("l").dropped == 5


def test_delivered_bytes_are_erased_and_persisted(tmp_path: Path) -> None:
    s = KeyStore(tmp_path, block_keys=16)
    s.add_association("l", "A", "B", master_parity=0)
    s.ingest("l", stream(40))
    s.take_for_master("l", "a", "b", 3, 256)
    s.take_by_ids("l", [kid(17)], "b", "a")
    ro = sqlite3.connect(f"file:{s.path}?mode=ro", uri=True)
    blocks = {first: mat for first, mat in ro.execute("SELECT first_seq, material FROM block")}
    ro.close()
    zero = bytes(32)
    for seq in range(40):
        chunk = blocks[seq // 16 * 16][(seq % 16) * 32:(seq % 16 + 1) * 32]
        assert (chunk == zero) == (seq in (0, 2, 4, 17)), seq
        if chunk != zero:
            assert chunk == material(seq)
    s.close()
    s = KeyStore(tmp_path, block_keys=16)
    st = s.stats("l")
    assert (st.available_for_masters, st.available_for_peer, st.delivered) == (17, 19, 4)
    assert s.take_for_master("l", "a", "b", 1, 256) == [(kid(6), material(6))]
    with pytest.raises(KeysNotAvailable):
        s.take_by_ids("l", [kid(17)], "b", "a")
    with pytest.raises(StorageError, match="already open"):
        KeyStore(tmp_path)
    s.close()


def test_fully_delivered_blocks_are_purged(tmp_path: Path) -> None:
    with KeyStore(tmp_path, block_keys=4) as s:
        s.add_association("l", "A", "B", master_parity=0)
        s.ingest("l", stream(8))
        s.take_for_master("l", "a", "b", 2, 256)
        s.take_by_ids("l", [kid(1), kid(3)], "b", "a")
        s.ingest("l", stream(4, 8))  # purges block 0..3 in the same transaction
        assert s.key_record("l", kid(0)) is None
        n_blocks = sqlite3.connect(f"file:{s.path}?mode=ro", uri=True).execute("SELECT count(*) FROM block")
        assert n_blocks.fetchone()[0] == 2
        assert s.stats("l").delivered == 4 and s.stats("l").available_total == 8
        with pytest.raises(KeysNotAvailable):
            s.take_by_ids("l", [kid(1)], "b", "a")


def test_associations(tmp_path: Path) -> None:
    with KeyStore(tmp_path) as s:
        a = s.add_association("l", "A", "B", master_parity=0)
        assert s.add_association("l", "A", "B", master_parity=0) == a
        with pytest.raises(AssociationConflict):
            s.add_association("l", "A", "B", master_parity=1)
        with pytest.raises(BadRequest):
            s.add_association("m", "A", "C", master_parity=2)
        s.add_association("r", "A", "D", master_parity=1, kind="relay", key_size_bits=128)
        assert [x.assoc_id for x in s.associations()] == ["l", "r"]
        assert s.association("r").kind == "relay"


def test_batch_mixes_failures_and_successes(pair: Any) -> None:
    a, _ = pair
    out = a.deliver_batch([
        MasterRequest("l", "a1", "b1", 2, 256),
        MasterRequest("l", "a1", "b1", 2, 128),
        SlaveRequest("l", (kid(1), kid(2)), "b1", "a1"),
        SlaveRequest("l", (kid(1),), "b1", "a1"),
        MasterRequest("l", "a1", "b1", 1, 256),
    ])
    assert not isinstance(out[0], Exception) and [k for k, _ in out[0]] == [kid(0), kid(2)]
    assert isinstance(out[1], KeySizeNotSupported) and isinstance(out[2], KeysNotAvailable)
    assert out[3] == [(kid(1), material(1))] and out[4] == [(kid(4), material(4))]


class FailingConnection:
    """Proxy whose n-th executemany fails like a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def executemany(self, *args: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_failed_commit_rolls_back_everything(pair: Any) -> None:
    a, _ = pair
    before = a.stats("l")
    real = a._conn
    a._conn = FailingConnection(real)
    out = a.deliver_batch([MasterRequest("l", "a", "b", 3, 256), SlaveRequest("l", (kid(1),), "b", "a")])
    assert all(isinstance(x, StorageError) for x in out)
    a._conn = real
    assert a.stats("l") == before
    assert a.take_for_master("l", "a", "b", 1, 256) == [(kid(0), material(0))]
    assert a.take_by_ids("l", [kid(1)], "b", "a") == [(kid(1), material(1))]


async def test_group_committer(pair: Any) -> None:
    a, _ = pair
    gc = GroupCommitter(a)
    reqs = [MasterRequest("l", "a", "b", 1 + i % 3, 256) for i in range(40)]
    reqs.append(MasterRequest("l", "a", "b", 1, 64))
    results = await asyncio.gather(*(gc.deliver(r) for r in reqs), return_exceptions=True)
    assert isinstance(results[-1], KeySizeNotSupported)
    ids = [k for r in results[:-1] for k, _ in r]  # type: ignore[union-attr]
    assert len(ids) == len(set(ids)) == sum(1 + i % 3 for i in range(40))
    assert gc.requests == 41 and gc.batches <= 41
    await gc.aclose()


async def test_group_committer_never_blocks_the_loop_on_a_busy_store(pair: Any) -> None:
    a, _ = pair
    gc = GroupCommitter(a)
    assert a._lock.acquire()  # stands for an ingest running in another thread
    task = asyncio.create_task(gc.deliver(MasterRequest("l", "a", "b", 2, 256)))
    await asyncio.sleep(0.05)  # the loop runs on: the group went to the commit thread and waits there
    assert not task.done() and a.stats("l").delivered == 0
    a._lock.release()
    assert [k for k, _ in await task] == [kid(0), kid(2)]
    assert a.stats("l").delivered == 2
    await gc.aclose()


CHILD = r"""
import hashlib, random, sys, uuid
from qkdnode.keystore import KeyStore, KeyStoreError
def key(s):
    return (str(uuid.UUID(bytes=hashlib.sha256(b"id%d" % s).digest()[:16], version=4)), s,
            hashlib.sha256(b"key%d" % s).digest())
store = KeyStore(sys.argv[1], block_keys=32)
store.add_association("l", "A", "B", master_parity=0)
rnd = random.Random()
out = sys.stdout
while True:
    nxt = store.stats("l").last_seq + 1
    n = rnd.randint(1, 80)
    store.ingest("l", [key(s) for s in range(nxt, nxt + n)])
    out.write("I %d\n" % (nxt + n - 1)); out.flush()
    for _ in range(rnd.randint(1, 4)):
        try:
            for k, v in store.take_for_master("l", "m", "s", rnd.randint(1, 5), 256):
                out.write("D %s %s\n" % (k, v.hex())); out.flush()
        except KeyStoreError:
            pass
        odd = [key(s)[0] for s in rnd.sample(range(1, nxt + n, 2), min(3, (nxt + n) // 2))]
        try:
            for k, v in store.take_by_ids("l", odd, "m", "s"):
                out.write("D %s %s\n" % (k, v.hex())); out.flush()
        except KeyStoreError:
            pass
"""


def test_sigkill_loses_nothing_and_never_delivers_twice(tmp_path: Path) -> None:
    state = tmp_path / "state"
    reported: list[str] = []
    reported_bytes: list[bytes] = []
    acked = -1
    rnd = random.Random(1234)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(state)], stdout=subprocess.PIPE, env=env)
        assert child.stdout is not None
        first = child.stdout.readline()  # the child is up and working
        time.sleep(rnd.uniform(0.02, 0.3))
        child.send_signal(signal.SIGKILL)
        rest = first + child.stdout.read()
        child.wait()
        assert child.returncode == -signal.SIGKILL
        for line in rest.decode().split("\n")[:-1]:  # an unterminated last line was cut by the kill
            kind, *args = line.split()
            if kind == "I":
                acked = max(acked, int(args[0]))
            else:
                reported.append(args[0])
                reported_bytes.append(bytes.fromhex(args[1]))
    assert acked > 0 and reported
    assert len(reported) == len(set(reported)), "a key was handed out twice"
    with KeyStore(state) as s:
        st = s.stats("l")
        by_id = {k: v for k, _, v in stream(st.last_seq + 1)}
        assert all(by_id[k] == v for k, v in zip(reported, reported_bytes, strict=True))
        assert st.last_seq >= acked  # every acknowledged ingest survived
        assert st.available_total + st.delivered == st.last_seq + 1  # no stored key lost
        with sqlite3.connect(f"file:{s.path}?mode=ro", uri=True) as ro:
            ledger = {k for (k,) in ro.execute("SELECT key_id FROM delivery")}
        assert set(reported) <= ledger
        # drain the rest: none of it was reported before, and together every key went out once
        drained = []
        while s.stats("l").available_for_masters:
            drained += s.take_for_master("l", "m", "s", min(100, s.stats("l").available_for_masters), 256)
        odd_ids = [k for k, q, _ in stream(st.last_seq + 1) if q % 2]
        rest_ids = [k for k in odd_ids if k not in ledger]
        for i in range(0, len(rest_ids), 100):
            drained += s.take_by_ids("l", rest_ids[i:i + 100], "m", "s")
        assert all(v == by_id[k] for k, v in drained)
        assert not {k for k, _ in drained} & ledger
        assert len(ledger) + len(drained) == st.last_seq + 1
        assert s.stats("l").available_total == 0


# -- relay intents: takes without fsync, recovered at open ----------------------------------------------
def test_intent_left_at_a_stop_consumes_its_keys_at_the_next_open(tmp_path: Path) -> None:
    """An intent whose take never committed (a crash lost it, or it never ran) consumes that many of
    the node's master keys at the next open, in seq order from the cursor, with the ledger names the
    take would have written; the intent is then gone, so a second open consumes nothing more."""
    st = KeyStore(tmp_path / "A", block_keys=64)
    st.add_association("l", "A", "B", master_parity=0, max_keys_per_request=8)
    st.ingest("l", stream(40))  # 20 master keys: seqs 0, 2, ..., 38
    first = st.take_for_master("l", "sae-1", "sae-2", 2, 256)  # seqs 0, 2
    st.add_intent("r1", "l", 11, "forwarder:A", "forwarder:B")  # more than one request's limit
    st.add_intent("r2", "l", 3, "forwarder:A", "forwarder:C")
    assert st.intents() == {"l": 14}
    st.close()
    st = KeyStore(tmp_path / "A", block_keys=64)
    try:
        assert st.intents() == {}
        assert st.stats("l").available_for_masters == 20 - 2 - 14
        assert st.stats("l").available_for_peer == 20
        rows = sqlite3.connect(st.path).execute(
            "SELECT seq, master_sae, slave_sae FROM delivery WHERE master_sae LIKE 'forwarder:%' ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == list(range(4, 4 + 2 * 14, 2))  # the next 14 after the cursor
        assert [r[2] for r in rows] == ["forwarder:B"] * 11 + ["forwarder:C"] * 3
        nxt = st.take_for_master("l", "sae-1", "sae-2", 1, 256)
        assert nxt[0][0] == kid(32) and first[0][0] == kid(0)
    finally:
        st.close()
    st = KeyStore(tmp_path / "A", block_keys=64)
    try:
        assert st.stats("l").available_for_masters == 3  # nothing more consumed
    finally:
        st.close()


def test_intent_spent_commit_by_commit(tmp_path: Path) -> None:
    """A relay prepared for several commits spends its intent a commit at a time (`spend_intents`,
    in the take's own transaction); the last spend deletes it; a rolled-back take spends nothing;
    a crash after a partial spend consumes only what is left of the intent."""
    st = KeyStore(tmp_path / "A", block_keys=64)
    st.add_association("l", "A", "B", master_parity=0, max_keys_per_request=8)
    st.ingest("l", stream(40))  # 20 master keys
    st.add_intent("r1", "l", 9, "forwarder:A", "forwarder:B")  # 3 commits of 3 link keys

    def take(n: int, spend: int, fail: bool = False) -> None:
        batch = st.begin_batch([MasterRequest("l", "forwarder:A", "forwarder:B", n, 256)], durable=False,
                               spend_intents=[("r1", spend)])
        assert batch is not None
        if fail:
            batch.fail(RuntimeError("tag"))
        st.finish_batch(batch)

    take(2, 3)  # fewer keys sent than the commit's reservation: the whole reservation is spent
    assert st.intents() == {"l": 6}
    take(3, 3, fail=True)
    assert st.intents() == {"l": 6} and st.stats("l").available_for_masters == 18
    take(3, 3)
    assert st.intents() == {"l": 3}
    st.close()
    st = KeyStore(tmp_path / "A", block_keys=64)
    try:  # what was left of the intent (3) is consumed at the open
        assert st.intents() == {} and st.stats("l").available_for_masters == 20 - 2 - 3 - 3
    finally:
        st.close()
    st = KeyStore(tmp_path / "A", block_keys=64)
    try:
        st.add_intent("r2", "l", 4, "forwarder:A", "forwarder:B")
        batch = st.begin_batch([MasterRequest("l", "forwarder:A", "forwarder:B", 4, 256)], spend_intents=[("r2", 4)])
        assert batch is not None
        st.finish_batch(batch)
        assert st.intents() == {}
    finally:
        st.close()


def test_intent_taken_without_fsync_then_synced(tmp_path: Path) -> None:
    """A take that deletes its intent commits without fsync; `sync` makes it durable (ticket), and
    a reopen consumes nothing more. An intent bigger than what is left consumes what is left."""
    st = KeyStore(tmp_path / "A", block_keys=64)
    st.add_association("l", "A", "B", master_parity=0, max_keys_per_request=8)
    st.ingest("l", stream(20))  # 10 master keys
    st.add_intent("r1", "l", 4, "forwarder:A", "forwarder:B")
    synced = st.synced
    batch = st.begin_batch([MasterRequest("l", "forwarder:A", "forwarder:B", 4, 256)], durable=False,
                           spend_intents=[("r1", 4)])
    assert batch is not None
    (taken,) = st.finish_batch(batch)
    assert len(taken) == 4 and batch.ticket > synced  # type: ignore[arg-type]
    assert st.synced < batch.ticket and st.intents() == {}
    st.sync(batch.ticket)
    assert st.synced >= batch.ticket
    st.add_intent("r2", "l", 50, "forwarder:A", "forwarder:B")
    st.close()
    st = KeyStore(tmp_path / "A", block_keys=64)
    try:
        assert st.stats("l").available_for_masters == 0 and st.intents() == {}
        assert st.stats("l").delivered == 10
        with pytest.raises(UnknownAssociation):
            st.add_intent("r3", "nope", 1, "x", "y")
    finally:
        st.close()
