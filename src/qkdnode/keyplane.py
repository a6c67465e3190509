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
from typing import TYPE_CHECKING, Any, Callable

from .devices.keysource import ModuleKeySource
from .devices.module import ModuleConfig, ModuleStatus, QKDModule
from .keystore.etsi004 import Etsi004Kms, peers_from_config, start_etsi004_server
from .keystore.etsi014 import Etsi014Server, NeighbourResolver, SaeDirectory
from .keystore.limits import ApiLimits
from .keystore.feeder import ModuleFeeder
from .keystore.store import KeyStore
from .forwarder import Forwarder, Neighbour, attach_to_014
from .qrng import QrngClient
from .lightpath import DARK_LOSS_DB, FabricClient, Light
from .eventloop import Shutdown
from .pki import CertPaths, client_context, server_context
from .qkd015 import LinkConfig

if TYPE_CHECKING:
    from .metrics import NodeMetrics

log = logging.getLogger(__name__)


@dataclass
class ModuleRuntime:
    """One module of this node, with what serves its keys to the local KMS."""

    spec: dict[str, Any]
    module: QKDModule | None = None
    source: ModuleKeySource | None = None
    source_port: int = 0
    peer: str | None = None  # the module the light reaches now
    peer_node_id: str | None = None
    peer_qkdi: int | None = None

    @property
    def qkdi_id(self) -> int:
        return int(self.spec["qkdi_id"])


@dataclass
class LinkRuntime:
    link: LinkConfig
    runtime: ModuleRuntime
    feeder: ModuleFeeder | None = None
    feeder_source: ModuleKeySource | None = None  # the key source the feeder pulls from


StateListener = Callable[[str, ModuleStatus], None]


