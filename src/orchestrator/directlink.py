"""Direct QKD links built through the optical switches (issue #6).

A direct link joins an emitter module and a receiver module on different nodes by light: the
orchestrator picks the feasible pairing (`routing.direct_links`: technology, roles, wavelength,
loss within budget), derives from its physical-graph path one cross-connect per switch crossed,
and installs in ONE all-or-nothing transaction (`transaction.Transaction`):

* on every switch of the path, a TAPI `connectivity-service` joining the two ports (in: towards
  the emitter, local-id `tx`; out: towards the receiver, local-id `rx`), with the spectrum of the
  modules' DWDM channel (none for O-band modules: a broadband cross-connect). Its names carry the
  link: `qkdl_id` = the PHYS link, `qkdl_hop` = its index along the light path;
* on both end nodes, a PHYS `qkd_link` with the same `qkdl_id` (uuid5 of the two module names):
  `qkdl_local`/`qkdl_remote` (qkdn_id + qkdi_id, this end first), `phys_channel_att` = path loss,
  `phys_wavelength`, `phys_qkd_role` of this end's module.

Ports follow the switch's own rule (`qkdnode.tapi.model._clash`): a module port carries one
service; a line port (a fibre's) is shared by services whose spectra are both given and disjoint
(WDM: e.g. a CV link on C-37 and a DV link on C-32 over one fibre); a service without a spectrum
(O band: broadband) has its ports to itself. Among the light paths that fit the pairing's budget,
the link takes the lowest-loss one whose ports are free or shareable (`share_refusal`).

The nodes' datastores are the only record: `links_from_views` rebuilds the built links from the
connectivity services and PHYS entries a (restarted) orchestrator discovers. The plant follows the
cross-connects, the modules re-pair, and the PHYS link gets keys (015 `qkdl_performance`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn
from xml.sax.saxutils import escape

import networkx as nx

from .model import QKD_NS, TYPES_NS, Interface, NodeView
from .routing import DirectLink, _channels, direct_links, wavelength_ok
from .spectrum import Band, channel_band, common_channel, share_refusal
from .transaction import NodeEdit, Transaction

if TYPE_CHECKING:
    from .controller import Orchestrator

#: uuid5 namespace of direct links (qkdl_id) and of their connectivity services.
DIRECT_LINK_NAMESPACE = uuid.UUID("9c3e5a71-2b8d-4f60-a1e4-6d7b0c2f8e53")
TAPI_COMMON_NS = "urn:onf:otcc:yang:tapi-common"
TAPI_CONNECTIVITY_NS = "urn:onf:otcc:yang:tapi-connectivity"
TAPI_PHOTONIC_NS = "urn:onf:otcc:yang:tapi-photonic-media"
QKDL_NAME = "qkdl_id"  # TAPI name (value-name) of a service: the PHYS link it lights
HOP_NAME = "qkdl_hop"  # TAPI name: index of the switch along the light path
EMITTER_ROLES = ("TRANSMITTER", "TRANSCEIVER")
RECEIVER_ROLES = ("RECEIVER", "TRANSCEIVER")

ModuleKey = tuple[str, int]  # (qkdn_id, qkdi_id)


def refuse(message: str, status: int = 409) -> NoReturn:
    """Raise the controller's request error (HTTP 4xx); imported late: the controller imports us."""
    from .controller import RequestError

    raise RequestError(message, status)


def direct_link_id(emitter: str, receiver: str) -> str:
    """qkdl_id of the direct link emitter -> receiver (module names): the same at both ends."""
    return str(uuid.uuid5(DIRECT_LINK_NAMESPACE, f"direct|{emitter}|{receiver}"))


def service_id(qkdl_id: str, switch: str) -> str:
    return str(uuid.uuid5(DIRECT_LINK_NAMESPACE, f"service|{qkdl_id}|{switch}"))


