"""ETSI GS QKD 004 over gRPC with mutual TLS: two KMSes (alice, bob) on 127.0.0.1, real sockets.

Both key stores ingest the same key stream; applications a1/a2 (at alice) and b1/b2 (at bob) open
streams with SAE client certificates. alice's end of the association has master_parity 0, so
alice is the stream master: her chunks are the even-seq keys in order. The last test boots real
node processes with `qkdnet up` and fetches keys over the node's own 004 servers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from qkdnode.keystore import KeyStore, NeighbourResolver, SaeDirectory
from qkdnode.keystore import etsi004_pb2 as pb
from qkdnode.keystore import etsi004_pb2_grpc as pb_grpc
from qkdnode.keystore.etsi004 import Etsi004Client, Etsi004Kms, PeerKms, start_etsi004_server
from qkdnode.pki import CertificateAuthority, CertPaths

ROOT = Path(__file__).resolve().parents[1]
N_KEYS = 400  # 200 for alice's masters (even seq), 200 for bob's
KB = 32  # bytes per stored key
NODE_ID = {"alice": "node-A", "bob": "node-B"}
SAES = {"a1": "node-A", "a2": "node-A", "b1": "node-B", "b2": "node-B"}


def stream(n: int) -> list[tuple[str, int, bytes]]:
    return [(str(uuid.UUID(bytes=hashlib.sha256(b"id%d" % s).digest()[:16], version=4)), s,
             hashlib.sha256(b"key%d" % s).digest()) for s in range(n)]


def master_key(first: int, n: int) -> bytes:
    """The bytes of alice-parity (even seq) keys first..first+n-1, as alice's masters take them."""
    return b"".join(hashlib.sha256(b"key%d" % (2 * i)).digest() for i in range(first, first + n))


@dataclass
class Net:
    kms: dict[str, Etsi004Kms]
    stores: dict[str, KeyStore]
    certs: dict[str, CertPaths]
    ca: CertificateAuthority
    tmp: Path

    def client(self, sae: str, node: str | None = None) -> Etsi004Client:
        node = node or ("alice" if SAES.get(sae) == "node-A" else "bob")
        return Etsi004Client(f"127.0.0.1:{self.kms[node].port}", self.certs[sae])

    def available(self) -> tuple[int, int]:
        a, b = self.stores["alice"].stats("A-B"), self.stores["bob"].stats("B-A")
        return a.available_total, b.available_total


@pytest.fixture
async def net(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Net]:
    """Both stores hold N_KEYS keys, unless the test says how many bob has (`bob_keys`)."""
    bob_keys = getattr(request, "param", {}).get("bob_keys", N_KEYS)
    ca = CertificateAuthority(tmp_path / "ca")
    certs = {sae: ca.issue_client(sae, tmp_path / "sae") for sae in (*SAES, "zz")}
    node_certs = {n: ca.issue_server(n, tmp_path / "nodes") for n in NODE_ID}
    certs.update(node_certs)
    stores = {"alice": KeyStore(tmp_path / "alice"), "bob": KeyStore(tmp_path / "bob")}
    stores["alice"].add_association("A-B", "node-A", "node-B", master_parity=0, max_keys_per_request=16)
    stores["bob"].add_association("B-A", "node-B", "node-A", master_parity=1, max_keys_per_request=16)
    stores["alice"].ingest("A-B", stream(N_KEYS))
    stores["bob"].ingest("B-A", stream(N_KEYS)[:bob_keys])
    kms = {}
    for node, node_id in NODE_ID.items():
        directory = SaeDirectory(node_id, dict(SAES))
        kms[node], _ = await start_etsi004_server(
            stores[node], directory, NeighbourResolver.from_store(directory, stores[node]), node, {},
            node_certs[node])
    for node, other in (("alice", "bob"), ("bob", "alice")):
        kms[node].peers[other] = PeerKms(other, NODE_ID[other], f"127.0.0.1:{kms[other].port}")
    yield Net(kms, stores, certs, ca, tmp_path)
    for k in kms.values():
        await k.stop()
    for s in stores.values():
        s.close()


async def open_pair(net: Net, chunk: int = 2 * KB, a: str = "a1", b: str = "b1",
                    **qos: int) -> tuple[Etsi004Client, Etsi004Client, str]:
    ca, cb = net.client(a), net.client(b)
    r = await ca.open_connect(a, b, pb.QoS(key_chunk_size=chunk, **qos))
    assert r.status == pb.PEER_NOT_CONNECTED, r
    r2 = await cb.open_connect(f"qkd://{b}", a, pb.QoS(key_chunk_size=chunk, **qos), r.key_stream_id)
    assert r2.status == pb.SUCCESSFUL and r2.key_stream_id == r.key_stream_id, r2
    return ca, cb, r.key_stream_id


