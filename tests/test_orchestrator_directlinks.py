"""Direct QKD links built by the orchestrator through the optical switches
(tests/data/switched-wdm.yaml: examples/switched.yaml plus DV pairs and a second fibre for WDM).

`qkdnet up` asks the orchestrator to build the declared link tx-a -> rx-c: a TAPI connectivity
service on ofs-a (port 1 -> 2) and on ofs-b (port 2 -> 3), a PHYS qkd_link at a and at c with the
same qkdl_id, in one transaction. Checked over NETCONF, on the optical plant stub (the only stubbed
hardware), through the REST API and the CLI, and by the keys the link then carries (ETSI 015
`qkdl_performance`, ETSI 014 between sae-a and sae-c). Then WDM: links on disjoint DWDM channels
share a fibre's switch ports, an overlapping one takes another fibre, a band-less (O-band) one is
refused. The network tests share one network and run in file order (each builds on the previous one).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from lxml import etree

from orchestrator.controller import Orchestrator
from orchestrator.directlink import direct_link_id, light_paths
from orchestrator.model import Interface
from orchestrator.routing import DirectLink, Endpoint
from orchestrator.spectrum import channel_band, share_refusal
from orchestrator.inventory import from_network_json
from orchestrator.nodeclient import QKD_NS, connect
from orchestrator.topology import TopologyError, parse_topology
from test_orchestrator_helpers import ROOT, UpNetwork, api, dec_keys, enc_keys, qkdnet_up, wait_for

COMMON_NS = "urn:onf:otcc:yang:tapi-common"
CONNECTIVITY_NS = "urn:onf:otcc:yang:tapi-connectivity"
PHOTONIC_NS = "urn:onf:otcc:yang:tapi-photonic-media"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NS = {"c": COMMON_NS, "cs": CONNECTIVITY_NS, "pm": PHOTONIC_NS, "q": QKD_NS}
QKD_FILTER = f'<qkd_node xmlns="{QKD_NS}"/>'
TAPI_FILTER = f'<context xmlns="{COMMON_NS}"/>'
CH34 = [193_350_000, 193_450_000]  # the modules' 100 GHz DWDM channel (ait-cv-qpsk, 1550.12 nm)
CH32 = [193_150_000, 193_250_000]  # idq-cerberis3-cow-c32
TOPOLOGY = ROOT / "tests" / "data" / "switched-wdm.yaml"
SUITE_BUDGET_S = 180  # one 3-node network; four direct links built, each waited for until keyed
LOSS_A_C = 2.0 + 3.0 + 2 * 1.0  # fibres a-b, b-c and the insertion losses of ofs-a and ofs-b


# -- the network --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpNetwork]:
    net = qkdnet_up(TOPOLOGY, tmp_path_factory.mktemp("directlinks") / "net")
    try:
        yield net
    finally:
        net.stop()
    logs = "".join(p.read_text() for p in (net.state / "logs").glob("*.log"))
    assert "Traceback" not in logs


def config(up: UpNetwork, node: str) -> dict[str, Any]:
    return dict(yaml.safe_load((up.state / "nodes" / f"{node}.yaml").read_text()))


def sip(up: UpNetwork, node: str, port: int) -> str:
    return str(next(p["sip"] for p in config(up, node)["switch"]["port_plan"] if p["port"] == port))


def qkdi(up: UpNetwork, node: str, module: str) -> int:
    return int(next(m["qkdi_id"] for m in config(up, node)["modules"] if m["name"] == module))


def node_id(up: UpNetwork, node: str) -> str:
    return str(up.net["nodes"][node]["node_id"])


def fabric(up: UpNetwork, path: str) -> Any:
    with urllib.request.urlopen(f"{up.net['fabric']['url']}{path}", timeout=10) as r:
        return json.loads(r.read())


def cross_connects(up: UpNetwork, switch: str) -> list[list[int]]:
    return list(fabric(up, f"/switches/{switch}/cross-connects")["cross_connects"])


def light(up: UpNetwork, tx: str) -> dict[str, Any]:
    return next(lp for lp in fabric(up, "/lightpaths")["light_paths"] if lp["transmitter"] == tx)


def running(up: UpNetwork, node: str) -> dict[str, str]:
    """Running qkd_node and TAPI context of a node, canonical XML."""
    out = {}
    with connect(up.endpoint(node)) as m:
        for key, flt in (("qkd", QKD_FILTER), ("tapi", TAPI_FILTER)):
            out[key] = etree.tostring(m.get_config(source="running", filter=("subtree", flt)).data_ele,
                                      method="c14n").decode()
    return out


def snapshot(up: UpNetwork) -> dict[str, dict[str, str]]:
    return {n: running(up, n) for n in ("a", "b", "c")}


def services(up: UpNetwork, node: str) -> dict[str, dict[str, Any]]:
    """Connectivity services in running: uuid -> names, end-points (local-id -> SIP) and spectrum."""
    with connect(up.endpoint(node)) as m:
        data = m.get_config(source="running", filter=("subtree", TAPI_FILTER)).data_ele
    out = {}
    for cs in data.iterfind(".//cs:connectivity-service", NS):
        eps = {ep.findtext("cs:local-id", None, NS): ep.findtext(
            "cs:service-interface-point/cs:service-interface-point-uuid", None, NS) for ep in cs.iterfind("cs:end-point", NS)}
        bands = {(int(s.findtext("pm:lower-frequency", None, NS)), int(s.findtext("pm:upper-frequency", None, NS)))
                 for s in cs.iterfind(".//pm:spectrum", NS)}
        names = {n.findtext("cs:value-name", None, NS): n.findtext("cs:value", None, NS) for n in cs.iterfind("cs:name", NS)}
        out[cs.findtext("cs:uuid", None, NS)] = {"names": names, "end_points": eps, "bands": bands}
    return out


def phys(up: UpNetwork, node: str, qkdl_id: str) -> dict[str, Any] | None:
    with connect(up.endpoint(node)) as m:
        data = m.get(filter=("subtree", QKD_FILTER)).data_ele
    for ln in data.iterfind(".//q:qkd_link", NS):
        if ln.findtext("q:qkdl_id", None, NS) == qkdl_id:
            skr = ln.findtext("q:qkdl_performance/q:skr", None, NS)
            return {"type": ln.findtext("q:qkdl_type", None, NS),
                    "local": (ln.findtext("q:qkdl_local/q:qkdn_id", None, NS), int(ln.findtext("q:qkdl_local/q:qkdi_id", "0", NS))),
                    "remote": (ln.findtext("q:qkdl_remote/q:qkdn_id", None, NS), int(ln.findtext("q:qkdl_remote/q:qkdi_id", "0", NS))),
                    "att": float(ln.findtext("q:phys_channel_att", "nan", NS)),
                    "wavelength": ln.findtext("q:phys_wavelength", None, NS),
                    "role": ln.findtext("q:phys_qkd_role", None, NS), "skr": int(skr) if skr else None}
    return None


def qkdorch(up: UpNetwork, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--state-dir", str(up.state)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})


def declared(up: UpNetwork) -> str:
    (dl,) = up.net["direct_links"]
    assert (dl["emitter"], dl["receiver"]) == ("tx-a", "rx-c")
    return str(dl["qkdl_id"])


# -- tests on the network ------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_the_declared_link_is_built(up: UpNetwork) -> None:
    qkdl_id = declared(up)
    assert qkdl_id == direct_link_id("tx-a", "rx-c")
    # one connectivity service per switch on the path, naming the link
    (sa,) = services(up, "a").values()
    (sb,) = services(up, "b").values()
    assert sa["end_points"] == {"tx": sip(up, "a", 1), "rx": sip(up, "a", 2)}  # tx-a -> fibre a-b
    assert sb["end_points"] == {"tx": sip(up, "b", 2), "rx": sip(up, "b", 3)}  # fibre a-b -> fibre b-c
    assert sa["names"]["qkdl_id"] == sb["names"]["qkdl_id"] == qkdl_id
    assert sa["bands"] == sb["bands"] == {tuple(CH34)}
    # a PHYS link at both ends, same qkdl_id, each end naming itself first; none at b
    ea, ec = (node_id(up, "a"), qkdi(up, "a", "tx-a")), (node_id(up, "c"), qkdi(up, "c", "rx-c"))
    la, lc = phys(up, "a", qkdl_id), phys(up, "c", qkdl_id)
    assert la is not None and lc is not None and phys(up, "b", qkdl_id) is None
    assert (la["type"], la["local"], la["remote"], la["role"]) == ("etsi-qkdn-types:PHYS", ea, ec, "etsi-qkdn-types:TRANSMITTER")
    assert (lc["type"], lc["local"], lc["remote"], lc["role"]) == ("etsi-qkdn-types:PHYS", ec, ea, "etsi-qkdn-types:RECEIVER")
    assert la["att"] == lc["att"] == pytest.approx(LOSS_A_C) and la["wavelength"] == lc["wavelength"] == "34"
    # the switches did it: the plant's cross-connects and tx-a's light
    assert wait_for(lambda: cross_connects(up, "ofs-a"), 10, "ofs-a cross-connect") == [[1, 2, *CH34]]
    assert wait_for(lambda: cross_connects(up, "ofs-b"), 10, "ofs-b cross-connect") == [[2, 3, *CH34]]
    lp = light(up, "tx-a")
    assert lp["receiver"] == "rx-c" and lp["loss_db"] == pytest.approx(LOSS_A_C)
    # the REST API lists it as built, among the feasible pairings
    st, body = api(f"{up.url('lab')}/direct-links")
    assert st == 200
    pairings = {(d["emitter"]["device"], d["receiver"]["device"]): d for d in body["direct_links"]}
    assert pairings[("tx-a", "rx-c")]["built"] and pairings[("tx-a", "rx-c")]["qkdl_id"] == qkdl_id
    assert pairings[("tx-a", "rx-b")]["built"] is False and "qkdl_id" not in pairings[("tx-a", "rx-b")]
    (built,) = body["built"]
    assert built["qkdl_id"] == qkdl_id and built["loss_db"] == pytest.approx(LOSS_A_C)
    assert [(x["switch"], x["node"], x["in_port"], x["out_port"]) for x in built["cross_connects"]] == [
        ("ofs-a", "a", 1, 2), ("ofs-b", "b", 2, 3)]


@pytest.mark.timeout(180)
def test_the_link_comes_up_with_a_key_rate(up: UpNetwork) -> None:
    qkdl_id = declared(up)
    for node in ("a", "c"):
        wait_for(lambda n=node: (phys(up, n, qkdl_id) or {}).get("skr"), 60, f"skr of the link at {node}")

    def listed() -> dict[str, Any] | None:
        st, body = api(f"{up.url('lab')}/links")
        ln = next((x for x in body["phys"] if x["qkdl_id"] == qkdl_id), None)
        return ln if st == 200 and ln and ln["up"] and ln["skr_bps"] > 0 else None

    ln = wait_for(listed, 60, "GET /links: the direct link up")
    assert {ln["a"], ln["b"]} == {"a", "c"} and ln["channel_att_db"] == pytest.approx(LOSS_A_C)
    # and its keys serve the SAEs of a and c (ETSI 014), the same keys at both ends
    st, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(enc_keys(up.net, "a", "sae-a", "sae-c")),
                        60, "enc_keys at a for sae-c")
    ids = [k["key_ID"] for k in body["keys"]]
    st, got = dec_keys(up.net, "c", "sae-c", "sae-a", ids)
    assert st == 200 and got["keys"] == body["keys"]


@pytest.mark.timeout(90)
def test_a_restarted_orchestrator_sees_the_built_link(up: UpNetwork) -> None:
    qkdl_id = declared(up)
    st, body = api(f"{up.url('lab')}/direct-links")
    assert st == 200
    dynamic = ("up", "skr_bps")
    running_view = [{k: v for k, v in d.items() if k not in dynamic} for d in body["built"]]

    async def fresh() -> list[dict[str, Any]]:
        orch = Orchestrator(from_network_json(up.net, "lab"), poll_interval=0, notifications=False)
        try:
            await orch.start()
            return [orch.direct.to_json(bl) for bl in orch.direct.built().values()]
        finally:
            await orch.stop()

    seen = asyncio.run(fresh())
    assert [{k: v for k, v in d.items() if k not in dynamic} for d in seen] == running_view
    assert seen[0]["qkdl_id"] == qkdl_id and seen[0]["built"]
    # asking again for the same link changes nothing
    before = snapshot(up)
    st, again = api(f"{up.url('lab')}/direct-links", "POST", {"emitter": "tx-a", "receiver": "rx-c"})
    assert st == 200 and again["qkdl_id"] == qkdl_id
    assert snapshot(up) == before


@pytest.mark.timeout(90)
def test_a_second_link_reusing_a_port_is_refused(up: UpNetwork) -> None:
    qkdl_id = declared(up)
    before = snapshot(up)
    xc_before = {s: cross_connects(up, s) for s in ("ofs-a", "ofs-b")}
    # tx-a -> rx-b crosses ofs-a ports 1 and 2 and ofs-b port 2, all held by tx-a -> rx-c
    r = qkdorch(up, "link", "build", "tx-a", "rx-b")
    assert r.returncode == 2 and "409" in r.stderr, r.stderr
    for part in ("port 1 of switch ofs-a", "port 2 of switch ofs-a", "port 2 of switch ofs-b",
                 f"direct link {qkdl_id} (tx-a -> rx-c)", "module tx-a is already in direct link"):
        assert part in r.stderr, r.stderr
    # wrong roles, unknown modules
    st, body = api(f"{up.url('lab')}/direct-links", "POST", {"emitter": "rx-b", "receiver": "rx-c"})
    assert st == 400 and "not a transmitter" in body["message"]
    st, body = api(f"{up.url('lab')}/direct-links", "POST", {"emitter": "tx-z", "receiver": "rx-c"})
    assert st == 404 and "tx-z" in body["message"]
    st, body = api(f"{up.url('lab')}/direct-links", "POST", {"emitter": "tx-a"})
    assert st == 400 and "receiver" in body["message"]
    assert snapshot(up) == before
    assert {s: cross_connects(up, s) for s in ("ofs-a", "ofs-b")} == xc_before


@pytest.mark.timeout(90)
def test_delete_removes_the_services_and_the_phys_entries(up: UpNetwork) -> None:
    qkdl_id = declared(up)
    r = qkdorch(up, "link", "delete", qkdl_id)
    assert r.returncode == 0 and f"direct link {qkdl_id} (tx-a -> rx-c) deleted" in r.stdout, r.stderr
    assert services(up, "a") == {} and services(up, "b") == {}
    assert all(phys(up, n, qkdl_id) is None for n in ("a", "b", "c"))
    wait_for(lambda: cross_connects(up, "ofs-a") == [] and cross_connects(up, "ofs-b") == [], 10, "switches cleared")
    wait_for(lambda: light(up, "tx-a")["receiver"] is None, 10, "tx-a dark")
    st, body = api(f"{up.url('lab')}/direct-links")
    assert body["built"] == [] and not any(d["built"] for d in body["direct_links"])
    st, body = api(f"{up.url('lab')}/direct-links/{qkdl_id}", "DELETE")
    assert st == 404


def _tapi_edit(up: UpNetwork, node: str, inner: str) -> None:
    cfg = (f'<config xmlns="{NC_NS}"><context xmlns="{COMMON_NS}"><connectivity-context xmlns="{CONNECTIVITY_NS}">'
           f"{inner}</connectivity-context></context></config>")
    with connect(up.endpoint(node)) as m:
        with m.locked("candidate"):
            m.edit_config(target="candidate", config=cfg)
            m.commit()


@pytest.mark.timeout(180)
def test_a_port_held_by_another_service_refuses_the_build(up: UpNetwork) -> None:
    """A service made by hand on ofs-b (2 -> 3, the same channel) holds a port of the path: refused,
    nothing changed; once it is gone the link is built again and carries keys."""
    qkdl_id = declared(up)
    other = str(uuid.uuid4())
    spectrum = (f'<media-channel-connectivity-service-end-point-spec xmlns="{PHOTONIC_NS}"><mc-config><spectrum>'
                f"<upper-frequency>{CH34[1]}</upper-frequency><lower-frequency>{CH34[0]}</lower-frequency>"
                "</spectrum></mc-config></media-channel-connectivity-service-end-point-spec>")
    eps = "".join(f"<end-point><local-id>{lid}</local-id><service-interface-point><service-interface-point-uuid>"
                  f"{sip(up, 'b', port)}</service-interface-point-uuid></service-interface-point>{spectrum}</end-point>"
                  for lid, port in (("x", 2), ("y", 3)))
    _tapi_edit(up, "b", f"<connectivity-service><uuid>{other}</uuid>{eps}</connectivity-service>")
    try:
        before = snapshot(up)
        st, body = api(f"{up.url('lab')}/direct-links", "POST", {"emitter": "tx-a", "receiver": "rx-c"})
        assert st == 409 and f"port 2 of switch ofs-b at b (ofs-b/port-2/fibre-a-b) is already used by " \
            f"connectivity-service {other}: wavelength collision" in body["message"], body
        assert snapshot(up) == before
    finally:
        _tapi_edit(up, "b", f'<connectivity-service xmlns:nc="{NC_NS}" nc:operation="delete"><uuid>{other}</uuid>'
                            "</connectivity-service>")
    st, body = wait_for(lambda: (lambda r: r if r[0] == 201 else None)(
        api(f"{up.url('lab')}/direct-links", "POST", {"emitter": "tx-a", "receiver": "rx-c"})), 30, "built again")
    assert body["qkdl_id"] == qkdl_id and body["switches"] == ["ofs-a", "ofs-b"]
    wait_for(lambda: (phys(up, "c", qkdl_id) or {}).get("skr"), 60, "skr of the rebuilt link at c")


def xcs(up: UpNetwork, switch: str) -> set[tuple[frozenset[int], tuple[int, ...]]]:
    """A switch's cross-connects on the plant: (its two ports, its band)."""
    return {(frozenset(e[:2]), tuple(e[2:])) for e in cross_connects(up, switch)}