MAX_PATHS = 16  # loopless light paths tried per (emitter, receiver) vertex pair when the best is busy


def light_paths(g: nx.Graph, found: Sequence[DirectLink], limit: int = MAX_PATHS) -> list[tuple[float, tuple[str, ...]]]:
    """(loss dB, hops) of one pairing's light paths within its budget, lowest loss first: for
    each of its (emitter vertex, receiver vertex) pairs, the loopless paths in order of loss."""
    out: dict[tuple[str, ...], float] = {}
    for d in found:
        paths = nx.shortest_simple_paths(g, d.emitter.vertex, d.receiver.vertex, weight="loss_db")
        for hops in itertools.islice(paths, limit):
            loss = float(sum(g.edges[u, v]["loss_db"] for u, v in zip(hops, hops[1:])))
            if loss > d.budget_db:
                break
            out.setdefault(tuple(hops), round(loss, 3))
    return sorted(((loss, hops) for hops, loss in out.items()), key=lambda x: x[0])


# -- what a built link is ---------------------------------------------------------------------------
@dataclass(frozen=True)
class End:
    qkdn_id: str
    qkdi_id: int
    device: str | None

    @property
    def key(self) -> ModuleKey:
        return (self.qkdn_id, self.qkdi_id)

    def label(self) -> str:
        return self.device or f"{self.qkdn_id}/{self.qkdi_id}"


@dataclass(frozen=True)
class CrossConnect:
    """One switch of the light path: its in port (towards the emitter) to its out port."""

    owner: str  # qkdn_id of the node that holds the switch
    switch: str  # switch name (its TAPI node's name)
    in_port: int | None
    out_port: int | None
    in_sip: str
    out_sip: str
    service: str = ""  # connectivity-service uuid
    hop: int = 0

    def to_json(self, names: Mapping[str, str]) -> dict[str, Any]:
        return {"switch": self.switch, "node": names.get(self.owner, self.owner), "service": self.service,
                "in_port": self.in_port, "out_port": self.out_port, "in_sip": self.in_sip, "out_sip": self.out_sip}


@dataclass
class BuiltLink:
    qkdl_id: str
    emitter: End
    receiver: End
    loss_db: float | None
    wavelength: str | None  # phys_wavelength (DWDM channel), None off the grid
    band: Band | None  # spectrum of the services
    cross_connects: list[CrossConnect] = field(default_factory=list)

    def ends(self) -> tuple[End, End]:
        return (self.emitter, self.receiver)

    def to_json(self, names: Mapping[str, str], status: Mapping[str, Any] | None = None) -> dict[str, Any]:
        def end(e: End) -> dict[str, Any]:
            return {"node": names.get(e.qkdn_id, e.qkdn_id), "qkdn_id": e.qkdn_id, "qkdi_id": e.qkdi_id,
                    "device": e.device}

        return {"qkdl_id": self.qkdl_id, "emitter": end(self.emitter), "receiver": end(self.receiver),
                "loss_db": self.loss_db, "wavelength": self.wavelength,
                "spectrum_mhz": list(self.band) if self.band else None,
                "switches": [xc.switch for xc in self.cross_connects],
                "cross_connects": [xc.to_json(names) for xc in self.cross_connects], **(status or {})}


# -- from a light path to cross-connects --------------------------------------------------------------
_PORT = re.compile(r"/port-(\d+)(?:/|$)")


def _port(g: nx.Graph, nep: str) -> tuple[int | None, str]:
    d = g.nodes[nep]
    sips = d.get("sip_ids") or []
    if d.get("kind") != "nep" or not sips:
        raise ValueError(f"vertex {nep} is no switch port with a service-interface-point")
    labels = list(d.get("names", {}).values()) + [v for s in d.get("sips", []) for v in s.values()]
    port = next((int(m.group(1)) for lbl in labels if (m := _PORT.search(lbl))), None)
    return port, str(sips[0])