async def test_both_ends_get_the_same_key_at_the_same_index(net: Net) -> None:
    ca, cb, ksid = await open_pair(net)
    assert str(uuid.UUID(ksid)) == ksid
    # the master's application first, then the other end
    k0a = await ca.get_key(ksid, 0)
    k0b = await cb.get_key(ksid, 0)
    assert k0a.status == k0b.status == pb.SUCCESSFUL
    assert k0a.key_buffer == k0b.key_buffer == master_key(0, 2)
    # the slave end first, without an index (next after the last one delivered)
    k1b = await cb.get_key(ksid)
    k1a = await ca.get_key(ksid)
    assert (k1a.index, k1b.index) == (1, 1)
    assert k1a.key_buffer == k1b.key_buffer == master_key(2, 2)
    # an index far ahead: keys are taken in order when an index is first asked for
    k9b = await cb.get_key(ksid, 9, metadata_size=1000)
    k9a = await ca.get_key(ksid, 9, metadata_size=1000)
    assert k9a.key_buffer == k9b.key_buffer == master_key(4, 2)
    meta = json.loads(k9a.metadata.buffer)
    assert meta == json.loads(k9b.metadata.buffer) and meta["index"] == 9
    assert meta["key_IDs"] == [stream(N_KEYS)[s][0] for s in (8, 10)]
    assert k9a.metadata.size == len(k9a.metadata.buffer)
    # each end's store has handed out the same 6 keys
    assert net.available() == (N_KEYS - 6, N_KEYS - 6)
    rec = net.stores["bob"].key_record("B-A", meta["key_IDs"][0])
    assert rec is not None and rec.state == "delivered" and (rec.master_sae, rec.slave_sae) == ("a1", "b1")
    for c in (ca, cb):
        await c.aclose()


async def test_index_is_not_delivered_twice(net: Net) -> None:
    ca, cb, ksid = await open_pair(net)
    assert (await ca.get_key(ksid, 0)).status == pb.SUCCESSFUL
    assert (await cb.get_key(ksid, 0)).status == pb.SUCCESSFUL
    for c in (ca, cb):
        again = await c.get_key(ksid, 0, timeout=5)
        assert again.status == pb.INSUFFICIENT_KEY and again.key_buffer == b""
        assert "already delivered" in again.message
    # the master forgets an index both ends are done with; asking for it again gets nothing
    st = net.kms["alice"].streams[ksid]
    assert st.assigned == {} and st.held == {} and 0 in st.retired and st.delivered.floor == 1
    async with Etsi004Client(f"127.0.0.1:{net.kms['alice'].port}", net.certs["bob"], server_name="alice") as node:
        r = await pb_grpc.Etsi004PeerStub(node.channel).Assign(pb.AssignRequest(key_stream_id=ksid, index=0))
        assert r.status == pb.INSUFFICIENT_KEY and not r.key_ids
    # with a QoS timeout the answer is the same at once: waiting cannot bring a key back (a server
    # that waited out the 10-minute timeout would trip the guard; no speed is asserted)
    cc, cd, ksid2 = await open_pair(net, timeout=600_000)
    assert (await cc.get_key(ksid2, 0)).status == pb.SUCCESSFUL
    assert (await asyncio.wait_for(cc.get_key(ksid2, 0), 60)).status == pb.INSUFFICIENT_KEY
    for c in (ca, cb, cc, cd):
        await c.aclose()


async def test_key_stream_id_in_use(net: Net) -> None:
    ca, cb, ksid = await open_pair(net)
    again = await ca.open_connect("a1", "b1", pb.QoS(key_chunk_size=2 * KB), ksid)
    assert again.status == pb.KEY_STREAM_ID_IN_USE
    async with net.client("a2") as c2, net.client("b2") as d2:
        assert (await c2.open_connect("a2", "b1", None, ksid)).status == pb.KEY_STREAM_ID_IN_USE
        assert (await d2.open_connect("b2", "a1", None, ksid)).status == pb.KEY_STREAM_ID_IN_USE
        # another application's half-open stream is just as taken
        r = await c2.open_connect("a2", "b2")
        assert r.status == pb.PEER_NOT_CONNECTED
        assert (await ca.open_connect("a1", "b1", None, r.key_stream_id)).status == pb.KEY_STREAM_ID_IN_USE
        assert (await d2.open_connect("b2", "a1", None, r.key_stream_id)).status == pb.KEY_STREAM_ID_IN_USE
        assert (await d2.open_connect("b2", "a2", None, r.key_stream_id)).status == pb.SUCCESSFUL
    # the stream still works for its owners
    assert (await ca.get_key(ksid, 0)).key_buffer == (await cb.get_key(ksid, 0)).key_buffer
    for c in (ca, cb):
        await c.aclose()


