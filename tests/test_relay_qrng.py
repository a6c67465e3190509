"""QRNG entropy service (HTTPS, mutual TLS, on 127.0.0.1) and its use by the key forwarder at the origin."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from qkdnode.pki import CertificateAuthority, client_context
from qkdnode.qrng import QrngClient, serve, server_ssl

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def qrng(tmp_path: Path):  # type: ignore[no-untyped-def]
    ca = CertificateAuthority(tmp_path / "ca")
    srv = ca.issue_server("qrng", tmp_path / "pki")
    ctx = server_ssl(str(srv.cert), str(srv.key), str(ca.cert_path))
    runner, port = await serve("127.0.0.1", 0, ctx)
    yield f"https://127.0.0.1:{port}", ca, tmp_path
    await runner.cleanup()


@pytest.mark.parametrize(("query", "status"), [
    ("bytes=1", 200), ("bytes=4096", 200), ("bytes=0", 400), ("bytes=1048577", 400), ("bytes=-1", 400),
    ("bytes=abc", 400), ("", 400), ("bytes=8&x=1", 400),
])
async def test_entropy_endpoint(qrng, query: str, status: int) -> None:  # type: ignore[no-untyped-def]
    url, ca, tmp = qrng
    ctx = client_context(ca.issue_client("app", tmp / "pki"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.get(f"{url}/entropy?{query}") as r:
            body = await r.read()
            assert r.status == status
            if status == 200:
                assert r.content_type == "application/octet-stream"
                assert len(body) == int(query.split("=")[1])
            else:
                assert b"message" in body


async def test_client_certificate_required(qrng) -> None:  # type: ignore[no-untyped-def]
    url, ca, _ = qrng
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))  # no client certificate
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"{url}/entropy?bytes=8") as r:
                await r.read()


async def test_forwarder_draws_relayed_keys_from_the_qrng(qrng, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import test_forwarder as tf

    url, ca, tmp = qrng
    chain = await tf.make_chain(tmp_path / "chain")
    try:
        client = QrngClient(url, client_context(ca.issue_client("node-a", tmp / "pki")))
        asked: list[int] = []

        async def counting(n: int) -> bytes:
            asked.append(n)
            return await client(n)

        chain.nodes["a"].fwd.entropy = counting
        status, body = await chain.enc("a", "sae-a", "sae-d", 5)
        assert status == 200, body
        assert asked == [5 * 32]
        status, got = await chain.dec("d", "sae-d", "sae-a", [k["key_ID"] for k in body["keys"]])
        assert status == 200 and got["keys"] == body["keys"]
        # a QRNG that fails fails the relay (503), it does not fall back silently; nothing consumed
        chain.nodes["a"].fwd.entropy = QrngClient("https://127.0.0.1:9", client.ssl_ctx, timeout_s=1)
        before = chain.snapshot()
        status, body = await chain.enc("a", "sae-a", "sae-d", 1)
        assert status == 503 and body["details"][0]["reason"] == "entropy-unavailable", body
        assert chain.snapshot() == before
        await client.close()
    finally:
        await tf.close_chain(chain)


def test_cli_refuses_half_tls_options(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "qkdnode.qrng", "--cert", str(tmp_path / "x.pem")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--cert and --key go together" in r.stderr
