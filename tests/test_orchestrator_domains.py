"""Two domains, one orchestrator each, joined at a border node (examples/two-domains.yaml), and the
direct-link enumeration on a switched network (examples/switched.yaml), both after `qkdnet up`."""

from __future__ import annotations

import json
from typing import Iterator

import pytest

from test_orchestrator_helpers import (
    ROOT, UpNetwork, api, apps, dec_keys, enc_keys, forwarder_available, qkdnet_up, virt_links, wait_for,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpNetwork]:
    up = qkdnet_up(ROOT / "examples" / "two-domains.yaml", tmp_path_factory.mktemp("orch-domains") / "net")
    try:
        yield up
    finally:
        up.stop()


def _segments(domains: UpNetwork, rid: str) -> tuple[dict, dict]:
    st, west = api(f"{domains.url('west')}/routes/{rid}")
    assert st == 200, west
    st, east = api(f"{domains.url('east')}/routes/{rid}")
    assert st == 200, east
    return west, east


def test_each_domain_installs_its_segment_of_the_declared_route(domains: UpNetwork) -> None:
    net = domains.net
    assert set(net["orchestrators"]) == {"west", "east"}
    assert net["nodes"]["gw"]["domains"] == ["west", "east"]
    rid = net["routes"]["west-east"]["qkdl_id"]
    west, east = _segments(domains, rid)
    assert west["origin"] and not east["origin"]
    assert west["paths"][0]["nodes"] == ["alice", "w1", "gw"] and west["border"] == "gw"
    assert west["peer_dst"] == "bob" and west["dst"] == "gw"
    assert east["paths"][0]["nodes"][0] == "gw" and east["paths"][0]["nodes"][-1] == "bob"
    # two segments, each its own VIRT link naming only its own domain's nodes, stitched at gw
    ids = {n: i["node_id"] for n, i in net["nodes"].items()}
    for seg in (west, east):
        nodes = seg["paths"][0]["nodes"]
        q = seg["paths"][0]["qkdl_id"]
        for k, node in enumerate(nodes):
            vl = virt_links(domains.endpoint(node))[q]
            assert (vl["local"], vl["remote"]) == (ids[nodes[0]], ids[nodes[-1]])
            assert vl["prev"] == (ids[nodes[k - 1]] if k else None)
            assert vl["next"] == ([ids[nodes[k + 1]]] if k < len(nodes) - 1 else [])
    assert west["paths"][0]["qkdl_id"] != east["paths"][0]["qkdl_id"]
    assert rid in apps(domains.endpoint("alice")) and rid in apps(domains.endpoint("bob"))
    assert rid not in apps(domains.endpoint("gw"))  # the border node only stitches


def test_peers_see_only_the_abstract_view(domains: UpNetwork) -> None:
    st, view = api(f"{domains.url('east')}/abstract?node=bob")
    assert st == 200
    gw = domains.net["nodes"]["gw"]["node_id"]
    assert set(view) == {"domain", "border", "reachable", "spare_bps"}
    assert list(view["border"]) == [gw] and view["spare_bps"][gw] > 0 and view["reachable"] is True
    interior = {domains.net["nodes"][n]["node_id"] for n in ("e1", "e2", "bob")}
    assert not any(i in json.dumps(view) for i in interior)
    assert api(f"{domains.url('east')}/abstract?node=nowhere")[1]["reachable"] is False


def _interior_ids(domains: UpNetwork, domain: str) -> dict[str, str]:
    return {i["node_id"]: n for n, i in domains.net["nodes"].items() if i["domains"] == [domain]}


