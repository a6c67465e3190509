"""Hello exchange, capabilities, session ids, ietf-netconf-monitoring and <get-schema>."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest
from lxml import etree
from ncclient.operations import RPCError
from ncclient.xml_ import to_ele

from conftest import BASE_10, BASE_11, MONITORING_NS, NSMAP, QKD_NS, QKD_TYPES_NS

pytestmark = pytest.mark.timeout(30)

REQUIRED_CAPS = [
    BASE_10,
    BASE_11,
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:validate:1.1",
    "urn:ietf:params:netconf:capability:xpath:1.0",
    "urn:ietf:params:netconf:capability:notification:1.0",
    "urn:ietf:params:netconf:capability:interleave:1.0",
]


def _module_caps(caps: list[str]) -> dict[str, dict[str, list[str]]]:
    """module name -> query parameters, for every YANG module capability."""
    out = {}
    for c in caps:
        if "?" in c and "module=" in c:
            q = parse_qs(c.split("?", 1)[1])
            out[q["module"][0]] = q | {"ns": [c.split("?", 1)[0]]}
    return out


def test_hello_capabilities(manager: Any) -> None:
    caps = list(manager.server_capabilities)
    for cap in REQUIRED_CAPS:
        assert cap in caps, cap
    wd = [c for c in caps if c.startswith("urn:ietf:params:netconf:capability:with-defaults:1.0")]
    assert len(wd) == 1
    q = parse_qs(wd[0].split("?", 1)[1])
    assert q["basic-mode"] == ["explicit"]
    assert {"report-all", "trim"} <= set(q["also-supported"][0].split(","))
    mods = _module_caps(caps)
    node = mods["etsi-qkd-sdn-node"]
    assert node["ns"] == [QKD_NS] and node["revision"] == ["2022-01-30"]
    assert mods["etsi-qkd-node-types"]["ns"] == [QKD_TYPES_NS]
    assert "qkdnet-etsi-qkd-sdn-node-deviations" in mods
    for name in ("ietf-netconf", "ietf-netconf-with-defaults", "ietf-netconf-monitoring",
                 "ietf-netconf-notifications"):
        assert name in mods, name


def test_ietf_netconf_capability_lists_its_features(manager: Any) -> None:
    feats = _module_caps(list(manager.server_capabilities))["ietf-netconf"].get("features", [""])[0].split(",")
    assert {"candidate", "validate", "xpath", "rollback-on-error"} <= set(feats)


def test_session_ids_are_distinct_and_match_monitoring(connect: Any) -> None:
    m1, m2 = connect(), connect()
    assert m1.session_id.isdigit() and m2.session_id.isdigit()
    assert m1.session_id != m2.session_id
    reply = m1.get(filter=("subtree", f'<netconf-state xmlns="{MONITORING_NS}"><sessions/></netconf-state>'))
    ids = {e.text for e in reply.data_ele.iterfind(".//mon:session/mon:session-id", NSMAP)}
    assert ids == {m1.session_id, m2.session_id}
    users = {e.text for e in reply.data_ele.iterfind(".//mon:session/mon:username", NSMAP)}
    assert users == {"admin"}


async def test_raw_hello_has_session_id_and_capabilities(node: Any, raw_netconf: Any) -> None:
    c = await raw_netconf(node)
    hello = await c.hello(BASE_10)
    assert etree.QName(hello).localname == "hello"
    sid = hello.findtext("nc:session-id", namespaces=NSMAP)
    assert sid is not None and int(sid) >= 1
    caps = [e.text for e in hello.iterfind("nc:capabilities/nc:capability", NSMAP)]
    for cap in REQUIRED_CAPS:
        assert cap in caps


def test_monitoring_schemas_and_get_schema(manager: Any) -> None:
    reply = manager.get(filter=("subtree", f'<netconf-state xmlns="{MONITORING_NS}"><schemas/></netconf-state>'))
    schemas = reply.data_ele.findall(".//mon:schemas/mon:schema", NSMAP)
    names = [s.findtext("mon:identifier", namespaces=NSMAP) for s in schemas]
    assert "etsi-qkd-sdn-node" in names and "etsi-qkd-node-types" in names
    assert len(names) == len(set(names))
    for s in schemas:
        ident = s.findtext("mon:identifier", namespaces=NSMAP)
        version = s.findtext("mon:version", namespaces=NSMAP)
        fmt = s.find("mon:format", NSMAP)
        prefix, _, local = fmt.text.rpartition(":")  # an identityref: ncm:yang
        assert local == "yang" and fmt.nsmap.get(prefix or None) == MONITORING_NS
        r = manager.get_schema(ident, version=version or None)
        text = r.data  # ncclient hands the text content of <data>
        assert text, ident
        assert text.lstrip().startswith(("module", "submodule", "/*", "//")), ident
        assert f"module {ident}" in text, ident


def test_get_schema_of_node_module_is_its_source(manager: Any) -> None:
    from qkdnode.schema import project_yang_dir

    r = manager.get_schema("etsi-qkd-sdn-node")
    assert r.data == (project_yang_dir() / "etsi-qkd-sdn-node.yang").read_text()


@pytest.mark.parametrize(
    "ident,version",
    [("no-such-module", None), ("etsi-qkd-sdn-node", "1999-01-01")],
    ids=["unknown identifier", "unknown version"],
)
def test_get_schema_unknown_is_invalid_value(manager: Any, ident: str, version: str | None) -> None:
    with pytest.raises(RPCError) as exc:
        manager.get_schema(ident, version=version)
    assert exc.value.tag == "invalid-value"
    assert exc.value.type == "application"
    assert manager.get_config("running").ok  # the session lives on


def test_get_schema_without_identifier_is_missing_element(manager: Any) -> None:
    with pytest.raises(RPCError) as exc:
        manager.dispatch(to_ele(f'<get-schema xmlns="{MONITORING_NS}"/>'))
    assert exc.value.tag == "missing-element"


def test_monitoring_reports_datastores(manager: Any) -> None:
    reply = manager.get(filter=("subtree", f'<netconf-state xmlns="{MONITORING_NS}"><datastores/></netconf-state>'))
    names = {e.text for e in reply.data_ele.iterfind(".//mon:datastore/mon:name", NSMAP)}
    assert names == {"running", "candidate"}
