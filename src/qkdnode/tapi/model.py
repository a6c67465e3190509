"""A node's optical switch as TAPI sees it: ports and their SIPs, the configured connectivity
services, and the rules a commit must meet before its services become cross-connects.

The switch comes from the node config (`switch:` section written by `qkdnet up`):
`{name, insertion_loss_db, ports, port_plan: [{port, kind: module|line, sip, module?, fibre?,
far_node?, loss_db?}]}`. Every UUID the node serves besides the SIPs' is derived (UUID v5) from
names, so that it is stable across restarts and the same at both ends of a fibre: the NEP of a
fibre's end at node X is `nep|X|fibre|F` whichever node describes it.

Frequencies are in MHz (TAPI's unit for `upper-frequency`/`lower-frequency`); a band is
half-open `[lower, upper)`, so adjacent 100 GHz channels do not overlap.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from lxml import etree

from ..devices.module import DEFAULT_PROFILES
from ..devices.profiles import profile_by_name

COMMON_NS = "urn:onf:otcc:yang:tapi-common"
TOPOLOGY_NS = "urn:onf:otcc:yang:tapi-topology"
CONNECTIVITY_NS = "urn:onf:otcc:yang:tapi-connectivity"
PHOTONIC_NS = "urn:onf:otcc:yang:tapi-photonic-media"
NSMAP = {"c": COMMON_NS, "t": TOPOLOGY_NS, "cs": CONNECTIVITY_NS, "pm": PHOTONIC_NS}

CONTEXT_PATH = "/tapi-common:context"
SERVICES_PATH = f"{CONTEXT_PATH}/tapi-connectivity:connectivity-context/connectivity-service"

TAPI_NAMESPACE = uuid.UUID("3d6f1e2a-9b4c-4f7e-8a51-7c2b0e9d4a16")
SPEED_OF_LIGHT = 299_792_458.0
GRID_ORIGIN_MHZ = 190_000_000  # ITU-T G.694.1 channel n at 190 THz + n x 100 GHz (as qkd015.itu_channel)
GRID_STEP_MHZ = 100_000

Band = tuple[int, int]  # [lower, upper) MHz


def tapi_uuid(*parts: object) -> str:
    return str(uuid.uuid5(TAPI_NAMESPACE, "|".join(str(p) for p in parts)))


def nm_to_mhz(wavelength_nm: float) -> int:
    return round(SPEED_OF_LIGHT / (wavelength_nm * 1e-9) / 1e6)


def mhz_to_nm(frequency_mhz: int) -> float:
    return SPEED_OF_LIGHT / (frequency_mhz * 1e6) * 1e9


#: What a fibre switch passes: 1260-1625 nm (O to L band).
FIBRE_BAND: Band = (nm_to_mhz(1625.0), nm_to_mhz(1260.0))
O_BAND: Band = (nm_to_mhz(1360.0), nm_to_mhz(1260.0))


def dwdm_channel(wavelength_nm: float) -> int | None:
    """The 100 GHz DWDM channel of a C/L-band wavelength (None: no DWDM channel, e.g. 1310 nm)."""
    if not 1500.0 <= wavelength_nm <= 1625.0:
        return None
    n = round((nm_to_mhz(wavelength_nm) - GRID_ORIGIN_MHZ) / GRID_STEP_MHZ)
    return n if 1 <= n <= 9999 else None


def bands_overlap(a: Band | None, b: Band | None) -> bool:
    """None is the whole fibre, which overlaps everything."""
    if a is None or b is None:
        return True
    return a[0] < b[1] and b[0] < a[1]


def band_text(band: Band | None) -> str:
    if band is None:
        return "the whole fibre (no spectrum)"
    return f"{band[0]}-{band[1]} MHz"


@dataclass(frozen=True)
class SwitchPort:
    port: int
    kind: str  # "module" | "line"
    sip: str
    module: str | None = None
    fibre: str | None = None
    far_node: str | None = None
    loss_db: float | None = None
    wavelength_nm: float | None = None  # module ports: the module's wavelength
    channel: int | None = None  # module ports: its DWDM channel, None when it has none (O band)

    @property
    def frequency_mhz(self) -> int | None:
        """The module's optical frequency, on the DWDM grid when it has a channel."""
        if self.channel is not None:
            return GRID_ORIGIN_MHZ + self.channel * GRID_STEP_MHZ
        return nm_to_mhz(self.wavelength_nm) if self.wavelength_nm else None

    def role(self) -> str:
        return self.module if self.kind == "module" and self.module else f"fibre-{self.fibre}"

    def describe(self) -> str:
        if self.kind == "module":
            return f"port {self.port} (module {self.module})"
        return f"port {self.port} (fibre {self.fibre} to {self.far_node})"


