"""MadQCI Table 1 against the twin: measured per-link key rates vs. the physics model.

Table 1 of V. Martin et al., "MadQCI: a heterogeneous and scalable SDN-QKD network deployed in
production facilities", npj Quantum Inf. 10, 80 (2024), lists for every link (and switched link
combination) the QKD system, its band, the average secret key rate measured in the field and the
QBER of DV systems. `qkdnet compare-table1` puts each row next to what the twin
(`topologies/madqci.yaml`) predicts: the row's emitter and receiver modules in the twin, the
lowest-loss light path between them through fibres and switches (the loss their PHYS link gets in a
running network), and the key rate of the modules' device profile at that loss
(`qkdnode.devices.physics.link_performance`). Offline: no network is started.

This is a launcher-side tool, like `qkdnet up`: it reads the topology file and the device models;
the SDN controller itself never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from qkdnode.devices.physics import link_performance
from qkdnode.devices.profiles import profile_by_name

from .topology import Topology, load_topology

SOURCE = "V. Martin et al., npj Quantum Inf. 10, 80 (2024), Table 1"


@dataclass(frozen=True)
class PaperRow:
    """One row of Table 1 (as printed), and the twin modules that stand for it."""

    link: str  #: Table 1's "Link number (or combination of links)", arrows as "->"
    vendor: str
    kind: str  #: "CV" or "DV"
    band: str  #: optical band of the quantum channel ("C-37", "O", ...)
    measured_kbps: float  #: average secret key rate throughput
    qber_percent: float | None  #: DV only
    emitter: str | None  #: twin module names; None: the twin has no such pairing
    receiver: str | None
    note: str = ""


def _hw(link: str, band: str, kbps: float, tx: str | None, rx: str | None, note: str = "") -> PaperRow:
    """An HWDU row; `tx`/`rx` are sites, the channel picks the module interface (C-37 or C-38)."""
    ch = band.split("-")[1] if band in ("C-37", "C-38") else "37"
    return PaperRow(link, "HWDU", "CV", band, kbps, None,
                    f"hw-tx-{tx}-c{ch}" if tx else None, f"hw-rx-{rx}-c{ch}" if rx else None, note)


#: Table 1, row by row (the QRNG row is no QKD link and is left out).
TABLE1: tuple[PaperRow, ...] = (
    _hw("1", "C-37", 3.3, "quijote", "montegancedo"),
    _hw("2", "C-37", 5.5, "cantoblanco", "quijote"),
    _hw("2", "C-38", 6.2, "cantoblanco", "quijote"),
    PaperRow("2", "ID Quantique", "DV", "C-34", 1.9, 2.4, "idq-l2-tx", "idq-l2-rx"),
    PaperRow("3", "ID Quantique", "DV", "O", 2.04, 2.2, "idq-l3-tx", "idq-l3-rx"),
    _hw("3 (Quijote->Quevedo)", "C-37", 4.0, "quijote", "quevedo"),
    _hw("3 (Quijote->Quevedo)", "C-38", 2.25, "quijote", "quevedo"),
    _hw("3 (Quevedo->Quijote)", "C-37", 11.0, "quevedo", "quijote"),
    _hw("3 (Quevedo->Quijote)", "C-38", 7.8, "quevedo", "quijote"),
    PaperRow("4", "ID Quantique", "DV", "O", 1.4, 4.2, "idq-l4-tx", "idq-l4-rx", "twin: C-32, shares L4 with the HWDU link"),
    _hw("4 (Quevedo->Norte)", "C-37", 8.7, "quevedo", "norte"),
    _hw("4 (Quevedo->Norte)", "C-38", 12.0, "quevedo", "norte"),
    _hw("4 (Norte->Quevedo)", "C-37", 9.0, "norte", "quevedo"),
    _hw("4 (Norte->Quevedo)", "C-38", 6.2, "norte", "quevedo"),
    _hw("5", "C-34", 0.09, "cantoblanco", "montegancedo", "twin: C-37 interfaces"),
    PaperRow("5", "Toshiba", "DV", "O", 1039.9, 3.4, "tosh-l5-tx", "tosh-l5-rx"),
    _hw("6", "C-37", 8.1, "concepcion", "norte"),
    _hw("6", "C-38", 8.4, "concepcion", "norte"),
    PaperRow("6", "ID Quantique", "DV", "C-32", 1.5, 3.3, "idq-l6-tx", "idq-l6-rx"),
    _hw("7", "C-37", 7.4, "norte", "distrito"),
    PaperRow("7", "Toshiba", "DV", "O", 242.3, 4.0, "tosh-l7-tx", "tosh-l7-rx"),
    PaperRow("8", "Toshiba", "DV", "O", 37.2, 3.0, "tosh-l8-tx", "tosh-l8-rx"),
    PaperRow("9", "Toshiba", "DV", "O", 2857.1, 2.5, "tosh-l9-tx", "tosh-l9-rx"),
    _hw("6 + 7", "C-37", 0.11, "concepcion", "distrito"),
    _hw("4 (Quevedo->Norte) + 7", "C-37", 2.4, "quevedo", "distrito"),
    _hw("3 (Quijote->Quevedo) + 4 (Quevedo->Norte)", "C-37", 7.1, "quijote", "norte"),
    _hw("3 (Quijote->Quevedo) + 4 (Quevedo->Norte)", "C-38", 5.2, "quijote", "norte"),
    _hw("2 + 3 (Quijote->Quevedo) + 4 (Quevedo->Norte)", "C-37", 0.07, "cantoblanco", "norte"),
    _hw("2 + 3 (Quijote->Quevedo) + 4 (Quevedo->Norte)", "C-38", 0.01, "cantoblanco", "norte"),
    _hw("4 (Norte->Quevedo) + 6", "C-37", 4.3, "concepcion", "quevedo"),
    _hw("4 (Norte->Quevedo) + 6", "C-38", 4.3, "concepcion", "quevedo"),
    _hw("2 + 3 (Quevedo->Quijote) + 4 (Norte->Quevedo)", "C-37", 1.8, "norte", None, "no HWDU receiver at Cantoblanco"),
    _hw("2 + 3 (Quevedo->Quijote) + 4 (Norte->Quevedo)", "C-38", 1.7, "norte", None, "no HWDU receiver at Cantoblanco"),
    _hw("3 (Quijote->Quevedo) + 4 (Quevedo->Norte) + 6", "C-37", 0.04, "quijote", None, "no HWDU receiver at Concepcion"),
    _hw("3 (Quijote->Quevedo) + 4 (Quevedo->Norte) + 6", "C-38", 0.04, "quijote", None, "no HWDU receiver at Concepcion"),
    _hw("3 (Quevedo->Quijote) + 4 (Norte->Quevedo)", "C-37", 6.0, "norte", "quijote"),
    _hw("3 (Quevedo->Quijote) + 4 (Norte->Quevedo)", "C-38", 6.6, "norte", "quijote"),
    _hw("1 + 3 (Quevedo->Quijote)", "C-37", 0.07, "quevedo", "montegancedo"),
    PaperRow("remote", "AIT", "CV", "C", 14.0, None, "ait-tx", "ait-rx", "remote 4.3 km link; twin: over L1"),
)


class Table1Error(Exception):
    """The topology lacks a module that a Table 1 row names, or gives it no light path."""


@dataclass(frozen=True)
class Comparison:
    """A Table 1 row next to the twin's prediction (simulated fields None when not in the twin)."""

    row: PaperRow
    profile: str | None = None
    path: tuple[str, ...] = ()  #: fibres of the twin's light path, emitter first
    length_km: float | None = None
    loss_db: float | None = None  #: fibres + switch insertion losses
    simulated_kbps: float | None = None
    simulated_qber_percent: float | None = None

    @property
    def ratio(self) -> float | None:
        """simulated / measured."""
        if self.simulated_kbps is None or self.row.measured_kbps <= 0:
            return None
        return self.simulated_kbps / self.row.measured_kbps


