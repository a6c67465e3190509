"""A running pair reports its link in 015 and raises sdqkdn_link_down when its fibre is cut."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from lxml import etree

from orchestrator.nodeclient import NetconfEndpoint, connect
from test_orchestrator_helpers import qkdnet_up

ROOT = Path(__file__).resolve().parents[1]
NS = "urn:etsi:qkd:yang:etsi-qkd-node"


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    up = qkdnet_up(ROOT / "examples" / "two-nodes.yaml", tmp_path / "net")
    try:
        yield up.state, up.net
    finally:
        up.stop()


def _skr(m: object) -> int:
    data = m.get(filter=("subtree", f'<qkd_node xmlns="{NS}"><qkd_links><qkd_link>'  # type: ignore[attr-defined]
                                   "<qkdl_performance/></qkd_link></qkd_links></qkd_node>")).data_ele
    el = data.find(f".//{{{NS}}}skr")
    return -1 if el is None else int(el.text)


def _qkdnet(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "orchestrator.netctl", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.timeout(120)
def test_fibre_cut_raises_link_down_and_restore_brings_keys_back(network: tuple[Path, dict]) -> None:
    state, net = network
    with connect(NetconfEndpoint.from_json(net["nodes"]["bob"]["netconf"])) as m:
        deadline = time.monotonic() + 30
        while _skr(m) <= 0:
            assert time.monotonic() < deadline, "the pair never came up"
            time.sleep(0.3)
        m.create_subscription()
        _qkdnet("fibre", "cut", "alice-bob", "--state-dir", str(state))
        down = None
        deadline = time.monotonic() + 20
        while down is None and time.monotonic() < deadline:
            n = m.take_notification(timeout=2)
            if n is not None and "sdqkdn_link_down" in n.notification_xml:
                down = etree.fromstring(n.notification_xml.encode())
        assert down is not None, "no sdqkdn_link_down after the cut"
        qkdl_id = down.find(f".//{{{NS}}}qkdl_id").text
        reason = down.find(f".//{{{NS}}}reason").text
        running = m.get_config("running").data_ele
        assert running.find(f".//{{{NS}}}qkd_link[{{{NS}}}qkdl_id='{qkdl_id}']") is not None
        assert "no light path" in reason or "disconnected" in reason, reason
        assert _skr(m) == 0
        _qkdnet("fibre", "restore", "alice-bob", "--state-dir", str(state))
        deadline = time.monotonic() + 30
        while _skr(m) <= 0:
            assert time.monotonic() < deadline, "the link did not come back after restore"
            time.sleep(0.3)
