"""Bad input for the NETCONF server over real SSH: malformed framing, XML bombs and external
entities, deep nesting, huge messages, unknown namespaces and operations, invalid edit-configs.

Every input gets a standard `<rpc-error>` reply (RFC 6241 error-type/tag/severity); broken framing
and oversized messages are answered and the session closed (RFC 6242); after each batch the server
answers a normal `<get-config>` and running and candidate are byte-identical to before. The limits
(`max_sessions`, `rpc_rate`/`rpc_burst`) are checked on a node configured with small ones.
Inputs come from `fuzz.driver` (bounded here; `make fuzz` runs the long mode).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from conftest import BASE_10, BASE_11, LoopThread, NodeHandle, RawNetconf, node_config, start_node
from fuzz import driver as fz

pytestmark = pytest.mark.timeout(180)
SUITE_BUDGET_S = 600.0 if fz.LONG else 60.0  # `make fuzz` runs the long mode

MAX_MESSAGE = 64 * 1024
GET_CONFIG = "<get-config><source><running/></source></get-config>"


def start_fuzz_node(loop: LoopThread, state_dir: Path, **netconf: Any) -> NodeHandle:
    return start_node(loop, node_config("fz", state_dir, **netconf))


@pytest.fixture(scope="module")
def fnode(node_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    h = start_fuzz_node(node_loop, tmp_path_factory.mktemp("fuzz-nc") / "state", max_message_bytes=MAX_MESSAGE,
                   max_xml_depth=64)
    yield h
    h.stop()


def is_standard_error(reply: bytes | None) -> bool:
    """An `<rpc-reply>` holding only well-formed RFC 6241 `<rpc-error>`s."""
    if reply is None:
        return False
    try:
        root = etree.fromstring(reply)
    except etree.XMLSyntaxError:
        return False
    if root.tag != f"{{{fz.NC_NS}}}rpc-reply":
        return False
    errors = root.findall(f"{{{fz.NC_NS}}}rpc-error")
    if not errors or len(errors) != len(root):
        return False
    for e in errors:
        if e.findtext(f"{{{fz.NC_NS}}}error-type") not in fz.ERROR_TYPES:
            return False
        if e.findtext(f"{{{fz.NC_NS}}}error-tag") not in fz.ERROR_TAGS:
            return False
        if e.findtext(f"{{{fz.NC_NS}}}error-severity") != "error":
            return False
    return True


def snapshot(h: NodeHandle) -> tuple[str, str]:
    return h.running_xml(), h.candidate_xml()


async def session(h: NodeHandle, base11: bool) -> RawNetconf:
    c = await RawNetconf.open(h)
    caps = [BASE_10, BASE_11] if base11 else [BASE_10]
    await c.hello(*caps)
    return c


async def healthy(h: NodeHandle) -> bool:
    """A fresh session gets its <get-config> answered with data."""
    c = await session(h, True)
    try:
        reply = await c.rpc(GET_CONFIG, timeout=15)
        return reply.find(f"{{{fz.NC_NS}}}data") is not None
    finally:
        await c.close()


async def send_batch(h: NodeHandle, inputs: list[fz.NcInput], base11: bool, surface: str) -> None:
    c = await session(h, base11)
    try:
        for item in inputs:
            c.send_bytes(c.frame(item.data))
            reply = await c.read_message(timeout=20)
            fz.TALLY.record(surface, is_standard_error(reply), f"{item.kind}: {item.data[:120]!r} -> {reply!r:.200}")
        reply = await c.rpc(GET_CONFIG, timeout=15)  # the same session still works
        fz.TALLY.record(surface, reply.find(f"{{{fz.NC_NS}}}data") is not None, "get-config after the batch")
    finally:
        await c.close()


@pytest.mark.parametrize("base11", [False, True], ids=["base1.0", "base1.1"])
async def test_malformed_messages_get_rpc_errors(fnode: NodeHandle, base11: bool) -> None:
    before = snapshot(fnode)
    start = fz.TALLY.bad_answers
    r = fz.rng(f"nc-malformed-{base11}")
    for _ in range(fz.count(1, 40)):
        await send_batch(fnode, fz.malformed_messages(r), base11, "netconf")
    assert fz.TALLY.bad_answers == start, fz.TALLY.bad_examples
    assert await healthy(fnode)
    assert snapshot(fnode) == before


@pytest.mark.parametrize("base11", [False, True], ids=["base1.0", "base1.1"])
async def test_invalid_edit_configs_change_nothing(fnode: NodeHandle, base11: bool) -> None:
    existing = fnode.call(lambda: fnode.node.datastores.running.xpath(
        "/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link"))
    link = None
    if existing:
        from qkdnode.datatree import node_path

        link = fnode.call(lambda: node_path(existing[0])).split("'")[1]
    before = snapshot(fnode)
    start = fz.TALLY.bad_answers
    r = fz.rng(f"nc-edit-{base11}")
    for _ in range(fz.count(2, 60)):
        await send_batch(fnode, fz.invalid_edits(r, link), base11, "netconf")
        assert snapshot(fnode) == before
    assert fz.TALLY.bad_answers == start, fz.TALLY.bad_examples
    assert await healthy(fnode)


async def test_framing_breakers_answered_and_closed(fnode: NodeHandle) -> None:
    before = snapshot(fnode)
    start = fz.TALLY.bad_answers
    r = fz.rng("nc-framing")
    for _ in range(fz.count(1, 10)):
        for kind, data, chunked in fz.framing_breakers(r, MAX_MESSAGE):
            c = await session(fnode, chunked)
            try:
                c.send_bytes(data)
                reply = await c.read_message(timeout=20)
                closed = await c.read_message(timeout=20) is None
                fz.TALLY.record("netconf", is_standard_error(reply) and closed,
                                f"{kind}: {data[:60]!r} -> {reply!r:.200} closed={closed}")
            finally:
                await c.close()
    assert fz.TALLY.bad_answers == start, fz.TALLY.bad_examples
    assert await healthy(fnode)
    assert snapshot(fnode) == before
    stats = fnode.node.netconf.stats
    assert stats.in_sessions > stats.dropped_sessions  # the counters saw the sessions


async def test_garbage_before_hello_closes_only_that_session(fnode: NodeHandle) -> None:
    r = fz.rng("nc-hello")
    for _ in range(fz.count(5, 50)):
        c = await RawNetconf.open(fnode)
        try:
            assert await c.read_message() is not None  # the server hello
            c.send_bytes(fz.garbage(r, r.randrange(1, 300)) + b"]]>]]>")
            fz.TALLY.record("netconf", await c.read_message(timeout=20) is None, "garbage hello not refused")
        finally:
            await c.close()
    assert await healthy(fnode)


@pytest.fixture(scope="module")
def tight(node_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    """A node with small limits: 2 sessions, 5 RPCs of burst and a rate that does not refill in a test."""
    h = start_fuzz_node(node_loop, tmp_path_factory.mktemp("fuzz-tight") / "state", max_sessions=2,
                   rpc_rate=0.01, rpc_burst=5)
    yield h
    h.stop()


async def test_rpc_rate_limit_is_resource_denied(tight: NodeHandle) -> None:
    c = await session(tight, True)
    try:
        tags = []
        for _ in range(8):
            reply = await c.rpc(GET_CONFIG)
            err = reply.find(f"{{{fz.NC_NS}}}rpc-error")
            tags.append(None if err is None else err.findtext(f"{{{fz.NC_NS}}}error-tag"))
        assert tags == [None] * 5 + ["resource-denied"] * 3
    finally:
        await c.close()


async def test_max_sessions_refuses_beyond(tight: NodeHandle) -> None:
    first = [await session(tight, True) for _ in range(2)]
    try:
        extra = await RawNetconf.open(tight)
        try:
            assert await extra.read_message() is None  # no hello: the channel is closed
        finally:
            await extra.close()
    finally:
        for c in first:
            await c.close()
    for _ in range(50):  # the server notices the closed sessions
        if not tight.node.netconf.sessions:
            break
        await asyncio.sleep(0.05)
    c = await RawNetconf.open(tight)
    try:
        assert await c.read_message() is not None  # a slot is free again
    finally:
        await c.close()