def cross_connects(g: nx.Graph, hops: Sequence[str]) -> list[CrossConnect]:
    """The cross-connect of every switch a light path crosses (physical-graph vertices, emitter first).

    A switch appears on the path as its node vertex between two of its NEPs: the NEP before it
    is the in port, the one after it the out port; each NEP maps to the port's SIP.
    """
    out: list[CrossConnect] = []
    for i, v in enumerate(hops):
        d = g.nodes[v]
        if d.get("kind") != "node" or not d.get("switch"):
            continue
        if i == 0 or i == len(hops) - 1:
            raise ValueError(f"the light path starts or ends inside switch {v}")
        (in_port, in_sip), (out_port, out_sip) = _port(g, hops[i - 1]), _port(g, hops[i + 1])
        out.append(CrossConnect(str(d.get("owner")), str(d.get("names", {}).get("name") or v),
                                in_port, out_port, in_sip, out_sip, hop=len(out)))
    return out


# -- NETCONF content ------------------------------------------------------------------------------------
def _name(key: str, value: str) -> str:
    return f"<name><value-name>{escape(key)}</value-name><value>{escape(value)}</value></name>"


def service_xml(link: BuiltLink, xc: CrossConnect) -> str:
    def ep(local_id: str, sip: str) -> str:
        spectrum = "" if link.band is None else (
            f'<media-channel-connectivity-service-end-point-spec xmlns="{TAPI_PHOTONIC_NS}"><mc-config><spectrum>'
            f"<upper-frequency>{link.band[1]}</upper-frequency><lower-frequency>{link.band[0]}</lower-frequency>"
            "</spectrum></mc-config></media-channel-connectivity-service-end-point-spec>")
        return (f"<end-point><local-id>{local_id}</local-id><service-interface-point>"
                f"<service-interface-point-uuid>{sip}</service-interface-point-uuid></service-interface-point>"
                f"{spectrum}</end-point>")

    label = f"direct link {link.emitter.label()} -> {link.receiver.label()}"
    return (f'<connectivity-service nc:operation="create"><uuid>{xc.service}</uuid>'
            f"{_name('name', label)}{_name(QKDL_NAME, link.qkdl_id)}{_name(HOP_NAME, str(xc.hop))}"
            f"{ep('tx', xc.in_sip)}{ep('rx', xc.out_sip)}"
            "<service-layer>PHOTONIC_MEDIA</service-layer><service-type>POINT_TO_POINT_CONNECTIVITY</service-type>"
            "</connectivity-service>")


def phys_xml(link: BuiltLink, local: End, remote: End, role: str) -> str:
    att = f"<phys_channel_att>{link.loss_db:.3f}</phys_channel_att>" if link.loss_db is not None else ""
    wl = f"<phys_wavelength>{link.wavelength}</phys_wavelength>" if link.wavelength else ""
    return (f'<qkd_link nc:operation="create"><qkdl_id>{link.qkdl_id}</qkdl_id><qkdl_enable>true</qkdl_enable>'
            f"<qkdl_local><qkdn_id>{local.qkdn_id}</qkdn_id><qkdi_id>{local.qkdi_id}</qkdi_id></qkdl_local>"
            f"<qkdl_remote><qkdn_id>{remote.qkdn_id}</qkdn_id><qkdi_id>{remote.qkdi_id}</qkdi_id></qkdl_remote>"
            f"<qkdl_type>etsi-qkdn-types:PHYS</qkdl_type>{att}{wl}"
            f"<phys_qkd_role>etsi-qkdn-types:{role}</phys_qkd_role></qkd_link>")


def _remove_link(qkdl_id: str) -> str:
    return f'<qkd_link nc:operation="remove"><qkdl_id>{qkdl_id}</qkdl_id></qkd_link>'


def _remove_service(uid: str) -> str:
    return f'<connectivity-service nc:operation="remove"><uuid>{uid}</uuid></connectivity-service>'


