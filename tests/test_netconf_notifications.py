"""RFC 5277 notifications: create-subscription, RFC 6470 netconf-config-change on commit,
subtree filters, interleave (RPCs keep working on a subscribed session)."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree
from ncclient.operations import RPCError
from ncclient.xml_ import to_ele

from conftest import NC_NOTIF_NS, NSMAP, QKD_NS, QKD_TYPES_NS, link_ids, link_xml, links_config, new_uuid

pytestmark = pytest.mark.timeout(30)

NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
NS = {**NSMAP, "n": NOTIF_NS}


def _config_change(notif: Any) -> etree._Element:
    assert notif is not None, "no notification arrived"
    root = notif.notification_ele
    assert etree.QName(root) == etree.QName(NOTIF_NS, "notification")
    assert root.findtext("n:eventTime", namespaces=NS)
    cc = root.find("ncn:netconf-config-change", NS)
    assert cc is not None, etree.tostring(root)
    return cc


def _edits(cc: etree._Element) -> list[tuple[str, str | None]]:
    """(operation, target) of every <edit>; target with its prefixes resolved to namespaces."""
    out = []
    for e in cc.iterfind("ncn:edit", NS):
        t = e.find("ncn:target", NS)
        target = None
        if t is not None:
            target = t.text
            for p, ns in t.nsmap.items():
                if p:
                    target = target.replace(f"{p}:", f"{{{ns}}}")
        out.append((e.findtext("ncn:operation", namespaces=NS), target))
    return out


def test_commit_delivers_netconf_config_change(connect: Any) -> None:
    sub, writer = connect(), connect()
    assert sub.create_subscription().ok
    lid = new_uuid()
    writer.edit_config(links_config(link_xml(lid)), target="candidate")
    writer.commit()
    cc = _config_change(sub.take_notification(timeout=5))
    assert cc.findtext("ncn:changed-by/ncn:username", namespaces=NS) == "admin"
    assert cc.findtext("ncn:changed-by/ncn:session-id", namespaces=NS) == writer.session_id
    assert cc.findtext("ncn:datastore", namespaces=NS) == "running"
    edits = _edits(cc)
    assert edits, etree.tostring(cc)
    assert all(op in ("merge", "create", "replace", "delete", "remove") for op, _ in edits)
    assert any(t and lid in t and f"{{{QKD_NS}}}qkd_link" in t for _, t in edits), edits
    # exactly one notification per commit
    assert sub.take_notification(timeout=0.3) is None


def test_delete_is_reported_as_delete(connect: Any) -> None:
    sub, writer = connect(), connect()
    lid = new_uuid()
    writer.edit_config(links_config(link_xml(lid)), target="candidate")
    writer.commit()
    sub.create_subscription()
    writer.edit_config(links_config(link_xml(lid, kind=None, operation="delete")), target="candidate")
    writer.commit()
    edits = _edits(_config_change(sub.take_notification(timeout=5)))
    assert [op for op, t in edits if t and lid in t] == ["delete"]


def test_commit_without_changes_sends_nothing(connect: Any) -> None:
    sub, writer = connect(), connect()
    sub.create_subscription()
    writer.commit()
    assert sub.take_notification(timeout=0.3) is None


def test_every_subscriber_gets_it(connect: Any) -> None:
    subs = [connect() for _ in range(3)]
    for s in subs:
        s.create_subscription()
    writer = subs[0]
    writer.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    writer.commit()
    for s in subs:
        _config_change(s.take_notification(timeout=5))


def _subscribe_filtered(m: Any, filter_xml: str, filter_ns: str = NOTIF_NS) -> None:
    m.dispatch(to_ele(
        f'<create-subscription xmlns="{NOTIF_NS}"><filter xmlns="{filter_ns}" type="subtree">{filter_xml}'
        "</filter></create-subscription>"
    ))


@pytest.mark.parametrize(
    "filter_ns", [NOTIF_NS, "urn:ietf:params:xml:ns:netconf:base:1.0"], ids=["rfc5277-ns", "base-ns (ncclient)"]
)
def test_subtree_filter(connect: Any, filter_ns: str) -> None:
    matching, other, writer = connect(), connect(), connect()
    _subscribe_filtered(matching, f'<netconf-config-change xmlns="{NC_NOTIF_NS}"><changed-by/></netconf-config-change>',
                        filter_ns)
    _subscribe_filtered(other, f'<netconf-session-start xmlns="{NC_NOTIF_NS}"/>', filter_ns)
    writer.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    writer.commit()
    notif = matching.take_notification(timeout=5)
    assert notif is not None
    cc = notif.notification_ele.find("ncn:netconf-config-change", NS)
    # a selection filter: only changed-by is left
    assert [etree.QName(c).localname for c in cc] == ["changed-by"]
    assert cc.findtext("ncn:changed-by/ncn:session-id", namespaces=NS) == writer.session_id
    assert other.take_notification(timeout=0.3) is None


def test_subtree_filter_content_match(connect: Any) -> None:
    """Only the commits of one session, selected by content match on changed-by/session-id."""
    sub, w1, w2 = connect(), connect(), connect()
    _subscribe_filtered(sub, f'<netconf-config-change xmlns="{NC_NOTIF_NS}"><changed-by>'
                             f"<session-id>{w2.session_id}</session-id></changed-by></netconf-config-change>")
    w1.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    w1.commit()
    w2.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    w2.commit()
    notif = sub.take_notification(timeout=5)
    assert notif is not None
    cc = notif.notification_ele.find("ncn:netconf-config-change", NS)
    assert cc.findtext("ncn:changed-by/ncn:session-id", namespaces=NS) == w2.session_id
    assert sub.take_notification(timeout=0.3) is None


def test_ncclient_filter_argument(connect: Any) -> None:
    sub, writer = connect(), connect()
    sub.create_subscription(filter=("subtree", f'<netconf-session-end xmlns="{NC_NOTIF_NS}"/>'))
    writer.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    writer.commit()
    assert sub.take_notification(timeout=0.3) is None


def test_interleave(connect: Any) -> None:
    """A subscribed session still runs RPCs, and gets its own commit's notification."""
    m = connect()
    m.create_subscription()
    assert m.get_config("running").ok
    lid = new_uuid()
    m.edit_config(links_config(link_xml(lid)), target="candidate")
    assert m.lock("running").ok
    m.commit()
    assert m.unlock("running").ok
    assert lid in link_ids(m.get_config("running").data_ele)
    cc = _config_change(m.take_notification(timeout=5))
    assert cc.findtext("ncn:changed-by/ncn:session-id", namespaces=NS) == m.session_id


