"""`qkd-usecase`: run one declared use case against a running network, as its own process.

    qkd-usecase --network DIR/network.json --topology FILE --name NAME --duration S --out FILE

The process plays the use case's first role, starts the other roles as peer processes
(`--role ROLE --peer-args JSON`, internal), and writes the JSON result (`result.py`) to FILE (or
stdout). Exit status: 0 served, 1 not served, 2 bad arguments or topology.

The window: the nodes' /metrics are scraped before any 014 request of the use case and again
after every role finished; `served` needs real data through and verified, and the Prometheus
deltas equal to the 014 requests and keys the use case's clients counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from orchestrator.topology import TopologyError, load_topology

from . import cloud, encryptor, hybrid, opot, prometheus
from .client import Etsi014Error, TransportError
from .framing import FramingError
from .peer import Context, Handler, serve
from .result import NotServed, UseCaseResult
from .spec import find_use_case

Runner = Callable[[Context, float, UseCaseResult], Awaitable[dict[str, int]]]

#: the coordinating side of each kind
RUNNERS: dict[str, Runner] = {"encryptor": encryptor.run, "hybrid": hybrid.run, "opot": opot.run, "cloud": cloud.run}
#: peer roles, started by the coordinators as their own processes
ROLES: dict[str, Handler] = {"encryptor-rx": encryptor.receiver, "hybrid-responder": hybrid.responder,
                             "opot-node": opot.node, "cloud-server": cloud.server}


async def coordinate(ctx: Context, duration: float) -> UseCaseResult:
    spec = ctx.spec
    result = UseCaseResult(spec.name, spec.kind)
    saes = list(spec.saes)
    try:
        start = await prometheus.scrape(ctx.network, saes)
    except prometheus.MetricsUnavailable as exc:
        result.reason = f"no Prometheus view of the window: {exc}"
        return result
    result.start()
    try:
        client = await RUNNERS[spec.kind](ctx, duration, result)
    except (NotServed, Etsi014Error, TransportError, FramingError, OSError) as exc:
        result.end()
        result.reason = str(exc) or type(exc).__name__
        return result
    result.end()
    result.client = dict(sorted(client.items()))
    try:
        result.prometheus = await prometheus.settled_delta(ctx.network, saes, start, result.client)
    except prometheus.MetricsUnavailable as exc:
        result.reason = f"no Prometheus view of the window end: {exc}"
        return result
    result.mismatches = prometheus.mismatches(result.client, result.prometheus)
    result.served = not result.mismatches
    if result.mismatches:
        result.reason = "Prometheus deltas differ from the client counts: " + "; ".join(result.mismatches)
    return result


def _context(args: argparse.Namespace) -> Context:
    network_path = Path(args.network)
    network = json.loads(network_path.read_text())
    topology = load_topology(args.topology)
    return Context(network, network_path, Path(args.topology), find_use_case(topology, args.name))


async def _peer(ctx: Context, role: str, peer_args: dict[str, Any]) -> None:
    handler = ROLES.get(role)
    if handler is None:
        raise SystemExit(f"qkd-usecase: unknown role {role!r} (roles: {', '.join(ROLES)})")
    await serve(ctx, handler, peer_args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qkd-usecase", description="run one use case of a running QKD network")
    ap.add_argument("--network", required=True, help="DIR/network.json of the running network")
    ap.add_argument("--topology", required=True, help="the topology file declaring the use case")
    ap.add_argument("--name", required=True, help="use case name (use_cases[].name)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (default 10)")
    ap.add_argument("--out", help="write the JSON result here (default: stdout)")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--peer-args", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        ctx = _context(args)
    except (TopologyError, OSError, ValueError) as exc:
        print(f"qkd-usecase: {exc}", file=sys.stderr)
        return 2
    if args.role:
        asyncio.run(_peer(ctx, args.role, json.loads(args.peer_args)))
        return 0
    result = asyncio.run(coordinate(ctx, args.duration))
    if args.out:
        result.write(Path(args.out))
    else:
        print(json.dumps(result.to_json(), indent=2))
    state = "served" if result.served else f"NOT served: {result.reason}"
    print(f"qkd-usecase {result.name} ({result.kind}): {state}", file=sys.stderr)
    return 0 if result.served else 1


if __name__ == "__main__":
    sys.exit(main())
