"""Every class of <rpc-error> a client can provoke: tag, type, path and info are checked, and after
each error the datastores are unchanged and the same session still works."""

from __future__ import annotations

import re
from typing import Any

import pytest
from lxml import etree
from ncclient.operations.rpc import RaiseMode
from ncclient.xml_ import to_ele

from conftest import (
    BASE_10,
    BASE_11,
    NC_NS,
    NSMAP,
    QKD_NS,
    QKD_TYPES_NS,
    link_ids,
    link_xml,
    links_config,
    new_uuid,
    parse_reply,
    rpc_errors,
)

pytestmark = pytest.mark.timeout(30)

GET_CONFIG = "<get-config><source><running/></source></get-config>"
PHYS = f'<qkdl_type xmlns:t="{QKD_TYPES_NS}">t:PHYS</qkdl_type>'


def canonical_path(err: dict[str, Any]) -> str:
    """error-path with every prefix replaced by {namespace}, so tests do not depend on prefixes."""
    path = err["path"]
    assert path, err
    nsmap = err["path_nsmap"]

    def repl(m: re.Match[str]) -> str:
        ns = nsmap.get(m.group(1))
        assert ns is not None, f"undeclared prefix {m.group(1)!r} in {path!r}"
        return f"{m.group(0)[0]}{{{ns}}}"

    return re.sub(r"[/\[]([A-Za-z_][\w.-]*):", repl, path)


def link_path(lid: str, leaf: str | None = None) -> str:
    q = f"{{{QKD_NS}}}"
    p = f"/{q}qkd_node/{q}qkd_links/{q}qkd_link[{q}qkdl_id='{lid}']"
    return p + (f"/{q}{leaf}" if leaf else "")


@pytest.fixture
def m(manager: Any) -> Any:
    """The manager, returning error replies instead of raising."""
    manager.raise_mode = RaiseMode.NONE
    return manager


@pytest.fixture
def committed(m: Any, node: Any) -> str:
    """A committed PHYS link; returns its id."""
    lid = new_uuid()
    m.edit_config(links_config(link_xml(lid)), target="candidate")
    assert m.commit().ok
    return lid


class Snapshot:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.running = node.running_xml()
        self.candidate = node.candidate_xml()

    def unchanged(self) -> bool:
        return self.node.running_xml() == self.running and self.node.candidate_xml() == self.candidate


def edit(m: Any, config: str, **kw: Any) -> list[dict[str, Any]]:
    reply = m.edit_config(config, target="candidate", **kw)
    assert not reply.ok
    return rpc_errors(parse_reply(reply.xml))


def still_usable(m: Any) -> None:
    assert m.get_config("running").ok
    lid = new_uuid()
    assert m.edit_config(links_config(link_xml(lid)), target="candidate").ok
    assert lid in link_ids(m.get_config("candidate").data_ele)
    assert m.discard_changes().ok


# -- errors in the message itself (raw client) -------------------------------------------------
@pytest.fixture(params=["1.0", "1.1"])
async def raw(request: Any, node: Any, raw_netconf: Any) -> Any:
    c = await raw_netconf(node)
    await c.hello(BASE_10) if request.param == "1.0" else await c.hello(BASE_11)
    return c


async def _reply(c: Any, data: bytes) -> etree._Element:
    c.send_bytes(c.frame(data))
    msg = await c.read_message()
    assert msg is not None, "the server closed the session"
    return etree.fromstring(msg)


async def _usable(c: Any) -> None:
    reply = await c.rpc(GET_CONFIG, message_id="after")
    assert reply.get("message-id") == "after"
    assert reply.find("nc:data", NSMAP) is not None


@pytest.mark.parametrize(
    "data",
    [
        f'<rpc xmlns="{NC_NS}" message-id="1"><get-config><source><running/></source></rpc>'.encode(),
        b"this is not xml",
        f'<rpc xmlns="{NC_NS}" message-id="1">{GET_CONFIG}</rpc><rpc/>'.encode(),
        f'<rpc xmlns="{NC_NS}" message-id="1"><get-config/><get/></rpc>'.encode(),
        f'<hello xmlns="{NC_NS}"/>'.encode(),
        b'<rpc xmlns="urn:example:not-netconf" message-id="1"><get/></rpc>',
        f'<rpc xmlns="{NC_NS}" message-id="1">\xff\xfe</rpc>'.encode("latin-1"),
    ],
    ids=["unclosed element", "not xml", "two roots", "two operations", "not an rpc", "rpc in wrong namespace",
         "bad utf-8"],
)
async def test_malformed_message(node: Any, raw: Any, data: bytes) -> None:
    snap = Snapshot(node)
    reply = await _reply(raw, data)
    assert etree.QName(reply) == etree.QName(NC_NS, "rpc-reply")
    (err,) = rpc_errors(reply)
    assert err["tag"] == "malformed-message"
    assert err["type"] == "rpc"
    assert err["severity"] == "error"
    await _usable(raw)
    assert snap.unchanged()


