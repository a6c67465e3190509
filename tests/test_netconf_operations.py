"""RFC 6241 operations against a real node: get, get-config with filters and with-defaults,
edit-config (every operation, default-operation, test-option, error-option), copy-config,
delete-config, validate, commit, discard-changes; ETSI 015 physical and virtual links."""

from __future__ import annotations

import time
from typing import Any

import pytest
from lxml import etree
from ncclient.operations import RPCError
from ncclient.xml_ import to_ele

from conftest import (
    MONITORING_NS,
    NC_NS,
    NSMAP,
    QKD_NS,
    QKD_TYPES_NS,
    WD_NS,
    link_ids,
    link_xml,
    links_config,
    new_uuid,
)

pytestmark = pytest.mark.timeout(30)


def running(m: Any) -> etree._Element:
    return m.get_config("running").data_ele


def candidate(m: Any) -> etree._Element:
    return m.get_config("candidate").data_ele


def link(root: etree._Element, lid: str) -> etree._Element | None:
    for el in root.iterfind(".//q:qkd_link", NSMAP):
        if el.findtext("q:qkdl_id", namespaces=NSMAP) == lid:
            return el
    return None


def leaf(root: etree._Element, lid: str, name: str) -> str | None:
    el = link(root, lid)
    return None if el is None else el.findtext(f"q:{name}", namespaces=NSMAP)


def identity(el: etree._Element | None) -> tuple[str | None, str]:
    """(namespace, name) of an identityref leaf, resolving its prefix."""
    assert el is not None and el.text
    prefix, _, name = el.text.strip().rpartition(":")
    return el.nsmap.get(prefix or None), name


def commit_links(m: Any, *links: str) -> None:
    m.edit_config(links_config(*links), target="candidate")
    m.commit()


@pytest.fixture
def two_links(manager: Any) -> tuple[str, str]:
    """A committed PHYS link and a committed VIRT link."""
    phys, virt = new_uuid(), new_uuid()
    commit_links(manager, link_xml(phys), link_xml(virt, kind="VIRT"))
    return phys, virt


# -- reading -----------------------------------------------------------------------------------
def test_get_config_running_has_node_identity(node: Any, manager: Any) -> None:
    data = running(manager)
    qn = data.find("q:qkd_node", NSMAP)
    assert qn is not None
    assert qn.findtext("q:qkdn_id", namespaces=NSMAP) == node.node.node_id
    assert qn.findtext("q:qkdn_location_id", namespaces=NSMAP) == "n1-site"
    assert qn.find("q:qkdn_status", NSMAP) is None, "state must not be in get-config"
    assert data.find("mon:netconf-state", NSMAP) is None


def test_get_has_config_and_state(manager: Any) -> None:
    data = manager.get().data_ele
    qn = data.find("q:qkd_node", NSMAP)
    assert identity(qn.find("q:qkdn_status", NSMAP)) == (QKD_TYPES_NS, "OPERATING")
    assert qn.findtext("q:qkdn_version", namespaces=NSMAP) == "qkdnet-0.1.0"
    assert data.find("mon:netconf-state/mon:statistics", NSMAP) is not None


