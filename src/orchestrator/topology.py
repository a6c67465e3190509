"""Topology files (YAML) for `qkdnet up`: schema, validation with file/line/field errors.

A topology names the network's nodes, fibres, QKD modules, SAEs, switches, direct links
(module pairs joined by light through the switches, built by the orchestrator), static routes
and services. It is read by the launcher only: the orchestrator learns the
network from the nodes over NETCONF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BANDS = {"C": 0.2, "O": 0.33}  # typical fibre attenuation, dB/km (ITU-T G.652)
TECHNOLOGIES = ("dv-bb84", "dv-cow", "cv-gg02")
ROLES = ("transmitter", "receiver")

Path_ = tuple[Any, ...]


class TopologyError(Exception):
    """Invalid topology: the message names the file, the line and the field."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    domain: str = "default"
    location: str | None = None
    border: tuple[str, ...] = ()  # further domains a border node belongs to


@dataclass(frozen=True)
class FibreSpec:
    name: str
    ends: tuple[str, str]
    length_km: float
    band: str
    loss_db: float


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    technology: str
    role: str
    node: str
    pairs_with: str | None
    profile: str | None = None
    port: int | None = None  # switch port, on a node with an optical switch
    fibre: str | None = None  # attached straight to this fibre's end, on a node without a switch
    tick_s: float | None = None  # the simulated module's step (default 0.1 s): coarser steps, less CPU


@dataclass(frozen=True)
class SwitchSpec:
    """An optical (fibre) switch at a node: modules and fibre ends sit on its ports."""

    name: str
    node: str
    ports: int = 16
    insertion_loss_db: float = 1.0


@dataclass(frozen=True)
class SaeSpec:
    id: str
    node: str


@dataclass(frozen=True)
class RouteSpec:
    """A static key relay route: VIRT links installed on every node of `path` by `qkdnet up`."""

    name: str
    path: tuple[str, ...]
    bandwidth_bps: int | None = None
    saes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DirectLinkSpec:
    """A direct QKD link that `qkdnet up` asks the orchestrator to build through the switches."""

    emitter: str  # transmitter module
    receiver: str  # receiver module


@dataclass
class Topology:
    name: str
    source: Path | None
    nodes: dict[str, NodeSpec]
    fibres: dict[str, FibreSpec]
    modules: dict[str, ModuleSpec]
    saes: dict[str, SaeSpec] = field(default_factory=dict)
    switches: dict[str, SwitchSpec] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # routes, services (later work)
    routes: dict[str, RouteSpec] = field(default_factory=dict)
    qrng_node: str | None = None  # services.qrng.node: where the QRNG entropy service runs
    direct_links: list[DirectLinkSpec] = field(default_factory=list)

    def switch_of(self, node: str) -> SwitchSpec | None:
        return next((sw for sw in self.switches.values() if sw.node == node), None)

    def light_reach(self, node: str) -> list[str]:
        """Other nodes whose modules the light of `node`'s modules may reach through the optical
        plant (fibres, crossing nodes with a switch): the nodes it may get a direct link with."""
        switched = {sw.node for sw in self.switches.values()}
        out: list[str] = []
        for m in self.modules.values():
            if m.node != node or (m.node not in switched and m.fibre is None):
                continue
            start = [f for f in self.fibres.values() if node in f.ends] if node in switched else [self.fibres[m.fibre or ""]]
            frontier = [(f, f.ends[1] if f.ends[0] == node else f.ends[0]) for f in start]
            seen: set[str] = set()
            while frontier:
                f, at = frontier.pop()
                if f.name in seen:
                    continue
                seen.add(f.name)
                if at in switched:
                    hit = any(x.node == at for x in self.modules.values())
                    frontier += [(g, g.ends[1] if g.ends[0] == at else g.ends[0])
                                 for g in self.fibres.values() if at in g.ends and g.name != f.name]
                else:
                    hit = any(x.node == at and x.fibre == f.name for x in self.modules.values())
                if hit and at != node and at not in out:
                    out.append(at)
        return out

    def domains(self) -> list[str]:
        out: list[str] = []
        for n in self.nodes.values():
            for d in (n.domain, *n.border):
                if d not in out:
                    out.append(d)
        return out


class _Lines:
    """Line numbers of every value in a YAML document, by path."""

    def __init__(self, node: yaml.Node) -> None:
        self.lines: dict[Path_, int] = {}
        self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                self.lines[path + (k.value,)] = k.start_mark.line + 1
                self._walk(v, path + (k.value,))
                self.lines[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

    def line(self, path: Path_) -> int:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)