ENTITY_BOMB = (
    '<?xml version="1.0"?><!DOCTYPE rpc [<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    + f']><rpc xmlns="{NC_NS}" message-id="1"><get-config><source><running/></source>'
    + f'<filter type="subtree"><qkd_node xmlns="{QKD_NS}"><qkdn_location_id>&i;</qkdn_location_id></qkd_node>'
    + "</filter></get-config></rpc>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE rpc [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    f'<rpc xmlns="{NC_NS}" message-id="1"><get-config><source><running/></source>'
    f'<filter type="subtree"><qkd_node xmlns="{QKD_NS}"><qkdn_location_id>&x;</qkdn_location_id></qkd_node>'
    "</filter></get-config></rpc>"
)
PLAIN_DOCTYPE = f'<!DOCTYPE rpc><rpc xmlns="{NC_NS}" message-id="1">{GET_CONFIG}</rpc>'


@pytest.mark.parametrize("data", [ENTITY_BOMB, EXTERNAL_ENTITY, PLAIN_DOCTYPE],
                         ids=["billion laughs", "external entity", "plain doctype"])
async def test_doctype_and_entities_rejected(node: Any, raw: Any, data: str) -> None:
    snap = Snapshot(node)
    reply = await _reply(raw, data.encode())
    (err,) = rpc_errors(reply)
    assert err["tag"] == "malformed-message"
    assert err["type"] == "rpc"
    assert b"root:" not in etree.tostring(reply)
    await _usable(raw)
    assert snap.unchanged()


async def test_rpc_without_message_id(node: Any, raw: Any) -> None:
    reply = await raw.rpc(GET_CONFIG, message_id=None)
    (err,) = rpc_errors(reply)
    assert err["tag"] == "missing-attribute"
    assert err["type"] == "rpc"
    assert err["info"] == {"bad-attribute": "message-id", "bad-element": "rpc"}
    assert reply.find("nc:data", NSMAP) is None  # the operation was not run
    await _usable(raw)


async def test_reply_echoes_rpc_attributes(raw: Any) -> None:
    raw.send_bytes(raw.frame(
        f'<rpc xmlns="{NC_NS}" xmlns:ex="urn:example:attrs" message-id="m-1" ex:user-id="fred">{GET_CONFIG}</rpc>'
        .encode()
    ))
    reply = etree.fromstring(await raw.read_message())
    assert reply.get("message-id") == "m-1"
    assert reply.get("{urn:example:attrs}user-id") == "fred"


@pytest.mark.parametrize(
    "op", [f'<frobnicate xmlns="{NC_NS}"/>', '<get xmlns="urn:example:other"/>', "<lock-all/>"],
    ids=["unknown base operation", "operation in unknown namespace", "unknown unqualified-in-base operation"],
)
async def test_unknown_operation(node: Any, raw: Any, op: str) -> None:
    snap = Snapshot(node)
    reply = await raw.rpc(op, message_id="42")
    assert reply.get("message-id") == "42"
    (err,) = rpc_errors(reply)
    assert err["tag"] == "operation-not-supported"
    assert err["type"] == "protocol"
    await _usable(raw)
    assert snap.unchanged()
    bad = node.call(lambda: node.node.netconf.stats.in_bad_rpcs)
    assert bad >= 1


def test_missing_parameter_is_missing_element(node: Any, m: Any) -> None:
    reply = m.dispatch(to_ele(f'<get-config xmlns="{NC_NS}"/>'))
    (err,) = rpc_errors(parse_reply(reply.xml))
    assert err["tag"] == "missing-element"
    assert err["type"] == "protocol"
    assert err["info"]["bad-element"] == "source"
    reply = m.dispatch(to_ele(f'<edit-config xmlns="{NC_NS}"><target><candidate/></target></edit-config>'))
    (err,) = rpc_errors(parse_reply(reply.xml))
    assert err["tag"] == "missing-element" and err["info"]["bad-element"] == "config"
    still_usable(m)


