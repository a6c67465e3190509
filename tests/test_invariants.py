"""Key invariants as properties (hypothesis), on a real in-process chain a - b - c (reliability.inproc):
SQLite key stores, forwarders over gRPC with mutual TLS, ETSI 014 servers over HTTPS with mutual TLS,
ETSI 004 servers over gRPC, all on 127.0.0.1.

For any sequence of requests — enc_keys of any size on the direct link a-b (both ways) and relayed
a..c (both ways), alone or concurrently, dec_keys of pending, already used and unknown key IDs at
any moment, ETSI 004 chunks on a stream between sae-a and sae-b sharing link a-b:

* every key handed out is unique (ID and bytes), across 014 and 004;
* the slave gets exactly the master's bytes (014 by ID, 004 by index);
* a refused request consumes nothing;
* the link-key ledger balances exactly: every store's delivered count and both halves of every
  association moved by what the successful requests account for (n per direct 014 key, n + 1 per
  relay hop, chunk keys per 004 index), relay associations end empty and no reservation is left.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import LoopThread
from qkdnode.keystore import etsi004_pb2 as pb
from qkdnode.keystore.etsi004 import Etsi004Client
from reliability.inproc import Chain, make_chain

pytestmark = pytest.mark.timeout(240)
SUITE_BUDGET_S = 90.0

FLOWS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "a>b": ("sae-a", "sae-b", ("a", "b")),
    "b>a": ("sae-b", "sae-a", ("b", "a")),
    "a>c": ("sae-a", "sae-c", ("a", "b", "c")),
    "c>a": ("sae-c", "sae-a", ("c", "b", "a")),
}
CHUNK_KEYS = 2  # 004 stream: 64-byte chunks, two 256-bit keys per index

ops = st.one_of(
    st.tuples(st.just("enc"), st.sampled_from(sorted(FLOWS)), st.integers(1, 12)),
    st.tuples(st.just("enc"), st.sampled_from(sorted(FLOWS)), st.sampled_from([0, 129, 5000])),  # refused
    st.tuples(st.just("burst"), st.lists(st.tuples(st.sampled_from(sorted(FLOWS)), st.integers(1, 6)),
                                         min_size=2, max_size=5)),
    st.tuples(st.just("dec"), st.integers(0, 1000)),
    st.tuples(st.just("dec_used"), st.integers(0, 1000)),
    st.tuples(st.just("dec_unknown"), st.sampled_from(sorted(FLOWS))),
    st.tuples(st.just("004"), st.integers(1, 3)),
)


class Model:
    """What the successful requests account for, and every key seen."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.expected: Counter[tuple[str, str, int]] = Counter()  # (node, assoc, field) -> delta
        self.ids: set[str] = set()
        self.materials: set[bytes] = set()
        self.pending: list[tuple[str, dict[str, bytes]]] = []
        self.used: list[tuple[str, list[str]]] = []

    def key(self, kid: str | None, material: bytes) -> None:
        if kid is not None:
            assert kid not in self.ids, f"key ID {kid} handed out twice"
            self.ids.add(kid)
        assert material not in self.materials, "the same key bytes handed out twice"
        self.materials.add(material)

    def take(self, node: str, assoc: str, n: int, half: int) -> None:
        """`n` keys delivered at `node` from `assoc`: half 1 = masters', 2 = peer's."""
        self.expected[node, assoc, 0] += n
        self.expected[node, assoc, half] -= n

    def enc_ok(self, flow: str, n: int, keys: dict[str, bytes]) -> None:
        _, _, path = FLOWS[flow]
        assert len(keys) == n
        for kid, material in keys.items():
            self.key(kid, material)
        if len(path) == 2:
            self.take(path[0], self.chain.link(*path), n, 1)
        else:
            for x, y in zip(path, path[1:]):
                self.take(x, self.chain.link(x, y), n + 1, 1)
                self.take(y, self.chain.link(x, y), n + 1, 2)
            self.expected[path[0], self.chain.route_id, 0] += n
        self.pending.append((flow, keys))

    def dec_ok(self, flow: str, ids: list[str]) -> None:
        _, _, path = FLOWS[flow]
        if len(path) == 2:
            self.take(path[1], self.chain.link(*path), len(ids), 2)
        else:
            self.expected[path[-1], self.chain.route_id, 0] += len(ids)
        self.used.append((flow, ids))

    def expected_snapshot(self, before: dict[tuple[str, str], tuple[int, int, int]]) -> dict[tuple[str, str], tuple[int, ...]]:
        return {k: tuple(v[i] + self.expected[k[0], k[1], i] for i in range(3)) for k, v in before.items()}


