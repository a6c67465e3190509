"""`qkdnode`: run one node daemon, or print the YANG modules it serves."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from .config import ConfigError, load_node_config
from .schema import project_yang_dir


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = load_node_config(args.config)
    except ConfigError as exc:
        print(f"qkdnode: {exc}", file=sys.stderr)
        return 2
    if args.netconf_port is not None:
        cfg.netconf.port = args.netconf_port
    if args.state_dir is not None:
        cfg.state_dir = Path(args.state_dir)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"%(asctime)s {cfg.name} %(name)s %(levelname)s %(message)s")
    from .daemon import run_node
    from .eventloop import run
    from .memory import tune

    tune()  # malloc settings of a node daemon (qkdnode/memory.py); a forked node has them already

    run(run_node(cfg))
    return 0


def _cmd_yang_tree(args: argparse.Namespace) -> int:
    d = project_yang_dir()
    cmd = [sys.executable, "-m", "pyang", "-f", "tree", "-p", str(d),
           "--deviation-module", str(d / "qkdnet-etsi-qkd-sdn-node-deviations.yang"),
           str(d / "etsi-qkd-sdn-node.yang")]
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qkdnode", description="QKD node daemon (ETSI GS QKD 015/014/004)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run one node")
    run.add_argument("--config", required=True, help="node config file (YAML)")
    run.add_argument("--netconf-port", type=int, help="override netconf.port")
    run.add_argument("--state-dir", help="override state_dir")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)
    yang = sub.add_parser("yang", help="YANG modules served")
    ysub = yang.add_subparsers(dest="ycmd", required=True)
    tree = ysub.add_parser("tree", help="print the served 015 modules as a pyang tree")
    tree.set_defaults(func=_cmd_yang_tree)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