def test_bad_filter_type_is_bad_attribute(m: Any) -> None:
    reply = m.dispatch(to_ele(f'<get xmlns="{NC_NS}"><filter type="regex">.*</filter></get>'))
    (err,) = rpc_errors(parse_reply(reply.xml))
    assert err["tag"] == "bad-attribute"
    assert err["info"]["bad-attribute"] == "type"
    still_usable(m)


# -- errors in edit content ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "leaf,value",
    [
        ("phys_wavelength", "0"),  # pattern [1-9][0-9]{0,3}
        ("phys_wavelength", "12345"),
        ("phys_channel_att", "1.23456"),  # decimal64 fraction-digits 3
        ("qkdl_enable", "yes"),
    ],
)
def test_pattern_and_type_mismatch_is_invalid_value(node: Any, m: Any, leaf: str, value: str) -> None:
    snap = Snapshot(node)
    lid = new_uuid()
    errs = edit(m, links_config(f"<qkd_link><qkdl_id>{lid}</qkdl_id>{PHYS}<{leaf}>{value}</{leaf}></qkd_link>"))
    assert [e["tag"] for e in errs] == ["invalid-value"]
    assert errs[0]["type"] == "application"
    assert canonical_path(errs[0]) == link_path(lid, leaf)
    assert snap.unchanged()
    still_usable(m)


@pytest.mark.parametrize("value", ["4294967296", "-1"])
def test_range_mismatch_is_invalid_value(node: Any, m: Any, value: str) -> None:
    snap = Snapshot(node)
    lid = new_uuid()
    cfg = links_config(f"<qkd_link><qkdl_id>{lid}</qkdl_id><qkdl_local><qkdi_id>{value}</qkdi_id></qkdl_local>"
                       "</qkd_link>")
    errs = edit(m, cfg)
    assert [e["tag"] for e in errs] == ["invalid-value"]
    q = f"{{{QKD_NS}}}"
    assert canonical_path(errs[0]) == link_path(lid) + f"/{q}qkdl_local/{q}qkdi_id"
    assert snap.unchanged()
    still_usable(m)


def test_bad_list_key_is_invalid_value(node: Any, m: Any) -> None:
    snap = Snapshot(node)
    errs = edit(m, links_config("<qkd_link><qkdl_id>not-a-uuid</qkdl_id></qkd_link>"))
    assert [e["tag"] for e in errs] == ["invalid-value"]
    assert errs[0]["path"] and "qkdl_id" in errs[0]["path"]
    assert snap.unchanged()
    still_usable(m)


def test_create_existing_is_data_exists(node: Any, m: Any, committed: str) -> None:
    snap = Snapshot(node)
    errs = edit(m, links_config(link_xml(committed, operation="create")))
    assert [e["tag"] for e in errs] == ["data-exists"]
    assert errs[0]["type"] == "application"
    assert canonical_path(errs[0]) == link_path(committed)
    assert snap.unchanged()
    still_usable(m)


def test_delete_missing_is_data_missing(node: Any, m: Any, committed: str) -> None:
    snap = Snapshot(node)
    lid = new_uuid()
    errs = edit(m, links_config(link_xml(lid, kind=None, operation="delete")))
    assert [e["tag"] for e in errs] == ["data-missing"]
    assert errs[0]["type"] == "application"
    assert canonical_path(errs[0]) == link_path(lid)
    # a missing leaf of an existing entry, too
    body = (f'<qkd_link><qkdl_id>{committed}</qkdl_id><virt_bandwidth xmlns:nc="{NC_NS}" nc:operation="delete">1'
            "</virt_bandwidth></qkd_link>")
    errs = edit(m, links_config(body))
    assert [e["tag"] for e in errs] == ["data-missing"]
    assert canonical_path(errs[0]) == link_path(committed, "virt_bandwidth")
    assert snap.unchanged()
    still_usable(m)


def test_unknown_namespace(node: Any, m: Any) -> None:
    snap = Snapshot(node)
    errs = edit(m, f'<config xmlns="{NC_NS}"><gadget xmlns="urn:example:nothing"><x>1</x></gadget></config>')
    assert [e["tag"] for e in errs] == ["unknown-namespace"]
    assert errs[0]["type"] in ("application", "protocol")
    assert errs[0]["info"].get("bad-namespace") == "urn:example:nothing"
    assert snap.unchanged()
    still_usable(m)


