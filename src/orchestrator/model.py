"""What the orchestrator knows of its domain, as learnt over NETCONF, and the graphs built from it.

* `NodeView`: one node's 015 data (interfaces, PHYS and VIRT links, applications) and, for a
  node with an optical switch, its TAPI topology.
* key graph (`NetworkModel.key_graph`): one vertex per node (qkdn_id), one edge per pair of
  nodes joined by at least one PHYS qkd_link; `capacity` = live secret key rate (015
  `qkdl_performance/skr`) of the links that are up, `reserved` = `virt_bandwidth` of the key
  routes through that hop.
* physical graph (`NetworkModel.physical_graph`): the optical plant from the switches' TAPI
  topologies: switch nodes and their ports, fibre links weighted by loss (dB).

Numbers and identifiers only: no key material ever reaches the orchestrator.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

import networkx as nx

Pair = frozenset[str]


def pair(a: str, b: str) -> Pair:
    return frozenset((a, b))


@dataclass
class Interface:
    qkdi_id: int
    technology: str | None = None  # identity name, e.g. DV-QKD
    role: str | None = None  # TRANSMITTER | RECEIVER | TRANSCEIVER
    wavelength: str | None = None  # 015 wavelength-range-type (ITU channel(s))
    max_absorption: float | None = None  # loss budget, dB
    status: str | None = None
    device: str | None = None
    port: int | None = None
    model: str | None = None


@dataclass
class PhysLink:
    qkdl_id: str
    local_node: str | None
    local_qkdi: int | None
    remote_node: str | None
    remote_qkdi: int | None
    enabled: bool = True
    channel_att: float | None = None
    wavelength: str | None = None
    role: str | None = None
    skr: int | None = None
    eskr: int | None = None
    qber: float | None = None


@dataclass
class VirtLink:
    qkdl_id: str
    local_node: str | None  # first node of the path
    remote_node: str | None  # last node of the path
    prev_hop: str | None
    next_hops: tuple[str, ...]
    bandwidth: int | None
    enabled: bool = True
    applications: tuple[str, ...] = ()


@dataclass
class Application:
    app_id: str
    app_type: str | None = None
    server_app_id: str | None = None
    client_app_ids: tuple[str, ...] = ()
    priority: int | None = None
    min_bandwidth: int | None = None
    max_bandwidth: int | None = None
    backing_qkdl_ids: tuple[str, ...] = ()
    local_qkdn_id: str | None = None
    remote_qkdn_id: str | None = None
    status: str | None = None


@dataclass
class TapiNep:
    uuid: str
    name: str | None
    sips: tuple[str, ...] = ()
    names: dict[str, str] = field(default_factory=dict)


@dataclass
class TapiNode:
    uuid: str
    names: dict[str, str]
    neps: dict[str, TapiNep]
    cost: dict[str, str] = field(default_factory=dict)


@dataclass
class TapiLink:
    uuid: str
    ends: tuple[tuple[str, str], ...]  # (node uuid, nep uuid)
    cost: dict[str, str]
    names: dict[str, str]
    operational_state: str | None = None


@dataclass
class TapiTopology:
    uuid: str
    nodes: dict[str, TapiNode]
    links: dict[str, TapiLink]
    sips: dict[str, dict[str, str]]  # sip uuid -> names
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # connectivity services (config)


@dataclass
class NodeView:
    name: str  # inventory name (a label; identity is qkdn_id)
    qkdn_id: str
    status: str | None = None
    location: str | None = None
    interfaces: dict[int, Interface] = field(default_factory=dict)
    phys: dict[str, PhysLink] = field(default_factory=dict)
    virt: dict[str, VirtLink] = field(default_factory=dict)
    apps: dict[str, Application] = field(default_factory=dict)
    tapi: TapiTopology | None = None
    reachable: bool = True


class NetworkModel:
    """The domain as the orchestrator sees it: nodes by qkdn_id, link states, reservations."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}  # qkdn_id -> view
        self.down_links: set[str] = set()  # PHYS qkdl_ids reported down (notification)
        self.reserved: dict[Pair, int] = {}  # hop -> bit/s reserved by key routes

    # -- node views ------------------------------------------------------------------------------
    def put(self, view: NodeView) -> None:
        self.nodes[view.qkdn_id] = view

    def by_name(self, name: str) -> NodeView | None:
        for v in self.nodes.values():
            if v.name == name:
                return v
        return None

    def resolve(self, ref: str) -> str | None:
        """A node reference (inventory name or qkdn_id) -> qkdn_id."""
        if ref in self.nodes:
            return ref
        v = self.by_name(ref)
        return v.qkdn_id if v is not None else None

    def name_of(self, qkdn_id: str) -> str:
        v = self.nodes.get(qkdn_id)
        return v.name if v is not None else qkdn_id

    # -- PHYS links ------------------------------------------------------------------------------
    def phys_links(self) -> dict[str, list[PhysLink]]:
        """qkdl_id -> the link as each managed end reports it."""
        out: dict[str, list[PhysLink]] = {}
        for v in self.nodes.values():
            for ln in v.phys.values():
                out.setdefault(ln.qkdl_id, []).append(ln)
        return out

    def link_up(self, views: list[PhysLink]) -> bool:
        if not views or views[0].qkdl_id in self.down_links:
            return False
        if any(not ln.enabled for ln in views):
            return False
        ends = {ln.local_node for ln in views} | {ln.remote_node for ln in views}
        if any(e in self.nodes and not self.nodes[e].reachable for e in ends):
            return False
        return self.link_skr(views) > 0

    @staticmethod
    def link_skr(views: list[PhysLink]) -> int:
        rates = [ln.skr for ln in views if ln.skr is not None]
        return min(rates) if rates else 0

    def hop_links(self) -> dict[Pair, list[str]]:
        """Node pair -> PHYS qkdl_ids joining them (both ends managed here)."""
        out: dict[Pair, list[str]] = {}
        for qkdl_id, views in self.phys_links().items():
            ln = views[0]
            if ln.local_node in self.nodes and ln.remote_node in self.nodes and ln.local_node != ln.remote_node:
                out.setdefault(pair(ln.local_node, ln.remote_node), []).append(qkdl_id)  # type: ignore[arg-type]
        return out

    def key_graph(self, *, avoid_links: Iterable[str] = (), avoid_nodes: Iterable[str] = ()) -> nx.Graph:
        """Nodes and hops with `capacity` (live skr of links up), `reserved` and `spare` (bit/s)."""
        avoid_l, avoid_n = set(avoid_links), set(avoid_nodes)
        g = nx.Graph()
        for qid, v in self.nodes.items():
            if v.reachable and qid not in avoid_n:
                g.add_node(qid, name=v.name)
        links = self.phys_links()
        for hop, ids in self.hop_links().items():
            a, b = tuple(hop)
            if a not in g or b not in g:
                continue
            up = [q for q in ids if q not in avoid_l and self.link_up(links[q])]
            cap = sum(self.link_skr(links[q]) for q in up)
            res = self.reserved.get(hop, 0)
            g.add_edge(a, b, links=sorted(ids), up=sorted(up), capacity=cap, reserved=res, spare=max(0, cap - res))
        return g

    # -- optical plant -----------------------------------------------------------------------------
    def physical_graph(self) -> nx.Graph:
        """The switches' TAPI topologies merged: vertices are TAPI nodes and NEPs, edges carry `loss_db`.

        A switch (a node with an `insertion-loss-db` cost value: its own topology) joins each of
        its NEPs to its node vertex with half its insertion loss, so that light crossing it pays
        the insertion loss once. A stub node (a fibre's far end as a neighbour's topology shows
        it) joins nothing: light cannot cross a node without a switch. Fibre links join NEPs with
        their `fibre-loss-db`. Topologies are merged by uuid (a fibre end's NEP has the same uuid
        whichever node describes it).
        """
        g = nx.Graph()
        for v in self.nodes.values():
            topo = v.tapi
            if topo is None:
                continue
            for n in topo.nodes.values():
                insertion = _float(n.cost.get("insertion-loss-db"))
                if not g.has_node(n.uuid):
                    g.add_node(n.uuid, kind="node", names=n.names, switch=False, owner=None)
                for nep in n.neps.values():
                    if not g.has_node(nep.uuid):
                        g.add_node(nep.uuid, kind="nep", node=n.uuid, names=nep.names,
                                   sips=[topo.sips.get(s_, {}) for s_ in nep.sips], sip_ids=list(nep.sips))
                    elif nep.sips:
                        g.nodes[nep.uuid]["sips"] = [topo.sips.get(s_, {}) for s_ in nep.sips]
                        g.nodes[nep.uuid]["sip_ids"] = list(nep.sips)  # the switch port's SIP (direct links)
                if insertion is None:
                    continue  # a stub
                # the switch's own topology names it (a neighbour's stub for it carries only the node name)
                g.nodes[n.uuid].update(switch=True, owner=v.qkdn_id, insertion_loss_db=insertion, names=n.names)
                for nep in n.neps.values():
                    g.add_edge(n.uuid, nep.uuid, loss_db=insertion / 2, kind="port")
            for ln in topo.links.values():
                if len(ln.ends) != 2 or (ln.operational_state or "ENABLED").upper() == "DISABLED":
                    continue
                (_, ea), (_, eb) = ln.ends
                loss = _float(ln.cost.get("fibre-loss-db"))
                g.add_edge(ea, eb, loss_db=loss if loss is not None else 0.0, kind="fibre", link=ln.uuid,
                           names=ln.names)
        return g

    def endpoints(self) -> list[Any]:
        """Every QKD interface with the physical-graph vertex where its light enters the plant:
        the NEP of its switch port (switched node), else the fibre ends at its node (stub NEPs)."""
        from .routing import Endpoint

        g = self.physical_graph()
        by_label: dict[str, list[str]] = {}
        for vtx, d in g.nodes(data=True):
            if d.get("kind") == "nep":
                labels = set(d.get("names", {}).values())
                for sip in d.get("sips", []):
                    labels.update(sip.values())
                for label in labels:
                    by_label.setdefault(label.rsplit("/", 1)[-1], []).append(vtx)
        out = []
        for v in self.nodes.values():
            stub_neps: list[str] = []
            if v.tapi is None:  # fibre ends at this node, as its neighbours' switches show them
                for vtx, d in g.nodes(data=True):
                    if d.get("kind") == "node" and not d.get("switch") and set(d.get("names", {}).values()) & {v.name, v.qkdn_id}:
                        stub_neps.extend(nb for nb in g.adj[vtx] if g.nodes[nb].get("kind") == "nep")
                        stub_neps.extend(x for x, dd in g.nodes(data=True) if dd.get("node") == vtx)
            for iface in v.interfaces.values():
                if v.tapi is not None:
                    for vtx in by_label.get(iface.device or "", []):
                        out.append(Endpoint(v.qkdn_id, iface, vtx))
                else:
                    for vtx in sorted(set(stub_neps)):
                        out.append(Endpoint(v.qkdn_id, iface, vtx))
        return out


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


