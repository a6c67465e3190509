"""Bad input for the HTTP APIs over real TLS: the ETSI 014 server (schemathesis against the OpenAPI
document it serves at /api/v1/openapi.json, plus hand-made cases) and RESTCONF (hand-made cases).

014: every answer is documented (status, content type and schema of the served OpenAPI), every
error is 400/401/503 with a JSON `message`, and the key store changes only by the keys that
200 answers handed out. RESTCONF: every error is an `ietf-restconf:errors` document with an RFC
8040 status, and running never changes. Inputs from `fuzz.driver` (bounded; `make fuzz`: long).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st

from conftest import HOST, PASSWORD, USERNAME, LoopThread, NodeHandle, node_config, start_node
from fuzz import driver as fz

pytestmark = pytest.mark.timeout(240)
SUITE_BUDGET_S = 600.0 if fz.LONG else 90.0  # `make fuzz` runs the long mode

SAES = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}


@dataclass
class Kme:
    loop: LoopThread
    store: Any
    server: Any
    certs: dict[str, Any]
    ca: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def session(self, sae: str = "a1") -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override `verify`
        s.cert = (str(self.certs[sae].cert), str(self.certs[sae].key))
        s.verify = str(self.ca)
        return s

    def counts(self) -> tuple[int, int]:
        st_ = self.loop.call(lambda: self.store.stats("A-B"))
        return st_.delivered, st_.available_total


@pytest.fixture(scope="module")
def kme(node_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kme]:
    from test_etsi014 import stream

    from qkdnode.keystore import KeyStore, NeighbourResolver, SaeDirectory
    from qkdnode.keystore.limits import ApiLimits
    from qkdnode.keystore.etsi014 import Etsi014Server
    from qkdnode.pki import CertificateAuthority, server_context

    tmp = tmp_path_factory.mktemp("fuzz-014")
    ca = CertificateAuthority(tmp / "ca")
    certs = {s: ca.issue_client(s, tmp / "sae") for s in SAES}

    async def _start() -> tuple[Any, Any]:
        store = KeyStore(tmp / "A")
        store.add_association("A-B", "A", "B", master_parity=0, max_keys_per_request=16)
        store.ingest("A-B", stream(4000))
        directory = SaeDirectory("A", dict(SAES))
        server = Etsi014Server(store, directory, NeighbourResolver.from_store(directory, store),
                               server_context(ca.issue_server("kme-A", tmp / "nodes")),
                               limits=ApiLimits(max_body=4096, rate=1e6, burst=10**6))
        await server.start()
        return store, server

    store, server = node_loop.run(_start())
    yield Kme(node_loop, store, server, certs, ca.cert_path)
    node_loop.run(server.stop())
    node_loop.call(store.close)


def _header(resp: Any, name: str) -> str:
    for key, value in resp.headers.items():
        if key.lower() == name.lower():
            return value[0] if isinstance(value, list) else str(value)
    return ""


def standard_014(resp: Any) -> bool:
    """200 with JSON, or 400/401/503 with a JSON object holding a non-empty `message`
    (a requests or a schemathesis response)."""
    if resp.status_code == 200:
        return _header(resp, "Content-Type").startswith("application/json")
    if resp.status_code not in (400, 401, 503):
        return False
    try:
        body = resp.json()
    except ValueError:
        return False
    # "internal error" is what an unexpected exception becomes: a bug, not an answer
    return isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"] not in ("", "internal error")


def delivered_in(resp: Any) -> int:
    if resp.status_code != 200 or "keys" not in resp.text:
        return 0
    return len(resp.json().get("keys", []))


# -- schemathesis against the served OpenAPI -----------------------------------------------------
def test_openapi_json_served_and_equals_yaml(kme: Kme) -> None:
    import yaml

    with kme.session() as s:
        doc = s.get(kme.base + "/api/v1/openapi.json").json()
        text = s.get(kme.base + "/api/v1/openapi.yaml").text
    assert doc == yaml.safe_load(text)
    assert set(doc["paths"]) >= {"/api/v1/keys/{slave_SAE_ID}/enc_keys", "/api/v1/keys/{master_SAE_ID}/dec_keys"}


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_014(kme: Kme, mode: str) -> None:
    import schemathesis
    from schemathesis.specs.openapi.checks import (
        content_type_conformance, negative_data_rejection, response_schema_conformance, status_code_conformance,
    )

    with kme.session() as s:
        doc = s.get(kme.base + "/api/v1/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    gen = schemathesis.GenerationMode.POSITIVE if mode == "positive" else schemathesis.GenerationMode.NEGATIVE
    session = kme.session()
    start_bad = fz.TALLY.bad_answers
    start_tried = fz.TALLY.inputs_tried
    handed_out = [0]
    before = kme.counts()
    for result in schema.get_all_operations():
        op = result.ok()
        strategy = op.as_strategy(generation_mode=gen)

        @settings(max_examples=fz.count(25, 400), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), derandomize=False)
        @given(case=strategy, real=st.booleans())
        def run(case: Any, real: bool) -> None:
            if real and mode == "positive" and case.path_parameters:  # half the cases name a real peer SAE
                for name in case.path_parameters:
                    case.path_parameters[name] = "b1"
            resp = case.call(base_url=kme.base, session=session, timeout=20, verify=str(kme.ca),
                             cert=session.cert)
            ok = standard_014(resp)
            why = ""
            try:
                checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
                if mode == "negative":
                    checks.append(negative_data_rejection)  # invalid input must get a 4xx
                case.validate_response(resp, checks=checks)
            except Exception as exc:  # a check failed: not what the served document says
                ok = False
                why = f"{type(exc).__name__}: {exc!s:.300}"
            handed_out[0] += delivered_in(resp)
            shown = "(keys)" if resp.status_code == 200 else resp.text[:200]  # never print key bytes
            fz.TALLY.record("etsi014", ok, f"{case.method} {case.formatted_path} {case.query} {case.body!r:.100}"
                                           f" -> {resp.status_code} {shown} {why}")

        try:
            run()
        except Unsatisfiable:  # no invalid variant (e.g. only unconstrained string parameters)
            assert mode == "negative", op
    session.close()
    assert fz.TALLY.inputs_tried > start_tried
    assert handed_out[0] > 0 or mode == "negative"  # valid requests did reach the key store
    after = kme.counts()
    # nothing changes but the keys that 200 answers handed out (each key once)
    assert after[0] - before[0] == handed_out[0]
    assert fz.TALLY.bad_answers == start_bad, fz.TALLY.bad_examples[-5:]


# -- hand-made 014 cases -------------------------------------------------------------------------
def hand_made_014(r: Any) -> list[tuple[str, str, dict[str, Any]]]:
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for n in fz.bad_numbers(r):
        cases.append(("POST", "b1/enc_keys", {"json": {"number": n}}))
        cases.append(("POST", "b1/enc_keys", {"json": {"number": 1, "size": n}}))
        cases.append(("GET", "b1/enc_keys", {"params": {"number": json.dumps(n)}}))
        cases.append(("GET", "b1/enc_keys", {"params": {"number": 1, "size": str(n)}}))
    for kid in fz.bad_key_ids(r):
        cases.append(("POST", "b1/dec_keys", {"json": {"key_IDs": [{"key_ID": kid}]}}))
        cases.append(("GET", "b1/dec_keys", {"params": {"key_ID": str(kid)}}))
    for b in fz.bad_base64(r):
        cases.append(("POST", "b1/dec_keys", {"json": {"key_IDs": [{"key_ID": b}]}}))
        cases.append(("POST", "b1/enc_keys", {"json": {"number": 1, "extension_mandatory": [{"key": b}]}}))
    for ctype in ("text/plain", "application/xml", "multipart/form-data", "application/x-www-form-urlencoded", ""):
        cases.append(("POST", "b1/enc_keys", {"data": b'{"number": 1}', "headers": {"Content-Type": ctype}}))
    cases += [
        ("POST", "b1/enc_keys", {"data": b"{" * 3 + b"}", "headers": {"Content-Type": "application/json"}}),
        ("POST", "b1/enc_keys", {"data": b"[" * 100000 + b"]" * 100000,
                                 "headers": {"Content-Type": "application/json"}}),  # too big
        ("POST", "b1/enc_keys", {"data": b"[" * 2000 + b"]" * 2000,
                                 "headers": {"Content-Type": "application/json"}}),  # deep JSON
        ("POST", "b1/enc_keys", {"data": b'{"number": 1' + b" " * 8000 + b"}",
                                 "headers": {"Content-Type": "application/json"}}),
        ("POST", "b1/enc_keys", {"data": "\udcff".encode("utf-8", "surrogatepass"),
                                 "headers": {"Content-Type": "application/json"}}),
        ("POST", "b1/enc_keys", {"json": {"number": 1, "additional_slave_SAE_IDs": ["b2"]}}),
        ("POST", "b1/enc_keys", {"json": [1, 2]}),
        ("POST", "b1/dec_keys", {"json": {"key_IDs": []}}),
        ("POST", "b1/dec_keys", {"json": {"key_IDs": [{"key_ID": str(uuid.uuid4())}] * 2}}),
        ("POST", "b1/dec_keys", {"json": {"key_IDs": [{"key_ID": str(uuid.uuid4())} for _ in range(40)]}}),
        ("GET", "b1/enc_keys", {"params": [("number", "1"), ("number", "2")]}),
        ("GET", "b1/enc_keys", {"params": {"bogus": "1"}}),
        ("GET", "b1/dec_keys", {}),
        ("GET", "%00/status", {}),
        ("GET", "b1%2F..%2F..%2Fstatus/status", {}),
        ("GET", "b1/enc_keys", {"params": {"number": "9" * 40}}),
    ]
    for _ in range(20):
        cases.append(("POST", r.choice(["b1/enc_keys", "b1/dec_keys"]), {"json": fz.json_noise(r)}))
    return cases


def test_hand_made_014_cases_change_nothing(kme: Kme) -> None:
    r = fz.rng("014-hand")
    before = kme.counts()
    start_bad = fz.TALLY.bad_answers
    handed_out = 0
    with kme.session() as s:
        for _ in range(fz.count(1, 20)):
            for method, path, kw in hand_made_014(r):
                resp = s.request(method, f"{kme.base}/api/v1/keys/{path}", timeout=20, **kw)
                handed_out += delivered_in(resp)
                fz.TALLY.record("etsi014", standard_014(resp) and resp.status_code != 200 or
                                resp.status_code == 200 and path.endswith("enc_keys"),
                                f"{method} {path} {str(kw)[:120]} -> {resp.status_code} "
                                f"{'(keys)' if resp.status_code == 200 else resp.text[:200]}")
        status = s.get(f"{kme.base}/api/v1/keys/b1/status", timeout=20)
        assert status.status_code == 200  # still serving
    assert fz.TALLY.bad_answers == start_bad, fz.TALLY.bad_examples[-5:]
    assert kme.counts()[0] - before[0] == handed_out


def test_014_rate_limit_per_sae(kme: Kme) -> None:
    from qkdnode.keystore.limits import SaeRateLimiter

    saved = kme.server.limiter
    kme.server.limiter = SaeRateLimiter(0.001, 3)
    try:
        before = kme.counts()
        with kme.session("a1") as s, kme.session("a2") as s2:
            codes = [s.post(f"{kme.base}/api/v1/keys/b1/enc_keys", json={"number": 1}, timeout=20)
                     for _ in range(5)]
            assert [c.status_code for c in codes] == [200, 200, 200, 503, 503]
            assert "rate" in codes[3].json()["message"]
            assert codes[3].json()["details"][0]["reason"] == "rate-limited"
            # another SAE has its own bucket
            assert s2.get(f"{kme.base}/api/v1/keys/b2/status", timeout=20).status_code == 200
        assert kme.counts()[0] - before[0] == 3  # the refused requests took nothing
    finally:
        kme.server.limiter = saved


# -- RESTCONF --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rc_node(node_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeHandle, int, Path]]:
    from qkdnode.pki import CertificateAuthority

    tmp = tmp_path_factory.mktemp("fuzz-rc")
    ca = CertificateAuthority(tmp / "pki")
    server = ca.issue_server("n1", tmp / "pki")
    raw = node_config("rcf", tmp / "state")
    raw["pki"] = {"ca": str(ca.cert_path), "cert": str(server.cert), "key": str(server.key)}
    raw["restconf"] = {"host": HOST, "port": 0}
    h = start_node(node_loop, raw)
    yield h, h.node.restconf_port, ca.cert_path
    h.stop()


QKD = "etsi-qkd-sdn-node"
RC_STATUS = {400, 401, 403, 404, 405, 409, 413, 415, 501}


def hand_made_restconf(r: Any) -> list[tuple[str, str, bytes | None, str]]:
    """(method, path, body, content type): each must be refused."""
    lid = str(uuid.uuid4())
    bad = fz.weird_text(r)
    j = "application/yang-data+json"
    x = "application/yang-data+xml"
    link = f"/restconf/data/{QKD}:qkd_node/qkd_links"
    depth = r.randrange(100, 3000)
    cases: list[tuple[str, str, bytes | None, str]] = [
        ("GET", f"/restconf/data/{QKD}:no_such_node", None, j),
        ("GET", "/restconf/data/no-such-module:x", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node/qkd_links/qkd_link=a,b,c", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node?depth=0", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node?depth=-1", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node?depth=99999999999", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node?content=bogus", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node?with-defaults=x", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node?fields=a", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node?zzz=1", None, j),
        ("GET", "/restconf/data/%ZZ", None, j),
        ("GET", f"/restconf/data/{QKD}:qkd_node/qkd_links/qkd_link={lid}", None, j),
        ("POST", "/restconf/operations/ietf-netconf:get", b"{}", j),
        ("DELETE", f"{link}/qkd_link={lid}", None, j),
        ("DELETE", "/restconf/data", None, j),
        ("PATCH", f"{link}/qkd_link={lid}", json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": lid}]}).encode(), j),
        ("POST", link, b"{", j),
        ("POST", link, b"<qkd_link", x),
        ("POST", link, json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": bad + "x"}]}).encode(), j),
        ("POST", link, json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": lid, "qkdl_enable": bad}]}).encode(), j),
        ("POST", link, json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": lid, "nope": 1}]}).encode(), j),
        ("POST", link, json.dumps({"urn:x:unknown:thing": {}}).encode(), j),
        ("POST", link, json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": lid}, {"qkdl_id": str(uuid.uuid4())}]}).encode(), j),
        ("POST", link, f'<qkd_link xmlns="urn:x:unknown"><qkdl_id>{lid}</qkdl_id></qkd_link>'.encode(), x),
        ("POST", link, ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbbbbbb"><!ENTITY c "&b;&b;&b;&b;">]>'
                        f'<qkd_link xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdl_id>&c;</qkdl_id></qkd_link>').encode(), x),
        ("POST", link, ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                        '<qkd_link xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdl_id>&x;</qkdl_id></qkd_link>').encode(), x),
        ("POST", link, (b"[" * depth + b"]" * depth), j),
        ("POST", link, ("<a>" * depth + "</a>" * depth).encode(), x),
        ("POST", link, b"x" * (1024 * 1024 + 10), j),  # beyond max body: 413
        ("POST", link, json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": lid}]}).encode(), "text/plain"),
        ("POST", link, json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": lid}]}).encode(), "application/octet-stream"),
        ("PUT", f"{link}/qkd_link={lid}", json.dumps({f"{QKD}:qkd_link": [{"qkdl_id": str(uuid.uuid4())}]}).encode(), j),
        ("PUT", f"/restconf/data/{QKD}:qkd_node/qkdn_id", json.dumps({f"{QKD}:qkdn_id": bad + "q"}).encode(), j),
        ("PUT", "/restconf/data", json.dumps({"ietf-restconf:data": {f"{QKD}:qkd_node": {"qkdn_id": bad + "q"}}}).encode(), j),
        ("PATCH", f"/restconf/data/{QKD}:qkd_node", base64.b64encode(fz.garbage(r, 30)), j),
        ("PATCH", f"/restconf/data/{QKD}:qkd_node", fz.garbage(r, r.randrange(1, 200)), j),
    ]
    return cases


def test_hand_made_restconf_cases_change_nothing(rc_node: tuple[NodeHandle, int, Path]) -> None:
    h, port, ca = rc_node
    before = h.running_xml(), h.candidate_xml()
    r = fz.rng("restconf")
    start_bad = fz.TALLY.bad_answers
    s = requests.Session()
    s.trust_env = False
    s.verify = str(ca)
    s.auth = (USERNAME, PASSWORD)
    base = f"https://127.0.0.1:{port}"
    try:
        for _ in range(fz.count(1, 20)):
            for method, path, body, ctype in hand_made_restconf(r):
                resp = s.request(method, base + path, data=body, timeout=30,
                                 headers={"Content-Type": ctype, "Accept": "application/yang-data+json"})
                ok = resp.status_code in RC_STATUS
                if ok and resp.status_code not in (405,):
                    try:
                        errs = resp.json()["ietf-restconf:errors"]["error"]
                        ok = bool(errs) and all(e["error-tag"] in fz.ERROR_TAGS and e["error-type"] in fz.ERROR_TYPES
                                                for e in errs)
                    except (ValueError, KeyError, TypeError):
                        ok = False
                fz.TALLY.record("restconf", ok, f"{method} {path} {body!r:.80} {ctype} -> {resp.status_code} "
                                                f"{resp.text[:200]}")
        # bad credentials too
        resp = s.get(base + "/restconf/data", auth=(USERNAME, "wrong"), timeout=20)
        fz.TALLY.record("restconf", resp.status_code == 401, f"bad password -> {resp.status_code}")
        assert s.get(base + f"/restconf/data/{QKD}:qkd_node", timeout=20).status_code == 200
    finally:
        s.close()
    assert fz.TALLY.bad_answers == start_bad, fz.TALLY.bad_examples[-5:]
    assert (h.running_xml(), h.candidate_xml()) == before

