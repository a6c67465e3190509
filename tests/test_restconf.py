"""RESTCONF (RFC 8040) over real HTTPS on loopback, on the same datastores as NETCONF."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from lxml import etree

from conftest import (
    HOST, PASSWORD, USERNAME, NodeHandle, LoopThread, NSMAP, QKD_NS, link_ids, link_xml, links_config,
    new_uuid, node_config, start_node,
)

pytestmark = pytest.mark.timeout(30)

QKD = "etsi-qkd-sdn-node"
LINKS = f"/restconf/data/{QKD}:qkd_node/qkd_links"
RC_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf"
NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def xml(self) -> etree._Element:
        return etree.fromstring(self.body)

    def error(self) -> dict[str, Any]:
        return self.json()["ietf-restconf:errors"]["error"][0]


@dataclass
class Restconf:
    port: int
    ca: Path
    client_cert: tuple[Path, Path]
    other_cert: tuple[Path, Path]

    def request(self, method: str, path: str, body: str | dict | None = None, *, ctype: str = "json",
                accept: str = "application/yang-data+json", auth: tuple[str, str] | None = (USERNAME, PASSWORD),
                cert: tuple[Path, Path] | None = None) -> Reply:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        conn = http.client.HTTPSConnection(HOST, self.port, context=ctx, timeout=10)
        headers = {"Accept": accept}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        data = None
        if body is not None:
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            headers["Content-Type"] = f"application/yang-data+{ctype}"
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()


@pytest.fixture
def rnode(tmp_path: Path, node_loop: LoopThread) -> Iterator[tuple[NodeHandle, Restconf]]:
    from qkdnode.pki import CertificateAuthority

    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue_server("n1", tmp_path / "pki")
    admin = ca.issue("admin", tmp_path / "pki", client=True, stem="user-admin")
    stranger = ca.issue("mallory", tmp_path / "pki", client=True, stem="user-mallory")
    sd = tmp_path / "state-n1"
    raw = node_config("n1", sd)
    raw["pki"] = {"ca": str(ca.cert_path), "cert": str(server.cert), "key": str(server.key)}
    raw["restconf"] = {"host": HOST, "port": 0}
    h = start_node(node_loop, raw)
    rc = Restconf(h.node.restconf_port, ca.cert_path, (admin.cert, admin.key), (stranger.cert, stranger.key))
    yield h, rc
    h.stop()


def link_json(lid: str, **extra: Any) -> dict[str, Any]:
    entry = {"qkdl_id": lid, "qkdl_type": "etsi-qkd-node-types:PHYS", "phys_channel_att": "3.5",
             "phys_wavelength": "20", **extra}
    return {f"{QKD}:qkd_link": [entry]}


def link_path(lid: str) -> str:
    return f"{LINKS}/qkd_link={quote(lid, safe='')}"


# -- discovery and reading ----------------------------------------------------------------------
def test_host_meta_and_root(rnode: tuple[NodeHandle, Restconf]) -> None:
    _, rc = rnode
    r = rc.request("GET", "/.well-known/host-meta", auth=None)
    assert r.status == 200 and b'rel="restconf"' in r.body and b'href="/restconf"' in r.body
    r = rc.request("GET", "/restconf/yang-library-version")
    assert r.json() == {"ietf-restconf:yang-library-version": "2019-01-04"}
    r = rc.request("GET", "/restconf/data/ietf-yang-library:yang-library")
    assert r.status == 200, r.body
    mods = {m["name"] for ms in r.json()["ietf-yang-library:yang-library"]["module-set"] for m in ms["module"]}
    assert QKD in mods
    r = rc.request("GET", "/restconf/operations")
    assert "ietf-netconf:get-config" in r.json()["ietf-restconf:operations"]
    r = rc.request("GET", f"/restconf/yang/{QKD}")
    assert r.status == 200 and b"module etsi-qkd-sdn-node {" in r.body
    assert rc.request("GET", "/restconf/yang/no-such-module").status == 404


def test_get_data_json_and_xml(rnode: tuple[NodeHandle, Restconf]) -> None:
    h, rc = rnode
    r = rc.request("GET", f"/restconf/data/{QKD}:qkd_node")
    assert r.status == 200, r.body
    assert r.headers["content-type"].startswith("application/yang-data+json")
    node = r.json()[f"{QKD}:qkd_node"]
    assert node["qkdn_id"]
    r = rc.request("GET", f"/restconf/data/{QKD}:qkd_node", accept="application/yang-data+xml")
    assert r.headers["content-type"].startswith("application/yang-data+xml")
    assert r.xml().findtext("q:qkdn_id", namespaces=NSMAP) == node["qkdn_id"]
    whole = rc.request("GET", "/restconf/data?content=config").json()["ietf-restconf:data"]
    assert f"{QKD}:qkd_node" in whole
    assert "ietf-netconf-monitoring:netconf-state" not in whole
    state = rc.request("GET", "/restconf/data?content=nonconfig").json()["ietf-restconf:data"]
    assert "ietf-netconf-monitoring:netconf-state" in state
    shallow = rc.request("GET", f"/restconf/data/{QKD}:qkd_node?depth=1").json()[f"{QKD}:qkd_node"]
    assert shallow == {}
    assert rc.request("GET", f"/restconf/data/{QKD}:qkd_node?depth=0").status == 400


# -- writing -------------------------------------------------------------------------------------
def test_put_post_patch_delete_link(rnode: tuple[NodeHandle, Restconf]) -> None:
    h, rc = rnode
    a, b = new_uuid(), new_uuid()
    r = rc.request("PUT", link_path(a), link_json(a))
    assert r.status == 201, r.body
    assert a in link_ids(h.running_xml())
    assert rc.request("PUT", link_path(a), link_json(a, qkdl_enable=False)).status == 204
    got = rc.request("GET", link_path(a)).json()[f"{QKD}:qkd_link"][0]
    assert got["qkdl_enable"] is False
    r = rc.request("POST", LINKS, link_json(b))
    assert r.status == 201, r.body
    assert r.headers["location"].endswith(f"/restconf/data/{QKD}:qkd_node/qkd_links/qkd_link={b}")
    r = rc.request("PATCH", link_path(b), {f"{QKD}:qkd_link": [{"qkdl_id": b, "qkdl_enable": False}]})
    assert r.status == 204, r.body
    got = rc.request("GET", link_path(b), accept="application/yang-data+xml").xml()
    assert got.findtext("q:qkdl_enable", namespaces=NSMAP) == "false"
    assert got.findtext("q:phys_wavelength", namespaces=NSMAP) == "20"  # merged, not replaced
    assert rc.request("DELETE", link_path(a)).status == 204
    assert a not in link_ids(h.running_xml()) and b in link_ids(h.running_xml())
    # XML body
    c = new_uuid()
    xml = link_xml(c).replace("<qkd_link>", f'<qkd_link xmlns="{QKD_NS}">', 1)
    r = rc.request("PUT", link_path(c), xml, ctype="xml")
    assert r.status == 201, r.body
    assert c in link_ids(h.running_xml())
    assert h.candidate_xml() == h.running_xml()  # RESTCONF never leaves the candidate dirty


def test_errors(rnode: tuple[NodeHandle, Restconf]) -> None:
    h, rc = rnode
    a = new_uuid()
    before = h.running_xml()
    r = rc.request("PUT", link_path(a), link_json(a, qkdl_enable="maybe"))
    assert r.status == 400, r.body
    err = r.error()
    assert err["error-tag"] == "invalid-value" and err["error-type"] == "application"
    assert "qkdl_enable" in err["error-path"] and err["error-path"].startswith(f"/{QKD}:qkd_node")
    r = rc.request("PUT", link_path(a), json.dumps(link_json(a, qkdl_enable="maybe")).encode().decode(),
                   accept="application/yang-data+xml")
    xerr = r.xml().find(f"{{{RC_NS}}}error")
    assert xerr.findtext(f"{{{RC_NS}}}error-tag") == "invalid-value"
    assert xerr.findtext(f"{{{RC_NS}}}error-path")
    assert h.running_xml() == before and h.candidate_xml() == before
    assert rc.request("POST", LINKS, link_json(a)).status == 201
    r = rc.request("POST", LINKS, link_json(a))
    assert r.status == 409 and r.error()["error-tag"] == "data-exists"
    r = rc.request("DELETE", link_path(new_uuid()))
    assert r.status == 404 and r.error()["error-tag"] == "data-missing"
    r = rc.request("PATCH", link_path(new_uuid()), link_json(new_uuid()))
    assert r.status == 409 and r.error()["error-tag"] == "data-missing"
    r = rc.request("PUT", link_path(new_uuid()), link_json(a))  # keys differ from the URI
    assert r.status == 400 and r.error()["error-tag"] == "invalid-value"
    r = rc.request("GET", "/restconf/data/no-such-module:x")
    assert r.status == 400 and r.error()["error-tag"] == "invalid-value"
    r = rc.request("PUT", link_path(a), "{not json")
    assert r.status == 400
    assert h.candidate_xml() == h.running_xml()


# -- one datastore, two protocols ---------------------------------------------------------------
def test_restconf_edit_seen_over_netconf_with_notification(rnode: tuple[NodeHandle, Restconf]) -> None:
    from conftest import nc_connect, close_quietly

    h, rc = rnode
    m = nc_connect(h)
    try:
        assert m.create_subscription().ok
        a = new_uuid()
        assert rc.request("PUT", link_path(a), link_json(a)).status == 201
        notif = m.take_notification(timeout=5)
        assert notif is not None, "no netconf-config-change after a RESTCONF write"
        cc = notif.notification_ele.find("ncn:netconf-config-change", NSMAP)
        assert cc is not None
        targets = [t.text for t in cc.iterfind("ncn:edit/ncn:target", NSMAP)]
        assert any(a in (t or "") for t in targets), targets
        assert a in link_ids(m.get_config(source="running").data_xml)
    finally:
        close_quietly(m)


def test_netconf_edit_seen_over_restconf(rnode: tuple[NodeHandle, Restconf]) -> None:
    from conftest import nc_connect, close_quietly

    h, rc = rnode
    m = nc_connect(h)
    try:
        a = new_uuid()
        m.edit_config(links_config(link_xml(a)), target="candidate")
        m.commit()
        r = rc.request("GET", link_path(a))
        assert r.status == 200 and r.json()[f"{QKD}:qkd_link"][0]["qkdl_id"] == a
    finally:
        close_quietly(m)


def test_locked_candidate_refuses_restconf_write(rnode: tuple[NodeHandle, Restconf]) -> None:
    from conftest import nc_connect, close_quietly

    h, rc = rnode
    m = nc_connect(h)
    try:
        before = h.running_xml()
        with m.locked("candidate"):
            a = new_uuid()
            r = rc.request("PUT", link_path(a), link_json(a))
            assert r.status == 409 and r.error()["error-tag"] == "in-use", r.body
            assert h.running_xml() == before
        # uncommitted NETCONF changes (no lock): RESTCONF does not commit them for the other session
        b = new_uuid()
        m.edit_config(links_config(link_xml(b)), target="candidate")
        r = rc.request("PUT", link_path(a), link_json(a))
        assert r.status == 409 and r.error()["error-tag"] == "in-use"
        assert h.running_xml() == before
        m.discard_changes()
        assert rc.request("PUT", link_path(a), link_json(a)).status == 201
    finally:
        close_quietly(m)


# -- authentication ------------------------------------------------------------------------------
def test_authentication(rnode: tuple[NodeHandle, Restconf]) -> None:
    _, rc = rnode
    path = f"/restconf/data/{QKD}:qkd_node"
    r = rc.request("GET", path, auth=None)
    assert r.status == 401 and r.headers.get("www-authenticate", "").startswith("Basic")
    assert r.error()["error-tag"] == "access-denied"
    assert rc.request("GET", path, auth=(USERNAME, "wrong")).status == 401
    assert rc.request("GET", path, auth=("nobody", PASSWORD)).status == 401
    assert rc.request("GET", path, auth=None, cert=rc.client_cert).status == 200
    # a CA-signed certificate whose CN is no NETCONF user is not enough
    assert rc.request("GET", path, auth=None, cert=rc.other_cert).status == 401