@dataclass(frozen=True)
class Switch:
    """The switch of this node, from the node config."""

    name: str
    node_name: str
    node_id: str
    insertion_loss_db: float
    ports: int
    plan: tuple[SwitchPort, ...]
    by_sip: dict[str, SwitchPort] = field(default_factory=dict, compare=False)
    by_port: dict[int, SwitchPort] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.by_sip.update({p.sip: p for p in self.plan})
        self.by_port.update({p.port: p for p in self.plan})

    @classmethod
    def from_config(cls, section: dict[str, Any], node_name: str, node_id: str,
                    modules: Iterable[dict[str, Any]]) -> "Switch":
        mods = {str(m["name"]): m for m in modules}
        plan = []
        for entry in section.get("port_plan") or []:
            wl = ch = None
            name = entry.get("module")
            if entry.get("kind") == "module" and name in mods:
                m = mods[name]
                wl = profile_by_name(str(m.get("profile") or DEFAULT_PROFILES[m["technology"]])).wavelength_nm
                ch = dwdm_channel(wl)
            plan.append(SwitchPort(
                port=int(entry["port"]), kind=str(entry["kind"]), sip=str(entry["sip"]), module=name,
                fibre=entry.get("fibre"), far_node=entry.get("far_node"),
                loss_db=float(entry["loss_db"]) if entry.get("loss_db") is not None else None,
                wavelength_nm=wl, channel=ch,
            ))
        return cls(str(section["name"]), node_name, node_id, float(section.get("insertion_loss_db", 1.0)),
                   int(section.get("ports", 16)), tuple(sorted(plan, key=lambda p: p.port)))

    # -- identifiers ---------------------------------------------------------------------------
    @property
    def context_uuid(self) -> str:
        return tapi_uuid("context", self.node_id)

    @property
    def topology_uuid(self) -> str:
        return tapi_uuid("topology", self.node_name)

    @property
    def node_uuid(self) -> str:
        return node_uuid(self.node_name)

    def nep_uuid(self, port: SwitchPort) -> str:
        return nep_uuid(self.node_name, port)

    def frequencies(self) -> dict[str, int | None]:
        """What the modules on this switch's ports emit or receive (MHz)."""
        return {p.module: p.frequency_mhz for p in self.plan if p.kind == "module" and p.module}


def node_uuid(node_name: str) -> str:
    return tapi_uuid("node", node_name)


def nep_uuid(node_name: str, port: SwitchPort) -> str:
    if port.kind == "line":
        return line_nep_uuid(node_name, str(port.fibre))
    return tapi_uuid("nep", node_name, "port", port.port)


def line_nep_uuid(node_name: str, fibre: str) -> str:
    return tapi_uuid("nep", node_name, "fibre", fibre)


def link_uuid(fibre: str) -> str:
    return tapi_uuid("link", fibre)


def connection_uuid(service: str) -> str:
    return tapi_uuid("connection", service)


def cep_uuid(service: str, port: int) -> str:
    return tapi_uuid("cep", service, port)


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EndPoint:
    local_id: str
    sip: str | None
    lower: int | None
    upper: int | None

    @property
    def band(self) -> Band | None:
        if self.lower is None or self.upper is None:
            return None
        return (self.lower, self.upper)


@dataclass(frozen=True)
class Service:
    uuid: str
    name: str | None
    locked: bool
    end_points: tuple[EndPoint, ...]


@dataclass
class TapiConfig:
    """The TAPI part of a configuration datastore."""

    present: bool = False
    sips: tuple[str, ...] = ()
    services: tuple[Service, ...] = ()

    @classmethod
    def parse(cls, xml: str) -> "TapiConfig":
        """From the printed `/tapi-common:context` subtree ('' when there is none)."""
        if not xml:
            return cls()
        root = etree.fromstring(xml.encode())
        sips = tuple(t for t in root.xpath("c:service-interface-point/c:uuid/text()", namespaces=NSMAP))
        services = []
        for cs in root.iterfind("cs:connectivity-context/cs:connectivity-service", NSMAP):
            eps = []
            for ep in cs.iterfind("cs:end-point", NSMAP):
                spec = ep.find("pm:media-channel-connectivity-service-end-point-spec/pm:mc-config/pm:spectrum", NSMAP)
                lower = upper = None
                if spec is not None:
                    lo, up = spec.findtext("pm:lower-frequency", None, NSMAP), spec.findtext("pm:upper-frequency", None, NSMAP)
                    lower, upper = (int(lo) if lo else None), (int(up) if up else None)
                eps.append(EndPoint(
                    local_id=ep.findtext("cs:local-id", "", NSMAP),
                    sip=ep.findtext("cs:service-interface-point/cs:service-interface-point-uuid", None, NSMAP),
                    lower=lower, upper=upper,
                ))
            services.append(Service(
                uuid=cs.findtext("cs:uuid", "", NSMAP),
                name=next(iter(cs.xpath("cs:name[cs:value-name='name']/cs:value/text()", namespaces=NSMAP)), None),
                locked=cs.findtext("cs:administrative-state", "UNLOCKED", NSMAP) == "LOCKED",
                end_points=tuple(eps),
            ))
        return cls(True, sips, tuple(services))