# -- key routes (the orchestrator's intent, stored in the nodes' datastores) ----------------------------
QKD_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
#: uuid5 namespace of SAE IDs in `qkdl_applications` (shared with the node's forwarder by value).
SAE_NAMESPACE = uuid.UUID("0b6d3c1e-8f4a-5e7b-9c2d-4a1f6e8b3d57")
SAE_URI_PREFIX = "urn:qkdnet:sae:"

EntryKey = tuple[str, str]  # ("qkd_link" | "qkd_app", id)


def sae_uuid(sae_id: str) -> str:
    try:
        return str(uuid.UUID(sae_id))
    except ValueError:
        return str(uuid.uuid5(SAE_NAMESPACE, sae_id))


def sae_uri(sae_id: str) -> str:
    return SAE_URI_PREFIX + quote(sae_id, safe="")


def sae_from_uri(uri: str) -> str:
    return unquote(uri[len(SAE_URI_PREFIX):]) if uri.startswith(SAE_URI_PREFIX) else uri


@dataclass
class Segment:
    """One VIRT qkd_link (one end-to-end key association) as far as this domain installs it.

    `path` are the nodes whose entry this domain writes, in order from `local_end` towards
    `remote_end`; `upstream`/`downstream` are the hops just outside `path` (another domain's
    node, or the border node another domain writes), None at the ends of the association.
    """

    qkdl_id: str
    path: list[str]
    rate: int
    local_end: str
    remote_end: str
    upstream: str | None = None
    downstream: str | None = None

    def hops(self) -> list[tuple[str, str]]:
        full = ([self.upstream] if self.upstream else []) + self.path + ([self.downstream] if self.downstream else [])
        return list(zip(full, full[1:]))

    def neighbours(self, i: int) -> tuple[str | None, str | None]:
        prev = self.path[i - 1] if i > 0 else self.upstream
        nxt = self.path[i + 1] if i < len(self.path) - 1 else self.downstream
        return prev, nxt


