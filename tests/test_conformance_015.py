"""Conformance: every datastore a running node serves validates against the OFFICIAL ETSI 015 modules.

A network is started with `qkdnet up` (real node processes with QKD modules, key store and
links); running, candidate and the operational data of <get> are fetched over NETCONF and
fully validated with libyang against the official modules from ../shared/reference (with only
the three known-defective `when` expressions prefixed, see README), after adding a VIRT link so
that virt_* data is covered too. Skipped where ../shared is absent.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from lxml import etree

from orchestrator.nodeclient import NetconfEndpoint, connect
from test_orchestrator_helpers import qkdnet_up
from yangcheck import NODE_NS, official_015_available, official_015_context, validate_015

ROOT = Path(__file__).resolve().parents[1]
TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"

pytestmark = pytest.mark.skipif(
    not official_015_available(), reason="../shared/reference/etsi-qkd-015 is absent: no official modules to check against"
)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    up = qkdnet_up(ROOT / "examples" / "two-nodes.yaml", tmp_path_factory.mktemp("conf015"))
    try:
        yield up.net
    finally:
        up.stop()


def _qkd_node(data_ele: etree._Element) -> str:
    node = data_ele.find(f"{{{NODE_NS}}}qkd_node")
    assert node is not None, "no qkd_node in the reply"
    return etree.tostring(node, encoding="unicode")


@pytest.mark.timeout(120)
def test_served_datastores_validate_against_official_modules(network: dict, tmp_path: Path) -> None:
    ctx = official_015_context(tmp_path)
    alice, bob = network["nodes"]["alice"], network["nodes"]["bob"]
    with connect(NetconfEndpoint.from_json(alice["netconf"])) as m:
        # a VIRT link too, so that the fixed `when` of virt_* is exercised
        virt = (
            f'<config><qkd_node xmlns="{NODE_NS}" xmlns:t="{TYPES_NS}"><qkd_links><qkd_link>'
            f"<qkdl_id>{uuid.uuid4()}</qkdl_id><qkdl_enable>true</qkdl_enable>"
            f"<qkdl_local><qkdn_id>{alice['node_id']}</qkdn_id></qkdl_local>"
            f"<qkdl_remote><qkdn_id>{bob['node_id']}</qkdn_id></qkdl_remote>"
            f"<qkdl_type>t:VIRT</qkdl_type><virt_next_hop>{bob['node_id']}</virt_next_hop>"
            f"<virt_bandwidth>1000</virt_bandwidth></qkd_link></qkd_links></qkd_node></config>"
        )
        m.edit_config(target="candidate", config=virt)
        candidate = _qkd_node(m.get_config("candidate").data_ele)
        m.commit()
        running = _qkd_node(m.get_config("running").data_ele)
        deadline = time.monotonic() + 20
        while True:  # wait until the PHYS link reports performance (the pair is up)
            operational = _qkd_node(m.get(filter=("subtree", f'<qkd_node xmlns="{NODE_NS}"/>')).data_ele)
            if "<skr>" in operational and "<skr>0</skr>" not in operational:
                break
            assert time.monotonic() < deadline, "the PHYS link never reported a key rate"
            time.sleep(0.5)
    for doc in (candidate, running):
        assert "virt_bandwidth" in doc and "phys_channel_att" in doc
        validate_015(doc, with_state=False, ctx=ctx)
    for marker in ("qkdn_status", "qkdi_status", "qkdl_performance", "phys_perf"):
        assert marker in operational, marker
    validate_015(operational, with_state=True, ctx=ctx)
