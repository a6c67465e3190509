"""`qkdorch`: the SDN controller (one per domain) and a small client of its REST API.

    qkdorch serve --inventory FILE [--domain D] [--host H] [--port N]
    qkdorch links|routes|topology|direct-links|events [--url URL | --state-dir DIR [--domain D]]
    qkdorch route SRC DST --rate BPS [--sae ID ...] [--max-rate BPS] [--id UUID]
    qkdorch delete-route ID
    qkdorch link build EMITTER RECEIVER | qkdorch link delete QKDL_ID   (direct links through the switches)
    qkdorch nodes --inventory network.json      (query the nodes directly over NETCONF)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from .inventory import InventoryError, load_inventory
from .netctl import make_console


# -- serve ------------------------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> int:
    from qkdnode.eventloop import HARD_STOP_S, Shutdown, arm_hard_stop  # life cycle only, no key plane

    from .api import serve
    from .controller import Orchestrator
    from .session import WireRecorder

    inv = load_inventory(args.inventory, args.domain)
    for peer in args.peer or []:
        dom, _, url = peer.partition("=")
        if not url:
            raise InventoryError(f"--peer {peer!r}: expected DOMAIN=URL")
        inv.peers[dom] = url
    recorder = WireRecorder(path=args.record) if args.record else None
    orch = Orchestrator(inv, recorder=recorder, poll_interval=args.poll)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop() -> None:  # bounded: gone HARD_STOP_S after the first signal, even while starting
        if not stop.is_set():
            stop.set()
            arm_hard_stop(HARD_STOP_S)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop)
    runner, port = await serve(orch, args.host, args.port)
    url = f"http://{args.host}:{port}"
    logging.getLogger(__name__).info("domain %s: REST API on %s, %d nodes", inv.domain, url, len(inv.nodes))
    try:
        await orch.start()
        print(f"READY {inv.domain} {url}", flush=True)
        await stop.wait()
    finally:  # ordered and bounded: the REST API stops accepting, then sessions and tasks (README "Stopping a network")
        sd = Shutdown(f"orchestrator {inv.domain}", HARD_STOP_S - 1.0)
        await sd.step("REST API", runner.cleanup(), 2.5)
        await sd.step("controller", orch.stop())
        if recorder is not None:
            recorder.close()
    return 0


# -- client -----------------------------------------------------------------------------------------
class ApiError(Exception):
    pass


def resolve_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    path = Path(args.state_dir) / "network.json"
    try:
        net = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ApiError(f"no running network in {args.state_dir}: {exc}") from exc
    orchs = net.get("orchestrators") or {}
    if not orchs:
        raise ApiError(f"{path}: no orchestrator runs for this network")
    if args.domain:
        if args.domain not in orchs:
            raise ApiError(f"{path}: no orchestrator for domain {args.domain!r} (have: {', '.join(orchs)})")
        return str(orchs[args.domain]["url"]).rstrip("/")
    if len(orchs) > 1:
        raise ApiError(f"{path}: several domains ({', '.join(sorted(orchs))}): give --domain")
    return str(next(iter(orchs.values()))["url"]).rstrip("/")


def call(url: str, method: str = "GET", body: Any = None, timeout: float = 60) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read()).get("message", str(exc))
        except (json.JSONDecodeError, AttributeError):
            msg = str(exc)
        raise ApiError(f"{method} {url}: {exc.code}: {msg}") from exc
    except urllib.error.URLError as exc:
        raise ApiError(f"{method} {url}: {exc.reason}") from exc


def _routes_table(routes: list[dict[str, Any]]) -> Table:
    t = Table(title="key routes")
    for col in ("id", "src", "dst", "SAEs", "rate bit/s", "status", "paths"):
        t.add_column(col)
    for r in routes:
        paths = "\n".join(
            " > ".join(([f"[{p['upstream']}]"] if p["upstream"] else []) + p["nodes"]
                       + ([f"[{p['downstream']}]"] if p["downstream"] else [])) + f" ({p['rate_bps']})"
            for p in r["paths"])
        dst = f"{r['peer_dst']} (via {r['border']})" if r.get("peer_dst") else r["dst"]
        t.add_row(*(escape(str(x)) for x in (r["id"], r["src"], dst, ", ".join(r["saes"]), r["rate_bps"],
                                               r["status"], paths)))
    return t


def _links_table(links: dict[str, Any]) -> Table:
    t = Table(title="PHYS links")
    for col in ("qkdl_id", "a", "b", "up", "skr bit/s", "QBER %", "att dB"):
        t.add_column(col)
    for ln in links["phys"]:
        t.add_row(escape(ln["qkdl_id"]), escape(str(ln["a"])), escape(str(ln["b"])), "yes" if ln["up"] else "[red]no[/red]",
                  str(ln["skr_bps"]), str(ln["qber_percent"]), str(ln["channel_att_db"]))
    return t


def _client(args: argparse.Namespace) -> int:
    console = make_console()
    url = resolve_url(args)
    if args.cmd == "routes":
        console.print(_routes_table(call(f"{url}/routes")["routes"]))
    elif args.cmd == "links":
        console.print(_links_table(call(f"{url}/links")))
    elif args.cmd == "topology":
        print(json.dumps(call(f"{url}/topology"), indent=2))
    elif args.cmd == "direct-links":
        print(json.dumps(call(f"{url}/direct-links"), indent=2))
    elif args.cmd == "events":
        print(json.dumps(call(f"{url}/events"), indent=2))
    elif args.cmd == "route":
        body: dict[str, Any] = {"src": args.src, "dst": args.dst, "rate_bps": args.rate, "saes": args.sae or []}
        if args.max_rate:
            body["max_rate_bps"] = args.max_rate
        if args.id:
            body["id"] = args.id
        console.print(_routes_table([call(f"{url}/routes", "POST", body)]))
    elif args.cmd == "delete-route":
        r = call(f"{url}/routes/{args.id}", "DELETE")
        print(f"route {r['id']} deleted")
    elif args.cmd == "link" and args.action == "build":
        console.print(_direct_table([call(f"{url}/direct-links", "POST", {"emitter": args.emitter,
                                                                        "receiver": args.receiver})]))
    elif args.cmd == "link" and args.action == "delete":
        d = call(f"{url}/direct-links/{args.qkdl_id}", "DELETE")
        print(f"direct link {d['qkdl_id']} ({d['emitter']['device']} -> {d['receiver']['device']}) deleted")
    return 0


def _direct_table(links: list[dict[str, Any]]) -> Table:
    t = Table(title="direct links")
    for col in ("qkdl_id", "emitter", "receiver", "loss dB", "cross-connects", "up", "skr bit/s"):
        t.add_column(col)
    for d in links:
        xcs = "\n".join(f"{x['switch']} ({x['node']}): {x['in_port']} > {x['out_port']}" for x in d["cross_connects"])
        t.add_row(*(escape(str(x)) for x in (
            d["qkdl_id"], f"{d['emitter']['node']}/{d['emitter']['device']}",
            f"{d['receiver']['node']}/{d['receiver']['device']}", d["loss_db"], xcs,
            "yes" if d.get("up") else "no", d.get("skr_bps"))))
    return t


def _nodes(args: argparse.Namespace) -> int:
    from .netctl import status_table

    inv = json.loads(Path(args.inventory).read_text())
    make_console().print(status_table(inv))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qkdorch", description="QKD network SDN controller")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve", help="run the orchestrator of one domain")
    sv.add_argument("--inventory", required=True, help="network.json of qkdnet up, or an inventory YAML")
    sv.add_argument("--domain", help="the domain to manage (required with network.json)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8181)
    sv.add_argument("--peer", action="append", help="DOMAIN=URL of another domain's orchestrator")
    sv.add_argument("--poll", type=float, default=5.0, help="seconds between re-reads of the nodes (0: never)")
    sv.add_argument("--record", help="append every NETCONF message sent and received to this file")
    sv.add_argument("-v", "--verbose", action="store_true")
    for name, help_ in (("links", "PHYS links and their key rates"), ("routes", "key routes"),
                        ("topology", "nodes and graphs (JSON)"), ("direct-links", "feasible direct QKD links (JSON)"),
                        ("events", "recent events (JSON)"), ("route", "provision a key route"),
                        ("delete-route", "remove a key route")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--url", help="the orchestrator's REST API")
        p.add_argument("--state-dir", default="state", help="network of qkdnet up (network.json 'orchestrators')")
        p.add_argument("--domain", help="which domain's orchestrator (several in network.json)")
        if name == "route":
            p.add_argument("src")
            p.add_argument("dst")
            p.add_argument("--rate", type=int, required=True, help="key rate, bit/s")
            p.add_argument("--max-rate", type=int)
            p.add_argument("--sae", action="append", help="SAE ID (first: at SRC); repeat")
            p.add_argument("--id", help="route UUID (default: new)")
        if name == "delete-route":
            p.add_argument("id")
    lk = sub.add_parser("link", help="build or delete a direct QKD link through the optical switches")
    lk_sub = lk.add_subparsers(dest="action", required=True)
    for action, help_ in (("build", "build EMITTER -> RECEIVER (module names)"), ("delete", "delete a built link")):
        p = lk_sub.add_parser(action, help=help_)
        p.add_argument("--url", help="the orchestrator's REST API")
        p.add_argument("--state-dir", default="state", help="network of qkdnet up (network.json 'orchestrators')")
        p.add_argument("--domain", help="which domain's orchestrator (several in network.json)")
        if action == "build":
            p.add_argument("emitter", help="transmitter module (name, or NODE:QKDI)")
            p.add_argument("receiver", help="receiver module (name, or NODE:QKDI)")
        else:
            p.add_argument("qkdl_id")
    nd = sub.add_parser("nodes", help="query an inventory's nodes over NETCONF")
    nd.add_argument("--inventory", required=True, help="network.json or an inventory file with 'nodes'")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "serve":
            logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            for noisy in ("ncclient", "paramiko"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
            return asyncio.run(_serve(args))
        if args.cmd == "nodes":
            return _nodes(args)
        return _client(args)
    except (InventoryError, ApiError) as exc:
        print(f"qkdorch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
