"""The `use_cases:` section of a topology file: parsing and validation.

`orchestrator.topology` keeps the section free-form (`Topology.extra["use_cases"]`); this module
turns it into typed specs and raises `UseCaseSpecError` naming the file, the line and the field
(`net.yaml:40: use_cases[2].saes[1]: no SAE with id 'SAE_X' (did you mean 'SAE_3'?)`).

    use_cases:
      - {name: uc1-encryptors, kind: encryptor, saes: [SAE_A, SAE_B], rekey_bytes: 1048576, rekey_seconds: 2}
      - {name: uc2-hybrid, kind: hybrid, saes: [SAE_A, SAE_B]}
      - {name: uc3-opot, kind: opot, saes: [SAE_1, SAE_2, SAE_3, SAE_4]}   # chain in order, last one verifies
      - {name: uc4-cloud, kind: cloud, server: SAE_S, clients: [SAE_C1, SAE_C2], concurrency: 8}
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.topology import Topology, TopologyError

KINDS = ("encryptor", "hybrid", "opot", "cloud")
KEMS = ("auto", "ml-kem-768", "x25519")

_Path = tuple[Any, ...]

# fields per kind: name -> (default, minimum) for numbers; SAE fields are checked separately
_COMMON = {"name", "kind", "description"}
_FIELDS: dict[str, set[str]] = {
    "encryptor": _COMMON | {"saes", "rekey_bytes", "rekey_seconds", "frame_bytes", "window", "max_mbps"},
    "hybrid": _COMMON | {"saes", "kem"},
    "opot": _COMMON | {"saes", "payload_bytes", "rekey_seconds", "window"},
    "cloud": _COMMON | {"server", "clients", "concurrency"},
}


class UseCaseSpecError(TopologyError):
    """Invalid `use_cases:` entry: the message names the file, the line and the field."""


@dataclass(frozen=True)
class UseCaseSpec:
    """One declared use case. `saes` lists every SAE it uses, in role order (for `cloud`: the
    server first, then the clients); `params` holds the kind's numeric/str options with defaults."""

    name: str
    kind: str
    saes: tuple[str, ...]
    params: dict[str, Any]

    @property
    def server(self) -> str:
        return self.saes[0]

    @property
    def clients(self) -> tuple[str, ...]:
        return self.saes[1:]

    def pairs(self) -> list[tuple[str, str]]:
        """The SAE pairs that share keys (each needs a route, or direct neighbour nodes)."""
        if self.kind == "cloud":
            return [(c, self.server) for c in self.clients]
        return list(zip(self.saes, self.saes[1:]))