async def run_ops(chain: Chain, model: Model, stream: dict[str, Any], seq: list[tuple[Any, ...]]) -> None:
    before = chain.snapshot()
    model.expected.clear()

    async def enc(flow: str, n: int) -> None:
        master, slave, _ = FLOWS[flow]
        status, body = await chain.enc(master, slave, n)
        if 1 <= n <= 128:
            assert status == 200, (flow, n, body)
            model.enc_ok(flow, n, {k["key_ID"]: _b64(k["key"]) for k in body["keys"]})
        else:
            assert status == 400, (flow, n, body)

    async def dec(i: int) -> None:
        flow, keys = model.pending.pop(i % len(model.pending))
        master, slave, _ = FLOWS[flow]
        status, body = await chain.dec(slave, master, list(keys))
        assert status == 200, body
        assert {k["key_ID"]: _b64(k["key"]) for k in body["keys"]} == keys
        model.dec_ok(flow, list(keys))

    import asyncio

    for op in seq:
        if op[0] == "enc":
            await enc(op[1], op[2])
        elif op[0] == "burst":
            await asyncio.gather(*(enc(f, n) for f, n in op[1]))
        elif op[0] == "dec" and model.pending:
            await dec(op[1])
        elif op[0] in ("dec_used", "dec_unknown"):
            if op[0] == "dec_used":
                if not model.used:
                    continue
                flow, ids = model.used[op[1] % len(model.used)]
            else:
                flow, ids = op[1], [str(uuid.uuid4())]
            master, slave, _ = FLOWS[flow]
            snap = chain.snapshot()
            status, body = await chain.dec(slave, master, ids)
            assert status == 400 and body["details"], body
            assert chain.snapshot() == snap, "a refused dec_keys consumed keys"
        elif op[0] == "004":
            for _ in range(op[1]):
                idx = stream["index"]
                stream["index"] += 1
                ka = await stream["a"].get_key(stream["ksid"], idx)
                kb = await stream["b"].get_key(stream["ksid"], idx)
                assert ka.status == kb.status == pb.SUCCESSFUL, (ka.message, kb.message)
                assert ka.key_buffer == kb.key_buffer and len(ka.key_buffer) == 32 * CHUNK_KEYS
                for j in range(CHUNK_KEYS):
                    model.key(None, ka.key_buffer[32 * j:32 * (j + 1)])
                model.take("a", chain.link("a", "b"), CHUNK_KEYS, 1)  # a is the stream master
                model.take("b", chain.link("a", "b"), CHUNK_KEYS, 2)
    while model.pending:  # the slaves take every key still waiting
        await dec(0)
    after = chain.snapshot()
    assert after == model.expected_snapshot(before), _diff(before, after, model)
    assert chain.idle(), "a relay reservation was left behind"
    for n in ("a", "c"):
        assert chain.nodes[n].store.stats(chain.route_id).available_total == 0


def _b64(s: str) -> bytes:
    import base64

    return base64.b64decode(s)


def _diff(before: dict, after: dict, model: Model) -> str:
    exp = model.expected_snapshot(before)
    return "; ".join(f"{k}: expected {exp[k]}, got {after[k]}" for k in after if exp.get(k) != after[k])


def test_keys_unique_identical_and_ledger_exact(tmp_path: Path) -> None:
    lt = LoopThread()
    chain = lt.run(make_chain(tmp_path))
    model = Model(chain)
    stream: dict[str, Any] = {"index": 0}

    async def open_004() -> None:
        a = Etsi004Client(f"127.0.0.1:{chain.nodes['a'].etsi004.port}", chain.certs["sae-a"])  # type: ignore[union-attr]
        b = Etsi004Client(f"127.0.0.1:{chain.nodes['b'].etsi004.port}", chain.certs["sae-b"])  # type: ignore[union-attr]
        r = await a.open_connect("sae-a", "sae-b", pb.QoS(key_chunk_size=32 * CHUNK_KEYS))
        assert r.status == pb.PEER_NOT_CONNECTED, r
        r2 = await b.open_connect("sae-b", "sae-a", pb.QoS(key_chunk_size=32 * CHUNK_KEYS), r.key_stream_id)
        assert r2.status == pb.SUCCESSFUL, r2
        stream.update(a=a, b=b, ksid=r.key_stream_id)

    try:
        lt.run(open_004())

        @settings(max_examples=100, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(seq=st.lists(ops, min_size=1, max_size=16))
        def prop(seq: list[tuple[Any, ...]]) -> None:
            lt.run(run_ops(chain, model, stream, seq), timeout=120)

        prop()
        assert len(model.ids) > 100 and len(model.materials) > len(model.ids)  # 014 and 004 both ran
        assert len(model.used) > 20
    finally:
        async def close() -> None:
            for c in ("a", "b"):
                if c in stream:
                    await stream[c].aclose()
            await chain.close()

        lt.run(close())
        lt.close()
