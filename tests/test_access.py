"""Access control: SSH password and public-key login, NACM (RFC 8341) over NETCONF and RESTCONF with
the shipped `admin` and `operator` groups, a path rule, the recovery user, the ETSI 014 and 004
authorization matrix, and the forwarder refusing a valid certificate of a non-neighbour.

Real servers on 127.0.0.1: one node (NETCONF over SSH + RESTCONF over HTTPS) for the NACM tests,
two KMEs for 014, two KMSes for 004 (fixture of tests/test_etsi004.py), a chain of forwarders
(tests/test_forwarder.py).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import grpc
import pytest
from lxml import etree

from conftest import (
    BASE_10, BASE_11, HOST, NC_NS, NSMAP, QKD_NS, LoopThread, NodeHandle, RawNetconf, link_ids, link_xml,
    links_config, new_uuid, node_config, rpc_errors, start_node,
)
from test_etsi004 import net, open_pair  # noqa: F401 - the 004 fixture
from test_etsi004 import pb as pb004
from test_forwarder import ROUTE, _prepare, _stub, close_chain, make_chain

pytestmark = pytest.mark.timeout(90)

NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
QKD = "etsi-qkd-sdn-node"
USERS = {"admin": "admin-pw", "oper": "oper-pw", "linkops": "linkops-pw", "root": "root-pw"}


@dataclass
class AccessNode:
    h: NodeHandle
    key: asyncssh.SSHKey  # the private key of user `keyuser`
    restconf_port: int
    ca: Path

    def rc(self, method: str, path: str, user: str, body: Any = None) -> tuple[int, Any]:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection(HOST, self.restconf_port, context=ctx, timeout=15)
        headers = {"Accept": "application/yang-data+json",
                   "Authorization": "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/yang-data+json"
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
        finally:
            conn.close()


@pytest.fixture(scope="module")
def anode(node_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessNode]:
    from qkdnode.pki import CertificateAuthority

    tmp = tmp_path_factory.mktemp("access")
    key = asyncssh.generate_private_key("ssh-ed25519")
    ca = CertificateAuthority(tmp / "pki")
    server = ca.issue_server("n1", tmp / "pki")
    raw = node_config("acc", tmp / "state")
    raw["netconf"]["users"] = [
        {"username": "admin", "password": USERS["admin"], "groups": ["admin"]},
        {"username": "oper", "password": USERS["oper"], "groups": ["operator"]},
        {"username": "linkops", "password": USERS["linkops"], "groups": ["linkops"]},
        {"username": "keyuser", "authorized_keys": [key.export_public_key("openssh").decode()],
         "groups": ["operator"]},
        {"username": "root", "password": USERS["root"], "groups": [], "recovery": True},
    ]
    raw["pki"] = {"ca": str(ca.cert_path), "cert": str(server.cert), "key": str(server.key)}
    raw["restconf"] = {"host": HOST, "port": 0}
    h = start_node(node_loop, raw, "admin", USERS["admin"])
    yield AccessNode(h, key, h.node.restconf_port, ca.cert_path)
    h.stop()


async def nc(a: AccessNode, user: str, *, password: str | None = None, key: asyncssh.SSHKey | None = None) -> RawNetconf:
    """A logged-in NETCONF session (base:1.1) as `user`."""
    h = a.h
    conn = await asyncssh.connect(
        h.host, h.port, username=user, password=password if key is None else None,
        client_keys=[key] if key is not None else None, known_hosts=([h.host_public_key], [], []), agent_path=None,
    )
    writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
    c = RawNetconf(conn, writer, reader)
    await c.hello(BASE_10, BASE_11)
    return c


async def as_user(a: AccessNode, user: str) -> RawNetconf:
    return await nc(a, user, password=USERS[user])


def tags(reply: etree._Element) -> list[str]:
    return [e["tag"] for e in rpc_errors(reply)]


def has_nacm(reply: etree._Element) -> bool:
    return reply.find(f".//{{{NACM_NS}}}nacm") is not None


EDIT_LINK = "<edit-config><target><candidate/></target><config>{}</config></edit-config>"


# -- SSH authentication ---------------------------------------------------------------------------
async def test_password_and_public_key_login(anode: AccessNode) -> None:
    c = await nc(anode, "keyuser", key=anode.key)
    try:
        assert c.server_hello is not None
        reply = await c.rpc("<get-config><source><running/></source></get-config>")
        assert reply.find("nc:data", NSMAP) is not None
    finally:
        await c.close()
    other = asyncssh.generate_private_key("ssh-ed25519")
    for user, kw in (("keyuser", {"key": other}), ("oper", {"password": "wrong"}), ("nobody", {"password": "x"}),
                     ("keyuser", {"password": ""}), ("admin", {"key": anode.key})):
        with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
            await nc(anode, user, **kw)
    c = await as_user(anode, "oper")
    await c.close()


# -- NACM over NETCONF ------------------------------------------------------------------------------
async def test_operator_reads_but_does_not_write(anode: AccessNode) -> None:
    before = anode.h.running_xml(), anode.h.candidate_xml()
    c = await as_user(anode, "oper")
    try:
        reply = await c.rpc("<get-config><source><running/></source></get-config>")
        assert reply.find("nc:data/q:qkd_node/q:qkdn_id", NSMAP) is not None
        assert not has_nacm(reply)  # /nacm is nacm:default-deny-all
        reply = await c.rpc("<get/>")
        assert reply.find("nc:data/q:qkd_node", NSMAP) is not None and not has_nacm(reply)
        reply = await c.rpc('<get-config><source><running/></source><filter type="xpath" select="/*"/></get-config>')
        assert reply.find("nc:data/q:qkd_node", NSMAP) is not None and not has_nacm(reply)
        for op in (EDIT_LINK.format(links_config(link_xml(new_uuid())).removeprefix(f'<config xmlns="{NC_NS}">')
                                    .removesuffix("</config>")),
                   "<commit/>", "<discard-changes/>", "<lock><target><candidate/></target></lock>",
                   "<copy-config><target><candidate/></target><source><running/></source></copy-config>",
                   "<delete-config><target><candidate/></target></delete-config>",
                   "<kill-session><session-id>999</session-id></kill-session>"):
            reply = await c.rpc(op)
            assert tags(reply) == ["access-denied"], (op, etree.tostring(reply))
            assert rpc_errors(reply)[0]["type"] == "protocol"
    finally:
        await c.close()
    assert (anode.h.running_xml(), anode.h.candidate_xml()) == before
    c = await as_user(anode, "admin")
    try:
        reply = await c.rpc("<get-config><source><running/></source></get-config>")
        assert has_nacm(reply)
        groups = {g.findtext(f"{{{NACM_NS}}}name"): {u.text for u in g.iterfind(f"{{{NACM_NS}}}user-name")}
                  for g in reply.iterfind(f".//{{{NACM_NS}}}group")}
        assert groups["admin"] == {"admin"} and groups["operator"] == {"oper", "keyuser"}
        state = await c.rpc(f'<get><filter type="subtree"><nacm xmlns="{NACM_NS}"/></filter></get>')
        assert int(state.findtext(f".//{{{NACM_NS}}}denied-operations")) >= 7
    finally:
        await c.close()


async def _admin_edit(a: AccessNode, config: str) -> None:
    c = await as_user(a, "admin")
    try:
        reply = await c.rpc(EDIT_LINK.format(config))
        assert reply.find("nc:ok", NSMAP) is not None, etree.tostring(reply)
        reply = await c.rpc("<commit/>")
        assert reply.find("nc:ok", NSMAP) is not None, etree.tostring(reply)
    finally:
        await c.close()


LINKOPS_NACM = (
    f'<nacm xmlns="{NACM_NS}"><groups><group><name>linkops</name><user-name>linkops</user-name></group></groups>'
    "<rule-list><name>linkops</name><group>linkops</group><rule><name>links</name>"
    f'<module-name>{QKD}</module-name><path xmlns:q="{QKD_NS}">/q:qkd_node/q:qkd_links</path>'
    "<access-operations>create update delete</access-operations><action>permit</action></rule>"
    "</rule-list></nacm>"
)


async def test_path_rule_permits_only_its_subtree(anode: AccessNode) -> None:
    await _admin_edit(anode, LINKOPS_NACM)
    lid = new_uuid()
    c = await as_user(anode, "linkops")
    try:
        body = links_config(link_xml(lid)).removeprefix(f'<config xmlns="{NC_NS}">').removesuffix("</config>")
        reply = await c.rpc(EDIT_LINK.format(body))
        assert reply.find("nc:ok", NSMAP) is not None, etree.tostring(reply)
        assert (await c.rpc("<commit/>")).find("nc:ok", NSMAP) is not None
        assert lid in link_ids(anode.h.running_xml())
        before = anode.h.running_xml(), anode.h.candidate_xml()
        reply = await c.rpc(EDIT_LINK.format(f'<qkd_node xmlns="{QKD_NS}"><qkdn_location_id>x</qkdn_location_id>'
                                             "</qkd_node>"))
        errs = rpc_errors(reply)
        assert [e["tag"] for e in errs] == ["access-denied"]
        assert errs[0]["path"] is not None and "qkdn_location_id" in errs[0]["path"]
        # writing NACM itself is default-deny-all
        reply = await c.rpc(EDIT_LINK.format(f'<nacm xmlns="{NACM_NS}"><enable-nacm>false</enable-nacm></nacm>'))
        assert tags(reply) == ["access-denied"]
        assert (anode.h.running_xml(), anode.h.candidate_xml()) == before
    finally:
        await c.close()
    # over RESTCONF the same rules hold
    status, _ = anode.rc("POST", f"/restconf/data/{QKD}:qkd_node/qkd_links", "linkops",
                         {f"{QKD}:qkd_link": [{"qkdl_id": new_uuid()}]})
    assert status == 201
    status, body = anode.rc("PATCH", f"/restconf/data/{QKD}:qkd_node", "linkops",
                            {f"{QKD}:qkd_node": {"qkdn_location_id": "y"}})
    assert status == 403 and body["ietf-restconf:errors"]["error"][0]["error-tag"] == "access-denied"


async def test_restconf_operator_reads_but_does_not_write(anode: AccessNode) -> None:
    status, body = anode.rc("GET", "/restconf/data", "oper")
    assert status == 200
    assert f"{QKD}:qkd_node" in body["ietf-restconf:data"]
    assert "ietf-netconf-acm:nacm" not in body["ietf-restconf:data"]
    status, body = anode.rc("GET", "/restconf/data/ietf-netconf-acm:nacm", "oper")
    assert status == 404  # hidden, as if absent
    status, body = anode.rc("GET", "/restconf/data", "admin")
    assert status == 200 and "ietf-netconf-acm:nacm" in body["ietf-restconf:data"]
    before = anode.h.running_xml()
    lid = new_uuid()
    for method, path, payload in (
        ("POST", f"/restconf/data/{QKD}:qkd_node/qkd_links", {f"{QKD}:qkd_link": [{"qkdl_id": lid}]}),
        ("PATCH", f"/restconf/data/{QKD}:qkd_node", {f"{QKD}:qkd_node": {"qkdn_location_id": "z"}}),
        ("PUT", f"/restconf/data/{QKD}:qkd_node/qkdn_location_id", {f"{QKD}:qkdn_location_id": "z"}),
        ("DELETE", f"/restconf/data/{QKD}:qkd_node/qkd_interfaces", None),
        ("PUT", "/restconf/data", {"ietf-restconf:data": {}}),
    ):
        status, body = anode.rc(method, path, "oper", payload)
        assert status == 403, (method, path, status, body)
        err = body["ietf-restconf:errors"]["error"][0]
        assert err["error-tag"] == "access-denied" and err["error-type"] == "protocol"
    assert anode.h.running_xml() == before
    status, _ = anode.rc("POST", f"/restconf/data/{QKD}:qkd_node/qkd_links", "admin",
                         {f"{QKD}:qkd_link": [{"qkdl_id": lid}]})
    assert status == 201


async def test_recovery_user_repairs_a_locked_out_nacm(anode: AccessNode) -> None:
    # admin removes its own rule-list: from then on write-default (deny) applies to admin too
    c = await as_user(anode, "admin")
    try:
        reply = await c.rpc(EDIT_LINK.format(
            f'<nacm xmlns="{NACM_NS}" xmlns:nc="{NC_NS}"><rule-list nc:operation="delete"><name>admin</name>'
            "</rule-list></nacm>"))
        assert reply.find("nc:ok", NSMAP) is not None, etree.tostring(reply)
        assert (await c.rpc("<commit/>")).find("nc:ok", NSMAP) is not None
        reply = await c.rpc(EDIT_LINK.format(f'<qkd_node xmlns="{QKD_NS}"><qkdn_location_id>w</qkdn_location_id>'
                                             "</qkd_node>"))
        assert tags(reply) == ["access-denied"]
    finally:
        await c.close()
    restore = (f'<nacm xmlns="{NACM_NS}"><rule-list><name>admin</name><group>admin</group><rule><name>all</name>'
               "<module-name>*</module-name><access-operations>*</access-operations><action>permit</action>"
               "</rule></rule-list></nacm>")
    r = await as_user(anode, "root")  # the recovery user: NACM does not apply
    try:
        assert has_nacm(await r.rpc("<get-config><source><running/></source></get-config>"))
        assert (await r.rpc(EDIT_LINK.format(restore))).find("nc:ok", NSMAP) is not None
        assert (await r.rpc("<commit/>")).find("nc:ok", NSMAP) is not None
    finally:
        await r.close()
    await _admin_edit(anode, f'<qkd_node xmlns="{QKD_NS}"><qkdn_location_id>w</qkdn_location_id></qkd_node>')


# -- ETSI 014: who may fetch which keys -------------------------------------------------------------
@dataclass
class Kmes:
    stores: dict[str, Any]
    servers: dict[str, Any]
    certs: dict[str, Any]
    tmp: Path

    async def call(self, node: str, cert: Any, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        from qkdnode.pki import client_context

        url = f"https://127.0.0.1:{self.servers[node].port}/api/v1/keys/{path}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(cert))) as s:
            async with s.request(method, url, **kw) as r:
                return r.status, json.loads(await r.text())


@pytest.fixture
async def kmes(tmp_path: Path) -> AsyncIterator[Kmes]:
    from test_etsi014 import stream

    from qkdnode.keystore import KeyStore, NeighbourResolver, SaeDirectory, start_etsi014_server
    from qkdnode.pki import CertificateAuthority, server_context

    ca = CertificateAuthority(tmp_path / "ca")
    certs = {s: ca.issue_client(s, tmp_path / "sae") for s in ("a1", "a2", "b1", "b2", "c1", "zz")}
    certs["node-A"] = ca.issue_server("node-A", tmp_path / "nodes")
    saes = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"}
    stores = {"A": KeyStore(tmp_path / "A"), "B": KeyStore(tmp_path / "B")}
    stores["A"].add_association("A-B", "A", "B", master_parity=0, max_keys_per_request=16)
    stores["B"].add_association("B-A", "B", "A", master_parity=1, max_keys_per_request=16)
    keys = stream(100)
    stores["A"].ingest("A-B", keys)
    stores["B"].ingest("B-A", keys)
    servers = {}
    for node in ("A", "B"):
        directory = SaeDirectory(node, dict(saes))
        servers[node], _ = await start_etsi014_server(
            stores[node], directory, NeighbourResolver.from_store(directory, stores[node]),
            server_context(ca.issue_server(f"kme-{node}", tmp_path / "nodes")))
    yield Kmes(stores, servers, certs, tmp_path)
    for s in servers.values():
        await s.stop()
    for st in stores.values():
        st.close()


def counts(k: Kmes) -> tuple[int, ...]:
    a, b = k.stores["A"].stats("A-B"), k.stores["B"].stats("B-A")
    return a.delivered, a.available_total, b.delivered, b.available_total


async def test_etsi014_authorization_matrix(kmes: Kmes) -> None:
    status, got = await kmes.call("A", kmes.certs["a1"], "POST", "b1/enc_keys", json={"number": 2})
    assert status == 200
    ids = [k["key_ID"] for k in got["keys"]]
    before = counts(kmes)
    # (KME, caller, method, path, expected status)
    matrix = [
        ("A", "a1", "GET", "b1/status", 200),
        ("A", "a2", "GET", "b2/status", 200),
        ("A", "a1", "GET", "a2/status", 401),       # both at A: no association
        ("A", "b1", "GET", "a1/status", 401),       # b1 is attached to B, not to A
        ("A", "c1", "GET", "b1/status", 401),       # c1's KME is C
        ("A", "zz", "GET", "b1/status", 401),       # a valid certificate of an unknown SAE
        ("A", "node-A", "GET", "b1/status", 401),   # a node certificate is not an SAE
        ("A", "a1", "GET", "c1/enc_keys", 401),     # no association A-C
        ("A", "b1", "GET", f"a1/dec_keys?key_ID={ids[0]}", 401),  # the slave must ask its own KME
        ("A", "a1", "GET", f"b1/dec_keys?key_ID={ids[0]}", 400),  # a master cannot fetch its own key by ID
        ("B", "a1", "GET", f"a1/dec_keys?key_ID={ids[0]}", 401),  # a1 is not attached to B
        ("B", "zz", "GET", f"a1/dec_keys?key_ID={ids[0]}", 401),
        ("B", "b1", "GET", f"c1/dec_keys?key_ID={ids[0]}", 401),  # no association B-C
    ]
    for node, caller, method, path, expected in matrix:
        status, body = await kmes.call(node, kmes.certs[caller], method, path)
        assert status == expected, (node, caller, path, status, body)
        assert set(body) >= ({"message"} if expected != 200 else set()), body
    assert counts(kmes) == before  # refusals consumed nothing
    status, dec = await kmes.call("B", kmes.certs["b1"], "GET", f"a1/dec_keys?key_ID={ids[0]}")
    assert status == 200 and dec["keys"] == got["keys"][:1]


async def test_etsi014_unknown_ca_or_no_certificate_fails_tls(kmes: Kmes) -> None:
    from qkdnode.pki import CertificateAuthority, CertPaths, client_context

    rogue = CertificateAuthority(kmes.tmp / "rogue").issue_client("a1", kmes.tmp / "rogue-sae")
    url = f"https://127.0.0.1:{kmes.servers['A'].port}/api/v1/keys/b1/status"
    ctx_rogue = client_context(CertPaths(rogue.cert, rogue.key, kmes.certs["a1"].ca))
    ctx_none = ssl.create_default_context(cafile=str(kmes.certs["a1"].ca))
    for ctx in (ctx_rogue, ctx_none):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url) as r:
                    await r.read()


# -- ETSI 004 ---------------------------------------------------------------------------------------
async def test_etsi004_authorization_matrix(net: Any) -> None:  # noqa: F811 - the imported fixture
    ca, cb, ksid = await open_pair(net)
    try:
        # (client's SAE, KMS, source, destination, expected code or None for success)
        async with net.client("a2") as a2, net.client("b2") as b2, net.client("b1", "alice") as wrong_kms:
            for client, call in (
                (a2, a2.get_key(ksid)),           # a2 is not in the stream
                (b2, b2.get_key(ksid)),           # b2 neither
                (a2, a2.close(ksid)),
                (wrong_kms, wrong_kms.open_connect("b1", "a1")),  # b1 at alice's KMS
                (a2, a2.open_connect("a1", "b1")),  # the source must be the caller
            ):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        r = await ca.get_key(ksid)
        assert r.status == pb004.SUCCESSFUL
    finally:
        await ca.aclose()
        await cb.aclose()


# -- forwarder -------------------------------------------------------------------------------------
async def test_forwarder_refuses_valid_certificate_of_non_neighbour(tmp_path: Path) -> None:
    chain = await make_chain(tmp_path)
    try:
        def link_keys() -> dict:  # the route's relay associations appear in the background
            return {k: v for k, v in chain.snapshot().items() if k[1] != ROUTE}

        before = link_keys()
        for who, target in (("c", "a"), ("d", "b"), ("a", "c")):  # same CA, not a neighbour of the target
            ch, stub = _stub(chain, who, target)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.Prepare(_prepare(chain, who), timeout=5)
                assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "not a neighbour" in exc.value.details()
            finally:
                await ch.close()
        assert link_keys() == before
        assert not any(nd.fwd.pending for nd in chain.nodes.values())
    finally:
        await close_chain(chain)

