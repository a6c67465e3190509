"""Locks (RFC 6241 7.5, 7.6, 8.3.5) across real sessions: denial with the holder's session-id,
in-use for edits and commits, unlock by others, release when a session dies or is killed."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

import pytest
from lxml import etree
from ncclient.operations import RPCError

from conftest import MONITORING_NS, NSMAP, link_ids, link_xml, links_config, new_uuid

pytestmark = pytest.mark.timeout(30)


def _info(err: RPCError) -> dict[str, str]:
    """error-info children of an ncclient RPCError, by local name."""
    raw = err._raw  # noqa: SLF001 - the <rpc-error> element
    info = raw.find("nc:error-info", NSMAP)
    return {} if info is None else {etree.QName(c).localname: (c.text or "").strip() for c in info}


def _wait_for(cond: Callable[[], bool], timeout: float = 5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _lock_holder(m: Any, ds: str) -> str | None:
    flt = f'<netconf-state xmlns="{MONITORING_NS}"><datastores/></netconf-state>'
    data = m.get(filter=("subtree", flt)).data_ele
    for d in data.iterfind(".//mon:datastore", NSMAP):
        if d.findtext("mon:name", namespaces=NSMAP) == ds:
            return d.findtext("mon:locks/mon:global-lock/mon:locked-by-session", namespaces=NSMAP)
    raise AssertionError(f"no datastore {ds}")


@pytest.mark.parametrize("ds", ["running", "candidate"])
def test_lock_denied_names_the_holder(connect: Any, ds: str) -> None:
    m1, m2 = connect(), connect()
    assert m1.lock(ds).ok
    with pytest.raises(RPCError) as exc:
        m2.lock(ds)
    assert exc.value.tag == "lock-denied"
    assert exc.value.type == "protocol"
    assert _info(exc.value)["session-id"] == m1.session_id
    # the holder cannot take it twice either
    with pytest.raises(RPCError) as exc:
        m1.lock(ds)
    assert exc.value.tag == "lock-denied"
    assert _lock_holder(m2, ds) == m1.session_id
    assert m1.unlock(ds).ok
    assert _lock_holder(m2, ds) is None
    assert m2.lock(ds).ok


def test_edit_into_candidate_locked_by_other_is_in_use(node: Any, connect: Any) -> None:
    m1, m2 = connect(), connect()
    m1.lock("candidate")
    before = node.candidate_xml()
    for op in (
        lambda: m2.edit_config(links_config(link_xml(new_uuid())), target="candidate"),
        lambda: m2.copy_config(source="running", target="candidate"),
        lambda: m2.delete_config("candidate"),
        lambda: m2.discard_changes(),
        lambda: m2.commit(),
    ):
        with pytest.raises(RPCError) as exc:
            op()
        assert exc.value.tag == "in-use"
        assert exc.value.type == "protocol"
        assert _info(exc.value).get("session-id") == m1.session_id
    assert node.candidate_xml() == before
    # the holder may edit and commit
    lid = new_uuid()
    m1.edit_config(links_config(link_xml(lid)), target="candidate")
    m1.commit()
    assert lid in link_ids(m2.get_config("running").data_ele)


def test_commit_while_other_holds_running_lock_is_in_use(node: Any, connect: Any) -> None:
    m1, m2 = connect(), connect()
    m1.lock("running")
    lid = new_uuid()
    m2.edit_config(links_config(link_xml(lid)), target="candidate")
    before = node.running_xml()
    with pytest.raises(RPCError) as exc:
        m2.commit()
    assert exc.value.tag == "in-use"
    assert _info(exc.value).get("session-id") == m1.session_id
    assert node.running_xml() == before
    # the candidate keeps the change; once the lock is gone the commit goes through
    assert lid in link_ids(m2.get_config("candidate").data_ele)
    m1.unlock("running")
    m2.commit()
    assert lid in link_ids(m1.get_config("running").data_ele)


@pytest.mark.parametrize("ds", ["running", "candidate"])
def test_unlock_by_non_holder_fails(connect: Any, ds: str) -> None:
    m1, m2 = connect(), connect()
    with pytest.raises(RPCError) as exc:
        m2.unlock(ds)  # not locked at all
    assert exc.value.tag == "operation-failed"
    m1.lock(ds)
    with pytest.raises(RPCError) as exc:
        m2.unlock(ds)
    assert exc.value.tag == "operation-failed"
    assert _lock_holder(m2, ds) == m1.session_id
    with pytest.raises(RPCError):
        m2.lock(ds)


def test_lock_released_when_holder_connection_drops(node: Any, connect: Any) -> None:
    m1, m2 = connect(), connect()
    m1.lock("running")
    m1.lock("candidate")
    lid = new_uuid()
    m1.edit_config(links_config(link_xml(lid)), target="candidate")
    # drop the TCP connection without any NETCONF or SSH goodbye
    sock = m1._session._transport.sock  # noqa: SLF001 - paramiko.Transport.sock
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    assert _wait_for(lambda: node.call(lambda: len(node.node.netconf.sessions)) == 1)
    assert m2.lock("running").ok
    assert m2.lock("candidate").ok
    # RFC 6241 8.3.5.2: the dead holder's uncommitted candidate changes are discarded
    assert lid not in link_ids(m2.get_config("candidate").data_ele)


def test_lock_released_by_kill_session(node: Any, connect: Any) -> None:
    m1, m2 = connect(), connect()
    m1.lock("running")
    m1.lock("candidate")
    m1.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    assert m2.kill_session(m1.session_id).ok
    assert m2.lock("running").ok
    assert m2.lock("candidate").ok
    assert link_ids(m2.get_config("candidate").data_ele) == set()
    assert _wait_for(lambda: not m1.connected)
    flt = f'<netconf-state xmlns="{MONITORING_NS}"><sessions/></netconf-state>'
    ids = {e.text for e in m2.get(filter=("subtree", flt)).data_ele.iterfind(".//mon:session-id", NSMAP)}
    assert ids == {m2.session_id}


def test_kill_session_errors(connect: Any) -> None:
    m = connect()
    with pytest.raises(RPCError) as exc:
        m.kill_session(m.session_id)
    assert exc.value.tag == "invalid-value"
    with pytest.raises(RPCError) as exc:
        m.kill_session("4242")
    assert exc.value.tag == "invalid-value"
    assert m.get_config("running").ok


def test_candidate_lock_refused_with_uncommitted_changes(connect: Any) -> None:
    m1, m2 = connect(), connect()
    m1.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    for m in (m2, m1):  # even the session that made the change
        with pytest.raises(RPCError) as exc:
            m.lock("candidate")
        assert exc.value.tag == "lock-denied"
    # running can still be locked; after discard-changes the candidate can too
    assert m2.lock("running").ok
    m1.discard_changes()
    assert m2.lock("candidate").ok


def test_unlocking_candidate_discards_uncommitted_changes(connect: Any) -> None:
    m1, m2 = connect(), connect()
    m1.lock("candidate")
    lid = new_uuid()
    m1.edit_config(links_config(link_xml(lid)), target="candidate")
    assert lid in link_ids(m2.get_config("candidate").data_ele)
    m1.unlock("candidate")
    assert lid not in link_ids(m2.get_config("candidate").data_ele)


def test_close_session_releases_locks(connect: Any) -> None:
    m1, m2 = connect(), connect()
    m1.lock("running")
    m1.close_session()
    assert _wait_for(lambda: _lock_holder(m2, "running") is None)
    assert m2.lock("running").ok