def _node_config(links: list[str], services: list[str]) -> str:
    out = ""
    if links:
        out += (f'<qkd_node xmlns="{QKD_NS}" xmlns:etsi-qkdn-types="{TYPES_NS}">'
                f"<qkd_links>{''.join(links)}</qkd_links></qkd_node>")
    if services:
        out += (f'<context xmlns="{TAPI_COMMON_NS}"><connectivity-context xmlns="{TAPI_CONNECTIVITY_NS}">'
                f"{''.join(services)}</connectivity-context></context>")
    return out


def link_entries(link: BuiltLink) -> dict[str, tuple[list[str], list[str]]]:
    """qkdn_id -> (PHYS qkd_link entries, connectivity services) a built link puts there."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    e, r = link.emitter, link.receiver
    out.setdefault(e.qkdn_id, ([], []))[0].append(phys_xml(link, e, r, "TRANSMITTER"))
    out.setdefault(r.qkdn_id, ([], []))[0].append(phys_xml(link, r, e, "RECEIVER"))
    for xc in link.cross_connects:
        out.setdefault(xc.owner, ([], []))[1].append(service_xml(link, xc))
    return out


def edits_for(link: BuiltLink, create: bool) -> dict[str, tuple[str, str]]:
    """qkdn_id -> (edit, undo) `<config>` contents installing (create) or removing the link."""
    out = {}
    for q, (links, services) in link_entries(link).items():
        add = _node_config(links, services)
        remove = _node_config([_remove_link(link.qkdl_id)] if links else [],
                              [_remove_service(xc.service) for xc in link.cross_connects if xc.owner == q])
        out[q] = (add, remove) if create else (remove, add)
    return out


# -- rebuilt from the nodes' data ---------------------------------------------------------------------
def _sip_port(view: NodeView, sip: str) -> int | None:
    names = view.tapi.sips.get(sip, {}) if view.tapi is not None else {}
    return next((int(m.group(1)) for v in names.values() if (m := _PORT.search(v))), None)


def _sip_kind(view: NodeView, sip: str) -> tuple[str, bool]:
    """(label, is a line port) of a switch port's SIP: `SWITCH/port-N/fibre-F` is a fibre's
    (line) port, `SWITCH/port-N/MODULE` a module's."""
    names = view.tapi.sips.get(sip, {}) if view.tapi is not None else {}
    label = next(iter(names.values()), sip)
    devices = {i.device for i in view.interfaces.values() if i.device}
    line = any("/fibre-" in v and v.rsplit("/", 1)[-1] not in devices for v in names.values())
    return label, line


def _service_band(view: NodeView, svc: Mapping[str, Any]) -> Band | None:
    """The spectrum a service holds on its ports; None (the whole fibre) when an end-point gives
    none, they differ, or a module it joins has no DWDM channel (the switch makes it broadband)."""
    bands = {ep.get("band") for ep in svc.get("end_points", [])}
    if len(bands) != 1 or None in bands:
        return None
    for ep in svc.get("end_points", []):
        names = view.tapi.sips.get(str(ep.get("sip")), {}) if view.tapi is not None else {}
        tails = {v.rsplit("/", 1)[-1] for v in names.values()}
        if any(i.device in tails and _channels(i.wavelength) is None for i in view.interfaces.values()):
            return None
    band = next(iter(bands))
    return (int(band[0]), int(band[1])) if band is not None else None


def _switch_name(view: NodeView) -> str:
    if view.tapi is not None:
        for n in view.tapi.nodes.values():
            if "insertion-loss-db" in n.cost and n.cost["insertion-loss-db"]:
                return n.names.get("name") or n.uuid
    return view.name


