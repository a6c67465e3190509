"""Key relay benchmark: `python bench/relay_bench.py` (about two minutes).

Chains of 2, 3, 4, 5 and 6 hops (3..7 nodes), each started with `qkdnet up --no-orchestrator`
(node processes, QKD modules feeding the key stores, the static route installed over NETCONF by
the launcher), one SAE on each end node, ETSI 014 over mutual TLS.

* relay.hop_latency.p50: what one more hop adds to an end-to-end relay. On every chain, one SAE
  asks enc_keys for one key for the SAE at the far end, sequentially, over one keep-alive
  connection (the request returns once the far end stored the key durably: the commit pass and the
  stores' commits, the prepare pass having run ahead of the request, see forwarder/ready.py, except
  for the first request and one in 17); the figure is the least-squares slope of the p50 latency
  against the number of hops (the p50 of each chain is printed on stderr).
* relay.efficiency: on the 6-hop chain, whose middle link is the bottleneck (a longer fibre), SAEs
  at both ends ask enc_keys for 64 keys at a time from several concurrent clients each, retrying at
  once on 503: a demand above what the bottleneck link generates, in both directions, so that both
  parity halves of every link key stream are used. After a warm-up that drains the bottleneck's
  link key store, over a 40 s window: key bits delivered end to end by enc_keys (both directions)
  / key bits the bottleneck link generated, the integral of its secret key rate as the node reports
  it over NETCONF (015 `qkdl_performance/skr`, sampled every 0.5 s). The window ends at the first
  moment after 40 s when the bottleneck's key store is back at its fill of the window's start
  (ETSI 014 `status` of two probe SAEs on its end nodes, printed on stderr); key bits taken from
  stock present at the start are added to the generated bits (never the other way round).
  Relays in flight at the window's edges are counted when they complete, the same way at both
  edges.
  Each relayed key of 256 bits costs 256 link key bits per hop, and each relay message one more
  256-bit link key per hop for its MAC: 64 keys per message bound the figure to 64/65 = 0.985.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from orchestrator.nodeclient import NS, QKD_NS, NetconfEndpoint, connect  # noqa: E402

HOPS = (2, 3, 4, 5, 6)
LAT_REQUESTS = 150
LAT_WARMUP = 30
EFF_KEYS = 64
EFF_CLIENTS = 4
EFF_WARMUP_S = 8.0
EFF_WINDOW_S = 40.0
BOTTLENECK_LOSS_DB = 12.0
KEY_BITS = 256


def chain_yaml(hops: int, bottleneck: bool) -> str:
    names = [f"n{i}" for i in range(hops + 1)]
    mid = hops // 2  # the bottleneck hop: n{mid-1} - n{mid}
    topo: dict[str, Any] = {"name": f"chain-{hops}", "nodes": [{"name": n} for n in names],
                            "fibres": [], "modules": [], "saes": [{"id": "sae-first", "node": names[0]},
                                                                  {"id": "sae-last", "node": names[-1]}]}
    for i, (x, y) in enumerate(zip(names, names[1:]), start=1):
        fibre: dict[str, Any] = {"name": f"{x}-{y}", "ends": [x, y], "length_km": 20}
        if bottleneck and i == mid:
            fibre["loss_db"] = BOTTLENECK_LOSS_DB
        topo["fibres"].append(fibre)
        topo["modules"] += [
            {"name": f"{x}-{y}-t", "technology": "dv-cow", "role": "transmitter", "node": x, "pairs_with": f"{x}-{y}-r"},
            {"name": f"{x}-{y}-r", "technology": "dv-cow", "role": "receiver", "node": y, "pairs_with": f"{x}-{y}-t"},
        ]
    if bottleneck:
        topo["saes"] += [{"id": "probe-x", "node": names[mid - 1]}, {"id": "probe-y", "node": names[mid]}]
    topo["routes"] = [{"name": "end-to-end", "path": names, "saes": ["sae-first", "sae-last"]}]
    return yaml.safe_dump(topo, sort_keys=False)


class Network:
    """`qkdnet up` in a subprocess, until stopped."""

    def __init__(self, hops: int, bottleneck: bool, workdir: Path) -> None:
        self.dir = workdir / f"chain-{hops}"
        self.dir.mkdir(parents=True)
        (self.dir / "topology.yaml").write_text(chain_yaml(hops, bottleneck))
        self.proc: subprocess.Popen[bytes] | None = None
        self.hops = hops

    async def __aenter__(self) -> dict[str, Any]:
        state = self.dir / "state"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.netctl", "up", "--no-orchestrator",
             "--topology", str(self.dir / "topology.yaml"), "--state-dir", str(state)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})
        deadline = time.monotonic() + 120
        while not (state / "network.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qkdnet up of chain-{self.hops} failed (see {state / 'logs'})")
            await asyncio.sleep(0.1)
        self.net = json.loads((state / "network.json").read_text())
        return self.net

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def sae_session(net: dict[str, Any], sae: str, limit: int = 8) -> aiohttp.ClientSession:
    s = net["saes"][sae]
    ctx = ssl.create_default_context(cafile=s["ca"])
    ctx.load_cert_chain(s["cert"], s["key"])
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=limit, keepalive_timeout=60))


def url(net: dict[str, Any], node: str, path: str) -> str:
    return f"{net['nodes'][node]['etsi014']['url']}/api/v1/keys/{path}"


async def wait_for_keys(net: dict[str, Any], first: str, timeout: float = 30) -> None:
    """Until a one-key relay succeeds (every link has keys)."""
    deadline = time.monotonic() + timeout
    async with sae_session(net, "sae-first") as s:
        while True:
            async with s.get(url(net, first, "sae-last/enc_keys"), params={"number": "1"}) as r:
                if r.status == 200:
                    return
                text = await r.text()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no relay within {timeout} s: {text}")
            await asyncio.sleep(0.2)


async def latency_p50(net: dict[str, Any], hops: int) -> float:
    first = "n0"
    await wait_for_keys(net, first)
    lat: list[float] = []
    async with sae_session(net, "sae-first", limit=1) as s:
        u = url(net, first, "sae-last/enc_keys")
        for i in range(LAT_WARMUP + LAT_REQUESTS):
            t = time.perf_counter()
            async with s.get(u, params={"number": "1"}) as r:
                body = await r.read()
            dt = time.perf_counter() - t
            if r.status != 200:  # link keys short for a moment: not a latency sample
                await asyncio.sleep(0.05)
                continue
            assert b"key_ID" in body
            if i >= LAT_WARMUP:
                lat.append(dt * 1000)
    return statistics.median(lat)


def skr_of(ep: NetconfEndpoint, qkdl_id: str) -> float:
    flt = (f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link><qkdl_id>{qkdl_id}</qkdl_id>'
           "<qkdl_performance/></qkd_link></qkd_links></qkd_node>")
    with connect(ep, timeout=10) as m:
        data = m.get(filter=("subtree", flt)).data_ele
    skr = data.find(".//q:qkdl_performance/q:skr", NS)
    return float(skr.text) if skr is not None and skr.text else 0.0


class SkrSampler:
    """Samples the bottleneck link's secret key rate (bit/s) over NETCONF; integrates it."""

    def __init__(self, ep: NetconfEndpoint, qkdl_id: str) -> None:
        self.ep, self.qkdl_id = ep, qkdl_id
        self.samples: list[tuple[float, float]] = []

    async def run(self, stop: asyncio.Event) -> None:
        while True:
            t = time.monotonic()
            self.samples.append((t, await asyncio.to_thread(skr_of, self.ep, self.qkdl_id)))
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    def bits(self, t0: float, t1: float) -> float:
        pts = self.samples
        total = 0.0
        for (ta, ra), (tb, rb) in zip(pts, pts[1:]):
            lo, hi = max(ta, t0), min(tb, t1)
            if hi > lo:  # linear between samples
                f = lambda t: ra + (rb - ra) * (t - ta) / (tb - ta)  # noqa: E731
                total += (f(lo) + f(hi)) / 2 * (hi - lo)
        return total