def test_subscription_errors(connect: Any) -> None:
    m = connect()
    with pytest.raises(RPCError) as exc:
        m.create_subscription(stream_name="NO-SUCH-STREAM")
    assert exc.value.tag == "invalid-value"
    with pytest.raises(RPCError) as exc:
        m.create_subscription(start_time="2020-01-01T00:00:00Z")
    assert exc.value.tag == "operation-failed"  # replay is not supported
    assert m.create_subscription(stream_name="NETCONF").ok
    with pytest.raises(RPCError) as exc:
        m.create_subscription()
    assert exc.value.tag == "in-use"


def test_subscriber_gone_does_not_disturb_commits(connect: Any) -> None:
    gone, live, writer = connect(), connect(), connect()
    gone.create_subscription()
    live.create_subscription()
    gone.close_session()
    writer.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    assert writer.commit().ok
    _config_change(live.take_notification(timeout=5))


def test_nodes_dropped_by_validation_are_reported(connect: Any) -> None:
    """A PHYS link turned VIRT loses its phys_* leaves ('when' false): the event lists them."""
    sub, writer = connect(), connect()
    lid = new_uuid()
    writer.edit_config(links_config(link_xml(lid)), target="candidate")
    writer.commit()
    sub.create_subscription()
    body = (f'<qkd_link><qkdl_id>{lid}</qkdl_id><qkdl_type xmlns:t="{QKD_TYPES_NS}">t:VIRT</qkdl_type>'
            "</qkd_link>")
    writer.edit_config(links_config(body), target="candidate")
    writer.commit()
    edits = _edits(_config_change(sub.take_notification(timeout=5)))
    deleted = {t.rsplit("}", 1)[-1] for op, t in edits if op == "delete" and t}
    assert {"phys_wavelength", "phys_channel_att"} <= deleted, edits