# -- the rules of a commit ----------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Why a commit is refused: the error-tag's class name, where, and what to say."""

    kind: str  # "in-use" | "invalid-value" | "missing-element" | "not-supported"
    path: str  # libyang data path (module-prefixed where the module changes)
    message: str
    bad_element: str | None = None
    app_tag: str | None = None


@dataclass(frozen=True)
class CrossConnect:
    """One realised service: two ports and the band passed (None: broadband)."""

    service: str
    a: SwitchPort
    b: SwitchPort
    band: Band | None
    active: bool  # False: the service is administratively LOCKED, nothing is connected

    def to_fabric(self) -> list[int]:
        ports = [self.a.port, self.b.port]
        return [*ports, *self.band] if self.band is not None else ports


def _quoted(value: str) -> str:
    """An XPath literal (a uuid or local-id may hold any string)."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def service_path(service: str, local_id: str | None = None, tail: str = "") -> str:
    path = f"{SERVICES_PATH}[uuid={_quoted(service)}]"
    if local_id is not None:
        path += f"/end-point[local-id={_quoted(local_id)}]"
    return path + tail


SIP_REF_TAIL = "/service-interface-point/service-interface-point-uuid"
SPECTRUM_TAIL = "/tapi-photonic-media:media-channel-connectivity-service-end-point-spec/mc-config/spectrum"


def _service_shape(switch: Switch, svc: Service) -> tuple[CrossConnect | None, list[Problem]]:
    """A service on its own: 2 end-points on 2 ports of this switch, a coherent spectrum."""
    problems: list[Problem] = []
    if len(svc.end_points) != 2:
        return None, [Problem("invalid-value", service_path(svc.uuid),
                              f"connectivity-service {svc.uuid} has {len(svc.end_points)} end-points: a cross-connect "
                              f"of switch {switch.name} joins exactly 2", "end-point")]
    ports: list[SwitchPort] = []
    for ep in svc.end_points:
        if ep.sip is None:
            problems.append(Problem("missing-element", service_path(svc.uuid, ep.local_id),
                                    f"end-point {ep.local_id} of connectivity-service {svc.uuid} names no "
                                    "service-interface-point", "service-interface-point-uuid"))
            continue
        port = switch.by_sip.get(ep.sip)
        if port is None:
            problems.append(Problem("invalid-value", service_path(svc.uuid, ep.local_id, SIP_REF_TAIL),
                                    f"end-point {ep.local_id}: service-interface-point {ep.sip} is not a port of "
                                    f"switch {switch.name}", "service-interface-point-uuid", "not-a-switch-port"))
            continue
        if (ep.lower is None) != (ep.upper is None):
            problems.append(Problem("invalid-value", service_path(svc.uuid, ep.local_id, SPECTRUM_TAIL),
                                    f"end-point {ep.local_id}: a spectrum needs both lower-frequency and "
                                    "upper-frequency", "spectrum"))
        elif ep.band is not None and ep.band[0] >= ep.band[1]:
            problems.append(Problem("invalid-value", service_path(svc.uuid, ep.local_id, SPECTRUM_TAIL),
                                    f"end-point {ep.local_id}: empty spectrum {band_text(ep.band)} "
                                    "(lower-frequency must be below upper-frequency)", "spectrum"))
        ports.append(port)
    if problems:
        return None, problems
    a, b = ports
    ep_a, ep_b = svc.end_points
    if a.port == b.port:
        return None, [Problem("invalid-value", service_path(svc.uuid, ep_b.local_id, SIP_REF_TAIL),
                              f"both end-points of connectivity-service {svc.uuid} are {a.describe()}",
                              "service-interface-point-uuid")]
    bands = {ep.band for ep in svc.end_points if ep.band is not None}
    if len(bands) > 1:
        return None, [Problem("invalid-value", service_path(svc.uuid, ep_b.local_id, SPECTRUM_TAIL),
                              f"the end-points of connectivity-service {svc.uuid} ask for different spectra "
                              f"({', '.join(band_text(x) for x in sorted(bands))}): one cross-connect passes one band",
                              "spectrum")]
    band = next(iter(bands), None)
    for port, ep in ((a, ep_a), (b, ep_b)):
        if port.kind != "module":
            continue
        if port.channel is None:
            # no DWDM channel (1310 nm O-band modules): the spectrum is ignored, the cross-connect
            # is broadband and the service has its ports to itself
            band = None
            break
        f = port.frequency_mhz
        if band is not None and f is not None and not band[0] <= f < band[1]:
            return None, [Problem("invalid-value", service_path(svc.uuid, ep.local_id, SPECTRUM_TAIL),
                                  f"spectrum {band_text(band)} of connectivity-service {svc.uuid} does not contain "
                                  f"the wavelength of module {port.module} on {port.describe()}: "
                                  f"{port.wavelength_nm:.2f} nm, {f} MHz (DWDM channel {port.channel})",
                                  "spectrum", "wavelength-mismatch")]
    return CrossConnect(svc.uuid, a, b, band, not svc.locked), []


def plan_cross_connects(
    switch: Switch | None, new: TapiConfig, old_services: Iterable[Service] = (),
) -> tuple[list[CrossConnect], list[Problem]]:
    """The cross-connects `new` asks for, or why it cannot be done.

    Services unchanged since `old_services` (what is running now) keep their ports; a new or
    changed service that wants a port already taken is the one refused.
    """
    if not new.services:
        return [], []
    if switch is None:
        return [], [Problem("not-supported", service_path(s.uuid),
                            f"connectivity-service {s.uuid}: this node has no optical switch") for s in new.services]
    problems: list[Problem] = []
    shaped: list[tuple[Service, CrossConnect]] = []
    for svc in new.services:
        xc, found = _service_shape(switch, svc)
        problems.extend(found)
        if xc is not None:
            shaped.append((svc, xc))
    unchanged = set(old_services)
    shaped.sort(key=lambda item: item[0] not in unchanged)  # stable: incumbents first
    taken: dict[int, list[CrossConnect]] = {}
    done: list[CrossConnect] = []
    for svc, xc in shaped:
        clash = None
        for port, ep in ((xc.a, svc.end_points[0]), (xc.b, svc.end_points[1])):
            for other in taken.get(port.port, []):
                clash = _clash(switch, svc, ep, port, xc, other)
                if clash is not None:
                    break
            if clash is not None:
                break
        if clash is not None:
            problems.append(clash)
            continue
        for port in (xc.a, xc.b):
            taken.setdefault(port.port, []).append(xc)
        done.append(xc)
    order = {s.uuid: i for i, s in enumerate(new.services)}
    done.sort(key=lambda xc: order[xc.service])
    return done, problems


def _clash(switch: Switch, svc: Service, ep: EndPoint, port: SwitchPort, xc: CrossConnect,
           other: CrossConnect) -> Problem | None:
    path = service_path(svc.uuid, ep.local_id, SIP_REF_TAIL)
    if port.kind == "module":
        return Problem("in-use", path, f"{port.describe()} of switch {switch.name} is already used by "
                       f"connectivity-service {other.service}: a module port carries one service",
                       "service-interface-point-uuid", "port-in-use")
    if xc.band is None or other.band is None:
        return Problem("in-use", path, f"{port.describe()} of switch {switch.name} is already used by "
                       f"connectivity-service {other.service} ({band_text(other.band)}); a line port is shared "
                       f"only by services with disjoint spectra (this one: {band_text(xc.band)})",
                       "service-interface-point-uuid", "port-in-use")
    if bands_overlap(xc.band, other.band):
        return Problem("in-use", service_path(svc.uuid, ep.local_id, SPECTRUM_TAIL),
                       f"wavelength collision on {port.describe()} of switch {switch.name}: spectrum "
                       f"{band_text(xc.band)} overlaps connectivity-service {other.service} ({band_text(other.band)})",
                       "spectrum", "wavelength-collision")
    return None


def sip_problems(switch: Switch | None, new: TapiConfig, old: TapiConfig) -> list[Problem]:
    """SIPs are the switch's ports: a new one that is no port is refused."""
    known = set(switch.by_sip) if switch is not None else set()
    had = set(old.sips)
    return [
        Problem("invalid-value", f"{CONTEXT_PATH}/service-interface-point[uuid={_quoted(sip)}]",
                f"service-interface-point {sip} is not a port of "
                + (f"switch {switch.name}" if switch is not None else "this node (it has no optical switch)")
                + ": the SIPs are the switch's ports", "uuid", "not-a-switch-port")
        for sip in new.sips if sip not in known and sip not in had
    ]
