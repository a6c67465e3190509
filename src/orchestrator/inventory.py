"""The domain inventory: which nodes an orchestrator manages and how to reach them over NETCONF.

Only addresses and credentials live here. Everything else (node IDs, interfaces, links,
applications, optical topology) is learnt from the nodes themselves (`discovery.py`).

Two sources:

* `network.json` of `qkdnet up`: every node has a `domain` and, on border nodes, `domains`
  (all the domains it belongs to); `orchestrators` gives the peers' REST URLs.
* a YAML (or JSON) inventory file::

      domain: metro-a
      nodes:
        - name: alice
          netconf: {host: 10.0.0.1, port: 830, username: admin, password: admin, host_key: AAAA...}
          domains: [metro-a]            # optional; default: the file's domain; the node's own first
      peers:                            # optional: other domains' orchestrators
        metro-b: {url: http://10.0.1.5:8181}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .nodeclient import NetconfEndpoint


class InventoryError(Exception):
    """An inventory file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class NodeEntry:
    name: str
    endpoint: NetconfEndpoint
    domains: tuple[str, ...]  # the node's own domain first (network.json `domain`), then the others

    @property
    def home(self) -> str:
        """The node's own domain: of a border node, the one it belongs to before the others."""
        return self.domains[0]


@dataclass
class Inventory:
    domain: str
    nodes: dict[str, NodeEntry] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)  # other domain -> orchestrator URL
    source: Path | None = None

    def names(self) -> list[str]:
        return sorted(self.nodes)

    def border_nodes(self) -> list[str]:
        """Nodes that also belong to another domain."""
        return sorted(n for n, e in self.nodes.items() if len(e.domains) > 1)

    def guests(self) -> list[str]:
        """Border nodes whose own domain is another one (this domain's border nodes from elsewhere)."""
        return sorted(n for n, e in self.nodes.items() if e.home != self.domain)


def _endpoint(raw: Any, where: str) -> NetconfEndpoint:
    if not isinstance(raw, dict):
        raise InventoryError(f"{where}: 'netconf' must be a mapping")
    missing = [k for k in ("host", "port", "username", "password") if k not in raw]
    if missing:
        raise InventoryError(f"{where}: netconf: missing {', '.join(missing)}")
    try:
        return NetconfEndpoint.from_json(raw)
    except (TypeError, ValueError) as exc:
        raise InventoryError(f"{where}: netconf: {exc}") from exc


def _node_domains(raw: dict[str, Any], default: str | None) -> tuple[str, ...]:
    out: list[str] = []
    for d in ([raw["domain"]] if raw.get("domain") else []) + list(raw.get("domains") or []):
        if d not in out:
            out.append(str(d))
    if not out and default:
        out.append(default)
    return tuple(out)


def from_network_json(data: dict[str, Any], domain: str, source: Path | None = None) -> Inventory:
    """The nodes of `domain` in a `qkdnet up` network.json."""
    inv = Inventory(domain=domain, source=source)
    for name, info in sorted((data.get("nodes") or {}).items()):
        doms = _node_domains(info, "default")
        if domain not in doms:
            continue
        inv.nodes[name] = NodeEntry(name, _endpoint(info.get("netconf"), f"{source}: nodes.{name}"), doms)
    for dom, info in (data.get("orchestrators") or {}).items():
        if dom != domain and isinstance(info, dict) and info.get("url"):
            inv.peers[str(dom)] = str(info["url"])
    return inv


def from_inventory_file(data: dict[str, Any], domain: str | None, source: Path | None = None) -> Inventory:
    dom = domain or data.get("domain")
    if not dom:
        raise InventoryError(f"{source}: no domain given (--domain) and none in the file")
    raw_nodes = data.get("nodes")
    if isinstance(raw_nodes, dict):
        items = [dict(v, name=k) for k, v in raw_nodes.items()]
    elif isinstance(raw_nodes, list):
        items = list(raw_nodes)
    else:
        raise InventoryError(f"{source}: 'nodes' must be a list or a mapping")
    inv = Inventory(domain=str(dom), source=source)
    for i, raw in enumerate(items):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise InventoryError(f"{source}: nodes[{i}]: a node needs a 'name'")
        doms = _node_domains(raw, str(data.get("domain") or dom))
        if dom not in doms:
            continue
        inv.nodes[str(raw["name"])] = NodeEntry(str(raw["name"]), _endpoint(raw.get("netconf"), f"{source}: nodes[{i}]"), doms)
    for peer, info in (data.get("peers") or {}).items():
        url = info.get("url") if isinstance(info, dict) else info
        if url and peer != dom:
            inv.peers[str(peer)] = str(url)
    return inv


def load_inventory(path: Path | str, domain: str | None = None) -> Inventory:
    """network.json (needs `domain`) or an inventory file; raises InventoryError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError(f"{path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: expected a mapping at the top level")
    if "topology" in data and "state_dir" in data:  # network.json of qkdnet up
        if not domain:
            raise InventoryError(f"{path}: network.json holds every domain: give --domain")
        inv = from_network_json(data, domain, path)
    else:
        inv = from_inventory_file(data, domain, path)
    if not inv.nodes:
        raise InventoryError(f"{path}: no node belongs to domain {inv.domain!r}")
    return inv