async def test_peer_application_not_connected(net: Net) -> None:
    async with net.client("a1") as ca, net.client("b1") as cb:
        r = await ca.open_connect("a1", "b1")
        assert r.status == pb.PEER_NOT_CONNECTED
        assert r.qos.key_chunk_size == KB and r.qos.metadata_mimetype == "application/json"
        got = await ca.get_key(r.key_stream_id)
        assert got.status == pb.PEER_APPLICATION_NOT_CONNECTED and got.key_buffer == b""
        # the other end opens first this time (bob is not the master): same answer there
        r2 = await cb.open_connect("b1", "a1", pb.QoS(timeout=200))
        assert r2.status == pb.PEER_NOT_CONNECTED
        t0 = time.monotonic()
        got = await cb.get_key(r2.key_stream_id)
        assert got.status == pb.TIMEOUT_ERROR and "not connected" in got.message
        assert time.monotonic() - t0 >= 0.15  # it waited for the QoS timeout (200 ms) first
        # nothing was consumed
        assert net.available() == (N_KEYS, N_KEYS)
        # GET_KEY waits (QoS timeout) for the peer application to connect
        await cb.close(r2.key_stream_id)
        r3 = await cb.open_connect("b1", "a1", pb.QoS(timeout=3000), r2.key_stream_id)
        assert r3.status == pb.PEER_NOT_CONNECTED
        waiting = asyncio.create_task(cb.get_key(r3.key_stream_id))
        await asyncio.sleep(0.2)
        assert (await ca.open_connect("a1", "b1", None, r3.key_stream_id)).status == pb.SUCCESSFUL
        got = await waiting
        assert got.status == pb.SUCCESSFUL and got.key_buffer == master_key(0, 1)


async def test_insufficient_key(net: Net) -> None:
    chunk = 16 * KB  # 16 keys: alice's 200 masters' keys make 12 chunks
    ca, cb, ksid = await open_pair(net, chunk)
    for i in range(12):
        assert (await ca.get_key(ksid, i)).status == pb.SUCCESSFUL
    before = net.available()
    for c in (ca, cb):  # at the master, and at the other end (the master cannot assign)
        got = await c.get_key(ksid, 12)
        assert got.status == pb.INSUFFICIENT_KEY and "keys needed" in got.message
    assert net.available() == before
    # indices already assigned are still served at the other end
    assert (await cb.get_key(ksid, 11)).key_buffer == master_key(11 * 16, 16)
    # with a QoS timeout: TIMEOUT_ERROR when no key arrives in time
    cc, cd, ksid2 = await open_pair(net, KB, "a2", "b2", timeout=150)
    for i in range(8):  # the 8 keys left
        assert (await cd.get_key(ksid2, i)).status == pb.SUCCESSFUL
    got = await cd.get_key(ksid2, 8)
    assert got.status == pb.TIMEOUT_ERROR and "keys needed" in got.message
    for c in (ca, cb, cc, cd):
        await c.aclose()


@pytest.mark.parametrize("net", [{"bob_keys": 100}], indirect=True)
async def test_slave_waits_for_keys_not_ingested_yet(net: Net) -> None:
    """The master may pick keys that the other end's QKD module has not delivered there yet."""
    ca, cb, ksid = await open_pair(net, KB, timeout=5000)
    for i in range(51):  # alice has the keys of every index; bob those of seq < 100 only
        assert (await ca.get_key(ksid, i)).status == pb.SUCCESSFUL
    assert (await cb.get_key(ksid, 49)).key_buffer == master_key(49, 1)
    waiting = asyncio.create_task(cb.get_key(ksid, 50))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await asyncio.to_thread(net.stores["bob"].ingest, "B-A", stream(N_KEYS)[100:])
    got = await waiting
    assert got.status == pb.SUCCESSFUL and got.key_buffer == master_key(50, 1)
    for c in (ca, cb):
        await c.aclose()


async def test_metadata_too_small_consumes_nothing(net: Net) -> None:
    ca, cb, ksid = await open_pair(net)
    for c in (cb, ca):
        small = await c.get_key(ksid, 0, metadata_size=10)
        assert small.status == pb.METADATA_SIZE_INSUFFICIENT and small.key_buffer == b""
        assert small.metadata.size > 10
        ok = await c.get_key(ksid, 0, metadata_size=small.metadata.size)
        assert ok.status == pb.SUCCESSFUL and ok.key_buffer == master_key(0, 2)
        assert len(ok.metadata.buffer) == small.metadata.size
    for c in (ca, cb):
        await c.aclose()


