"""The node's key plane: QKD modules, their 014 key sources, the key store, feeders, ETSI 014.

Driven by the SDN agent through a narrow interface: `sync_links()` with the configured PHYS
links, and read back as numbers (`interface_states()`, `link_states()`). Key bytes stay here.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .devices.keysource import ModuleKeySource
from .devices.module import ModuleConfig, ModuleStatus, QKDModule
from .keystore.etsi014 import Etsi014Server, NeighbourResolver, SaeDirectory, start_etsi014_server
from .keystore.feeder import ModuleFeeder
from .keystore.store import KeyStore
from .pki import CertPaths, client_context, server_context
from .qkd015 import LinkConfig

log = logging.getLogger(__name__)


@dataclass
class ModuleRuntime:
    """One module of this node, with what serves its keys to the local KMS."""

    spec: dict[str, Any]
    module: QKDModule | None = None
    source: ModuleKeySource | None = None
    source_port: int = 0

    @property
    def qkdi_id(self) -> int:
        return int(self.spec["qkdi_id"])


@dataclass
class LinkRuntime:
    link: LinkConfig
    runtime: ModuleRuntime
    feeder: ModuleFeeder | None = None


StateListener = Callable[[str, ModuleStatus], None]


class KeyPlane:
    def __init__(self, node_name: str, node_id: str, state_dir: Path, extra: dict[str, Any]) -> None:
        self.node_name = node_name
        self.node_id = node_id
        self.state_dir = Path(state_dir)
        self.extra = extra
        pki = extra.get("pki")
        self.pki = CertPaths(Path(pki["cert"]), Path(pki["key"]), Path(pki["ca"])) if pki else None
        self.modules: dict[int, ModuleRuntime] = {
            int(m["qkdi_id"]): ModuleRuntime(m) for m in extra.get("modules") or []
        }
        self.links: dict[str, LinkRuntime] = {}
        self.store: KeyStore | None = None
        self.etsi014: Etsi014Server | None = None
        self.etsi014_port = 0
        self.resolver: NeighbourResolver | None = None
        self.link_listeners: list[Callable[[str, ModuleStatus], None]] = []
        self.perf_listeners: list[Callable[[str, ModuleStatus], None]] = []

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.pki is None:
            if self.modules or self.extra.get("etsi014"):
                raise ValueError("a node with modules or an ETSI 014 server needs a 'pki' section")
            return
        self.store = await asyncio.to_thread(KeyStore, self.state_dir / "keys")
        for rt in self.modules.values():
            await self._start_module(rt)
        saes = {s["id"]: s["node_id"] for s in self.extra.get("saes") or []}
        directory = SaeDirectory(self.node_id, saes)
        self.resolver = NeighbourResolver(directory, {})
        api = self.extra.get("etsi014")
        if api is not None:
            self.etsi014, self.etsi014_port = await start_etsi014_server(
                self.store, directory, self.resolver, server_context(self.pki),
                host=str(api.get("host", "127.0.0.1")), port=int(api.get("port", 0)),
            )

    async def _start_module(self, rt: ModuleRuntime) -> None:
        spec = rt.spec
        channel = spec.get("channel")
        if channel is None or not spec.get("pairs_with"):
            return  # an unpaired module: its interface exists, nothing runs
        cfg = ModuleConfig(
            name=str(spec["name"]), technology=spec["technology"], role=spec["role"],
            pairs_with=str(spec["pairs_with"]), profile=spec.get("profile"),
            loss_db=float(spec.get("loss_db", 0.0)),
            channel_host=str(channel.get("host", "127.0.0.1")), channel_port=int(channel["port"]),
        )
        module = QKDModule(cfg)
        qkdi = rt.qkdi_id
        module.on_state_change(lambda st, q=qkdi: self._state_changed(q, st))
        module.on_perf(lambda st, q=qkdi: self._perf(q, st))
        await module.start()
        assert self.pki is not None
        peer_node = str((spec.get("peer") or {}).get("node", "peer"))
        src = spec.get("keysource") or {}
        source = ModuleKeySource(
            module, server_context(self.pki), kms_sae_id=self.node_name, peer_kms_id=peer_node,
            host=str(src.get("host", "127.0.0.1")), port=int(src.get("port", 0)),
        )
        rt.source_port = await source.start()
        rt.module, rt.source = module, source

    async def stop(self) -> None:
        for lr in self.links.values():
            if lr.feeder is not None:
                await lr.feeder.stop()
        if self.etsi014 is not None:
            await self.etsi014.stop()
        for rt in self.modules.values():
            if rt.source is not None:
                await rt.source.stop()
            if rt.module is not None:
                await rt.module.stop()
        if self.store is not None:
            self.store.close()

    # -- driven by the agent ----------------------------------------------------------------------
    async def sync_links(self, links: list[LinkConfig]) -> None:
        """Make key associations and feeders follow the configured PHYS links of local modules."""
        wanted = {
            ln.qkdl_id: ln for ln in links
            if ln.link_type == "PHYS" and ln.enabled and ln.local_node == self.node_id
            and ln.local_qkdi in self.modules and ln.remote_node
        }
        for qkdl_id in list(self.links):
            if qkdl_id not in wanted:
                lr = self.links.pop(qkdl_id)
                if lr.feeder is not None:
                    await lr.feeder.stop()
        for qkdl_id, ln in wanted.items():
            rt = self.modules[ln.local_qkdi]  # type: ignore[index]
            current = self.links.get(qkdl_id)
            if current is not None:
                current.link = ln
                self._apply_loss(current)
                continue
            lr = LinkRuntime(ln, rt)
            self.links[qkdl_id] = lr
            self._apply_loss(lr)
            if self.store is None or rt.module is None or self.pki is None:
                continue
            assert ln.remote_node is not None
            await asyncio.to_thread(
                self.store.add_association, qkdl_id, self.node_id, ln.remote_node,
                master_parity=0 if rt.spec["role"] == "transmitter" else 1,
                key_size_bits=rt.module.key_size_bits,
            )
            peer_node = str((rt.spec.get("peer") or {}).get("node", "peer"))
            lr.feeder = ModuleFeeder(
                f"https://127.0.0.1:{rt.source_port}", client_context(self.pki), peer_node, self.store, qkdl_id,
            )
            await lr.feeder.start()
        if self.resolver is not None:
            self.resolver.routes.clear()
            self.resolver.routes.update({lr.link.remote_node: q for q, lr in self.links.items()
                                         if lr.feeder is not None and lr.link.remote_node})

    @staticmethod
    def _apply_loss(lr: LinkRuntime) -> None:
        module = lr.runtime.module
        att = lr.link.channel_att
        if module is not None and att is not None and not math.isclose(module.loss_db, att):
            module.set_loss(att)

    def _link_of(self, qkdi_id: int) -> str | None:
        for q, lr in self.links.items():
            if lr.runtime.qkdi_id == qkdi_id:
                return q
        return None

    def _state_changed(self, qkdi_id: int, st: ModuleStatus) -> None:
        link = self._link_of(qkdi_id)
        if link is not None:
            for cb in self.link_listeners:
                cb(link, st)

    def _perf(self, qkdi_id: int, st: ModuleStatus) -> None:
        link = self._link_of(qkdi_id)
        if link is not None:
            for cb in self.perf_listeners:
                cb(link, st)

    # -- numbers for the agent --------------------------------------------------------------------
    def interface_states(self) -> dict[int, str]:
        """qkdi_id -> ENABLED | DISABLED | FAILED."""
        out = {}
        for q, rt in self.modules.items():
            if rt.module is None:
                out[q] = "DISABLED"
            else:
                st = rt.module.status()
                out[q] = "ENABLED" if st.up or st.connected else "FAILED"
        return out

    def link_states(self) -> dict[str, ModuleStatus]:
        return {q: lr.runtime.module.status() for q, lr in self.links.items() if lr.runtime.module is not None}

    def store_stats(self) -> dict[str, Any]:
        if self.store is None:
            return {}
        return {a.assoc_id: self.store.stats(a.assoc_id) for a in self.store.associations()}