def _plant(topo: Topology) -> nx.Graph:
    """Light can go: module -> its switch (half the insertion loss) -> a fibre end (the other half)
    -> along the fibre -> the far end; at a switchless node it stops at the module on that end."""
    g = nx.Graph()
    for f in topo.fibres.values():
        a, b = f.ends
        g.add_edge(("end", f.name, a), ("end", f.name, b), loss=f.loss_db, fibre=f.name)
        for node in (a, b):
            sw = topo.switch_of(node)
            if sw is not None:
                g.add_edge(("end", f.name, node), ("switch", node), loss=sw.insertion_loss_db / 2)
    for m in topo.modules.values():
        sw = topo.switch_of(m.node)
        if sw is not None:
            g.add_edge(("module", m.name), ("switch", m.node), loss=sw.insertion_loss_db / 2)
        elif m.fibre is not None:
            g.add_edge(("module", m.name), ("end", m.fibre, m.node), loss=0.0)
    return g


def light_path(topo: Topology, g: nx.Graph, emitter: str, receiver: str) -> tuple[float, tuple[str, ...], float]:
    """(loss dB, fibres, km) of the lowest-loss light path from `emitter` to `receiver`."""
    for name in (emitter, receiver):
        if name not in topo.modules:
            raise Table1Error(f"{topo.name}: no module named {name!r} (Table 1 row)")
    try:
        hops = nx.dijkstra_path(g, ("module", emitter), ("module", receiver), weight="loss")
    except (nx.NetworkXNoPath, nx.NodeNotFound) as exc:
        raise Table1Error(f"{topo.name}: no light path from {emitter} to {receiver}") from exc
    loss = sum(g.edges[u, v]["loss"] for u, v in zip(hops, hops[1:]))
    fibres = tuple(g.edges[u, v]["fibre"] for u, v in zip(hops, hops[1:]) if "fibre" in g.edges[u, v])
    km = sum(topo.fibres[f].length_km for f in fibres)
    return round(loss, 3), fibres, round(km, 2)


