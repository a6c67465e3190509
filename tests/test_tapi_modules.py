"""Our ONF TAPI 2.1.3 subset: compilation, golden tree, subset of the official schema, validation.

The tree (``yang/tapi.tree``) is regenerated, from the repository root, with::

    python -m pyang -f tree -p yang yang/tapi-common.yang yang/tapi-topology.yang \\
        yang/tapi-connectivity.yang yang/tapi-photonic-media.yang > yang/tapi.tree

pyang prints the augments of the three other modules inside the tree of tapi-common
(all four are on the command line), so the file holds one ``module: tapi-common`` tree.

Tests that need the official modules (``<repo>/../shared/reference/tapi-2.1.3``) skip when
``shared/`` is not beside the checkout; yanglint tests skip without the ``yanglint`` CLI.
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
from tapicheck import (
    COMMON_NS,
    CONNECTIVITY_NS,
    OFFICIAL_TAPI,
    PHOTONIC_NS,
    PROJECT_MODULES,
    PROJECT_YANG,
    REPO_ROOT,
    TOPOLOGY_NS,
    official_file,
    official_tapi_available,
    official_tapi_context,
    project_tapi_context,
    tapi_schema,
    validate_tapi,
)

GOLDEN_TREE = PROJECT_YANG / "tapi.tree"
MODULE_FILES = [PROJECT_YANG / f"{name}.yang" for name in PROJECT_MODULES]
NAMESPACES = {
    "tapi-common": COMMON_NS,
    "tapi-topology": TOPOLOGY_NS,
    "tapi-connectivity": CONNECTIVITY_NS,
    "tapi-photonic-media": PHOTONIC_NS,
}

needs_official = pytest.mark.skipif(
    not official_tapi_available(),
    reason=f"official TAPI 2.1.3 modules absent: {OFFICIAL_TAPI} (shared/ is not beside the checkout)",
)
YANGLINT = shutil.which("yanglint")
needs_yanglint = pytest.mark.skipif(
    YANGLINT is None, reason="yanglint CLI not installed (Debian package libyang2-tools)"
)


# --------------------------------------------------------------------------- compilation


def test_modules_compile_in_libyang() -> None:
    ctx = project_tapi_context()
    try:
        for name, revision in PROJECT_MODULES.items():
            module = ctx.get_module(name)
            assert module.implemented(), name
            assert module.prefix() == name
            assert [r.date() for r in module.revisions()] == [revision]
        # Official namespaces, and no module of ours beyond the four.
        loaded = {m.name() for m in ctx if m.name().startswith("tapi-")}
        assert loaded == set(PROJECT_MODULES)
        assert next(ctx.find_path("/tapi-common:context")).presence() is not None
    finally:
        ctx.destroy()


@pytest.mark.parametrize("name", list(PROJECT_MODULES))
def test_module_header(name: str) -> None:
    text = (PROJECT_YANG / f"{name}.yang").read_text(encoding="utf-8")
    assert f'namespace "{NAMESPACES[name]}";' in text
    assert "TAPI) 2.1.3" in text and "Apache License 2.0" in text  # header comment
    assert "yang-version" not in text  # YANG 1.0, as the official modules


@needs_yanglint
def test_yanglint_compiles_ours_without_warnings() -> None:
    proc = subprocess.run(
        [YANGLINT or "yanglint", "-p", str(PROJECT_YANG), *map(str, MODULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_golden_tree() -> None:
    # pyang reads module paths from these variables: keep them out for a reproducible tree.
    env = {k: v for k, v in os.environ.items() if k not in ("YANG_MODPATH", "YANG_INSTALL")}
    proc = subprocess.run(
        [sys.executable, "-m", "pyang", "-f", "tree", "-p", "yang",
         *(f"yang/{path.name}" for path in MODULE_FILES)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"pyang failed: {proc.stderr}"
    assert proc.stderr == "", f"pyang warnings: {proc.stderr}"
    assert proc.stdout == GOLDEN_TREE.read_text(encoding="utf-8"), (
        f"{GOLDEN_TREE.name} is stale; regenerate it as the module docstring says"
    )


# --------------------------------------------------------------------------- subset of the official schema


@pytest.fixture(scope="module")
def our_ctx() -> Iterator[libyang.Context]:
    ctx = project_tapi_context()
    yield ctx
    ctx.destroy()


@pytest.fixture(scope="module")
def official_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[libyang.Context]:
    if not official_tapi_available():
        pytest.skip(f"official TAPI 2.1.3 modules absent: {OFFICIAL_TAPI}")
    ctx = official_tapi_context(tmp_path_factory.mktemp("official-tapi"))
    yield ctx
    ctx.destroy()


@needs_official
def test_data_nodes_are_official(our_ctx: libyang.Context, official_ctx: libyang.Context) -> None:
    """Every data node of ours is in the official schema at the same path, with the same kind,
    config/state flag, presence, keys, min/max-elements, type (name, base, enums, leafref
    path and require-instance, ranges, lengths, patterns), default and mandatory flag."""
    ours = tapi_schema(our_ctx)
    official = tapi_schema(official_ctx)
    assert len(ours) > 150
    missing = sorted(path for path in ours if path not in official)
    assert not missing, f"not in the official modules: {missing}"
    different = [(ours[path], official[path]) for path in ours if ours[path] != official[path]]
    assert not different, "\n".join(f"ours:     {o}\nofficial: {f}" for o, f in different)


@needs_official
def test_no_official_constraint_left_out(
    our_ctx: libyang.Context, official_ctx: libyang.Context
) -> None:
    """Where we keep a node, we keep all its children the official schema constrains
    (min-elements, mandatory): data valid for ours then meets them too. TAPI has no
    must/when/unique statements, so keys, types, leafrefs and these are all its rules."""
    ours = tapi_schema(our_ctx)
    official = tapi_schema(official_ctx)
    left_out = sorted(
        path
        for path, node in official.items()
        if path not in ours
        and path.rpartition("/")[0] in ours
        and (node.min_elements > 0 or node.mandatory)
    )
    assert not left_out, f"constrained official nodes left out: {left_out}"


_PROSE = frozenset({"description", "reference", "contact", "organization"})
Statement = tuple[str, str | None, tuple[Any, ...]]


def _definitions(path: Path, name: str) -> dict[tuple[str, str], Statement]:
    """The identities and typedefs of a module as written, without prose."""
    ctx = pyang_context.Context(pyang_repository.FileRepository("", use_env=False))
    module = ctx.add_module(path.name, path.read_text(encoding="utf-8"))
    assert module is not None, f"pyang cannot parse {name}: {ctx.errors}"

    def norm(stmt: Any) -> Statement:
        keyword = stmt.keyword if isinstance(stmt.keyword, str) else ":".join(stmt.keyword)
        return (keyword, stmt.arg, tuple(norm(s) for s in stmt.substmts if s.keyword not in _PROSE))

    return {
        (stmt.keyword, stmt.arg): norm(stmt)
        for stmt in module.substmts
        if stmt.keyword in ("identity", "typedef")
    }


@needs_official
@pytest.mark.parametrize("name", list(PROJECT_MODULES))
def test_identities_and_typedefs_are_official(name: str) -> None:
    """Each identity (with its base) and typedef (with its enums / base) we define is defined
    the same in the official module: identityref values valid for ours are valid there."""
    ours = _definitions(PROJECT_YANG / f"{name}.yang", name)
    official = _definitions(official_file(name), name)
    for key, statement in ours.items():
        assert key in official, f"{name}: {key} is not official"
        assert statement == official[key], f"{name}: {key} differs from the official text"


# --------------------------------------------------------------------------- sample data

CTX = "c0c0c0c0-0000-4000-8000-000000000000"
SIP = [f"5195195a-0000-4000-8000-00000000000{i}" for i in range(1, 5)]
TOPO = "70707070-0000-4000-8000-000000000001"
NODE_A = "a0a0a0a0-0000-4000-8000-000000000001"  # our optical switch
NODE_B = "b0b0b0b0-0000-4000-8000-000000000001"  # far end of fibre 1 (neighbour's switch)
NODE_C = "c1c1c1c1-0000-4000-8000-000000000001"  # far end of fibre 2
NEP = [f"a1a1a1a1-0000-4000-8000-00000000000{i}" for i in range(1, 5)]
NEP_B = "b1b1b1b1-0000-4000-8000-000000000001"
NEP_C = "c2c2c2c2-0000-4000-8000-000000000001"
CEP_1 = "cececece-0000-4000-8000-000000000001"
CEP_3 = "cececece-0000-4000-8000-000000000003"
LINK_AB = "11111111-0000-4000-8000-0000000000ab"
LINK_AC = "11111111-0000-4000-8000-0000000000ac"
SERVICE = "5e5e5e5e-0000-4000-8000-000000000001"
CONNECTION = "c0cc0cc0-0000-4000-8000-000000000001"

# ITU-T G.694.1 100 GHz DWDM channel at 193.4 THz (1550.12 nm), in MHz.
LOWER_MHZ = 193_350_000
UPPER_MHZ = 193_450_000
C_BAND = (191_300_000, 196_100_000)

ROLES = ["qkd-tx-alice-1", "qkd-rx-bob-1", "fibre-to-b", "fibre-to-c"]


def sample_document(*, with_state: bool, lower_mhz: str | int = LOWER_MHZ) -> str:
    """A TAPI context served by node A's agent.

    Four SIPs (the four ports of A's optical switch); a topology with A's switch as a node
    whose four owned NEPs map to the SIPs, and two fibre links from A's line ports to the
    switches of neighbours B and C (present as nodes with one NEP each, because every
    reference in TAPI is a leafref that needs its target), each carrying its loss as a cost
    characteristic; a connectivity service SIP 1 <-> SIP 3 asking for the 100 GHz channel
    at 193.4 THz; the connection realising it between the CEPs of NEP 1 and NEP 3.

    ``with_state`` adds the config false nodes (operational datastore); without it the
    document is a configuration datastore (the SIPs with their configurable leaves and
    the connectivity service, which is what a client edits).
    """

    def state(text: str) -> str:
        return text if with_state else ""

    def name(value: str) -> str:
        return f"<name><value-name>name</value-name><value>{value}</value></name>"

    def spectrum(tag: str, lower: int | str, upper: int) -> str:
        return (
            f"<{tag}><upper-frequency>{upper}</upper-frequency>"
            f"<lower-frequency>{lower}</lower-frequency>"
            "<frequency-constraint><adjustment-granularity>G_100GHZ</adjustment-granularity>"
            f"<grid-type>DWDM</grid-type></frequency-constraint></{tag}>"
        )

    def sip(i: int) -> str:
        occupied = spectrum("occupied-spectrum", LOWER_MHZ, UPPER_MHZ) if i in (0, 2) else ""
        return f"""
    <service-interface-point>
      <uuid>{SIP[i]}</uuid>
      {name(f"ofs-a/port-{i + 1}/{ROLES[i]}")}
      <direction>BIDIRECTIONAL</direction>
      <administrative-state>UNLOCKED</administrative-state>
      {state(f'''<layer-protocol-name>PHOTONIC_MEDIA</layer-protocol-name>
      <supported-layer-protocol-qualifier>pm:PHOTONIC_LAYER_QUALIFIER_MC</supported-layer-protocol-qualifier>
      <operational-state>ENABLED</operational-state>
      <lifecycle-state>INSTALLED</lifecycle-state>
      <media-channel-service-interface-point-spec xmlns="{PHOTONIC_NS}">
        <mc-pool>
          {spectrum("supportable-spectrum", C_BAND[0], C_BAND[1])}
          {occupied}
        </mc-pool>
      </media-channel-service-interface-point-spec>''')}
    </service-interface-point>"""

    def cep(cep_uuid: str, nep_uuid: str) -> str:
        return f"""
            <cep-list xmlns="{CONNECTIVITY_NS}">
              <connection-end-point>
                <uuid>{cep_uuid}</uuid>
                <layer-protocol-name>PHOTONIC_MEDIA</layer-protocol-name>
                <layer-protocol-qualifier>pm:PHOTONIC_LAYER_QUALIFIER_MC</layer-protocol-qualifier>
                <parent-node-edge-point>
                  <topology-uuid>{TOPO}</topology-uuid>
                  <node-uuid>{NODE_A}</node-uuid>
                  <node-edge-point-uuid>{nep_uuid}</node-edge-point-uuid>
                </parent-node-edge-point>
                <connection-port-direction>BIDIRECTIONAL</connection-port-direction>
                <operational-state>ENABLED</operational-state>
                <lifecycle-state>INSTALLED</lifecycle-state>
              </connection-end-point>
            </cep-list>"""

    def nep(nep_uuid: str, label: str, sip_uuid: str | None = None, ceps: str = "") -> str:
        mapped = (
            "<mapped-service-interface-point><service-interface-point-uuid>"
            f"{sip_uuid}</service-interface-point-uuid></mapped-service-interface-point>"
            if sip_uuid
            else ""
        )
        return f"""
          <owned-node-edge-point>
            <uuid>{nep_uuid}</uuid>
            {name(label)}
            <layer-protocol-name>PHOTONIC_MEDIA</layer-protocol-name>
            <supported-cep-layer-protocol-qualifier>pm:PHOTONIC_LAYER_QUALIFIER_MC</supported-cep-layer-protocol-qualifier>
            {mapped}
            <link-port-direction>BIDIRECTIONAL</link-port-direction>
            <administrative-state>UNLOCKED</administrative-state>
            <operational-state>ENABLED</operational-state>
            <lifecycle-state>INSTALLED</lifecycle-state>{ceps}
          </owned-node-edge-point>"""

    def node(node_uuid: str, label: str, neps: str, insertion_loss_db: str) -> str:
        return f"""
        <node>
          <uuid>{node_uuid}</uuid>
          {name(label)}{neps}
          <layer-protocol-name>PHOTONIC_MEDIA</layer-protocol-name>
          <administrative-state>UNLOCKED</administrative-state>
          <operational-state>ENABLED</operational-state>
          <lifecycle-state>INSTALLED</lifecycle-state>
          <cost-characteristic>
            <cost-name>insertion-loss-db</cost-name>
            <cost-value>{insertion_loss_db}</cost-value>
            <cost-algorithm>switch insertion loss, port to port, dB</cost-algorithm>
          </cost-characteristic>
          <latency-characteristic>
            <traffic-property-name>propagation</traffic-property-name>
            <fixed-latency-characteristic>0.01 us</fixed-latency-characteristic>
          </latency-characteristic>
        </node>"""

    def link(link_uuid: str, label: str, far_node: str, far_nep: str, near_nep: str,
             loss_db: str, km: str, latency_us: str) -> str:
        ends = "".join(
            f"<node-edge-point><topology-uuid>{TOPO}</topology-uuid><node-uuid>{n}</node-uuid>"
            f"<node-edge-point-uuid>{p}</node-edge-point-uuid></node-edge-point>"
            for n, p in ((NODE_A, near_nep), (far_node, far_nep))
        )
        return f"""
        <link>
          <uuid>{link_uuid}</uuid>
          {name(label)}
          {ends}
          <layer-protocol-name>PHOTONIC_MEDIA</layer-protocol-name>
          <direction>BIDIRECTIONAL</direction>
          <administrative-state>UNLOCKED</administrative-state>
          <operational-state>ENABLED</operational-state>
          <lifecycle-state>INSTALLED</lifecycle-state>
          <cost-characteristic>
            <cost-name>fibre-loss-db</cost-name>
            <cost-value>{loss_db}</cost-value>
            <cost-algorithm>attenuation of the fibre end to end at 1550 nm, dB ({km} km)</cost-algorithm>
          </cost-characteristic>
          <latency-characteristic>
            <traffic-property-name>propagation</traffic-property-name>
            <fixed-latency-characteristic>{latency_us} us</fixed-latency-characteristic>
          </latency-characteristic>
          <risk-characteristic>
            <risk-characteristic-name>fibre-cable</risk-characteristic-name>
            <risk-identifier-list>cable-{label}</risk-identifier-list>
          </risk-characteristic>
          <validation-mechanism>
            <validation-mechanism>provisioned</validation-mechanism>
            <layer-protocol-adjacency-validated>VALIDATED</layer-protocol-adjacency-validated>
            <validation-robustness>operator</validation-robustness>
          </validation-mechanism>
          <transitioned-layer-protocol-name>PHOTONIC_MEDIA</transitioned-layer-protocol-name>
          <transitioned-layer-protocol-name>PHOTONIC_MEDIA/OTS</transitioned-layer-protocol-name>
        </link>"""

    topology = f"""
  <topology-context xmlns="{TOPOLOGY_NS}">
    <topology>
      <uuid>{TOPO}</uuid>
      {name("qkdnet/site-a")}
      <layer-protocol-name>PHOTONIC_MEDIA</layer-protocol-name>
      {node(NODE_A, "ofs-a",
            nep(NEP[0], "ofs-a/port-1", SIP[0], cep(CEP_1, NEP[0]))
            + nep(NEP[1], "ofs-a/port-2", SIP[1])
            + nep(NEP[2], "ofs-a/port-3", SIP[2], cep(CEP_3, NEP[2]))
            + nep(NEP[3], "ofs-a/port-4", SIP[3]),
            "0.8")}
      {node(NODE_B, "ofs-b", nep(NEP_B, "ofs-b/port-3"), "0.8")}
      {node(NODE_C, "ofs-c", nep(NEP_C, "ofs-c/port-3"), "1.0")}
      {link(LINK_AB, "a-b", NODE_B, NEP_B, NEP[2], "5.25", "25.0", "122.5")}
      {link(LINK_AC, "a-c", NODE_C, NEP_C, NEP[3], "10.40", "50.1", "245.6")}
    </topology>
  </topology-context>"""

    def cs_end_point(local_id: str, sip_uuid: str, cep_uuid: str, nep_uuid: str) -> str:
        return f"""
      <end-point>
        <local-id>{local_id}</local-id>
        <layer-protocol-name>PHOTONIC_MEDIA</layer-protocol-name>
        <layer-protocol-qualifier>pm:PHOTONIC_LAYER_QUALIFIER_MC</layer-protocol-qualifier>
        <service-interface-point>
          <service-interface-point-uuid>{sip_uuid}</service-interface-point-uuid>
        </service-interface-point>
        <direction>BIDIRECTIONAL</direction>
        <administrative-state>UNLOCKED</administrative-state>
        <media-channel-connectivity-service-end-point-spec xmlns="{PHOTONIC_NS}">
          <mc-config>
            {spectrum("spectrum", lower_mhz, UPPER_MHZ)}
          </mc-config>
        </media-channel-connectivity-service-end-point-spec>
        {state(f'''<connection-end-point>
          <topology-uuid>{TOPO}</topology-uuid>
          <node-uuid>{NODE_A}</node-uuid>
          <node-edge-point-uuid>{nep_uuid}</node-edge-point-uuid>
          <connection-end-point-uuid>{cep_uuid}</connection-end-point-uuid>
        </connection-end-point>
        <operational-state>ENABLED</operational-state>
        <lifecycle-state>INSTALLED</lifecycle-state>''')}
      </end-point>"""

    connection_ends = "".join(
        f"""
        <connection-end-point>
          <topology-uuid>{TOPO}</topology-uuid>
          <node-uuid>{NODE_A}</node-uuid>
          <node-edge-point-uuid>{nep_uuid}</node-edge-point-uuid>
          <connection-end-point-uuid>{cep_uuid}</connection-end-point-uuid>
        </connection-end-point>"""
        for nep_uuid, cep_uuid in ((NEP[0], CEP_1), (NEP[2], CEP_3))
    )

    return f"""\
<context xmlns="{COMMON_NS}" xmlns:pm="{PHOTONIC_NS}">
  <uuid>{CTX}</uuid>
  {name("qkdnet/node-a")}{"".join(sip(i) for i in range(4))}
  {state(topology)}
  <connectivity-context xmlns="{CONNECTIVITY_NS}">
    <connectivity-service>
      <uuid>{SERVICE}</uuid>
      {name("alice-1-to-b")}
      {cs_end_point("alice-1", SIP[0], CEP_1, NEP[0])}
      {cs_end_point("fibre-to-b", SIP[2], CEP_3, NEP[2])}
      <service-layer>PHOTONIC_MEDIA</service-layer>
      <service-type>POINT_TO_POINT_CONNECTIVITY</service-type>
      <connectivity-direction>BIDIRECTIONAL</connectivity-direction>
      <administrative-state>UNLOCKED</administrative-state>
      {state(f'''<connection><connection-uuid>{CONNECTION}</connection-uuid></connection>
      <operational-state>ENABLED</operational-state>
      <lifecycle-state>INSTALLED</lifecycle-state>''')}
    </connectivity-service>
    {state(f'''<connection>
      <uuid>{CONNECTION}</uuid>
      {name("ofs-a/xc/port-1/port-3")}{connection_ends}
      <direction>BIDIRECTIONAL</direction>
      <layer-protocol-name>PHOTONIC_MEDIA</layer-protocol-name>
      <operational-state>ENABLED</operational-state>
      <lifecycle-state>INSTALLED</lifecycle-state>
    </connection>''')}
  </connectivity-context>
</context>
"""


MODES = pytest.mark.parametrize("with_state", [False, True], ids=["config", "operational"])


@MODES
def test_sample_valid_for_our_modules(our_ctx: libyang.Context, with_state: bool) -> None:
    validate_tapi(sample_document(with_state=with_state), with_state=with_state, ctx=our_ctx)


@needs_official
@MODES
def test_sample_valid_for_official_modules(official_ctx: libyang.Context, with_state: bool) -> None:
    validate_tapi(sample_document(with_state=with_state), with_state=with_state, ctx=official_ctx)


def test_sample_shape(our_ctx: libyang.Context) -> None:
    """The operational sample holds what it claims: 4 SIPs, A's switch with 4 NEPs mapped to
    them, 2 links with a loss, 1 service with a spectrum, 1 connection."""
    tree = our_ctx.parse_data_mem(
        sample_document(with_state=True), "xml", strict=True, validate_present=True
    )
    assert tree is not None
    try:
        data = tree.print_dict(absolute=False, with_siblings=True)["context"]
    finally:
        tree.free()
    assert len(data["service-interface-point"]) == 4
    (topology,) = data["topology-context"]["topology"]
    switch = next(n for n in topology["node"] if n["uuid"] == NODE_A)
    mapped = [
        m["service-interface-point-uuid"]
        for nep_data in switch["owned-node-edge-point"]
        for m in nep_data["mapped-service-interface-point"]
    ]
    assert sorted(mapped) == sorted(SIP)
    losses = {
        link_data["uuid"]: cost["cost-value"]
        for link_data in topology["link"]
        for cost in link_data["cost-characteristic"]
        if cost["cost-name"] == "fibre-loss-db"
    }
    assert losses == {LINK_AB: "5.25", LINK_AC: "10.40"}
    (service,) = data["connectivity-context"]["connectivity-service"]
    bands = {
        (s["lower-frequency"], s["upper-frequency"])
        for ep in service["end-point"]
        for s in [ep["media-channel-connectivity-service-end-point-spec"]["mc-config"]["spectrum"]]
    }
    assert bands == {(LOWER_MHZ, UPPER_MHZ)}
    assert len(data["connectivity-context"]["connection"]) == 1


# --------------------------------------------------------------------------- invalid data

_ONE_END_POINT_START = "\n      <end-point>\n        <local-id>fibre-to-b</local-id>"

INVALID = [
    # (original, replacement, message libyang gives)
    (f"<service-interface-point-uuid>{SIP[2]}</service-interface-point-uuid>\n        </service",
     "<service-interface-point-uuid>no-such-sip</service-interface-point-uuid>\n        </service",
     "no-such-sip"),
    ("<administrative-state>UNLOCKED</administrative-state>\n        <media-channel",
     "<administrative-state>OPEN</administrative-state>\n        <media-channel", "OPEN"),
    ("<service-layer>", "<qkd-key-rate>1000</qkd-key-rate><service-layer>", "qkd-key-rate"),
    ("<service-type>POINT_TO_POINT_CONNECTIVITY</service-type>",
     "<service-type>POINT_TO_POINT_CONNECTIVITY</service-type>"
     "<service-type>MULTIPOINT_CONNECTIVITY</service-type>", "service-type"),
    ("pm:PHOTONIC_LAYER_QUALIFIER_MC</layer-protocol-qualifier>",
     "pm:PHOTONIC_LAYER_QUALIFIER_XX</layer-protocol-qualifier>", "PHOTONIC_LAYER_QUALIFIER_XX"),
]
INVALID_IDS = ["dangling-sip-leafref", "bad-enum", "unknown-leaf", "duplicate-leaf", "unknown-identity"]


@MODES
@pytest.mark.parametrize(("original", "replacement", "message"), INVALID, ids=INVALID_IDS)
def test_invalid_documents_rejected(
    our_ctx: libyang.Context, with_state: bool, original: str, replacement: str, message: str
) -> None:
    doc = sample_document(with_state=with_state)
    assert doc.count(original) >= 1, original
    with pytest.raises(AssertionError, match=message):
        validate_tapi(doc.replace(original, replacement, 1), with_state=with_state, ctx=our_ctx)


@needs_official
@pytest.mark.parametrize(("original", "replacement", "message"), INVALID, ids=INVALID_IDS)
def test_invalid_documents_rejected_by_official(
    official_ctx: libyang.Context, original: str, replacement: str, message: str
) -> None:
    doc = sample_document(with_state=True)
    with pytest.raises(AssertionError, match=message):
        validate_tapi(doc.replace(original, replacement, 1), with_state=True, ctx=official_ctx)


@MODES
def test_bad_frequency_rejected(our_ctx: libyang.Context, with_state: bool) -> None:
    """Frequencies are uint64 MHz: '193.35 THz' is no value."""
    doc = sample_document(with_state=with_state, lower_mhz="193.35 THz")
    with pytest.raises(AssertionError, match="193.35 THz"):
        validate_tapi(doc, with_state=with_state, ctx=our_ctx)


def test_uuid_is_not_restricted(our_ctx: libyang.Context) -> None:
    """TAPI 2.1.3 types uuid as a plain string (the RFC 4122 form is only described): any
    string is a valid uuid, here as in the official modules. Checking the form is ours to do."""
    doc = sample_document(with_state=False).replace(CTX, "not-a-uuid", 1)
    validate_tapi(doc, with_state=False, ctx=our_ctx)


@MODES
def test_single_end_point_rejected(our_ctx: libyang.Context, with_state: bool) -> None:
    """A connectivity service needs at least two end points (min-elements 2)."""
    doc = sample_document(with_state=with_state)
    start = doc.index(_ONE_END_POINT_START)
    end = doc.index("</end-point>", start) + len("</end-point>")
    with pytest.raises(AssertionError, match='Too few "end-point"'):
        validate_tapi(doc[:start] + doc[end:], with_state=with_state, ctx=our_ctx)


_LOSS_START = "\n          <cost-characteristic>\n            <cost-name>fibre-loss-db"


def _without_first_link_cost(doc: str) -> str:
    start = doc.index(_LOSS_START)
    end = doc.index("</cost-characteristic>", start) + len("</cost-characteristic>")
    return doc[:start] + doc[end:]


def test_link_without_cost_rejected(our_ctx: libyang.Context) -> None:
    """Official min-elements kept: a link needs a cost-characteristic (where the loss goes)."""
    with pytest.raises(AssertionError, match='Too few "cost-characteristic"'):
        validate_tapi(
            _without_first_link_cost(sample_document(with_state=True)), with_state=True, ctx=our_ctx
        )


@needs_official
def test_link_without_cost_rejected_by_official(official_ctx: libyang.Context) -> None:
    with pytest.raises(AssertionError, match='Too few "cost-characteristic"'):
        validate_tapi(
            _without_first_link_cost(sample_document(with_state=True)),
            with_state=True,
            ctx=official_ctx,
        )


def test_state_refused_in_config(our_ctx: libyang.Context) -> None:
    with pytest.raises(AssertionError, match="state node"):
        validate_tapi(sample_document(with_state=True), with_state=False, ctx=our_ctx)


def test_service_needs_sips_in_config(our_ctx: libyang.Context) -> None:
    """The SIP list is configuration in TAPI 2.1.3: a service's SIP reference (a config leafref)
    needs the SIP, with its uuid, in the same configuration datastore."""
    doc = sample_document(with_state=False)
    start = doc.index("\n    <service-interface-point>")
    last = "\n    </service-interface-point>"
    end = doc.rindex(last) + len(last)
    with pytest.raises(AssertionError, match="Invalid leafref value"):
        validate_tapi(doc[:start] + doc[end:], with_state=False, ctx=our_ctx)


# --------------------------------------------------------------------------- yanglint


def _yanglint_data(tmp_path: Path, document: str, data_type: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / f"tapi-{data_type}.xml"
    data.write_text(document, encoding="utf-8")
    return subprocess.run(
        [YANGLINT or "yanglint", "-t", data_type, "-p", str(PROJECT_YANG),
         *map(str, MODULE_FILES), str(data)],
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
    proc = _yanglint_data(tmp_path, sample_document(with_state=with_state), data_type)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
