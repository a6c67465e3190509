"""Relays prepared ahead (qkdnode/forwarder/ready.py) on the chain a - b - c - d of test_forwarder (real
gRPC and ETSI 014 servers, synthetic link key streams, exact counts): a request that finds one runs the
commit pass only, commits of fewer keys than prepared take only their link keys, and whatever makes a
relay prepared ahead unusable (the route removed at a middle node, the next hop gone, a hop that lost
it) costs no link key and leaves no reservation or intent behind.
"""

from __future__ import annotations

import asyncio

import pytest

from qkdnode.forwarder.ready import READY_LINK_KEYS, READY_MAX_SLOTS
from qkdnode.forwarder.relay import Pending
from test_forwarder import NAMES, ROUTE, Chain, assert_consumed, assert_no_intents, chain, hop_links  # noqa: F401 (fixture)
from waiting import until

pytestmark = pytest.mark.timeout(60)


async def ready_at(chain: Chain, node: str = "a") -> Pending:
    fwd = chain.nodes[node].fwd
    await until(lambda: fwd.ready.relays(), what=f"a relay prepared ahead at {node}")
    (p,) = fwd.ready.relays()
    return p


def held_anywhere(chain: Chain, relay_id: str, nodes: str = "abcd") -> list[str]:
    return [n for n in nodes if relay_id in chain.nodes[n].fwd.pending
            or any(p.relay_id == relay_id for p in chain.nodes[n].fwd.ready.relays())]


async def released_everywhere(chain: Chain, relay_id: str, nodes: str = "abcd") -> None:
    await until(lambda: not held_anywhere(chain, relay_id, nodes),
                what=lambda: f"relay {relay_id} to be released (held at {held_anywhere(chain, relay_id, nodes)})")


