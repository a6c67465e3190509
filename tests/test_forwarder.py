"""Key forwarder over real servers on 127.0.0.1: gRPC with mutual TLS between the forwarders, the ETSI 014
server (HTTPS, mutual TLS) in front of each node's SQLite key store, no NETCONF and no QKD modules: the
link key associations are filled with the same synthetic key stream at both ends, so every count is exact.

Chain a - b - c - d, route a..d (VIRT links handed to each forwarder as the SDN agent would).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from orchestrator.launcher import free_port
from qkdnode.forwarder import Forwarder, Neighbour, attach_to_014, sae_uuid
from qkdnode.forwarder.service import pb, pb_grpc
from qkdnode.keystore import Etsi014Server, KeyStore, NeighbourResolver, SaeDirectory
from qkdnode.pki import CertificateAuthority, CertPaths, client_context, server_context
from qkdnode.qkd015 import LinkConfig
from reliability.inproc import store_snapshot
from waiting import until

pytestmark = pytest.mark.timeout(60)

NAMES = ("a", "b", "c", "d")
SAES = {"sae-a": "a", "sae-d": "d"}
ROUTE = str(uuid.uuid4())


def stream(n: int) -> list[tuple[str, int, bytes]]:
    return [(str(uuid.uuid4()), s, os.urandom(32)) for s in range(n)]


@dataclass
class Node:
    name: str
    node_id: str
    store: KeyStore
    fwd: Forwarder
    api: Etsi014Server
    links: dict[str, str] = field(default_factory=dict)  # link assoc -> remote node id


@dataclass
class Chain:
    nodes: dict[str, Node]
    certs: dict[str, CertPaths]
    ca: CertificateAuthority
    link_ids: dict[tuple[str, str], str]  # (x, y) and (y, x) -> PHYS link association

    def ids(self) -> dict[str, str]:
        return {n: nd.node_id for n, nd in self.nodes.items()}

    def route(self, path: tuple[str, ...], rid: str = ROUTE, bandwidth: int | None = None,
              apps: tuple[str, ...] = ()) -> dict[str, LinkConfig]:
        ids = [self.nodes[n].node_id for n in path]
        out = {}
        for i, n in enumerate(path):
            out[n] = LinkConfig(rid, "VIRT", True, ids[0], None, ids[-1], None, None,
                                ids[i - 1] if i else None, (ids[i + 1],) if i < len(ids) - 1 else (),
                                bandwidth, tuple(sae_uuid(a) for a in apps))
        return out

    def install(self, routes: list[dict[str, LinkConfig]]) -> None:
        for n, nd in self.nodes.items():
            nd.fwd.set_routes([r[n] for r in routes if n in r])

    def snapshot(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        return store_snapshot({n: nd.store for n, nd in self.nodes.items()})

    async def call(self, node: str, sae: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        url = f"https://127.0.0.1:{self.nodes[node].api.port}/api/v1/keys/{path}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(self.certs[sae]))) as s:
            async with s.request(method, url, **kw) as r:
                return r.status, json.loads(await r.text())

    async def enc(self, node: str, sae: str, slave: str, n: int) -> tuple[int, Any]:
        return await self.call(node, sae, "POST", f"{slave}/enc_keys", json={"number": n})

    async def dec(self, node: str, sae: str, master: str, ids: list[str]) -> tuple[int, Any]:
        return await self.call(node, sae, "POST", f"{master}/dec_keys",
                               json={"key_IDs": [{"key_ID": k} for k in ids]})


async def make_chain(tmp: Path, link_keys: dict[tuple[str, str], int] | None = None) -> Chain:
    ca = CertificateAuthority(tmp / "ca")
    certs = {n: ca.issue_server(n, tmp / "pki") for n in NAMES}
    certs.update({s: ca.issue_client(s, tmp / "pki") for s in SAES})
    ids = {n: str(uuid.uuid4()) for n in NAMES}
    ports = {n: free_port() for n in NAMES}
    stores = {n: KeyStore(tmp / n) for n in NAMES}
    links: dict[str, dict[str, str]] = {n: {} for n in NAMES}
    link_ids: dict[tuple[str, str], str] = {}
    for x, y in zip(NAMES, NAMES[1:]):
        lid = str(uuid.uuid4())
        link_ids[x, y] = link_ids[y, x] = lid
        keys = stream((link_keys or {}).get((x, y), 2000))
        stores[x].add_association(lid, ids[x], ids[y], master_parity=0)
        stores[y].add_association(lid, ids[y], ids[x], master_parity=1)
        assert stores[x].ingest(lid, keys) == stores[y].ingest(lid, keys) == len(keys)
        links[x][lid], links[y][lid] = ids[y], ids[x]
    nodes = {}
    for i, n in enumerate(NAMES):
        nbs = [Neighbour(o, ids[o], "127.0.0.1", ports[o]) for o in NAMES[max(i - 1, 0):i + 2] if o != n]
        fwd = Forwarder(n, ids[n], stores[n], certs[n], neighbours=nbs, links=lambda n=n: links[n])
        await fwd.start("127.0.0.1", ports[n])
        directory = SaeDirectory(ids[n], {s: ids[node] for s, node in SAES.items()})
        resolver = NeighbourResolver(directory, {remote: lid for lid, remote in links[n].items()})
        api = Etsi014Server(stores[n], directory, resolver, server_context(certs[n]))
        attach_to_014(api, fwd, resolver)
        await api.start()
        nodes[n] = Node(n, ids[n], stores[n], fwd, api, links[n])
    chain = Chain(nodes, certs, ca, link_ids)
    chain.install([chain.route(NAMES, apps=tuple(SAES))])
    deadline = time.monotonic() + 10  # relay associations are created in the background
    while not all(ROUTE in nodes[n].fwd._assoc_ready for n in (NAMES[0], NAMES[-1])):
        assert time.monotonic() < deadline, "relay key associations not created"
        await asyncio.sleep(0.01)
    return chain


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    c = await make_chain(tmp_path)
    yield c
    await close_chain(c)


async def close_chain(c: Chain) -> None:
    for nd in c.nodes.values():
        await nd.fwd.stop()
        await nd.api.stop()
        nd.store.close()


def hop_links(c: Chain, path: tuple[str, ...]) -> list[tuple[str, str, str]]:
    return [(x, y, c.link_ids[x, y]) for x, y in zip(path, path[1:])]


def assert_consumed(c: Chain, before: dict, after: dict, path: tuple[str, ...], per_hop: int) -> None:
    """Every hop x->y of `path` consumed exactly `per_hop` link keys at both ends, the same keys:
    x's master half, y's peer half; links off the path consumed nothing."""
    on_path = set()
    for x, y, lid in hop_links(c, path):
        on_path |= {(x, lid), (y, lid)}
        dx, mx, px = (a - b for a, b in zip(after[x, lid], before[x, lid]))
        dy, my, py = (a - b for a, b in zip(after[y, lid], before[y, lid]))
        assert (dx, mx, px) == (per_hop, -per_hop, 0), f"hop {x}->{y} at {x}"
        assert (dy, my, py) == (per_hop, 0, -per_hop), f"hop {x}->{y} at {y}"
    for key in before:
        if key[1] != ROUTE and key not in on_path:
            assert after[key] == before[key], f"{key} changed"


def stray_intents(c: Chain) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """Per node, (recorded intents, intents of the relays prepared ahead) where they differ."""
    out = {}
    for n, nd in c.nodes.items():
        held = dict(+nd.fwd.ahead_link_keys())
        if nd.store.intents() != held:
            out[n] = (nd.store.intents(), held)
    return out


async def assert_no_intents(c: Chain) -> None:
    """Every relay intent was taken with its keys or withdrawn (withdrawals run in the background),
    but those of the relays prepared ahead (ready.py), which are still held."""
    await until(lambda: not stray_intents(c), what=lambda: f"intents to go: {stray_intents(c)}")


async def test_relay_both_ways_and_exact_link_key_accounting(chain: Chain) -> None:
    for src, sae, dst, peer, path in (("a", "sae-a", "d", "sae-d", NAMES), ("d", "sae-d", "a", "sae-a", NAMES[::-1])):
        for n in (1, 5, 128):  # 128 keys: 129 link keys per hop, more than one store request
            before = chain.snapshot()
            status, body = await chain.enc(src, sae, peer, n)
            assert status == 200, body
            keys = {k["key_ID"]: k["key"] for k in body["keys"]}
            assert len(keys) == n
            assert_consumed(chain, before, chain.snapshot(), path, n + 1)  # n pad keys + 1 MAC key
            # the far end holds them for its SAE, by ID (peer half of its relay association)
            far = chain.nodes[dst].store.stats(ROUTE)
            assert far.available_for_peer == n and far.available_for_masters == 0
            status, got = await chain.dec(dst, peer, sae, list(keys))
            assert status == 200, got
            assert {k["key_ID"]: k["key"] for k in got["keys"]} == keys
            assert chain.nodes[dst].store.stats(ROUTE).available_total == 0
            assert chain.nodes[src].store.stats(ROUTE).available_total == 0
            status, again = await chain.dec(dst, peer, sae, list(keys)[:1])
            assert status == 400  # delivered once only
    for nd in chain.nodes.values():
        assert nd.fwd.idle(), nd.name
    await assert_no_intents(chain)


async def test_concurrent_relays_both_ways(chain: Chain) -> None:
    before = chain.snapshot()
    results = await asyncio.gather(*[chain.enc("a", "sae-a", "sae-d", 3) for _ in range(8)],
                                   *[chain.enc("d", "sae-d", "sae-a", 2) for _ in range(8)])
    assert all(s == 200 for s, _ in results), results
    after = chain.snapshot()
    for x, y, lid in hop_links(chain, NAMES):  # a->d used x's half (8 x 4), d->a y's half (8 x 3)
        assert after[x, lid][0] - before[x, lid][0] == 8 * 4 + 8 * 3
        assert after[x, lid][1] - before[x, lid][1] == -8 * 4
        assert after[y, lid][1] - before[y, lid][1] == -8 * 3
    ids_d = [k["key_ID"] for s, b in results[:8] for k in b["keys"]]
    status, got = await chain.dec("d", "sae-d", "sae-a", ids_d)
    assert status == 200 and len(got["keys"]) == 24


def _tamper_ciphertext(m: Any) -> None:
    m.ciphertext = bytes([m.ciphertext[0] ^ 1]) + m.ciphertext[1:]


def _tamper_tag(m: Any) -> None:
    m.tag = m.tag[:-1] + bytes([m.tag[-1] ^ 0x80])


def _tamper_key_id(m: Any) -> None:
    m.key_ids[0] = str(uuid.uuid4())  # claim another ID for the same key


@pytest.mark.parametrize("tamper", [_tamper_ciphertext, _tamper_tag, _tamper_key_id])
async def test_tampered_hop_is_rejected(chain: Chain, tamper: Any) -> None:
    b = chain.nodes["b"].fwd
    real_send = b.send_commit

    async def on_path_attacker(nb: Neighbour, msg: Any) -> Any:  # between b and c
        tamper(msg)
        return await real_send(nb, msg)

    b.send_commit = on_path_attacker  # type: ignore[method-assign]
    before = chain.snapshot()
    status, body = await chain.enc("a", "sae-a", "sae-d", 4)
    assert status == 503, body
    assert "node c" in body["message"] and "does not verify" in body["message"]
    assert body["details"][0]["reason"] == "mac-mismatch"
    after = chain.snapshot()
    # hops a-b and b-c consumed their link keys (the same at both ends); c took nothing for c-d
    assert_consumed(chain, before, after, ("a", "b", "c"), 5)
    lid = chain.link_ids["c", "d"]
    assert after["c", lid] == before["c", lid] and after["d", lid] == before["d", lid]
    assert chain.nodes["d"].store.stats(ROUTE).available_total == 0  # nothing stored at the target
    assert chain.nodes["a"].store.stats(ROUTE).available_total == 0
    assert chain.nodes["c"].fwd.counters["mac_failures"] == 1
    await asyncio.sleep(0.1)  # the abort towards d is sent in the background
    assert not chain.nodes["d"].fwd.pending and not +chain.nodes["c"].fwd.linkkeys.reserved
    b.send_commit = real_send  # type: ignore[method-assign]
    status, body = await chain.enc("a", "sae-a", "sae-d", 4)
    assert status == 200, body


async def test_exhausted_link_key_503_and_nothing_consumed(tmp_path: Path) -> None:
    # c-d holds 4 keys: 2 in c's master half. One key needs 2 link keys (pad + MAC), two need 3.
    chain = await make_chain(tmp_path, {("c", "d"): 4})
    try:
        before = chain.snapshot()
        status, body = await chain.enc("a", "sae-a", "sae-d", 2)
        assert status == 503, body
        assert "node c" in body["message"] and "link key exhausted" in body["message"]
        assert body["details"][0]["reason"] == "link-key-exhausted"
        assert chain.snapshot() == before  # nothing consumed anywhere, no relay key stored
        for nd in chain.nodes.values():  # every reservation released
            assert nd.fwd.idle(), nd.name
        await assert_no_intents(chain)  # and every intent withdrawn: a restart would consume nothing
        status, body = await chain.enc("a", "sae-a", "sae-d", 1)
        assert status == 200, body
        assert_consumed(chain, before, chain.snapshot(), NAMES, 2)
        status, body = await chain.enc("a", "sae-a", "sae-d", 1)
        assert status == 503 and chain.snapshot()[("a", chain.link_ids["a", "b"])][0] == 2
    finally:
        await close_chain(chain)


async def test_link_key_stream_with_a_seq_gap(chain: Chain) -> None:
    """A link key stream restarts at a higher seq (a module restarted; keys offered while a store was
    full are not stored either). b holds the new stream's first keys, c not yet: a relay takes b's
    oldest keys, which c holds, so c must not wait for b's newest ones (it did: 503 link-key-exhausted)."""
    lid = chain.link_ids["b", "c"]
    newer = [(str(uuid.uuid4()), 10**9 + s, os.urandom(32)) for s in range(2000)]
    assert chain.nodes["b"].store.ingest(lid, newer) == len(newer)
    assert chain.nodes["b"].store.own_seq(lid, 1) == 0 and chain.nodes["b"].store.own_seq(lid, 1001) == 10**9
    before = chain.snapshot()
    status, body = await chain.enc("a", "sae-a", "sae-d", 3)
    assert status == 200, body
    assert_consumed(chain, before, chain.snapshot(), NAMES, 4)
    status, got = await chain.dec("d", "sae-d", "sae-a", [k["key_ID"] for k in body["keys"]])
    assert status == 200 and got["keys"] == body["keys"]


