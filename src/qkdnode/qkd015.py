"""ETSI GS QKD 015 data of a node: XML rendering of interfaces, PHYS links and their state.

Shared vocabulary between the node config (modules), the running datastore and the SDN agent.
Only numbers and identifiers appear here, never key material.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable
from xml.sax.saxutils import escape

from lxml import etree

from .devices.module import DEFAULT_PROFILES
from .devices.profiles import profile_by_name
from .netconf.namespaces import QKD_NODE_NS, QKD_TYPES_NS

TYPES = "etsi-qkdn-types"
_SPEED_OF_LIGHT = 299_792_458.0

TECHNOLOGY_IDENTITY = {"dv-bb84": "DV-QKD", "dv-cow": "DV-QKD-COW", "cv-gg02": "CV-QKD"}
ROLE_IDENTITY = {"transmitter": "TRANSMITTER", "receiver": "RECEIVER"}

_LINK_IN_PATH = re.compile(r"qkd_link\[qkdl_id='([0-9a-fA-F-]{36})'\]")


def itu_channel(wavelength_nm: float) -> int | None:
    """100 GHz DWDM channel number (f = 190 THz + n x 100 GHz) of a C/L-band wavelength."""
    if not 1500.0 <= wavelength_nm <= 1625.0:
        return None
    n = round((_SPEED_OF_LIGHT / (wavelength_nm * 1e-9) / 1e12 - 190.0) / 0.1)
    return n if 1 <= n <= 9999 else None


def module_profile(mod: dict[str, Any]) -> Any:
    return profile_by_name(str(mod.get("profile") or DEFAULT_PROFILES[mod["technology"]]))


def interface_xml(mod: dict[str, Any]) -> str:
    """A `qkd_interface` (config) for one module of the node config."""
    prof = module_profile(mod)
    ch = itu_channel(prof.wavelength_nm)
    wl = f"<wavelength_range>{ch}</wavelength_range>" if ch else ""
    return (
        f"<qkd_interface><qkdi_id>{int(mod['qkdi_id'])}</qkdi_id>"
        f"<qkdi_model>{escape(prof.vendor)} {escape(prof.name)} (simulated)</qkdi_model>"
        f"<qkdi_type>{TYPES}:{TECHNOLOGY_IDENTITY[mod['technology']]}</qkdi_type>"
        f"<qkdi_att_point><device>{escape(str(mod['name']))}</device><port>{int(mod['qkdi_id'])}</port></qkdi_att_point>"
        f"<qkdi_capabilities><role_support>{TYPES}:{ROLE_IDENTITY[mod['role']]}</role_support>{wl}"
        f"<max_absorption>{prof.loss_budget_db:.3f}</max_absorption></qkdi_capabilities></qkd_interface>"
    )


def phys_link_xml(node_id: str, mod: dict[str, Any]) -> str:
    """The PHYS `qkd_link` of a statically paired module (same qkdl_id at both ends)."""
    prof = module_profile(mod)
    ch = itu_channel(prof.wavelength_nm)
    wl = f"<phys_wavelength>{ch}</phys_wavelength>" if ch else ""
    peer = mod["peer"]
    return (
        f"<qkd_link><qkdl_id>{mod['qkdl_id']}</qkdl_id><qkdl_enable>true</qkdl_enable>"
        f"<qkdl_local><qkdn_id>{node_id}</qkdn_id><qkdi_id>{int(mod['qkdi_id'])}</qkdi_id></qkdl_local>"
        f"<qkdl_remote><qkdn_id>{peer['node_id']}</qkdn_id><qkdi_id>{int(peer['qkdi_id'])}</qkdi_id></qkdl_remote>"
        f"<qkdl_type>{TYPES}:PHYS</qkdl_type>"
        f"<phys_channel_att>{float(mod.get('loss_db', 0.0)):.3f}</phys_channel_att>{wl}"
        f"<phys_qkd_role>{TYPES}:{ROLE_IDENTITY[mod['role']]}</phys_qkd_role></qkd_link>"
    )


def node_config_xml(node_id: str, version: str, location: str, modules: Iterable[dict[str, Any]]) -> str:
    mods = list(modules)
    ifaces = "".join(interface_xml(m) for m in mods)
    links = "".join(phys_link_xml(node_id, m) for m in mods if m.get("qkdl_id"))
    return (
        f'<qkd_node xmlns="{QKD_NODE_NS}" xmlns:{TYPES}="{QKD_TYPES_NS}"><qkdn_id>{node_id}</qkdn_id>'
        f"<qkdn_version>{escape(version)}</qkdn_version><qkdn_location_id>{escape(location)}</qkdn_location_id>"
        "<qkdn_capabilities><link_stats_support>true</link_stats_support>"
        "<application_stats_support>false</application_stats_support>"
        "<key_relay_mode_enable>true</key_relay_mode_enable></qkdn_capabilities>"
        + (f"<qkd_interfaces>{ifaces}</qkd_interfaces>" if ifaces else "")
        + (f"<qkd_links>{links}</qkd_links>" if links else "")
        + "</qkd_node>"
    )


@dataclass(frozen=True)
class LinkConfig:
    """What the key plane needs of a configured `qkd_link` (PHYS or VIRT)."""

    qkdl_id: str
    link_type: str  # "PHYS" | "VIRT"
    enabled: bool
    local_node: str | None
    local_qkdi: int | None
    remote_node: str | None
    remote_qkdi: int | None
    channel_att: float | None
    prev_hop: str | None
    next_hops: tuple[str, ...]
    bandwidth: int | None
    applications: tuple[str, ...]


def _q(name: str) -> str:
    return f"{{{QKD_NODE_NS}}}{name}"


def _text(el: etree._Element, path: str) -> str | None:
    found = el.find("/".join(_q(p) for p in path.split("/")))
    return None if found is None or found.text is None else found.text.strip()


def parse_links(xml: str) -> list[LinkConfig]:
    """Every `qkd_link` of printed 015 data."""
    if not xml:
        return []
    root = etree.fromstring(f"<r>{xml}</r>".encode())
    out = []
    for ln in root.iter(_q("qkd_link")):
        qtype = (_text(ln, "qkdl_type") or "").split(":")[-1]
        lq = _text(ln, "qkdl_local/qkdi_id")
        rq = _text(ln, "qkdl_remote/qkdi_id")
        att = _text(ln, "phys_channel_att")
        bw = _text(ln, "virt_bandwidth")
        out.append(LinkConfig(
            qkdl_id=_text(ln, "qkdl_id") or "",
            link_type=qtype,
            enabled=(_text(ln, "qkdl_enable") or "true") == "true",
            local_node=_text(ln, "qkdl_local/qkdn_id"),
            local_qkdi=int(lq) if lq else None,
            remote_node=_text(ln, "qkdl_remote/qkdn_id"),
            remote_qkdi=int(rq) if rq else None,
            channel_att=float(att) if att else None,
            prev_hop=_text(ln, "virt_prev_hop"),
            next_hops=tuple((e.text or "").strip() for e in ln.findall(_q("virt_next_hop"))),
            bandwidth=int(bw) if bw else None,
            applications=tuple((e.text or "").strip() for e in ln.findall(_q("qkdl_applications"))),
        ))
    return out


def links_touched(paths: Iterable[str]) -> set[str] | None:
    """qkdl_ids named by edit paths; None when an edit touched more than single links."""
    ids: set[str] = set()
    for p in paths:
        m = _LINK_IN_PATH.search(p)
        if m is None:
            if p == "/" or "qkd_links" in p or p.rstrip("/").endswith("qkd_node"):
                return None
            continue
        ids.add(m.group(1))
    return ids
