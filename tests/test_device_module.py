"""Simulated QKD modules: emitter/receiver pairs over the photon-channel stub (real TCP on 127.0.0.1),
each module's ETSI 014 key server (real mutual TLS), and the KMS-side feeder into real key stores.

The only stub is the fibre itself: `Fibre` is a TCP relay between the two modules that can be cut
and spliced again.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import ssl
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qkdnode.devices import HWDU_CV, IDQ_COW, TOSHIBA_BB84, RateFluctuation, link_performance
from qkdnode.devices.channel import (
    Ack, Commit, Frame, FrameError, Hello, Refuse, Role, SetLoss, Tick, WireKey, decode, encode,
)
from qkdnode.devices.keysource import BufferedKey, ModuleKeySource
from qkdnode.devices.module import Entropy, ModuleConfig, ModuleStatus, QKDModule
from qkdnode.keystore import KeyStore, StorageError
from qkdnode.keystore.feeder import ModuleFeeder
from qkdnode.pki import CertificateAuthority, CertPaths, client_context, server_context
from waiting import until

pytestmark = pytest.mark.timeout(30)
HOST = "127.0.0.1"


def snapshot(m: QKDModule) -> list[BufferedKey]:
    """All buffered keys of a module in seq order (without serving them)."""
    return m.buffer.peek()


async def settled(tx: QKDModule, rx: QKDModule) -> tuple[list[BufferedKey], list[BufferedKey]]:
    """Both buffers at a moment when every committed block has reached the receiver."""
    await until(lambda: tx.status().last_seq == rx.status().last_seq
                and len(tx.buffer) == len(rx.buffer), what="both ends settled")
    return snapshot(tx), snapshot(rx)


class Fibre:
    """TCP relay standing for the fibre between the two modules."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def splice(self) -> int:
        self._server = await asyncio.start_server(self._relay, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _relay(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            w1.close()
            return
        self._writers += [w1, w2]

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(r1, w2), pump(r2, w1))


Factory = Callable[..., Awaitable[tuple[QKDModule, QKDModule]]]


@pytest.fixture
async def pairs() -> AsyncIterator[Factory]:
    """`await pairs(tech="dv-bb84", loss=5.0, fibre=None, **cfg)` -> started (tx, rx)."""
    started: list[QKDModule] = []

    async def make(tech: str = "dv-bb84", loss: float = 5.0, *, fibre: list[Fibre] | None = None,
                   names: tuple[str, str] = ("A-tx", "B-rx"), tx_over: dict[str, Any] | None = None,
                   entropy: dict[str, Entropy] | None = None, **cfg: Any) -> tuple[QKDModule, QKDModule]:
        draw = entropy or {}
        base: dict[str, Any] = dict(technology=tech, loss_db=loss, tick_s=0.02, fluctuation_std=0.0,
                                    reconnect_initial_s=0.02, reconnect_max_s=0.1, perf_interval_s=0.05)
        base.update(cfg)
        rx = QKDModule(ModuleConfig(name=names[1], role="receiver", pairs_with=names[0], **base),
                       entropy=draw.get("rx", os.urandom))
        await rx.start()
        started.append(rx)
        port = rx.channel_port
        if fibre is not None:
            f = Fibre(port)
            port = await f.splice()
            fibre.append(f)
        tx_cfg = {**base, "pairs_with": names[1], **(tx_over or {})}
        tx = QKDModule(ModuleConfig(name=names[0], role="transmitter", channel_port=port, **tx_cfg),
                       entropy=draw.get("tx", os.urandom))
        await tx.start()
        started.append(tx)
        return tx, rx

    yield make
    for m in started:
        await m.stop()


# -- frames (table-driven) --------------------------------------------------------------------------

FRAMES: list[Frame] = [
    Hello(Role.TRANSMITTER, "A-tx", "B-rx", "dv-bb84", "toshiba-bb84-t12", 256, bytes(range(16)), -1,
          100, 5.0, 0.0),
    Refuse("wrong pair"),
    Tick(7, True, "", 4.1e6, 0.02, None, None, 5.0, 12.5, 32,
         (WireKey(uuid.uuid4().bytes, 10, bytes(32)), WireKey(uuid.uuid4().bytes, 11, b"\xff" * 32))),
    Tick(8, False, "loss 30.00 dB exceeds the budget of 26.00 dB", 0.0, None, 0.01, 0.002, 30.0, 0.0, 32),
    Ack(7, 99_000),
    Commit(7),
    SetLoss(12.5, 1_700_000_000.25),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_frame_round_trip(frame: Frame) -> None:
    raw = encode(frame)
    length, kind = struct.unpack(">IB", raw[:5])
    assert length == len(raw) - 4
    assert decode(kind, raw[5:]) == frame


@pytest.mark.parametrize("kind, body", [
    (99, b""),                                    # unknown type
    (1, b"XXXX" + bytes(60)),                     # hello without magic
    (3, encode(FRAMES[2])[5:-1]),                 # truncated key block
    (4, encode(Ack(1, 2))[5:] + b"\0"),           # trailing byte
    (2, b"\x00\x05ab"),                           # truncated string
])
def test_frame_errors(kind: int, body: bytes) -> None:
    with pytest.raises(FrameError):
        decode(kind, body)


# -- the pair ---------------------------------------------------------------------------------------

async def test_pair_delivers_identical_keys_in_order(pairs: Factory) -> None:
    tx, rx = await pairs("dv-bb84", 5.0)
    await until(lambda: rx.status().up and len(rx.buffer) >= 3000, what="3000 keys at the receiver")
    a, b = await settled(tx, rx)
    assert a == b  # same key IDs, seqs and bytes in the same order
    assert all(len(k.key) == 32 for k in a)
    assert [k.seq for k in a] == list(range(a[0].seq, a[0].seq + len(a)))
    ids = [uuid.UUID(k.key_id) for k in a]
    assert len(set(ids)) == len(ids) and {u.version for u in ids} == {4}
    assert len({k.key for k in a}) == len(a)
    st_tx, st_rx = tx.status(), rx.status()
    assert st_tx.up and st_rx.up and st_tx.reason is None
    assert st_rx.skr_bps == pytest.approx(link_performance(TOSHIBA_BB84, 5.0).skr_bps)
    assert st_rx.qber == pytest.approx(link_performance(TOSHIBA_BB84, 5.0).qber)


async def test_keys_come_from_the_emitter_only_and_differ_between_pairs(pairs: Factory) -> None:
    drawn: list[bytes] = []

    def emitter_entropy(n: int) -> bytes:
        data = os.urandom(n)
        drawn.append(data)
        return data

    def receiver_entropy(n: int) -> bytes:
        raise AssertionError("the receiver must not draw key bits")

    t1, r1 = await pairs("cv-gg02", 5.0, names=("P1-tx", "P1-rx"),
                         entropy={"tx": emitter_entropy, "rx": receiver_entropy})
    async def qrng(n: int) -> bytes:  # a network QRNG client would be a coroutine
        await asyncio.sleep(0)
        return os.urandom(n)

    t2, r2 = await pairs("cv-gg02", 5.0, names=("P2-tx", "P2-rx"), entropy={"tx": qrng})
    await until(lambda: len(r1.buffer) > 200 and len(r2.buffer) > 200)
    a1, b1 = await settled(t1, r1)
    a2, b2 = await settled(t2, r2)
    assert a1 == b1 and a2 == b2
    # the receiver holds exactly the bytes the emitter drew, cut in order
    received = b"".join(k.key for k in b1)
    assert b"".join(drawn).startswith(received)
    assert not {k.key for k in a1} & {k.key for k in a2}
    assert not {k.key_id for k in a1} & {k.key_id for k in a2}


@pytest.mark.parametrize("tech, loss, profile", [
    ("dv-bb84", 10.0, TOSHIBA_BB84), ("dv-cow", 10.0, IDQ_COW), ("cv-gg02", 20.0, HWDU_CV),
])
async def test_rate_matches_link_performance(pairs: Factory, tech: str, loss: float, profile: Any) -> None:
    tx, rx = await pairs(tech, loss)
    expected = link_performance(profile, loss).skr_bps
    await until(lambda: tx.status().up)
    loop = asyncio.get_running_loop()
    t0, n0 = loop.time(), tx.status().keys_generated
    await asyncio.sleep(1.5)
    t1, n1 = loop.time(), tx.status().keys_generated
    rate = (n1 - n0) * 256 / (t1 - t0)
    # std 0: only the quantisation of one tick and one key at each end of the window remains
    slack = expected * 2 * tx.config.tick_s / (t1 - t0) + 2 * 256 / (t1 - t0)
    assert abs(rate - expected) <= 0.02 * expected + slack, (rate, expected)
    assert tx.status().skr_bps == pytest.approx(expected)


async def test_fluctuation_is_applied(pairs: Factory) -> None:
    import random

    tx, rx = await pairs("dv-bb84", 10.0)
    tx.fluctuation = RateFluctuation(0.3, 0.05, rng=random.Random(7))
    seen: list[float] = []
    tx.on_perf(lambda st: seen.append(st.skr_bps))
    await until(lambda: len(seen) >= 10)
    expected = link_performance(TOSHIBA_BB84, 10.0).skr_bps
    assert len({round(s) for s in seen}) > 5
    assert all(0.1 * expected < s < 10 * expected for s in seen if s)


async def test_loss_above_budget_takes_the_link_down(pairs: Factory) -> None:
    tx, rx = await pairs("dv-bb84", 5.0)
    events: dict[str, list[ModuleStatus]] = {"tx": [], "rx": []}
    tx.on_state_change(events["tx"].append)
    rx.on_state_change(events["rx"].append)
    await until(lambda: rx.status().up and len(rx.buffer) > 100)
    tx.set_loss(30.0)
    await until(lambda: not tx.status().up and not rx.status().up, what="down at both ends")
    for st in (tx.status(), rx.status()):
        assert st.reason is not None and "exceeds the budget of 26.00 dB" in st.reason
        assert st.skr_bps == 0.0 and st.loss_db == 30.0
    await settled(tx, rx)
    before = tx.status().keys_generated
    await asyncio.sleep(0.2)
    assert tx.status().keys_generated == rx.status().keys_generated == before
    for side in ("tx", "rx"):
        down = [e for e in events[side] if not e.up]
        assert down and "exceeds the budget" in (down[-1].reason or "")
    rx.set_loss(8.0)  # either end may set the loss; the receiver forwards it to the emitter
    await until(lambda: tx.status().up and rx.status().up, what="up again")
    assert tx.loss_db == rx.loss_db == 8.0
    assert events["tx"][-1].up and events["rx"][-1].up
    await until(lambda: rx.status().keys_generated > before)


async def test_no_key_within_budget_is_down_with_a_reason(pairs: Factory) -> None:
    tx, rx = await pairs("dv-cow", 19.0)  # COW budget 18 dB; at 17 dB the rate is positive
    await until(lambda: not tx.status().up and tx.status().reason != "channel disconnected"
                and "budget" in (rx.status().reason or ""))
    tx.set_loss(17.0)
    await until(lambda: rx.status().up)


async def test_disconnect_and_reconnect_keep_both_ends_equal(pairs: Factory) -> None:
    fibres: list[Fibre] = []
    tx, rx = await pairs("dv-bb84", 5.0, fibre=fibres)
    fibre = fibres[0]
    events: list[ModuleStatus] = []
    rx.on_state_change(events.append)
    await until(lambda: rx.status().up)
    for i in range(4):  # cut at arbitrary moments, including mid-block
        await asyncio.sleep(0.05 + 0.013 * i)
        await fibre.cut()
        await until(lambda: not tx.status().up and not rx.status().up, what="down after the cut")
        assert tx.status().reason == rx.status().reason == "channel disconnected"
        assert not tx.status().connected and not rx.status().connected
        await fibre.splice()
        await until(lambda: tx.status().up and rx.status().up, what="up after splicing")
    a, b = await settled(tx, rx)
    assert a == b and len(a) > 1000
    assert [e.up for e in events][-2:] == [False, True]


async def test_receiver_restart_drops_keys_the_other_end_lost(pairs: Factory) -> None:
    tx, rx = await pairs("cv-gg02", 5.0)
    await until(lambda: len(rx.buffer) > 100)
    port = rx.channel_port
    await rx.stop()
    await until(lambda: not tx.status().up)
    rx2 = QKDModule(ModuleConfig(name="B-rx", technology="cv-gg02", role="receiver", pairs_with="A-tx",
                                 loss_db=5.0, tick_s=0.02, fluctuation_std=0.0, channel_port=port))
    await rx2.start()
    try:
        await until(lambda: rx2.status().up and len(rx2.buffer) > 50)
        a, b = await settled(tx, rx2)
        assert a == b
        assert tx.status().keys_discarded > 100
    finally:
        await rx2.stop()


@pytest.mark.parametrize("tx_over, why", [
    ({"technology": "dv-cow"}, "technology"),
    ({"pairs_with": "C-rx"}, "pairs with"),
    ({"key_size_bits": 128}, "key size"),
])
async def test_mismatched_pair_is_refused(pairs: Factory, tx_over: dict[str, Any], why: str) -> None:
    names = ("A-tx", "B-rx")
    tx, rx = await pairs("dv-bb84", 5.0, names=names, tx_over=tx_over)
    await until(lambda: (tx.status().reason or "").startswith("pair refused"), what="refusal")
    assert why in (tx.status().reason or "")
    assert why in (rx.status().reason or "")
    await asyncio.sleep(0.1)
    assert not tx.status().up and not rx.status().up
    assert len(tx.buffer) == len(rx.buffer) == 0


async def test_buffer_full_stops_generation(pairs: Factory) -> None:
    tx, rx = await pairs("dv-bb84", 5.0, buffer_max_keys=500)
    await until(lambda: tx.status().buffer_full and tx.status().buffer_full_ticks > 3)
    a, b = await settled(tx, rx)
    assert a == b and len(a) == 500
    gen = tx.status().keys_generated
    await asyncio.sleep(0.1)
    assert tx.status().keys_generated == gen and tx.status().up
    rx.buffer.ack([k.key_id for k in rx.buffer.serve(200)])  # the receiver's KMS pulls 200
    tx.buffer.ack([k.key_id for k in tx.buffer.serve(200)])
    await until(lambda: tx.status().keys_generated == gen + 200 and rx.status().keys_generated == gen + 200)


# -- the module's 014 key server --------------------------------------------------------------------

class Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = CertificateAuthority(tmp / "ca")
        self.certs: dict[str, CertPaths] = {}

    def server(self, name: str) -> ssl.SSLContext:
        return server_context(self.ca.issue_server(name, self.tmp / "servers"))

    def client(self, sae: str) -> ssl.SSLContext:
        if sae not in self.certs:
            self.certs[sae] = self.ca.issue_client(sae, self.tmp / "clients")
        return client_context(self.certs[sae])


async def call(ctx: ssl.SSLContext, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.request(method, url, **kw) as r:
            return r.status, await r.json(content_type=None)


Source = tuple[ModuleKeySource, Pki, str]


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[Source]:
    """A receiver module (not connected) holding 50 known keys, behind its 014 server."""
    pki = Pki(tmp_path)
    module = QKDModule(ModuleConfig(name="B-rx", technology="dv-bb84", role="receiver", pairs_with="A-tx"))
    module.buffer.append(BufferedKey(str(uuid.uuid4()), 1000 + i, bytes([i]) * 32) for i in range(50))
    src = ModuleKeySource(module, pki.server("qkd-B-rx"), kms_sae_id="kms-B", peer_kms_id="kms-A",
                          max_key_per_request=20)
    port = await src.start()
    yield src, pki, f"https://{HOST}:{port}/api/v1/keys"
    await src.stop()


async def test_keysource_status_fields(source: Source) -> None:
    src, pki, base = source
    status, body = await call(pki.client("kms-B"), "GET", f"{base}/kms-A/status")
    assert status == 200
    assert body == {
        "source_KME_ID": "B-rx", "target_KME_ID": "A-tx", "master_SAE_ID": "kms-B",
        "slave_SAE_ID": "kms-A", "key_size": 256, "stored_key_count": 50, "max_key_count": 100_000,
        "max_key_per_request": 20, "max_key_size": 256, "min_key_size": 256, "max_SAE_ID_count": 0,
        "status_extension": {"served_unacknowledged": 0, "link_up": False},
    }


async def test_keysource_serves_in_seq_order_until_acknowledged(source: Source) -> None:
    src, pki, base = source
    ctx = pki.client("kms-B")
    buffered = src.module.buffer.peek()
    status, body = await call(ctx, "GET", f"{base}/kms-A/enc_keys", params={"number": "5", "size": "256"})
    assert status == 200
    got = [(k["key_ID"], k["key_ID_extension"]["seq"], base64.b64decode(k["key"])) for k in body["keys"]]
    assert got == [(k.key_id, k.seq, k.key) for k in buffered[:5]]
    # not acknowledged: served again, first
    status, again = await call(ctx, "POST", f"{base}/kms-A/enc_keys", json={"number": 7})
    assert [k["key_ID"] for k in again["keys"]] == [k.key_id for k in buffered[:7]]
    ack_url = f"{base}/kms-A/ack"
    status, err = await call(ctx, "POST", ack_url, json={"key_IDs": [{"key_ID": buffered[8].key_id}]})
    assert status == 400 and "not served" in err["message"]
    ids = [{"key_ID": k.key_id} for k in buffered[:7]]
    assert await call(ctx, "POST", ack_url, json={"key_IDs": ids}) == (200, {"acknowledged": 7, "unknown": 0})
    assert await call(ctx, "POST", ack_url, json={"key_IDs": ids}) == (200, {"acknowledged": 0, "unknown": 7})
    status, nxt = await call(ctx, "GET", f"{base}/kms-A/enc_keys")
    assert [k["key_ID"] for k in nxt["keys"]] == [buffered[7].key_id]
    assert len(src.module.buffer) == 43


@pytest.mark.parametrize("kw, code, text", [
    ({"json": {"number": 21}}, 400, "between 1 and 20"),
    ({"json": {"number": 2, "size": 128}}, 400, "size must be 256"),
    ({"json": {"number": "2"}}, 400, "integer"),
    ({"json": {"number": 2, "bogus": 1}}, 400, "unknown parameter"),
])
async def test_keysource_bad_requests(source: Source, kw: dict[str, Any],
                                      code: int, text: str) -> None:
    src, pki, base = source
    status, err = await call(pki.client("kms-B"), "POST", f"{base}/kms-A/enc_keys", **kw)
    assert status == code and text in err["message"]
    assert src.module.buffer.served_unacked == 0


async def test_keysource_503_when_not_enough_keys(source: Source) -> None:
    src, pki, base = source
    src.module.buffer.clear()
    src.module.buffer.append([BufferedKey(str(uuid.uuid4()), 5, bytes(32))])
    status, err = await call(pki.client("kms-B"), "POST", f"{base}/kms-A/enc_keys", json={"number": 2})
    assert status == 503 and set(err) == {"message", "details"}
    assert src.module.buffer.served_unacked == 0


@pytest.mark.parametrize("sae, peer", [("kms-X", "kms-A"), ("kms-B", "kms-X")])
async def test_keysource_unknown_sae_is_401(source: Source, sae: str, peer: str) -> None:
    src, pki, base = source
    for method, path in (("GET", "status"), ("GET", "enc_keys"), ("POST", "ack")):
        kw = {"json": {"key_IDs": [{"key_ID": str(uuid.uuid4())}]}} if method == "POST" else {}
        status, err = await call(pki.client(sae), method, f"{base}/{peer}/{path}", **kw)
        assert status == 401 and err["message"]
    assert src.module.buffer.served_unacked == 0 and len(src.module.buffer) == 50


async def test_keysource_refuses_foreign_certificates(source: Source, tmp_path: Path) -> None:
    src, pki, base = source
    rogue = CertificateAuthority(tmp_path / "rogue").issue_client("kms-B", tmp_path / "rogue-out")
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    ctx.load_cert_chain(str(rogue.cert), str(rogue.key))
    no_cert = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    for bad in (ctx, no_cert):
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await call(bad, "GET", f"{base}/kms-A/status")
    assert src.module.buffer.served_unacked == 0


# -- feeder: module -> KMS key store at both ends ---------------------------------------------------

def stored_keys(state_dir: Path) -> tuple[bytes, bytes]:
    """(packed key IDs, key material) of a store in seq order, read with a read-only connection."""
    db = sqlite3.connect(f"file:{state_dir / KeyStore.FILE_NAME}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key_ids, material FROM block ORDER BY first_seq").fetchall()
    finally:
        db.close()
    return b"".join(r[0] for r in rows), b"".join(r[1] for r in rows)


async def test_feeders_fill_both_stores_with_the_same_keys(pairs: Factory, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    tx, rx = await pairs("dv-bb84", 20.0, tick_s=0.05)  # ~450 keys/s
    stores, sources, feeders = [], [], []
    crashes = {"A": 0, "B": 0}
    try:
        for node, peer, module, parity in (("A", "B", tx, 0), ("B", "A", rx, 1)):
            store = KeyStore(tmp_path / f"store-{node}")
            store.add_association(f"{node}-{peer}", node, peer, master_parity=parity)
            real_ingest = store.ingest

            def flaky(aid: str, keys: Any, node: str = node, real: Any = real_ingest) -> int:
                crashes[node] += 1
                if crashes[node] == 2:  # crash before storing: nothing stored, nothing acked
                    raise StorageError("disk on fire")
                n = real(aid, keys)
                if crashes[node] == 4:  # crash after storing, before the ACK: served again later
                    raise StorageError("power cut after commit")
                return n

            store.ingest = flaky  # type: ignore[method-assign,assignment]
            src = ModuleKeySource(module, pki.server(f"qkd-{module.name}"), kms_sae_id=f"kms-{node}",
                                  peer_kms_id=f"kms-{peer}", max_key_per_request=64)
            port = await src.start()
            feeder = ModuleFeeder(f"https://{HOST}:{port}", pki.client(f"kms-{node}"), f"kms-{peer}",
                                  store, f"{node}-{peer}", batch=50, poll_s=0.05, max_backoff_s=0.1)
            await feeder.start()
            stores.append(store)
            sources.append(src)
            feeders.append(feeder)
        await until(lambda: all(s.stats(s.associations()[0].assoc_id).available_total > 300 for s in stores),
                    timeout=10, what="keys in both stores")
        tx.set_loss(40.0)  # stop generation; the channel stays up so the last COMMIT arrives
        await until(lambda: not rx.status().up)
        await until(lambda: len(tx.buffer) == len(rx.buffer) == 0, timeout=5, what="modules drained")
        sa, sb = (s.stats(s.associations()[0].assoc_id) for s in stores)
        assert sa.available_total == sb.available_total == tx.status().keys_generated
        assert sa.last_seq == sb.last_seq
        assert stored_keys(tmp_path / "store-A") == stored_keys(tmp_path / "store-B")
        ids, _ = stored_keys(tmp_path / "store-A")
        for off in (0, len(ids) // 2 - len(ids) // 2 % 16, len(ids) - 16):
            kid = str(uuid.UUID(bytes=ids[off:off + 16]))
            ra, rb = stores[0].key_record("A-B", kid), stores[1].key_record("B-A", kid)
            assert ra is not None and rb is not None and ra.seq == rb.seq and ra.state == "available"
        for f in feeders:
            st = f.stats()
            assert st.errors >= 2 and st.keys_repeated > 0 and st.keys_dropped == 0
            assert st.keys_pulled + st.keys_repeated == sa.available_total  # repeated: the lost ACK
    finally:
        for f in feeders:
            await f.stop()
        for src in sources:
            await src.stop()
        for s in stores:
            s.close()


async def test_listener_session_cancelled_while_closing_logs_no_error() -> None:
    """A photon channel session cancelled, then cancelled again while it closes its connection (the
    module stopping while the listener stops): the session ends quietly, asyncio logs no error (it
    logged the connection task's CancelledError with a Traceback in a node's log)."""
    from qkdnode.devices.channel import ChannelListener

    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        async def on_connect(channel: Any) -> None:
            await asyncio.sleep(3600)

        listener = ChannelListener("127.0.0.1", 0, on_connect)
        port = await listener.start()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: listener._tasks, what="the session task")
        [task] = list(listener._tasks)
        task.cancel()
        await asyncio.sleep(0)  # the session is now closing its connection
        task.cancel()
        await asyncio.sleep(0.2)
        assert task.done() and not errors, errors
        writer.close()
        await listener.stop()
    finally:
        loop.set_exception_handler(None)