def test_phys_and_virt_links(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    data = running(manager)
    assert identity(link(data, phys).find("q:qkdl_type", NSMAP)) == (QKD_TYPES_NS, "PHYS")
    assert identity(link(data, virt).find("q:qkdl_type", NSMAP)) == (QKD_TYPES_NS, "VIRT")
    assert leaf(data, phys, "phys_wavelength") == "20"
    assert float(leaf(data, phys, "phys_channel_att")) == 3.5
    assert leaf(data, virt, "virt_bandwidth") == "1000"
    assert leaf(data, virt, "virt_prev_hop")
    assert leaf(data, phys, "virt_bandwidth") is None


def test_get_config_candidate_sees_uncommitted_edits(manager: Any) -> None:
    lid = new_uuid()
    manager.edit_config(links_config(link_xml(lid)), target="candidate")
    assert lid in link_ids(candidate(manager))
    assert lid not in link_ids(running(manager))


def test_subtree_filter_list_key_selection(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    flt = (f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link><qkdl_id>{virt}</qkdl_id>'
           "</qkd_link></qkd_links></qkd_node>")
    data = manager.get_config("running", filter=("subtree", flt)).data_ele
    assert link_ids(data) == {virt}
    assert leaf(data, virt, "virt_bandwidth") == "1000"  # content match alone: the whole entry
    assert data.find("q:qkd_node/q:qkdn_id", NSMAP) is None


def test_subtree_filter_content_match_and_selection(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    flt = (f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link><qkdl_id>{phys}</qkdl_id><phys_wavelength/>'
           "</qkd_link></qkd_links></qkd_node>")
    data = manager.get_config("running", filter=("subtree", flt)).data_ele
    (el,) = data.findall(".//q:qkd_link", NSMAP)
    assert [etree.QName(c).localname for c in el] == ["qkdl_id", "phys_wavelength"]
    assert el.findtext("q:phys_wavelength", namespaces=NSMAP) == "20"


def test_subtree_filter_selection_of_all_keys(manager: Any, two_links: tuple[str, str]) -> None:
    flt = f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link><qkdl_id/></qkd_link></qkd_links></qkd_node>'
    data = manager.get_config("running", filter=("subtree", flt)).data_ele
    links = data.findall(".//q:qkd_link", NSMAP)
    assert {e.findtext("q:qkdl_id", namespaces=NSMAP) for e in links} == set(two_links)
    assert all(len(e) == 1 for e in links)


def test_subtree_filter_identityref_content_match(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    # the filter's prefix differs from the server's: a content match compares text, as RFC 6241 says
    flt = (f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link><qkdl_type>etsi-qkdn-types:VIRT</qkdl_type>'
           "<qkdl_id/></qkd_link></qkd_links></qkd_node>")
    data = manager.get_config("running", filter=("subtree", flt)).data_ele
    assert link_ids(data) == {virt}
    assert identity(data.find(".//q:qkdl_type", NSMAP)) == (QKD_TYPES_NS, "VIRT")


def test_subtree_filter_containment_node(manager: Any, two_links: tuple[str, str]) -> None:
    flt = f'<qkd_node xmlns="{QKD_NS}"><qkdn_capabilities/></qkd_node>'
    data = manager.get_config("running", filter=("subtree", flt)).data_ele
    qn = data.find("q:qkd_node", NSMAP)
    assert [etree.QName(c).localname for c in qn] == ["qkdn_capabilities"]
    assert qn.findtext("q:qkdn_capabilities/q:key_relay_mode_enable", namespaces=NSMAP) == "true"


def test_subtree_filter_no_match_is_empty(manager: Any, two_links: tuple[str, str]) -> None:
    flt = (f'<qkd_node xmlns="{QKD_NS}"><qkd_links><qkd_link><qkdl_id>{new_uuid()}</qkdl_id>'
           "</qkd_link></qkd_links></qkd_node>")
    data = manager.get_config("running", filter=("subtree", flt)).data_ele
    assert len(data) == 0


def test_subtree_filter_on_get_keeps_identityref_namespaces(manager: Any) -> None:
    """Filtered output must still declare the prefixes used in identityref values."""
    flt = f'<netconf-state xmlns="{MONITORING_NS}"><schemas/></netconf-state>'
    data = manager.get(filter=("subtree", flt)).data_ele
    formats = data.findall(".//mon:schema/mon:format", NSMAP)
    assert formats
    for f in formats:
        assert identity(f) == (MONITORING_NS, "yang")
    flt = f'<qkd_node xmlns="{QKD_NS}"><qkdn_status/></qkd_node>'
    data = manager.get(filter=("subtree", flt)).data_ele
    assert identity(data.find("q:qkd_node/q:qkdn_status", NSMAP)) == (QKD_TYPES_NS, "OPERATING")


def test_xpath_filter(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    sel = f"/x:qkd_node/x:qkd_links/x:qkd_link[x:qkdl_id='{phys}']/x:phys_wavelength"
    data = manager.get_config("running", filter=("xpath", ({"x": QKD_NS}, sel))).data_ele
    (el,) = data.findall(".//q:qkd_link", NSMAP)
    assert {etree.QName(c).localname for c in el} == {"qkdl_id", "phys_wavelength"}
    assert el.findtext("q:phys_wavelength", namespaces=NSMAP) == "20"
    # on <get>, state too
    data = manager.get(filter=("xpath", ({"x": QKD_NS}, "/x:qkd_node/x:qkdn_status"))).data_ele
    assert identity(data.find("q:qkd_node/q:qkdn_status", NSMAP)) == (QKD_TYPES_NS, "OPERATING")
    assert data.find("q:qkd_node/q:qkdn_id", NSMAP) is None


def test_xpath_filter_by_identity(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    sel = "/x:qkd_node/x:qkd_links/x:qkd_link[x:qkdl_type='t:VIRT']/x:qkdl_id"
    data = manager.get_config("running", filter=("xpath", ({"x": QKD_NS, "t": QKD_TYPES_NS}, sel))).data_ele
    assert link_ids(data) == {virt}


def test_xpath_filter_on_candidate(manager: Any) -> None:
    lid = new_uuid()
    manager.edit_config(links_config(link_xml(lid)), target="candidate")
    sel = "/x:qkd_node/x:qkd_links/x:qkd_link/x:qkdl_id"
    assert link_ids(manager.get_config("candidate", filter=("xpath", ({"x": QKD_NS}, sel))).data_ele) == {lid}
    assert link_ids(manager.get_config("running", filter=("xpath", ({"x": QKD_NS}, sel))).data_ele) == set()


def test_with_defaults(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    explicit = running(manager)
    assert leaf(explicit, phys, "qkdl_enable") is None  # default true, never set
    all_ = manager.get_config("running", with_defaults="report-all").data_ele
    assert leaf(all_, phys, "qkdl_enable") == "true"
    assert leaf(all_, virt, "qkdl_enable") == "true"
    tagged = manager.get_config("running", with_defaults="report-all-tagged").data_ele
    el = link(tagged, phys).find("q:qkdl_enable", NSMAP)
    assert el.get(f"{{{WD_NS}}}default") == "true"
    # explicitly set to its default: reported by explicit, dropped by trim
    manager.edit_config(links_config(link_xml(phys, kind=None, enable=True)), target="candidate")
    manager.commit()
    assert leaf(running(manager), phys, "qkdl_enable") == "true"
    trim = manager.get_config("running", with_defaults="trim").data_ele
    assert leaf(trim, phys, "qkdl_enable") is None


def test_with_defaults_on_get(manager: Any, two_links: tuple[str, str]) -> None:
    phys, _ = two_links
    assert leaf(manager.get().data_ele, phys, "qkdl_enable") is None
    assert leaf(manager.get(with_defaults="report-all").data_ele, phys, "qkdl_enable") == "true"


def test_with_defaults_bad_value(manager: Any) -> None:
    op = to_ele(f'<get-config xmlns="{NC_NS}"><source><running/></source>'
                f'<with-defaults xmlns="{WD_NS}">everything</with-defaults></get-config>')
    with pytest.raises(RPCError) as exc:
        manager.dispatch(op)
    assert exc.value.tag == "invalid-value"


# -- edit-config -------------------------------------------------------------------------------
def test_edit_merge_changes_one_leaf(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    manager.edit_config(links_config(f"<qkd_link><qkdl_id>{phys}</qkdl_id><phys_wavelength>33</phys_wavelength>"
                                     "</qkd_link>"), target="candidate")
    c = candidate(manager)
    assert leaf(c, phys, "phys_wavelength") == "33"
    assert float(leaf(c, phys, "phys_channel_att")) == 3.5  # untouched sibling
    assert link_ids(c) == {phys, virt}
    assert leaf(running(manager), phys, "phys_wavelength") == "20"
    manager.commit()
    assert leaf(running(manager), phys, "phys_wavelength") == "33"


def test_edit_replace_link(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    body = (f'<qkd_link xmlns:nc="{NC_NS}" nc:operation="replace"><qkdl_id>{phys}</qkdl_id>'
            f'<qkdl_type xmlns:t="{QKD_TYPES_NS}">t:PHYS</qkdl_type><phys_wavelength>7</phys_wavelength></qkd_link>')
    manager.edit_config(links_config(body), target="candidate")
    c = candidate(manager)
    assert leaf(c, phys, "phys_wavelength") == "7"
    assert leaf(c, phys, "phys_channel_att") is None  # replaced away
    assert link_ids(c) == {phys, virt}


def test_edit_create_new_and_existing(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    lid = new_uuid()
    manager.edit_config(links_config(link_xml(lid, operation="create")), target="candidate")
    assert lid in link_ids(candidate(manager))
    with pytest.raises(RPCError) as exc:
        manager.edit_config(links_config(link_xml(phys, operation="create")), target="candidate")
    assert exc.value.tag == "data-exists"


def test_edit_delete_and_remove(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    manager.edit_config(links_config(link_xml(phys, kind=None, operation="delete")), target="candidate")
    assert link_ids(candidate(manager)) == {virt}
    # remove of something missing is fine, delete is not
    manager.edit_config(links_config(link_xml(phys, kind=None, operation="remove")), target="candidate")
    with pytest.raises(RPCError) as exc:
        manager.edit_config(links_config(link_xml(phys, kind=None, operation="delete")), target="candidate")
    assert exc.value.tag == "data-missing"
    manager.edit_config(links_config(link_xml(virt, kind=None, operation="remove")), target="candidate")
    assert link_ids(candidate(manager)) == set()
    manager.commit()
    assert link_ids(running(manager)) == set()


def test_edit_delete_leaf(manager: Any, two_links: tuple[str, str]) -> None:
    phys, _ = two_links
    body = (f'<qkd_link><qkdl_id>{phys}</qkdl_id><phys_wavelength xmlns:nc="{NC_NS}" nc:operation="delete">20'
            "</phys_wavelength></qkd_link>")
    manager.edit_config(links_config(body), target="candidate")
    c = candidate(manager)
    assert leaf(c, phys, "phys_wavelength") is None
    assert float(leaf(c, phys, "phys_channel_att")) == 3.5


def test_edit_delete_leaf_without_value(manager: Any, two_links: tuple[str, str]) -> None:
    phys, _ = two_links
    body = (f'<qkd_link><qkdl_id>{phys}</qkdl_id><phys_wavelength xmlns:nc="{NC_NS}" nc:operation="remove"/>'
            "</qkd_link>")
    manager.edit_config(links_config(body), target="candidate")
    assert leaf(candidate(manager), phys, "phys_wavelength") is None


def test_default_operation_none(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    # no operation anywhere: nothing is created or changed
    body = f"<qkd_link><qkdl_id>{phys}</qkdl_id><phys_wavelength>99</phys_wavelength></qkd_link>"
    manager.edit_config(links_config(body), target="candidate", default_operation="none")
    assert leaf(candidate(manager), phys, "phys_wavelength") == "20"
    # an explicit operation below still applies; its ancestors are not modified
    body = (f'<qkd_link><qkdl_id>{phys}</qkdl_id><phys_wavelength xmlns:nc="{NC_NS}" nc:operation="merge">99'
            "</phys_wavelength></qkd_link>")
    manager.edit_config(links_config(body), target="candidate", default_operation="none")
    c = candidate(manager)
    assert leaf(c, phys, "phys_wavelength") == "99"
    assert link_ids(c) == {phys, virt}


def test_default_operation_none_delete_missing_is_data_missing(manager: Any, two_links: tuple[str, str]) -> None:
    body = link_xml(new_uuid(), kind=None, operation="delete")
    with pytest.raises(RPCError) as exc:
        manager.edit_config(links_config(body), target="candidate", default_operation="none")
    assert exc.value.tag == "data-missing"


def test_default_operation_replace(node: Any, manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    new = new_uuid()
    node_id = node.node.node_id
    cfg = (f'<config xmlns="{NC_NS}"><qkd_node xmlns="{QKD_NS}"><qkdn_id>{node_id}</qkdn_id>'
           f"<qkd_links>{link_xml(new)}</qkd_links></qkd_node></config>")
    manager.edit_config(cfg, target="candidate", default_operation="replace")
    c = candidate(manager)
    assert link_ids(c) == {new}
    # the whole qkd_node was replaced: what the edit does not hold is gone
    assert c.find("q:qkd_node/q:qkdn_version", NSMAP) is None
    assert c.find("q:qkd_node/q:qkdn_id", NSMAP).text == node_id
    manager.discard_changes()
    assert link_ids(candidate(manager)) == {phys, virt}


def test_default_operation_replace_result_must_be_valid(node: Any, manager: Any, two_links: tuple[str, str]) -> None:
    before = node.candidate_xml()
    # without qkdn_id (mandatory) the replaced candidate is invalid: test-then-set refuses it
    with pytest.raises(RPCError) as exc:
        manager.edit_config(links_config(link_xml(new_uuid())), target="candidate", default_operation="replace")
    assert exc.value.tag == "missing-element"
    assert node.candidate_xml() == before


def test_test_option_test_only_changes_nothing(node: Any, manager: Any, two_links: tuple[str, str]) -> None:
    before = node.candidate_xml()
    lid = new_uuid()
    manager.edit_config(links_config(link_xml(lid)), target="candidate", test_option="test-only")
    assert node.candidate_xml() == before
    assert lid not in link_ids(candidate(manager))
    assert not node.call(lambda: node.node.datastores.candidate_modified)
    # and an invalid edit is reported by test-only
    bad = links_config(f"<qkd_link><qkdl_id>{lid}</qkdl_id><phys_wavelength>0</phys_wavelength></qkd_link>")
    with pytest.raises(RPCError) as exc:
        manager.edit_config(bad, target="candidate", test_option="test-only")
    assert exc.value.tag in ("invalid-value", "unknown-element")
    assert node.candidate_xml() == before


def test_test_option_set_skips_validation_until_commit(manager: Any) -> None:
    lid = new_uuid()
    # a phys_* leaf without qkdl_type PHYS violates the 'when'; with test-option set it is stored
    body = f"<qkd_link><qkdl_id>{lid}</qkdl_id><phys_wavelength>5</phys_wavelength></qkd_link>"
    manager.edit_config(links_config(body), target="candidate", test_option="set")
    assert lid in link_ids(candidate(manager))
    with pytest.raises(RPCError):
        manager.commit()
    assert lid not in link_ids(running(manager))


def _two_creates(good: str, existing: str) -> str:
    return links_config(link_xml(good, operation="create"), link_xml(existing, operation="create"))


def test_error_option_rollback_on_error(node: Any, manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    before = node.candidate_xml()
    good = new_uuid()
    with pytest.raises(RPCError) as exc:
        manager.edit_config(_two_creates(good, phys), target="candidate", error_option="rollback-on-error")
    assert exc.value.tag == "data-exists"
    assert node.candidate_xml() == before
    assert good not in link_ids(candidate(manager))


def test_error_option_stop_on_error(manager: Any, two_links: tuple[str, str]) -> None:
    phys, _ = two_links
    good = new_uuid()
    with pytest.raises(RPCError) as exc:
        manager.edit_config(_two_creates(good, phys), target="candidate", error_option="stop-on-error")
    assert exc.value.tag == "data-exists"
    assert good not in link_ids(candidate(manager))


def test_error_option_continue_on_error(manager: Any, two_links: tuple[str, str]) -> None:
    phys, virt = two_links
    good1, good2 = new_uuid(), new_uuid()
    cfg = links_config(link_xml(good1, operation="create"), link_xml(phys, operation="create"),
                       link_xml(good2, operation="create"), link_xml(virt, operation="create"))
    with pytest.raises(RPCError) as exc:
        manager.edit_config(cfg, target="candidate", error_option="continue-on-error")
    errs = exc.value.errlist if exc.value.errlist else [exc.value]
    assert [e.tag for e in errs] == ["data-exists", "data-exists"]
    assert link_ids(candidate(manager)) == {phys, virt, good1, good2}


# -- copy-config, delete-config, validate, commit, discard-changes ----------------------------
def test_copy_running_to_candidate(manager: Any, two_links: tuple[str, str]) -> None:
    manager.edit_config(links_config(link_xml(new_uuid())), target="candidate")
    assert len(link_ids(candidate(manager))) == 3
    manager.copy_config(source="running", target="candidate")
    assert link_ids(candidate(manager)) == set(two_links)


def test_copy_inline_config_to_candidate(node: Any, manager: Any, two_links: tuple[str, str]) -> None:
    lid = new_uuid()
    node_id = node.node.node_id
    src = (f'<source xmlns="{NC_NS}"><config><qkd_node xmlns="{QKD_NS}"><qkdn_id>{node_id}</qkdn_id>'
           f"<qkd_links>{link_xml(lid, kind='VIRT')}</qkd_links></qkd_node></config></source>")
    manager.copy_config(source=src, target="candidate")
    c = candidate(manager)
    assert link_ids(c) == {lid}
    assert c.find("q:qkd_node/q:qkdn_version", NSMAP) is None
    manager.commit()
    assert link_ids(running(manager)) == {lid}


def test_copy_invalid_inline_config_is_refused(node: Any, manager: Any) -> None:
    before = node.candidate_xml()
    src = (f'<source xmlns="{NC_NS}"><config><qkd_node xmlns="{QKD_NS}"><qkdn_version>x</qkdn_version>'
           "</qkd_node></config></source>")
    with pytest.raises(RPCError) as exc:
        manager.copy_config(source=src, target="candidate")
    assert exc.value.tag == "missing-element"  # qkdn_id is mandatory
    assert node.candidate_xml() == before


def test_copy_config_to_running_not_supported(manager: Any) -> None:
    with pytest.raises(RPCError) as exc:
        manager.copy_config(source="candidate", target="running")
    assert exc.value.tag == "operation-not-supported"


def test_delete_config_candidate(manager: Any, two_links: tuple[str, str]) -> None:
    manager.delete_config("candidate")
    assert len(candidate(manager)) == 0
    assert link_ids(running(manager)) == set(two_links)
    with pytest.raises(RPCError) as exc:
        manager.delete_config("running")
    assert exc.value.tag == "operation-not-supported"
    manager.discard_changes()
    assert link_ids(candidate(manager)) == set(two_links)


def test_validate_candidate_and_inline(node: Any, manager: Any) -> None:
    assert manager.validate("candidate").ok
    good = etree.fromstring(
        f'<config xmlns="{NC_NS}"><qkd_node xmlns="{QKD_NS}"><qkdn_id>{new_uuid()}</qkdn_id>'
        f"<qkd_links>{link_xml(new_uuid())}</qkd_links></qkd_node></config>"
    )
    assert manager.validate(good).ok
    bad = etree.fromstring(
        f'<config xmlns="{NC_NS}"><qkd_node xmlns="{QKD_NS}"><qkd_links>{link_xml(new_uuid())}</qkd_links>'
        "</qkd_node></config>"
    )
    with pytest.raises(RPCError) as exc:
        manager.validate(bad)
    assert exc.value.tag == "missing-element"
    # validate never changes a datastore
    assert link_ids(candidate(manager)) == set()


def test_validate_candidate_reports_when_violation(manager: Any) -> None:
    lid = new_uuid()
    body = f"<qkd_link><qkdl_id>{lid}</qkdl_id><virt_bandwidth>5</virt_bandwidth></qkd_link>"
    manager.edit_config(links_config(body), target="candidate", test_option="set")
    with pytest.raises(RPCError) as exc:
        manager.validate("candidate")
    assert exc.value.tag == "unknown-element"


def test_commit_and_discard_changes(manager: Any, two_links: tuple[str, str]) -> None:
    lid = new_uuid()
    manager.edit_config(links_config(link_xml(lid)), target="candidate")
    manager.discard_changes()
    assert link_ids(candidate(manager)) == set(two_links)
    manager.edit_config(links_config(link_xml(lid, kind="VIRT")), target="candidate")
    manager.commit()
    r = running(manager)
    assert link_ids(r) == {*two_links, lid}
    assert identity(link(r, lid).find("q:qkdl_type", NSMAP)) == (QKD_TYPES_NS, "VIRT")
    # a commit without changes is fine
    assert manager.commit().ok


def test_commit_is_seen_by_other_sessions(connect: Any) -> None:
    m1, m2 = connect(), connect()
    lid = new_uuid()
    m1.edit_config(links_config(link_xml(lid)), target="candidate")
    assert lid in link_ids(candidate(m2))  # the candidate is shared (RFC 6241 8.3)
    m1.commit()
    assert lid in link_ids(running(m2))


def test_edit_config_running_not_supported(manager: Any) -> None:
    with pytest.raises(RPCError) as exc:
        manager.edit_config(links_config(link_xml(new_uuid())), target="running")
    assert exc.value.tag == "operation-not-supported"
    assert link_ids(running(manager)) == set()


def test_confirmed_commit_not_supported(manager: Any) -> None:
    with pytest.raises(RPCError) as exc:
        manager.dispatch(to_ele(f'<commit xmlns="{NC_NS}"><confirmed/></commit>'))
    assert exc.value.tag == "operation-not-supported"


def test_close_session(connect: Any, node: Any) -> None:
    m = connect()
    assert m.close_session().ok
    for _ in range(100):
        if node.call(lambda: len(node.node.netconf.sessions)) == 0:
            break
        time.sleep(0.02)
    assert node.call(lambda: len(node.node.netconf.sessions)) == 0