@dataclass
class Route:
    route_id: str  # = qkd_app app_id on the end nodes
    src: str  # qkdn_id of the end whose SAE asks for keys
    dst: str
    saes: tuple[str, ...]  # SAE IDs (first: at src)
    min_rate: int
    max_rate: int
    segments: list[Segment]
    applications: tuple[str, ...] = ()  # qkdl_applications (sae_uuid of saes)
    status: str = "up"  # up | down (no path now) | degraded
    peer_domain: str | None = None  # cross-domain: the other domain's name
    origin: bool = True  # this domain asked for the route (cross-domain: the src side)
    # cross-domain: the border node where another domain's segment continues this one (src for the
    # peer's segment, dst for the origin's); it gets no qkd_app, and its far side is not ours to know
    stitch: str | None = None
    peer_dst: str | None = None  # cross-domain, origin side: the destination as asked (a peer's node name)

    @property
    def qkdl_ids(self) -> list[str]:
        return [s.qkdl_id for s in self.segments]

    def to_json(self, names: dict[str, str]) -> dict[str, Any]:
        n = lambda q: names.get(q, q)  # noqa: E731
        return {
            "id": self.route_id, "src": n(self.src), "dst": n(self.dst), "src_id": self.src, "dst_id": self.dst,
            "saes": list(self.saes), "rate_bps": self.min_rate, "max_rate_bps": self.max_rate,
            "status": self.status, "peer_domain": self.peer_domain, "origin": self.origin,
            "border": n(self.stitch) if self.stitch else None, "peer_dst": self.peer_dst,
            "paths": [{"qkdl_id": s.qkdl_id, "rate_bps": s.rate, "nodes": [n(x) for x in s.path],
                       "upstream": n(s.upstream) if s.upstream else None,
                       "downstream": n(s.downstream) if s.downstream else None} for s in self.segments],
        }