def build(up: UpNetwork, emitter: str, receiver: str) -> tuple[int, Any]:
    return api(f"{up.url('lab')}/direct-links", "POST", {"emitter": emitter, "receiver": receiver})


def keyed(up: UpNetwork, qkdl_id: str, nodes: tuple[str, str]) -> None:
    for node in nodes:
        wait_for(lambda n=node: (phys(up, n, qkdl_id) or {}).get("skr"), 90, f"skr of {qkdl_id} at {node}")


@pytest.mark.timeout(240)
def test_links_on_disjoint_channels_share_a_line_port(up: UpNetwork) -> None:
    """tx-d32 -> rx-d32 (ch 32) crosses line port 2 of ofs-a and of ofs-b, which tx-a -> rx-c
    (ch 34) holds: disjoint spectra, so both links hold it, both light their receivers and carry keys."""
    cv = declared(up)
    st, body = build(up, "tx-d32", "rx-d32")
    assert st == 201, body
    dv = body["qkdl_id"]
    assert body["loss_db"] == pytest.approx(4.0) and body["spectrum_mhz"] == CH32
    assert [(x["switch"], x["in_port"], x["out_port"]) for x in body["cross_connects"]] == [
        ("ofs-a", 3, 2), ("ofs-b", 2, 4)]
    on_a = {s["names"]["qkdl_id"]: s for s in services(up, "a").values()}
    assert set(on_a) == {cv, dv}
    assert on_a[cv]["end_points"]["rx"] == on_a[dv]["end_points"]["rx"] == sip(up, "a", 2)  # one line port, two services
    assert on_a[dv]["bands"] == {tuple(CH32)} and on_a[cv]["bands"] == {tuple(CH34)}
    wait_for(lambda: xcs(up, "ofs-a") == {(frozenset((1, 2)), tuple(CH34)), (frozenset((3, 2)), tuple(CH32))}, 10, "ofs-a WDM")
    wait_for(lambda: xcs(up, "ofs-b") == {(frozenset((2, 3)), tuple(CH34)), (frozenset((2, 4)), tuple(CH32))}, 10, "ofs-b WDM")
    assert light(up, "tx-d32")["receiver"] == "rx-d32" and light(up, "tx-d32")["loss_db"] == pytest.approx(4.0)
    assert light(up, "tx-a")["receiver"] == "rx-c"
    keyed(up, dv, ("a", "b"))
    keyed(up, cv, ("a", "c"))


