"""Telemetry on a real network: `qkdnet up` of examples/chain-4.yaml (a - b - c - d, DV/CV/DV
links, a relay route a -> d) plus an SAE on b, so that ETSI 004 runs over the direct link a - b.

Every node's Prometheus `/metrics` (URL from network.json) and the orchestrator's are scraped
before and after real requests: ETSI 014 counters move by exactly the requests made, per SAE
(the client certificate's CN) and status code, the relay counters by exactly the keys relayed at
each hop, ETSI 004 counters by exactly the calls made; link gauges carry the live rates; the NETCONF
counters follow an ncclient session; the orchestrator exports its routes as /routes shows them.
No key material appears in any scrape.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
import yaml
from lxml import etree
from ncclient.operations.rpc import RPCError
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.nodeclient import connect
from qkdnode.keystore.etsi004 import Etsi004Client, pb
from qkdnode.pki import CertPaths
from test_orchestrator_helpers import UpNetwork, api, dec_keys, enc_keys, qkdnet_up, wait_for

pytestmark = pytest.mark.timeout(120)
SUITE_BUDGET_S = 120.0  # a 4-node network with its orchestrator

ROOT = Path(__file__).resolve().parents[1]
N = 5  # enc_keys requests
PER_REQUEST = 2  # keys per request
MON_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), float(s.value)) for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name]


def value(text: str, name: str, **labels: str) -> float:
    """The sample of `name` whose labels include `labels` (0 when there is none yet)."""
    found = [v for lab, v in samples(text, name) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else 0.0


class Net:
    up: UpNetwork
    net: dict[str, Any]
    keys: list[str] = []  # base64 key material the SAEs received here

    @classmethod
    def metrics(cls, node: str) -> str:
        return scrape(cls.net["nodes"][node]["metrics_url"])


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[Net]]:
    tmp = tmp_path_factory.mktemp("metrics")
    topo = yaml.safe_load((ROOT / "examples" / "chain-4.yaml").read_text())
    topo["saes"].append({"id": "sae-b", "node": "b"})
    path = tmp / "chain-4-metrics.yaml"
    path.write_text(yaml.safe_dump(topo, sort_keys=False))
    Net.up = qkdnet_up(path, tmp / "net", timeout=90)
    Net.net = Net.up.net
    Net.keys = []
    try:
        yield Net
    finally:
        Net.up.stop()


def test_every_node_and_the_orchestrator_serve_metrics(chain: type[Net]) -> None:
    for name, info in chain.net["nodes"].items():
        assert info["metrics_url"].startswith("http://127.0.0.1:") and info["metrics_url"].endswith("/metrics")
        text = chain.metrics(name)
        assert value(text, "qkd_netconf_sessions", node=name) >= 1  # the orchestrator's sessions
        for lab, _ in samples(text, "qkd_link_skr_bps"):
            assert lab["node"] == name
    text = scrape(chain.up.url("lab") + "/metrics")
    assert value(text, "qkd_orch_routes", domain="lab") >= 1


def test_etsi014_counted_exactly_per_sae_and_relay_per_hop(chain: type[Net]) -> None:
    net = chain.net
    before = {n: chain.metrics(n) for n in "abcd"}
    ids: list[str] = []
    for _ in range(N):
        status, body = enc_keys(net, "a", "sae-a", "sae-d", PER_REQUEST)
        assert status == 200, body
        ids += [k["key_ID"] for k in body["keys"]]
        chain.keys += [k["key"] for k in body["keys"]]
    status, body = enc_keys(net, "a", "sae-a", "sae-nobody", 1)  # no association: 401, nothing delivered
    assert status == 401, body
    status, body = dec_keys(net, "d", "sae-d", "sae-a", ids)
    assert status == 200 and [k["key_ID"] for k in body["keys"]] == ids, body
    after = {n: chain.metrics(n) for n in "abcd"}

    def moved(node: str, name: str, **labels: str) -> float:
        return value(after[node], name, node=node, **labels) - value(before[node], name, node=node, **labels)

    assert moved("a", "qkd_etsi014_requests_total", sae="sae-a", endpoint="enc_keys", code="200") == N
    assert moved("a", "qkd_etsi014_requests_total", sae="sae-a", endpoint="enc_keys", code="401") == 1
    assert moved("a", "qkd_etsi014_keys_total", sae="sae-a", endpoint="enc_keys") == N * PER_REQUEST
    assert moved("a", "qkd_etsi014_request_seconds_count", endpoint="enc_keys") == N + 1
    assert moved("a", "qkd_etsi014_requests_total", sae="sae-a", endpoint="dec_keys", code="200") == 0
    assert moved("d", "qkd_etsi014_requests_total", sae="sae-d", endpoint="dec_keys", code="200") == 1
    assert moved("d", "qkd_etsi014_keys_total", sae="sae-d", endpoint="dec_keys") == N * PER_REQUEST
    assert moved("d", "qkd_etsi014_requests_total", sae="sae-d", endpoint="enc_keys", code="200") == 0
    # every relayed key: originated at a, forwarded by b and c, terminated at d
    keys = N * PER_REQUEST
    assert moved("a", "qkd_relay_keys_total", direction="originated") == keys
    assert moved("b", "qkd_relay_keys_total", direction="forwarded") == keys
    assert moved("c", "qkd_relay_keys_total", direction="forwarded") == keys
    assert moved("d", "qkd_relay_keys_total", direction="terminated") == keys
    assert moved("a", "qkd_relay_keys_total", direction="terminated") == 0
    # the relay association (qkdl_id = the route's ID): 256-bit keys delivered at both ends
    _, routes = api(chain.up.url("lab") + "/routes")
    (route,) = [r["id"] for r in routes["routes"]]
    assert moved("a", "qkd_keystore_delivered_bits_total", qkdl_id=route) == keys * 256
    assert moved("d", "qkd_keystore_delivered_bits_total", qkdl_id=route) == keys * 256
    for text in after.values():
        assert not any(k in text for k in chain.keys), "key material in /metrics"


def test_link_gauges_carry_live_rates(chain: type[Net]) -> None:
    _, links = api(chain.up.url("lab") + "/links")
    phys = links["phys"]
    assert len(phys) == 3
    texts = {n: chain.metrics(n) for n in "abcd"}
    for ln in phys:
        for node, peer in ((ln["a"], ln["b"]), (ln["b"], ln["a"])):
            text, q = texts[node], ln["qkdl_id"]
            assert value(text, "qkd_link_skr_bps", node=node, qkdl_id=q, peer=peer) > 0
            assert value(text, "qkd_link_up", node=node, qkdl_id=q) == 1
            assert value(text, "qkd_link_loss_db", node=node, qkdl_id=q) > 0
            assert value(text, "qkd_keystore_available_bits", node=node, qkdl_id=q) > 0
            qber = [v for lab, v in samples(text, "qkd_link_qber_ratio") if lab["qkdl_id"] == q]
            snr = [v for lab, v in samples(text, "qkd_link_snr_db") if lab["qkdl_id"] == q]
            if ln["qber_percent"] is None:  # the CV link b - c: SNR, no QBER
                assert qber == [] and len(snr) == 1
            else:
                assert snr == [] and len(qber) == 1 and 0 < qber[0] < 0.11
                assert qber[0] * 100 == pytest.approx(ln["qber_percent"], abs=0.01)


def test_netconf_sessions_and_rpcs_follow_a_client(chain: type[Net]) -> None:
    ep = chain.up.endpoint("b")
    before = chain.metrics("b")
    with connect(ep, timeout=10) as m:
        def sessions_agree() -> bool:
            reply = m.get(filter=("subtree", f'<netconf-state xmlns="{MON_NS}"><sessions/></netconf-state>'))
            listed = len(reply.data_ele.findall(f".//{{{MON_NS}}}session"))
            return value(chain.metrics("b"), "qkd_netconf_sessions", node="b") == listed

        wait_for(sessions_agree, 10, "qkd_netconf_sessions = the sessions ietf-netconf-monitoring lists")
        during = value(chain.metrics("b"), "qkd_netconf_sessions", node="b")
        assert during >= 2  # the orchestrator's and ours
        m.get_schema("etsi-qkd-sdn-node")
        m.get_schema("etsi-qkd-sdn-node")
        with pytest.raises(RPCError):
            m.dispatch(etree.fromstring('<no-such-operation xmlns="urn:example:none"/>'))
        after = chain.metrics("b")
    assert value(after, "qkd_netconf_rpcs_total", node="b", operation="get-schema", result="ok") - \
        value(before, "qkd_netconf_rpcs_total", node="b", operation="get-schema", result="ok") == 2
    assert value(after, "qkd_netconf_rpcs_total", node="b", operation="no-such-operation", result="error") == 1
    assert value(after, "qkd_netconf_rpcs_total", node="b", operation="get", result="ok") > \
        value(before, "qkd_netconf_rpcs_total", node="b", operation="get", result="ok")
    wait_for(lambda: value(chain.metrics("b"), "qkd_netconf_sessions", node="b") == during - 1, 10,
             "the session gauge to drop when the session closes")


def test_etsi004_counted_exactly_per_sae(chain: type[Net]) -> None:
    net = chain.net
    certs = {s: CertPaths(Path(net["saes"][s]["cert"]), Path(net["saes"][s]["key"]), Path(net["saes"][s]["ca"]))
             for s in ("sae-a", "sae-b")}
    addr = {n: net["nodes"][n]["etsi004"]["url"] for n in ("a", "b")}
    before = {n: chain.metrics(n) for n in ("a", "b")}
    gets = 3

    async def run() -> None:
        async with Etsi004Client(addr["a"], certs["sae-a"]) as ca, Etsi004Client(addr["b"], certs["sae-b"]) as cb:
            r = await ca.open_connect("sae-a", "sae-b", pb.QoS(key_chunk_size=32, timeout=5000))
            assert r.status == pb.PEER_NOT_CONNECTED, r
            r2 = await cb.open_connect("sae-b", "sae-a", pb.QoS(key_chunk_size=32, timeout=5000), r.key_stream_id)
            assert r2.status == pb.SUCCESSFUL, r2
            for i in range(gets):
                ka, kb = await ca.get_key(r.key_stream_id, i), await cb.get_key(r.key_stream_id, i)
                assert ka.status == kb.status == pb.SUCCESSFUL and ka.key_buffer == kb.key_buffer
            async with Etsi004Client(addr["b"], certs["sae-a"]) as wrong:  # sae-a is not an SAE of b
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await wrong.open_connect("sae-a", "sae-b", pb.QoS(key_chunk_size=32))

            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    asyncio.run(run())
    after = {n: chain.metrics(n) for n in ("a", "b")}

    def moved(node: str, name: str, **labels: str) -> float:
        return value(after[node], name, node=node, **labels) - value(before[node], name, node=node, **labels)

    assert moved("a", "qkd_etsi004_requests_total", sae="sae-a", op="OPEN_CONNECT", code=str(pb.PEER_NOT_CONNECTED)) == 1
    assert moved("b", "qkd_etsi004_requests_total", sae="sae-b", op="OPEN_CONNECT", code=str(pb.SUCCESSFUL)) == 1
    assert moved("a", "qkd_etsi004_requests_total", sae="sae-a", op="GET_KEY", code="0") == gets
    assert moved("b", "qkd_etsi004_requests_total", sae="sae-b", op="GET_KEY", code="0") == gets
    assert moved("a", "qkd_etsi004_keys_total", sae="sae-a") == gets
    assert moved("b", "qkd_etsi004_keys_total", sae="sae-b") == gets
    assert moved("b", "qkd_etsi004_requests_total", sae="sae-a", op="OPEN_CONNECT", code="PERMISSION_DENIED") == 1
    assert moved("b", "qkd_etsi004_keys_total", sae="sae-a") == 0


def test_orchestrator_metrics_match_its_api(chain: type[Net]) -> None:
    url = chain.up.url("lab")
    _, routes = api(url + "/routes")
    _, links = api(url + "/links")
    text = scrape(url + "/metrics")
    assert value(text, "qkd_orch_routes", domain="lab") == len(routes["routes"]) == 1
    for r in routes["routes"]:
        assert r["status"] == "up"
        assert value(text, "qkd_orch_route_reserved_bps", domain="lab", route=r["id"]) == \
            sum(p["rate_bps"] for p in r["paths"]) == 50000
    assert value(text, "qkd_orch_links_up", domain="lab") == sum(1 for ln in links["phys"] if ln["up"]) == 3
    assert value(text, "qkd_orch_reroutes_total", domain="lab") == 0
    rpcs = {n: value(text, "qkd_orch_netconf_rpcs_total", domain="lab", node=n) for n in "abcd"}
    assert all(v > 0 for v in rpcs.values()), rpcs  # discovery, subscriptions, the route's transaction
    # the controller re-reads every node every few seconds: its RPC counters keep moving
    wait_for(lambda: all(value(scrape(url + "/metrics"), "qkd_orch_netconf_rpcs_total", domain="lab", node=n) > v
                         for n, v in rpcs.items()), 30, "the orchestrator's NETCONF RPC counters to move")
