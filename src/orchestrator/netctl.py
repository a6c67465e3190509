"""`qkdnet`: bring a QKD network up from a topology file, and inspect a running one."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .launcher import Network
from .nodeclient import NetconfEndpoint, connect, node_summary
from .topology import TopologyError, load_topology

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TOPOLOGIES = (REPO / "topologies" / "madqci.yaml", REPO / "examples" / "two-nodes.yaml")


def default_topology() -> Path:
    for p in DEFAULT_TOPOLOGIES:
        if p.exists():
            return p
    raise TopologyError("no topology given and no default topology found")


def status_table(network: dict) -> Table:
    table = Table(title=f"QKD network {network.get('topology', '')}")
    for col in ("node", "domain", "qkdn_id", "status", "interfaces", "PHYS links", "VIRT links", "NETCONF"):
        table.add_column(col)
    for name, info in sorted(network["nodes"].items()):
        ep = NetconfEndpoint.from_json(info["netconf"])
        try:
            with connect(ep, timeout=5) as m:
                s = node_summary(m)
            row = [s.node_id or "?", s.status or "?", str(s.interfaces), str(s.links), str(s.virt_links)]
        except Exception as exc:  # show an unreachable node instead of failing the whole view
            row = [info.get("node_id", "?"), f"[red]unreachable: {type(exc).__name__}[/red]", "", "", ""]
        table.add_row(name, info.get("domain", ""), row[0], *row[1:], f"{ep.host}:{ep.port}")
    return table


async def _up(args: argparse.Namespace, console: Console) -> int:
    topo = load_topology(args.topology or default_topology())
    net = Network(topo, Path(args.state_dir))
    net.orchestrate = not args.no_orchestrator
    net.prepare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    with console.status(f"starting {len(net.nodes)} nodes of {topo.name} ..."):
        try:
            await net.start(timeout=args.timeout)
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/red]")
            await net.stop()
            return 1
    console.print(f"network {topo.name} up in {time.monotonic() - t0:.1f} s; state in {net.state_dir}")
    data = json.loads(net.network_json.read_text())
    console.print(await asyncio.to_thread(status_table, data))
    for domain, orch in sorted((data.get("orchestrators") or {}).items()):
        console.print(f"orchestrator of domain {domain}: {orch['url']}")
    code = 0
    try:
        if args.duration is not None:
            try:
                await asyncio.wait_for(stop.wait(), args.duration)
            except asyncio.TimeoutError:
                pass
        else:
            await stop.wait()
        dead = net.failed()
        if dead:
            console.print(f"[red]node process(es) exited: {', '.join(dead)}[/red]")
            code = 1
        else:
            console.print(await asyncio.to_thread(status_table, data))
    finally:
        await net.stop()
    return code


def _cmd_up(args: argparse.Namespace) -> int:
    console = Console()
    try:
        return asyncio.run(_up(args, console))
    except TopologyError as exc:
        console.print(f"[red]qkdnet: {exc}[/red]")
        return 2


def _cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.state_dir) / "network.json"
    if not path.exists():
        print(f"qkdnet: no running network in {args.state_dir} ({path} is missing)", file=sys.stderr)
        return 2
    Console().print(status_table(json.loads(path.read_text())))
    return 0


def _cmd_fibre(args: argparse.Namespace) -> int:
    """Cut or restore a fibre of a running network (acts on the optical plant stub)."""
    import urllib.error
    import urllib.request

    path = Path(args.state_dir) / "network.json"
    if not path.exists():
        print(f"qkdnet: no running network in {args.state_dir} ({path} is missing)", file=sys.stderr)
        return 2
    url = json.loads(path.read_text())["fabric"]["url"]
    req = urllib.request.Request(f"{url}/fibres/{args.name}/{args.action}", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        print(f"qkdnet: {json.loads(exc.read()).get('message', exc)}", file=sys.stderr)
        return 2
    print(f"fibre {body['fibre']}: {'cut' if body['cut'] else 'restored'}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        topo = load_topology(args.topology)
    except TopologyError as exc:
        print(f"qkdnet: {exc}", file=sys.stderr)
        return 2
    print(f"{topo.name}: {len(topo.nodes)} nodes, {len(topo.fibres)} fibres, {len(topo.modules)} modules, "
          f"{len(topo.saes)} SAEs, domains {', '.join(topo.domains())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qkdnet", description="run and inspect a QKD network")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start every node of a topology and run until SIGINT/SIGTERM")
    up.add_argument("--topology", help="topology YAML (default: topologies/madqci.yaml)")
    up.add_argument("--state-dir", default="state", help="where configs, logs, datastores and network.json go")
    up.add_argument("--duration", type=float, help="exit after this many seconds")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the network to come up")
    up.add_argument("--no-orchestrator", action="store_true",
                    help="start no orchestrator (the launcher installs the declared routes itself)")
    up.set_defaults(func=_cmd_up)
    st = sub.add_parser("status", help="show a running network")
    st.add_argument("--state-dir", default="state")
    st.set_defaults(func=_cmd_status)
    fb = sub.add_parser("fibre", help="cut or restore a fibre of a running network")
    fb.add_argument("action", choices=("cut", "restore"))
    fb.add_argument("name", help="fibre name from the topology")
    fb.add_argument("--state-dir", default="state")
    fb.set_defaults(func=_cmd_fibre)
    ck = sub.add_parser("check", help="validate a topology file")
    ck.add_argument("topology")
    ck.set_defaults(func=_cmd_check)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
