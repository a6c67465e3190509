"""Pure pieces of the orchestrator, table-driven: path computation, direct links, route entries
and their reconstruction from the nodes' data (what a restarted orchestrator relies on)."""

from __future__ import annotations

import networkx as nx
import pytest
from lxml import etree

from orchestrator.discovery import parse_node
from orchestrator.inventory import InventoryError, from_network_json, load_inventory
from orchestrator.model import (
    QKD_NS, Interface, NodeView, Route, Segment, entry_diff, route_entries, routes_from_views, sae_uuid,
)
from orchestrator.routing import Endpoint, NoRoute, direct_links, generated_graph, key_route, shortest_feasible_path

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"


def graph(edges: list[tuple[str, str, int]]) -> nx.Graph:
    g = nx.Graph()
    for a, b, spare in edges:
        g.add_node(a, name=a)
        g.add_node(b, name=b)
        g.add_edge(a, b, spare=spare, capacity=spare, reserved=0, links=[], up=["x"])
    return g


SQUARE = [("a", "b", 100), ("b", "c", 100), ("a", "d", 60), ("d", "c", 60), ("a", "c", 10)]


@pytest.mark.parametrize("rate, expected", [
    (10, [(("a", "c"), 10)]),                      # the direct hop has enough
    (50, [(("a", "b", "c"), 50)]),                 # fewest hops among the feasible; widest first
    (100, [(("a", "b", "c"), 100)]),
    (150, [(("a", "b", "c"), 100), (("a", "d", "c"), 50)]),  # split: widest paths on the residual
    (170, [(("a", "b", "c"), 100), (("a", "d", "c"), 60), (("a", "c"), 10)]),
])
def test_key_route(rate: int, expected: list[tuple[tuple[str, ...], int]]) -> None:
    got = key_route(graph(SQUARE), "a", "c", rate)
    assert [(s.nodes, s.rate) for s in got] == expected


def test_key_route_refuses_what_no_split_carries() -> None:
    with pytest.raises(NoRoute) as exc:
        key_route(graph(SQUARE), "a", "c", 171)
    assert exc.value.best_bps == 170
    with pytest.raises(NoRoute):
        key_route(graph([("a", "b", 5), ("c", "d", 5)]), "a", "d", 1)


def test_pathcomp_on_a_large_graph() -> None:
    g = generated_graph(1000, 5000, seed=3)
    assert g.number_of_edges() == 5000 and nx.is_connected(g)
    path = shortest_feasible_path(g, "n0", "n999", 1000)
    assert path is not None and path[0] == "n0" and path[-1] == "n999"
    assert all(g.edges[a, b]["spare"] >= 1000 for a, b in zip(path, path[1:]))


def test_direct_links_respect_budget_technology_and_wavelength() -> None:
    g = nx.Graph()
    g.add_edge("tx", "sw", loss_db=0.5)
    for port, loss in (("rx1", 0.5), ("rx2", 0.5), ("line", 0.5)):
        g.add_edge("sw", port, loss_db=loss)
    g.add_edge("line", "far", loss_db=20.0)

    def ep(node: str, vtx: str, role: str, tech: str = "DV-QKD", wl: str | None = "34", budget: float = 12.0) -> Endpoint:
        return Endpoint(node, Interface(1, tech, role, wl, budget, device=vtx), vtx)

    eps = [ep("A", "tx", "TRANSMITTER"), ep("B", "rx1", "RECEIVER"), ep("C", "rx2", "RECEIVER", wl="35"),
           ep("D", "far", "RECEIVER"), ep("E", "rx2", "RECEIVER", tech="CV-QKD"), ep("A", "rx1", "RECEIVER")]
    got = direct_links(g, eps)
    assert [(d.emitter.qkdn_id, d.receiver.qkdn_id, d.loss_db) for d in got] == [("A", "B", 1.0)]



def _parse(name: str, qkdn_id: str, entries: dict[tuple[str, str], str]) -> NodeView:
    apps = "".join(x for k, x in entries.items() if k[0] == "qkd_app")
    links = "".join(x for k, x in entries.items() if k[0] == "qkd_link")
    xml = (f'<data xmlns:nc="{NC}"><qkd_node xmlns="{QKD_NS}" xmlns:etsi-qkdn-types="urn:etsi:qkd:yang:etsi-qkd-node-types">'
           f"<qkdn_id>{qkdn_id}</qkdn_id><qkd_applications>{apps}</qkd_applications><qkd_links>{links}</qkd_links>"
           "</qkd_node></data>")
    return parse_node(name, etree.fromstring(xml))