@pytest.mark.timeout(240)
def test_an_overlapping_channel_takes_the_lowest_loss_free_path(up: UpNetwork) -> None:
    """tx-d34 -> rx-d34 is on ch 34, which tx-a -> rx-c holds on fibre a-b's ports: the switch
    would refuse the overlap, so the link goes over fibre a-b-2 (4.5 dB instead of 4.0 dB)."""
    st, body = build(up, "tx-d34", "rx-d34")
    assert st == 201, body
    d34 = body["qkdl_id"]
    assert body["loss_db"] == pytest.approx(4.5)
    assert [(x["switch"], x["in_port"], x["out_port"]) for x in body["cross_connects"]] == [
        ("ofs-a", 4, 6), ("ofs-b", 7, 5)]
    wait_for(lambda: light(up, "tx-d34")["receiver"] == "rx-d34", 10, "tx-d34 lit over a-b-2")
    assert light(up, "tx-d34")["loss_db"] == pytest.approx(4.5)
    # the lowest-loss pairing stays what GET /direct-links lists (feasibility: 4.0 dB)
    st, listed = api(f"{up.url('lab')}/direct-links")
    (p,) = [d for d in listed["direct_links"] if (d["emitter"]["device"], d["receiver"]["device"]) == ("tx-d34", "rx-d34")]
    assert p["loss_db"] == pytest.approx(4.0) and p["built"] and p["qkdl_id"] == d34
    # asking again returns the built link, on the same path
    st, again = build(up, "tx-d34", "rx-d34")
    assert st == 200 and again["qkdl_id"] == d34 and again["cross_connects"] == body["cross_connects"]
    keyed(up, d34, ("a", "b"))