def test_unknown_element(node: Any, m: Any) -> None:
    snap = Snapshot(node)
    lid = new_uuid()
    errs = edit(m, links_config(f"<qkd_link><qkdl_id>{lid}</qkdl_id><frobnication>1</frobnication></qkd_link>"))
    assert [e["tag"] for e in errs] == ["unknown-element"]
    assert errs[0]["type"] == "application"
    assert errs[0]["info"].get("bad-element") == "frobnication"
    assert snap.unchanged()
    still_usable(m)


def test_state_data_in_edit_is_refused(node: Any, m: Any) -> None:
    snap = Snapshot(node)
    cfg = (f'<config xmlns="{NC_NS}"><qkd_node xmlns="{QKD_NS}">'
           f'<qkdn_status xmlns:t="{QKD_TYPES_NS}">t:OFF</qkdn_status></qkd_node></config>')
    errs = edit(m, cfg)
    assert [e["tag"] for e in errs] == ["invalid-value"]  # libyang: unexpected state node
    assert canonical_path(errs[0]) == f"/{{{QKD_NS}}}qkd_node/{{{QKD_NS}}}qkdn_status"
    assert snap.unchanged()
    still_usable(m)


@pytest.mark.parametrize("kind,leaf,value", [("PHYS", "virt_bandwidth", "5"), ("VIRT", "phys_wavelength", "20"),
                                             (None, "phys_wavelength", "20")])
def test_when_violation(node: Any, m: Any, kind: str | None, leaf: str, value: str) -> None:
    """RFC 7950 8.3.1: data whose 'when' is false is an unknown-element."""
    snap = Snapshot(node)
    lid = new_uuid()
    type_leaf = f'<qkdl_type xmlns:t="{QKD_TYPES_NS}">t:{kind}</qkdl_type>' if kind else ""
    errs = edit(m, links_config(f"<qkd_link><qkdl_id>{lid}</qkdl_id>{type_leaf}<{leaf}>{value}</{leaf}></qkd_link>"))
    assert [e["tag"] for e in errs] == ["unknown-element"]
    assert errs[0]["type"] == "application"
    assert errs[0]["info"].get("bad-element") == leaf
    assert canonical_path(errs[0]) == link_path(lid, leaf)
    assert snap.unchanged()
    still_usable(m)


def test_when_turning_false_deletes_dependent_leaves(node: Any, m: Any, committed: str) -> None:
    """Not an error: RFC 7950 8.3.2 / 7.21.5, a committed phys_* leaf whose 'when' becomes false
    (the link turns VIRT) is deleted with the change, not reported."""
    body = (f'<qkd_link><qkdl_id>{committed}</qkdl_id><qkdl_type xmlns:t="{QKD_TYPES_NS}">t:VIRT</qkdl_type>'
            "<virt_bandwidth>10</virt_bandwidth></qkd_link>")
    assert m.edit_config(links_config(body), target="candidate").ok
    entry = m.get_config("candidate").data_ele.find(".//q:qkd_link", NSMAP)
    assert [etree.QName(c).localname for c in entry] == ["qkdl_id", "qkdl_type", "virt_bandwidth"]
    assert m.commit().ok


def test_lock_conflicts(node: Any, connect: Any) -> None:
    holder, other = connect(), connect()
    other.raise_mode = RaiseMode.NONE
    assert holder.lock("candidate").ok
    snap = Snapshot(node)
    (err,) = rpc_errors(parse_reply(other.lock("candidate").xml))
    assert (err["tag"], err["type"], err["info"]) == ("lock-denied", "protocol", {"session-id": holder.session_id})
    (err,) = rpc_errors(parse_reply(other.edit_config(links_config(link_xml(new_uuid())), target="candidate").xml))
    assert (err["tag"], err["type"]) == ("in-use", "protocol")
    assert snap.unchanged()
    assert other.get_config("candidate").ok
    holder.unlock("candidate")
    still_usable(other)


def test_counters_follow_errors(node: Any, m: Any) -> None:
    before = node.call(lambda: node.node.netconf.stats.out_rpc_errors)
    edit(m, links_config(link_xml(new_uuid(), kind=None, operation="delete")))
    assert node.call(lambda: node.node.netconf.stats.out_rpc_errors) == before + 1
