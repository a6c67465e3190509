"""Soak: run the MadQCI twin for a given time under load and report growth, key counts and errors.

`qkdnet up --duration` on topologies/madqci.yaml (examples/two-domains.yaml while that file does not
exist) with its use cases, every node recording its NETCONF messages. Extra load: the soak adds one SAE
`soak-NODE` on every node (the use cases' SAEs stay theirs alone) and, for every ordered pair of them
on different nodes whose node answers 014 `status` (direct neighbours, or a route open to any SAE), a
master client pulls keys with enc_keys and the slave takes them by ID (the ledger of
`reliability.ledger`); a management loop reads every node over NETCONF (`<get>`) and RESTCONF and
every orchestrator's REST API every 5 s. Every `--interval` seconds the RSS, PSS and open fds of every
node and orchestrator process are sampled.

Figures (bench format): soak.rss_growth / soak.pss_growth (MB, largest over the processes: last
sample minus the first after warm-up, a quarter of the duration, so that caches have filled),
soak.fd_growth, soak.keys_delivered, soak.errors (unreachable nodes, 5xx other than 503, failed
management reads, tracebacks in logs), soak.refusals (503: link keys short, rate limits:
back-pressure, not errors), soak.use_cases_not_served, reliability.keys_lost / keys_reused, and
reliability.leaks (a scan of the NETCONF record, REST/RESTCONF bodies and every log for the keys).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import ssl
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .crash import CrashDriver
from .figures import Figure, print_figures
from .ledger import Flow
from .network import UpNetwork
from .procstat import ProcSample, sample
from .sae import Refused, Unreachable
from .secrecy import KeyIndex, files_under

REPO = Path(__file__).resolve().parents[2]
TWIN = REPO / "topologies" / "madqci.yaml"
FALLBACK = REPO / "examples" / "two-domains.yaml"
SCAN_KEYS = 5000  # keys (at random) the leak scan looks for
USE_CASE_MARGIN_S = 60.0  # `qkdnet up --duration`: the soak's duration plus this (flow discovery, drain)


def twin_topology() -> Path:
    return TWIN if TWIN.exists() else FALLBACK


def with_soak_saes(topology: Path, out: Path) -> Path:
    """A copy of the topology with one SAE `soak-NODE` on every node: the soak's own 014 load must not
    use the use cases' SAEs (each use case checks the nodes' per-SAE counters against its own)."""
    topo = yaml.safe_load(topology.read_text())
    taken = {s["id"] for s in topo.get("saes") or []}
    topo.setdefault("saes", [])
    topo["saes"] += [{"id": f"soak-{n['name']}", "node": n["name"]} for n in topo["nodes"]
                     if f"soak-{n['name']}" not in taken]
    out.write_text(yaml.safe_dump(topo, sort_keys=False))
    return out


@dataclass
class SoakReport:
    topology: str = ""
    duration_s: float = 0.0
    flows: list[str] = field(default_factory=list)
    samples: dict[str, list[ProcSample]] = field(default_factory=dict)  # process -> samples over time
    management: Counter[str] = field(default_factory=Counter)
    log_tracebacks: int = 0
    leaks: int = 0
    scanned_keys: int = 0
    use_cases: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> DIR/usecases/NAME.json
    up_exit: int | None = None  # exit code of `qkdnet up` (0: every use case served)
    driver: CrashDriver | None = None

    def growth(self, attr: str) -> tuple[float, str]:
        worst, who = 0.0, ""
        for name, s in self.samples.items():
            if len(s) >= 2:
                g = getattr(s[-1], attr) - getattr(s[0], attr)
                if g > worst or not who:
                    worst, who = g, name
        return worst, who

    def errors(self) -> int:
        assert self.driver is not None
        o = self.driver.report.outcomes
        bad = sum(v for k, v in o.items() if k.endswith("unreachable") or (k.split()[-1].startswith("5")
                                                                           and k.split()[-1] != "503"))
        return bad + self.management["failed"] + self.log_tracebacks

    def figures(self) -> list[Figure]:
        assert self.driver is not None
        o, s = self.driver.report.outcomes, self.driver.report.ledger.summary()
        rss, _ = self.growth("rss_kb")
        pss, _ = self.growth("pss_kb")
        fds, _ = self.growth("fds")
        return [
            Figure("soak.duration", round(self.duration_s), "s", ">", 0),
            Figure("soak.rss_growth", rss / 1024, "MB", "<=", 20),
            Figure("soak.pss_growth", pss / 1024, "MB", "<=", 20),
            Figure("soak.fd_growth", fds, "fds", "<=", 10),
            Figure("soak.keys_delivered", s["received"], "keys", ">", 0),
            Figure("soak.errors", self.errors(), "errors", "==", 0),
            Figure("soak.refusals", sum(v for k, v in o.items() if k.endswith("503")), "requests", ">=", 0),
            Figure("soak.management_reads", self.management["ok"], "reads", ">", 0),
            Figure("soak.use_cases_not_served", sum(1 for u in self.use_cases.values() if not u.get("served")),
                   "use cases", "==", 0),
            Figure("reliability.keys_lost", s["lost"], "keys", "==", 0),
            Figure("reliability.keys_reused", s["reused"] + s["mismatched"], "keys", "==", 0),
            Figure("reliability.leaks", self.leaks, "leaks", "==", 0),
        ]


async def discover_flows(up: UpNetwork, timeout: float = 90) -> list[Flow]:
    """Ordered SAE pairs on different nodes whose master's node has a key association for them."""
    saes = {k: v for k, v in up.net["saes"].items() if k.startswith("soak-")}
    pairs = [(m, s) for m in saes for s in saes if saes[m]["node"] != saes[s]["node"]]
    found: list[Flow] = []
    deadline = time.monotonic() + timeout
    while pairs and time.monotonic() < deadline:
        left = []
        for m, s in pairs:
            async with up.client(m) as c:
                try:
                    await c.status(s)
                    found.append(Flow(f"{m}->{s}", m, s, saes[m]["node"], saes[s]["node"], False,
                                      (saes[m]["node"],)))
                except (Refused, Unreachable):
                    left.append((m, s))
        pairs = left
        if pairs and not found:
            await asyncio.sleep(1.0)
        else:
            break
    return found