def _line_index(source: Path | None) -> dict[_Path, int]:
    """Line numbers of the `use_cases` entries of the source file, by path (best effort)."""
    if source is None:
        return {}
    try:
        root = yaml.compose(source.read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return {}
    lines: dict[_Path, int] = {}

    def walk(node: yaml.Node, path: _Path) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                walk(v, path + (k.value,))
                lines[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


class _Checker:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.source = str(topology.source or "<topology>")
        self.lines = _line_index(topology.source)

    def fail(self, path: _Path, msg: str) -> UseCaseSpecError:
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return UseCaseSpecError(f"{self.source}:{self.lines.get(probe, 1)}: {where}: {msg}")

    def sae(self, value: Any, path: _Path) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected an SAE id, got {value!r}")
        if value not in self.topology.saes:
            near = difflib.get_close_matches(value, sorted(self.topology.saes), n=1)
            raise self.fail(path, f"no SAE with id {value!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        return value

    def sae_list(self, value: Any, path: _Path, minimum: int, maximum: int | None = None) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, "expected a list of SAE ids")
        out = [self.sae(v, path + (i,)) for i, v in enumerate(value)]
        if len(out) < minimum or (maximum is not None and len(out) > maximum):
            count = f"exactly {minimum}" if maximum == minimum else f"at least {minimum}"
            raise self.fail(path, f"expected {count} SAEs, got {len(out)}")
        for i, s in enumerate(out):
            if s in out[:i]:
                raise self.fail(path + (i,), f"SAE {s!r} listed twice")
        return out

    def number(self, m: dict[str, Any], key: str, path: _Path, default: float | None, *, minimum: float,
               integer: bool = False) -> float | int | None:
        value = m.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or \
                (integer and not float(value).is_integer()):
            kind = "an integer" if integer else "a number"
            raise self.fail(path + (key,), f"expected {kind} >= {minimum}, got {value!r}")
        return int(value) if integer else float(value)


def parse_use_cases(topology: Topology) -> list[UseCaseSpec]:
    """The validated use cases of a topology (empty without a `use_cases:` section)."""
    raw = topology.extra.get("use_cases")
    c = _Checker(topology)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise c.fail(("use_cases",), "expected a list of use cases")
    out: list[UseCaseSpec] = []
    for i, entry in enumerate(raw):
        p: _Path = ("use_cases", i)
        if not isinstance(entry, dict):
            raise c.fail(p, "expected a mapping")
        for key in ("name", "kind"):
            if key not in entry:
                raise c.fail(p, f"missing required field {key!r}")
        name = entry["name"]
        if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise c.fail(p + ("name",), f"expected a name of letters, digits, '-', '_', '.', got {name!r}")
        if any(u.name == name for u in out):
            raise c.fail(p + ("name",), f"duplicate use case name {name!r}")
        kind = entry["kind"]
        if kind not in KINDS:
            raise c.fail(p + ("kind",), f"{kind!r} is not one of {', '.join(KINDS)}")
        for key in entry:
            if key not in _FIELDS[kind]:
                near = difflib.get_close_matches(str(key), sorted(_FIELDS[kind]), n=1)
                raise c.fail(p + (key,), f"unknown field {key!r} for kind {kind}"
                             + (f" (did you mean {near[0]!r}?)" if near else ""))
        spec = _one(c, entry, p, name, kind)
        for other in out:  # the nodes count 014 requests per SAE: a window is attributed by SAE
            shared = sorted(set(spec.saes) & set(other.saes))
            if shared:
                raise c.fail(p, f"SAE {shared[0]!r} is already used by use case {other.name!r} "
                                f"(each use case needs SAEs of its own)")
        out.append(spec)
    return out


def _one(c: _Checker, m: dict[str, Any], p: _Path, name: str, kind: str) -> UseCaseSpec:
    def need(key: str) -> Any:
        if key not in m:
            raise c.fail(p, f"missing required field {key!r}")
        return m[key]

    if kind == "encryptor":
        saes = c.sae_list(need("saes"), p + ("saes",), 2, 2)
        params = {
            "rekey_bytes": c.number(m, "rekey_bytes", p, 1 << 20, minimum=1, integer=True),
            "rekey_seconds": c.number(m, "rekey_seconds", p, 2.0, minimum=0.01),
            "frame_bytes": c.number(m, "frame_bytes", p, 16384, minimum=16, integer=True),
            "window": c.number(m, "window", p, 16, minimum=1, integer=True),
            "max_mbps": c.number(m, "max_mbps", p, None, minimum=0.001),
        }
        if params["frame_bytes"] > (1 << 20):  # type: ignore[operator]
            raise c.fail(p + ("frame_bytes",), "at most 1048576 bytes per frame")
    elif kind == "hybrid":
        saes = c.sae_list(need("saes"), p + ("saes",), 2, 2)
        kem = m.get("kem", "auto")
        if kem not in KEMS:
            raise c.fail(p + ("kem",), f"{kem!r} is not one of {', '.join(KEMS)}")
        params = {"kem": kem}
    elif kind == "opot":
        saes = c.sae_list(need("saes"), p + ("saes",), 2)
        params = {
            "payload_bytes": c.number(m, "payload_bytes", p, 256, minimum=1, integer=True),
            "rekey_seconds": c.number(m, "rekey_seconds", p, 5.0, minimum=0.01),
            "window": c.number(m, "window", p, 8, minimum=1, integer=True),
        }
    else:  # cloud
        server = c.sae(need("server"), p + ("server",))
        clients = c.sae_list(need("clients"), p + ("clients",), 1)
        if server in clients:
            raise c.fail(p + ("clients", clients.index(server)), f"SAE {server!r} is the server")
        saes = [server, *clients]
        params = {"concurrency": c.number(m, "concurrency", p, len(clients), minimum=1, integer=True)}
    return UseCaseSpec(name, kind, tuple(saes), params)


def find_use_case(topology: Topology, name: str) -> UseCaseSpec:
    specs = parse_use_cases(topology)
    for spec in specs:
        if spec.name == name:
            return spec
    raise UseCaseSpecError(f"{topology.source or '<topology>'}: no use case named {name!r}"
                           f" (declared: {', '.join(s.name for s in specs) or 'none'})")