def _leaf(name: str, value: Any) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def link_entry(route: Route, seg: Segment, i: int) -> str:
    prev, nxt = seg.neighbours(i)
    return (
        f'<qkd_link nc:operation="replace">{_leaf("qkdl_id", seg.qkdl_id)}<qkdl_enable>true</qkdl_enable>'
        f"<qkdl_local>{_leaf('qkdn_id', seg.local_end)}</qkdl_local>"
        f"<qkdl_remote>{_leaf('qkdn_id', seg.remote_end)}</qkdl_remote>"
        "<qkdl_type>etsi-qkdn-types:VIRT</qkdl_type>"
        + "".join(_leaf("qkdl_applications", a) for a in route.applications)
        + (_leaf("virt_prev_hop", prev) if prev else "") + (_leaf("virt_next_hop", nxt) if nxt else "")
        + _leaf("virt_bandwidth", seg.rate) + "</qkd_link>"
    )


def app_entry(route: Route, local: str) -> str:
    remote = route.dst if local == route.src else route.src
    saes = route.saes
    return (
        f'<qkd_app nc:operation="replace">{_leaf("app_id", route.route_id)}'
        "<app_type>etsi-qkdn-types:CLIENT</app_type>"
        + (_leaf("server_app_id", sae_uri(saes[0])) if saes else "")
        + "".join(_leaf("client_app_id", sae_uri(s)) for s in saes[1:])
        + f"<app_qos>{_leaf('max_bandwidth', route.max_rate)}{_leaf('min_bandwidth', route.min_rate)}</app_qos>"
        + "".join(_leaf("backing_qkdl_id", q) for q in route.qkdl_ids)
        + _leaf("local_qkdn_id", local) + _leaf("remote_qkdn_id", remote) + "</qkd_app>"
    )


def route_entries(route: Route, managed: set[str]) -> dict[str, dict[EntryKey, str]]:
    """node -> the entries this domain writes there for `route`."""
    out: dict[str, dict[EntryKey, str]] = {}
    for seg in route.segments:
        for i, node in enumerate(seg.path):
            out.setdefault(node, {})[("qkd_link", seg.qkdl_id)] = link_entry(route, seg, i)
    for end in (route.src, route.dst):
        if end in managed and end != route.stitch and any(end in s.path for s in route.segments):
            out.setdefault(end, {})[("qkd_app", route.route_id)] = app_entry(route, end)
    return out


def remove_entry(key: EntryKey) -> str:
    kind, ident_ = key
    leaf = "qkdl_id" if kind == "qkd_link" else "app_id"
    return f'<{kind} nc:operation="remove">{_leaf(leaf, ident_)}</{kind}>'


def node_config(entries: list[tuple[EntryKey, str]]) -> str:
    """`<qkd_node>` edit content with the given entries (schema order: applications, then links)."""
    apps = "".join(x for k, x in entries if k[0] == "qkd_app")
    links = "".join(x for k, x in entries if k[0] == "qkd_link")
    if not apps and not links:
        return ""
    return (
        f'<qkd_node xmlns="{QKD_NS}" xmlns:etsi-qkdn-types="{TYPES_NS}">'
        + (f"<qkd_applications>{apps}</qkd_applications>" if apps else "")
        + (f"<qkd_links>{links}</qkd_links>" if links else "") + "</qkd_node>"
    )