async def test_stream_tails_stored_at_one_end_only_are_forgotten(chain: Chain) -> None:
    """The module pair of a-b restarted: a had stored seqs 2000..2009 (both parities), b's module lost
    them; b had stored 2010..2013, which a never got. Once both ends' streams are past those runs,
    each end forgets what it alone holds: a master at a would hand out, and a relay would name, keys
    b never holds (and the other way round). Only seqs cross the wire."""
    from qkdnode.forwarder.errors import NotNeighbour
    from qkdnode.forwarder.service import pb

    lid = chain.link_ids["a", "b"]
    a, b = chain.nodes["a"], chain.nodes["b"]
    tail = stream(14)
    assert a.store.ingest(lid, [(k, 2000 + i, m) for i, (k, _, m) in enumerate(tail[:10])]) == 10
    assert b.store.ingest(lid, [(k, 2010 + i, m) for i, (k, _, m) in enumerate(tail[10:])]) == 4
    # neither stream has gone past the other's run: nothing to settle yet, nothing forgotten
    assert await a.fwd.tails.settle() == 0 and await b.fwd.tails.settle() == 0
    newer = [(k, 10**9 + s, m) for k, s, m in stream(100)]  # the pair's new stream
    assert a.store.ingest(lid, newer) == b.store.ingest(lid, newer) == 100
    assert a.store.segment_ends(lid) == [(0, 2009)] and b.store.segment_ends(lid) == [(0, 1999), (2010, 2013)]
    before_a, before_b = a.store.stats(lid).available_total, b.store.stats(lid).available_total
    await a.fwd.tails.settle()  # (the forwarders' own rounds, every second, may come first: count on the stores)
    await b.fwd.tails.settle()
    assert a.store.stats(lid).available_total == before_a - 10 and b.store.stats(lid).available_total == before_b - 4
    assert a.store.segment_ends(lid) == b.store.segment_ends(lid) == [(0, 1999)]
    assert (a.fwd.counters["link_keys_forgotten"], b.fwd.counters["link_keys_forgotten"]) == (10, 4)
    assert await a.fwd.tails.settle() == 0 and await b.fwd.tails.settle() == 0  # settled: not asked again
    # the keys both hold are still usable end to end
    status, body = await chain.enc("a", "sae-a", "sae-d", 2)
    assert status == 200, body
    with pytest.raises(NotNeighbour):  # only the link's other end may ask
        await b.fwd.tails.handle(pb.TailsRequest(link_id=lid, first=[0], last=[1999]), "c")