def links_from_views(views: Mapping[str, NodeView]) -> dict[str, BuiltLink]:
    """The direct links the nodes hold: connectivity services named with a `qkdl_id` and the
    PHYS entries of that id (one end is enough to name both)."""
    services: dict[str, list[tuple[NodeView, dict[str, Any]]]] = {}
    for v in views.values():
        if v.tapi is not None:
            for svc in v.tapi.services.values():
                q = svc.get("names", {}).get(QKDL_NAME)
                if q:
                    services.setdefault(q, []).append((v, svc))
    out: dict[str, BuiltLink] = {}
    for qkdl_id, svcs in services.items():
        lns = [ln for v in views.values() for ln in v.phys.values() if ln.qkdl_id == qkdl_id]
        ln = next((x for x in lns if x.local_node and x.remote_node and x.local_qkdi is not None
                   and x.remote_qkdi is not None), None)
        if ln is None:
            continue
        local = (str(ln.local_node), int(ln.local_qkdi))  # type: ignore[arg-type]
        remote = (str(ln.remote_node), int(ln.remote_qkdi))  # type: ignore[arg-type]
        if ln.role == "RECEIVER":  # the entry of the receiving end: its remote is the emitter
            local, remote = remote, local

        def end(k: ModuleKey) -> End:
            v = views.get(k[0])
            iface = v.interfaces.get(k[1]) if v is not None else None
            return End(k[0], k[1], iface.device if iface is not None else None)

        xcs = []
        band: Band | None = None
        for v, svc in svcs:
            eps = {e.get("local_id"): e for e in svc.get("end_points", [])}
            tx, rx = eps.get("tx") or {}, eps.get("rx") or {}
            band = band or tx.get("band")
            hop = svc.get("names", {}).get(HOP_NAME, "")
            xcs.append(CrossConnect(v.qkdn_id, _switch_name(v), _sip_port(v, tx.get("sip") or ""),
                                    _sip_port(v, rx.get("sip") or ""), tx.get("sip") or "", rx.get("sip") or "",
                                    svc["uuid"], int(hop) if hop.isdigit() else 0))
        xcs.sort(key=lambda x: (x.hop, x.switch))
        out[qkdl_id] = BuiltLink(qkdl_id, end(local), end(remote), ln.channel_att, ln.wavelength, band, xcs)
    return out