@pytest.mark.timeout(120)
def test_a_band_less_link_shares_no_line_port(up: UpNetwork) -> None:
    """tx-o -> rx-o is O band (no DWDM channel: a broadband cross-connect): fibre a-b's ports hold
    ch 32 and ch 34, a-b-2's hold ch 34; it may share neither, so it is refused, nothing changed."""
    before = snapshot(up)
    xc_before = {s: xcs(up, s) for s in ("ofs-a", "ofs-b")}
    st, body = build(up, "tx-o", "rx-o")
    assert st == 409, body
    msg = body["message"]
    for part in ("port 2 of switch ofs-a at a (ofs-a/port-2/fibre-a-b) is already used by direct link",
                 "port 2 of switch ofs-b at b (ofs-b/port-2/fibre-a-b)",
                 "a line port is shared only by services with disjoint spectra", "this link: the whole fibre"):
        assert part in msg, msg
    assert snapshot(up) == before and {s: xcs(up, s) for s in ("ofs-a", "ofs-b")} == xc_before
    assert light(up, "tx-o")["receiver"] is None


# -- pure pieces (no network) -------------------------------------------------------------------------------
@pytest.mark.parametrize(("line", "held", "wanted", "refused"), [
    (True, CH34, CH32, None),                           # WDM: disjoint channels share a fibre's port
    (True, CH32, CH34, None),
    (True, CH34, CH34, "wavelength collision"),         # the same channel
    (True, CH34, [193_400_000, 193_500_000], "wavelength collision"),  # a partial overlap
    (True, None, CH34, "shared only by services with disjoint spectra"),  # broadband (O band) holds it
    (True, CH34, None, "shared only by services with disjoint spectra"),  # broadband wants it
    (True, None, None, "shared only by services with disjoint spectra"),
    (False, CH34, CH32, "a module port carries one service"),
])
def test_share_refusal_is_the_switch_rule(line: bool, held: list[int] | None, wanted: list[int] | None,
                                          refused: str | None) -> None:
    got = share_refusal(line, tuple(held) if held else None, tuple(wanted) if wanted else None)  # type: ignore[arg-type]
    assert got is None if refused is None else (got is not None and refused in got)
    assert channel_band(34) == tuple(CH34) and channel_band(32) == tuple(CH32) and channel_band(None) is None