def test_a_domain_never_holds_a_node_id_of_the_other_domains_interior(domains: UpNetwork, tmp_path) -> None:
    """West's orchestrator: its REST views, and an orchestrator of west started afresh with a wire
    recorder (it discovers every west node, the border node included, and rebuilds its routes)."""
    import asyncio

    from orchestrator.controller import Orchestrator
    from orchestrator.inventory import from_network_json
    from orchestrator.session import WireRecorder

    east_inside = _interior_ids(domains, "east")
    rid = domains.net["routes"]["west-east"]["qkdl_id"]
    texts = [json.dumps(api(f"{domains.url('west')}/{what}")[1])
             for what in ("topology", "links", "routes", "events", "direct-links", f"routes/{rid}")]
    recorder = WireRecorder(path=str(tmp_path / "west-wire.xml"))

    async def fresh_west() -> list[str]:
        orch = Orchestrator(from_network_json(domains.net, "west"), recorder=recorder, poll_interval=0)
        try:
            await orch.start()
            await orch.refresh()
            rebuilt = orch.routes.get(rid)
            assert rebuilt is not None and rebuilt.stitch == domains.net["nodes"]["gw"]["node_id"]
            assert rebuilt.peer_dst is None  # the nodes do not name the peer's end
            # the declared route asked again (as `qkdnet up` does on a state dir it ran before): the same
            again = await orch.provision_route("alice", "bob", rebuilt.min_rate, list(rebuilt.saes), route_id=rid)
            assert again is rebuilt and again.peer_dst == "bob"
            with pytest.raises(Exception, match="exists with other parameters"):
                await orch.provision_route("alice", "bob", rebuilt.min_rate + 1, list(rebuilt.saes), route_id=rid)
            return [repr(orch.model.nodes), repr(orch.routes), repr(orch.ids),
                    json.dumps(orch.topology_json()), json.dumps(orch.links_json()), json.dumps(orch.events)]
        finally:
            await orch.stop()

    texts += asyncio.run(fresh_west())
    recorder.close()
    wire = (tmp_path / "west-wire.xml").read_text()
    assert "<rpc-reply" in wire and domains.net["nodes"]["gw"]["node_id"] in wire
    texts.append(wire)
    leaked = {name for q, name in east_inside.items() for t in texts if q in t}
    assert not leaked, f"west's orchestrator holds node IDs of east's interior: {sorted(leaked)}"
    # the other way round: east's REST views know nothing of west's interior either
    west_inside = _interior_ids(domains, "west")
    east_texts = [json.dumps(api(f"{domains.url('east')}/{what}")[1]) for what in ("topology", "links", "routes", "events")]
    assert not {n for q, n in west_inside.items() for t in east_texts if q in t}


def test_the_cli_talks_to_the_domain_controllers(domains: UpNetwork) -> None:
    import subprocess
    import sys

    def qkdorch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--state-dir", str(domains.state)],
                              capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""})

    out = qkdorch("routes", "--domain", "west")
    assert out.returncode == 0 and "alice > w1 > gw" in out.stdout, out.stdout + out.stderr
    out = qkdorch("links", "--domain", "east")
    assert out.returncode == 0 and "PHYS links" in out.stdout
    out = qkdorch("routes")
    assert out.returncode == 2 and "give --domain" in out.stderr
    out = qkdorch("route", "alice", "w1", "--rate", "999999999", "--domain", "west")
    assert out.returncode == 2 and "409" in out.stderr and "no key route" in out.stderr


@pytest.mark.skipif(not forwarder_available(), reason="src/qkdnode/forwarder has no relay server yet")
def test_014_keys_between_the_domains(domains: UpNetwork) -> None:
    st, body = enc_keys(domains.net, "alice", "sae-west", "sae-east")
    assert st == 200, body
    st, got = dec_keys(domains.net, "bob", "sae-east", "sae-west", [k["key_ID"] for k in body["keys"]])
    assert st == 200 and got["keys"] == body["keys"]


def test_cross_domain_route_deleted_and_provisioned_over_rest(domains: UpNetwork) -> None:
    rid = domains.net["routes"]["west-east"]["qkdl_id"]
    st, gone = api(f"{domains.url('west')}/routes/{rid}", "DELETE")
    assert st == 200, gone
    assert api(f"{domains.url('east')}/routes/{rid}")[0] == 404
    for node in domains.net["nodes"]:
        assert rid not in virt_links(domains.endpoint(node))
    st, r = api(f"{domains.url('east')}/routes", "POST",
                {"src": "bob", "dst": "alice", "rate_bps": 15000, "saes": ["sae-east", "sae-west"]})
    assert st == 201, r
    assert r["peer_domain"] == "west" and r["paths"][0]["nodes"] in (["bob", "e1", "gw"], ["bob", "e2", "gw"])
    st, w = api(f"{domains.url('west')}/routes/{r['id']}")
    assert st == 200 and w["paths"][0]["nodes"] == ["gw", "w1", "alice"] and not w["origin"]
    if forwarder_available():
        st, body = wait_for(lambda: (lambda res: res if res[0] == 200 else None)(
            enc_keys(domains.net, "bob", "sae-east", "sae-west")), 10, "keys east -> west")
        st, got = dec_keys(domains.net, "alice", "sae-west", "sae-east", [k["key_ID"] for k in body["keys"]])
        assert st == 200 and got["keys"] == body["keys"]