# -- the orchestrator's side -----------------------------------------------------------------------------
class DirectLinks:
    """Build, delete and list the direct links of one orchestrator's domain."""

    def __init__(self, orch: "Orchestrator") -> None:
        self.orch = orch

    def built(self) -> dict[str, BuiltLink]:
        return links_from_views(self.orch.model.nodes)

    def status(self, link: BuiltLink) -> dict[str, Any]:
        model = self.orch.model
        views = model.phys_links().get(link.qkdl_id, [])
        return {"built": True, "up": model.link_up(views), "skr_bps": model.link_skr(views)}

    def to_json(self, link: BuiltLink) -> dict[str, Any]:
        return link.to_json(self.orch.names(), self.status(link))

    def mark(self, pairings: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Feasible pairings (`direct_links_json`) with `built` and, when built, `qkdl_id`."""
        by_ends = {(bl.emitter.key, bl.receiver.key): bl.qkdl_id for bl in self.built().values()}
        for p in pairings:
            key = ((p["emitter"]["qkdn_id"], p["emitter"]["qkdi_id"]), (p["receiver"]["qkdn_id"], p["receiver"]["qkdi_id"]))
            p["built"] = key in by_ends
            if key in by_ends:
                p["qkdl_id"] = by_ends[key]
        return pairings

    # -- references --------------------------------------------------------------------------------
    def module(self, ref: str | Mapping[str, Any], what: str) -> tuple[str, Interface]:
        """A module by device name, `NODE:QKDI` / `NODE/QKDI`, or {node, qkdi_id}."""
        model = self.orch.model
        if isinstance(ref, Mapping):
            node, qkdi = ref.get("node"), ref.get("qkdi_id")
            if not isinstance(node, str) or isinstance(qkdi, bool) or not isinstance(qkdi, int):
                refuse(f"{what}: give a device name or {{node, qkdi_id}}", 400)
        elif isinstance(ref, str) and ref:
            found = [(q, i) for q, v in model.nodes.items() for i in v.interfaces.values() if i.device == ref]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                refuse(f"{what}: device {ref!r} is on several nodes; give NODE:QKDI", 400)
            m = re.fullmatch(r"(.+)[:/](\d+)", ref)
            if m is None:
                refuse(f"{what}: no QKD module {ref!r} in domain {self.orch.domain}", 404)
            node, qkdi = m.group(1), int(m.group(2))
        else:
            refuse(f"{what}: give a device name or {{node, qkdi_id}}", 400)
        q = model.resolve(str(node))
        iface = model.nodes[q].interfaces.get(int(qkdi)) if q is not None else None
        if q is None or iface is None:
            refuse(f"{what}: no QKD interface {qkdi} on node {node!r} in domain {self.orch.domain}", 404)
        return q, iface

    # -- build ---------------------------------------------------------------------------------------
    async def build(self, emitter: str | Mapping[str, Any], receiver: str | Mapping[str, Any]) -> tuple[BuiltLink, bool]:
        """Build emitter -> receiver; returns (link, created). An existing identical link is returned
        as it is (created False), so asking twice is harmless."""
        async with self.orch.lock:
            link = self.plan(emitter, receiver)
            await self._rediscover(self._nodes(link))  # check against what the nodes hold now
            link = self.plan(emitter, receiver)
            existing = self.built().get(link.qkdl_id)
            if existing is not None and (existing.emitter.key, existing.receiver.key) == (link.emitter.key, link.receiver.key):
                return existing, False
            self.check_conflicts(link)
            t0 = time.monotonic()
            await self._transact(link, create=True)
            self.orch._event("direct-link-built", qkdl_id=link.qkdl_id, emitter=link.emitter.label(),
                             receiver=link.receiver.label(), switches=[x.switch for x in link.cross_connects],
                             ms=round((time.monotonic() - t0) * 1000, 1))
            return self.built().get(link.qkdl_id, link), True

    def plan(self, emitter: str | Mapping[str, Any], receiver: str | Mapping[str, Any]) -> BuiltLink:
        """The link emitter -> receiver over its lowest-loss feasible light path (no change made)."""
        model = self.orch.model
        tq, tx = self.module(emitter, "emitter")
        rq, rx = self.module(receiver, "receiver")
        if tx.role not in EMITTER_ROLES:
            refuse(f"emitter: {tx.device or tx.qkdi_id} is a {str(tx.role).lower()}, not a transmitter", 400)
        if rx.role not in RECEIVER_ROLES:
            refuse(f"receiver: {rx.device or rx.qkdi_id} is a {str(rx.role).lower()}, not a receiver", 400)
        if tq == rq:
            refuse("emitter and receiver are on the same node", 400)
        if tx.technology != rx.technology:
            refuse(f"{tx.device} is {tx.technology}, {rx.device} is {rx.technology}", 400)
        if not wavelength_ok(tx, rx):
            refuse(f"{tx.device} (channel {tx.wavelength}) and {rx.device} (channel {rx.wavelength}) share no wavelength", 400)
        g = model.physical_graph()
        found = [d for d in direct_links(g, model.endpoints())
                 if (d.emitter.qkdn_id, d.emitter.interface.qkdi_id) == (tq, tx.qkdi_id)
                 and (d.receiver.qkdn_id, d.receiver.interface.qkdi_id) == (rq, rx.qkdi_id)]
        if not found:
            refuse(self._why_infeasible(g, tq, tx, rq, rx), 409)
        e, r = End(tq, tx.qkdi_id, tx.device), End(rq, rx.qkdi_id, rx.device)
        qkdl_id = direct_link_id(e.label(), r.label())
        ch = common_channel(tx, rx)

        def on(loss: float, hops: Sequence[str]) -> BuiltLink:
            try:
                xcs = cross_connects(g, hops)
            except ValueError as exc:
                refuse(f"no usable light path from {e.label()} to {r.label()}: {exc}", 409)
            unmanaged = [x.switch for x in xcs if x.owner not in model.nodes]
            if unmanaged:
                refuse(f"switch(es) {', '.join(unmanaged)} on the path are not managed by domain {self.orch.domain}", 409)
            xcs = [replace(x, service=service_id(qkdl_id, x.switch)) for x in xcs]
            return BuiltLink(qkdl_id, e, r, loss, str(ch) if ch is not None else None, channel_band(ch), xcs)

        # the lowest-loss path (the pairing's feasibility) unless its ports are taken: then the
        # lowest-loss one within budget whose ports are free or shareable; none: the lowest-loss
        # path, whose conflicts `check_conflicts` reports
        from .controller import RequestError

        def candidates() -> Iterator[tuple[float, tuple[str, ...]]]:
            yield found[0].loss_db, found[0].hops
            yield from ((loss, hops) for loss, hops in light_paths(g, found) if hops != found[0].hops)

        fallback: BuiltLink | None = None
        first_error: RequestError | None = None
        for loss, hops in candidates():
            try:
                link = on(loss, hops)
            except RequestError as exc:
                first_error = first_error or exc
                continue
            if not self.port_problems(link):
                return link
            fallback = fallback or link
        if fallback is not None:
            return fallback
        assert first_error is not None
        raise first_error

    def _why_infeasible(self, g: nx.Graph, tq: str, tx: Interface, rq: str, rx: Interface) -> str:
        eps = self.orch.model.endpoints()
        tv = [e.vertex for e in eps if (e.qkdn_id, e.interface.qkdi_id) == (tq, tx.qkdi_id) and e.vertex in g]
        rv = {e.vertex for e in eps if (e.qkdn_id, e.interface.qkdi_id) == (rq, rx.qkdi_id) and e.vertex in g}
        pair = f"{tx.device} -> {rx.device}"
        if not tv or not rv:
            which = tx.device if not tv else rx.device
            return f"{pair}: {which} is not on the optical plant (no switch port or fibre end)"
        best = None
        for v in tv:
            dist = nx.single_source_dijkstra_path_length(g, v, weight="loss_db")
            for w in rv:
                if w in dist and (best is None or dist[w] < best):
                    best = float(dist[w])
        if best is None:
            return f"{pair}: no light path joins them through the switches"
        budget = min(b for b in (tx.max_absorption, rx.max_absorption, float("inf")) if b is not None)
        return f"{pair}: the light path loses {best:.2f} dB, over the loss budget of {budget:.2f} dB"

    def check_conflicts(self, link: BuiltLink, ignore: str | None = None) -> None:
        """Refuse (409) when an end module is in another built link or a port on the path is used
        in a way the switch would refuse (`share_refusal`)."""
        built = {q: bl for q, bl in self.built().items() if q not in (link.qkdl_id, ignore)}
        problems: list[str] = []
        for end in link.ends():
            for bl in built.values():
                if end.key in (bl.emitter.key, bl.receiver.key):
                    problems.append(f"module {end.label()} is already in direct link {bl.qkdl_id} "
                                    f"({bl.emitter.label()} -> {bl.receiver.label()})")
        ends = {link.emitter.key, link.receiver.key}
        same_pair = sorted({q for q, views in self.orch.model.phys_links().items() if q != link.qkdl_id
                            and any({(x.local_node, x.local_qkdi), (x.remote_node, x.remote_qkdi)} == ends for x in views)})
        problems += [f"{link.emitter.label()} and {link.receiver.label()} already have PHYS link {q} "
                     "(a static pair or one made by hand)" for q in same_pair]
        problems += self.port_problems(link, ignore)
        if problems:
            refuse(f"direct link {link.emitter.label()} -> {link.receiver.label()} refused: " + "; ".join(problems), 409)

    def port_problems(self, link: BuiltLink, ignore: str | None = None) -> list[str]:
        """Why the switch ports of the link's path cannot take it (empty: free or shareable)."""
        names = self.orch.names()
        by_service = {xc.service: bl for q, bl in self.built().items() if q not in (link.qkdl_id, ignore)
                      for xc in bl.cross_connects}
        problems: list[str] = []
        for xc in link.cross_connects:
            view = self.orch.model.nodes.get(xc.owner)
            if view is None or view.tapi is None:
                continue
            for svc in view.tapi.services.values():
                lights = svc.get("names", {}).get(QKDL_NAME)
                if svc["uuid"] == xc.service or (lights and lights in (link.qkdl_id, ignore)):
                    continue
                held = _service_band(view, svc)
                for ep in svc.get("end_points", []):
                    sip = ep.get("sip")
                    if sip not in (xc.in_sip, xc.out_sip):
                        continue
                    label, line = _sip_kind(view, str(sip))
                    why = share_refusal(line, held, link.band)
                    if why is None:
                        continue  # WDM: disjoint spectra share a line port
                    port = xc.in_port if sip == xc.in_sip else xc.out_port
                    bl = by_service.get(svc["uuid"])
                    user = (f"direct link {bl.qkdl_id} ({bl.emitter.label()} -> {bl.receiver.label()})" if bl
                            else f"connectivity-service {svc['uuid']}")
                    problems.append(f"port {port} of switch {xc.switch} at {names.get(xc.owner, xc.owner)} "
                                    f"({label}) is already used by {user}: {why}")
        return problems

    def _nodes(self, link: BuiltLink) -> list[str]:
        ids = {link.emitter.qkdn_id, link.receiver.qkdn_id} | {xc.owner for xc in link.cross_connects}
        return sorted(v.name for q, v in self.orch.model.nodes.items() if q in ids)

    async def _rediscover(self, names: list[str]) -> None:
        await asyncio.gather(*(self.orch._discover(n) for n in names), return_exceptions=True)

    async def _transact(self, link: BuiltLink, create: bool) -> None:
        edits = []
        for q, (edit, undo) in sorted(edits_for(link, create).items()):
            view = self.orch.model.nodes.get(q)
            if view is None:
                refuse(f"node {q} of direct link {link.qkdl_id} is not managed by domain {self.orch.domain}", 409)
            edits.append(NodeEdit(self.orch.sessions[view.name], edit, undo))
        try:
            await Transaction(edits).run()
        finally:  # the model follows what the nodes hold now, whatever happened
            await self._rediscover([e.session.name for e in edits])

    # -- delete --------------------------------------------------------------------------------------
    async def delete(self, qkdl_id: str) -> BuiltLink:
        async with self.orch.lock:
            link = self.built().get(qkdl_id)
            if link is None:
                refuse(f"no direct link {qkdl_id} in domain {self.orch.domain}", 404)
            await self._transact(link, create=False)
            self.orch._event("direct-link-deleted", qkdl_id=qkdl_id)
            return link


# -- qkdnet up: declared direct links -------------------------------------------------------------------
def post_direct_link(url: str, emitter: str, receiver: str, timeout: float = 60.0) -> dict[str, Any]:
    """Ask an orchestrator to build a declared direct link (`qkdnet up`); retried while it is
    unreachable, any refusal is final."""
    body = json.dumps({"emitter": emitter, "receiver": receiver}).encode()
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(f"{url}/direct-links", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=max(5.0, timeout)) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"direct link {emitter} -> {receiver} refused by the orchestrator: "
                               f"{exc.read().decode(errors='replace')}") from exc
        except urllib.error.URLError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"direct link {emitter} -> {receiver}: orchestrator at {url}: {exc.reason}") from exc
        time.sleep(0.5)