def entry_diff(old: dict[EntryKey, str], new: dict[EntryKey, str]) -> tuple[str, str]:
    """(edit, undo) `<config>` contents turning `old` entries into `new` ones, and back."""
    edit: list[tuple[EntryKey, str]] = []
    undo: list[tuple[EntryKey, str]] = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key not in new:
            edit.append((key, remove_entry(key)))
        elif key not in old:  # a new entry must not overwrite one that someone else made
            edit.append((key, new[key].replace('nc:operation="replace"', 'nc:operation="create"', 1)))
        else:
            edit.append((key, new[key]))
        undo.append((key, old[key] if key in old else remove_entry(key)))
    return node_config(edit), node_config(undo)


def entry_is_ours(ln: VirtLink, managed: set[str]) -> bool:
    """A node's VIRT entry is written by the domain of its next hop (of its own, at the last node)."""
    return not ln.next_hops or ln.next_hops[0] in managed


def routes_from_views(views: dict[str, NodeView], border: set[str] = frozenset(),  # type: ignore[assignment]
                      guests: set[str] = frozenset()) -> list[Route]:  # type: ignore[assignment]
    """Rebuild the key routes this domain installed from what its nodes hold (VIRT links + apps).

    `border`: our nodes that belong to other domains too. A segment entering from another domain
    that has only border nodes is the other domain's route ending at a shared node: not ours.
    `guests`: those of them whose own domain is another one. A segment on border nodes only belongs
    to the own domain of its source node (`qkdl_local`), as `qkdnet up` and `provision_route` do.
    """
    managed = set(views)
    per_link: dict[str, dict[str, VirtLink]] = {}
    for qid, v in views.items():
        for ln in v.virt.values():
            per_link.setdefault(ln.qkdl_id, {})[qid] = ln
    segments: dict[str, Segment] = {}
    for qkdl_id, at in per_link.items():
        any_ln = next(iter(at.values()))
        if not any_ln.local_node or not any_ln.remote_node:
            continue

        def ours(q: str | None, at: dict[str, VirtLink] = at) -> bool:
            return q is not None and q in at and entry_is_ours(at[q], managed)

        heads = [q for q in at if ours(q) and not ours(at[q].prev_hop)]
        if len(heads) != 1:
            continue
        path: list[str] = []
        cur: str | None = heads[0]
        while cur is not None and ours(cur) and cur not in path:
            path.append(cur)
            cur = at[cur].next_hops[0] if at[cur].next_hops else None
        first, last = at[path[0]], at[path[-1]]
        if set(path) <= border and (first.prev_hop and first.prev_hop not in managed or any_ln.local_node in guests):
            continue
        segments[qkdl_id] = Segment(qkdl_id, path, int(first.bandwidth or 0), any_ln.local_node, any_ln.remote_node,
                                    first.prev_hop, last.next_hops[0] if last.next_hops else None)
    routes: list[Route] = []
    used: set[str] = set()
    for qid, v in sorted(views.items()):
        for app in v.apps.values():
            segs = [segments[q] for q in app.backing_qkdl_ids if q in segments]
            if not segs or app.app_id in {r.route_id for r in routes}:
                continue
            local_end = segs[0].local_end
            src = local_end
            dst = segs[0].remote_end
            saes = tuple(sae_from_uri(u) for u in ((app.server_app_id,) if app.server_app_id else ()) + app.client_app_ids)
            vl = per_link[segs[0].qkdl_id][segs[0].path[0]]
            # a cross-domain segment has its qkd_app at one end only: the other is the border node
            stitch = next((e for e in (src, dst) if e in border and e in views and app.app_id not in views[e].apps),
                          None)
            routes.append(Route(
                app.app_id, src, dst, saes, int(app.min_bandwidth or sum(s.rate for s in segs)),
                int(app.max_bandwidth or app.min_bandwidth or 0), segs, vl.applications,
                origin=src in managed and stitch != src, stitch=stitch,
            ))
            used.update(s.qkdl_id for s in segs)
    for qkdl_id, seg in segments.items():  # VIRT links without an application (installed by hand)
        if qkdl_id not in used:
            vl = per_link[qkdl_id][seg.path[0]]
            routes.append(Route(qkdl_id, seg.local_end, seg.remote_end, (), seg.rate, seg.rate, [seg], vl.applications,
                                origin=seg.local_end in managed))
    return routes