async def management_loop(up: UpNetwork, report: SoakReport, stop: asyncio.Event, period: float,
                          captured: dict[str, bytes]) -> None:
    from orchestrator.nodeclient import NetconfEndpoint, connect

    ctx = ssl.create_default_context(cafile=up.net["ca"])
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), headers=auth) as http:
        n = 0
        while not stop.is_set():
            n += 1
            for name, info in up.net["nodes"].items():
                ep = NetconfEndpoint.from_json(info["netconf"])

                def get(ep: NetconfEndpoint = ep) -> bytes:
                    with connect(ep) as m:
                        return m.get().data_xml.encode()

                try:
                    data = await asyncio.to_thread(get)
                    async with http.get(info["restconf"]["url"] + "/data?content=nonconfig") as r:
                        body = await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"RESTCONF {r.status}")
                    report.management["ok"] += 1
                    if n % 10 == 1:  # keep the capture bounded: every tenth round
                        captured[f"netconf get {name} #{n}"] = data
                        captured[f"restconf {name} #{n}"] = body
                except Exception:  # counted as an error of the run, never hidden
                    report.management["failed"] += 1
            for domain, orch in (up.net.get("orchestrators") or {}).items():
                for path in ("/routes", "/links", "/health"):
                    try:
                        async with http.get(orch["url"] + path) as r:
                            body = await r.read()
                            if r.status != 200:
                                raise RuntimeError(f"{path} {r.status}")
                        report.management["ok"] += 1
                        if n % 10 == 1:
                            captured[f"rest {domain} {path} #{n}"] = body
                    except Exception:
                        report.management["failed"] += 1
            try:
                await asyncio.wait_for(stop.wait(), period)
            except asyncio.TimeoutError:
                pass


def processes(up: UpNetwork) -> dict[str, int]:
    out = {f"node {n}": pid for n, pid in up.pids().items()}
    for d, o in (up.net.get("orchestrators") or {}).items():
        out[f"orchestrator {d}"] = int(o["pid"])
    return out


