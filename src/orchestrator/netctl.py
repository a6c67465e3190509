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
from .liveview import network_view
from .nodeclient import NetconfEndpoint, connect, node_summary
from .topology import TopologyError, load_topology

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TOPOLOGIES = (REPO / "topologies" / "madqci.yaml", REPO / "examples" / "two-nodes.yaml")


def default_topology() -> Path:
    for p in DEFAULT_TOPOLOGIES:
        if p.exists():
            return p
    raise TopologyError("no topology given and no default topology found")


def make_console() -> Console:
    """A terminal console; 140 columns when output goes to a file or a pipe (make, CI logs)."""
    return Console(width=None if sys.stdout.isatty() else 140)


def status_table(network: dict) -> Table:
    table = Table(title=f"QKD network {network.get('topology', '')}")
    for col in ("node", "domain", "qkdn_id", "status", "interfaces", "PHYS links", "VIRT links", "SKR kbit/s",
                "NETCONF"):
        table.add_column(col)
    for name, info in sorted(network["nodes"].items()):
        ep = NetconfEndpoint.from_json(info["netconf"])
        try:
            with connect(ep, timeout=5) as m:
                s = node_summary(m)
            row = [s.node_id or "?", s.status or "?", str(s.interfaces), str(s.links), str(s.virt_links),
                   f"{s.skr_bps / 1000:.1f}"]
        except Exception as exc:  # show an unreachable node instead of failing the whole view
            row = [info.get("node_id", "?"), f"[red]unreachable: {type(exc).__name__}[/red]", "", "", "", ""]
        table.add_row(name, info.get("domain", ""), row[0], *row[1:], f"{ep.host}:{ep.port}")
    return table


def etsi014_probe(network: dict) -> list[str]:
    """Show keys flowing: for each pair of SAEs on different nodes, one enc_keys at the first SAE's
    node and dec_keys of the same key ID at the second's, over mTLS with the SAEs' certificates.
    Reports key IDs and whether both ends got the same key, never the key bytes."""
    import ssl
    import urllib.error
    import urllib.request

    saes = network.get("saes") or {}
    lines = []

    def call(sae: str, path: str, body: dict) -> tuple[int, dict]:
        s = saes[sae]
        ctx = ssl.create_default_context(cafile=s["ca"])
        ctx.load_cert_chain(s["cert"], s["key"])
        url = network["nodes"][s["node"]]["etsi014"]["url"] + path
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    names = sorted(saes)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if saes[a]["node"] != saes[b]["node"]]
    for a, b in pairs[:4]:
        st, enc = call(a, f"/api/v1/keys/{b}/enc_keys", {"number": 1})
        if st != 200:
            lines.append(f"ETSI 014 {a} -> {b}: enc_keys {st} {enc.get('message', '')}")
            continue
        kid = enc["keys"][0]["key_ID"]
        st, dec = call(b, f"/api/v1/keys/{a}/dec_keys", {"key_IDs": [{"key_ID": kid}]})
        same = st == 200 and dec.get("keys") == enc["keys"]
        lines.append(f"ETSI 014 {a} -> {b}: key {kid} " + ("delivered at both ends, identical" if same
                                                            else f"dec_keys {st} {dec.get('message', '')}"))
    return lines


