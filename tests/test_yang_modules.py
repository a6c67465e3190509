"""Our ETSI GS QKD 015 YANG modules: golden tree, fidelity to the official text, validation.

The served tree (``yang/etsi-qkd-sdn-node.tree``) is regenerated, from the repository root, with::

    python -m pyang -f tree -p yang \\
        --deviation-module yang/qkdnet-etsi-qkd-sdn-node-deviations.yang \\
        yang/etsi-qkd-sdn-node.yang > yang/etsi-qkd-sdn-node.tree

``--deviation-module`` applies the deviations and prints only etsi-qkd-sdn-node. pyang also
applies them when the deviation module is simply listed as a second module
(``pyang -f tree -p yang yang/etsi-qkd-sdn-node.yang yang/qkdnet-...-deviations.yang``), but
then prints an (empty) tree for the deviation module too, i.e. one more blank line.

Tests that need the official modules (``<repo>/../shared/reference/etsi-qkd-015``) skip when
``shared/`` is not beside the checkout; yanglint tests skip without the ``yanglint`` CLI
(Debian package libyang2-tools).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libyang
import pytest
from pyang import context as pyang_context
from pyang import repository as pyang_repository
from yangcheck import (
    DEVIATION_MODULE,
    NODE_MODULE,
    NODE_NS,
    OFFICIAL_015,
    PROJECT_YANG,
    REPO_ROOT,
    TYPES_MODULE,
    TYPES_NS,
    official_015_available,
    official_015_context,
    prefix_official_when,
    project_015_context,
    validate_015,
)

NODE_YANG = PROJECT_YANG / f"{NODE_MODULE}.yang"
TYPES_YANG = PROJECT_YANG / f"{TYPES_MODULE}.yang"
DEVIATION_YANG = PROJECT_YANG / f"{DEVIATION_MODULE}.yang"
GOLDEN_TREE = PROJECT_YANG / f"{NODE_MODULE}.tree"
OFFICIAL_TREE = OFFICIAL_015 / f"{NODE_MODULE}.tree"

needs_official = pytest.mark.skipif(
    not official_015_available(),
    reason=f"official ETSI GS QKD 015 modules absent: {OFFICIAL_015} (shared/ is not beside the checkout)",
)
YANGLINT = shutil.which("yanglint")
needs_yanglint = pytest.mark.skipif(
    YANGLINT is None, reason="yanglint CLI not installed (Debian package libyang2-tools)"
)


# --------------------------------------------------------------------------- pyang


def _pyang_tree(*args: str) -> str:
    """`pyang -f tree -p yang <args>` run from the repository root, output as text."""
    # pyang reads module paths from these variables: keep them out for a reproducible tree.
    env = {k: v for k, v in os.environ.items() if k not in ("YANG_MODPATH", "YANG_INSTALL")}
    proc = subprocess.run(
        [sys.executable, "-m", "pyang", "-f", "tree", "-p", "yang", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"pyang failed: {proc.stderr}"
    assert proc.stderr == "", f"pyang warnings: {proc.stderr}"
    return proc.stdout


def test_golden_served_tree() -> None:
    served = _pyang_tree(
        "--deviation-module", f"yang/{DEVIATION_YANG.name}", f"yang/{NODE_YANG.name}"
    )
    assert served == GOLDEN_TREE.read_text(encoding="utf-8"), (
        f"{GOLDEN_TREE.name} is stale; regenerate it as the module docstring says"
    )
    # The deviation module listed as a plain module is applied as well (plus a blank line).
    listed = _pyang_tree(f"yang/{NODE_YANG.name}", f"yang/{DEVIATION_YANG.name}")
    assert listed.rstrip("\n") == served.rstrip("\n")


def test_served_tree_omits_what_we_do_not_implement() -> None:
    served = GOLDEN_TREE.read_text(encoding="utf-8")
    assert "app_statistics" not in served
    assert "+---n alarm" not in served
    assert "+---n event" not in served
    for kept in ("app_qos", "phys_perf", "+---n sdqkdn_link_down", "+---n sdqkdn_link_perf_update"):
        assert kept in served


@needs_official
def test_tree_equals_official_tree() -> None:
    """Without our deviations the tree is the official one: same names, types, keys, flags, order."""
    ours = _pyang_tree(f"yang/{NODE_YANG.name}")
    assert ours == OFFICIAL_TREE.read_text(encoding="utf-8")


_PROSE = frozenset({"description", "reference", "contact", "organization"})
Statement = tuple[str, str | None, tuple[Any, ...]]


def _statements(text: str, name: str) -> Statement:
    """The statement tree of a module as written, without prose (descriptions etc.) or comments."""
    ctx = pyang_context.Context(pyang_repository.FileRepository("", use_env=False))
    module = ctx.add_module(f"{name}.yang", text)
    assert module is not None, f"pyang cannot parse {name}: {ctx.errors}"

    def norm(stmt: Any) -> Statement:
        keyword = stmt.keyword if isinstance(stmt.keyword, str) else ":".join(stmt.keyword)
        return (
            keyword,
            stmt.arg,
            tuple(norm(sub) for sub in stmt.substmts if sub.keyword not in _PROSE),
        )

    return norm(module)


@needs_official
@pytest.mark.parametrize("name", [TYPES_MODULE, NODE_MODULE])
def test_statements_equal_official_but_prose(name: str) -> None:
    """Every statement but description/reference/contact/organization is the official one, in
    order (identities and bases, typedefs and patterns, groupings, defaults, mandatory, config),
    except the three identityref `when` expressions, which are the official ones prefixed."""
    official = (OFFICIAL_015 / f"{name}.yang").read_text(encoding="utf-8")
    if name == NODE_MODULE:
        official = prefix_official_when(official)
    ours = (PROJECT_YANG / f"{name}.yang").read_text(encoding="utf-8")
    assert _statements(ours, name) == _statements(official, name)


# --------------------------------------------------------------------------- libyang


def test_modules_compile_in_libyang() -> None:
    ctx = project_015_context(deviations=True)
    try:
        node = ctx.get_module(NODE_MODULE)
        types = ctx.get_module(TYPES_MODULE)
        assert node.implemented() and types.implemented()
        assert node.prefix() == "etsi-qkdn" and types.prefix() == "etsi-qkdn-types"
        assert [r.date() for r in node.revisions()][0] == "2022-01-30"
        assert [r.date() for r in types.revisions()][0] == "2022-01-30"
        assert ctx.get_module(DEVIATION_MODULE).implemented()
        # The deviation is applied to the compiled schema.
        app = next(ctx.find_path("/etsi-qkd-sdn-node:qkd_node/qkd_applications/qkd_app"))
        assert {child.name() for child in app.iter_tree() if child.name().startswith("app_")} == {
            "app_id",
            "app_status",
            "app_type",
            "app_priority",
            "app_qos",
        }
        notifications = {n.name() for n in node.children() if n.keyword() == "notification"}
        assert "alarm" not in notifications and "event" not in notifications
        assert "sdqkdn_link_down" in notifications
    finally:
        ctx.destroy()


@needs_yanglint
def test_yanglint_compiles_ours_without_warnings() -> None:
    proc = subprocess.run(
        [YANGLINT or "yanglint", "-p", str(PROJECT_YANG), *map(str, (TYPES_YANG, NODE_YANG, DEVIATION_YANG))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # the official text warns: identityref without prefix


# --------------------------------------------------------------------------- sample data

NODE_A = "11111111-1111-4111-8111-111111111111"
NODE_B = "22222222-2222-4222-8222-222222222222"
NODE_C = "33333333-3333-4333-8333-333333333333"
NODE_D = "44444444-4444-4444-8444-444444444444"
LINK_PHYS = "aaaaaaaa-0000-4000-8000-000000000001"
LINK_VIRT = "aaaaaaaa-0000-4000-8000-000000000002"
APP_CLIENT = "bbbbbbbb-0000-4000-8000-000000000001"
APP_RELAY = "bbbbbbbb-0000-4000-8000-000000000002"


def sample_document(*, with_state: bool, qkdn_id: str = NODE_A) -> str:
    """A qkd_node with two applications, two interfaces, a PHYS and a VIRT link.

    ``with_state`` adds the config false nodes (operational datastore); without it the
    document is a configuration datastore.
    """

    def state(text: str) -> str:
        return text if with_state else ""

    return f"""\
