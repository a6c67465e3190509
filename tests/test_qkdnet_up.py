"""System test: `qkdnet up` starts real node processes, writes network.json, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.nodeclient import NetconfEndpoint, connect, node_summary

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive for our purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"qkdnet exited early with {proc.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"{path} not written within {timeout} s")


@pytest.mark.timeout(90)
def test_up_two_nodes_then_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "net"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(ROOT / "examples" / "two-nodes.yaml"),
         "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(state / "network.json", proc, 60)
        net = json.loads((state / "network.json").read_text())
        assert set(net["nodes"]) == {"alice", "bob"}
        ids = set()
        for name, info in net["nodes"].items():
            assert info["domain"] == "lab"
            assert _alive(info["pid"])
            # each node's config file can start it by hand: it names the node and its neighbour
            cfg = (state / "nodes" / f"{name}.yaml").read_text()
            assert info["node_id"] in cfg
            other = "bob" if name == "alice" else "alice"
            assert net["nodes"][other]["node_id"] in cfg
            with connect(NetconfEndpoint.from_json(info["netconf"])) as m:
                summary = node_summary(m)
            assert summary.node_id == info["node_id"]
            assert summary.status == "OPERATING"
            ids.add(summary.node_id)
        assert len(ids) == 2
        status = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "status", "--state-dir", str(state)],
                                capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"})
        assert status.returncode == 0, status.stderr
        for info in net["nodes"].values():
            assert info["node_id"] in status.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # a bounded stop (README "Stopping a network"); no speed asserted
        time.sleep(0.2)
        for info in net["nodes"].values():
            assert not _alive(info["pid"]), "node process survived qkdnet"
        assert (state / "network.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_without_network_fails_clearly(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "status", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "network.json is missing" in r.stderr


def test_up_with_bad_topology_names_the_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - name: a\n    domian: x\n")
    r = subprocess.run([sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(bad),
                        "--state-dir", str(tmp_path / "s")], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2
    assert f"{bad}:3: nodes[0].domian: unknown field 'domian'" in r.stdout + r.stderr
