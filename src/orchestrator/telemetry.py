"""Telemetry time series: sample every node's Prometheus `/metrics` into a CSV file.

`qkdnet up` runs `run_sampler` while the network is up; it writes one row per PHYS link and
reporting node per sample to `DIR/telemetry.csv` (columns `CSV_FIELDS`; `qber` is a fraction, empty
for CV links, `snr_db` empty for DV links). `qkdnet plot` (orchestrator.plot) draws them. Only the
nodes' public metrics are read: the figures the NMS would scrape, never key material.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

CSV_FIELDS = ("timestamp", "node", "qkdl_id", "skr_bps", "qber", "snr_db", "available_bits")
DEFAULT_INTERVAL_S = 3.0
SCRAPE_TIMEOUT_S = 2.0


def metrics_urls(network: dict[str, Any]) -> dict[str, str]:
    """node name -> metrics URL, from a network.json document."""
    return {name: str(info["metrics_url"]) for name, info in sorted((network.get("nodes") or {}).items())
            if info.get("metrics_url")}


def link_rows(node: str, text: str, timestamp: float) -> list[dict[str, Any]]:
    """The CSV rows of one node's scrape: one per PHYS link it reports."""
    by_link: dict[str, dict[str, Any]] = {}
    avail: dict[str, float] = {}
    wanted = {"qkd_link_skr_bps": "skr_bps", "qkd_link_qber_ratio": "qber", "qkd_link_snr_db": "snr_db"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            qkdl_id = s.labels.get("qkdl_id")
            if qkdl_id is None:
                continue
            if s.name in wanted:
                row = by_link.setdefault(qkdl_id, {"timestamp": f"{timestamp:.3f}", "node": node, "qkdl_id": qkdl_id,
                                                   "skr_bps": "", "qber": "", "snr_db": "", "available_bits": ""})
                row[wanted[s.name]] = repr(float(s.value))
            elif s.name == "qkd_keystore_available_bits":
                avail[qkdl_id] = float(s.value)
    for qkdl_id, row in by_link.items():
        if qkdl_id in avail:
            row["available_bits"] = str(int(avail[qkdl_id]))
    return [by_link[q] for q in sorted(by_link)]


async def sample_once(session: aiohttp.ClientSession, urls: dict[str, str]) -> list[dict[str, Any]]:
    """Scrape every node once (concurrently); a node that does not answer is left out."""

    async def one(node: str, url: str) -> list[dict[str, Any]]:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as r:
                if r.status != 200:
                    log.info("telemetry: %s answered %d", url, r.status)
                    return []
                text = await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.info("telemetry: %s: %s", node, type(exc).__name__)
            return []
        return link_rows(node, text, time.time())

    results = await asyncio.gather(*(one(n, u) for n, u in urls.items()))
    return [row for rows in results for row in rows]


def append_rows(out_csv: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Append one sampling round with a single write (a reader sees whole rounds, practically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    if not out_csv.exists() or out_csv.stat().st_size == 0:
        w.writeheader()
    n = 0
    for row in rows:
        w.writerow(row)
        n += 1
    with open(out_csv, "a", newline="") as f:
        f.write(buf.getvalue())
    return n


def _read_network(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


async def run_sampler(network_json_path: Path | str, out_csv: Path | str, interval_s: float = DEFAULT_INTERVAL_S,
                      stop_event: asyncio.Event | None = None) -> int:
    """Sample every node of the network every `interval_s` seconds into `out_csv` (appending)
    until `stop_event` is set; returns the number of rows written. network.json is re-read every
    round (it is written once the network is up and rewritten by the launcher)."""
    network_json_path, out_csv = Path(network_json_path), Path(out_csv)
    stop = stop_event or asyncio.Event()
    written = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            t0 = time.monotonic()
            network = _read_network(network_json_path)
            urls = metrics_urls(network) if network else {}
            if urls:
                rows = await sample_once(session, urls)
                written += await asyncio.to_thread(append_rows, out_csv, rows)
            try:
                await asyncio.wait_for(stop.wait(), max(0.05, interval_s - (time.monotonic() - t0)))
            except asyncio.TimeoutError:
                pass
    return written


def read_rows(path: Path | str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