<qkd_node xmlns="{NODE_NS}" xmlns:qt="{TYPES_NS}">
  <qkdn_id>{qkdn_id}</qkdn_id>
  {state("<qkdn_status>qt:OPERATING</qkdn_status>")}
  <qkdn_version>qkdnet 0.1.0</qkdn_version>
  <qkdn_location_id>site-a</qkdn_location_id>
  <qkdn_capabilities>
    <link_stats_support>true</link_stats_support>
    <application_stats_support>false</application_stats_support>
    <key_relay_mode_enable>true</key_relay_mode_enable>
  </qkdn_capabilities>
  <qkd_applications>
    <qkd_app>
      <app_id>{APP_CLIENT}</app_id>
      {state("<app_status>qt:ON</app_status>")}
      <app_type>qt:CLIENT</app_type>
      <server_app_id>sae://site-a/encryptor-1</server_app_id>
      <client_app_id>sae://site-b/encryptor-1</client_app_id>
      <client_app_id>sae://site-b/encryptor-2</client_app_id>
      <app_priority>3</app_priority>
      {state("<creation_time>2026-11-27T10:00:00Z</creation_time>")}
      <expiration_time>2027-11-27T10:00:00+01:00</expiration_time>
      <app_qos>
        <max_bandwidth>64000</max_bandwidth>
        <min_bandwidth>1024</min_bandwidth>
        <jitter>10</jitter>
        <ttl>3600</ttl>
        <clients_shared_path_enable>false</clients_shared_path_enable>
        <clients_shared_keys_required>false</clients_shared_keys_required>
      </app_qos>
      <backing_qkdl_id>{LINK_PHYS}</backing_qkdl_id>
      <local_qkdn_id>{NODE_A}</local_qkdn_id>
      <remote_qkdn_id>{NODE_B}</remote_qkdn_id>
    </qkd_app>
    <qkd_app>
      <app_id>{APP_RELAY}</app_id>
      <app_type>qt:INTERNAL</app_type>
      <backing_qkdl_id>{LINK_VIRT}</backing_qkdl_id>
      <local_qkdn_id>{NODE_A}</local_qkdn_id>
      <remote_qkdn_id>{NODE_D}</remote_qkdn_id>
    </qkd_app>
  </qkd_applications>
  <qkd_interfaces>
    <qkd_interface>
      <qkdi_id>1</qkdi_id>
      <qkdi_model>qkdnet/sim-dv-bb84</qkdi_model>
      <qkdi_type>qt:DV-QKD</qkdi_type>
      <qkdi_att_point>
        <device>ofs-a</device>
        <port>3</port>
      </qkdi_att_point>
      <qkdi_capabilities>
        <role_support>qt:TRANSCEIVER</role_support>
        <wavelength_range>1,12-20,40</wavelength_range>
        <max_absorption>20.5</max_absorption>
      </qkdi_capabilities>
      {state("<qkdi_status>qt:ENABLED</qkdi_status>")}
    </qkd_interface>
    <qkd_interface>
      <qkdi_id>2</qkdi_id>
      <qkdi_model>qkdnet/sim-cv-gg02</qkdi_model>
      <qkdi_type>qt:CV-QKD</qkdi_type>
      {state("<qkdi_status>qt:DISABLED</qkdi_status>")}
    </qkd_interface>
  </qkd_interfaces>
  <qkd_links>
    <qkd_link>
      <qkdl_id>{LINK_PHYS}</qkdl_id>
      <qkdl_status>qt:ACTIVE</qkdl_status>
      <qkdl_enable>true</qkdl_enable>
      <qkdl_local>
        <qkdn_id>{NODE_A}</qkdn_id>
        <qkdi_id>1</qkdi_id>
      </qkdl_local>
      <qkdl_remote>
        <qkdn_id>{NODE_B}</qkdn_id>
        <qkdi_id>1</qkdi_id>
      </qkdl_remote>
      <qkdl_type>qt:PHYS</qkdl_type>
      <qkdl_applications>{APP_CLIENT}</qkdl_applications>
      <phys_channel_att>5.25</phys_channel_att>
      <phys_wavelength>20</phys_wavelength>
      <phys_qkd_role>qt:TRANSMITTER</phys_qkd_role>
      {state(f'''<qkdl_performance>
        <expected_consumption>64000</expected_consumption>
        <skr>120000</skr>
        <eskr>100000</eskr>
        <phys_perf>
          <perf_type>qt:QBER</perf_type>
          <value>0.021</value>
        </phys_perf>
        <phys_perf>
          <perf_type>qt:SNR</perf_type>
          <value>14.2</value>
        </phys_perf>
      </qkdl_performance>''')}
    </qkd_link>
    <qkd_link>
      <qkdl_id>{LINK_VIRT}</qkdl_id>
      <qkdl_status>qt:PENDING</qkdl_status>
      <qkdl_local>
        <qkdn_id>{NODE_A}</qkdn_id>
      </qkdl_local>
      <qkdl_remote>
        <qkdn_id>{NODE_D}</qkdn_id>
      </qkdl_remote>
      <qkdl_type>qt:VIRT</qkdl_type>
      <qkdl_applications>{APP_RELAY}</qkdl_applications>
      <virt_prev_hop>{NODE_A}</virt_prev_hop>
      <virt_next_hop>{NODE_B}</virt_next_hop>
      <virt_next_hop>{NODE_C}</virt_next_hop>
      <virt_bandwidth>2048</virt_bandwidth>
      {state('''<qkdl_performance>
        <expected_consumption>2048</expected_consumption>
        <skr>0</skr>
        <eskr>0</eskr>
      </qkdl_performance>''')}
    </qkd_link>
  </qkd_links>
