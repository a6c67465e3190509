"""RFC 6242 framing: table-driven unit tests of FrameDecoder/encode, then both framings on the wire.

The wire tests use a raw asyncssh client against a real server: ncclient (base:1.1) gets
chunked framing, a base:1.0-only client gets end-of-message framing, and a broken chunk header
ends the session.
"""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from ncclient.transport.session import NetconfBase

from conftest import BASE_10, BASE_11, NC_NS, NSMAP, QKD_NS, nc_connect, rpc_errors
from qkdnode.netconf.framing import EOM, FrameDecoder, Framing, FramingError, MessageTooBig, encode

pytestmark = pytest.mark.timeout(20)


def _feed_all(dec: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for p in pieces:
        out += dec.feed(p)
    return out


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- end-of-message framing (base:1.0) ---------------------------------------------------------
EOM_CASES: list[tuple[str, list[bytes], list[bytes]]] = [
    ("one message", [b"<a/>]]>]]>"], [b"<a/>"]),
    ("two in one feed", [b"<a/>]]>]]><b/>]]>]]>"], [b"<a/>", b"<b/>"]),
    ("marker split", [b"<a/>]]>", b"]]>"], [b"<a/>"]),
    ("marker split at every byte", _bytewise(b"<a/>]]>]]>"), [b"<a/>"]),
    ("incomplete stays buffered", [b"<a/>]]>]]"], []),
    ("partial marker inside message", [b"<a>]]></a>]]>]]>"], [b"<a>]]></a>"]),
    ("empty message", [b"]]>]]>"], [b""]),
]


@pytest.mark.parametrize("pieces,expected", [c[1:] for c in EOM_CASES], ids=[c[0] for c in EOM_CASES])
def test_eom_decoder(pieces: list[bytes], expected: list[bytes]) -> None:
    dec = FrameDecoder()
    assert _feed_all(dec, pieces) == expected


def test_eom_too_big_without_marker() -> None:
    dec = FrameDecoder(max_message=100)
    assert dec.feed(b"x" * 100) == []
    with pytest.raises(MessageTooBig):
        dec.feed(b"x" * 10)


@pytest.mark.parametrize("pieces", [[b"x" * 101 + EOM], [b"x" * 60, b"x" * 41 + EOM], [b"<a/>" + EOM + b"x" * 101 + EOM]],
                         ids=["whole message in one feed", "in two feeds", "after a good message"])
def test_eom_too_big_with_marker(pieces: list[bytes]) -> None:
    dec = FrameDecoder(max_message=100)
    with pytest.raises(MessageTooBig):
        _feed_all(dec, pieces)


def test_eom_message_at_the_limit_is_accepted() -> None:
    dec = FrameDecoder(max_message=100)
    assert dec.feed(b"x" * 100 + EOM) == [b"x" * 100]


# -- chunked framing (base:1.1) ----------------------------------------------------------------
CHUNK_CASES: list[tuple[str, list[bytes], list[bytes]]] = [
    ("one chunk", [b"\n#4\n<a/>\n##\n"], [b"<a/>"]),
    ("several chunks", [b"\n#2\n<a\n#2\n/>\n##\n"], [b"<a/>"]),
    ("two messages in one feed", [b"\n#4\n<a/>\n##\n\n#4\n<b/>\n##\n"], [b"<a/>", b"<b/>"]),
    ("byte by byte", _bytewise(b"\n#2\n<a\n#2\n/>\n##\n"), [b"<a/>"]),
    ("header split after digits", [b"\n#1", b"0\n0123456789\n##\n"], [b"0123456789"]),
    ("payload split", [b"\n#10\n01234", b"56789\n##\n"], [b"0123456789"]),
    ("end marker split", [b"\n#1\nx\n#", b"#\n"], [b"x"]),
    ("incomplete chunk stays buffered", [b"\n#10\n01234"], []),
    ("no end marker yet", [b"\n#4\n<a/>"], []),
    ("chunk data may hold newlines and #", [b"\n#5\n\n#\n#\n\n##\n"], [b"\n#\n#\n"]),
    ("ten-digit size header waits for data", [b"\n#4294967295\n"], []),
]


@pytest.mark.parametrize("pieces,expected", [c[1:] for c in CHUNK_CASES], ids=[c[0] for c in CHUNK_CASES])
def test_chunked_decoder(pieces: list[bytes], expected: list[bytes]) -> None:
    dec = FrameDecoder(max_message=2**33)
    dec.switch_to_chunked()
    assert _feed_all(dec, pieces) == expected


BAD_CHUNKS: list[tuple[str, bytes]] = [
    ("no leading newline", b"#4\n<a/>\n##\n"),
    ("no hash", b"\n4\n<a/>\n##\n"),
    ("zero size", b"\n#0\n\n##\n"),
    ("leading zero", b"\n#04\n<a/>\n##\n"),
    ("letters in size", b"\n#4a\n<a/>\n##\n"),
    ("negative size", b"\n#-4\n<a/>\n##\n"),
    ("empty size", b"\n#\n<a/>\n##\n"),
    ("space after size", b"\n#4 \n<a/>\n##\n"),
    ("size above 4294967295", b"\n#4294967296\n"),
    ("eleven digits", b"\n#12345678901\n"),
    ("end marker without chunk", b"\n##\n"),
    ("bad end marker", b"\n#1\nx\n##x"),
    ("payload longer than size", b"\n#1\nxy\n##\n"),
    ("EOM framing after switch", b"<rpc/>]]>]]>"),
]


@pytest.mark.parametrize("data", [c[1] for c in BAD_CHUNKS], ids=[c[0] for c in BAD_CHUNKS])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_chunked_decoder_rejects(data: bytes, split: bool) -> None:
    dec = FrameDecoder(max_message=2**33)
    dec.switch_to_chunked()
    with pytest.raises(FramingError):
        _feed_all(dec, _bytewise(data) if split else [data])


@pytest.mark.parametrize(
    "data",
    [b"\n#101\n", b"\n#60\n" + b"x" * 60 + b"\n#41\n", b"\n#100\n" + b"x" * 100 + b"\n#1\n"],
    ids=["one chunk announced too big", "chunks add up too big", "one byte over"],
)
def test_chunked_too_big(data: bytes) -> None:
    dec = FrameDecoder(max_message=100)
    dec.switch_to_chunked()
    with pytest.raises(MessageTooBig):
        dec.feed(data)


def test_chunked_size_counts_per_message() -> None:
    dec = FrameDecoder(max_message=10)
    dec.switch_to_chunked()
    msg = b"\n#10\n0123456789\n##\n"
    assert dec.feed(msg * 3) == [b"0123456789"] * 3


# -- encode ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "framing,message,expected",
    [
        (Framing.EOM, b"<a/>", b"<a/>]]>]]>"),
        (Framing.CHUNKED, b"<a/>", b"\n#4\n<a/>\n##\n"),
        (Framing.CHUNKED, b"x" * 1234, b"\n#1234\n" + b"x" * 1234 + b"\n##\n"),
    ],
)
def test_encode(framing: Framing, message: bytes, expected: bytes) -> None:
    assert encode(message, framing) == expected


