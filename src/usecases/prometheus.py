"""What the nodes' Prometheus endpoints say about a use case's SAEs, over the use case's window.

A use case scrapes GET /metrics (network.json `nodes[NAME]["metrics_url"]`) of the nodes of its
SAEs at the start and at the end of its window and takes the deltas of
`qkd_etsi014_requests_total{sae,endpoint,code}` and `qkd_etsi014_keys_total{sae,endpoint}` for
those SAEs only (other use cases use other SAEs). The result must equal what its own 014 clients
counted (`Etsi014Client.tally`). Series are named `metric{label="value",...}` with the labels
sorted, without the `node` label.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

COMPARED = ("qkd_etsi014_requests_total", "qkd_etsi014_keys_total")


class MetricsUnavailable(Exception):
    """A node exposes no metrics URL, or its /metrics could not be read."""


def series(name: str, **labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def parse(text: str, saes: Iterable[str]) -> dict[str, float]:
    """The compared counters of the given SAEs in a /metrics text, by series name."""
    wanted = set(saes)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in COMPARED and s.labels.get("sae") in wanted:
                labels = {k: v for k, v in s.labels.items() if k != "node"}
                key = series(s.name, **labels)
                out[key] = out.get(key, 0.0) + s.value
    return out


def metrics_urls(network: dict[str, Any], saes: Iterable[str]) -> dict[str, str]:
    """node name -> metrics URL, for the nodes the SAEs are attached to."""
    out: dict[str, str] = {}
    for sae in saes:
        node = network["saes"][sae]["node"]
        url = network["nodes"][node].get("metrics_url")
        if not url:
            raise MetricsUnavailable(f"network.json gives node {node} no metrics_url")
        out[node] = str(url)
    return out


def _get(url: str) -> str:
    # plain HTTP on loopback; no proxy (an environment proxy must not see or break this)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as r:
            return str(r.read().decode())
    except OSError as exc:
        raise MetricsUnavailable(f"GET {url}: {exc}") from exc


async def scrape(network: dict[str, Any], saes: Iterable[str]) -> dict[str, float]:
    """The compared counters of these SAEs, summed over their nodes, right now."""
    saes = list(saes)
    urls = metrics_urls(network, saes)
    texts = await asyncio.gather(*(asyncio.to_thread(_get, u) for u in urls.values()))
    total: dict[str, float] = {}
    for text in texts:
        for k, v in parse(text, saes).items():
            total[k] = total.get(k, 0.0) + v
    return total


def delta(start: dict[str, float], end: dict[str, float]) -> dict[str, int]:
    """end - start per series (counters), zero deltas left out."""
    out = {k: int(round(end.get(k, 0.0) - start.get(k, 0.0))) for k in set(start) | set(end)}
    return {k: v for k, v in sorted(out.items()) if v}


def mismatches(client: dict[str, int], prom: dict[str, int]) -> list[str]:
    """Series where the client's count and the Prometheus delta differ, as readable strings."""
    keys = sorted(set(client) | set(prom))
    return [f"{k}: client {client.get(k, 0)}, prometheus {prom.get(k, 0)}" for k in keys
            if client.get(k, 0) != prom.get(k, 0)]


async def settled_delta(network: dict[str, Any], saes: list[str], start: dict[str, float],
                        client: dict[str, int], attempts: int = 10, pause: float = 0.3) -> dict[str, int]:
    """The delta at the end of the window. A server may count a request just after its reply
    left, so the end is scraped again (up to `attempts` times) until it equals the client's
    counts; the last delta is returned either way."""
    d: dict[str, int] = {}
    for i in range(attempts):
        d = delta(start, await scrape(network, saes))
        if not mismatches(client, d):
            break
        if i < attempts - 1:
            await asyncio.sleep(pause)
    return d
