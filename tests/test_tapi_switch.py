"""System test: optical switches under TAPI, on a network started with `qkdnet up`.

`examples/switched.yaml`: nodes a - b - c in a line, switches ofs-a (a) and ofs-b (b), transmitter
tx-a on ofs-a port 1, receiver rx-b on ofs-b port 1, receiver rx-c at the end of fibre b-c. The
switches are driven over NETCONF (ncclient) with TAPI connectivity services; the optical plant
stub (the only stubbed hardware) is read back over its HTTP interface to check what the switches
did. The tests share one network and run in file order (each builds on the previous one).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from conftest import QKD_NS, close_quietly, parse_reply, rpc_errors
from lxml import etree
from ncclient.operations import RaiseMode
from tapicheck import (
    COMMON_NS, CONNECTIVITY_NS, OFFICIAL_TAPI, PHOTONIC_NS, TOPOLOGY_NS, official_tapi_available,
    official_tapi_context, project_tapi_context, validate_tapi,
)

from orchestrator.nodeclient import NetconfEndpoint, connect
from qkdnode.devices.physics import link_performance
from qkdnode.devices.profiles import profile_by_name
from qkdnode.qkd015 import phys_link_xml

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = ROOT / "examples" / "switched.yaml"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NS = {"c": COMMON_NS, "t": TOPOLOGY_NS, "cs": CONNECTIVITY_NS, "pm": PHOTONIC_NS, "q": QKD_NS}
PROFILE = profile_by_name("ait-cv-qpsk")
CH34 = (193_350_000, 193_450_000)  # 100 GHz channel of the modules (193.4 THz, 1550.12 nm)
CH35 = (193_450_000, 193_550_000)
# The modules' key rate fluctuates (log-normal, std 5 % for this profile): 30 % is > 5 sigma.
RATE_TOLERANCE = 0.30
LOSS_A_B = 2.0 + 2 * 1.0  # fibre a-b + two switch insertion losses
LOSS_A_C = 2.0 + 3.0 + 2 * 1.0  # + fibre b-c
SERVICES = "/tapi-common:context/tapi-connectivity:connectivity-context/tapi-connectivity:connectivity-service"

T = TypeVar("T")


# -- the network ----------------------------------------------------------------------------------
class Net:
    def __init__(self, state: Path, data: dict[str, Any]) -> None:
        self.state = state
        self.data = data
        self.configs = {n: yaml.safe_load((state / "nodes" / f"{n}.yaml").read_text()) for n in data["nodes"]}

    def endpoint(self, node: str) -> NetconfEndpoint:
        return NetconfEndpoint.from_json(self.data["nodes"][node]["netconf"])

    def node_id(self, node: str) -> str:
        return str(self.data["nodes"][node]["node_id"])

    def sip(self, node: str, port: int) -> str:
        plan = self.configs[node]["switch"]["port_plan"]
        return str(next(p["sip"] for p in plan if p["port"] == port))

    def module(self, node: str, name: str) -> dict[str, Any]:
        return next(m for m in self.configs[node]["modules"] if m["name"] == name)

    def fabric(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.data['fabric']['url']}{path}", timeout=10) as r:
            return json.loads(r.read())

    def cross_connects(self, switch: str) -> list[list[int]]:
        return list(self.fabric(f"/switches/{switch}/cross-connects")["cross_connects"])

    def light(self, tx: str) -> dict[str, Any]:
        return next(lp for lp in self.fabric("/lightpaths")["light_paths"] if lp["transmitter"] == tx)

    def qkdnet(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator.netctl", *args, "--state-dir", str(self.state)],
                              capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    state = tmp_path_factory.mktemp("switched") / "net"
    # the example without its declared direct link: these tests make the light paths by hand
    raw = yaml.safe_load(TOPOLOGY.read_text())
    raw.pop("direct_links", None)
    topology = state.parent / "switched.yaml"
    topology.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(topology), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 60
        while not (state / "network.json").exists():
            if proc.poll() is not None:
                raise AssertionError(f"qkdnet up exited with {proc.returncode} (logs in {state / 'logs'})")
            if time.monotonic() > deadline:
                raise AssertionError("network.json not written within 60 s")
            time.sleep(0.1)
        yield Net(state, json.loads((state / "network.json").read_text()))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    logs = "".join(p.read_text() for p in (state / "logs").glob("*.log"))
    assert "Traceback" not in logs


@pytest.fixture
def nc(net: Net) -> Iterator[Callable[[str], Any]]:
    """`nc(node)` -> an ncclient Manager that returns error replies instead of raising."""
    opened: list[Any] = []

    def _open(node: str) -> Any:
        m = connect(net.endpoint(node))
        m.raise_mode = RaiseMode.NONE
        opened.append(m)
        return m

    yield _open
    for m in opened:
        close_quietly(m)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


# -- NETCONF helpers --------------------------------------------------------------------------------
def service(uid: str, a_sip: str, b_sip: str, band: tuple[int, int] | None = None, *,
            extra_sips: tuple[str, ...] = (), op: str | None = None) -> str:
    """One connectivity-service (in its containers), end-points 'a', 'b' (and 'c', ...)."""
    def ep(local_id: str, sip: str) -> str:
        spectrum = (
            f'<media-channel-connectivity-service-end-point-spec xmlns="{PHOTONIC_NS}"><mc-config><spectrum>'
            f"<upper-frequency>{band[1]}</upper-frequency><lower-frequency>{band[0]}</lower-frequency>"
            "</spectrum></mc-config></media-channel-connectivity-service-end-point-spec>"
        ) if band else ""
        return (f"<end-point><local-id>{local_id}</local-id><service-interface-point>"
                f"<service-interface-point-uuid>{sip}</service-interface-point-uuid></service-interface-point>"
                f"{spectrum}</end-point>")

    attr = f' xmlns:nc="{NC_NS}" nc:operation="{op}"' if op else ""
    eps = "".join(ep(lid, s) for lid, s in zip("abcdef", (a_sip, b_sip, *extra_sips)))
    body = "" if op == "delete" else (
        f"{eps}<service-layer>PHOTONIC_MEDIA</service-layer><service-type>POINT_TO_POINT_CONNECTIVITY</service-type>")
    return f"<connectivity-service{attr}><uuid>{uid}</uuid>{body}</connectivity-service>"


def tapi_config(*services: str, sips: str = "") -> str:
    return (f'<config xmlns="{NC_NS}"><context xmlns="{COMMON_NS}">{sips}'
            f'<connectivity-context xmlns="{CONNECTIVITY_NS}">{"".join(services)}</connectivity-context>'
            "</context></config>")


def edit_commit(m: Any, config: str) -> etree._Element:
    """edit-config on candidate + commit; the reply of the first that fails (or of the commit).
    A refused change is discarded from the candidate."""
    reply = m.edit_config(target="candidate", config=config)
    if reply.ok:
        reply = m.commit()
    if not reply.ok:
        assert m.discard_changes().ok
    return parse_reply(reply.xml)


def committed(m: Any, config: str) -> None:
    reply = edit_commit(m, config)
    assert not rpc_errors(reply), rpc_errors(reply)


def context_xml(m: Any, *, state: bool) -> str:
    """The tapi-common:context of running (get-config) or of all data (get), as a document."""
    flt = ("subtree", f'<context xmlns="{COMMON_NS}"/>')
    reply = m.get(filter=flt) if state else m.get_config(source="running", filter=flt)
    assert reply.ok, reply.xml
    ctx = parse_reply(reply.xml).find(f"{{{NC_NS}}}data/{{{COMMON_NS}}}context")
    return etree.tostring(ctx).decode() if ctx is not None else ""


def service_ids(m: Any) -> set[str]:
    doc = context_xml(m, state=False)
    return set(etree.fromstring(doc).xpath("cs:connectivity-context/cs:connectivity-service/cs:uuid/text()",
                                           namespaces=NS)) if doc else set()


def service_path(uid: str, local_id: str | None = None) -> str:
    path = f"{SERVICES}[tapi-connectivity:uuid='{uid}']"
    return path + (f"/tapi-connectivity:end-point[tapi-connectivity:local-id='{local_id}']" if local_id else "")


def new_id() -> str:
    return str(uuid.uuid4())


def skr(m: Any, qkdl_id: str) -> int | None:
    flt = (f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link><qkdl_id>{qkdl_id}</qkdl_id>'
           "<qkdl_performance/></qkd_link></qkd_links></qkd_node>")
    data = parse_reply(m.get(filter=("subtree", flt)).xml)
    text = data.findtext(".//q:qkdl_performance/q:skr", None, NS)
    return int(text) if text is not None else None


def rates(m: Any, qkdl_id: str, n: int = 5) -> list[int]:
    out = []
    for _ in range(n):
        value = skr(m, qkdl_id)
        assert value is not None
        out.append(value)
        time.sleep(0.2)
    return out


def check_rate(measured: list[int], loss_db: float) -> None:
    predicted = link_performance(PROFILE, loss_db).skr_bps
    mean = sum(measured) / len(measured)
    assert math.isclose(mean, predicted, rel_tol=RATE_TOLERANCE), (
        f"skr {measured} at {loss_db} dB: model predicts {predicted:.0f} bit/s")


# A service at each switch joins tx-a to rx-b: ofs-a 1 <-> 2 (fibre a-b), ofs-b 2 <-> 1.
SVC_A = "5e5e5e5e-0000-4000-8000-00000000000a"
SVC_B = "5e5e5e5e-0000-4000-8000-00000000000b"
SVC_BC = "5e5e5e5e-0000-4000-8000-0000000000bc"
LINK_AC = "11111111-0000-4000-8000-0000000000ac"


# -- tests --------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_initial_tapi_config(net: Net, nc: Callable[[str], Any]) -> None:
    """A switch node starts with the TAPI context: one SIP per switch port, named after it."""
    for node, switch in (("a", "ofs-a"), ("b", "ofs-b")):
        doc = etree.fromstring(context_xml(nc(node), state=False))
        sips = doc.xpath("c:service-interface-point/c:uuid/text()", namespaces=NS)
        assert sorted(sips) == sorted(p["sip"] for p in net.configs[node]["switch"]["port_plan"])
        names = doc.xpath("c:service-interface-point/c:name/c:value/text()", namespaces=NS)
        assert f"{switch}/port-2/fibre-a-b" in names
        assert doc.findtext("c:name/c:value", None, NS) == f"qkdnet/{node}"
        assert net.cross_connects(switch) == []
    assert context_xml(nc("c"), state=False) == ""  # no switch, no context
    assert net.light("tx-a")["receiver"] is None  # nothing is lit before the services exist


@pytest.mark.timeout(40)
def test_cross_connects_made_and_removed(net: Net, nc: Callable[[str], Any]) -> None:
    a, b = nc("a"), nc("b")
    committed(a, tapi_config(service(SVC_A, net.sip("a", 1), net.sip("a", 2), CH34)))
    committed(b, tapi_config(service(SVC_B, net.sip("b", 2), net.sip("b", 1), CH34)))
    assert wait_for("ofs-a cross-connect", lambda: net.cross_connects("ofs-a")) == [[1, 2, *CH34]]
    assert wait_for("ofs-b cross-connect", lambda: net.cross_connects("ofs-b")) == [[2, 1, *CH34]]
    light = wait_for("tx-a -> rx-b", lambda: (lp := net.light("tx-a"))["receiver"] == "rx-b" and lp)
    assert light["loss_db"] == pytest.approx(LOSS_A_B)
    assert light["hops"] == ["ofs-a:1-2", "a-b", "ofs-b:2-1"]

    # the connection realising the service, between the CEPs of the two ports' NEPs
    def connection() -> list[etree._Element] | None:
        doc = etree.fromstring(context_xml(b, state=True))
        conns = doc.xpath("cs:connectivity-context/cs:connection[cs:operational-state='ENABLED']", namespaces=NS)
        return [doc] if conns else None

    (doc,) = wait_for("an ENABLED connection at b", connection)
    (conn,) = doc.xpath("cs:connectivity-context/cs:connection", namespaces=NS)
    cs = doc.xpath("cs:connectivity-context/cs:connectivity-service", namespaces=NS)[0]
    assert cs.findtext("cs:connection/cs:connection-uuid", None, NS) == conn.findtext("cs:uuid", None, NS)
    ceps = conn.xpath("cs:connection-end-point/cs:connection-end-point-uuid/text()", namespaces=NS)
    assert len(ceps) == 2
    nep_of_sip = {
        nep.findtext("t:mapped-service-interface-point/t:service-interface-point-uuid", None, NS):
            nep.xpath("cs:cep-list/cs:connection-end-point/cs:uuid/text()", namespaces=NS)
        for nep in doc.iterfind(".//t:node/t:owned-node-edge-point", NS)
    }
    assert sorted(nep_of_sip[net.sip("b", 1)] + nep_of_sip[net.sip("b", 2)]) == sorted(ceps)
    assert nep_of_sip[net.sip("b", 3)] == []

    # removed: the cross-connect goes, the light with it
    committed(b, tapi_config(service(SVC_B, "", "", op="delete")))
    assert wait_for("ofs-b cleared", lambda: net.cross_connects("ofs-b") == [] or None)
    wait_for("tx-a dark", lambda: net.light("tx-a")["receiver"] is None)
    doc = etree.fromstring(context_xml(b, state=True))
    assert doc.xpath("count(cs:connectivity-context/cs:connection)", namespaces=NS) == 0
    assert doc.xpath("count(.//cs:cep-list/cs:connection-end-point)", namespaces=NS) == 0


def _refused(net: Net, m: Any, switch: str, config: str) -> list[dict[str, Any]]:
    """Commit `config`, expect a refusal that changed nothing (running, plant)."""
    before_ids, before_xc = service_ids(m), net.cross_connects(switch)
    errors = rpc_errors(edit_commit(m, config))
    assert errors, "the change was accepted"
    assert service_ids(m) == before_ids
    assert net.cross_connects(switch) == before_xc
    return errors


@pytest.mark.timeout(40)
def test_conflicts_refused(net: Net, nc: Callable[[str], Any]) -> None:
    a, b = nc("a"), nc("b")
    committed(b, tapi_config(service(SVC_B, net.sip("b", 2), net.sip("b", 1), CH34)))
    assert wait_for("ofs-b cross-connect", lambda: net.cross_connects("ofs-b")) == [[2, 1, *CH34]]

    # a module port carries one service
    x = new_id()
    (err,) = _refused(net, b, "ofs-b", tapi_config(service(x, net.sip("b", 1), net.sip("b", 3))))
    assert (err["type"], err["tag"], err["app_tag"]) == ("application", "in-use", "port-in-use")
    assert err["path"] == service_path(x, "a") + (
        "/tapi-connectivity:service-interface-point/tapi-connectivity:service-interface-point-uuid")
    assert err["path_nsmap"]["tapi-connectivity"] == CONNECTIVITY_NS
    assert "port 1 (module rx-b)" in err["message"] and SVC_B in err["message"]

    # a line port without a spectrum takes the whole fibre: in use too
    (err,) = _refused(net, b, "ofs-b", tapi_config(service(x, net.sip("b", 2), net.sip("b", 3))))
    assert (err["tag"], err["app_tag"]) == ("in-use", "port-in-use")
    assert "port 2 (fibre a-b to a)" in err["message"]

    # overlapping spectra on a shared line port: wavelength collision
    half_over = (CH34[0] + 50_000, CH35[1] - 50_000)
    (err,) = _refused(net, b, "ofs-b", tapi_config(service(x, net.sip("b", 2), net.sip("b", 3), half_over)))
    assert (err["tag"], err["app_tag"]) == ("in-use", "wavelength-collision")
    assert err["path"].startswith(service_path(x, "a") + "/tapi-photonic-media:media-channel-connectivity")
    assert "wavelength collision on port 2" in err["message"]

    # disjoint spectra share it: a WDM add/drop, both cross-connects on port 2
    committed(b, tapi_config(service(x, net.sip("b", 2), net.sip("b", 3), CH35)))
    assert wait_for("two cross-connects", lambda: len(xc := net.cross_connects("ofs-b")) == 2 and xc) == sorted(
        [[2, 1, *CH34], [2, 3, *CH35]])
    committed(b, tapi_config(service(x, "", "", op="delete")))
    wait_for("back to one", lambda: len(net.cross_connects("ofs-b")) == 1)

    # an end-point that is not a SIP of this switch (a SIP of ofs-a): the leafref fails first
    errors = _refused(net, b, "ofs-b", tapi_config(service(x, net.sip("a", 2), net.sip("b", 3), CH35)))
    assert [(e["tag"], e["app_tag"]) for e in errors] == [("data-missing", "instance-required")]
    # ... and with that SIP declared in b's context, the switch refuses it
    sip = (f"<service-interface-point><uuid>{net.sip('a', 2)}</uuid></service-interface-point>")
    errors = _refused(net, b, "ofs-b", tapi_config(service(x, net.sip("a", 2), net.sip("b", 3), CH35), sips=sip))
    by_path = {e["path"]: e for e in errors}
    ep_err = by_path[service_path(x, "a") + (
        "/tapi-connectivity:service-interface-point/tapi-connectivity:service-interface-point-uuid")]
    assert (ep_err["tag"], ep_err["app_tag"]) == ("invalid-value", "not-a-switch-port")
    assert "is not a port of switch ofs-b" in ep_err["message"]
    sip_err = by_path[f"/tapi-common:context/tapi-common:service-interface-point[tapi-common:uuid='{net.sip('a', 2)}']"]
    assert sip_err["tag"] == "invalid-value"

    # a spectrum that misses the module's wavelength (rx-b: channel 34)
    (err,) = _refused(net, a, "ofs-a", tapi_config(service(SVC_A, net.sip("a", 1), net.sip("a", 2), CH35)))
    assert (err["tag"], err["app_tag"]) == ("invalid-value", "wavelength-mismatch")
    assert "module tx-a" in err["message"] and "1550.12 nm" in err["message"]

    # exactly two end-points
    (err,) = _refused(net, b, "ofs-b", tapi_config(
        service(x, net.sip("b", 1), net.sip("b", 2), extra_sips=(net.sip("b", 3),))))
    assert err["tag"] == "invalid-value" and err["path"] == service_path(x)
    assert "exactly 2" in err["message"]


@pytest.mark.timeout(60)
def test_module_pair_repaired_through_two_switches(net: Net, nc: Callable[[str], Any]) -> None:
    """tx-a reaches rx-c through both switches: the rate drops as the model says for the added loss."""
    a, b, c = nc("a"), nc("b"), nc("c")
    light = wait_for("tx-a -> rx-b", lambda: (lp := net.light("tx-a"))["receiver"] == "rx-b" and lp)
    assert light["loss_db"] == pytest.approx(LOSS_A_B)
    static = net.module("a", "tx-a")["qkdl_id"]  # the PHYS link of the pair tx-a / rx-b
    wait_for("tx-a / rx-b key rate", lambda: skr(a, static))
    check_rate(rates(a, static), LOSS_A_B)

    # a PHYS link at both ends for the new pair tx-a / rx-c
    tx, rx = net.module("a", "tx-a"), net.module("c", "rx-c")
    for m, node, mod, peer_node, peer in ((a, "a", tx, "c", rx), (c, "c", rx, "a", tx)):
        link = phys_link_xml(net.node_id(node), {
            **mod, "qkdl_id": LINK_AC, "loss_db": LOSS_A_C,
            "peer": {"node_id": net.node_id(peer_node), "qkdi_id": peer["qkdi_id"]},
        })
        committed(m, f'<config xmlns="{NC_NS}"><qkd_node xmlns="{QKD_NS}" '
                     f'xmlns:etsi-qkdn-types="urn:etsi:qkd:yang:etsi-qkd-node-types"><qkd_links>{link}'
                     "</qkd_links></qkd_node></config>")

    # ofs-b: port 2 (fibre a-b) now to port 3 (fibre b-c) instead of rx-b
    committed(b, tapi_config(service(SVC_B, "", "", op="delete"),
                             service(SVC_BC, net.sip("b", 2), net.sip("b", 3), CH34)))
    light = wait_for("tx-a -> rx-c", lambda: (lp := net.light("tx-a"))["receiver"] == "rx-c" and lp)
    assert light["loss_db"] == pytest.approx(LOSS_A_C)
    assert light["hops"] == ["ofs-a:1-2", "a-b", "ofs-b:2-3", "b-c"]
    wait_for("tx-a / rx-c key rate", lambda: skr(a, LINK_AC), timeout=20)
    measured = rates(a, LINK_AC)
    check_rate(measured, LOSS_A_C)
    assert link_performance(PROFILE, LOSS_A_C).skr_bps < 0.5 * link_performance(PROFILE, LOSS_A_B).skr_bps
    assert skr(a, static) is None  # the old pair is no longer served
    assert skr(c, LINK_AC)  # the far end reports the same link


@pytest.mark.timeout(40)
def test_link_down_when_the_path_is_cut(net: Net, nc: Callable[[str], Any]) -> None:
    a = nc("a")
    wait_for("tx-a / rx-c key rate", lambda: skr(a, LINK_AC))
    assert a.create_subscription().ok
    cut = net.qkdnet("fibre", "cut", "b-c")
    assert cut.returncode == 0, cut.stderr
    try:
        deadline = time.monotonic() + 15
        down = None
        while down is None and time.monotonic() < deadline:
            notif = a.take_notification(timeout=1)
            if notif is None:
                continue
            root = etree.fromstring(notif.notification_xml.encode())
            found = root.find(f".//{{{QKD_NS}}}sdqkdn_link_down")
            if found is not None and found.findtext(f".//{{{QKD_NS}}}qkdl_id") == LINK_AC:
                down = found
        assert down is not None, "no sdqkdn_link_down for the cut path"
        assert "no light path" in (down.findtext(f".//{{{QKD_NS}}}reason") or "")
        assert net.light("tx-a")["receiver"] is None
    finally:
        restored = net.qkdnet("fibre", "restore", "b-c")
        assert restored.returncode == 0, restored.stderr
    wait_for("tx-a -> rx-c again", lambda: net.light("tx-a")["receiver"] == "rx-c")


@pytest.mark.timeout(30)
def test_topologies_agree_across_a_fibre(net: Net, nc: Callable[[str], Any]) -> None:
    """Fibre a-b seen from a and from b: one link uuid, and a's stub for b is b's switch and NEP."""
    def topo(node: str) -> etree._Element:
        return etree.fromstring(context_xml(nc(node), state=True)).find("t:topology-context/t:topology", NS)

    def ends(t: etree._Element, link: str) -> tuple[str, set[tuple[str, str]]]:
        (el,) = t.xpath("t:link[t:name/t:value=$n]", n=link, namespaces=NS)
        return el.findtext("t:uuid", None, NS), {
            (e.findtext("t:node-uuid", None, NS), e.findtext("t:node-edge-point-uuid", None, NS))
            for e in el.iterfind("t:node-edge-point", NS)}

    ta, tb = topo("a"), topo("b")
    assert ends(ta, "a-b") == ends(tb, "a-b")
    (b_switch,) = tb.xpath("t:node[t:name/t:value='ofs-b']", namespaces=NS)
    (nep_2,) = b_switch.xpath("t:owned-node-edge-point[t:mapped-service-interface-point/"
                              "t:service-interface-point-uuid=$s]/t:uuid/text()", s=net.sip("b", 2), namespaces=NS)
    assert (b_switch.findtext("t:uuid", None, NS), nep_2) in ends(ta, "a-b")[1]
    stub_c = tb.xpath("t:node[t:name/t:value='c']/t:owned-node-edge-point", namespaces=NS)
    assert len(stub_c) == 1 and not stub_c[0].xpath("t:mapped-service-interface-point", namespaces=NS)


@pytest.fixture(scope="module")
def official_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not official_tapi_available():
        pytest.skip(f"official TAPI 2.1.3 modules absent: {OFFICIAL_TAPI}")
    ctx = official_tapi_context(tmp_path_factory.mktemp("official-tapi"))
    yield ctx
    ctx.destroy()


def _served(net: Net, nc: Callable[[str], Any]) -> list[tuple[str, str, str]]:
    out = []
    for node in ("a", "b"):
        m = nc(node)
        config, data = context_xml(m, state=False), context_xml(m, state=True)
        assert config and data
        out.append((node, config, data))
    return out


@pytest.mark.timeout(30)
def test_served_tapi_valid_for_our_modules(net: Net, nc: Callable[[str], Any]) -> None:
    ctx = project_tapi_context()
    try:
        for node, config, data in _served(net, nc):
            validate_tapi(config, with_state=False, ctx=ctx)
            validate_tapi(data, with_state=True, ctx=ctx)
    finally:
        ctx.destroy()


@pytest.mark.timeout(30)
def test_served_tapi_valid_for_official_modules(net: Net, nc: Callable[[str], Any], official_ctx: Any) -> None:
    """Config (get-config) and all data (get) of both switches, with services, connections and
    CEPs in place, hold against the official ONF TAPI 2.1.3 modules."""
    served = _served(net, nc)
    b_data = etree.fromstring(served[1][2])
    assert b_data.xpath("count(cs:connectivity-context/cs:connection)", namespaces=NS) == 1
    losses = b_data.xpath("t:topology-context/t:topology/t:link/t:cost-characteristic"
                          "[t:cost-name='fibre-loss-db']/t:cost-value/text()", namespaces=NS)
    assert sorted(losses) == ["2.00", "3.00"]
    for node, config, data in served:
        validate_tapi(config, with_state=False, ctx=official_ctx)
        validate_tapi(data, with_state=True, ctx=official_ctx)


@pytest.mark.timeout(60)
def test_served_tapi_valid_for_official_modules_with_yanglint(
    net: Net, nc: Callable[[str], Any], tmp_path: Path
) -> None:
    """The same check with Debian's yanglint CLI (`-t config` / `-t data`, full validation)."""
    import shutil
    import subprocess

    if not official_tapi_available():
        pytest.skip(f"official TAPI 2.1.3 modules absent: {OFFICIAL_TAPI}")
    if shutil.which("yanglint") is None:
        pytest.skip("yanglint (Debian libyang2-tools) is not installed")
    mods = tmp_path / "official"
    official_tapi_context(mods)  # copies the official modules as <name>.yang
    files = [str(mods / f"{n}.yang") for n in ("tapi-common", "tapi-topology", "tapi-connectivity",
                                                 "tapi-photonic-media")]
    for node, config, data in _served(net, nc):
        for kind, doc in (("config", config), ("data", data)):
            f = tmp_path / f"{node}-{kind}.xml"
            f.write_text(doc)
            r = subprocess.run(["yanglint", "-e", "-t", kind, "-p", str(mods), *files, str(f)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, f"yanglint refused {node} {kind}: {r.stderr}"


# -- the rules, table-driven (no network) -------------------------------------------------------------
def _switch() -> Any:
    from qkdnode.tapi.model import Switch

    modules = [
        {"name": "cv", "technology": "cv-gg02", "profile": "ait-cv-qpsk"},  # channel 34
        {"name": "bb84", "technology": "dv-bb84"},  # 1310 nm: no DWDM channel
    ]
    plan = [
        {"port": 1, "kind": "module", "sip": "sip-1", "module": "cv"},
        {"port": 2, "kind": "module", "sip": "sip-2", "module": "bb84"},
        {"port": 3, "kind": "line", "sip": "sip-3", "fibre": "f3", "far_node": "x", "loss_db": 1.0},
        {"port": 4, "kind": "line", "sip": "sip-4", "fibre": "f4", "far_node": "y", "loss_db": 2.0},
    ]
    return Switch.from_config({"name": "sw", "ports": 8, "port_plan": plan}, "n", "node-id", modules)


def _svc(uid: str, a: str, b: str, band: tuple[int, int] | None = None) -> Any:
    from qkdnode.tapi.model import EndPoint, Service

    lo, hi = band if band else (None, None)
    return Service(uid, None, False, (EndPoint("a", a, lo, hi), EndPoint("b", b, lo, hi)))


RULES = [
    # (services, expected fabric entries, expected problems as (kind, app-tag))
    ([("s1", "sip-1", "sip-3", CH34)], [[1, 3, *CH34]], []),
    ([("s1", "sip-1", "sip-3", None)], [[1, 3]], []),  # no spectrum: broadband
    ([("s1", "sip-1", "sip-3", CH35)], [], [("invalid-value", "wavelength-mismatch")]),
    # 1310 nm module: any spectrum or none, always a broadband cross-connect
    ([("s1", "sip-2", "sip-3", CH35)], [[2, 3]], []),
    ([("s1", "sip-2", "sip-3", CH35), ("s2", "sip-1", "sip-3", CH34)], [[2, 3]], [("in-use", "port-in-use")]),
    # WDM add/drop: adjacent channels are disjoint ([lower, upper) bands)
    ([("s1", "sip-1", "sip-3", CH34), ("s2", "sip-4", "sip-3", CH35)], [[1, 3, *CH34], [4, 3, *CH35]], []),
    ([("s1", "sip-1", "sip-3", CH34), ("s2", "sip-4", "sip-3", (193_400_000, 193_500_000))],
     [[1, 3, *CH34]], [("in-use", "wavelength-collision")]),
    ([("s1", "sip-1", "sip-3", CH34), ("s2", "sip-1", "sip-4", CH34)], [[1, 3, *CH34]], [("in-use", "port-in-use")]),
    ([("s1", "sip-3", "sip-3", None)], [], [("invalid-value", None)]),
    ([("s1", "sip-3", "sip-9", None)], [], [("invalid-value", "not-a-switch-port")]),
    ([("s1", "sip-3", "sip-4", (CH34[1], CH34[0]))], [], [("invalid-value", None), ("invalid-value", None)]),
]


@pytest.mark.parametrize(("services", "entries", "problems"), RULES)
def test_cross_connect_rules(services: list[tuple[Any, ...]], entries: list[list[int]],
                             problems: list[tuple[str, str | None]]) -> None:
    from qkdnode.tapi.model import TapiConfig, plan_cross_connects

    cfg = TapiConfig(True, (), tuple(_svc(*s) for s in services))
    xcs, found = plan_cross_connects(_switch(), cfg)
    assert [xc.to_fabric() for xc in xcs] == entries
    assert [(p.kind, p.app_tag) for p in found] == problems


def test_running_services_keep_their_ports() -> None:
    """Of two services wanting one port, the one already running keeps it, whatever the order."""
    from qkdnode.tapi.model import TapiConfig, plan_cross_connects

    old, new = _svc("z-old", "sip-1", "sip-3", CH34), _svc("a-new", "sip-1", "sip-4", CH34)
    xcs, found = plan_cross_connects(_switch(), TapiConfig(True, (), (new, old)), [old])
    assert [xc.service for xc in xcs] == ["z-old"]
    assert len(found) == 1 and "a-new" in found[0].path


@pytest.mark.timeout(30)
def test_node_without_switch_refuses_services(node: Any, manager: Any) -> None:
    """A node with no switch has no SIPs: creating one, or a service, is refused."""
    manager.raise_mode = RaiseMode.NONE
    sip = "<service-interface-point><uuid>sip-x</uuid></service-interface-point>"
    errors = rpc_errors(edit_commit(manager, tapi_config(service("svc-x", "sip-x", "sip-x"), sips=sip)))
    assert {(e["tag"], e["path"]) for e in errors} >= {
        ("operation-not-supported", service_path("svc-x")),
        ("invalid-value", "/tapi-common:context/tapi-common:service-interface-point[tapi-common:uuid='sip-x']"),
    }
    assert "no optical switch" in " ".join(e["message"] for e in errors)
    assert "connectivity-service" not in manager.get_config(source="running").xml


@pytest.mark.timeout(30)
async def test_commit_stands_while_the_plant_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    """The agent keeps reporting until the switch fabric (stubbed here) takes the set; the
    connection turns ENABLED only then."""
    import asyncio

    import aiohttp

    from qkdnode.schema import build_context
    from qkdnode.tapi import SwitchAgent
    from qkdnode.tapi.model import TapiConfig, plan_cross_connects

    class Fabric:
        def __init__(self) -> None:
            self.calls: list[tuple[str, list[list[int]], dict[str, int | None] | None]] = []

        async def report_switch(self, switch: str, xcs: list[list[int]],
                                frequencies: dict[str, int | None] | None = None) -> None:
            self.calls.append((switch, xcs, frequencies))
            if len(self.calls) <= 2:
                raise aiohttp.ClientConnectionError("connection refused")

    fabric = Fabric()
    agent = SwitchAgent(build_context(), _switch(), lambda: fabric)  # type: ignore[arg-type,return-value]
    agent.config = TapiConfig(True, ("sip-1", "sip-3"), (_svc("s1", "sip-1", "sip-3", CH34),))
    agent.cross_connects, problems = plan_cross_connects(agent.switch, agent.config)
    assert not problems
    await agent.start()
    try:
        assert "<operational-state>DISABLED</operational-state><lifecycle-state>PLANNED" in agent.state()
        for _ in range(100):
            if len(fabric.calls) >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.01)
        assert [c[1] for c in fabric.calls] == [[[1, 3, *CH34]]] * 3
        assert fabric.calls[0][2] == {"cv": 193_400_000, "bb84": 228_849_205}
        assert "<operational-state>ENABLED</operational-state><lifecycle-state>INSTALLED" in agent.state()
        assert "cannot reach the optical plant" in caplog.text
    finally:
        await agent.stop()