def test_light_paths_are_the_budgets_loopless_paths_lowest_loss_first() -> None:
    import networkx as nx

    g = nx.Graph()
    for u, v, loss in [("t", "s1", 0.5), ("s1", "x", 2.0), ("x", "s2", 0.5), ("s1", "y", 2.5), ("y", "s2", 0.5),
                       ("s1", "z", 9.0), ("z", "s2", 0.5), ("s2", "r", 0.5)]:
        g.add_edge(u, v, loss_db=loss)
    iface = Interface(1, "DV-QKD", "TRANSMITTER")
    found = [DirectLink(Endpoint("q1", iface, "t"), Endpoint("q2", iface, "r"), 3.5, 8.0,
                        ("t", "s1", "x", "s2", "r"))]
    # via z: 10.5 dB, over the 8 dB budget
    assert light_paths(g, found) == [(3.5, ("t", "s1", "x", "s2", "r")), (4.0, ("t", "s1", "y", "s2", "r"))]
    assert light_paths(g, found, limit=1) == [(3.5, ("t", "s1", "x", "s2", "r"))]


# -- the topology contract (no network) ---------------------------------------------------------------------
BASE = (ROOT / "examples" / "switched.yaml").read_text().split("direct_links:")[0]
SAES = "saes:\n  - {id: sae-a, node: a}\n"


