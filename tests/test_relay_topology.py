"""Topology files: `routes:` (static key relay routes) and `services: {qrng}`; the VIRT links the launcher
writes for a route. Table-driven, no processes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from lxml import etree

from orchestrator.launcher import Network
from orchestrator.topology import TopologyError, load_topology, parse_topology
from qkdnode.forwarder import routes_from_links, sae_uuid
from qkdnode.qkd015 import parse_links

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]

BASE = """
nodes: [{name: a}, {name: b}, {name: c}, {name: x}]
fibres:
  - {name: a-b, ends: [a, b], length_km: 10}
  - {name: b-c, ends: [b, c], length_km: 10}
modules:
  - {name: ab-t, technology: dv-cow, role: transmitter, node: a, pairs_with: ab-r}
  - {name: ab-r, technology: dv-cow, role: receiver, node: b, pairs_with: ab-t}
saes: [{id: sae-a, node: a}, {id: sae-c, node: c}, {id: sae-b, node: b}]
"""


def test_chain_4_example() -> None:
    topo = load_topology(ROOT / "examples" / "chain-4.yaml")
    route = topo.routes["a-d"]
    assert route.path == ("a", "b", "c", "d") and route.saes == ("sae-a", "sae-d")
    assert route.bandwidth_bps == 50000 and topo.qrng_node == "a"


@pytest.mark.parametrize(("extra", "error"), [
    ("routes: [{name: r, path: [a, b, c], saes: [sae-a, sae-c], bandwidth_bps: 1000}]", None),
    ("routes: [{name: r, path: [a]}]", "routes[0].path: a path names at least two nodes"),
    ("routes: [{name: r, path: [a, b, a]}]", "each once"),
    ("routes: [{name: r, path: [a, c]}]", "routes[0].path[1]: no fibre or QKD module pair joins a and c"),
    ("routes: [{name: r, path: [a, b, x]}]", "no fibre or QKD module pair joins b and x"),
    ("routes: [{name: r, path: [a, q]}]", "no node named 'q'"),
    ("routes: [{name: r, path: [a, b], saes: [sae-z]}]", "routes[0].saes[0]: no SAE with id 'sae-z'"),
    ("routes: [{name: r, path: [a, b, c], saes: [sae-b]}]", "SAE sae-b is on b, not on an end of the path"),
    ("routes: [{name: r, path: [a, b], bandwidth_bps: 5000000000}]", "uint32"),
    ("routes: [{name: r, path: [a, b]}, {name: r, path: [b, c]}]", "duplicate route name 'r'"),
    ("routes: [{name: r, path: [a, b], rate: 5}]", "unknown field 'rate'"),
    ("services: {qrng: {node: b}}", None),
    ("services: {qrng: {node: q}}", "services.qrng.node: no node named 'q'"),
    ("services: {qrng: {}}", "missing required field 'node'"),
    ("services: {qrgn: {node: a}}", "unknown field 'qrgn' (did you mean 'qrng'?)"),
])
def test_routes_and_services_validation(extra: str, error: str | None) -> None:
    text = BASE + extra + "\n"
    if error is None:
        parse_topology(text, "t.yaml")
        return
    with pytest.raises(TopologyError) as exc:
        parse_topology(text, "t.yaml")
    assert error in str(exc.value)
    assert str(exc.value).startswith("t.yaml:")


def test_launcher_route_links_parse_into_the_route_table(tmp_path: Path) -> None:
    """The VIRT links `qkdnet up` installs give every node of the path a valid route (same qkdl_id)."""
    topo = parse_topology(BASE + "routes: [{name: r, path: [a, b, c], saes: [sae-a, sae-c], bandwidth_bps: 1000}]\n")
    net = Network(topo, tmp_path)
    ids = {n: str(uuid.uuid4()) for n in topo.nodes}
    net.nodes = {n: type("NP", (), {"node_id": ids[n]})() for n in topo.nodes}  # type: ignore[misc]
    route = topo.routes["r"]
    rid = net.route_id(route)
    assert rid == str(uuid.uuid5(uuid.UUID("6f1c6a34-5d0e-4c4e-9a8e-2f3b1d7c9e01"), "route|r"))
    for node, (prev, nxt) in {"a": (None, "b"), "b": ("a", "c"), "c": ("b", None)}.items():
        xml = net.route_link_xml(route, node)
        etree.fromstring(xml)  # well-formed
        (link,) = parse_links(f'<qkd_links xmlns="urn:etsi:qkd:yang:etsi-qkd-node">{xml}</qkd_links>'
                              .replace("<qkd_link>", '<qkd_link xmlns="urn:etsi:qkd:yang:etsi-qkd-node">'))
        routes, skipped = routes_from_links(ids[node], [link])
        assert not skipped and set(routes) == {rid}
        r = routes[rid]
        assert (r.local_end, r.remote_end) == (ids["a"], ids["c"])
        assert (r.prev_hop, r.next_hop) == (ids[prev] if prev else None, ids[nxt] if nxt else None)
        assert r.bandwidth_bps == 1000 and r.applications == {sae_uuid("sae-a"), sae_uuid("sae-c")}
        assert r.allows("sae-a", "sae-c") and not r.allows("sae-a", "sae-b")


def _virt(local: str | None, remote: str | None, prev: str | None, nxt: tuple[str, ...],
          enabled: bool = True) -> "object":
    from qkdnode.qkd015 import LinkConfig

    return LinkConfig(str(uuid.uuid4()), "VIRT", enabled, local, None, remote, None, None, prev, nxt, None, ())


@pytest.mark.parametrize(("me", "link", "problem"), [
    ("A", _virt("A", "C", None, ("B",)), None),
    ("B", _virt("A", "C", "A", ("C",)), None),
    ("C", _virt("A", "C", "B", ()), None),
    ("A", _virt("A", "C", "Z", ("B",)), "at qkdl_local: virt_next_hop required, virt_prev_hop absent"),
    ("A", _virt("A", "C", None, ()), "at qkdl_local"),
    ("C", _virt("A", "C", None, ()), "at qkdl_remote"),
    ("B", _virt("A", "C", "A", ()), "on the path: virt_prev_hop and virt_next_hop required"),
    ("B", _virt("A", "C", "A", ("C", "D")), "multicast"),
    ("B", _virt("A", "A", "A", ("C",)), "two different nodes"),
    ("B", _virt(None, "C", "A", ("C",)), "two different nodes"),
])
def test_route_table_checks_the_encoding(me: str, link: object, problem: str | None) -> None:
    routes, skipped = routes_from_links(me, [link])  # type: ignore[list-item]
    if problem is None:
        assert len(routes) == 1 and not skipped
    else:
        assert not routes and problem in skipped[0]


def test_disabled_and_phys_links_are_not_routes() -> None:
    assert routes_from_links("A", [_virt("A", "C", None, ("B",), enabled=False)]) == ({}, [])