</qkd_node>
"""


@pytest.fixture(scope="module")
def our_ctx() -> Iterator[libyang.Context]:
    """Our modules as served (with the deviation module)."""
    ctx = project_015_context(deviations=True)
    yield ctx
    ctx.destroy()


@pytest.fixture(scope="module")
def official_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[libyang.Context]:
    """The official modules, with the three `when` expressions prefixed."""
    if not official_015_available():
        pytest.skip(f"official ETSI GS QKD 015 modules absent: {OFFICIAL_015}")
    ctx = official_015_context(tmp_path_factory.mktemp("official-015-fixed"))
    yield ctx
    ctx.destroy()


@pytest.mark.parametrize("with_state", [False, True], ids=["config", "operational"])
def test_sample_valid_for_our_modules(our_ctx: libyang.Context, with_state: bool) -> None:
    validate_015(sample_document(with_state=with_state), with_state=with_state, ctx=our_ctx)


@pytest.mark.parametrize("with_state", [False, True], ids=["config", "operational"])
def test_sample_valid_for_our_modules_without_deviations(with_state: bool) -> None:
    ctx = project_015_context(deviations=False)
    try:
        validate_015(sample_document(with_state=with_state), with_state=with_state, ctx=ctx)
    finally:
        ctx.destroy()


@needs_official
@pytest.mark.parametrize("with_state", [False, True], ids=["config", "operational"])
def test_sample_valid_for_official_modules(official_ctx: libyang.Context, with_state: bool) -> None:
    validate_015(sample_document(with_state=with_state), with_state=with_state, ctx=official_ctx)


@needs_official
@pytest.mark.parametrize("with_state", [False, True], ids=["config", "operational"])
def test_sample_rejected_by_official_text_as_published(tmp_path: Path, with_state: bool) -> None:
    """The defect our modules fix: unprefixed identityref `when`s reject all phys_*/virt_* data."""
    ctx = official_015_context(tmp_path, fix_when=False)
    try:
        defect = r"When condition \"qkdl_type = '(PHYS|VIRT)'\" not satisfied"
        with pytest.raises(AssertionError, match=defect):
            validate_015(sample_document(with_state=with_state), with_state=with_state, ctx=ctx)
    finally:
        ctx.destroy()


def test_prefix_official_when_needs_exactly_three() -> None:
    with pytest.raises(AssertionError, match="expected 3"):
        prefix_official_when("""uses virtual_link_spec { when "qkdl_type = 'VIRT'"; }""")


@pytest.mark.parametrize("with_state", [False, True], ids=["config", "operational"])
def test_bad_uuid_rejected(our_ctx: libyang.Context, with_state: bool) -> None:
    doc = sample_document(with_state=with_state, qkdn_id="not-a-uuid")
    with pytest.raises(AssertionError, match="not-a-uuid"):
        validate_015(doc, with_state=with_state, ctx=our_ctx)


@needs_official
def test_bad_uuid_rejected_by_official(official_ctx: libyang.Context) -> None:
    doc = sample_document(with_state=True, qkdn_id="not-a-uuid")
    with pytest.raises(AssertionError, match="not-a-uuid"):
        validate_015(doc, with_state=True, ctx=official_ctx)


_VIRT_PHYS_PERF = "<skr>0</skr><phys_perf><perf_type>qt:QBER</perf_type><value>0.1</value></phys_perf>"


@pytest.mark.parametrize(
    ("original", "replacement", "message"),
    [
        # virtual-link parameters on a physical link, physical performance on a virtual one
        ("<phys_wavelength>20</phys_wavelength>", "<virt_bandwidth>5</virt_bandwidth>", "When condition"),
        ("<skr>0</skr>", _VIRT_PHYS_PERF, r"When condition \"\.\./qkdl_type"),
        ("<phys_wavelength>20</phys_wavelength>", "<phys_wavelength>0</phys_wavelength>", "pattern"),
        (f"<qkdn_id>{NODE_A}</qkdn_id>\n", "", 'Mandatory node "qkdn_id"'),
        ("<qkdn_version>", "<unknown_leaf>x</unknown_leaf><qkdn_version>", "unknown_leaf"),
        ("<perf_type>qt:SNR</perf_type>", "<perf_type>qt:CV-QKD</perf_type>", "CV-QKD"),
    ],
    ids=[
        "virt-on-phys",
        "phys_perf-on-virt",
        "bad-wavelength",
        "no-qkdn_id",
        "unknown-node",
        "wrong-identity-base",
    ],
)
def test_invalid_documents_rejected(
    our_ctx: libyang.Context, original: str, replacement: str, message: str
) -> None:
    doc = sample_document(with_state=True)
    assert doc.count(original) >= 1
    with pytest.raises(AssertionError, match=message):
        validate_015(doc.replace(original, replacement, 1), with_state=True, ctx=our_ctx)


def test_state_refused_in_config(our_ctx: libyang.Context) -> None:
    with pytest.raises(AssertionError, match="state node"):
        validate_015(sample_document(with_state=True), with_state=False, ctx=our_ctx)


def test_deviation_refuses_app_statistics() -> None:
    statistics = (
        "<app_statistics><statistics><end_time>2026-11-27T11:00:00Z</end_time>"
        "<consumed_bits>256</consumed_bits></statistics></app_statistics>"
    )
    doc = sample_document(with_state=True).replace(
        "<app_type>qt:CLIENT</app_type>", f"<app_type>qt:CLIENT</app_type>{statistics}", 1
    )
    ctx = project_015_context(deviations=False)
    try:
        validate_015(doc, with_state=True, ctx=ctx)  # the standard allows it
    finally:
        ctx.destroy()
    served = project_015_context(deviations=True)
    try:
        with pytest.raises(AssertionError, match="app_statistics"):
            validate_015(doc, with_state=True, ctx=served)
    finally:
        served.destroy()


# --------------------------------------------------------------------------- yanglint


def _yanglint_data(tmp_path: Path, document: str, data_type: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / f"qkd_node-{data_type}.xml"
    data.write_text(document, encoding="utf-8")
    return subprocess.run(
        [
            YANGLINT or "yanglint",
            "-t", data_type,
            "-p", str(PROJECT_YANG),
            str(TYPES_YANG), str(NODE_YANG), str(DEVIATION_YANG),
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_yanglint
@pytest.mark.parametrize(
    ("with_state", "data_type"), [(False, "config"), (True, "data")], ids=["config", "data"]
)
def test_yanglint_accepts_sample(tmp_path: Path, with_state: bool, data_type: str) -> None:
    """Second opinion from the yanglint CLI (`-t data` validates state too; `-t get` only parses)."""
    proc = _yanglint_data(tmp_path, sample_document(with_state=with_state), data_type)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


@needs_yanglint
def test_yanglint_rejects_bad_uuid(tmp_path: Path) -> None:
    proc = _yanglint_data(tmp_path, sample_document(with_state=True, qkdn_id="not-a-uuid"), "data")
    assert proc.returncode != 0
    assert "not-a-uuid" in proc.stderr
