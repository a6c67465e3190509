"""`qkdorch`: the SDN controller's command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from .netctl import status_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qkdorch", description="QKD network SDN controller")
    sub = parser.add_subparsers(dest="cmd", required=True)
    nodes = sub.add_parser("nodes", help="discover the nodes of an inventory over NETCONF")
    nodes.add_argument("--inventory", required=True, help="network.json or an inventory file with 'nodes'")
    args = parser.parse_args(argv)
    if args.cmd == "nodes":
        inv = json.loads(Path(args.inventory).read_text())
        Console().print(status_table(inv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