def test_encode_empty_chunked_is_refused() -> None:
    with pytest.raises(ValueError):
        encode(b"", Framing.CHUNKED)


@pytest.mark.parametrize("framing", list(Framing))
def test_encode_decode_roundtrip(framing: Framing) -> None:
    msgs = [b"<rpc/>", "<x>\u00e9\u4e2d</x>".encode(), b"<a>\n#3\n</a>" * 50]
    dec = FrameDecoder()
    if framing is Framing.CHUNKED:
        dec.switch_to_chunked()
    wire = b"".join(encode(m, framing) for m in msgs)
    assert _feed_all(dec, [wire[i : i + 7] for i in range(0, len(wire), 7)]) == msgs


# -- on the wire -------------------------------------------------------------------------------
GET_CONFIG = "<get-config><source><running/></source></get-config>"


def test_ncclient_negotiates_chunked(node: Any) -> None:
    m = nc_connect(node)
    try:
        assert BASE_11 in m.server_capabilities
        assert m._session._base == NetconfBase.BASE_11  # noqa: SLF001 - what ncclient negotiated
        sessions = [s for s in node.call(lambda: list(node.node.netconf.sessions.values()))]
        assert [s.framing.value for s in sessions] == ["chunked"]
        reply = m.get_config("running")
        assert reply.ok and reply.data_ele.find(f"{{{QKD_NS}}}qkd_node") is not None
    finally:
        m.close_session()


async def test_base10_client_gets_eom_framing(node: Any, raw_netconf: Any) -> None:
    c = await raw_netconf(node)
    hello = await c.hello(BASE_10)
    assert hello.findtext("nc:session-id", namespaces=NSMAP)
    c.send_bytes(f'<rpc xmlns="{NC_NS}" message-id="7">{GET_CONFIG}</rpc>'.encode() + EOM)
    raw = await c.reader.read(65536)
    while not raw.endswith(EOM):
        raw += await c.reader.read(65536)
    assert not raw.startswith(b"\n#"), "a base:1.0 session must not get chunked replies"
    reply = etree.fromstring(raw[: -len(EOM)])
    assert reply.get("message-id") == "7"
    assert reply.find("nc:data/{%s}qkd_node" % QKD_NS, NSMAP) is not None