class _Reader:
    def __init__(self, source: str, lines: _Lines) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: Path_, msg: str) -> TopologyError:
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        return TopologyError(f"{self.source}:{self.lines.line(path)}: {where or 'top level'}: {msg}")

    def mapping(self, value: Any, path: Path_, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping")
        for key in value:
            if key not in allowed:
                hint = _closest(str(key), allowed)
                raise self.fail(path + (key,), f"unknown field {key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
        for key in sorted(required):
            if key not in value:
                raise self.fail(path, f"missing required field {key!r}")
        return value

    def seq(self, value: Any, path: Path_) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, "expected a list")
        return value

    def string(self, value: Any, path: Path_) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a non-empty string, got {value!r}")
        return value

    def number(self, value: Any, path: Path_, *, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self.fail(path, f"expected a number >= {minimum}, got {value!r}")
        return float(value)

    def choice(self, value: Any, path: Path_, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(path, f"{value!r} is not one of {', '.join(options)}")
        return str(value)


def _closest(word: str, options: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(options), n=1)
    return found[0] if found else None


_TOP = {"name", "description", "nodes", "fibres", "modules", "saes", "switches", "direct_links", "routes", "services",
        "use_cases"}


def load_topology(path: Path | str) -> Topology:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror}") from exc
    return parse_topology(text, path)


def parse_topology(text: str, source: Path | str = "<topology>") -> Topology:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"{source}: {exc}") from exc
    if node is None:
        raise TopologyError(f"{source}:1: top level: empty topology")
    r = _Reader(str(source), _Lines(node))
    top = r.mapping(raw, (), _TOP, {"nodes"})

    nodes: dict[str, NodeSpec] = {}
    for i, n in enumerate(r.seq(top.get("nodes"), ("nodes",))):
        p: Path_ = ("nodes", i)
        m = r.mapping(n, p, {"name", "domain", "location", "border", "description"}, {"name"})
        name = r.string(m["name"], p + ("name",))
        if name in nodes:
            raise r.fail(p + ("name",), f"duplicate node name {name!r}")
        border = tuple(r.string(d, p + ("border", j)) for j, d in enumerate(r.seq(m.get("border"), p + ("border",))))
        nodes[name] = NodeSpec(name, str(m.get("domain", "default")), m.get("location"), border)
    if not nodes:
        raise r.fail(("nodes",), "at least one node is needed")

    def node_ref(value: Any, p: Path_) -> str:
        name = r.string(value, p)
        if name not in nodes:
            hint = _closest(name, set(nodes))
            raise r.fail(p, f"no node named {name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
        return name

    fibres: dict[str, FibreSpec] = {}
    for i, f in enumerate(r.seq(top.get("fibres"), ("fibres",))):
        p = ("fibres", i)
        m = r.mapping(f, p, {"name", "ends", "length_km", "band", "loss_db", "description", "plausible"}, {"name", "ends", "length_km"})
        name = r.string(m["name"], p + ("name",))
        if name in fibres:
            raise r.fail(p + ("name",), f"duplicate fibre name {name!r}")
        ends = r.seq(m["ends"], p + ("ends",))
        if len(ends) != 2:
            raise r.fail(p + ("ends",), "a fibre has exactly two ends")
        a = node_ref(ends[0], p + ("ends", 0))
        b = node_ref(ends[1], p + ("ends", 1))
        length = r.number(m["length_km"], p + ("length_km",))
        band = r.choice(m.get("band", "C"), p + ("band",), tuple(BANDS))
        loss = r.number(m["loss_db"], p + ("loss_db",)) if "loss_db" in m else round(length * BANDS[band], 2)
        fibres[name] = FibreSpec(name, (a, b), length, band, loss)

    modules: dict[str, ModuleSpec] = {}
    raw_modules = r.seq(top.get("modules"), ("modules",))
    for i, mo in enumerate(raw_modules):
        p = ("modules", i)
        m = r.mapping(mo, p, {"name", "technology", "role", "node", "pairs_with", "profile", "port", "fibre",
                              "tick_s", "description", "plausible"},
                      {"name", "technology", "role", "node"})
        name = r.string(m["name"], p + ("name",))
        if name in modules:
            raise r.fail(p + ("name",), f"duplicate module name {name!r}")
        modules[name] = ModuleSpec(
            name=name,
            technology=r.choice(m["technology"], p + ("technology",), TECHNOLOGIES),
            role=r.choice(m["role"], p + ("role",), ROLES),
            node=node_ref(m["node"], p + ("node",)),
            pairs_with=m.get("pairs_with"),
            profile=m.get("profile"),
            port=int(r.number(m["port"], p + ("port",), minimum=1)) if "port" in m else None,
            fibre=r.string(m["fibre"], p + ("fibre",)) if "fibre" in m else None,
            tick_s=r.number(m["tick_s"], p + ("tick_s",), minimum=0.01) if "tick_s" in m else None,
        )
        if modules[name].fibre is not None:
            f = fibres.get(modules[name].fibre or "")
            if f is None:
                raise r.fail(p + ("fibre",), f"no fibre named {modules[name].fibre!r}")
            if modules[name].node not in f.ends:
                raise r.fail(p + ("fibre",), f"fibre {f.name} does not end at {modules[name].node}")
    for i, mo in enumerate(raw_modules):
        spec = modules[mo["name"]]
        if spec.pairs_with is None:
            continue
        p = ("modules", i, "pairs_with")
        peer = modules.get(spec.pairs_with)
        if peer is None:
            raise r.fail(p, f"no module named {spec.pairs_with!r}")
        if peer.technology != spec.technology:
            raise r.fail(p, f"{peer.name} is {peer.technology}, {spec.name} is {spec.technology}")
        if peer.role == spec.role:
            raise r.fail(p, f"{peer.name} and {spec.name} are both {spec.role}s")
        if peer.node == spec.node:
            raise r.fail(p, f"{peer.name} and {spec.name} are on the same node")

    saes: dict[str, SaeSpec] = {}
    for i, s in enumerate(r.seq(top.get("saes"), ("saes",))):
        p = ("saes", i)
        m = r.mapping(s, p, {"id", "node", "description"}, {"id", "node"})
        sid = r.string(m["id"], p + ("id",))
        if sid in saes:
            raise r.fail(p + ("id",), f"duplicate SAE id {sid!r}")
        saes[sid] = SaeSpec(sid, node_ref(m["node"], p + ("node",)))

    switches: dict[str, SwitchSpec] = {}
    for i, sw in enumerate(r.seq(top.get("switches"), ("switches",))):
        p = ("switches", i)
        m = r.mapping(sw, p, {"name", "node", "ports", "insertion_loss_db", "description", "plausible"}, {"name", "node"})
        name = r.string(m["name"], p + ("name",))
        node = node_ref(m["node"], p + ("node",))
        if name in switches or any(x.node == node for x in switches.values()):
            raise r.fail(p, f"duplicate switch {name!r} (one switch per node)")
        switches[name] = SwitchSpec(name, node, int(r.number(m.get("ports", 16), p + ("ports",), minimum=2)),
                                    r.number(m.get("insertion_loss_db", 1.0), p + ("insertion_loss_db",)))
    switched = {sw.node for sw in switches.values()}
    for i, mo in enumerate(raw_modules):
        spec = modules[mo["name"]]
        p = ("modules", i)
        if spec.node in switched and spec.fibre is not None:
            raise r.fail(p + ("fibre",), f"{spec.node} has a switch: the module sits on a switch port, not on a fibre")
        if spec.node not in switched and spec.port is not None:
            raise r.fail(p + ("port",), f"{spec.node} has no switch")
        if spec.node not in switched and spec.fibre is None and spec.pairs_with:
            peer = modules[spec.pairs_with]
            if peer.node in switched:
                raise r.fail(p + ("pairs_with",), f"{peer.name} is on a switched node: attach {spec.name} to a fibre")
            if not any(set(f.ends) == {spec.node, peer.node} for f in fibres.values()):
                raise r.fail(p + ("pairs_with",), f"no fibre joins {spec.node} and {peer.node}")

    direct = _direct_links(r, top, modules, fibres, switched)
    routes = _routes(r, top, node_ref, fibres, modules, saes, direct)
    qrng_node = None
    services = top.get("services")
    if services is not None:
        sv = r.mapping(services, ("services",), {"qrng"})
        if "qrng" in sv:
            q = r.mapping(sv["qrng"], ("services", "qrng"), {"node", "description"}, {"node"})
            qrng_node = node_ref(q["node"], ("services", "qrng", "node"))

    extra = {k: top[k] for k in ("routes", "services", "use_cases") if k in top}
    return Topology(
        name=str(top.get("name") or Path(str(source)).stem), source=Path(source) if isinstance(source, Path) else None,
        nodes=nodes, fibres=fibres, modules=modules, saes=saes, switches=switches, extra=extra,
        routes=routes, qrng_node=qrng_node, direct_links=direct,
    )


def _direct_links(r: _Reader, top: dict[str, Any], modules: dict[str, ModuleSpec], fibres: dict[str, FibreSpec],
                  switched: set[str]) -> list[DirectLinkSpec]:
    """`direct_links:` emitter/receiver module pairs on the optical plant, each module in one link."""
    out: list[DirectLinkSpec] = []
    used: dict[str, int] = {}
    for i, dl in enumerate(r.seq(top.get("direct_links"), ("direct_links",))):
        p: Path_ = ("direct_links", i)
        m = r.mapping(dl, p, {"emitter", "receiver", "description"}, {"emitter", "receiver"})
        ends: list[ModuleSpec] = []
        for key, role in (("emitter", "transmitter"), ("receiver", "receiver")):
            name = r.string(m[key], p + (key,))
            spec = modules.get(name)
            if spec is None:
                hint = _closest(name, set(modules))
                raise r.fail(p + (key,), f"no module named {name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
            if spec.role != role:
                raise r.fail(p + (key,), f"{name} is a {spec.role}: the {key} must be a {role}")
            if spec.node not in switched and spec.fibre is None:
                raise r.fail(p + (key,), f"{name} is not on the optical plant: put it on a switch port "
                                         f"(a node with a switch) or on a fibre end (`fibre:`)")
            if name in used:
                raise r.fail(p + (key,), f"{name} is already in direct_links[{used[name]}]")
            ends.append(spec)
        tx, rx = ends
        if tx.technology != rx.technology:
            raise r.fail(p + ("receiver",), f"{rx.name} is {rx.technology}, {tx.name} is {tx.technology}")
        if tx.node == rx.node:
            raise r.fail(p + ("receiver",), f"{tx.name} and {rx.name} are on the same node")
        used[tx.name] = used[rx.name] = i
        out.append(DirectLinkSpec(tx.name, rx.name))
    return out


def _routes(r: _Reader, top: dict[str, Any], node_ref: Any, fibres: dict[str, FibreSpec],
            modules: dict[str, ModuleSpec], saes: dict[str, SaeSpec],
            direct: list[DirectLinkSpec] = ()) -> dict[str, RouteSpec]:  # type: ignore[assignment]
    """`routes:` static key relay routes; consecutive path nodes must share a fibre, a module pair
    or a declared direct link."""
    joined = {frozenset(f.ends) for f in fibres.values()}
    joined |= {frozenset((m.node, modules[m.pairs_with].node)) for m in modules.values()
               if m.pairs_with in modules}
    joined |= {frozenset((modules[d.emitter].node, modules[d.receiver].node)) for d in direct}
    routes: dict[str, RouteSpec] = {}
    for i, ro in enumerate(r.seq(top.get("routes"), ("routes",))):
        p: Path_ = ("routes", i)
        m = r.mapping(ro, p, {"name", "path", "bandwidth_bps", "saes", "description"}, {"name", "path"})
        name = r.string(m["name"], p + ("name",))
        if name in routes:
            raise r.fail(p + ("name",), f"duplicate route name {name!r}")
        path = tuple(node_ref(n, p + ("path", j)) for j, n in enumerate(r.seq(m["path"], p + ("path",))))
        if len(path) < 2 or len(set(path)) != len(path):
            raise r.fail(p + ("path",), "a path names at least two nodes, each once")
        for j, (a, b) in enumerate(zip(path, path[1:])):
            if frozenset((a, b)) not in joined:
                raise r.fail(p + ("path", j + 1), f"no fibre or QKD module pair joins {a} and {b} (nor a direct link)")
        bw = None
        if m.get("bandwidth_bps") is not None:
            bw = int(r.number(m["bandwidth_bps"], p + ("bandwidth_bps",)))
            if bw > 2**32 - 1:
                raise r.fail(p + ("bandwidth_bps",), "virt_bandwidth is a uint32 (bit/s)")
        ids = []
        for j, sid in enumerate(r.seq(m.get("saes"), p + ("saes",))):
            sae = saes.get(sid) if isinstance(sid, str) else None
            if sae is None:
                raise r.fail(p + ("saes", j), f"no SAE with id {sid!r}")
            if sae.node not in (path[0], path[-1]):
                raise r.fail(p + ("saes", j), f"SAE {sid} is on {sae.node}, not on an end of the path")
            ids.append(sid)
        routes[name] = RouteSpec(name, path, bw, tuple(ids))
    return routes