async def test_qos_that_cannot_be_met(net: Net) -> None:
    async with net.client("a1") as ca, net.client("b1") as cb:
        r = await ca.open_connect("a1", "b1", pb.QoS(key_chunk_size=KB + 1, max_bps=99))
        assert r.status == pb.QOS_NOT_MET and r.qos.key_chunk_size == 2 * KB and r.qos.max_bps == 99
        r = await ca.open_connect("a1", "b1", pb.QoS(key_chunk_size=100 * KB))
        assert r.status == pb.QOS_NOT_MET and r.qos.key_chunk_size == 16 * KB
        r = await ca.open_connect("a1", "b1", pb.QoS(metadata_mimetype="text/plain"))
        assert r.status == pb.QOS_NOT_MET and r.qos.metadata_mimetype == "application/json"
        net.kms["alice"].rate_of = lambda assoc: 1000.0
        r = await ca.open_connect("a1", "b1", pb.QoS(min_bps=5000))
        assert r.status == pb.QOS_NOT_MET and r.qos.min_bps == 1000
        # the two ends must agree on the chunk size; the counter proposal is the first end's
        r = await ca.open_connect("a1", "b1", pb.QoS(key_chunk_size=4 * KB, min_bps=500))
        assert r.status == pb.PEER_NOT_CONNECTED
        r2 = await cb.open_connect("b1", "a1", pb.QoS(key_chunk_size=KB), r.key_stream_id)
        assert r2.status == pb.QOS_NOT_MET and r2.qos.key_chunk_size == 4 * KB
        r2 = await cb.open_connect("b1", "a1", r2.qos, r.key_stream_id)
        assert r2.status == pb.SUCCESSFUL


async def test_unknown_stream_and_no_connection(net: Net) -> None:
    async with net.client("a1") as ca:
        unknown = str(uuid.uuid4())
        assert (await ca.get_key(unknown)).status == pb.NO_QKD_CONNECTION
        assert (await ca.close(unknown)).status == pb.NO_QKD_CONNECTION
        assert (await ca.open_connect("a1", "nobody")).status == pb.NO_QKD_CONNECTION
        assert (await ca.open_connect("a1", "a2")).status == pb.NO_QKD_CONNECTION  # same node
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ca.get_key("not-a-uuid")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the peer KMS is down: no QKD connection, and nothing stays reserved
    await net.kms["bob"].stop()
    async with net.client("a1") as ca:
        r = await ca.open_connect("a1", "b1")
        assert r.status == pb.NO_QKD_CONNECTION and "bob" in r.message
    assert net.kms["alice"].streams == {}


