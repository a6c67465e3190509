"""The SDN agent: turns committed configuration into key-plane actions and key-plane state
(counts, rates, link status; never key bytes) into 015 operational data and notifications."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable
from xml.sax.saxutils import escape

from .datastore import Change
from .datatree import DataTree, print_nodes
from .netconf.namespaces import QKD_NODE_NS, QKD_TYPES_NS
from .lightpath import DARK_LOSS_DB
from .qkd015 import LinkConfig, links_touched, parse_links

if TYPE_CHECKING:
    from .devices.module import ModuleStatus
    from .keyplane import KeyPlane

log = logging.getLogger(__name__)

LINKS_PATH = "/etsi-qkd-sdn-node:qkd_node/qkd_links"
PERF_MIN_INTERVAL_S = 5.0


def _perf_xml(st: "ModuleStatus") -> str:
    skr = max(0, min(int(st.skr_bps if st.up else 0), 2**32 - 1))
    perf = []
    if st.qber is not None:
        perf.append(f"<phys_perf><perf_type>etsi-qkdn-types:QBER</perf_type><value>{100 * st.qber:.3f}</value></phys_perf>")
    if st.snr is not None and st.snr > 0:
        import math

        perf.append(f"<phys_perf><perf_type>etsi-qkdn-types:SNR</perf_type><value>{10 * math.log10(st.snr):.3f}</value></phys_perf>")
    return f"<skr>{skr}</skr><eskr>{skr}</eskr>{''.join(perf)}"


class SdnAgent:
    """Owns the node's 015 operational state; the key plane reports to it in numbers."""

    name = "sdn-agent"

    def __init__(self, keyplane: "KeyPlane | None" = None) -> None:
        self.status = "OPERATING"
        self.keyplane = keyplane
        self.links: dict[str, LinkConfig] = {}
        self.publish: Callable[[str], None] = lambda xml: None
        self._sync_lock = asyncio.Lock()
        self._last_perf: dict[str, float] = {}
        if keyplane is not None:
            keyplane.link_listeners.append(self._link_state_changed)
            keyplane.perf_listeners.append(self._link_perf)

    # -- configuration ---------------------------------------------------------------------------
    def load(self, running: DataTree) -> None:
        node = running.find(LINKS_PATH)
        xml = print_nodes(node, siblings=False) if node is not None else ""
        self.links = {ln.qkdl_id: ln for ln in parse_links(xml)}

    async def sync(self) -> None:
        if self.keyplane is None:
            return
        async with self._sync_lock:
            await self.keyplane.sync_links(list(self.links.values()))

    def verify(self, change: Change) -> None:
        return None

    def apply(self, change: Change) -> None:
        touched = links_touched(e.path for e in change.edits)
        if touched is None:
            self.load(change.new)
        elif touched:
            for qkdl_id in touched:
                node = change.new.find(f"{LINKS_PATH}/qkd_link[qkdl_id='{qkdl_id}']")
                if node is None:
                    self.links.pop(qkdl_id, None)
                    continue
                for ln in parse_links(print_nodes(node, siblings=False)):
                    self.links[ln.qkdl_id] = ln
        else:
            return
        if self.keyplane is not None:
            self.keyplane.set_routes(list(self.links.values()))  # relay routes hold before <ok/>
            asyncio.get_running_loop().create_task(self.sync())

    def abort(self, change: Change) -> None:
        return None

    # -- key-plane events ------------------------------------------------------------------------
    def _link_state_changed(self, qkdl_id: str, st: "ModuleStatus") -> None:
        if st.up:
            self._link_perf(qkdl_id, st, force=True)
            return
        reason = st.reason or "down"
        if st.loss_db >= DARK_LOSS_DB:
            reason = "no light path: fibre cut or no cross-connect"
        self.publish(
            f'<sdqkdn_link_down xmlns="{QKD_NODE_NS}"><qkd_link><qkdl_id>{qkdl_id}</qkdl_id>'
            f"<reason>{escape(reason)}</reason></qkd_link></sdqkdn_link_down>"
        )

    def _link_perf(self, qkdl_id: str, st: "ModuleStatus", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_perf.get(qkdl_id, -1e9) < PERF_MIN_INTERVAL_S:
            return
        self._last_perf[qkdl_id] = now
        self.publish(
            f'<sdqkdn_link_perf_update xmlns="{QKD_NODE_NS}" xmlns:etsi-qkdn-types="{QKD_TYPES_NS}">'
            f"<qkd_link><qkdl_id>{qkdl_id}</qkdl_id><performance>{_perf_xml(st)}</performance>"
            f"</qkd_link></sdqkdn_link_perf_update>"
        )

    # -- operational state -----------------------------------------------------------------------
    def state(self) -> str:
        """015 state: `qkdn_status`, `qkdi_status` and `qkdl_performance` of PHYS links."""
        inner = []
        if self.keyplane is not None:
            ifaces = "".join(
                f"<qkd_interface><qkdi_id>{q}</qkdi_id><qkdi_status>etsi-qkdn-types:{s}</qkdi_status></qkd_interface>"
                for q, s in sorted(self.keyplane.interface_states().items())
            )
            if ifaces:
                inner.append(f"<qkd_interfaces>{ifaces}</qkd_interfaces>")
            links = "".join(
                f"<qkd_link><qkdl_id>{q}</qkdl_id><qkdl_performance>{_perf_xml(st)}</qkdl_performance></qkd_link>"
                for q, st in sorted(self.keyplane.link_states().items()) if q in self.links
            )
            if links:
                inner.append(f"<qkd_links>{links}</qkd_links>")
        return (
            f'<qkd_node xmlns="{QKD_NODE_NS}" xmlns:etsi-qkdn-types="{QKD_TYPES_NS}">'
            f"<qkdn_status>etsi-qkdn-types:{self.status}</qkdn_status>{''.join(inner)}</qkd_node>"
        )
