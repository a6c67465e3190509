"""Node configuration file (YAML): identity, NETCONF listener and users, state dir, devices."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .netconf.server import Limits, User


class ConfigError(Exception):
    """A node config file is invalid; the message names the file and field."""


@dataclass
class NetconfConfig:
    host: str = "127.0.0.1"
    port: int = 830
    users: list[User] = field(default_factory=lambda: [User("admin", "admin")])
    limits: Limits = field(default_factory=Limits)


@dataclass
class NodeConfig:
    name: str
    node_id: str | None = None
    domain: str = "default"
    location: str | None = None
    state_dir: Path = Path("state")
    netconf: NetconfConfig = field(default_factory=NetconfConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # sections owned by later subsystems
    source: Path | None = None


_TOP_KEYS = {"name", "node_id", "domain", "location", "state_dir", "netconf"}


def _fail(source: Path | str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {msg}")


def load_node_config(path: Path | str) -> NodeConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_node_config(raw, path)


def parse_node_config(raw: Any, source: Path | str = "<config>") -> NodeConfig:
    if not isinstance(raw, dict):
        raise _fail(source, "top level", "expected a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(source, "name", "required, a non-empty string")
    node_id = raw.get("node_id")
    if node_id is not None:
        try:
            node_id = str(uuid.UUID(str(node_id)))
        except ValueError:
            raise _fail(source, "node_id", f"{node_id!r} is not a UUID") from None
    nc_raw = raw.get("netconf") or {}
    if not isinstance(nc_raw, dict):
        raise _fail(source, "netconf", "expected a mapping")
    unknown = set(nc_raw) - {"host", "port", "users", "max_message_bytes", "max_sessions"}
    if unknown:
        raise _fail(source, "netconf", f"unknown field(s) {', '.join(sorted(unknown))}")
    users = []
    for i, u in enumerate(nc_raw.get("users") or [{"username": "admin", "password": "admin"}]):
        if not isinstance(u, dict) or not isinstance(u.get("username"), str):
            raise _fail(source, f"netconf.users[{i}]", "needs a username")
        keys = u.get("authorized_keys") or []
        if isinstance(keys, str):
            keys = [keys]
        users.append(User(u["username"], u.get("password"), tuple(str(k) for k in keys)))
    port = nc_raw.get("port", 830)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise _fail(source, "netconf.port", f"{port!r} is not a port number")
    limits = Limits(
        max_message_bytes=int(nc_raw.get("max_message_bytes", Limits.max_message_bytes)),
        max_sessions=int(nc_raw.get("max_sessions", Limits.max_sessions)),
    )
    netconf = NetconfConfig(host=str(nc_raw.get("host", "127.0.0.1")), port=port, users=users, limits=limits)
    state_dir = Path(str(raw.get("state_dir", f"state/{name}")))
    if not state_dir.is_absolute() and isinstance(source, Path):
        state_dir = (source.parent / state_dir).resolve()
    extra = {k: v for k, v in raw.items() if k not in _TOP_KEYS}
    return NodeConfig(
        name=name, node_id=node_id, domain=str(raw.get("domain", "default")),
        location=raw.get("location"), state_dir=state_dir, netconf=netconf, extra=extra,
        source=source if isinstance(source, Path) else None,
    )
