"""The optical plant of a topology, for the fabric stub: switch ports, fibres, module places.

Port plan of a switch: the modules of its node first (their `port`, or the next free one), then
one line port per fibre ending at the node, in topology order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .topology import Topology

SIP_NAMESPACE = uuid.UUID("0b7d3c9e-8f61-4a57-9f0e-4c2d6a1e5b33")


def sip_uuid(switch: str, port: int) -> str:
    return str(uuid.uuid5(SIP_NAMESPACE, f"{switch}:{port}"))


@dataclass
class SwitchPort:
    port: int
    kind: str  # "module" | "line"
    module: str | None = None
    fibre: str | None = None
    far_node: str | None = None
    loss_db: float | None = None

    def to_json(self, switch: str) -> dict[str, Any]:
        d: dict[str, Any] = {"port": self.port, "kind": self.kind, "sip": sip_uuid(switch, self.port)}
        for k in ("module", "fibre", "far_node", "loss_db"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


@dataclass
class PlantPlan:
    spec: dict[str, Any]
    ports: dict[str, list[SwitchPort]] = field(default_factory=dict)  # switch -> ports


def plan_plant(topo: Topology, module_info: dict[str, dict[str, Any]]) -> PlantPlan:
    """`module_info[name]` holds node_id, qkdi_id and (receivers) the channel address."""
    ports: dict[str, list[SwitchPort]] = {}
    used: dict[str, set[int]] = {}
    for sw in topo.switches.values():
        ports[sw.name] = []
        used[sw.name] = set()
    module_place: dict[str, dict[str, Any]] = {}
    for m in topo.modules.values():
        sw = topo.switch_of(m.node)
        place: dict[str, Any] = {
            "node": m.node, "role": m.role, "technology": m.technology,
            "node_id": module_info[m.name]["node_id"], "qkdi_id": module_info[m.name]["qkdi_id"],
            "channel": module_info[m.name].get("channel"),
        }
        if sw is not None:
            port = m.port
            if port is None or port in used[sw.name]:
                port = next(p for p in range(1, sw.ports + 1) if p not in used[sw.name])
            used[sw.name].add(port)
            ports[sw.name].append(SwitchPort(port, "module", module=m.name))
            place.update(switch=sw.name, port=port)
        module_place[m.name] = place
    fibres: dict[str, Any] = {}
    for f in topo.fibres.values():
        ends = []
        for node, far in ((f.ends[0], f.ends[1]), (f.ends[1], f.ends[0])):
            sw = topo.switch_of(node)
            if sw is not None:
                free = [p for p in range(1, sw.ports + 1) if p not in used[sw.name]]
                if not free:
                    raise ValueError(f"switch {sw.name} has no free port for fibre {f.name}")
                used[sw.name].add(free[0])
                ports[sw.name].append(SwitchPort(free[0], "line", fibre=f.name, far_node=far, loss_db=f.loss_db))
                ends.append({"switch": sw.name, "port": free[0]})
                continue
            attached = [m.name for m in topo.modules.values() if m.fibre == f.name and m.node == node]
            ends.append({"module": attached[0]} if attached else None)
        if ends[0] is not None and ends[1] is not None:
            fibres[f.name] = {"a": ends[0], "b": ends[1], "loss_db": f.loss_db, "group": f.name}
    # statically paired modules on switchless nodes: one channel per pair on their direct fibre
    done: set[str] = set()
    for m in topo.modules.values():
        if m.name in done or not m.pairs_with or m.fibre is not None or topo.switch_of(m.node) is not None:
            continue
        peer = topo.modules[m.pairs_with]
        done.update({m.name, peer.name})
        fibre = next(f for f in topo.fibres.values() if set(f.ends) == {m.node, peer.node})
        tx, rx = (m, peer) if m.role == "transmitter" else (peer, m)
        fibres[f"{fibre.name}#{tx.name}"] = {
            "a": {"module": tx.name}, "b": {"module": rx.name}, "loss_db": fibre.loss_db, "group": fibre.name,
        }
    spec = {
        "switches": {sw.name: {"node": sw.node, "ports": sw.ports, "insertion_loss_db": sw.insertion_loss_db}
                     for sw in topo.switches.values()},
        "modules": module_place,
        "fibres": fibres,
    }
    for sw in ports:
        ports[sw].sort(key=lambda p: p.port)
    return PlantPlan(spec, ports)