async def test_commit_pass_only_with_fewer_keys_and_exact_accounting(chain: Chain) -> None:
    a, b = chain.nodes["a"].fwd, chain.nodes["b"].fwd
    status, body = await chain.enc("a", "sae-a", "sae-d", 8)
    assert status == 200, body
    p = await ready_at(chain)
    slots = min(READY_MAX_SLOTS, READY_LINK_KEYS // 9)
    assert (p.n, p.slots) == (8, slots)
    for x, _, lid in hop_links(chain, NAMES):  # every sender reserved 9 link keys (8 + MAC) per slot
        assert chain.nodes[x].fwd.ahead_link_keys()[lid] == 9 * slots
    for nd in chain.nodes.values():
        assert nd.fwd.idle(), nd.name
    await assert_no_intents(chain)  # the intents are exactly the reservations

    before, prepares = chain.snapshot(), b.counters["prepares_handled"]
    status, body = await chain.enc("a", "sae-a", "sae-d", 3)
    assert status == 200, body
    assert a.counters["ready_used"] == 1 and b.counters["prepares_handled"] == prepares  # commit pass only
    assert_consumed(chain, before, chain.snapshot(), NAMES, 4)  # 3 keys + MAC key, not the 9 prepared
    status, got = await chain.dec("d", "sae-d", "sae-a", [k["key_ID"] for k in body["keys"]])
    assert status == 200 and got["keys"] == body["keys"], got
    (q,) = a.ready.relays()
    assert q.relay_id == p.relay_id and q.slots == slots - 1  # the same relay, one commit fewer
    for x, _, lid in hop_links(chain, NAMES):
        assert chain.nodes[x].fwd.ahead_link_keys()[lid] == 9 * (slots - 1)
    await assert_no_intents(chain)

    # the slots used up one by one: each request consumes exactly its own link keys
    before = chain.snapshot()
    for _ in range(slots - 1):
        status, body = await chain.enc("a", "sae-a", "sae-d", 1)
        assert status == 200, body
    assert a.counters["ready_used"] == slots
    assert_consumed(chain, before, chain.snapshot(), NAMES, 2 * (slots - 1))
    assert not held_anywhere(chain, p.relay_id)  # used up everywhere
    q = await ready_at(chain)  # and the next one prepared, for 1-key requests
    assert q.relay_id != p.relay_id and q.n == 1 and b.counters["prepares_handled"] == prepares + 1
    for nd in chain.nodes.values():
        assert nd.fwd.idle(), nd.name
    await assert_no_intents(chain)
    # a request bigger than what is prepared prepares its own relay; the ready one stays
    status, body = await chain.enc("a", "sae-a", "sae-d", 5)
    assert status == 200 and a.ready.relays() == [q] and b.counters["prepares_handled"] == prepares + 2


@pytest.mark.parametrize("where", ["b", "c", "d"])
async def test_route_removed_on_the_path_revokes_it_nothing_consumed(chain: Chain, where: str) -> None:
    routes = chain.route(NAMES, apps=("sae-a", "sae-d"))
    assert (await chain.enc("a", "sae-a", "sae-d", 2))[0] == 200
    p = await ready_at(chain)
    before = chain.snapshot()
    chain.nodes[where].fwd.set_routes([])
    await released_everywhere(chain, p.relay_id)
    assert chain.nodes["a"].fwd.counters["ready_revoked"] == 1
    assert chain.snapshot() == before
    for nd in chain.nodes.values():
        assert nd.fwd.idle() and not nd.fwd.pending, nd.name
    await assert_no_intents(chain)
    assert not any(nd.store.intents() for nd in chain.nodes.values())
    status, body = await chain.enc("a", "sae-a", "sae-d", 1)
    assert status == 503 and body["details"][0]["reason"] == "no-route", body
    assert f"node {where}" in body["message"] and chain.snapshot() == before
    chain.nodes[where].fwd.set_routes([routes[where]])
    assert (await chain.enc("a", "sae-a", "sae-d", 1))[0] == 200


async def test_revoked_while_a_request_commits_it_the_commit_goes_through(chain: Chain) -> None:
    a, b = chain.nodes["a"].fwd, chain.nodes["b"].fwd
    assert (await chain.enc("a", "sae-a", "sae-d", 1))[0] == 200
    p = await ready_at(chain)
    gate = asyncio.Event()
    real_send = a.send_commit

    async def held_back(nb, msg):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await real_send(nb, msg)

    a.send_commit = held_back  # type: ignore[method-assign]
    try:
        before = chain.snapshot()
        request = asyncio.ensure_future(chain.enc("a", "sae-a", "sae-d", 1))
        await until(lambda: a.ready.busy, what="the request to take the relay prepared ahead")
        b.set_routes([])  # b asks a, which answers that a request is committing it
        await until(lambda: b.pending[p.relay_id].revoking is not None and b.pending[p.relay_id].revoking.done(),
                    what="the answer to b's revocation")
        assert b.pending[p.relay_id].revoking.result() is False
        gate.set()
        status, body = await request
    finally:
        a.send_commit = real_send  # type: ignore[method-assign]
    assert status == 200, body  # the relay in flight when the route changed completes
    assert_consumed(chain, before, chain.snapshot(), NAMES, 2)
    status, got = await chain.dec("d", "sae-d", "sae-a", [k["key_ID"] for k in body["keys"]])
    assert status == 200 and got["keys"] == body["keys"]
    # and then it is withdrawn (not given back to the next request): released everywhere
    await released_everywhere(chain, p.relay_id)
    for nd in chain.nodes.values():
        assert nd.fwd.idle(), nd.name
    await assert_no_intents(chain)


async def test_next_hop_gone_revokes_it(chain: Chain) -> None:
    assert (await chain.enc("a", "sae-a", "sae-d", 1))[0] == 200
    p = await ready_at(chain)
    before = chain.snapshot()
    await chain.nodes["d"].fwd.stop()  # c's stream to d ends: c revokes what goes through d
    await released_everywhere(chain, p.relay_id, "abc")
    assert chain.snapshot() == before
    status, body = await chain.enc("a", "sae-a", "sae-d", 1)
    assert status == 503 and body["details"][0]["reason"] == "unreachable", body
    assert chain.snapshot() == before
    for n in "abc":
        assert chain.nodes[n].fwd.idle(), n


async def test_relay_lost_at_a_hop_is_prepared_afresh(chain: Chain) -> None:
    a, d = chain.nodes["a"].fwd, chain.nodes["d"].fwd
    assert (await chain.enc("a", "sae-a", "sae-d", 1))[0] == 200
    p = await ready_at(chain)
    lost = d.pending.pop(p.relay_id)  # as if d had restarted without its streams breaking
    d._release(lost)
    status, body = await chain.enc("a", "sae-a", "sae-d", 1)
    assert status == 200, body
    assert a.counters["ready_lost"] == 1 and a.counters["ready_used"] == 1
    status, got = await chain.dec("d", "sae-d", "sae-a", [k["key_ID"] for k in body["keys"]])
    assert status == 200 and got["keys"] == body["keys"]
    await released_everywhere(chain, p.relay_id)
    # d holds the first relay's key, and this one's was delivered: nothing was stored twice
    assert chain.nodes["d"].store.stats(ROUTE).available_for_peer == 1