async def test_caller_identity_is_enforced(net: Net) -> None:
    async with net.client("a1") as ca, net.client("a2") as c2, net.client("b1", "alice") as wrong:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ca.open_connect("a2", "b1")  # source is not the caller
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await wrong.open_connect("b1", "a1")  # an SAE of another KMS
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        r = await ca.open_connect("a1", "b1")
        for call in (c2.get_key(r.key_stream_id), c2.close(r.key_stream_id)):  # another SAE's stream
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await ca.close(r.key_stream_id)).status == pb.SUCCESSFUL
    # a node certificate is not an SAE; an SAE certificate is not a peer KMS
    async with Etsi004Client(f"127.0.0.1:{net.kms['alice'].port}", net.certs["bob"]) as node:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await node.open_connect("bob", "a1")
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    sae = Etsi004Client(f"127.0.0.1:{net.kms['alice'].port}", net.certs["b1"])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await pb_grpc.Etsi004PeerStub(sae.channel).Connect(pb.PeerConnectRequest(
            key_stream_id=str(uuid.uuid4()), source="b1", destination="a1", master_node="alice"), timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await sae.aclose()


async def test_no_certificate_or_other_ca_refused(net: Net) -> None:
    target = f"127.0.0.1:{net.kms['alice'].port}"
    ca_pem = net.ca.cert_path.read_bytes()
    other = CertificateAuthority(net.tmp / "other-ca").issue_client("a1", net.tmp / "other")
    for creds in (grpc.ssl_channel_credentials(root_certificates=ca_pem),  # no client certificate
                  grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=other.key.read_bytes(),
                                               certificate_chain=other.cert.read_bytes())):
        async with grpc.aio.secure_channel(target, creds) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pb_grpc.Etsi004Stub(ch).OPEN_CONNECT(pb.OpenConnectRequest(source="a1", destination="b1"),
                                                           timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(target) as ch:  # no TLS at all
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.Etsi004Stub(ch).OPEN_CONNECT(pb.OpenConnectRequest(source="a1", destination="b1"),
                                                       timeout=5)
    assert net.kms["alice"].streams == {}


async def test_close_releases_the_stream(net: Net) -> None:
    ca, cb, ksid = await open_pair(net)
    assert (await cb.get_key(ksid, 0)).status == pb.SUCCESSFUL  # alice now holds index 0 for a1
    assert (await ca.close(ksid)).status == pb.SUCCESSFUL
    assert net.kms["alice"].streams[ksid].held == {}  # the held key was wiped
    assert (await ca.get_key(ksid, 0)).status == pb.NO_QKD_CONNECTION
    assert (await ca.close(ksid)).status == pb.NO_QKD_CONNECTION
    got = await cb.get_key(ksid, 1)
    assert got.status == pb.PEER_APPLICATION_NOT_CONNECTED
    assert (await cb.close(ksid)).status == pb.SUCCESSFUL
    assert net.kms["alice"].streams == {} and net.kms["bob"].streams == {}
    # the ID is free again, at both ends
    r = await ca.open_connect("a1", "b1", pb.QoS(key_chunk_size=KB), ksid)
    assert r.status == pb.PEER_NOT_CONNECTED and r.key_stream_id == ksid
    assert (await cb.open_connect("b1", "a1", pb.QoS(key_chunk_size=KB), ksid)).status == pb.SUCCESSFUL
    k = await cb.get_key(ksid, 0)
    assert k.key_buffer == (await ca.get_key(ksid, 0)).key_buffer == master_key(2, 1)
    for c in (ca, cb):
        await c.aclose()


async def test_concurrent_streams_and_requests(net: Net) -> None:
    pairs = [await open_pair(net, KB) for _ in range(4)]

    async def fetch(c: Etsi004Client, ksid: str) -> list[bytes]:
        return [r.key_buffer for r in await asyncio.gather(*(c.get_key(ksid, i) for i in range(10)))]

    results = await asyncio.gather(*(fetch(c, k) for ca, cb, k in pairs for c in (ca, cb)))
    all_keys = []
    for n in range(4):
        a, b = results[2 * n], results[2 * n + 1]
        assert a == b and all(len(k) == KB for k in a)
        all_keys += a
    assert sorted(all_keys) == sorted(master_key(i, 1) for i in range(40))  # no key twice
    for ca, cb, _ in pairs:
        await ca.aclose()
        await cb.aclose()


# -- a real network: `qkdnet up` ------------------------------------------------------------------
def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"qkdnet exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} not written within {timeout} s"
        time.sleep(0.1)


@pytest.mark.timeout(60)
async def test_qkdnet_up_serves_etsi004(tmp_path: Path) -> None:
    state = tmp_path / "net"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(ROOT / "examples" / "two-nodes.yaml"),
         "--state-dir", str(state), "--duration", "45"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await asyncio.to_thread(_wait_for, state / "network.json", proc, 40)
        net = json.loads((state / "network.json").read_text())
        saes = net["saes"]

        def certs(sae: str) -> CertPaths:
            return CertPaths(Path(saes[sae]["cert"]), Path(saes[sae]["key"]), Path(saes[sae]["ca"]))

        url = {n: info["etsi004"]["url"] for n, info in net["nodes"].items()}
        async with Etsi004Client(url["alice"], certs("sae-alice")) as ca, \
                Etsi004Client(url["bob"], certs("sae-bob")) as cb:
            qos = pb.QoS(key_chunk_size=64, timeout=20000)
            r = await ca.open_connect("sae-alice", "sae-bob", qos)
            assert r.status == pb.PEER_NOT_CONNECTED, r
            r2 = await cb.open_connect("sae-bob", "sae-alice", qos, r.key_stream_id)
            assert r2.status == pb.SUCCESSFUL, r2
            # keys arrive from the simulated QKD link within a few seconds; GET_KEY waits for them
            got_b = [await cb.get_key(r.key_stream_id, i, timeout=25) for i in range(3)]
            got_a = [await ca.get_key(r.key_stream_id, i, timeout=25) for i in range(3)]
            assert [g.status for g in got_a + got_b] == [pb.SUCCESSFUL] * 6, got_a + got_b
            assert [g.key_buffer for g in got_a] == [g.key_buffer for g in got_b]
            assert len({g.key_buffer for g in got_a}) == 3 and all(len(g.key_buffer) == 64 for g in got_a)
            assert (await ca.close(r.key_stream_id)).status == pb.SUCCESSFUL
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
