"""Fuzz driver: mode, tally, and generators of bad inputs for NETCONF, ETSI 014, RESTCONF and gRPC.

Mode: `QKDNET_FUZZ=long` (what `make fuzz` sets) runs many more inputs than the bounded default
that `make test` runs; `QKDNET_FUZZ_SEED` fixes the random seed (printed with the figures).

Every input is judged by the test that sends it: `TALLY.record(ok)` counts it in
`reliability.inputs_tried`, and an input that got a non-standard answer, crashed a server or
changed a datastore or key store counts in `reliability.bad_answers` (target 0).
"""

from __future__ import annotations

import base64
import os
import random
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

LONG = os.environ.get("QKDNET_FUZZ", "") == "long"
SEED = int(os.environ.get("QKDNET_FUZZ_SEED", "0") or 0) or random.SystemRandom().randrange(1, 2**31)

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
QKD_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
QKD_TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"

#: RFC 6241 Appendix A
ERROR_TAGS = frozenset({
    "in-use", "invalid-value", "too-big", "missing-attribute", "bad-attribute", "unknown-attribute",
    "missing-element", "bad-element", "unknown-element", "unknown-namespace", "access-denied",
    "lock-denied", "resource-denied", "rollback-failed", "data-exists", "data-missing",
    "operation-not-supported", "operation-failed", "partial-operation", "malformed-message",
})
ERROR_TYPES = frozenset({"transport", "rpc", "protocol", "application"})


def count(bounded: int, long: int) -> int:
    """How many inputs of one kind to send in the current mode."""
    return long if LONG else bounded


def rng(name: str) -> random.Random:
    """A generator per test, reproducible from SEED."""
    return random.Random(f"{SEED}:{name}")


@dataclass
class Tally:
    inputs_tried: int = 0
    bad_answers: int = 0
    by_surface: dict[str, list[int]] = field(default_factory=dict)  # surface -> [tried, bad]
    bad_examples: list[str] = field(default_factory=list)

    def record(self, surface: str, ok: bool, what: str = "") -> bool:
        self.inputs_tried += 1
        entry = self.by_surface.setdefault(surface, [0, 0])
        entry[0] += 1
        if not ok:
            self.bad_answers += 1
            entry[1] += 1
            if len(self.bad_examples) < 20:
                self.bad_examples.append(f"{surface}: {what[:300]}")
        return ok

    def bench_lines(self) -> list[str]:
        lines = [f"reliability.inputs_tried = {self.inputs_tried} count (target >= 1)",
                 f"reliability.bad_answers = {self.bad_answers} count (target <= 0)"]
        for surface, (tried, bad) in sorted(self.by_surface.items()):
            lines.append(f"reliability.fuzz.{surface}.inputs_tried = {tried} count (target >= 1)")
            lines.append(f"reliability.fuzz.{surface}.bad_answers = {bad} count (target <= 0)")
        return lines


TALLY = Tally()


# -- byte and string noise ------------------------------------------------------------------------
def garbage(r: random.Random, n: int) -> bytes:
    """Random bytes without an end-of-message marker (which would split them in two messages)."""
    data = bytes(r.randrange(256) for _ in range(n))
    return data.replace(b"]]>]]>", b"]]>]>")


def weird_text(r: random.Random) -> str:
    choices = [
        "", " ", "-1", "0", "4294967296", "1e309", "NaN", "true", "null", "\u202e\u0000"[:1] + "x",
        "a" * r.randrange(1, 300), "../../etc/passwd", "' or 1=1 --", "%s%n", "\u00e9\u4e2d\U0001f600",
        str(uuid.uuid4()) + "x", "{" * 5, "<![CDATA[x]]>", "&amp;&lt;", "\t\n",
    ]
    return r.choice(choices)


def xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- NETCONF --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NcInput:
    """One NETCONF message body (unframed) and what kind of input it is."""

    kind: str
    data: bytes


def _rpc(body: str, mid: str = "101", extra: str = "") -> bytes:
    return f'<rpc xmlns="{NC_NS}" message-id="{mid}"{extra}>{body}</rpc>'.encode()


def _link(lid: str, inner: str = "") -> str:
    return f'<qkd_link><qkdl_id>{lid}</qkdl_id>{inner}</qkd_link>'


def _edit(content: str, extra: str = "") -> bytes:
    return _rpc(f"<edit-config><target><candidate/></target>{extra}<config>{content}</config></edit-config>")


def _node(inner: str, attrs: str = "") -> str:
    return f'<qkd_node xmlns="{QKD_NS}"{attrs}>{inner}</qkd_node>'