def test_routes_rebuilt_from_the_entries_they_wrote() -> None:
    seg0 = Segment("r1", ["a", "b", "c"], 100, "a", "c")
    seg1 = Segment("r1-2", ["a", "d", "c"], 50, "a", "c")
    route = Route("r1", "a", "c", ("sae-1", "sae 2"), 150, 200, [seg0, seg1], (sae_uuid("sae-1"), sae_uuid("sae 2")))
    entries = route_entries(route, {"a", "b", "c", "d"})
    assert set(entries["a"]) == {("qkd_link", "r1"), ("qkd_link", "r1-2"), ("qkd_app", "r1")}
    assert set(entries["b"]) == {("qkd_link", "r1")}
    views = {q: _parse(q, q, entries.get(q, {})) for q in "abcd"}
    [back] = routes_from_views(views)
    assert (back.route_id, back.src, back.dst, back.saes, back.min_rate, back.max_rate) == \
        ("r1", "a", "c", ("sae-1", "sae 2"), 150, 200)
    assert [(s.qkdl_id, s.path, s.rate) for s in back.segments] == [("r1", ["a", "b", "c"], 100), ("r1-2", ["a", "d", "c"], 50)]
    assert route_entries(back, set("abcd")) == entries  # a restarted orchestrator would write nothing


def test_cross_domain_ownership_of_the_border_entry() -> None:
    # west: s, x, g (border); east: g, y, t.  One association s -> t; west writes s, x; east writes g, y, t.
    west = Route("r", "s", "t", (), 10, 10, [Segment("r", ["s", "x"], 10, "s", "t", None, "g")])
    east = Route("r", "s", "t", (), 10, 10, [Segment("r", ["g", "y", "t"], 10, "s", "t", "x", None)], origin=False)
    w_entries = route_entries(west, {"s", "x", "g"})
    e_entries = route_entries(east, {"g", "y", "t"})
    assert set(w_entries) == {"s", "x"} and set(e_entries) == {"g", "y", "t"}
    every = {q: {**w_entries.get(q, {}), **e_entries.get(q, {})} for q in "sxgyt"}
    w_views = {q: _parse(q, q, every[q]) for q in ("s", "x", "g")}
    e_views = {q: _parse(q, q, every[q]) for q in ("g", "y", "t")}
    [w] = routes_from_views(w_views, {"g"})
    [e] = routes_from_views(e_views, {"g"})
    assert (w.segments[0].path, w.segments[0].downstream, w.origin) == (["s", "x"], "g", True)
    assert (e.segments[0].path, e.segments[0].upstream, e.origin) == (["g", "y", "t"], "x", False)


def test_a_route_on_border_nodes_only_belongs_to_its_source_nodes_domain() -> None:
    # p and q belong to both domains, p's own domain is west (q's east); the route p -> q was asked of west
    route = Route("r", "p", "q", (), 10, 10, [Segment("r", ["p", "q"], 10, "p", "q")])
    entries = route_entries(route, {"p", "q"})
    views = {n: _parse(n, n, entries.get(n, {})) for n in "pq"}
    [w] = routes_from_views(views, {"p", "q"}, guests={"q"})
    assert (w.route_id, w.segments[0].path, w.origin) == ("r", ["p", "q"], True)
    assert routes_from_views(views, {"p", "q"}, guests={"p"}) == []  # east: not its route


def test_entry_diff_creates_new_entries_and_reverts_exactly() -> None:
    old = {("qkd_link", "l1"): '<qkd_link nc:operation="replace"><qkdl_id>l1</qkdl_id></qkd_link>'}
    new = {("qkd_link", "l2"): '<qkd_link nc:operation="replace"><qkdl_id>l2</qkdl_id></qkd_link>'}
    edit, undo = entry_diff(old, new)
    assert 'nc:operation="create"><qkdl_id>l2' in edit and 'nc:operation="remove"><qkdl_id>l1' in edit
    assert 'nc:operation="remove"><qkdl_id>l2' in undo and 'nc:operation="replace"><qkdl_id>l1' in undo
    assert entry_diff(old, old) == ("", "")


def test_inventory_from_network_json_filters_by_domain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    nc = {"host": "127.0.0.1", "port": 1, "username": "u", "password": "p"}
    net = {"topology": "t", "state_dir": "/x", "nodes": {
        "a": {"domain": "west", "netconf": nc}, "g": {"domain": "west", "domains": ["west", "east"], "netconf": nc},
        "b": {"domain": "east", "netconf": nc}}, "orchestrators": {"east": {"url": "http://e"}}}
    inv = from_network_json(net, "east")
    assert inv.names() == ["b", "g"] and inv.border_nodes() == ["g"] and inv.peers == {}
    assert inv.nodes["g"].home == "west" and inv.guests() == ["g"] and from_network_json(net, "west").guests() == []
    assert from_network_json(net, "west").peers == {"east": "http://e"}
    (tmp_path / "inv.yaml").write_text("domain: lab\nnodes:\n  - name: n1\n    netconf: {host: h, port: 830}\n")
    with pytest.raises(InventoryError, match="missing username, password"):
        load_inventory(tmp_path / "inv.yaml")


