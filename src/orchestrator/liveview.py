"""The terminal view of a running network (`qkdnet up` live, `qkdnet status`): per PHYS link its
technology, loss, secret key rate, QBER or SNR and key store fill; the key routes and their
reserved rates; the use cases' metrics. Read from the orchestrators' REST API, the nodes'
Prometheus `/metrics` and `DIR/usecases/*.json`, never from key material.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.markup import escape
from rich.table import Table

TIMEOUT_S = 5.0


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
        return json.loads(r.read())


def _scrape(url: str) -> dict[tuple[str, str], float]:
    """(metric, qkdl_id) -> value of a node's per-link gauges."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            q = s.labels.get("qkdl_id")
            if q:
                out[s.name, q] = s.value
    return out


@dataclass
class NetworkView:
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    use_cases: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def collect(network: dict[str, Any], state_dir: Path | str) -> NetworkView:
    view = NetworkView()
    for domain, orch in sorted((network.get("orchestrators") or {}).items()):
        url = str(orch["url"]).rstrip("/")
        try:
            for ln in _get_json(f"{url}/links")["phys"]:
                view.links.setdefault(ln["qkdl_id"], {**ln, "fill": {}})
            for r in _get_json(f"{url}/routes")["routes"]:
                view.routes.setdefault(r["id"], {"id": r["id"], "parts": []})["parts"].append({**r, "domain": domain})
        except Exception as exc:  # an orchestrator down is part of the picture, not a crash
            view.problems.append(f"orchestrator {domain}: {type(exc).__name__}: {exc}")
    for name, node in sorted(network.get("nodes", {}).items()):
        if not node.get("metrics_url"):
            continue
        try:
            m = _scrape(node["metrics_url"])
        except Exception as exc:
            view.problems.append(f"node {name}: metrics: {type(exc).__name__}")
            continue
        for (metric, q), v in m.items():
            ln = view.links.get(q)
            if ln is None:
                continue
            if metric == "qkd_keystore_available_bits":
                ln["fill"][name] = v
            elif metric == "qkd_link_qber_ratio":
                ln["qber"] = v
            elif metric == "qkd_link_snr_db":
                ln["snr_db"] = v
            elif metric == "qkd_link_loss_db":
                ln["loss_db"] = v
    for path in sorted((Path(state_dir) / "usecases").glob("*.json")):
        try:
            view.use_cases.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return view


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render(view: NetworkView, title: str = "") -> Group:
    links = Table(title=f"QKD links {title}".strip())
    for col in ("link", "technology", "loss dB", "SKR kbit/s", "QBER % / SNR dB", "key store kbit"):
        links.add_column(col)
    for ln in sorted(view.links.values(), key=lambda x: (str(x["a"]), str(x["b"]))):
        loss = ln.get("loss_db", ln.get("channel_att_db"))
        err = (f"{100 * ln['qber']:.2f} %" if ln.get("qber") is not None else
               f"{ln['snr_db']:.2f} dB" if ln.get("snr_db") is not None else "-")
        fill = " / ".join(f"{n} {v / 1000:.0f}" for n, v in sorted(ln["fill"].items())) or "-"
        skr = f"{ln['skr_bps'] / 1000:.2f}" if ln["up"] else "[red]down[/red]"
        links.add_row(f"{ln['a']} - {ln['b']}", str(ln.get("technology") or "-"), _num(loss, ".1f"), skr, err, fill)
    routes = Table(title="key routes")
    for col in ("route", "SAEs", "status", "reserved kbit/s", "path"):
        routes.add_column(col)
    for rid, entry in sorted(view.routes.items()):
        # a cross-domain route: each domain's orchestrator knows its own segment; the origin's first
        parts = sorted(entry["parts"], key=lambda p: not p["origin"])
        first = parts[0]
        segs = []
        for part in parts:
            paths = " | ".join(" > ".join(p["nodes"]) for p in part["paths"])
            if paths:
                segs.append(paths + (escape(f" [{part['domain']}]") if len(parts) > 1 else ""))
        dst = first.get("peer_dst") or first["dst"]
        status = "/".join(sorted({p["status"] for p in parts}))
        routes.add_row(f"{first['src']} -> {dst} ({rid[:8]})", ", ".join(first["saes"]), status,
                       f"{first['rate_bps'] / 1000:.1f}", "  +  ".join(segs) or "-")
    parts: list[Any] = [links, routes]
    if view.use_cases:
        uc = Table(title="use cases")
        for col in ("use case", "served", "metrics"):
            uc.add_column(col)
        for u in view.use_cases:
            ms = ", ".join(f"{k} {m['value']:g} {m['unit']}" for k, m in u.get("metrics", {}).items())
            uc.add_row(u["name"], "yes" if u.get("served") else f"[red]no: {escape(str(u.get('reason', '')))}[/red]", escape(ms))
        parts.append(uc)
    if view.problems:
        parts.append("\n".join(f"[yellow]{escape(p)}[/yellow]" for p in view.problems))
    return Group(*parts)


def network_view(state_dir: Path | str, title: str = "") -> Group:
    network = json.loads((Path(state_dir) / "network.json").read_text())
    return render(collect(network, state_dir), title or str(network.get("topology", "")))