def invalid_edits(r: random.Random, existing_link: str | None) -> list[NcInput]:
    """edit-configs that must each be refused (stop-on-error), so the candidate never changes."""
    lid = str(uuid.uuid4())
    n = r.randrange(1000)
    bad = xml_escape(weird_text(r)) or "x"
    ops = f'xmlns:nc="{NC_NS}"'
    cases = [
        _node(f"<qkd_links>{_link(bad + 'z')}</qkd_links>"),  # key not a UUID
        _node(f"<qkdn_id>{bad}z</qkdn_id>"),  # node ID not a UUID
        _node(f"<qkd_links>{_link(lid, f'<qkdl_enable>{bad}z</qkdl_enable>')}</qkd_links>"),  # not a boolean
        _node(f"<qkd_links>{_link(lid, '<qkdl_type>no-such:THING</qkdl_type>')}</qkd_links>"),  # bad identity
        _node(f"<no_such_leaf_{n}>1</no_such_leaf_{n}>"),  # unknown element
        f'<qkd_node xmlns="urn:example:unknown:{r.randrange(10**6)}"><x/></qkd_node>',  # unknown namespace
        _node(f'<qkd_links><qkd_link {ops} nc:operation="bogus"><qkdl_id>{lid}</qkdl_id></qkd_link></qkd_links>'),
        _node(f'<qkd_links><qkd_link {ops} nc:operation="delete"><qkdl_id>{lid}</qkdl_id></qkd_link></qkd_links>'),
        _node("<qkd_links><qkd_link><qkdl_enable>true</qkdl_enable></qkd_link></qkd_links>"),  # no key
        _node(f"<qkd_links>{_link(lid, '<phys_channel_att>' + bad + 'q</phys_channel_att>')}</qkd_links>"),
        _node(f"<qkd_links>{_link(lid, '<qkdl_local><qkdn_id>' + bad + 'q</qkdn_id></qkdl_local>')}</qkd_links>"),
        _node(f"<qkd_interfaces><qkd_interface><qkdi_id>{r.choice(['-1', 'x', '99999999999'])}</qkdi_id>"
              "</qkd_interface></qkd_interfaces>"),
        _node("<qkdn_capabilities><link_stats_support>true</link_stats_support></qkdn_capabilities>"
              f"<qkd_links>{_link(lid, '<qkdl_performance><expected_consumption>1</expected_consumption></qkdl_performance>')}</qkd_links>"),
    ]
    if existing_link:
        cases.append(_node(f'<qkd_links><qkd_link {ops} nc:operation="create"><qkdl_id>{existing_link}</qkdl_id>'
                           "</qkd_link></qkd_links>"))
    out = [NcInput("invalid-edit", _edit(c)) for c in cases]
    out.append(NcInput("invalid-edit", _edit(_node(f"<qkd_links>{_link(lid)}</qkd_links>"),
                                             f"<default-operation>{bad}x</default-operation>")))
    out.append(NcInput("invalid-edit", _edit(_node(f"<qkd_links>{_link(lid)}</qkd_links>"),
                                             "<test-option>sometimes</test-option>")))
    out.append(NcInput("invalid-edit", _rpc(f"<edit-config><target><running/></target><config>"
                                            f"{_node('<qkdn_location_id>x</qkdn_location_id>')}</config></edit-config>")))
    out.append(NcInput("invalid-edit", _rpc("<edit-config><target><candidate/></target></edit-config>")))
    return out