def compare(topo: Topology, rows: tuple[PaperRow, ...] = TABLE1) -> list[Comparison]:
    """Every Table 1 row with the twin's path, loss and simulated key rate."""
    g = _plant(topo)
    out: list[Comparison] = []
    for row in rows:
        if row.emitter is None or row.receiver is None:
            out.append(Comparison(row))
            continue
        loss, fibres, km = light_path(topo, g, row.emitter, row.receiver)
        profile = topo.modules[row.emitter].profile or ""
        perf = link_performance(profile_by_name(profile), loss)
        qber = perf.qber * 100 if perf.qber is not None else None
        out.append(Comparison(row, profile, fibres, km, loss, perf.skr_bps / 1000, qber))
    return out


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


COLUMNS = ("link (Table 1)", "vendor", "band", "twin path", "km", "loss dB", "measured kb/s", "QBER %",
           "simulated kb/s", "sim. QBER %", "sim/meas")


def render(comparisons: list[Comparison]) -> str:
    """A fixed-width text table (README-ready), then the geometric mean of sim/meas per vendor."""
    lines = [[c.row.link, c.row.vendor, c.row.band, "+".join(c.path) or "-", _num(c.length_km, 1),
              _num(c.loss_db, 1), _num(c.row.measured_kbps), _num(c.row.qber_percent, 1),
              _num(c.simulated_kbps), _num(c.simulated_qber_percent, 1), _num(c.ratio)]
             + ([f"({c.row.note})"] if c.row.note else []) for c in comparisons]
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *[ln[:len(COLUMNS)] for ln in lines])]
    fmt = "  ".join(f"{{:{'<' if i < 4 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*COLUMNS), fmt.format(*("-" * w for w in widths))]
    out += [(fmt.format(*ln[:len(COLUMNS)]) + ("  " + ln[-1] if len(ln) > len(COLUMNS) else "")).rstrip()
            for ln in lines]
    out.append("")
    for vendor in dict.fromkeys(c.row.vendor for c in comparisons):
        ratios = [c.ratio for c in comparisons if c.row.vendor == vendor and c.ratio]
        if ratios:
            gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            out.append(f"{vendor}: geometric mean of sim/meas = {gm:.2f} over the {len(ratios)} rows "
                       "where the twin makes key")
    out.append(f"measured: {SOURCE}; simulated: asymptotic model x duty factor of the twin's profiles "
               "at the twin's path loss")
    return "\n".join(out)


def compare_file(path: Path | str) -> str:
    return render(compare(load_topology(path)))
