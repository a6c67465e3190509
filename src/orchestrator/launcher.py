"""Start a network from a topology file: one `qkdnode run` process per node, each in its own
process group, all stopped with the launcher, even when it is killed (reaper.py).

Writes every node's config file into the state dir (neighbours' addresses filled in, so any node
can also be started by hand), picks free ports, waits until every node listens and then writes
`network.json` atomically.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .nodeclient import QKD_NS, NetconfEndpoint
from .nodeclient import connect as netconf_connect
from .plant import plan_plant
from .reaper import reaper, spawn, terminate, wait_ready
from .spawner import Zygote
from .topology import ModuleSpec, RouteSpec, Topology

NETCONF_USER = "admin"
NETCONF_PASSWORD = "admin"
#: seconds `qkdnet up` gives its children between SIGTERM and SIGKILL (README "Stopping a network");
#: their own hard stop (qkdnode.eventloop.HARD_STOP_S, 5 s) comes first
ORCHESTRATOR_GRACE_S = 3.0
NODE_GRACE_S = 6.0
SERVICE_GRACE_S = 2.0  # plant stub and QRNG: no durable state, stopped after the nodes


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port for a service of the network, never the same one twice in this process.

    The port is planned now and bound later by another process, so it is taken from below the
    kernel's ephemeral range: outgoing connections (of this network's own processes, among
    others) get their local ports from that range and would otherwise steal a planned port
    before its service binds it. The scan starts at a random place so that several networks on
    one machine rarely probe the same ports."""
    lo, _ = _ephemeral_range()
    first, last = 10000, max(10001, lo - 1)
    start = random.randrange(first, last)
    for i in range(last - first):
        port = first + (start - first + i) % (last - first)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free TCP port left in {first}-{last}")


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
    etsi004_port: int = 0
    restconf_port: int = 0
    forwarder_port: int = 0
    metrics_port: int = 0
    cert: Path | None = None
    key: Path | None = None
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


