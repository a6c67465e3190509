"""Whole-network figures: `python bench/network_bench.py [--only 9|50]` (a few minutes).

Each network is started the way an operator starts it, `qkdnet up --topology FILE` in a
subprocess, and timed from the command's start until it is up:

* every node process printed READY, every domain's orchestrator answers, the declared direct links
  are built and the declared key routes provisioned (`qkdnet up` writes network.json only then), and
* every PHYS QKD link reports a secret key rate (orchestrators' `GET /links`: `up` and `skr_bps` > 0)
  and every declared route is `up` (`GET /routes`).

* `net.boot_9`: the MadQCI twin (topologies/madqci.yaml: 9 nodes, 2 domains).
* `net.boot_50`: a generated network of 50 nodes, a random 3-regular mesh (75 fibres of 40-70 km: key rates of 0.5-2 Mbit/s,
  ~300,000 keys a second over the network while the key stores and module buffers fill, which takes most of two cores during the boot),
  one DV BB84 module pair on every fibre (simulated in 1 s steps, `tick_s`), one SAE on every node, and 10 declared key routes
  between random SAE pairs; one domain. Target: < 60 s on this 2-core machine.
* `net.rss_per_node`: on the 50-node network once up, the mean proportional set size (PSS) of the
  node processes, from /proc/PID/smaps_rollup. Target: <= 80 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

ROOT = Path(__file__).resolve().parents[1]
MADQCI = ROOT / "topologies" / "madqci.yaml"
UP_TIMEOUT_S = 300.0
TICK_S = 1.0  # the simulated modules' step (default 0.1 s): 150 modules on two cores


def generated_topology(nodes: int = 50, degree: int = 3, routes: int = 10, seed: int = 5) -> dict[str, Any]:
    rnd = random.Random(seed)
    g = nx.random_regular_graph(degree, nodes, seed=seed)
    while not nx.is_connected(g):
        seed += 1
        g = nx.random_regular_graph(degree, nodes, seed=seed)
    names = {i: f"n{i:02d}" for i in g.nodes}
    topo: dict[str, Any] = {
        "name": f"mesh-{nodes}", "description": f"generated: random {degree}-regular mesh of {nodes} nodes",
        "nodes": [{"name": names[i], "domain": "lab"} for i in sorted(g.nodes)],
        "fibres": [], "modules": [], "saes": [{"id": f"sae-{names[i]}", "node": names[i]} for i in sorted(g.nodes)],
        "routes": [],
    }
    for a, b in sorted(g.edges):
        fa, fb = names[a], names[b]
        f = f"{fa}-{fb}"
        topo["fibres"].append({"name": f, "ends": [fa, fb], "length_km": rnd.randint(40, 70), "band": "C"})
        topo["modules"] += [
            {"name": f"{f}-tx", "technology": "dv-bb84", "role": "transmitter", "node": fa, "pairs_with": f"{f}-rx",
             "tick_s": TICK_S},
            {"name": f"{f}-rx", "technology": "dv-bb84", "role": "receiver", "node": fb, "pairs_with": f"{f}-tx",
             "tick_s": TICK_S},
        ]
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < routes:
        a, b = rnd.sample(sorted(g.nodes), 2)
        if nx.shortest_path_length(g, a, b) >= 2:
            pairs.add((min(a, b), max(a, b)))
    for a, b in sorted(pairs):
        path = [names[x] for x in nx.shortest_path(g, a, b)]
        topo["routes"].append({"name": f"r-{names[a]}-{names[b]}", "path": path, "bandwidth_bps": 1000,
                               "saes": [f"sae-{names[a]}", f"sae-{names[b]}"]})
    return topo


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _all_up(net: dict[str, Any]) -> bool:
    orchs = net.get("orchestrators") or {}
    if not orchs:
        return True
    for o in orchs.values():
        links = _get(f"{o['url']}/links")["phys"]
        if not links or not all(ln["up"] and ln["skr_bps"] > 0 for ln in links):
            return False
        if not all(r["status"] == "up" for r in _get(f"{o['url']}/routes")["routes"]):
            return False
    return True


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def node_pids(state: Path) -> list[int]:
    """Node daemons of this network, as network.json names them (exec'd or forked by the zygote)."""
    net = json.loads((state / "network.json").read_text())
    return [int(n["pid"]) for n in net["nodes"].values() if n.get("pid") and Path(f"/proc/{n['pid']}").exists()]


def boot(topology: Path, state: Path, measure_rss: bool = False) -> tuple[float, float | None, int]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(topology),
                             "--state-dir", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        path = state / "network.json"
        while not path.exists():
            if proc.poll() is not None or time.monotonic() - t0 > UP_TIMEOUT_S:
                raise RuntimeError(f"qkdnet up of {topology.name} failed (see {state / 'logs'})")
            time.sleep(0.1)
        net = json.loads(path.read_text())
        while not _all_up(net):
            if proc.poll() is not None or time.monotonic() - t0 > UP_TIMEOUT_S:
                raise RuntimeError(f"{topology.name}: links or routes not up in {UP_TIMEOUT_S:.0f} s")
            time.sleep(0.25)
        elapsed = time.monotonic() - t0
        rss = None
        pids = node_pids(state)
        if measure_rss:
            time.sleep(5.0)  # steady state: modules feeding, orchestrators polling
            rss = statistics.mean(pss_mb(p) for p in pids)
        return elapsed, rss, len(pids)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["9", "50"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="net-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "9"):
            if MADQCI.exists():
                t, _, n = boot(MADQCI, work / "madqci")
                print(f"# madqci: {n} node processes", file=sys.stderr)
                print(f"net.boot_9 = {t:.1f} s (target < 60)")
            else:
                print(f"# {MADQCI} missing: net.boot_9 not measured", file=sys.stderr)
        if args.only in (None, "50"):
            topo = work / "mesh-50.yaml"
            topo.write_text(yaml.safe_dump(generated_topology(), sort_keys=False))
            t, rss, n = boot(topo, work / "mesh-50", measure_rss=True)
            if n != 50:
                raise RuntimeError(f"expected 50 node processes, found {n}")
            print(f"net.boot_50 = {t:.1f} s (target < 60)")
            print(f"net.rss_per_node = {rss:.1f} MB (target <= 80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
