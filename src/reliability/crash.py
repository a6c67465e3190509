"""Crash cycles: SIGKILL a node of a running network at random moments while SAEs pull ETSI 014 keys and
relays run, restart it, repeat; then check the ledger of what the SAE clients received.

Network (`CHAIN3`, `qkdnet up --no-orchestrator`): a - b - c, one module pair per fibre, SAEs sae-a,
sae-b, sae-c, the relay route a-c via b. Flows (enc_keys by the master at its node, dec_keys of the
same IDs by the slave at its node): a->c and c->a relayed through b, a->b and c->b over the direct
links. A killer picks a node (end or middle) at random, SIGKILLs it at a random moment, counts the
requests that were in flight through that node, restarts it from its config and waits until a
flow through it succeeds again.

Checked afterwards (`CrashReport`): from the clients' ledger, no key lost, none delivered twice,
both sides' bytes identical; from the stores left on disk (read only, the network stopped),
every key association (PHYS link and relay) holds the same bytes under the same key ID at both
ends. `python -m reliability.crash --cycles 100` prints the figures in bench format.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .figures import Figure, print_figures
from .ledger import Flow, Ledger
from .network import UpNetwork, alive
from .sae import Flights, Refused, SaeClient, Unreachable

CHAIN3 = """\
name: crash-chain-3
nodes:
  - {name: a, domain: lab}
  - {name: b, domain: lab}
  - {name: c, domain: lab}
fibres:
  - {name: a-b, ends: [a, b], length_km: 10, band: C}
  - {name: b-c, ends: [b, c], length_km: 10, band: C}
modules:
  - {name: ab-t, technology: dv-bb84, role: transmitter, node: a, pairs_with: ab-r}
  - {name: ab-r, technology: dv-bb84, role: receiver, node: b, pairs_with: ab-t}
  - {name: bc-t, technology: dv-bb84, role: transmitter, node: b, pairs_with: bc-r}
  - {name: bc-r, technology: dv-bb84, role: receiver, node: c, pairs_with: bc-t}
saes:
  - {id: sae-a, node: a}
  - {id: sae-b, node: b}
  - {id: sae-c, node: c}
routes:
  - {name: a-c, path: [a, b, c], saes: [sae-a, sae-c]}
