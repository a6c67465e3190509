"""TAPI 2.1.3 XML of a node's optical switch: the initial configuration and the operational state.

Configuration (`initial_config_xml`): the context (uuid, name), one service-interface-point per
switch port (its configurable leaves) and an empty connectivity-context.

State (`state_xml`), merged at `<get>` into running: the SIPs' state (layer protocol, spectra),
the topology (this switch as a node with one owned node-edge-point per port, mapped to the
port's SIP; a stub node with one NEP for the far end of each fibre; one link per fibre with its
loss as cost-characteristic `fibre-loss-db`), and for every connectivity-service its realising
`connection` between the connection-end-points of its two ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from .model import (
    COMMON_NS, CONNECTIVITY_NS, FIBRE_BAND, O_BAND, PHOTONIC_NS, TOPOLOGY_NS, Band, CrossConnect, Switch,
    SwitchPort, cep_uuid, connection_uuid, line_nep_uuid, link_uuid, mhz_to_nm, node_uuid,
)

PM = "PHOTONIC_MEDIA"
MC = "pm:PHOTONIC_LAYER_QUALIFIER_MC"


def _name(value: str) -> str:
    return f"<name><value-name>name</value-name><value>{escape(value)}</value></name>"


def sip_name(switch: Switch, port: SwitchPort) -> str:
    return f"{switch.name}/port-{port.port}/{port.role()}"


def initial_config_xml(switch: Switch) -> str:
    sips = "".join(
        f"<service-interface-point><uuid>{p.sip}</uuid>{_name(sip_name(switch, p))}"
        "<direction>BIDIRECTIONAL</direction><administrative-state>UNLOCKED</administrative-state>"
        "</service-interface-point>"
        for p in switch.plan
    )
    return (
        f'<context xmlns="{COMMON_NS}"><uuid>{switch.context_uuid}</uuid>{_name(f"qkdnet/{switch.node_name}")}'
        f'{sips}<connectivity-context xmlns="{CONNECTIVITY_NS}"/></context>'
    )


def _spectrum(tag: str, band: Band, dwdm: bool) -> str:
    granularity, grid = ("G_100GHZ", "DWDM") if dwdm else ("UNCONSTRAINED", "GRIDLESS")
    return (
        f"<{tag}><upper-frequency>{band[1]}</upper-frequency><lower-frequency>{band[0]}</lower-frequency>"
        f"<frequency-constraint><adjustment-granularity>{granularity}</adjustment-granularity>"
        f"<grid-type>{grid}</grid-type></frequency-constraint></{tag}>"
    )


def supportable_band(port: SwitchPort) -> tuple[Band, bool]:
    """What the port can carry: a module's DWDM channel, the O band, or the whole fibre."""
    f = port.frequency_mhz
    if port.kind == "module" and port.channel is not None and f is not None:
        return (f - 50_000, f + 50_000), True
    if port.kind == "module" and port.wavelength_nm is not None:
        return O_BAND, False
    return FIBRE_BAND, False


@dataclass(frozen=True)
class Realised:
    """What the switch does now, for the state: the planned cross-connects and whether the
    fabric confirmed them."""

    cross_connects: tuple[CrossConnect, ...]
    confirmed: bool


def _sip_state(port: SwitchPort, xcs: list[CrossConnect]) -> str:
    band, dwdm = supportable_band(port)
    occupied = []
    seen: set[Band] = set()
    for xc in xcs:
        used = xc.band if xc.band is not None else band
        if used in seen:
            continue
        seen.add(used)
        occupied.append(_spectrum("occupied-spectrum", used, _is_channel(used)))
    return (
        f"<service-interface-point><uuid>{port.sip}</uuid>"
        f"<layer-protocol-name>{PM}</layer-protocol-name>"
        f"<supported-layer-protocol-qualifier>{MC}</supported-layer-protocol-qualifier>"
        "<operational-state>ENABLED</operational-state><lifecycle-state>INSTALLED</lifecycle-state>"
        f'<media-channel-service-interface-point-spec xmlns="{PHOTONIC_NS}"><mc-pool>'
        f"{_spectrum('supportable-spectrum', band, dwdm)}{''.join(occupied)}"
        "</mc-pool></media-channel-service-interface-point-spec></service-interface-point>"
    )


def _is_channel(band: Band) -> bool:
    return band[1] - band[0] == 100_000 and (band[0] + 50_000 - 190_000_000) % 100_000 == 0