def malformed_messages(r: random.Random) -> list[NcInput]:
    """Messages that are not a valid <rpc>: each needs an rpc-error reply, the session lives on."""
    depth = r.randrange(70, 400)
    deep = "<a>" * depth + "</a>" * depth
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            f'<rpc xmlns="{NC_NS}" message-id="1"><get-config><source><running/></source></get-config>&lol2;</rpc>')
    xxe = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           f'<rpc xmlns="{NC_NS}" message-id="1">&x;</rpc>')
    cases = [
        NcInput("xml-bomb", bomb.encode()),
        NcInput("xxe", xxe.encode()),
        NcInput("deep-nesting", _rpc(f"<get-config><source><running/></source><filter>{deep}</filter></get-config>")),
        NcInput("deep-nesting", (f'<rpc xmlns="{NC_NS}" message-id="1">' + "<x>" * depth + "</x>" * depth
                                 + "</rpc>").encode()),
        NcInput("not-xml", garbage(r, r.randrange(1, 200))),
        NcInput("not-xml", b"<rpc"),
        NcInput("not-xml", f'<rpc xmlns="{NC_NS}" message-id="1"><get/>'.encode()),  # unclosed
        NcInput("wrong-root", f'<hello xmlns="{NC_NS}"/>'.encode()),
        NcInput("wrong-root", b"<rpc message-id='1'><get/></rpc>"),  # no namespace
        NcInput("no-message-id", f'<rpc xmlns="{NC_NS}"><get/></rpc>'.encode()),
        NcInput("two-ops", _rpc("<get/><get/>")),
        NcInput("no-op", _rpc("")),
        NcInput("unknown-op", _rpc(f"<op-{r.randrange(10**6)}/>")),
        NcInput("unknown-namespace", f'<rpc xmlns="{NC_NS}" message-id="1"><get xmlns="urn:x:{r.randrange(99)}"/></rpc>'.encode()),
        NcInput("bad-datastore", _rpc("<get-config><source><nowhere/></source></get-config>")),
        NcInput("bad-datastore", _rpc("<lock><target><startup/></target></lock>")),
        NcInput("bad-filter", _rpc('<get><filter type="regex">.*</filter></get>')),
        NcInput("bad-filter", _rpc(f'<get><filter type="xpath" select="{xml_escape("///[[")}"/></get>')),
        NcInput("bad-param", _rpc("<kill-session><session-id>abc</session-id></kill-session>")),
        NcInput("bad-param", _rpc(f"<get-schema xmlns='urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring'>"
                                  f"<identifier>{xml_escape(weird_text(r))}nope</identifier></get-schema>")),
        NcInput("bad-param", _rpc("<unlock><target><candidate/></target></unlock>")),  # not locked
        NcInput("bad-param", _rpc("<commit><confirmed/></commit>")),
        NcInput("bad-param", _rpc(f"<get><with-defaults xmlns='urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults'>"
                                  f"{xml_escape(weird_text(r))}q</with-defaults></get>")),
        NcInput("bad-encoding", b'<?xml version="1.0" encoding="x-unknown"?><rpc/>'),
        NcInput("bad-encoding", b"\xff\xfe<\x00r\x00p\x00c\x00"),
    ]
    return cases


def framing_breakers(r: random.Random, max_message: int) -> list[tuple[str, bytes, bool]]:
    """(kind, raw bytes after the hello, chunked?) that break RFC 6242 framing or the size limit:
    the server must answer with an rpc-error (malformed-message / too-big) and close the session."""
    big = b"<rpc>" + b"x" * (max_message + 10) + b"</rpc>"
    return [
        ("bad-chunk-header", b"\n#abc\n<rpc/>\n##\n", True),
        ("bad-chunk-header", b"\n#0\n\n##\n", True),
        ("bad-chunk-header", b"\nX" + garbage(r, 40), True),
        ("bad-chunk-header", b"\n#99999999999\n", True),
        ("end-without-chunk", b"\n##\n", True),
        ("too-big-chunked", b"\n#%d\n" % (max_message + 1), True),
        ("too-big-chunked", b"\n#%d\n" % (max_message // 2) + b"x" * (max_message // 2)
         + b"\n#%d\n" % (max_message // 2 + 10), True),
        ("too-big-eom", big + b"]]>]]>", False),
        ("too-big-eom", big, False),
    ]


# -- ETSI 014 -------------------------------------------------------------------------------------
def bad_numbers(r: random.Random) -> list[object]:
    return [0, -1, -(2**63), 2**31, 2**64, 10**30, 1.5, "1", "", None, True, [], {}, "１", float("1e3")]


def bad_key_ids(r: random.Random) -> list[object]:
    u = str(uuid.uuid4())
    return [u[:-1], u + "0", u.replace("-", ""), "", " ", "../" + u, u.upper().replace("A", "G"),
            "".join(r.choice(string.printable) for _ in range(r.randrange(1, 60))), 12, None, [u], {"k": u}]


def bad_base64(r: random.Random) -> list[str]:
    raw = os.urandom(r.randrange(1, 40))
    good = base64.b64encode(raw).decode()
    return [good[:-1], good + "=", "!!!!", "====", good.replace("A", "*"), "\u00e9" * 4]


def json_noise(r: random.Random, depth: int = 0) -> object:
    kind = r.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return r.choice([0, -1, 2**70, 1.5, float("1e308")])
    if kind == 1:
        return weird_text(r)
    if kind == 2:
        return r.choice([True, False, None])
    if kind == 3:
        return "".join(r.choice(string.printable) for _ in range(r.randrange(0, 30)))
    if kind == 4:
        return str(uuid.uuid4())
    if kind == 5:
        return [json_noise(r, depth + 1) for _ in range(r.randrange(0, 4))]
    return {r.choice(["number", "size", "key_IDs", "key_ID", "x", "extension_mandatory",
                      "additional_slave_SAE_IDs"]): json_noise(r, depth + 1) for _ in range(r.randrange(0, 4))}


def iter_n(gen: Iterator[object], n: int) -> list[object]:
    out = []
    for item in gen:
        out.append(item)
        if len(out) >= n:
            break
    return out