async def _up(args: argparse.Namespace, console: Console) -> int:
    topo = load_topology(args.topology or default_topology())
    from .usecases_run import parse_use_cases, serve_use_cases  # README "Use cases"

    use_cases = parse_use_cases(topo)  # a bad use_cases: entry fails before anything starts
    net = Network(topo, Path(args.state_dir))
    net.orchestrate = not args.no_orchestrator
    net.prepare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    with console.status(f"starting {len(net.nodes)} nodes of {topo.name} ...") as progress:
        starting = asyncio.create_task(net.start(timeout=args.timeout))
        stopping = asyncio.create_task(stop.wait())
        while not (await asyncio.wait({starting, stopping}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED))[0]:
            progress.update(_progress(net, topo.name, time.monotonic() - t0))
        stopping.cancel()
        if not starting.done():  # SIGINT/SIGTERM while starting: stop what has started
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            console.print("[yellow]stopped while starting[/yellow]")
            await net.stop()
            return 130
        try:
            starting.result()
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/red]")
            await net.stop()
            return 1
    console.print(f"network {topo.name} up in {time.monotonic() - t0:.1f} s; state in {net.state_dir}")
    data = json.loads(net.network_json.read_text())
    console.print(await asyncio.to_thread(status_table, data))
    console.print(await asyncio.to_thread(network_view, net.state_dir))
    for domain, orch in sorted((data.get("orchestrators") or {}).items()):
        console.print(f"orchestrator of domain {domain}: {orch['url']}")
    from .telemetry import DEFAULT_INTERVAL_S, run_sampler  # every node's /metrics -> DIR/telemetry.csv

    sampling = asyncio.Event()
    sampler = asyncio.create_task(run_sampler(net.network_json, net.state_dir / "telemetry.csv",
                                              DEFAULT_INTERVAL_S, sampling))
    code = 0
    live = asyncio.create_task(_live_view(console, net.state_dir))  # a terminal only: refreshed every 2 s
    try:
        t_up = time.monotonic()
        if use_cases:  # run once and print the summary; 1 (naming them) if any was not served
            code = await serve_use_cases(net.state_dir, topo, args.duration, stop, console)
        if args.duration is not None:
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, args.duration - (time.monotonic() - t_up)))
            except asyncio.TimeoutError:
                pass
        else:
            await stop.wait()
        live.cancel()
        await asyncio.gather(live, return_exceptions=True)
        dead = net.failed()
        if dead:
            console.print(f"[red]node process(es) exited: {', '.join(dead)}[/red]")
            code = 1
        else:
            console.print(await asyncio.to_thread(status_table, data))
            console.print(await asyncio.to_thread(network_view, net.state_dir, "(summary)"))
            for line in [] if use_cases else await asyncio.to_thread(etsi014_probe, data):
                console.print(line)
    finally:
        live.cancel()
        sampling.set()
        await asyncio.wait({sampler}, timeout=3.0)  # bounded: a scrape may hang on a stopping node
        sampler.cancel()
        await asyncio.gather(sampler, live, return_exceptions=True)
        await net.stop()  # bounded, every child reaped (README "Stopping a network")
    return code


def _progress(net: Network, name: str, elapsed: float) -> str:
    ready = sum(n.ready.is_set() for n in net.nodes.values())
    step = (f"{ready}/{len(net.nodes)} nodes ready" if ready < len(net.nodes) else
            "nodes ready; orchestrators discovering, building direct links and key routes")
    return f"starting {name}: {step} ({elapsed:.0f} s)"


async def _live_view(console: Console, state_dir: Path, interval: float = 2.0) -> None:
    """The network view, redrawn in place while `qkdnet up` runs (only on a terminal: logs get the
    view once when the network is up and once at the end)."""
    if not console.is_terminal:
        return
    from rich.live import Live

    with Live(await asyncio.to_thread(network_view, state_dir), console=console, transient=True) as live:
        while True:
            await asyncio.sleep(interval)
            try:
                live.update(await asyncio.to_thread(network_view, state_dir))
            except (OSError, ValueError):
                continue


def _cmd_up(args: argparse.Namespace) -> int:
    console = make_console()
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
    console = make_console()
    console.print(status_table(json.loads(path.read_text())))
    console.print(network_view(Path(args.state_dir)))
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