def _cep(switch: Switch, port: SwitchPort, xc: CrossConnect, state: str) -> str:
    return (
        f"<connection-end-point><uuid>{cep_uuid(xc.service, port.port)}</uuid>"
        f"{_name(f'{switch.name}/port-{port.port}/{xc.service}')}"
        f"<layer-protocol-name>{PM}</layer-protocol-name><layer-protocol-qualifier>{MC}</layer-protocol-qualifier>"
        f"<parent-node-edge-point><topology-uuid>{switch.topology_uuid}</topology-uuid>"
        f"<node-uuid>{switch.node_uuid}</node-uuid><node-edge-point-uuid>{switch.nep_uuid(port)}</node-edge-point-uuid>"
        "</parent-node-edge-point><connection-port-direction>BIDIRECTIONAL</connection-port-direction>"
        f"{state}</connection-end-point>"
    )


def _nep(uuid: str, label: str, sip: str | None = None, ceps: str = "") -> str:
    mapped = (f"<mapped-service-interface-point><service-interface-point-uuid>{sip}</service-interface-point-uuid>"
              "</mapped-service-interface-point>") if sip else ""
    cep_list = f'<cep-list xmlns="{CONNECTIVITY_NS}">{ceps}</cep-list>' if ceps else ""
    return (
        f"<owned-node-edge-point><uuid>{uuid}</uuid>{_name(label)}"
        f"<layer-protocol-name>{PM}</layer-protocol-name>"
        f"<supported-cep-layer-protocol-qualifier>{MC}</supported-cep-layer-protocol-qualifier>{mapped}"
        "<link-port-direction>BIDIRECTIONAL</link-port-direction>"
        "<administrative-state>UNLOCKED</administrative-state><operational-state>ENABLED</operational-state>"
        f"<lifecycle-state>INSTALLED</lifecycle-state>{cep_list}</owned-node-edge-point>"
    )


def _node(uuid: str, label: str, neps: str, cost: str) -> str:
    return (
        f"<node><uuid>{uuid}</uuid>{_name(label)}{neps}<layer-protocol-name>{PM}</layer-protocol-name>"
        "<administrative-state>UNLOCKED</administrative-state><operational-state>ENABLED</operational-state>"
        f"<lifecycle-state>INSTALLED</lifecycle-state>{cost}"
        "<latency-characteristic><traffic-property-name>propagation</traffic-property-name></latency-characteristic>"
        "</node>"
    )


def _link(switch: Switch, port: SwitchPort) -> str:
    far = str(port.far_node)
    ends = "".join(
        f"<node-edge-point><topology-uuid>{switch.topology_uuid}</topology-uuid><node-uuid>{n}</node-uuid>"
        f"<node-edge-point-uuid>{p}</node-edge-point-uuid></node-edge-point>"
        for n, p in ((switch.node_uuid, switch.nep_uuid(port)), (node_uuid(far), line_nep_uuid(far, str(port.fibre))))
    )
    loss = f"<cost-value>{port.loss_db:.2f}</cost-value>" if port.loss_db is not None else ""
    return (
        f"<link><uuid>{link_uuid(str(port.fibre))}</uuid>{_name(str(port.fibre))}{ends}"
        f"<layer-protocol-name>{PM}</layer-protocol-name><direction>BIDIRECTIONAL</direction>"
        "<administrative-state>UNLOCKED</administrative-state><operational-state>ENABLED</operational-state>"
        "<lifecycle-state>INSTALLED</lifecycle-state>"
        f"<cost-characteristic><cost-name>fibre-loss-db</cost-name>{loss}"
        "<cost-algorithm>attenuation of the fibre end to end, dB (topology file)</cost-algorithm></cost-characteristic>"
        "<latency-characteristic><traffic-property-name>propagation</traffic-property-name></latency-characteristic>"
        "<risk-characteristic><risk-characteristic-name>fibre-cable</risk-characteristic-name>"
        f"<risk-identifier-list>cable-{escape(str(port.fibre))}</risk-identifier-list></risk-characteristic>"
        "<validation-mechanism><validation-mechanism>provisioned</validation-mechanism>"
        "<layer-protocol-adjacency-validated>NOT_VALIDATED</layer-protocol-adjacency-validated>"
        "<validation-robustness>operator</validation-robustness></validation-mechanism>"
        f"<transitioned-layer-protocol-name>{PM}</transitioned-layer-protocol-name>"
        f"<transitioned-layer-protocol-name>{PM}/OTS</transitioned-layer-protocol-name></link>"
    )