def _switched_views() -> dict[str, NodeView]:
    """a (switch ofs-a: 1 = tx-a, 2 = fibre a-b) - b (switch ofs-b: 1 = rx-b, 2 = a-b, 3 = b-c) - c (rx-c on b-c),
    as the switches' TAPI topologies show them (a neighbour's switch appears as a stub named after its node)."""
    from orchestrator.model import TapiLink, TapiNep, TapiNode, TapiTopology

    ins = {"insertion-loss-db": "1.00"}

    def node(uid: str, name: str, neps: dict[str, tuple[str, ...]], cost: dict[str, str]) -> TapiNode:
        return TapiNode(uid, {"name": name}, {n: TapiNep(n, n, sips, {"name": n}) for n, sips in neps.items()}, cost)

    def link(uid: str, a: tuple[str, str], b: tuple[str, str], loss: str) -> TapiLink:
        return TapiLink(uid, (a, b), {"fibre-loss-db": loss}, {"name": uid})

    ab, bc = link("a-b", ("NA", "na-ab"), ("NB", "nb-ab"), "2.0"), link("b-c", ("NB", "nb-bc"), ("NC", "nc-bc"), "3.0")
    topo_a = TapiTopology("ta", {"NA": node("NA", "ofs-a", {"ofs-a/port-1": ("sa1",), "na-ab": ("sa2",)}, ins),
                                 "NB": node("NB", "b", {"nb-ab": ()}, {})},
                          {"a-b": ab}, {"sa1": {"name": "ofs-a/port-1/tx-a"}, "sa2": {"name": "ofs-a/port-2/fibre-a-b"}})
    topo_b = TapiTopology("tb", {"NB": node("NB", "ofs-b", {"ofs-b/port-1": ("sb1",), "nb-ab": ("sb2",), "nb-bc": ("sb3",)}, ins),
                                 "NA": node("NA", "a", {"na-ab": ()}, {}), "NC": node("NC", "c", {"nc-bc": ()}, {})},
                          {"a-b": ab, "b-c": bc}, {"sb1": {"name": "ofs-b/port-1/rx-b"},
                                                   "sb2": {"name": "ofs-b/port-2/fibre-a-b"},
                                                   "sb3": {"name": "ofs-b/port-3/fibre-b-c"}})

    def iface(device: str, role: str) -> dict[int, Interface]:
        return {1: Interface(1, "CV-QKD", role, "34", 12.0, device=device)}

    return {"A": NodeView("a", "A", interfaces=iface("tx-a", "TRANSMITTER"), tapi=topo_a),
            "B": NodeView("b", "B", interfaces=iface("rx-b", "RECEIVER"), tapi=topo_b),
            "C": NodeView("c", "C", interfaces=iface("rx-c", "RECEIVER"))}


def test_cross_connects_derived_from_the_light_path() -> None:
    """Every switch on the path: the NEP before it is the in port, the one after it the out port."""
    from orchestrator.directlink import channel_band, cross_connects
    from orchestrator.model import NetworkModel

    model = NetworkModel()
    for v in _switched_views().values():
        model.put(v)
    g = model.physical_graph()
    links = {(d.emitter.interface.device, d.receiver.interface.device): d for d in direct_links(g, model.endpoints())}
    assert {k: v.loss_db for k, v in links.items()} == {("tx-a", "rx-b"): 4.0, ("tx-a", "rx-c"): 7.0}
    got = [(x.owner, x.switch, x.in_port, x.out_port, x.in_sip, x.out_sip, x.hop)
           for x in cross_connects(g, links[("tx-a", "rx-c")].hops)]
    assert got == [("A", "ofs-a", 1, 2, "sa1", "sa2", 0), ("B", "ofs-b", 2, 3, "sb2", "sb3", 1)]
    got = [(x.switch, x.in_port, x.out_port) for x in cross_connects(g, links[("tx-a", "rx-b")].hops)]
    assert got == [("ofs-a", 1, 2), ("ofs-b", 2, 1)]
    # the reverse path swaps in and out; a path that ends inside a switch has no cross-connect there
    assert [(x.in_port, x.out_port) for x in cross_connects(g, links[("tx-a", "rx-b")].hops[::-1])] == [(1, 2), (2, 1)]
    with pytest.raises(ValueError, match="inside switch"):
        cross_connects(g, links[("tx-a", "rx-c")].hops[:2])
    assert channel_band(34) == (193_350_000, 193_450_000) and channel_band(None) is None