async def store_fill(net: dict[str, Any], x: str, y: str) -> int:
    """Keys in the bottleneck link's store, both halves (014 status of the probe SAEs)."""
    total = 0
    for node, sae, other in ((x, "probe-x", "probe-y"), (y, "probe-y", "probe-x")):
        async with sae_session(net, sae, 1) as s, s.get(url(net, node, f"{other}/status")) as r:
            total += (await r.json())["stored_key_count"]
    return total


async def efficiency(net: dict[str, Any], hops: int) -> float:
    names = [f"n{i}" for i in range(hops + 1)]
    mid = hops // 2
    x, y = names[mid - 1], names[mid]
    cfg = yaml.safe_load(Path(net["nodes"][x]["config"]).read_text())
    qkdl_id = next(m["qkdl_id"] for m in cfg["modules"] if m["peer"]["node"] == y)
    ep = NetconfEndpoint.from_json(net["nodes"][x]["netconf"])
    done: list[tuple[float, int]] = []  # (completion time, keys)
    errors: dict[int, int] = {}
    stop = asyncio.Event()
    async def client(node: str, sae: str, peer_node: str, peer: str) -> None:
        async with sae_session(net, sae, 2) as s, sae_session(net, peer, 1) as ps:
            i = 0
            while not stop.is_set():
                async with s.post(url(net, node, f"{peer}/enc_keys"), json={"number": EFF_KEYS}) as r:
                    body = await r.json(content_type=None)
                if r.status != 200:
                    errors[r.status] = errors.get(r.status, 0) + 1
                    await asyncio.sleep(0.005)
                    continue
                done.append((time.monotonic(), len(body["keys"])))
                i += 1
                if i % 10 == 0:  # the far end serves the same keys
                    ids = [{"key_ID": k["key_ID"]} for k in body["keys"]]
                    async with ps.post(url(net, peer_node, f"{sae}/dec_keys"), json={"key_IDs": ids}) as r2:
                        got = await r2.json()
                    assert r2.status == 200 and got["keys"] == body["keys"], got

    await wait_for_keys(net, names[0])
    sampler = SkrSampler(ep, qkdl_id)
    sampling = asyncio.create_task(sampler.run(stop))
    clients = [asyncio.create_task(client(names[0], "sae-first", names[-1], "sae-last")) for _ in range(EFF_CLIENTS)]
    clients += [asyncio.create_task(client(names[-1], "sae-last", names[0], "sae-first")) for _ in range(EFF_CLIENTS)]
    t_start = time.monotonic()
    while time.monotonic() - t_start < EFF_WARMUP_S or await store_fill(net, x, y) > 4 * (EFF_KEYS + 1):
        await asyncio.sleep(0.5)
        if time.monotonic() - t_start > 60:
            raise RuntimeError("the bottleneck link store did not drain: demand below capacity?")
    t0 = time.monotonic()
    fill0 = await store_fill(net, x, y)
    await asyncio.sleep(EFF_WINDOW_S)
    while (fill1 := await store_fill(net, x, y)) > fill0 and time.monotonic() - t0 < EFF_WINDOW_S + 15:
        await asyncio.sleep(0.1)
    t1 = time.monotonic()
    stop.set()
    await asyncio.gather(*clients, sampling)
    delivered = sum(n for t, n in done if t0 <= t <= t1) * KEY_BITS
    generated = sampler.bits(t0, t1)
    from_stock = max(0, fill0 - fill1) * KEY_BITS
    print(f"# bottleneck {x}-{y}: generated {generated / 1e3:.0f} kbit in {t1 - t0:.1f} s "
          f"(skr {generated / (t1 - t0) / 1e3:.1f} kbit/s), delivered {delivered / 1e3:.0f} kbit; "
          f"store fill {fill0} -> {fill1} keys; 503s during the run: {errors.get(503, 0)}", file=sys.stderr)
    return delivered / (generated + from_stock)


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


async def main(only: str | None) -> None:
    p50: dict[int, float] = {}
    eff = float("nan")
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        for hops in (HOPS if only != "efficiency" else (max(HOPS),)):
            async with Network(hops, hops == max(HOPS), Path(tmp)) as net:
                if only != "efficiency":
                    p50[hops] = await latency_p50(net, hops)
                    print(f"# {hops} hops: enc_keys (1 key, relayed) p50 {p50[hops]:.2f} ms", file=sys.stderr)
                if hops == max(HOPS) and only != "latency":
                    eff = await efficiency(net, hops)
    if only != "latency":
        print(f"relay.efficiency = {eff:.3f} (target >= 0.95)")
    if only != "efficiency":
        per_hop = slope([float(h) for h in p50], list(p50.values()))
        print(f"relay.hop_latency.p50 = {per_hop:.2f} ms (target <= 1)")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("latency", "efficiency"), help="measure one figure")
    asyncio.run(main(parser.parse_args().only))