async def soak_run(duration: float, state: Path, *, interval: float = 10.0, warmup: float | None = None,
                   seed: int = 1, topology: Path | None = None) -> SoakReport:
    state.mkdir(parents=True, exist_ok=True)
    source = topology or twin_topology()
    report = SoakReport(topology=str(source))
    topo = with_soak_saes(source, state / f"soak-{source.name}")
    record = state / "netconf-record.xml"
    env = dict(os.environ, QKDNODE_NETCONF_RECORD=str(record))
    up = await UpNetwork.up(topo, state / "net", env=env, timeout=300,
                            extra_args=("--duration", str(duration + USE_CASE_MARGIN_S)))
    t_up = time.monotonic()
    captured: dict[str, bytes] = {}
    try:
        flows = await discover_flows(up)
        if not flows:
            raise RuntimeError("no SAE pair of the topology has a key association")
        report.flows = [f.name for f in flows]
        driver = CrashDriver(up, seed=seed, flows=tuple(flows))
        report.driver = driver
        stop = asyncio.Event()
        t0 = time.monotonic()

        async def run_for() -> None:
            await asyncio.sleep(warmup if warmup is not None else max(10.0, duration / 4))
            procs = processes(up)
            end = t0 + duration
            while True:
                for name, pid in procs.items():
                    s = sample(pid)
                    if s is not None:
                        report.samples.setdefault(name, []).append(s)
                if time.monotonic() >= end:
                    break
                await asyncio.sleep(min(interval, max(0.0, end - time.monotonic())))

        mgmt = asyncio.create_task(management_loop(up, report, stop, 5.0, captured))
        try:
            await driver.under_load(run_for, after_s=0.0)
        finally:
            stop.set()
            await mgmt
        report.duration_s = time.monotonic() - t0
        # the use cases run for `qkdnet up --duration` - 8 s; qkdnet up then writes their results and exits
        report.up_exit = await up.wait_exit(max(0.0, duration + USE_CASE_MARGIN_S - (time.monotonic() - t_up)) + 120)
    finally:
        await up.stop()
    for p in sorted((up.state / "usecases").glob("*.json")):
        report.use_cases[p.stem] = json.loads(p.read_text())
    logs = files_under(up.state, skip=("keystore.sqlite3*", "*.key", "*_key", "ssh_host_*"))
    report.log_tracebacks = sum(b.count(b"Traceback") for n, b in logs.items() if n.endswith(".log"))
    captured.update({f"state {k}": v for k, v in logs.items()})
    if record.exists():
        captured["netconf record"] = record.read_bytes()
    keys = list(report.driver.report.ledger.master.values()) if report.driver else []
    chosen = random.Random(seed).sample(keys, min(SCAN_KEYS, len(keys)))
    index = KeyIndex(chosen)
    report.scanned_keys = index.count
    report.leaks = sum(len(index.scan(k, v)) for k, v in captured.items())
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between process samples")
    ap.add_argument("--topology", help="default: topologies/madqci.yaml, else examples/two-domains.yaml")
    ap.add_argument("--state-dir", help="where the network runs (default: a temporary directory)")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args(argv)
    topo = Path(args.topology) if args.topology else None

    def go(state: Path) -> SoakReport:
        return asyncio.run(soak_run(args.duration, state, interval=args.interval, seed=args.seed, topology=topo))

    if args.state_dir:
        report = go(Path(args.state_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="qkdnet-soak-") as tmp:
            report = go(Path(tmp))
    assert report.driver is not None
    rss = report.growth("rss_kb")
    fds = report.growth("fds")
    print(f"# topology {report.topology}; flows {', '.join(report.flows)}", flush=True)
    print(f"# largest RSS growth: {rss[1]}; largest fd growth: {fds[1]}; leak scan over {report.scanned_keys} keys",
          flush=True)
    served = {n: (u.get("served"), u.get("reason", "")) for n, u in report.use_cases.items()}
    print(f"# qkdnet up exit {report.up_exit}; use cases {served}", flush=True)
    print(f"# outcomes {json.dumps(dict(report.driver.report.outcomes), sort_keys=True)}; "
          f"management {dict(report.management)}", flush=True)
    return 0 if print_figures(report.figures()) else 1


if __name__ == "__main__":
    sys.exit(main())