"""

FLOWS = (
    Flow("relay a->c", "sae-a", "sae-c", "a", "c", True, ("a", "b", "c")),
    Flow("relay c->a", "sae-c", "sae-a", "c", "a", True, ("c", "b", "a")),
    Flow("direct a->b", "sae-a", "sae-b", "a", "b", False, ("a",)),
    Flow("direct c->b", "sae-c", "sae-b", "c", "b", False, ("c",)),
)
DEC_BATCH = 16
RECOVERY_S = 120.0
DRAIN_S = 60.0
RETRY_UNKNOWN_S = 0.5


@dataclass
class CrashReport:
    cycles: int = 0
    kills_in_flight: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    ledger: Ledger = field(default_factory=Ledger)
    outcomes: Counter[str] = field(default_factory=Counter)  # request outcomes by kind
    not_recovered: list[str] = field(default_factory=list)
    association_mismatches: list[str] = field(default_factory=list)
    relay_orphans: int = 0  # relayed keys stored at the far end whose enc_keys reply a kill swallowed
    dead_at_end: list[str] = field(default_factory=list)  # node processes not running when the run ended
    last_error: dict[str, str] = field(default_factory=dict)  # flow -> last failure, for the log
    key_errors: dict[str, str] = field(default_factory=dict)  # key ID -> last dec_keys failure

    def figures(self, target_cycles: int) -> list[Figure]:
        s = self.ledger.summary()
        return [
            Figure("reliability.crash_cycles", self.cycles, "cycles", ">=", target_cycles),
            Figure("reliability.kills_in_flight", self.kills_in_flight, "kills", ">", 0),
            Figure("reliability.keys_delivered", s["received"], "keys", ">", 0),
            Figure("reliability.keys_lost", s["lost"], "keys", "==", 0),
            Figure("reliability.keys_reused", s["reused"], "keys", "==", 0),
            Figure("reliability.keys_mismatched", s["mismatched"], "keys", "==", 0),
            Figure("reliability.association_mismatches", len(self.association_mismatches), "keys", "==", 0),
            Figure("reliability.nodes_not_recovered", len(self.not_recovered) + len(self.dead_at_end), "restarts",
                   "==", 0),
            # informational: a kill swallowed the reply, the key went out at most once (ETSI 014)
            Figure("reliability.keys_cut_in_flight", s["cut"], "keys", ">=", 0),
            Figure("reliability.relay_orphans", self.relay_orphans, "keys", ">=", 0),
        ]


class CrashDriver:
    def __init__(self, up: UpNetwork, *, seed: int, pace_s: float = 0.05, flows: tuple[Flow, ...] = FLOWS) -> None:
        self.up = up
        self.flows = flows
        self.rnd = random.Random(seed)
        self.pace_s = pace_s
        self.flights = Flights()
        self.report = CrashReport()
        self.clients: dict[str, SaeClient] = {s: up.client(s) for f in flows for s in (f.master, f.slave)}
        self.queues: dict[str, list[str]] = {f.name: [] for f in flows}
        self.not_before: dict[str, float] = {}  # key ID -> monotonic time of its next dec_keys try
        self.successes: Counter[str] = Counter()  # flow -> successful enc_keys
        self.stop_enc = asyncio.Event()
        self.stop_dec = asyncio.Event()
        self.masters_done = asyncio.Event()  # no enc_keys answer can come any more

    # -- SAE clients ----------------------------------------------------------------------------
    async def master(self, flow: Flow) -> None:
        rnd = random.Random(self.rnd.random())
        client = self.clients[flow.master]
        while not self.stop_enc.is_set():
            n = rnd.randint(1, 8)
            with self.flights.track(frozenset(flow.nodes)):
                try:
                    keys = await client.enc_keys(flow.slave, n)
                except Refused as exc:
                    self.report.outcomes[f"enc {exc.status}"] += 1
                    await asyncio.sleep(0.1)
                    continue
                except Unreachable:
                    self.report.outcomes["enc unreachable"] += 1
                    await asyncio.sleep(0.1)
                    continue
            self.report.outcomes["enc 200"] += 1
            self.successes[flow.name] += 1
            self.report.ledger.acknowledged(flow.name, keys)
            self.queues[flow.name].extend(k.lower() for k, _ in keys)
            await asyncio.sleep(rnd.uniform(0, self.pace_s))

    async def slave(self, flow: Flow) -> None:
        client, ledger, queue = self.clients[flow.slave], self.report.ledger, self.queues[flow.name]
        while True:
            now = time.monotonic()
            queue[:] = [k for k in queue if k not in ledger.slave and k not in ledger.gone]
            ready = [k for k in queue if self.not_before.get(k, 0) <= now][:DEC_BATCH]
            if not ready:
                if self.stop_dec.is_set() or (self.masters_done.is_set() and not queue):
                    return
                await asyncio.sleep(0.05)
                continue
            with self.flights.track(frozenset({flow.slave_node})) as flight:
                try:
                    got = await client.dec_keys(flow.master, ready)
                except Refused as exc:
                    self.report.outcomes[f"dec {exc.status}"] += 1
                    self.report.last_error[f"dec {flow.name}"] = f"{exc.status} {exc.reasons()}"[:300]
                    self._refused(exc, ready)
                    got = []
                except Unreachable as exc:
                    self.report.outcomes["dec unreachable"] += 1
                    self.report.last_error[f"dec {flow.name}"] = str(exc)
                    for k in ready:
                        self.not_before[k] = time.monotonic() + 0.2
                    got = []
                if flight.cut:
                    ledger.mark_cut(ready)
                if not got:
                    for k in ready:
                        self.report.key_errors[k] = self.report.last_error.get(f"dec {flow.name}", "")[:80]
            if got:
                self.report.outcomes["dec 200"] += 1
                ledger.received(got)

    def _refused(self, exc: Refused, ids: list[str]) -> None:
        later = time.monotonic() + RETRY_UNKNOWN_S
        named = {str(d.get("key_ID", "")).lower(): str(d.get("reason", ""))
                 for d in exc.body.get("details") or [] if isinstance(d, dict)}
        for k in ids:
            reason = named.get(k)
            if reason == "already delivered":
                self.report.ledger.refused_for_good(k, reason)
            elif reason is not None or exc.status != 400:
                self.not_before[k] = later  # not (yet) at the slave's node, or the node is busy
            # keys the refusal does not name were refused only with the others: retry at once

    # -- killer ---------------------------------------------------------------------------------
    async def killer(self, cycles: int, nodes: tuple[str, ...]) -> None:
        for _ in range(cycles):
            await asyncio.sleep(self.rnd.uniform(0.1, 1.5))
            node = self.rnd.choice(nodes)
            hit = self.flights.kill(node)
            await self.up.kill(node)
            self.report.kills[node] += 1
            if hit:
                self.report.kills_in_flight += 1
            await asyncio.sleep(self.rnd.uniform(0, 0.3))
            await self.up.restart(node)
            self.report.cycles += 1
            if not await self._recovered(node):
                self.report.not_recovered.append(f"cycle {self.report.cycles}: {node}")

    async def _recovered(self, node: str) -> bool:
        """Wait until a flow through `node` succeeded again after its restart."""
        through = [f.name for f in self.flows if node in f.nodes or node == f.slave_node]
        before = {f: self.successes[f] for f in through}
        deadline = time.monotonic() + RECOVERY_S
        while time.monotonic() < deadline:
            if any(self.successes[f] > before[f] for f in through):
                return True
            await asyncio.sleep(0.1)
        return False

    async def warm_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.successes[f.name] for f in self.flows):
            if time.monotonic() > deadline:
                missing = [f.name for f in self.flows if not self.successes[f.name]]
                raise TimeoutError(f"no keys on {', '.join(missing)} after {timeout:.0f} s: {self.report.outcomes}")
            await asyncio.sleep(0.1)

    async def run(self, cycles: int, nodes: tuple[str, ...] = ("a", "b", "c")) -> CrashReport:
        return await self.under_load(lambda: self.killer(cycles, nodes))

    async def under_load(self, action: Callable[[], Awaitable[object]], after_s: float = 1.0) -> CrashReport:
        """Start every flow, wait until each delivered keys, run `action`, let traffic run `after_s`
        more, stop the masters and let the slaves take every key still waiting."""
        n = len(self.flows)
        tasks = [asyncio.create_task(self.master(f)) for f in self.flows]
        tasks += [asyncio.create_task(self.slave(f)) for f in self.flows]
        try:
            await self.warm_up()
            await action()
            await asyncio.sleep(after_s)
            self.stop_enc.set()
            await asyncio.wait_for(asyncio.gather(*tasks[:n]), 60)
            self.masters_done.set()
            try:
                await asyncio.wait_for(asyncio.gather(*tasks[n:]), DRAIN_S)
            except asyncio.TimeoutError:
                pass  # keys still not at the slave: counted lost (or cut) by the ledger
        finally:
            self.stop_enc.set()
            self.stop_dec.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in self.clients.values():
                await c.aclose()
        return self.report


# -- the stores left on disk ---------------------------------------------------------------------
def read_store(path: Path) -> dict[str, dict[str, bytes]]:
    """assoc_id -> key ID -> bytes (zeros where delivered), read only."""
    out: dict[str, dict[str, bytes]] = {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        sizes = dict(db.execute("SELECT assoc_id, key_size_bits FROM association"))
        for assoc, n, ids, material in db.execute("SELECT assoc_id, n, key_ids, material FROM block"):
            kb = sizes[assoc] // 8
            keys = out.setdefault(assoc, {})
            for i in range(n):
                kid = str(uuid.UUID(bytes=bytes(ids[16 * i:16 * i + 16])))
                keys[kid] = bytes(material[kb * i:kb * (i + 1)])
    return out


def store_paths(state: Path, nodes: list[str]) -> dict[str, Path]:
    out = {}
    for n in nodes:
        found = sorted((state / "nodes" / n).rglob("keystore.sqlite3"))
        if found:
            out[n] = found[0]
    return out


def association_mismatches(state: Path, nodes: list[str]) -> tuple[list[str], dict[str, dict[str, dict[str, bytes]]]]:
    """Key IDs held by both ends of an association with different bytes (both not yet erased)."""
    stores = {n: read_store(p) for n, p in store_paths(state, nodes).items()}
    bad = []
    names = sorted(stores)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            for assoc in set(stores[x]) & set(stores[y]):
                kx, ky = stores[x][assoc], stores[y][assoc]
                for kid in set(kx) & set(ky):
                    zero = bytes(len(kx[kid]))
                    if kx[kid] != zero and ky[kid] != zero and kx[kid] != ky[kid]:
                        bad.append(f"{assoc} {kid} at {x}/{y}")
    return bad, stores


def relay_orphans(stores: dict[str, dict[str, dict[str, bytes]]], ledger: Ledger, route: str) -> int:
    """Relayed keys present (not erased) at an end node that no SAE was ever acknowledged."""
    orphans = set()
    for keys in (s.get(route, {}) for s in stores.values()):
        for kid, material in keys.items():
            if material != bytes(len(material)) and kid not in ledger.master:
                orphans.add(kid)
    return len(orphans)


async def crash_run(cycles: int, state: Path, seed: int = 1) -> CrashReport:
    state.mkdir(parents=True, exist_ok=True)
    topo = state / "crash-chain-3.yaml"
    topo.write_text(CHAIN3)
    up = await UpNetwork.up(topo, state / "net", orchestrate=False)
    try:
        driver = CrashDriver(up, seed=seed)
        report = await driver.run(cycles)
        report.dead_at_end = [n for n, pid in up.pids().items() if not alive(pid)]
    finally:
        await up.stop()
    report.association_mismatches, stores = association_mismatches(state / "net", sorted(up.net["nodes"]))
    report.relay_orphans = relay_orphans(stores, report.ledger, up.net["routes"]["a-c"]["qkdl_id"])
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reliability.crash", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--state-dir", help="where the network runs (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.state_dir:
        report = asyncio.run(crash_run(args.cycles, Path(args.state_dir), args.seed))
    else:
        with tempfile.TemporaryDirectory(prefix="qkdnet-crash-") as tmp:
            report = asyncio.run(crash_run(args.cycles, Path(tmp), args.seed))
    print(f"# seed {args.seed}; kills per node {dict(report.kills)}; outcomes {dict(report.outcomes)}", flush=True)
    for line in report.not_recovered + report.association_mismatches[:10]:
        print(f"# {line}", flush=True)
    return 0 if print_figures(report.figures(args.cycles)) else 1


if __name__ == "__main__":
    sys.exit(main())
