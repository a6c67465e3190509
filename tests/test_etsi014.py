"""ETSI GS QKD 014 server: two KMEs (A, B) over real mutual-TLS sockets on 127.0.0.1.

Both nodes ingest the same key stream; SAE a1 (at A) gets keys for b1 (at B) with enc_keys at A and
b1 gets the same keys with dec_keys at B. Every error path is checked to consume nothing.
The OpenAPI comparison needs ``<repo>/../shared/reference/etsi-qkd-014`` and skips without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from qkdnode.keystore import (
    Etsi014Server,
    KeyStore,
    NeighbourResolver,
    SaeDirectory,
    start_etsi014_server,
)
from qkdnode.pki import CertificateAuthority, CertPaths, client_context, server_context

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_014 = REPO_ROOT.parent / "shared" / "reference" / "etsi-qkd-014" / "community-openapi-v1.1.1.yaml"
N_KEYS = 400


def stream(n: int, start: int = 0) -> list[tuple[str, int, bytes]]:
    """The deterministic key stream both nodes receive from their QKD devices."""
    return [(str(uuid.UUID(bytes=hashlib.sha256(b"id%d" % s).digest()[:16], version=4)), s,
             hashlib.sha256(b"key%d" % s).digest()) for s in range(start, start + n)]


@dataclass
class Net:
    stores: dict[str, KeyStore]
    servers: dict[str, Etsi014Server]
    certs: dict[str, CertPaths]
    tmp: Path

    def url(self, node: str, path: str) -> str:
        return f"https://127.0.0.1:{self.servers[node].port}/api/v1{path}"

    async def call(self, node: str, sae: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        ctx = client_context(self.certs[sae])
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            async with s.request(method, self.url(node, path), **kw) as r:
                text = await r.text()
                return r.status, (json.loads(text) if r.content_type == "application/json" else text)

    def available(self) -> tuple[tuple[int, int], tuple[int, int]]:
        sa, sb = self.stores["A"].stats("A-B"), self.stores["B"].stats("B-A")
        return (sa.available_for_masters, sa.available_for_peer), (sb.available_for_masters, sb.available_for_peer)


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    ca = CertificateAuthority(tmp_path / "ca")
    certs = {sae: ca.issue_client(sae, tmp_path / "sae") for sae in ("a1", "a2", "b1", "b2", "c1", "zz")}
    directory_map = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"}
    stores = {"A": KeyStore(tmp_path / "A"), "B": KeyStore(tmp_path / "B")}
    stores["A"].add_association("A-B", "A", "B", master_parity=0, max_keys_per_request=16)
    stores["B"].add_association("B-A", "B", "A", master_parity=1, max_keys_per_request=16)
    keys = stream(N_KEYS)
    assert stores["A"].ingest("A-B", keys) == stores["B"].ingest("B-A", keys) == N_KEYS
    servers = {}
    for node in ("A", "B"):
        directory = SaeDirectory(node, dict(directory_map))
        ctx = server_context(ca.issue_server(f"kme-{node}", tmp_path / "nodes"))
        servers[node], _ = await start_etsi014_server(
            stores[node], directory, NeighbourResolver.from_store(directory, stores[node]), ctx)
    yield Net(stores, servers, certs, tmp_path)
    for server in servers.values():
        await server.stop()
    for store in stores.values():
        store.close()


def by_id() -> dict[str, bytes]:
    return {k: v for k, _, v in stream(N_KEYS)}


async def test_enc_at_a_dec_at_b_same_keys(net: Net) -> None:
    status, body = await net.call("A", "a1", "GET", "/keys/b1/enc_keys", params={"number": "3"})
    assert status == 200, body
    status, body2 = await net.call("A", "a1", "POST", "/keys/b1/enc_keys", json={"number": 2, "size": 256})
    assert status == 200, body2
    got = body["keys"] + body2["keys"]
    expected = by_id()
    seqs = {k: s for k, s, _ in stream(N_KEYS)}
    assert [seqs[k["key_ID"]] for k in got] == [0, 2, 4, 6, 8]  # A's masters: even seq, in order
    for k in got:
        assert base64.b64decode(k["key"]) == expected[k["key_ID"]]
    ids = [k["key_ID"] for k in got]
    status, dec = await net.call("B", "b1", "POST", "/keys/a1/dec_keys",
                                 json={"key_IDs": [{"key_ID": i} for i in ids[:4]]})
    assert status == 200, dec
    assert dec["keys"] == got[:4]
    status, dec = await net.call("B", "b1", "GET", "/keys/a1/dec_keys", params={"key_ID": ids[4]})
    assert status == 200 and dec["keys"] == got[4:]
    assert net.available() == ((195, 200), (200, 195))
    # and the other direction: b1 is master at B (odd seq), a1 fetches at A
    status, body = await net.call("B", "b1", "POST", "/keys/a1/enc_keys", json={})
    assert status == 200 and body["keys"][0]["key_ID"] == stream(2)[1][0]
    status, dec = await net.call("A", "a1", "GET", "/keys/b1/dec_keys", params={"key_ID": body["keys"][0]["key_ID"]})
    assert status == 200 and dec == body


async def test_dec_keys_waits_for_its_own_copy_of_the_key_stream(net: Net) -> None:
    """Each KME stores the link's key stream from its own module: A (master) has stored and may hand
    out seq 400 before B has. B's dec_keys for it waits while B's stream advances (B's feeder is
    running: `fed`), and answers with the key once stored; without a stream it answers 400 at once,
    and so it does when the stream stops before the key came."""
    import asyncio

    newer = stream(4, N_KEYS)
    assert net.stores["A"].ingest("A-B", newer) == 4
    kid, key = newer[0][0], newer[0][2]
    status, body = await net.call("B", "b1", "GET", "/keys/a1/dec_keys", params={"key_ID": kid})
    assert status == 400 and body["details"] == [{"key_ID": kid, "reason": "unknown"}]  # no stream: not waited for
    net.servers["B"].fed = lambda assoc_id: assoc_id == "B-A"
    status, body = await net.call("B", "b1", "GET", "/keys/a1/dec_keys", params={"key_ID": kid})
    assert status == 400 and body["details"][0]["reason"] == "unknown"  # the stream did not move
    call = asyncio.create_task(net.call("B", "b1", "GET", "/keys/a1/dec_keys", params={"key_ID": kid}))
    await asyncio.sleep(0.05)
    assert not call.done()
    assert net.stores["B"].ingest("B-A", newer) == 4  # B's feeder catches up
    status, body = await call
    assert status == 200, body
    assert body["keys"] == [{"key_ID": kid, "key": base64.b64encode(key).decode()}]


async def test_key_never_delivered_twice(net: Net) -> None:
    _, body = await net.call("A", "a1", "POST", "/keys/b1/enc_keys", json={"number": 3})
    ids = [k["key_ID"] for k in body["keys"]]
    status, _ = await net.call("B", "b1", "GET", "/keys/a1/dec_keys", params={"key_ID": ids[0]})
    assert status == 200
    before = net.available()
    for sae in ("b1", "b2"):  # same or another slave: the key is gone at B
        status, err = await net.call("B", sae, "POST", "/keys/a1/dec_keys",
                                     json={"key_IDs": [{"key_ID": ids[1]}, {"key_ID": ids[0]}]})
        assert status == 400 and ids[0] in err["message"]
        assert err["details"] == [{"key_ID": ids[0], "reason": "already delivered"}]
    assert net.available() == before  # ids[1] was not consumed by the failed request
    status, dec = await net.call("B", "b1", "POST", "/keys/a1/dec_keys", json={"key_IDs": [{"key_ID": ids[1]}]})
    assert status == 200 and dec["keys"] == body["keys"][1:2]
    # a key of B's own parity may not be fetched by ID at B
    own_b = stream(2)[1][0]
    status, err = await net.call("B", "b1", "GET", "/keys/a1/dec_keys", params={"key_ID": own_b})
    assert status == 400 and err["details"][0]["reason"].startswith("reserved")


async def test_status_fields(net: Net) -> None:
    status, body = await net.call("A", "a1", "GET", "/keys/b1/status")
    assert status == 200
    assert body == {
        "source_KME_ID": "A", "target_KME_ID": "B", "master_SAE_ID": "a1", "slave_SAE_ID": "b1",
        "key_size": 256, "stored_key_count": N_KEYS // 2, "max_key_count": 100_000,
        "max_key_per_request": 16, "max_key_size": 256, "min_key_size": 256, "max_SAE_ID_count": 0,
    }
    await net.call("A", "a1", "GET", "/keys/b1/enc_keys", params={"number": "5"})
    _, body = await net.call("A", "a1", "GET", "/keys/b1/status")
    assert body["stored_key_count"] == N_KEYS // 2 - 5


ENC_BAD: list[tuple[str, dict[str, Any]]] = [
    ("GET", {"params": {"number": "0"}}),
    ("GET", {"params": {"number": "-1"}}),
    ("GET", {"params": {"number": "abc"}}),
    ("GET", {"params": {"number": "17"}}),
    ("GET", {"params": {"number": "9" * 40}}),
    ("GET", {"params": [("number", "1"), ("number", "2")]}),
    ("GET", {"params": {"size": "128"}}),
    ("GET", {"params": {"size": "512"}}),
    ("GET", {"params": {"size": "x"}}),
    ("GET", {"params": {"colour": "red"}}),
    ("GET", {"params": {"additional_slave_SAE_IDs": "b2"}}),
    ("POST", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
    ("POST", {"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}}),
    ("POST", {"data": b'{"number": 1}', "headers": {"Content-Type": "text/plain"}}),
    ("POST", {"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}),
    ("POST", {"json": {"number": "1"}}),
    ("POST", {"json": {"number": True}}),
    ("POST", {"json": {"number": 1.5}}),
    ("POST", {"json": {"number": 0}}),
    ("POST", {"json": {"number": -3}}),
    ("POST", {"json": {"number": 10**30}}),
    ("POST", {"json": {"size": 255}}),
    ("POST", {"json": {"size": -256}}),
    ("POST", {"json": {"additional_slave_SAE_IDs": ["b2"]}}),
    ("POST", {"json": {"additional_slave_SAE_IDs": "b2"}}),
    ("POST", {"json": {"extension_mandatory": [{"abc_route_type": "direct"}]}}),
    ("POST", {"json": {"extension_mandatory": "x"}}),
    ("POST", {"json": {"numbr": 1}}),
    ("POST", {"data": b"{" + b'"a":1,' * 20000 + b'"b":2}', "headers": {"Content-Type": "application/json"}}),
]


@pytest.mark.parametrize(("method", "kw"), ENC_BAD)
async def test_enc_keys_bad_request(net: Net, method: str, kw: dict[str, Any]) -> None:
    before = net.available()
    status, err = await net.call("A", "a1", method, "/keys/b1/enc_keys", **kw)
    assert status == 400, err
    assert isinstance(err["message"], str) and err["message"]
    assert net.available() == before


async def test_enc_keys_optional_extension_ignored(net: Net) -> None:
    status, body = await net.call("A", "a1", "POST", "/keys/b1/enc_keys", json={
        "number": 1, "additional_slave_SAE_IDs": [], "extension_optional": [{"abc_route_type": "x"}]})
    assert status == 200 and len(body["keys"]) == 1


def dec_bad_cases() -> list[tuple[str, dict[str, Any]]]:
    valid = stream(2)[0][0]  # A's parity: not for dec_keys at B, but syntactically fine
    unknown = str(uuid.uuid4())
    return [
        ("GET", {}),
        ("GET", {"params": {"key_ID": "not-a-uuid"}}),
        ("GET", {"params": {"key_ID": unknown}}),
        ("GET", {"params": {"key_ID": valid, "number": "1"}}),
        ("POST", {"json": {"key_IDs": []}}),
        ("POST", {"json": {"key_IDs": [{"key_ID": 5}]}}),
        ("POST", {"json": {"key_IDs": [{"id": unknown}]}}),
        ("POST", {"json": {"key_IDs": [unknown]}}),
        ("POST", {"json": {"key_IDs": [{"key_ID": unknown + "0"}]}}),
        ("POST", {"json": {"key_IDs": [{"key_ID": stream(2)[1][0]}] * 2}}),
        ("POST", {"json": {"key_IDs": [{"key_ID": str(uuid.uuid4())} for _ in range(17)]}}),
        ("POST", {"json": {"key_ID": unknown}}),
        ("POST", {"data": b"nope", "headers": {"Content-Type": "application/json"}}),
        ("POST", {"data": b'{"key_IDs": []}', "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    ]


@pytest.mark.parametrize("case", range(len(dec_bad_cases())))
async def test_dec_keys_bad_request(net: Net, case: int) -> None:
    method, kw = dec_bad_cases()[case]
    before = net.available()
    status, err = await net.call("B", "b1", method, "/keys/a1/dec_keys", **kw)
    assert status == 400, err
    assert err["message"]
    assert net.available() == before


@pytest.mark.parametrize(("node", "sae", "method", "path"), [
    ("A", "c1", "GET", "/keys/b1/status"),          # c1 is attached to C, not to A
    ("A", "zz", "GET", "/keys/b1/status"),          # valid certificate, unknown SAE
    ("A", "b1", "GET", "/keys/a1/enc_keys"),        # b1 belongs to B
    ("A", "a1", "GET", "/keys/c1/enc_keys"),        # no association A-C
    ("A", "a1", "GET", "/keys/nobody/status"),      # unknown slave
    ("A", "a1", "GET", "/keys/a2/enc_keys"),        # both at A: no association with itself
    ("B", "a1", "GET", "/keys/b1/dec_keys?key_ID=" + str(uuid.uuid4())),  # a1 is not at B
    ("B", "b1", "GET", "/keys/c1/dec_keys?key_ID=" + str(uuid.uuid4())),  # no association B-C
])
async def test_unauthorized(net: Net, node: str, sae: str, method: str, path: str) -> None:
    before = net.available()
    status, err = await net.call(node, sae, method, path)
    assert status == 401, err
    assert err["message"]
    assert net.available() == before


async def tls_refused(url: str, ctx: ssl.SSLContext) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with s.get(url) as r:
                await r.read()


async def test_tls_refuses_missing_or_foreign_certificate(net: Net) -> None:
    url = net.url("A", "/keys/b1/status")
    no_cert = ssl.create_default_context(cafile=str(net.certs["a1"].ca))
    await tls_refused(url, no_cert)
    rogue = CertificateAuthority(net.tmp / "rogue-ca").issue_client("a1", net.tmp / "rogue")
    ctx = ssl.create_default_context(cafile=str(net.certs["a1"].ca))
    ctx.load_cert_chain(str(rogue.cert), str(rogue.key))
    await tls_refused(url, ctx)
    assert net.available() == ((N_KEYS // 2, N_KEYS // 2),) * 2


async def test_503_when_exhausted_consumes_nothing(net: Net) -> None:
    store = net.stores["A"]
    store.add_association("A-B2", "A", "B2", master_parity=0)
    store.ingest("A-B2", stream(9))  # seq 0..8: 5 for A's masters
    server = net.servers["A"]
    server.directory.sae_nodes["b3"] = "B2"
    assert isinstance(server.resolver, NeighbourResolver)
    server.resolver.routes["B2"] = "A-B2"
    status, err = await net.call("A", "a1", "GET", "/keys/b3/enc_keys", params={"number": "6"})
    assert status == 503 and "6 asked, 5 available" in err["message"]
    assert store.stats("A-B2").available_for_masters == 5
    status, body = await net.call("A", "a1", "GET", "/keys/b3/enc_keys", params={"number": "5"})
    assert status == 200 and len(body["keys"]) == 5
    status, err = await net.call("A", "a1", "POST", "/keys/b3/enc_keys", json={"number": 1})
    assert status == 503 and "1 asked, 0 available" in err["message"]
    _, st = await net.call("A", "a1", "GET", "/keys/b3/status")
    assert st["stored_key_count"] == 0


async def test_concurrent_requests_get_distinct_keys(net: Net) -> None:
    import asyncio

    ctxs = [client_context(net.certs[s]) for s in ("a1", "a2")]
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=c, limit=4)) for c in ctxs]
    url = net.url("A", "/keys/b1/enc_keys")
    try:
        async def one(i: int) -> list[dict[str, str]]:
            async with sessions[i % 2].post(url, json={"number": 1 + i % 3}) as r:
                assert r.status == 200
                keys: list[dict[str, str]] = (await r.json())["keys"]
                return keys
        results = await asyncio.gather(*(one(i) for i in range(60)))
    finally:
        for s in sessions:
            await s.close()
    ids = [k["key_ID"] for keys in results for k in keys]
    assert len(ids) == len(set(ids)) == sum(1 + i % 3 for i in range(60))
    assert net.stores["A"].stats("A-B").available_for_masters == N_KEYS // 2 - len(ids)
    expected = by_id()
    assert all(base64.b64decode(k["key"]) == expected[k["key_ID"]] for keys in results for k in keys)


def operations(doc: dict[str, Any], strip: str) -> set[tuple[str, str, str]]:
    """(normalised path, method, operationId) of every operation; path parameters become {}."""
    import re

    out = set()
    for path, item in doc["paths"].items():
        norm = re.sub(r"\{[^}]+\}", "{}", path.removeprefix(strip))
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                out.add((norm, method, op.get("operationId", "")))
    return out


async def test_openapi_matches_reference(net: Net) -> None:
    if not REFERENCE_014.is_file():
        pytest.skip(f"reference 014 OpenAPI not found at {REFERENCE_014} (shared/ is not beside the repo)")
    status, text = await net.call("A", "a1", "GET", "/openapi.yaml")
    assert status == 200
    ours = yaml.safe_load(text)
    ref = yaml.safe_load(REFERENCE_014.read_text())
    assert ours["openapi"].startswith("3.")
    mine = operations(ours, "/api/v1")
    theirs = operations(ref, "")
    # Known deviations of the community file: no /api/v1 prefix (stripped above), POST forms only.
    extra = {("/keys/{}/enc_keys", "get", "getKeyGet"), ("/keys/{}/dec_keys", "get", "getKeyWithKeyIdsGet")}
    assert mine == theirs | extra
    for name in ("status", "key", "key_container", "key_information_dto", "key_ids", "key_request", "error"):
        assert set(ours["components"]["schemas"][name]["properties"]) == \
            set(ref["components"]["schemas"][name]["properties"]), name
    # every route we serve is described
    for path in ("/api/v1/keys/{slave_SAE_ID}/status", "/api/v1/keys/{slave_SAE_ID}/enc_keys",
                 "/api/v1/keys/{master_SAE_ID}/dec_keys"):
        assert path in ours["paths"]