def _topology(switch: Switch, xcs: list[CrossConnect], states: str) -> str:
    neps = []
    for port in switch.plan:
        ceps = "".join(_cep(switch, port, xc, states) for xc in xcs if port in (xc.a, xc.b))
        neps.append(_nep(switch.nep_uuid(port), f"{switch.name}/port-{port.port}", port.sip, ceps))
    cost = ("<cost-characteristic><cost-name>insertion-loss-db</cost-name>"
            f"<cost-value>{switch.insertion_loss_db:.2f}</cost-value>"
            "<cost-algorithm>switch insertion loss, port to port, dB</cost-algorithm></cost-characteristic>")
    nodes = [_node(switch.node_uuid, switch.name, "".join(neps), cost)]
    stubs: dict[str, list[str]] = {}
    for port in switch.plan:
        if port.kind == "line" and port.far_node:
            stubs.setdefault(port.far_node, []).append(
                _nep(line_nep_uuid(port.far_node, str(port.fibre)), f"{port.far_node}/fibre-{port.fibre}"))
    unknown = ("<cost-characteristic><cost-name>insertion-loss-db</cost-name>"
               "<cost-algorithm>far end of a fibre: not known at this node</cost-algorithm></cost-characteristic>")
    nodes += [_node(node_uuid(far), far, "".join(neps_), unknown) for far, neps_ in stubs.items()]
    links = [_link(switch, p) for p in switch.plan if p.kind == "line" and p.far_node]
    return (
        f'<topology-context xmlns="{TOPOLOGY_NS}"><topology><uuid>{switch.topology_uuid}</uuid>'
        f"{_name(f'qkdnet/{switch.node_name}')}{''.join(nodes)}{''.join(links)}"
        f"<layer-protocol-name>{PM}</layer-protocol-name></topology></topology-context>"
    )


def _cep_ref(switch: Switch, port: SwitchPort, xc: CrossConnect) -> str:
    return (
        f"<connection-end-point><topology-uuid>{switch.topology_uuid}</topology-uuid>"
        f"<node-uuid>{switch.node_uuid}</node-uuid><node-edge-point-uuid>{switch.nep_uuid(port)}</node-edge-point-uuid>"
        f"<connection-end-point-uuid>{cep_uuid(xc.service, port.port)}</connection-end-point-uuid></connection-end-point>"
    )


def state_xml(switch: Switch, sips: set[str], realised: Realised, end_points: dict[str, tuple[str, str]],
              services: list[str]) -> str:
    """State of the context. `sips`: the SIP uuids in running; `end_points[service]`: the
    local-ids of the end-points on the cross-connect's a and b ports; `services`: every
    configured service uuid (those without a cross-connect are reported not realised)."""
    states = ("<operational-state>ENABLED</operational-state><lifecycle-state>INSTALLED</lifecycle-state>"
              if realised.confirmed else
              "<operational-state>DISABLED</operational-state><lifecycle-state>PLANNED</lifecycle-state>")
    active = [xc for xc in realised.cross_connects if xc.active]
    sip_xml = "".join(
        _sip_state(p, [xc for xc in active if p in (xc.a, xc.b)]) for p in switch.plan if p.sip in sips
    )
    by_service = {xc.service: xc for xc in active}
    cs_xml = []
    conn_xml = []
    for svc in services:
        xc = by_service.get(svc)
        if xc is None:
            cs_xml.append(f"<connectivity-service><uuid>{svc}</uuid><operational-state>DISABLED</operational-state>"
                          "<lifecycle-state>PLANNED</lifecycle-state></connectivity-service>")
            continue
        conn = connection_uuid(svc)
        eps = "".join(
            f"<end-point><local-id>{escape(local_id)}</local-id>{_cep_ref(switch, port, xc)}{states}</end-point>"
            for local_id, port in zip(end_points[svc], (xc.a, xc.b))
        )
        cs_xml.append(f"<connectivity-service><uuid>{svc}</uuid>{eps}"
                      f"<connection><connection-uuid>{conn}</connection-uuid></connection>{states}</connectivity-service>")
        label = f"{switch.name}/xc/port-{xc.a.port}/port-{xc.b.port}"
        if xc.band is not None:
            label += f"/{mhz_to_nm((xc.band[0] + xc.band[1]) // 2):.2f}nm"
        conn_xml.append(
            f"<connection><uuid>{conn}</uuid>{_name(label)}{_cep_ref(switch, xc.a, xc)}{_cep_ref(switch, xc.b, xc)}"
            f"<direction>BIDIRECTIONAL</direction><layer-protocol-name>{PM}</layer-protocol-name>{states}</connection>"
        )
    return (
        f'<context xmlns="{COMMON_NS}" xmlns:pm="{PHOTONIC_NS}">{sip_xml}{_topology(switch, active, states)}'
        f'<connectivity-context xmlns="{CONNECTIVITY_NS}">{"".join(cs_xml)}{"".join(conn_xml)}</connectivity-context>'
        "</context>"
    )