def _cmd_plot(args: argparse.Namespace) -> int:
    """PNG plots of SKR and QBER/SNR over time per link, from DIR/telemetry.csv (orchestrator.plot)."""
    from .plot import PlotError, plot_telemetry

    state = Path(args.state_dir)
    try:
        files = plot_telemetry(state / "telemetry.csv", Path(args.out) if args.out else state / "plots")
    except PlotError as exc:
        print(f"qkdnet: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


def _cmd_compare_table1(args: argparse.Namespace) -> int:
    """MadQCI Table 1's measured key rates next to the twin's simulated ones (orchestrator.table1)."""
    from .table1 import Table1Error, compare_file

    try:
        print(compare_file(args.topology or default_topology()))
    except (TopologyError, Table1Error) as exc:
        print(f"qkdnet: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        topo = load_topology(args.topology)
        from .usecases_run import parse_use_cases

        parse_use_cases(topo)  # README "Use cases"
    except TopologyError as exc:
        print(f"qkdnet: {exc}", file=sys.stderr)
        return 2
    print(f"{topo.name}: {len(topo.nodes)} nodes, {len(topo.fibres)} fibres, {len(topo.modules)} modules, "
          f"{len(topo.saes)} SAEs, domains {', '.join(topo.domains())}")
    return 0


MON_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
DEFAULT_TREE_MODULES = ("etsi-qkd-sdn-node",)


def _cmd_yang_tree(args: argparse.Namespace) -> int:
    """Fetch a running node's modules over NETCONF <get-schema> and print `pyang -f tree` of them."""
    import subprocess
    import tempfile

    path = Path(args.state_dir) / "network.json"
    if not path.exists():
        print(f"qkdnet: no running network in {args.state_dir} ({path} is missing)", file=sys.stderr)
        return 2
    nodes = json.loads(path.read_text())["nodes"]
    if args.node not in nodes:
        print(f"qkdnet: no node {args.node!r} (nodes: {', '.join(sorted(nodes))})", file=sys.stderr)
        return 2
    ns = {"m": MON_NS}
    with tempfile.TemporaryDirectory(prefix="qkdnet-yang-") as tmp, \
            connect(NetconfEndpoint.from_json(nodes[args.node]["netconf"]), timeout=10) as m:
        flt = f'<netconf-state xmlns="{MON_NS}"><schemas/></netconf-state>'
        schemas = m.get(filter=("subtree", flt)).data_ele.findall(".//m:schemas/m:schema", ns)
        names: list[str] = []
        for sch in schemas:
            ident, version = sch.findtext("m:identifier", namespaces=ns), sch.findtext("m:version", namespaces=ns)
            if (sch.findtext("m:format", namespaces=ns) or "yang").split(":")[-1] != "yang" or not ident:
                continue
            text = m.get_schema(ident, version=version or None).data
            (Path(tmp) / f"{ident}{'@' + version if version else ''}.yang").write_text(text)
            names.append(ident)
        wanted = args.module or [n for n in DEFAULT_TREE_MODULES if n in names]
        missing = [n for n in wanted if n not in names]
        if missing:
            print(f"qkdnet: node {args.node} does not serve {', '.join(missing)}", file=sys.stderr)
            return 2
        files = {p.name.split("@")[0].removesuffix(".yang"): p for p in Path(tmp).glob("*.yang")}
        cmd = [sys.executable, "-m", "pyang", "-f", "tree", "-p", tmp]
        for name in names:  # deviation modules the node serves apply to what is printed
            if "deviation" in name:
                cmd += ["--deviation-module", str(files[name])]
        cmd += [str(files[n]) for n in wanted]
        return subprocess.call(cmd)


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
    yg = sub.add_parser("yang", help="YANG modules of a running node")
    ysub = yg.add_subparsers(dest="ycmd", required=True)
    yt = ysub.add_parser("tree", help="fetch a node's modules over NETCONF <get-schema> and print pyang -f tree")
    yt.add_argument("node", help="node name (from network.json)")
    yt.add_argument("--state-dir", default="state")
    yt.add_argument("--module", action="append", help="module to print (repeatable; default etsi-qkd-sdn-node)")
    yt.set_defaults(func=_cmd_yang_tree)
    pl = sub.add_parser("plot", help="PNG plots of SKR and QBER (SNR for CV) over time per link")
    pl.add_argument("--state-dir", default="state", help="state dir of a network run by `qkdnet up`")
    pl.add_argument("--out", help="output directory (default: STATE_DIR/plots)")
    pl.set_defaults(func=_cmd_plot)
    t1 = sub.add_parser("compare-table1", help="MadQCI Table 1: measured vs. simulated key rate per link (offline)")
    t1.add_argument("--topology", help="the MadQCI twin (default: topologies/madqci.yaml)")
    t1.set_defaults(func=_cmd_compare_table1)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
