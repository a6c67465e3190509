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


LIMIT_FIELDS = ("max_message_bytes", "max_sessions", "max_xml_depth", "rpc_rate", "rpc_burst")


def parse_limits(nc_raw: dict[str, Any], source: Path | str) -> Limits:
    """The `netconf:` limits (see README "Limits"); each a positive number."""
    values: dict[str, Any] = {}
    for name in LIMIT_FIELDS:
        if name not in nc_raw:
            continue
        value = nc_raw[name]
        kind = float if name == "rpc_rate" else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or \
                kind is int and not isinstance(value, int):
            raise _fail(source, f"netconf.{name}", f"{value!r} is not a positive {kind.__name__}")
        values[name] = kind(value)
    return Limits(**values)


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
    unknown = set(nc_raw) - {"host", "port", "users", *LIMIT_FIELDS}
    if unknown:
        raise _fail(source, "netconf", f"unknown field(s) {', '.join(sorted(unknown))}")
    users = []
    default_users = [{"username": "admin", "password": "admin", "recovery": True}]
    for i, u in enumerate(nc_raw.get("users") or default_users):
        if not isinstance(u, dict) or not isinstance(u.get("username"), str):
            raise _fail(source, f"netconf.users[{i}]", "needs a username")
        bad = set(u) - {"username", "password", "authorized_keys", "groups", "recovery"}
        if bad:
            raise _fail(source, f"netconf.users[{i}]", f"unknown field(s) {', '.join(sorted(bad))}")
        keys = u.get("authorized_keys") or []
        if isinstance(keys, str):
            keys = [keys]
        groups = u.get("groups", ["admin"])
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise _fail(source, f"netconf.users[{i}].groups", "expected a list of group names")
        users.append(User(u["username"], u.get("password"), tuple(str(k) for k in keys), tuple(groups),
                          bool(u.get("recovery", False))))
    port = nc_raw.get("port", 830)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise _fail(source, "netconf.port", f"{port!r} is not a port number")
    limits = parse_limits(nc_raw, source)
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
