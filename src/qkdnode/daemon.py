"""The node daemon: one process per network node, wiring datastores, agent and servers."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .agent import SdnAgent
from .config import NodeConfig
from .datastore import Datastores
from .keyplane import KeyPlane
from .metrics import NodeMetrics
from .netconf.server import NetconfServer
from .qkd015 import node_config_xml
from .schema import build_context
from .tapi import Switch, SwitchAgent
from .eventloop import HARD_STOP_S, Shutdown, wait_for_stop_signal

if TYPE_CHECKING:
    from .restconf import RestconfServer

log = logging.getLogger(__name__)

VERSION = "qkdnet-0.1.0"
#: seconds the ordered stop may take; the hard stop (eventloop.HARD_STOP_S) comes after it
STOP_BUDGET_S = HARD_STOP_S - 1.0


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.node_id = self._node_id()
        self.ctx = build_context()
        switch = cfg.extra.get("switch")
        self.switch = SwitchAgent(
            self.ctx,
            Switch.from_config(switch, cfg.name, self.node_id, cfg.extra.get("modules") or []) if switch else None,
            lambda: self.keyplane.fabric,
        )
        self.datastores = Datastores(self.ctx, self.state_dir, self._initial_config)
        self.metrics = NodeMetrics.from_config(cfg.name, cfg.extra) if cfg.extra.get("metrics") else None
        self.keyplane = KeyPlane(cfg.name, self.node_id, self.state_dir, cfg.extra, metrics=self.metrics)
        self.agent = SdnAgent(self.keyplane)
        self.agent.load(self.datastores.running)
        self.datastores.subsystems.append(self.agent)
        self.datastores.providers.append(self.agent.state)
        self.switch.load(self.datastores.running)
        self.datastores.subsystems.append(self.switch)
        self.datastores.providers.append(self.switch.state)
        self.netconf = NetconfServer(
            self.datastores, cfg.netconf.users, self.state_dir / "ssh_host_ed25519_key", cfg.netconf.limits
        )
        self.agent.publish = self.netconf.publish
        if self.metrics is not None:
            self.metrics.watch(self.keyplane, self.netconf)
        self.netconf_port = 0
        self.restconf = self._restconf()
        self.restconf_port = 0

    def _restconf(self) -> "RestconfServer | None":
        """RESTCONF (RFC 8040) on the same datastores, when the config has `restconf: {host, port}`
        (TLS with the node's `pki`: its certificate, and its CA for client certificates)."""
        rc = self.cfg.extra.get("restconf")
        if not rc:
            return None
        pki = self.cfg.extra.get("pki")
        if not pki:
            raise ValueError("a node with a 'restconf' section needs a 'pki' section")
        from .pki import CertPaths, server_context
        from .restconf import RestconfServer

        tls = server_context(CertPaths(Path(pki["cert"]), Path(pki["key"]), Path(pki["ca"])), require_client_cert=False)
        nc = self.netconf
        return RestconfServer(self.datastores, nc.check_password, lambda: set(nc.users), nc.schema_text, tls,
                              nacm=nc.nacm)

    def _node_id(self) -> str:
        id_file = self.state_dir / "node_id"
        if self.cfg.node_id:
            node_id = self.cfg.node_id
        elif id_file.exists():
            node_id = id_file.read_text().strip()
        else:
            node_id = str(uuid.uuid4())
        if not id_file.exists() or id_file.read_text().strip() != node_id:
            id_file.write_text(node_id + "\n")
        return node_id

    def _initial_config(self) -> str:
        """Running at first start: node identity, one qkd_interface per module, static PHYS links;
        on a node with an optical switch, the TAPI context with one SIP per switch port."""
        return node_config_xml(
            self.node_id, VERSION, self.cfg.location or self.cfg.name, self.cfg.extra.get("modules") or []
        ) + self.switch.initial_config_xml() + self._initial_nacm()

    def _initial_nacm(self) -> str:
        """RFC 8341 groups and rule-lists: `admin` and `operator`, users per the node config."""
        from .netconf.nacm import default_config_xml

        groups: dict[str, list[str]] = {}
        for user in self.cfg.netconf.users:
            for group in user.groups:
                groups.setdefault(group, []).append(user.username)
        return default_config_xml(groups)

    async def start(self) -> None:
        await self.keyplane.start()
        await self.switch.start()
        await self.agent.sync()
        self.netconf_port = await self.netconf.start(self.cfg.netconf.host, self.cfg.netconf.port)
        info: dict[str, object] = {
            "name": self.cfg.name, "node_id": self.node_id, "pid": os.getpid(),
            "netconf": {"host": self.cfg.netconf.host, "port": self.netconf_port},
        }
        if self.restconf is not None:
            rc = self.cfg.extra["restconf"]
            self.restconf_port = await self.restconf.start(str(rc.get("host", "127.0.0.1")), int(rc.get("port", 0)))
            info["restconf"] = {"host": str(rc.get("host", "127.0.0.1")), "port": self.restconf_port,
                                "url": f"https://{rc.get('host', '127.0.0.1')}:{self.restconf_port}/restconf"}
        if self.metrics is not None:  # Prometheus /metrics, plain HTTP (config `metrics: {host, port}`)
            mc = self.cfg.extra["metrics"]
            host = str(mc.get("host", "127.0.0.1"))
            port = await self.metrics.start(host, int(mc.get("port", 0)))
            info["metrics"] = {"url": f"http://{host}:{port}/metrics"}
        if self.keyplane.etsi014 is not None:
            info["etsi014"] = {"url": f"https://{self.cfg.extra['etsi014'].get('host', '127.0.0.1')}:{self.keyplane.etsi014_port}"}
        write_json_atomic(self.state_dir / "node.json", info)
        log.info("node %s (%s) NETCONF on %s:%d", self.cfg.name, self.node_id, self.cfg.netconf.host, self.netconf_port)

    async def stop(self, budget_s: float = STOP_BUDGET_S) -> None:
        """Ordered and bounded (README "Stopping a network"): the management servers stop accepting
        and close their sessions, then the switch reporter, then the key plane (its own ordered
        steps); a late step is logged in one line and left behind, never raised."""
        sd = Shutdown(f"node {self.cfg.name}", budget_s)
        if self.metrics is not None:
            await sd.step("metrics server", self.metrics.stop(), 1.0)
        if self.restconf is not None:
            await sd.step("RESTCONF server", self.restconf.stop(), 1.0)
        await sd.step("NETCONF server", self.netconf.stop(), 1.5)
        await sd.step("switch reporter", self.switch.stop(), 1.0)
        await sd.step("key plane", self.keyplane.stop(max(0.1, sd.remaining() - 0.1)))


async def run_node(cfg: NodeConfig) -> None:
    import asyncio

    from .memory import trim_periodically

    node = Node(cfg)
    await node.start()
    print(f"READY {cfg.name} netconf={node.netconf_port}", flush=True)
    trimmer = asyncio.get_running_loop().create_task(trim_periodically(), name="malloc-trim")
    await wait_for_stop_signal()  # arms the hard stop: the process is gone HARD_STOP_S after the signal
    trimmer.cancel()
    await node.stop()