def test_a_route_from_the_border_node_into_the_other_domain(domains: UpNetwork) -> None:
    st, r = api(f"{domains.url('west')}/routes", "POST", {"src": "gw", "dst": "bob", "rate_bps": 1000})
    assert st == 201, r
    assert r["paths"] == [] and r["peer_domain"] == "east" and r["border"] == "gw"  # nothing west writes
    st, e = api(f"{domains.url('east')}/routes/{r['id']}")
    assert st == 200 and e["paths"][0]["nodes"][0] == "gw" and e["paths"][0]["nodes"][-1] == "bob"
    q = e["paths"][0]["qkdl_id"]
    assert q in virt_links(domains.endpoint("gw")) and q in virt_links(domains.endpoint("bob"))
    st, _ = api(f"{domains.url('west')}/routes/{r['id']}", "DELETE")
    assert st == 200
    assert api(f"{domains.url('east')}/routes/{r['id']}")[0] == 404
    assert q not in virt_links(domains.endpoint("gw"))


def test_a_domain_heals_its_own_segment_alone(domains: UpNetwork) -> None:
    import subprocess
    import sys

    st, routes = api(f"{domains.url('east')}/routes")
    [r] = [x for x in routes["routes"] if x["origin"]]
    east_path = r["paths"][0]["nodes"]  # bob, e1|e2, gw: east's segment up to the border node
    assert east_path[0] == "bob" and east_path[-1] == "gw", east_path
    via = east_path[1]
    other = "e2" if via == "e1" else "e1"
    fibre = f"gw-{via}"
    st, west_before = api(f"{domains.url('west')}/routes/{r['id']}")
    cut = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "fibre", "cut", fibre, "--state-dir",
                          str(domains.state)], capture_output=True, text=True)
    assert cut.returncode == 0, cut.stderr
    try:
        def moved() -> dict | None:
            st, now = api(f"{domains.url('east')}/routes/{r['id']}")
            return now if st == 200 and now["paths"][0]["nodes"] == ["bob", other, "gw"] else None

        wait_for(moved, 20, f"east to move its segment to {other}")
        ids = {n: i["node_id"] for n, i in domains.net["nodes"].items()}
        q = r["paths"][0]["qkdl_id"]
        wait_for(lambda: virt_links(domains.endpoint("gw"))[q]["prev"] == ids[other], 10, "gw's new upstream")
        st, west_after = api(f"{domains.url('west')}/routes/{r['id']}")
        assert west_after["paths"] == west_before["paths"]  # west's segment did not move
        if forwarder_available():
            st, body = wait_for(lambda: (lambda res: res if res[0] == 200 else None)(
                enc_keys(domains.net, "bob", "sae-east", "sae-west")), 15, "keys over the healed route")
            st, got = dec_keys(domains.net, "alice", "sae-west", "sae-east", [k["key_ID"] for k in body["keys"]])
            assert st == 200 and got["keys"] == body["keys"]
    finally:
        subprocess.run([sys.executable, "-m", "orchestrator.netctl", "fibre", "restore", fibre, "--state-dir",
                        str(domains.state)], capture_output=True)


@pytest.fixture(scope="module")
def switched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpNetwork]:
    up = qkdnet_up(ROOT / "examples" / "switched.yaml", tmp_path_factory.mktemp("orch-switched") / "net")
    try:
        yield up
    finally:
        up.stop()


def test_direct_links_through_the_optical_switches(switched: UpNetwork) -> None:
    st, body = api(f"{switched.url('lab')}/direct-links")
    assert st == 200
    got = {(d["emitter"]["device"], d["receiver"]["device"]): d for d in body["direct_links"]}
    # examples/switched.yaml: tx-a -> rx-b 2.0 dB fibre + 2 x 1.0 dB switches; tx-a -> rx-c 2.0 + 3.0 + 2 x 1.0
    assert set(got) == {("tx-a", "rx-b"), ("tx-a", "rx-c")}
    assert got[("tx-a", "rx-b")]["loss_db"] == pytest.approx(4.0)
    assert got[("tx-a", "rx-c")]["loss_db"] == pytest.approx(7.0)
    assert all(d["budget_db"] == pytest.approx(12.0) and d["technology"] == "CV-QKD" for d in got.values())
    st, topo = api(f"{switched.url('lab')}/topology")
    assert sorted(f["loss_db"] for f in topo["physical_graph"]["fibres"]) == [2.0, 3.0]