async def test_calls_on_closed_channels_are_peer_unreachable(chain: Chain) -> None:
    """A node that is stopping (its channels closed, maybe while a call was opening a stream: a revoke
    spawned when a stopping neighbour's stream broke) gets PeerUnreachable, a RelayError that callers
    handle, not gRPC's UsageError (it surfaced as a Traceback in a node's log at shutdown)."""
    from qkdnode.forwarder.errors import PeerUnreachable
    from qkdnode.forwarder.service import NeighbourChannels, pb

    nb = chain.nodes["b"].fwd.neighbours["c"]
    req = pb.TailsRequest(link_id=chain.link_ids["b", "c"])
    opening = NeighbourChannels(chain.certs["b"])
    opening.stub(nb)
    await opening._stubs["c"][0].close()  # closed between the stub and its stream
    with pytest.raises(PeerUnreachable, match="stopping"):
        await opening.call(nb, "tails", req, 5)
    await opening.close()
    with pytest.raises(PeerUnreachable, match="stopping"):
        await opening.call(nb, "tails", req, 5)


async def test_missing_route_in_the_middle_503_nothing_consumed(chain: Chain) -> None:
    routes = chain.route(NAMES, apps=tuple(SAES))
    chain.nodes["b"].fwd.set_routes([])  # b lost its VIRT entry
    before = chain.snapshot()
    status, body = await chain.enc("a", "sae-a", "sae-d", 3)
    assert status == 503, body
    assert body["details"][0]["reason"] == "no-route" and "node b" in body["message"]
    assert chain.snapshot() == before
    await assert_no_intents(chain)
    chain.nodes["b"].fwd.set_routes([routes["b"]])
    status, body = await chain.enc("a", "sae-a", "sae-d", 3)
    assert status == 200, body