async def test_base10_two_rpcs_in_one_write(node: Any, raw_netconf: Any) -> None:
    c = await raw_netconf(node)
    await c.hello(BASE_10)
    rpcs = b"".join(
        f'<rpc xmlns="{NC_NS}" message-id="{i}">{GET_CONFIG}</rpc>'.encode() + EOM for i in (1, 2)
    )
    c.send_bytes(rpcs)
    ids = [etree.fromstring(await c.read_message()).get("message-id") for _ in range(2)]
    assert ids == ["1", "2"]


async def test_base11_client_gets_chunked_framing(node: Any, raw_netconf: Any) -> None:
    c = await raw_netconf(node)
    await c.hello(BASE_10, BASE_11)
    c.send_bytes(c.frame(f'<rpc xmlns="{NC_NS}" message-id="5">{GET_CONFIG}</rpc>'.encode()))
    raw = await c.reader.read(65536)
    assert raw.startswith(b"\n#"), raw[:40]
    c._buf = raw  # noqa: SLF001
    reply = etree.fromstring(await c.read_message())
    assert reply.get("message-id") == "5"


async def test_hello_and_chunked_rpc_in_one_write(node: Any, raw_netconf: Any) -> None:
    c = await raw_netconf(node)
    server_hello = await c.read_message()
    assert server_hello is not None
    hello = f'<hello xmlns="{NC_NS}"><capabilities><capability>{BASE_11}</capability></capabilities></hello>'
    rpc = f'<rpc xmlns="{NC_NS}" message-id="9">{GET_CONFIG}</rpc>'.encode()
    c.send_bytes(hello.encode() + EOM + b"\n#%d\n" % len(rpc) + rpc + b"\n##\n")
    c.chunked = True
    reply = etree.fromstring(await c.read_message())
    assert reply.get("message-id") == "9" and reply.find("nc:data", NSMAP) is not None


async def test_chunked_rpc_split_across_writes(node: Any, raw_netconf: Any) -> None:
    c = await raw_netconf(node)
    await c.hello(BASE_11)
    rpc = f'<rpc xmlns="{NC_NS}" message-id="3">{GET_CONFIG}</rpc>'.encode()
    wire = b"\n#10\n" + rpc[:10] + b"\n#%d\n" % (len(rpc) - 10) + rpc[10:] + b"\n##\n"
    for i in range(0, len(wire), 9):
        c.send_bytes(wire[i : i + 9])
        await c.writer.drain()
    reply = etree.fromstring(await c.read_message())
    assert reply.get("message-id") == "3"


@pytest.mark.parametrize("bad", [b"\n#x\n", b"\n#0\n", b"#12\n", b"\n#12345678901\n"])
async def test_malformed_chunk_header_closes_session(node: Any, raw_netconf: Any, bad: bytes) -> None:
    c = await raw_netconf(node)
    await c.hello(BASE_11)
    reply = await c.rpc(GET_CONFIG)  # the session works before the bad frame
    assert reply.find("nc:data", NSMAP) is not None
    c.send_bytes(bad + b"<rpc/>\n##\n")
    msg = await c.read_message()
    if msg is not None:  # the server may report the framing error before it closes
        errs = rpc_errors(etree.fromstring(msg))
        assert errs and errs[0]["tag"] == "malformed-message"
        assert await c.read_message() is None
    assert node.call(lambda: len(node.node.netconf.sessions)) == 0
    # the server itself is fine: a new session works
    c2 = await raw_netconf(node)
    await c2.hello(BASE_11)
    assert (await c2.rpc(GET_CONFIG)).find("nc:data", NSMAP) is not None


@pytest.mark.parametrize("base", [BASE_10, BASE_11])
async def test_too_big_message_closes_session(node_factory: Any, raw_netconf: Any, base: str) -> None:
    h = node_factory("small", max_message_bytes=4096)
    c = await raw_netconf(h)
    await c.hello(base)
    c.send_bytes(b"\n#5000\n" if base == BASE_11 else b" " * 5000 + EOM)
    msg = await c.read_message()
    if msg is not None:
        errs = rpc_errors(etree.fromstring(msg))
        assert errs[0]["tag"] == "too-big" and errs[0]["type"] == "transport"
        assert await c.read_message() is None
    assert h.call(lambda: len(h.node.netconf.sessions)) == 0


async def test_hello_without_base_capability_is_refused(node: Any, raw_netconf: Any) -> None:
    c = await raw_netconf(node)
    await c.hello("urn:example:not-a-base")
    assert await c.read_message() is None
    assert node.call(lambda: node.node.netconf.stats.in_bad_hellos) == 1


async def test_client_hello_with_session_id_is_refused(node: Any, raw_netconf: Any) -> None:
    c = await raw_netconf(node)
    assert await c.read_message() is not None
    c.send_bytes(
        f'<hello xmlns="{NC_NS}"><capabilities><capability>{BASE_10}</capability></capabilities>'
        f"<session-id>4</session-id></hello>".encode() + EOM
    )
    assert await c.read_message() is None