class KeyPlane:
    def __init__(self, node_name: str, node_id: str, state_dir: Path, extra: dict[str, Any],
                 metrics: NodeMetrics | None = None) -> None:
        self.node_name = node_name
        self.metrics = metrics  # counts 014/004 requests at the event (qkdnode.metrics)
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
        self.etsi004: Etsi004Kms | None = None
        self.etsi004_port = 0
        self.resolver: NeighbourResolver | None = None
        self.forwarder: Forwarder | None = None  # key relay (gRPC) along VIRT links
        self.link_listeners: list[Callable[[str, ModuleStatus], None]] = []
        self.perf_listeners: list[Callable[[str, ModuleStatus], None]] = []
        self.fabric: FabricClient | None = None
        self._configured_links: list[LinkConfig] = []
        self._sync_lock = asyncio.Lock()

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.pki is None:
            if self.modules or self.extra.get("etsi014"):
                raise ValueError("a node with modules or an ETSI 014 server needs a 'pki' section")
            return
        self.store = await asyncio.to_thread(KeyStore, self.state_dir / "keys")
        for rt in self.modules.values():
            peer = rt.spec.get("peer") or {}
            if rt.spec.get("pairs_with") and rt.spec.get("channel"):
                await self._start_module(rt, str(rt.spec["pairs_with"]), float(rt.spec.get("loss_db", 0.0)),
                                         rt.spec["channel"], peer.get("node_id"), peer.get("qkdi_id"))
        fabric = self.extra.get("fabric")
        if fabric and (self.modules or self.extra.get("switch")):  # a switch reports its cross-connects
            self.fabric = FabricClient(str(fabric["url"]), {str(rt.spec["name"]) for rt in self.modules.values()},
                                       self._light_changed)
            await self.fabric.start()
        saes = {s["id"]: s["node_id"] for s in self.extra.get("saes") or []}
        directory = SaeDirectory(self.node_id, saes)
        self.resolver = NeighbourResolver(directory, {})
        self.forwarder = self._make_forwarder()
        api = self.extra.get("etsi014")
        if api is not None:
            self.etsi014 = Etsi014Server(self.store, directory, self.resolver, server_context(self.pki),
                                         host=str(api.get("host", "127.0.0.1")), port=int(api.get("port", 0)),
                                         limits=ApiLimits.from_config(api))
            attach_to_014(self.etsi014, self.forwarder, self.resolver)  # relayed keys within enc_keys
            self.etsi014.fed = self._fed
            if self.metrics is not None:
                self.etsi014.app.middlewares.append(self.metrics.etsi014_middleware)
            self.etsi014_port = await self.etsi014.start()
        fwd = self.extra.get("forwarder")
        if fwd is not None:
            await self.forwarder.start(str(fwd.get("host", "127.0.0.1")), int(fwd.get("port", 0)))
        api004 = self.extra.get("etsi004")
        if api004 is not None:  # ETSI GS QKD 004 (gRPC, mTLS); peer KMSes from the `peers` map
            self.etsi004, self.etsi004_port = await start_etsi004_server(
                self.store, directory, self.resolver, self.node_name, peers_from_config(self.extra.get("peers")),
                self.pki, host=str(api004.get("host", "127.0.0.1")), port=int(api004.get("port", 0)),
                rate_of=self._key_rate,
                interceptors=[self.metrics.etsi004_interceptor()] if self.metrics is not None else (),
            )

    def _make_forwarder(self) -> Forwarder:
        assert self.store is not None and self.pki is not None
        # the forwarder's neighbours (node config `forwarder.neighbours`): name = certificate CN
        neighbours = [Neighbour(str(nb["name"]), str(nb["node_id"]), nb.get("host"), nb.get("port"))
                      for nb in (self.extra.get("forwarder") or {}).get("neighbours") or []]
        qrng = self.extra.get("qrng")
        entropy = None
        if qrng:
            url = str(qrng["url"])
            entropy = QrngClient(url, client_context(self.pki) if url.startswith("https:") else None)
        return Forwarder(self.node_name, self.node_id, self.store, self.pki, neighbours=neighbours,
                         links=self._phys_links, entropy=entropy)

    def _phys_links(self) -> dict[str, str]:
        """PHYS link key associations in service (fed by a module): qkdl_id -> remote qkdn_id."""
        return {q: lr.link.remote_node for q, lr in self.links.items() if lr.feeder is not None and lr.link.remote_node}

    def set_routes(self, links: list[LinkConfig]) -> None:
        """The key relay route table (VIRT links); synchronous, so a commit's routes hold at once."""
        if self.forwarder is not None:
            self.forwarder.set_routes(links)

    async def _start_module(self, rt: ModuleRuntime, peer: str, loss_db: float, channel: dict[str, Any],
                            peer_node_id: str | None, peer_qkdi: int | None) -> None:
        """Run the module paired with `peer` (the receiver listens on `channel`)."""
        spec = rt.spec
        if spec["role"] == "receiver":
            channel = spec.get("channel") or channel
        cfg = ModuleConfig(
            name=str(spec["name"]), technology=spec["technology"], role=spec["role"],
            pairs_with=peer, profile=spec.get("profile"), loss_db=loss_db,
            channel_host=str(channel.get("host", "127.0.0.1")), channel_port=int(channel["port"]),
            **({"tick_s": float(spec["tick_s"])} if spec.get("tick_s") else {}),
        )
        rt.peer, rt.peer_node_id, rt.peer_qkdi = peer, peer_node_id, peer_qkdi
        module = QKDModule(cfg)
        qkdi = rt.qkdi_id
        module.on_state_change(lambda st, q=qkdi: self._state_changed(q, st))
        module.on_perf(lambda st, q=qkdi: self._perf(q, st))
        await module.start()
        assert self.pki is not None
        src = spec.get("keysource") or {}
        # the KMS names the far end of a module's key stream by the peer module's name
        source = ModuleKeySource(
            module, server_context(self.pki), kms_sae_id=self.node_name, peer_kms_id=peer,
            host=str(src.get("host", "127.0.0.1")), port=int(src.get("port", 0)),
        )
        rt.source_port = await source.start()
        rt.module, rt.source = module, source

    async def _stop_module(self, rt: ModuleRuntime) -> None:
        if rt.source is not None:
            await rt.source.stop()
        if rt.module is not None:
            await rt.module.stop()
        rt.module = rt.source = None
        rt.peer = rt.peer_node_id = rt.peer_qkdi = None

    async def _light_changed(self, lights: dict[str, Light]) -> None:
        """The plant changed: re-pair modules whose light reaches another peer, set losses."""
        repaired = False
        for rt in self.modules.values():
            light = lights.get(str(rt.spec["name"]))
            if light is None:
                continue
            if light.peer is None:
                if rt.module is not None:
                    rt.module.set_loss(DARK_LOSS_DB)
                continue
            if light.peer == rt.peer and rt.module is not None:
                if not math.isclose(rt.module.loss_db, light.loss_db):
                    rt.module.set_loss(light.loss_db)
                continue
            if light.channel is None:
                continue
            await self._stop_module(rt)
            await self._start_module(rt, light.peer, light.loss_db, light.channel, light.peer_node_id, light.peer_qkdi)
            repaired = True
        if repaired:
            await self.sync_links(self._configured_links)

    async def stop(self, budget_s: float = 30.0) -> None:
        """Ordered and bounded (eventloop.Shutdown): the plant long poll and the feeders (background
        tasks) first, then the servers (gRPC with a grace), the modules, and the store last."""
        sd = Shutdown(f"key plane {self.node_name}", budget_s)
        if self.fabric is not None:
            await sd.step("plant client", self.fabric.stop(), 1.0)
        feeders = [lr.feeder.stop() for lr in self.links.values() if lr.feeder is not None]
        if feeders:
            await sd.step("feeders", asyncio.gather(*feeders), 1.0)
        if self.forwarder is not None:
            await sd.step("forwarder", self.forwarder.stop(), 1.5)
        if self.etsi014 is not None:
            await sd.step("ETSI 014 server", self.etsi014.stop(), 1.0)
        if self.etsi004 is not None:
            await sd.step("ETSI 004 server", self.etsi004.stop(), 1.0)
        modules = [self._stop_module(rt) for rt in self.modules.values()]
        if modules:
            await sd.step("modules", asyncio.gather(*modules), 1.0)
        if self.store is not None:  # checkpoint and close off the loop; committed keys are durable anyway
            await sd.step("key store", asyncio.to_thread(self.store.close))

    # -- driven by the agent ----------------------------------------------------------------------
    def _lit(self, ln: LinkConfig) -> bool:
        """A PHYS link is served when its local module is paired with the link's remote module."""
        rt = self.modules[ln.local_qkdi]  # type: ignore[index]
        if rt.module is None:
            return False
        if rt.peer_node_id is None:
            return True  # statically paired, no plant information
        return rt.peer_node_id == ln.remote_node and (ln.remote_qkdi is None or rt.peer_qkdi == ln.remote_qkdi)

    async def sync_links(self, links: list[LinkConfig]) -> None:
        async with self._sync_lock:
            await self._sync_links(links)

    async def _sync_links(self, links: list[LinkConfig]) -> None:
        """Make key associations and feeders follow the configured PHYS links of local modules."""
        self._configured_links = list(links)
        wanted = {
            ln.qkdl_id: ln for ln in links
            if ln.link_type == "PHYS" and ln.enabled and ln.local_node == self.node_id
            and ln.local_qkdi in self.modules and ln.remote_node and self._lit(ln)
        }
        for qkdl_id in list(self.links):
            if qkdl_id not in wanted:
                lr = self.links.pop(qkdl_id)
                if lr.feeder is not None:
                    await lr.feeder.stop()
        for qkdl_id, ln in wanted.items():
            rt = self.modules[ln.local_qkdi]  # type: ignore[index]
            current = self.links.get(qkdl_id)
            if current is not None and (current.feeder is None or current.feeder_source is rt.source):
                current.link = ln
                continue
            if current is not None and current.feeder is not None:
                await current.feeder.stop()
            lr = LinkRuntime(ln, rt)
            self.links[qkdl_id] = lr
            if self.store is None or rt.module is None or self.pki is None:
                continue
            assert ln.remote_node is not None
            await asyncio.to_thread(
                self.store.add_association, qkdl_id, self.node_id, ln.remote_node,
                master_parity=0 if rt.spec["role"] == "transmitter" else 1,
                key_size_bits=rt.module.key_size_bits,
            )
            assert rt.peer is not None
            lr.feeder = ModuleFeeder(
                f"https://127.0.0.1:{rt.source_port}", client_context(self.pki), rt.peer, self.store, qkdl_id,
            )
            lr.feeder_source = rt.source
            await lr.feeder.start()
        if self.resolver is not None:
            self.resolver.routes.clear()
            self.resolver.routes.update({lr.link.remote_node: q for q, lr in self.links.items()
                                         if lr.feeder is not None and lr.link.remote_node})
        self.set_routes(links)

    def _fed(self, assoc_id: str) -> bool:
        """Whether a QKD module's feeder stores the key stream of this association here."""
        lr = self.links.get(assoc_id)
        return lr is not None and lr.feeder is not None

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

    def _key_rate(self, assoc_id: str) -> float | None:
        """Secret key rate (bit/s) of the module behind a link association, for 004 QoS checks."""
        st = self.link_states().get(assoc_id)
        return st.skr_bps if st is not None else None

    def link_states(self) -> dict[str, ModuleStatus]:
        return {q: lr.runtime.module.status() for q, lr in self.links.items() if lr.runtime.module is not None}

    def store_stats(self) -> dict[str, Any]:
        if self.store is None:
            return {}
        return {a.assoc_id: self.store.stats(a.assoc_id) for a in self.store.associations()}