async def test_applications_and_bandwidth(chain: Chain) -> None:
    # a route only for other SAEs is not offered to sae-a/sae-d: 401 from the 014 server
    chain.install([chain.route(NAMES, apps=("sae-x", "sae-y"))])
    status, body = await chain.enc("a", "sae-a", "sae-d", 1)
    assert status == 401, body
    # 1024 bit/s: a one-second burst of 4 keys, then the token bucket refuses
    chain.install([chain.route(NAMES, bandwidth=1024)])
    assert (await chain.enc("a", "sae-a", "sae-d", 4))[0] == 200
    status, body = await chain.enc("a", "sae-a", "sae-d", 4)
    assert status == 503 and body["details"][0]["reason"] == "rate-limited", body
    status, body = await chain.enc("a", "sae-a", "sae-d", 8)
    assert status == 503 and "ask for fewer keys" in body["message"]


def _stub(chain: Chain, who: str, to: str, cert: CertPaths | None = None) -> tuple[grpc.aio.Channel, Any]:
    c = cert or chain.certs[who]
    creds = grpc.ssl_channel_credentials(c.ca.read_bytes(), c.key.read_bytes(), c.cert.read_bytes())
    ch = grpc.aio.secure_channel(f"127.0.0.1:{chain.nodes[to].fwd.port}", creds,
                                 options=[("grpc.ssl_target_name_override", to)])
    return ch, pb_grpc.KeyRelayStub(ch)


