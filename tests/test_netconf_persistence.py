"""Running survives restarts (in-process stop, and SIGTERM of a `qkdnode run` process); the SSH host
key and node id are kept; uncommitted candidate changes are not."""

from __future__ import annotations

import json
import signal
from typing import Any

import asyncssh
import pytest
from ncclient.operations import RPCError
from ncclient.transport.errors import SSHError

from conftest import (
    NSMAP,
    RawNetconf,
    close_quietly,
    link_ids,
    link_xml,
    links_config,
    nc_connect,
    new_uuid,
    stop_process,
)

pytestmark = pytest.mark.timeout(60)


def _commit_links(h: Any) -> tuple[str, str, str]:
    m = nc_connect(h)
    try:
        phys, virt = new_uuid(), new_uuid()
        m.edit_config(links_config(link_xml(phys), link_xml(virt, kind="VIRT")), target="candidate")
        m.commit()
        return phys, virt, m.get_config("running").data_xml
    finally:
        close_quietly(m)


def _stored(state_dir: Any) -> dict[str, bytes]:
    """What the node keeps of running on disk (running.xml and whatever goes with it)."""
    return {p.name: p.read_bytes() for p in sorted(state_dir.glob("running*"))}


def _running(h: Any) -> str:
    m = nc_connect(h)
    try:
        return m.get_config("running").data_xml
    finally:
        close_quietly(m)


def test_running_survives_in_process_restart(node_factory: Any, tmp_path: Any) -> None:
    sd = tmp_path / "state"
    h1 = node_factory("p", state_dir=sd)
    phys, virt, before = _commit_links(h1)
    node_id, key = h1.node.node_id, h1.host_key_b64
    h1.stop()

    h2 = node_factory("p", state_dir=sd)
    assert h2.host_key_b64 == key
    assert h2.node.node_id == node_id
    m = nc_connect(h2)  # pins the key the first run generated
    try:
        assert m.get_config("running").data_xml == before
        assert m.get_config("candidate").data_xml == before
        data = m.get_config("running").data_ele
        assert data.findtext("q:qkd_node/q:qkdn_id", namespaces=NSMAP) == node_id
        assert link_ids(data) == {phys, virt}
    finally:
        close_quietly(m)


def test_uncommitted_and_refused_changes_are_not_persisted(node_factory: Any, tmp_path: Any) -> None:
    sd = tmp_path / "state"
    h1 = node_factory("p", state_dir=sd)
    phys, virt, before = _commit_links(h1)
    on_disk = _stored(sd)
    m = nc_connect(h1)
    try:
        # a commit that fails validation (phys_* leaf without qkdl_type PHYS) leaves the file alone
        bad = f"<qkd_link><qkdl_id>{new_uuid()}</qkdl_id><phys_wavelength>3</phys_wavelength></qkd_link>"
        m.edit_config(links_config(bad), target="candidate", test_option="set")
        with pytest.raises(RPCError):
            m.commit()
        assert _stored(sd) == on_disk
        m.discard_changes()
        m.edit_config(links_config(link_xml(new_uuid())), target="candidate")  # never committed
    finally:
        close_quietly(m)
    h1.stop()
    h2 = node_factory("p", state_dir=sd)
    assert _running(h2) == before
    m = nc_connect(h2)
    try:
        assert m.get_config("candidate").data_xml == before
    finally:
        close_quietly(m)


async def test_host_key_pinning_rejects_other_key(node_factory: Any, tmp_path: Any) -> None:
    a = node_factory("a", state_dir=tmp_path / "a")
    b = node_factory("b", state_dir=tmp_path / "b")
    assert a.host_key_b64 != b.host_key_b64
    # b presented with a's key: a client pinning a's key refuses b
    wrong = type(b)(b.host, b.port, b.username, b.password, b.state_dir, a.host_key_b64)
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await RawNetconf.open(wrong)
    with pytest.raises(SSHError):
        nc_connect(wrong)


@pytest.mark.timeout(90)
def test_running_survives_sigterm_of_daemon(node_process: Any, tmp_path: Any) -> None:
    sd = tmp_path / "pstate"
    h1 = node_process("proc", state_dir=sd)
    info = json.loads((sd / "node.json").read_text())
    assert info["netconf"]["port"] == h1.port and info["pid"] == h1.proc.pid
    phys, virt, before = _commit_links(h1)
    key = h1.host_key_b64
    node_id = (sd / "node_id").read_text().strip()
    # a session still open at SIGTERM must not keep the daemon from stopping
    lingering = nc_connect(h1)
    assert stop_process(h1.proc, signal.SIGTERM) == 0
    h1.stopped = True
    close_quietly(lingering)

    h2 = node_process("proc", state_dir=sd)
    assert h2.host_key_b64 == key
    assert (sd / "node_id").read_text().strip() == node_id
    assert json.loads((sd / "node.json").read_text())["netconf"]["port"] == h2.port
    after = _running(h2)
    assert after == before
    assert link_ids(after) == {phys, virt}


def test_when_auto_deleted_leaves_stay_deleted_after_restart(node_factory: Any, tmp_path: Any) -> None:
    """Turning a PHYS link VIRT makes libyang drop its phys_* leaves (their 'when' is false):
    what is persisted must be that result, and reload must not trip over stale phys_* leaves."""
    sd = tmp_path / "state"
    h1 = node_factory("w", state_dir=sd)
    phys, virt, _ = _commit_links(h1)
    m = nc_connect(h1)
    try:
        body = (f"<qkd_link><qkdl_id>{phys}</qkdl_id><qkdl_type xmlns:t=\"urn:etsi:qkd:yang:etsi-qkd-node-types\">"
                "t:VIRT</qkdl_type><virt_bandwidth>7</virt_bandwidth></qkd_link>")
        m.edit_config(links_config(body), target="candidate")
        m.commit()
        before = m.get_config("running").data_xml
    finally:
        close_quietly(m)
    assert "phys_wavelength" not in before
    h1.stop()
    h2 = node_factory("w", state_dir=sd)
    assert _running(h2) == before


def test_dropped_node_graph_frees_its_trees(tmp_path: Any) -> None:
    """A context and its trees collected together as cyclic garbage: the trees are freed (while the
    context exists; the order used to be arbitrary, a use-after-free that crashed the suite)."""
    import gc

    from qkdnode.datatree import DataTree
    from qkdnode.schema import build_context

    holders = []
    for _ in range(3):
        ctx = build_context()
        tree = DataTree.parse(ctx, f'<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_id>{new_uuid()}'
                                   "</qkdn_id></qkd_node>")
        holders.append(tree._root)  # noqa: SLF001 - the C pointer the tree owns
        cycle: dict[str, Any] = {"ctx": ctx, "tree": tree}
        cycle["self"] = cycle
        del ctx, tree, cycle
        gc.collect()
    from _libyang import ffi

    assert all(h[0] == ffi.NULL for h in holders)
