"""`qkdnet up` runs the topology's use cases: one `qkd-usecase` process per declared use case, in
parallel, each an ordinary mTLS client of the nodes' ETSI 014 interface (README "Use cases").

Results go to `DIR/usecases/NAME.json`, each process's output to `DIR/logs/usecase-NAME.log`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from usecases.result import failed
from usecases.spec import UseCaseSpec, parse_use_cases

from .reaper import spawn, terminate
from .topology import Topology

#: seconds a use case process may take beyond its traffic duration (peer start-up, scrapes)
GRACE_S = 90.0
#: seconds of `qkdnet up --duration S` kept for spawning, scraping and reporting
SETUP_S = 8.0
#: traffic seconds when `qkdnet up` runs without --duration
DEFAULT_S = 30.0
#: seconds a use case process group gets between SIGTERM and SIGKILL when it is stopped
STOP_GRACE_S = 3.0


async def _run_one(state_dir: Path, topology: Path, spec: UseCaseSpec, duration_s: float) -> dict[str, Any]:
    out = state_dir / "usecases" / f"{spec.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    log = open(state_dir / "logs" / f"usecase-{spec.name}.log", "ab")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    try:
        proc = await spawn(  # its own process group: it and its peers (reaper.py)
            sys.executable, "-m", "usecases.cli", "--network", str(state_dir / "network.json"),
            "--topology", str(topology), "--name", spec.name, "--duration", f"{duration_s:g}", "--out", str(out),
            stdout=log, stderr=log, env=env)
    finally:
        log.close()
    try:
        code = await asyncio.wait_for(proc.wait(), duration_s + GRACE_S)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        # bounded: SIGTERM to the group, SIGKILL after STOP_GRACE_S; shielded, so that a second
        # cancellation does not leave the group running
        await asyncio.shield(terminate([proc], STOP_GRACE_S))
        if isinstance(exc, asyncio.CancelledError):
            raise
        return failed(spec.name, spec.kind, f"did not finish within {duration_s + GRACE_S:.0f} s (killed)")
    await terminate([proc], STOP_GRACE_S)  # it has exited: kill any peer it left in its group
    if out.exists():
        return json.loads(out.read_text())  # type: ignore[no-any-return]
    return failed(spec.name, spec.kind, f"qkd-usecase exited with {code} and no result "
                                        f"(see logs/usecase-{spec.name}.log)")


async def run_use_cases(state_dir: Path | str, topology: Topology, duration_s: float) -> list[dict[str, Any]]:
    """Run every declared use case of `topology` against the network in `state_dir` for about
    `duration_s` seconds of traffic, in parallel; their results in declaration order."""
    specs = parse_use_cases(topology)
    if topology.source is None:
        raise ValueError("the topology must come from a file (qkd-usecase reads it)")
    path = topology.source.resolve()
    return list(await asyncio.gather(*(_run_one(Path(state_dir), path, s, duration_s) for s in specs)))


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def summary_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="use cases")
    for col in ("use case", "kind", "served", "metrics", "014 vs Prometheus", "reason"):
        table.add_column(col)
    for r in results:
        metrics = ", ".join(f"{k} {_fmt(m['value'])} {m['unit']}" for k, m in r.get("metrics", {}).items())
        if r.get("info"):
            metrics += " (" + ", ".join(f"{k} {v}" for k, v in r["info"].items()) + ")"
        prom = r.get("prometheus")
        check = "-" if prom is None else (
            f"{len(prom)} series equal" if not r.get("mismatches") else f"{len(r['mismatches'])} differ")
        table.add_row(r["name"], r["kind"], "[green]yes[/green]" if r["served"] else "[red]no[/red]",
                      metrics, check, r.get("reason", ""))
    return table


async def serve_use_cases(state_dir: Path, topology: Topology, duration: float | None, stop: asyncio.Event,
                          console: Console) -> int:
    """`qkdnet up`: run the use cases once (`duration` minus set-up seconds of traffic, or
    DEFAULT_S without --duration), print the summary; 0 if every one was served, else 1 with the
    failing ones named. A SIGINT/SIGTERM (`stop`) cancels them."""
    traffic = DEFAULT_S if duration is None else max(2.0, duration - SETUP_S)
    n = len(parse_use_cases(topology))
    console.print(f"running {n} use case(s) for {traffic:g} s each ...")
    t0 = time.monotonic()
    run = asyncio.create_task(run_use_cases(state_dir, topology, traffic))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not run.done():
        run.cancel()
        try:
            await run
        except asyncio.CancelledError:
            pass
        console.print("[red]use cases interrupted[/red]")
        return 1
    results = run.result()
    console.print(summary_table(results))
    bad = [r for r in results if not r["served"]]
    if bad:
        console.print("[red]use case(s) not served: " + "; ".join(f"{r['name']} ({r['reason']})" for r in bad)
                      + "[/red]")
        return 1
    console.print(f"all {len(results)} use cases served end to end ({time.monotonic() - t0:.1f} s)")
    return 0
