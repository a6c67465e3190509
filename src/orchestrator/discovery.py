"""Learn a node from the node itself, over NETCONF: 015 identity, interfaces, links, applications,
and its TAPI context when it serves one. Nothing here reads a topology file.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from .model import (
    Application, Interface, NodeView, PhysLink, TapiLink, TapiNep, TapiNode, TapiTopology, VirtLink,
)
from .session import NodeSession

QKD_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
TAPI_COMMON_NS = "urn:onf:otcc:yang:tapi-common"
TAPI_TOPOLOGY_NS = "urn:onf:otcc:yang:tapi-topology"
TAPI_CONNECTIVITY_NS = "urn:onf:otcc:yang:tapi-connectivity"
TAPI_PHOTONIC_NS = "urn:onf:otcc:yang:tapi-photonic-media"

QKD_FILTER = f'<qkd_node xmlns="{QKD_NS}"/>'
TAPI_FILTER = f'<context xmlns="{TAPI_COMMON_NS}"/>'


def _q(name: str, ns: str = QKD_NS) -> str:
    return f"{{{ns}}}{name}"


def _path(path: str, ns: str = QKD_NS) -> str:
    return "/".join(_q(p, ns) for p in path.split("/"))


def text(el: etree._Element | None, path: str, ns: str = QKD_NS) -> str | None:
    if el is None:
        return None
    found = el.find(_path(path, ns))
    return None if found is None or found.text is None else found.text.strip()


def texts(el: etree._Element, path: str, ns: str = QKD_NS) -> tuple[str, ...]:
    return tuple((e.text or "").strip() for e in el.findall(_path(path, ns)))


def ident(value: str | None) -> str | None:
    """An identityref value without its prefix."""
    return value.split(":")[-1] if value else None


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        return None


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


# -- ETSI 015 ---------------------------------------------------------------------------------------
def parse_interface(el: etree._Element) -> Interface:
    return Interface(
        qkdi_id=int(text(el, "qkdi_id") or 0),
        technology=ident(text(el, "qkdi_type")),
        role=ident(text(el, "qkdi_capabilities/role_support")),
        wavelength=text(el, "qkdi_capabilities/wavelength_range"),
        max_absorption=_float(text(el, "qkdi_capabilities/max_absorption")),
        status=ident(text(el, "qkdi_status")),
        device=text(el, "qkdi_att_point/device"),
        port=_int(text(el, "qkdi_att_point/port")),
        model=text(el, "qkdi_model"),
    )


def parse_link(el: etree._Element) -> PhysLink | VirtLink:
    qkdl_id = text(el, "qkdl_id") or ""
    enabled = (text(el, "qkdl_enable") or "true") == "true"
    local, remote = text(el, "qkdl_local/qkdn_id"), text(el, "qkdl_remote/qkdn_id")
    if ident(text(el, "qkdl_type")) == "VIRT":
        return VirtLink(
            qkdl_id=qkdl_id, local_node=local, remote_node=remote, prev_hop=text(el, "virt_prev_hop"),
            next_hops=texts(el, "virt_next_hop"), bandwidth=_int(text(el, "virt_bandwidth")), enabled=enabled,
            applications=texts(el, "qkdl_applications"),
        )
    qber = None
    for perf in el.findall(_path("qkdl_performance/phys_perf")):
        if ident(text(perf, "perf_type")) == "QBER":
            qber = _float(text(perf, "value"))
    return PhysLink(
        qkdl_id=qkdl_id, local_node=local, local_qkdi=_int(text(el, "qkdl_local/qkdi_id")),
        remote_node=remote, remote_qkdi=_int(text(el, "qkdl_remote/qkdi_id")), enabled=enabled,
        channel_att=_float(text(el, "phys_channel_att")), wavelength=text(el, "phys_wavelength"),
        role=ident(text(el, "phys_qkd_role")), skr=_int(text(el, "qkdl_performance/skr")),
        eskr=_int(text(el, "qkdl_performance/eskr")), qber=qber,
    )


def parse_app(el: etree._Element) -> Application:
    return Application(
        app_id=text(el, "app_id") or "",
        app_type=ident(text(el, "app_type")),
        server_app_id=text(el, "server_app_id"),
        client_app_ids=texts(el, "client_app_id"),
        priority=_int(text(el, "app_priority")),
        min_bandwidth=_int(text(el, "app_qos/min_bandwidth")),
        max_bandwidth=_int(text(el, "app_qos/max_bandwidth")),
        backing_qkdl_ids=texts(el, "backing_qkdl_id"),
        local_qkdn_id=text(el, "local_qkdn_id"),
        remote_qkdn_id=text(el, "remote_qkdn_id"),
        status=ident(text(el, "app_status")),
    )


def parse_node(name: str, data: etree._Element) -> NodeView:
    """A NodeView from the `<data>` of a `<get>` (config and state) of `qkd_node`."""
    node = data if data.tag == _q("qkd_node") else data.find(_q("qkd_node"))
    if node is None:
        raise ValueError(f"{name}: the node serves no etsi-qkd-sdn-node:qkd_node")
    qkdn_id = text(node, "qkdn_id")
    if not qkdn_id:
        raise ValueError(f"{name}: qkd_node has no qkdn_id")
    view = NodeView(name=name, qkdn_id=qkdn_id, status=ident(text(node, "qkdn_status")),
                    location=text(node, "qkdn_location_id"))
    for el in node.findall(_path("qkd_interfaces/qkd_interface")):
        iface = parse_interface(el)
        view.interfaces[iface.qkdi_id] = iface
    for el in node.findall(_path("qkd_links/qkd_link")):
        ln = parse_link(el)
        if isinstance(ln, VirtLink):
            view.virt[ln.qkdl_id] = ln
        else:
            view.phys[ln.qkdl_id] = ln
    for el in node.findall(_path("qkd_applications/qkd_app")):
        app = parse_app(el)
        view.apps[app.app_id] = app
    return view


# -- ONF TAPI ---------------------------------------------------------------------------------------
def _names(el: etree._Element, ns: str) -> dict[str, str]:
    out = {}
    for n in el.findall(_q("name", ns)):
        k = text(n, "value-name", ns)
        if k:
            out[k] = text(n, "value", ns) or ""
    return out


def _cost(el: etree._Element) -> dict[str, str]:
    out = {}
    for c in el.findall(_q("cost-characteristic", TAPI_TOPOLOGY_NS)):
        k = text(c, "cost-name", TAPI_TOPOLOGY_NS)
        if k:
            out[k] = text(c, "cost-value", TAPI_TOPOLOGY_NS) or ""
    return out


def parse_tapi(data: etree._Element) -> TapiTopology | None:
    """The first topology of a TAPI context (one per switch node), its SIPs and services."""
    ctx = data if data.tag == _q("context", TAPI_COMMON_NS) else data.find(_q("context", TAPI_COMMON_NS))
    if ctx is None:
        return None
    T = TAPI_TOPOLOGY_NS
    sips = {text(s, "uuid", TAPI_COMMON_NS) or "": _names(s, TAPI_COMMON_NS)
            for s in ctx.findall(_q("service-interface-point", TAPI_COMMON_NS))}
    topo_el = ctx.find(f"{_q('topology-context', T)}/{_q('topology', T)}")
    if topo_el is None:
        return None
    nodes: dict[str, TapiNode] = {}
    for n in topo_el.findall(_q("node", T)):
        neps: dict[str, TapiNep] = {}
        for e in n.findall(_q("owned-node-edge-point", T)):
            uid = text(e, "uuid", T) or ""
            names = _names(e, T)
            mapped = tuple(text(m, "service-interface-point-uuid", T) or ""
                           for m in e.findall(_q("mapped-service-interface-point", T)))
            neps[uid] = TapiNep(uid, next(iter(names.values()), None), mapped, names)
        uid = text(n, "uuid", T) or ""
        nodes[uid] = TapiNode(uid, _names(n, T), neps, _cost(n))
    links: dict[str, TapiLink] = {}
    for ln in topo_el.findall(_q("link", T)):
        ends = tuple((text(e, "node-uuid", T) or "", text(e, "node-edge-point-uuid", T) or "")
                     for e in ln.findall(_q("node-edge-point", T)))
        uid = text(ln, "uuid", T) or ""
        links[uid] = TapiLink(uid, ends, _cost(ln), _names(ln, T), text(ln, "operational-state", T))
    services: dict[str, dict[str, Any]] = {}
    C = TAPI_CONNECTIVITY_NS
    for s in ctx.findall(f"{_q('connectivity-context', C)}/{_q('connectivity-service', C)}"):
        uid = text(s, "uuid", C) or ""
        eps = [text(e, "service-interface-point/service-interface-point-uuid", C) or ""
               for e in s.findall(_q("end-point", C))]
        services[uid] = {"uuid": uid, "sips": eps, "names": _names(s, C),
                         "operational_state": text(s, "operational-state", C),
                         "end_points": [_end_point(e) for e in s.findall(_q("end-point", C))]}
    return TapiTopology(text(topo_el, "uuid", T) or "", nodes, links, sips, services)


def _end_point(e: etree._Element) -> dict[str, Any]:
    """local-id, SIP and spectrum [lower, upper) MHz (None: whole fibre) of a service end-point."""
    spec = e.find(f"{{{TAPI_PHOTONIC_NS}}}media-channel-connectivity-service-end-point-spec/"
                  f"{{{TAPI_PHOTONIC_NS}}}mc-config/{{{TAPI_PHOTONIC_NS}}}spectrum")
    lo, hi = (text(spec, "lower-frequency", TAPI_PHOTONIC_NS), text(spec, "upper-frequency", TAPI_PHOTONIC_NS))
    band = (int(lo), int(hi)) if lo and hi and lo.isdigit() and hi.isdigit() else None
    return {"local_id": text(e, "local-id", TAPI_CONNECTIVITY_NS),
            "sip": text(e, "service-interface-point/service-interface-point-uuid", TAPI_CONNECTIVITY_NS),
            "band": band}


def serves_tapi(capabilities: Any) -> bool:
    return any(TAPI_COMMON_NS in str(c) for c in capabilities)


def _within(path: str, ids: list[str]) -> str:
    """A predicate: no instance of `path` has a value outside `ids` (count, not `or`: libyang 2.1
    evaluates `or`/`and` predicates on an empty node set to a boolean and then fails)."""
    return f"[count({path}{''.join(f'[.!={i!r}]' for i in ids)})=0]"


def border_select(known: set[str]) -> str:
    """An XPath selection of a border node's `qkd_node` that names no node outside `known`.

    A border node belongs to several domains and holds the other domains' links and key route
    segments too; an orchestrator reads only the entries whose nodes (ends and hops) it knows, so
    that another domain's interior never reaches it, not even on the wire.
    """
    ids = sorted(k for k in known if "'" not in k)
    base = "/q:qkd_node"
    link_ok = ("[q:qkdl_local/q:qkdn_id][q:qkdl_remote/q:qkdn_id]"
               + "".join(_within(p, ids) for p in ("q:qkdl_local/q:qkdn_id", "q:qkdl_remote/q:qkdn_id",
                                                    "q:virt_prev_hop", "q:virt_next_hop")))
    app_ok = "[q:local_qkdn_id]" + _within("q:local_qkdn_id", ids) + _within("q:remote_qkdn_id", ids)
    parts = [f"{base}/q:{leaf}" for leaf in ("qkdn_id", "qkdn_status", "qkdn_location_id", "qkd_interfaces")]
    parts.append(f"{base}/q:qkd_links/q:qkd_link{link_ok}")
    parts.append(f"{base}/q:qkd_applications/q:qkd_app{app_ok}")
    return " | ".join(parts)


async def node_id(session: NodeSession) -> str | None:
    """The node's qkdn_id alone (a border node's, before it is read with `border_select`)."""
    own = await session.get_xpath("/q:qkd_node/q:qkdn_id", {"q": QKD_NS})
    return text(own.find(_q("qkd_node")), "qkdn_id")


async def discover(session: NodeSession, known: set[str] | None = None, own_id: str | None = None) -> NodeView:
    """Everything the orchestrator needs of one node, in one or two `<get>`s. With `known` (a border
    node): only what names nodes in `known` and the node itself (`own_id`, read from the node first
    when not known yet), see `border_select`."""
    if known is None:
        data = await session.get(QKD_FILTER)
    else:
        if own_id is None:
            own_id = await node_id(session)
        data = await session.get_xpath(border_select(set(known) | {own_id or ""}), {"q": QKD_NS})
    view = parse_node(session.name, data)
    caps = await session.call(lambda m: list(m.server_capabilities))
    if serves_tapi(caps):
        view.tapi = parse_tapi(await session.get(TAPI_FILTER))
    return view