@pytest.mark.parametrize(("links", "error"), [
    ("[{emitter: tx-a, receiver: rx-c}]", None),
    ("[{emitter: tx-a, receiver: rx-q}]", "direct_links[0].receiver: no module named 'rx-q' (did you mean 'rx-c'?)"),
    ("[{emitter: rx-b, receiver: rx-c}]", "direct_links[0].emitter: rx-b is a receiver: the emitter must be a transmitter"),
    ("[{emitter: tx-a, receiver: tx-a}]", "direct_links[0].receiver: tx-a is a transmitter"),
    ("[{emitter: tx-a, receiver: rx-c}, {emitter: tx-a, receiver: rx-b}]",
     "direct_links[1].emitter: tx-a is already in direct_links[0]"),
    ("[{emitter: tx-a, reciever: rx-c}]", "unknown field 'reciever' (did you mean 'receiver'?)"),
    ("[{emitter: tx-a}]", "direct_links[0]: missing required field 'receiver'"),
])
def test_direct_links_section_is_validated(links: str, error: str | None) -> None:
    text = BASE + f"direct_links: {links}\n" + SAES
    if error is None:
        topo = parse_topology(text, "t.yaml")
        assert [(d.emitter, d.receiver) for d in topo.direct_links] == [("tx-a", "rx-c")]
        assert sorted(topo.light_reach("a")) == ["b", "c"] and sorted(topo.light_reach("c")) == ["a", "b"]
        return
    with pytest.raises(TopologyError) as exc:
        parse_topology(text, "t.yaml")
    assert error in str(exc.value) and str(exc.value).startswith("t.yaml:")
    line = int(str(exc.value).split(":")[1])
    assert text.splitlines()[line - 1].startswith("direct_links:")  # the line of the section (one-line lists)


def test_a_route_may_use_a_declared_direct_link() -> None:
    route = "routes: [{name: a-c, path: [a, c], saes: [sae-a]}]\n"
    topo = parse_topology(BASE + "direct_links: [{emitter: tx-a, receiver: rx-c}]\n" + SAES + route, "t.yaml")
    assert topo.routes["a-c"].path == ("a", "c")
    with pytest.raises(TopologyError, match="no fibre or QKD module pair joins a and c"):
        parse_topology(BASE + SAES + route, "t.yaml")