def _prepare(chain: Chain, sender: str) -> Any:
    return pb.PrepareRequest(relay_id=str(uuid.uuid4()), route_id=ROUTE, origin=chain.nodes["a"].node_id,
                             target=chain.nodes["d"].node_id, hop=1, link_id=chain.link_ids["a", "b"],
                             keys=1, key_size_bits=256, link_keys=2, link_seq=0)


@pytest.mark.parametrize(("who", "reason"), [("c", "not a neighbour"), ("sae-a", "not a neighbour")])
async def test_non_neighbour_certificate_refused(chain: Chain, who: str, reason: str) -> None:
    ch, stub = _stub(chain, who, "a")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Prepare(_prepare(chain, who), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason in exc.value.details()
    finally:
        await ch.close()
    assert not chain.nodes["a"].fwd.pending


async def test_neighbour_but_not_previous_hop_refused(chain: Chain) -> None:
    # c is b's neighbour, but for keys travelling a -> d the previous hop of b is a
    ch, stub = _stub(chain, "c", "b")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Prepare(_prepare(chain, "c"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not the previous hop" in exc.value.details()
    finally:
        await ch.close()


async def test_certificate_of_another_ca_refused(chain: Chain, tmp_path: Path) -> None:
    rogue = CertificateAuthority(tmp_path / "rogue").issue_server("b", tmp_path / "rogue-pki")
    ch, stub = _stub(chain, "b", "a", CertPaths(rogue.cert, rogue.key, chain.certs["b"].ca))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Prepare(_prepare(chain, "b"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    finally:
        await ch.close()


async def test_reservations_expire(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    import qkdnode.forwarder.relay as relay_mod

    monkeypatch.setattr(relay_mod, "PREPARE_TTL_S", 0.2)
    a = chain.nodes["a"].fwd
    lid = chain.link_ids["a", "b"]
    free = a.free_link_keys(lid)
    p = await a._prepare(pb.PrepareRequest(relay_id=str(uuid.uuid4()), route_id=ROUTE, origin=a.node_id,
                                           target=chain.nodes["d"].node_id, keys=10, key_size_bits=256), None)
    assert a.free_link_keys(lid) == free - 11  # reserved, not taken
    assert chain.nodes["c"].fwd.pending and chain.nodes["d"].fwd.pending
    await asyncio.sleep(1.5)  # the sweepers run every second
    assert a.free_link_keys(lid) == free
    for n in ("b", "c", "d"):
        assert not chain.nodes[n].fwd.pending
    assert p.relay_id not in a.pending