# -- orchestrators: one `qkdorch serve` per domain (README "Orchestrator") ---------------------------
class _Orchestrators:
    """Mixed into Network: start, feed and stop the domains' SDN controllers."""

    orchestrate: bool = True  # False: no orchestrator, static routes installed by the launcher
    orch_procs: dict[str, asyncio.subprocess.Process]
    orch_urls: dict[str, str]

    async def _fetch_host_keys(self: Any) -> None:
        """Each node's SSH host public key, from the SSH handshake with the process we just started
        (network.json then pins it: clients check it instead of trusting any key)."""
        import asyncssh

        async def one(np: NodeProcess) -> tuple[str, str]:
            for attempt in range(3):
                try:
                    key = await asyncio.wait_for(asyncssh.get_server_host_key(self.host, np.netconf_port), 10)
                    if key is None:
                        raise OSError("the server sent no host key")
                    return np.name, key.export_public_key("openssh").decode().split()[1]
                except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                    if attempt == 2:
                        raise RuntimeError(f"cannot read the SSH host key of {np.name}: {exc}") from exc
                    await asyncio.sleep(0.2)
            raise AssertionError("unreachable")

        self.host_keys = dict(await asyncio.gather(*(one(np) for np in self.nodes.values())))

    def _with_orchestrators(self: Any, data: dict[str, Any]) -> dict[str, Any]:
        for np in self.nodes.values():
            spec = self.topology.nodes[np.name]
            entry = data["nodes"][np.name]
            entry["domains"] = [spec.domain, *[d for d in spec.border if d != spec.domain]]
            key = getattr(self, "host_keys", {}).get(np.name)
            if key is not None:
                entry["netconf"]["host_key"] = key
        urls = getattr(self, "orch_urls", None)
        if urls:
            data["orchestrators"] = {d: {"url": u, "pid": self.orch_procs[d].pid} for d, u in urls.items()}
        return data

    async def start_orchestrators(self: Any, timeout: float = 60.0) -> None:
        """One `qkdorch serve` per domain (inventory: the nodes' NETCONF addresses only); then the
        topology's declared routes are asked of the orchestrators, as an NMS would."""
        self.orch_procs, self.orch_urls = {}, {}
        await self._fetch_host_keys()
        inventory = self.state_dir / "inventory.json"
        write_json_atomic(inventory, self.network_data())
        ports = {d: free_port(self.host) for d in self.topology.domains()}
        urls = {d: f"http://{self.host}:{p}" for d, p in ports.items()}
        for domain, port in ports.items():
            peers = [a for d, u in urls.items() if d != domain for a in ("--peer", f"{d}={u}")]
            log = open(self.state_dir / "logs" / f"orchestrator-{domain}.log", "ab")
            self.orch_procs[domain] = await spawn(
                sys.executable, "-m", "orchestrator.cli", "serve", "--inventory", str(inventory), "--domain", domain,
                "--host", self.host, "--port", str(port), *peers,
                stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            )
            log.close()
        for domain, proc in self.orch_procs.items():
            await wait_ready(proc, timeout, f"the orchestrator of domain {domain} did not start "
                                            f"(see {self.state_dir / 'logs' / f'orchestrator-{domain}.log'})")
        self.orch_urls = urls
        await self.provision_declared_direct_links(timeout)  # first: routes may need them
        await self.provision_declared_routes(timeout)

    async def provision_declared_direct_links(self: Any, timeout: float = 60.0) -> None:
        """Ask the orchestrator of the emitter's domain to build each declared direct link."""
        from .directlink import post_direct_link

        for dl in self.topology.direct_links:
            domain = self.topology.nodes[self.topology.modules[dl.emitter].node].domain
            await asyncio.to_thread(post_direct_link, self.orch_urls[domain], dl.emitter, dl.receiver, timeout)

    async def provision_declared_routes(self: Any, timeout: float = 60.0) -> None:
        for route in self.topology.routes.values():
            src, dst = route.path[0], route.path[-1]
            domain = self.topology.nodes[src].domain
            body: dict[str, Any] = {"id": self.route_id(route), "src": src, "dst": dst,
                                    "rate_bps": route.bandwidth_bps or DEFAULT_ROUTE_BPS, "saes": list(route.saes)}
            if all(domain in (self.topology.nodes[n].domain, *self.topology.nodes[n].border) for n in route.path):
                body["path"] = list(route.path)  # pinned as declared; across domains each domain chooses
            await asyncio.to_thread(_post_route, f"{self.orch_urls[domain]}/routes", body, timeout)

    async def stop_orchestrators(self: Any, grace: float = ORCHESTRATOR_GRACE_S) -> None:
        await terminate(list(getattr(self, "orch_procs", {}).values()), grace)


DEFAULT_ROUTE_BPS = 10_000


