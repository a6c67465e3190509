"""Start a network from a topology file: one `qkdnode run` process per node, all in our group.

Writes every node's config file into the state dir (neighbours' addresses filled in, so any node
can also be started by hand), picks free ports, waits until every node listens and then writes
`network.json` atomically.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .plant import plan_plant
from .topology import ModuleSpec, Topology

NETCONF_USER = "admin"
NETCONF_PASSWORD = "admin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


LINK_NAMESPACE = uuid.UUID("6f1c6a34-5d0e-4c4e-9a8e-2f3b1d7c9e01")


def link_id(a: ModuleSpec, b: ModuleSpec) -> str:
    """The PHYS qkd_link (and key association) ID of a module pair: the same at both ends."""
    first, second = sorted((a.name, b.name))
    return str(uuid.uuid5(LINK_NAMESPACE, f"{first}|{second}"))


@dataclass
class NodeProcess:
    name: str
    node_id: str
    domain: str
    config_path: Path
    state_dir: Path
    netconf_port: int
    etsi014_port: int = 0
    cert: Path | None = None
    key: Path | None = None
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Network:
    """A running network of node processes."""

    def __init__(self, topology: Topology, state_dir: Path, host: str = "127.0.0.1") -> None:
        self.topology = topology
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.nodes: dict[str, NodeProcess] = {}
        self.network_json = self.state_dir / "network.json"

    # -- preparation --------------------------------------------------------------------------
    def prepare(self) -> None:
        from qkdnode.pki import CertificateAuthority  # the lab PKI is a library, not node internals

        (self.state_dir / "nodes").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self.network_json.exists():
            self.network_json.unlink()  # a stale file must not look like a ready network
        for spec in self.topology.nodes.values():
            cfg_path = self.state_dir / "nodes" / f"{spec.name}.yaml"
            node_id = str(uuid.uuid4())
            if cfg_path.exists():  # keep identities across restarts of the same state dir
                old = yaml.safe_load(cfg_path.read_text()) or {}
                node_id = old.get("node_id", node_id)
            self.nodes[spec.name] = NodeProcess(
                name=spec.name, node_id=node_id, domain=spec.domain, config_path=cfg_path,
                state_dir=self.state_dir / "nodes" / spec.name, netconf_port=free_port(self.host),
                etsi014_port=free_port(self.host),
            )
        self.ca = CertificateAuthority(self.state_dir / "pki")
        for np in self.nodes.values():
            paths = self.ca.issue_server(np.name, self.state_dir / "pki")
            np.cert, np.key = paths.cert, paths.key
        self.saes: dict[str, dict[str, str]] = {}
        for sae in self.topology.saes.values():
            paths = self.ca.issue_client(sae.id, self.state_dir / "pki")
            self.saes[sae.id] = {"node": sae.node, "cert": str(paths.cert), "key": str(paths.key),
                                 "ca": str(self.ca.cert_path)}
        self._plan_modules()
        self._plan_fabric()
        for spec in self.topology.nodes.values():
            self._write_node_config(spec.name)

    def _plan_fabric(self) -> None:
        """The optical plant stub: where every module and fibre end sits (see plant.py)."""
        info = {
            name: {"node_id": self.nodes[self.topology.modules[name].node].node_id, "qkdi_id": plan["qkdi_id"],
                   **({"channel": {"host": self.host, "port": plan["channel_port"]}} if plan["channel_port"] else {})}
            for name, plan in self.module_plan.items()
        }
        self.plant = plan_plant(self.topology, info)
        self.fabric_port = free_port(self.host)
        self.fabric_url = f"http://{self.host}:{self.fabric_port}"
        write_json_atomic(self.state_dir / "plant.json", self.plant.spec)
        self.fabric_proc: asyncio.subprocess.Process | None = None

    def _plan_modules(self) -> None:
        """qkdi_id per module, ports of the photon-channel stubs and of each module's 014 source."""
        self.module_plan: dict[str, dict[str, Any]] = {}
        per_node: dict[str, int] = {}
        for m in self.topology.modules.values():
            per_node[m.node] = per_node.get(m.node, 0) + 1
            self.module_plan[m.name] = {
                "qkdi_id": per_node[m.node],
                "keysource_port": free_port(self.host),
                "channel_port": free_port(self.host) if m.role == "receiver" else None,
            }

    def _fibre_loss(self, a: str, b: str) -> float | None:
        for f in self.topology.fibres.values():
            if set(f.ends) == {a, b}:
                return f.loss_db
        return None

    def _module_config(self, m: ModuleSpec) -> dict[str, Any]:
        plan = self.module_plan[m.name]
        out: dict[str, Any] = {
            "name": m.name, "technology": m.technology, "role": m.role, "qkdi_id": plan["qkdi_id"],
            "keysource": {"host": self.host, "port": plan["keysource_port"]},
        }
        if m.profile:
            out["profile"] = m.profile
        peer = self.topology.modules.get(m.pairs_with or "")
        if peer is not None:
            receiver = m if m.role == "receiver" else peer
            out["pairs_with"] = peer.name
            out["peer"] = {"node": peer.node, "node_id": self.nodes[peer.node].node_id,
                           "qkdi_id": self.module_plan[peer.name]["qkdi_id"]}
            out["channel"] = {"host": self.host, "port": self.module_plan[receiver.name]["channel_port"]}
            loss = self._fibre_loss(m.node, peer.node)
            if loss is not None:
                out["loss_db"] = loss
                out["qkdl_id"] = link_id(m, peer)
        return out

    def _neighbours(self, name: str) -> list[dict[str, Any]]:
        out = []
        for fibre in self.topology.fibres.values():
            if name not in fibre.ends:
                continue
            other = fibre.ends[1] if fibre.ends[0] == name else fibre.ends[0]
            np = self.nodes[other]
            out.append({"name": other, "node_id": np.node_id, "fibre": fibre.name,
                        "netconf": {"host": self.host, "port": np.netconf_port}})
        return out

    def _write_node_config(self, name: str) -> None:
        np = self.nodes[name]
        spec = self.topology.nodes[name]
        cfg: dict[str, Any] = {
            "name": name,
            "node_id": np.node_id,
            "domain": spec.domain,
            "location": spec.location or name,
            "state_dir": str(np.state_dir),
            "netconf": {
                "host": self.host, "port": np.netconf_port,
                "users": [{"username": NETCONF_USER, "password": NETCONF_PASSWORD}],
            },
            "neighbours": self._neighbours(name),
        }
        cfg["pki"] = {"ca": str(self.ca.cert_path), "cert": str(np.cert), "key": str(np.key)}
        cfg["etsi014"] = {"host": self.host, "port": np.etsi014_port}
        cfg["saes"] = [{"id": s.id, "node": s.node, "node_id": self.nodes[s.node].node_id}
                       for s in self.topology.saes.values()]
        cfg["modules"] = [self._module_config(m) for m in self.topology.modules.values() if m.node == name]
        cfg["fabric"] = {"url": self.fabric_url}
        sw = self.topology.switch_of(name)
        if sw is not None:
            cfg["switch"] = {"name": sw.name, "insertion_loss_db": sw.insertion_loss_db, "ports": sw.ports,
                             "port_plan": [p.to_json(sw.name) for p in self.plant.ports[sw.name]]}
        np.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    # -- processes ------------------------------------------------------------------------------
    async def _start_fabric(self) -> None:
        log = open(self.state_dir / "logs" / "fabric.log", "ab")
        self.fabric_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qkdnode.devices.fabric", "--plant", str(self.state_dir / "plant.json"),
            "--host", self.host, "--port", str(self.fabric_port),
            stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )
        log.close()
        assert self.fabric_proc.stdout is not None
        line = await asyncio.wait_for(self.fabric_proc.stdout.readline(), 30)
        if not line.startswith(b"READY"):
            raise RuntimeError(f"the optical plant stub did not start (see {self.state_dir / 'logs' / 'fabric.log'})")

    async def start(self, timeout: float = 60.0) -> None:
        await self._start_fabric()
        for np in self.nodes.values():
            log = open(self.state_dir / "logs" / f"{np.name}.log", "ab")
            np.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "qkdnode.cli", "run", "--config", str(np.config_path),
                stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            )
            log.close()
            asyncio.get_running_loop().create_task(self._watch(np))
        deadline = time.monotonic() + timeout
        while not all(n.ready.is_set() for n in self.nodes.values()):
            dead = [n.name for n in self.nodes.values() if n.proc is not None and n.proc.returncode is not None]
            if dead:
                raise RuntimeError(f"node(s) exited during start-up: {', '.join(dead)} (see {self.state_dir / 'logs'})")
            if time.monotonic() > deadline:
                late = [n.name for n in self.nodes.values() if not n.ready.is_set()]
                raise RuntimeError(f"nodes not ready after {timeout:.0f} s: {', '.join(late)} (see {self.state_dir / 'logs'})")
            await asyncio.sleep(0.05)
        self.write_network_json()

    async def _watch(self, np: NodeProcess) -> None:
        assert np.proc is not None and np.proc.stdout is not None
        while True:
            line = await np.proc.stdout.readline()
            if not line:
                break
            if line.startswith(b"READY "):
                np.ready.set()
        await np.proc.wait()

    def failed(self) -> list[str]:
        """Nodes whose process has exited."""
        return [n.name for n in self.nodes.values() if n.proc is not None and n.proc.returncode is not None]

    def network_data(self) -> dict[str, Any]:
        return {
            "topology": self.topology.name,
            "state_dir": str(self.state_dir),
            "nodes": {
                np.name: {
                    "node_id": np.node_id,
                    "domain": np.domain,
                    "pid": np.proc.pid if np.proc else None,
                    "config": str(np.config_path),
                    "netconf": {"host": self.host, "port": np.netconf_port,
                                "username": NETCONF_USER, "password": NETCONF_PASSWORD},
                    "etsi014": {"url": f"https://{self.host}:{np.etsi014_port}"},
                }
                for np in self.nodes.values()
            },
            "saes": self.saes,
            "ca": str(self.ca.cert_path),
            "fabric": {"url": self.fabric_url},
        }

    def write_network_json(self) -> None:
        write_json_atomic(self.network_json, self.network_data())

    async def stop(self, grace: float = 8.0) -> None:
        procs = [np.proc for np in self.nodes.values() if np.proc is not None and np.proc.returncode is None]
        if self.fabric_proc is not None and self.fabric_proc.returncode is None:
            procs.append(self.fabric_proc)
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()