def _post_route(url: str, body: dict[str, Any], timeout: float) -> None:
    """POST a declared route; retried while the orchestrator finds no capacity yet (links coming up)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30):
                return
        except urllib.error.HTTPError as exc:
            message = exc.read().decode(errors="replace")
            if exc.code != 409 or time.monotonic() > deadline:
                raise RuntimeError(f"route {body['src']} -> {body['dst']} refused by the orchestrator: {message}") from exc
        except urllib.error.URLError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"route {body['src']} -> {body['dst']}: orchestrator at {url}: {exc.reason}") from exc
        time.sleep(0.5)


class Network(_Orchestrators):
    """A running network of node processes."""

    def __init__(self, topology: Topology, state_dir: Path, host: str = "127.0.0.1") -> None:
        self.topology = topology
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.nodes: dict[str, NodeProcess] = {}
        self.network_json = self.state_dir / "network.json"
        # node processes forked from one pre-imported zygote (shared pages, less start-up CPU);
        # QKDNET_SPAWN=exec starts each node with its own interpreter instead
        self.fork_nodes = os.environ.get("QKDNET_SPAWN", "fork") != "exec"
        self.zygote: Zygote | None = None

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
                etsi014_port=free_port(self.host), etsi004_port=free_port(self.host),
                restconf_port=free_port(self.host), metrics_port=free_port(self.host),
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
        self._plan_relay()
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
                "keysource_port": 0,  # the node's KMS is its only client: bound to any port, no plan
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
        if m.tick_s is not None:
            out["tick_s"] = m.tick_s
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
                "users": [{"username": NETCONF_USER, "password": NETCONF_PASSWORD,
                                       "groups": ["admin"], "recovery": True}],
            },
            "neighbours": self._neighbours(name),
        }
        cfg["pki"] = {"ca": str(self.ca.cert_path), "cert": str(np.cert), "key": str(np.key)}
        cfg["etsi014"] = {"host": self.host, "port": np.etsi014_port}
        cfg["etsi004"] = {"host": self.host, "port": np.etsi004_port}
        cfg["restconf"] = {"host": self.host, "port": np.restconf_port}
        cfg["metrics"] = {"host": self.host, "port": np.metrics_port}  # Prometheus GET /metrics (plain HTTP)
        # every other node's KMS (node cert CN = name): the ETSI 004 KMS-to-KMS calls go there
        cfg["peers"] = {o.name: {"node_id": o.node_id, "etsi004": {"host": self.host, "port": o.etsi004_port}}
                        for o in self.nodes.values() if o.name != name}
        cfg["saes"] = [{"id": s.id, "node": s.node, "node_id": self.nodes[s.node].node_id}
                       for s in self.topology.saes.values()]
        cfg["modules"] = [self._module_config(m) for m in self.topology.modules.values() if m.node == name]
        cfg["fabric"] = {"url": self.fabric_url}
        cfg.update(self._relay_config(name))
        sw = self.topology.switch_of(name)
        if sw is not None:
            cfg["switch"] = {"name": sw.name, "insertion_loss_db": sw.insertion_loss_db, "ports": sw.ports,
                             "port_plan": [p.to_json(sw.name) for p in self.plant.ports[sw.name]]}
        np.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    # -- processes ------------------------------------------------------------------------------
    async def _start_fabric(self) -> None:
        log = open(self.state_dir / "logs" / "fabric.log", "ab")
        self.fabric_proc = await spawn(
            sys.executable, "-m", "qkdnode.devices.fabric", "--plant", str(self.state_dir / "plant.json"),
            "--host", self.host, "--port", str(self.fabric_port),
            stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )
        log.close()
        await wait_ready(self.fabric_proc, 30,
                         f"the optical plant stub did not start (see {self.state_dir / 'logs' / 'fabric.log'})")

    async def start(self, timeout: float = 60.0) -> None:
        reaper(self.state_dir / "logs" / "reaper.log")  # children die with us, even on SIGKILL (reaper.py)
        await self._start_fabric()
        await self._start_qrng()
        if self.fork_nodes:  # one pre-imported process forks the nodes (spawner.py, qkdnode/zygote.py)
            self.zygote = Zygote(self.state_dir / "logs" / "zygote.log", self.state_dir)
            await self.zygote.start()
        for np in self.nodes.values():
            log_path = self.state_dir / "logs" / f"{np.name}.log"
            if self.zygote is not None:
                np.proc = await self.zygote.spawn(np.name, ["run", "--config", str(np.config_path)], log_path)  # type: ignore[assignment]
            else:
                log = open(log_path, "ab")
                np.proc = await spawn(
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
        if self.orchestrate:  # the domains' orchestrators install the declared routes (README "Orchestrator")
            await self.start_orchestrators(timeout)
        else:
            await self.install_routes()
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
        return self._with_orchestrators(self._with_relay({
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
                    "etsi004": {"url": f"{self.host}:{np.etsi004_port}"},
                    "restconf": {"url": f"https://{self.host}:{np.restconf_port}/restconf"},
                    "metrics_url": f"http://{self.host}:{np.metrics_port}/metrics",
                }
                for np in self.nodes.values()
            },
            "saes": self.saes,
            "ca": str(self.ca.cert_path),
            "fabric": {"url": self.fabric_url},
        }))

    def write_network_json(self) -> None:
        write_json_atomic(self.network_json, self.network_data())

    async def stop(self, grace: float = NODE_GRACE_S) -> None:
        """Ordered and bounded: the orchestrators first (they must not see the nodes go as
        failures), then the nodes, then what they use (plant stub, QRNG service); SIGTERM to each
        process group, SIGKILL after the grace, every child reaped (reaper.terminate)."""
        await self.stop_orchestrators()
        await terminate([np.proc for np in self.nodes.values() if np.proc is not None], grace)  # type: ignore[misc]
        if self.zygote is not None:
            await self.zygote.stop()
        services = [getattr(self, "fabric_proc", None), getattr(self, "qrng_proc", None)]
        await terminate([p for p in services if p is not None], SERVICE_GRACE_S)

    # -- key relay: forwarder addresses, QRNG service, static routes (README "Key relay routes") ---
    def _plan_relay(self) -> None:
        for np in self.nodes.values():
            np.forwarder_port = free_port(self.host)
        self.qrng_proc: asyncio.subprocess.Process | None = None
        self.qrng_url: str | None = None
        if self.topology.qrng_node is not None:
            self.qrng_port = free_port(self.host)
            self.qrng_url = f"https://{self.host}:{self.qrng_port}"
            self.qrng_cert = self.ca.issue_server("qrng", self.state_dir / "pki")

    def _relay_peers(self, name: str) -> list[str]:
        """Nodes the forwarder of `name` talks to: fibre neighbours, QKD module-pair peers and the
        nodes its modules' light may reach through the switches (direct links)."""
        out = [n["name"] for n in self._neighbours(name)]
        out += [n for n in self.topology.light_reach(name) if n not in out]
        for other in self.topology.nodes:  # the reverse direction: nodes whose light reaches us
            if other != name and other not in out and name in self.topology.light_reach(other):
                out.append(other)
        for m in self.topology.modules.values():
            peer = self.topology.modules.get(m.pairs_with or "")
            if m.node == name and peer is not None and peer.node not in out:
                out.append(peer.node)
        return out

    def _relay_config(self, name: str) -> dict[str, Any]:
        np = self.nodes[name]
        cfg: dict[str, Any] = {"forwarder": {
            "host": self.host, "port": np.forwarder_port,
            "neighbours": [{"name": o, "node_id": self.nodes[o].node_id, "host": self.host,
                            "port": self.nodes[o].forwarder_port} for o in self._relay_peers(name)],
        }}
        if self.qrng_url is not None and self.topology.qrng_node == name:
            cfg["qrng"] = {"url": self.qrng_url}
        return cfg

    async def _start_qrng(self) -> None:
        if self.qrng_url is None:
            return
        log = open(self.state_dir / "logs" / "qrng.log", "ab")
        self.qrng_proc = await spawn(
            sys.executable, "-m", "qkdnode.qrng", "--host", self.host, "--port", str(self.qrng_port),
            "--cert", str(self.qrng_cert.cert), "--key", str(self.qrng_cert.key), "--ca", str(self.ca.cert_path),
            stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )
        log.close()
        await wait_ready(self.qrng_proc, 30, f"the QRNG service did not start (see {self.state_dir / 'logs' / 'qrng.log'})")

    def route_id(self, route: RouteSpec) -> str:
        """qkdl_id of a static route's VIRT links (the same on every node of the path)."""
        return str(uuid.uuid5(LINK_NAMESPACE, f"route|{route.name}"))

    def route_link_xml(self, route: RouteSpec, node: str) -> str:
        """The VIRT `qkd_link` of `route` as `node` holds it."""
        ids = [self.nodes[n].node_id for n in route.path]
        i = route.path.index(node)
        apps = "".join(f"<qkdl_applications>{sae_uuid(s)}</qkdl_applications>" for s in route.saes)
        prev = f"<virt_prev_hop>{ids[i - 1]}</virt_prev_hop>" if i > 0 else ""
        nxt = f"<virt_next_hop>{ids[i + 1]}</virt_next_hop>" if i < len(ids) - 1 else ""
        bw = f"<virt_bandwidth>{route.bandwidth_bps}</virt_bandwidth>" if route.bandwidth_bps else ""
        return (f"<qkd_link><qkdl_id>{self.route_id(route)}</qkdl_id><qkdl_enable>true</qkdl_enable>"
                f"<qkdl_local><qkdn_id>{ids[0]}</qkdn_id></qkdl_local>"
                f"<qkdl_remote><qkdn_id>{ids[-1]}</qkdn_id></qkdl_remote>"
                f"<qkdl_type>etsi-qkdn-types:VIRT</qkdl_type>{apps}{prev}{nxt}{bw}</qkd_link>")

    async def install_routes(self) -> None:
        """Install the topology's static routes over NETCONF: per node, one locked candidate edit
        of all its VIRT links, commit, unlock."""
        per_node: dict[str, list[str]] = {}
        for route in self.topology.routes.values():
            for node in route.path:
                per_node.setdefault(node, []).append(self.route_link_xml(route, node))
        await asyncio.gather(*(asyncio.to_thread(self._install_on, node, links) for node, links in per_node.items()))

    def _install_on(self, node: str, links: list[str]) -> None:
        np = self.nodes[node]
        config = (f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><qkd_node xmlns="{QKD_NS}" '
                  f'xmlns:etsi-qkdn-types="{QKD_TYPES_NS}"><qkd_links>{"".join(links)}</qkd_links></qkd_node></config>')
        ep = NetconfEndpoint(self.host, np.netconf_port, NETCONF_USER, NETCONF_PASSWORD)
        with netconf_connect(ep) as m:
            with m.locked("candidate"):
                try:
                    m.edit_config(target="candidate", config=config)
                    m.commit()
                except Exception:
                    m.discard_changes()
                    raise

    def _with_relay(self, data: dict[str, Any]) -> dict[str, Any]:
        for np in self.nodes.values():
            data["nodes"][np.name]["forwarder"] = {"host": self.host, "port": np.forwarder_port}
        if self.qrng_url is not None:
            data["qrng"] = {"url": self.qrng_url, "node": self.topology.qrng_node}
        if self.topology.direct_links:
            from .directlink import direct_link_id

            data["direct_links"] = [{"emitter": d.emitter, "receiver": d.receiver,
                                     "qkdl_id": direct_link_id(d.emitter, d.receiver)}
                                    for d in self.topology.direct_links]
        if self.topology.routes:
            data["routes"] = {r.name: {"qkdl_id": self.route_id(r), "path": list(r.path), "saes": list(r.saes),
                                       "bandwidth_bps": r.bandwidth_bps} for r in self.topology.routes.values()}
        return data


QKD_TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
#: uuid5 namespace of SAE IDs in qkdl_applications (015 types them as yang:uuid); the node side uses
#: the same constant (qkdnode.forwarder.routes.SAE_NAMESPACE): shared names, not shared code.
SAE_NAMESPACE = uuid.UUID("0b6d3c1e-8f4a-5e7b-9c2d-4a1f6e8b3d57")


def sae_uuid(sae_id: str) -> str:
    try:
        return str(uuid.UUID(sae_id))
    except ValueError:
        return str(uuid.uuid5(SAE_NAMESPACE, sae_id))

