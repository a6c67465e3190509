"""Helpers to hold ETSI GS QKD 015 data against our YANG modules and the official ones.

Importable by any test (``from yangcheck import ...``; pytest puts ``tests/`` on
``sys.path``). No test functions here.

The official modules live outside the repository, in ``shared/reference/etsi-qkd-015``
beside the checkout (``<repo>/../shared``); tests that need them skip when it is absent.

Full validation with libyang-python 2.8.0 (``Context.parse_data_mem``):

* configuration only: ``no_state=True, strict=True`` and ``validate_present=False``
  (the default): state nodes are refused, unknown nodes are refused, and every module
  of the context is validated (``when``, ``must``, keys, mandatory nodes, ...);
* with state (operational data): ``strict=True, validate_present=True``. The context
  libyang-python creates always implements ``ietf-yang-library``, whose state data has
  mandatory nodes (``content-id``); without ``validate_present`` every document would
  fail on them, so only the modules present in the document are validated (fully).

``parse_only=True`` must not be used: it checks the values' types but skips ``when``,
mandatory nodes and the rest of validation.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Final

import libyang

REPO_ROOT: Final[Path] = Path(__file__).resolve().parents[1]
PROJECT_YANG: Final[Path] = REPO_ROOT / "yang"
OFFICIAL_015: Final[Path] = REPO_ROOT.parent / "shared" / "reference" / "etsi-qkd-015"

NODE_MODULE: Final = "etsi-qkd-sdn-node"
TYPES_MODULE: Final = "etsi-qkd-node-types"
DEVIATION_MODULE: Final = "qkdnet-etsi-qkd-sdn-node-deviations"
NODE_NS: Final = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES_NS: Final = "urn:etsi:qkd:yang:etsi-qkd-node-types"
TYPES_PREFIX: Final = "etsi-qkdn-types"

# The three `when` statements of the official etsi-qkd-sdn-node that compare the
# identityref qkdl_type with a bare identity name ('VIRT', 'PHYS'): libyang never
# finds them true, so it rejects all virt_*, phys_* and phys_perf data.
_UNPREFIXED_WHEN: Final = re.compile(r"""(when\s+"(?:\.\./)?qkdl_type\s*=\s*')(VIRT|PHYS)(')""")
_UNPREFIXED_WHEN_COUNT: Final = 3


def official_015_available() -> bool:
    """True if the official ETSI GS QKD 015 modules are beside the checkout."""
    return all((OFFICIAL_015 / f"{name}.yang").is_file() for name in (TYPES_MODULE, NODE_MODULE))


def prefix_official_when(text: str) -> str:
    """Prefix the identity names in the three defective `when` expressions of the official text."""
    fixed, count = _UNPREFIXED_WHEN.subn(rf"\g<1>{TYPES_PREFIX}:\g<2>\g<3>", text)
    assert count == _UNPREFIXED_WHEN_COUNT, (
        f"expected {_UNPREFIXED_WHEN_COUNT} unprefixed qkdl_type `when` expressions in the "
        f"official {NODE_MODULE}, found {count}"
    )
    return fixed


def load_modules(directory: Path, names: tuple[str, ...]) -> libyang.Context:
    """A context with the modules ``<directory>/<name>.yang``, parsed in the given order.

    Modules are parsed from their text in dependency order rather than looked up by name,
    so that nothing on $YANGPATH / $YANG_MODPATH (which libyang-python puts *before* the
    search path given here) can stand in for them. ietf-yang-types and ietf-inet-types
    come from libyang's built-in copies.
    """
    ctx = libyang.Context(str(directory))
    try:
        for name in names:
            ctx.parse_module_str((directory / f"{name}.yang").read_text(encoding="utf-8"))
    except BaseException:
        ctx.destroy()
        raise
    return ctx


def project_015_context(*, deviations: bool = True) -> libyang.Context:
    """A context with our etsi-qkd-node-types and etsi-qkd-sdn-node.

    With ``deviations`` (the default) it also loads qkdnet-etsi-qkd-sdn-node-deviations,
    giving the schema our node serves.
    """
    names: tuple[str, ...] = (TYPES_MODULE, NODE_MODULE)
    if deviations:
        names += (DEVIATION_MODULE,)
    return load_modules(PROJECT_YANG, names)


def official_015_context(tmpdir: Path | str, *, fix_when: bool = True) -> libyang.Context:
    """A context with the official etsi-qkd-node-types and etsi-qkd-sdn-node.

    The modules are copied into ``tmpdir``; with ``fix_when`` (the default) the copy of
    etsi-qkd-sdn-node has its three identityref `when` expressions prefixed (see
    :func:`prefix_official_when`), which is the only change. With ``fix_when=False``
    the official text is loaded as published, to show its defect.
    """
    if not official_015_available():
        raise FileNotFoundError(f"official ETSI GS QKD 015 modules not found in {OFFICIAL_015}")
    target = Path(tmpdir)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OFFICIAL_015 / f"{TYPES_MODULE}.yang", target / f"{TYPES_MODULE}.yang")
    node_text = (OFFICIAL_015 / f"{NODE_MODULE}.yang").read_text(encoding="utf-8")
    if fix_when:
        node_text = prefix_official_when(node_text)
    (target / f"{NODE_MODULE}.yang").write_text(node_text, encoding="utf-8")
    return load_modules(target, (TYPES_MODULE, NODE_MODULE))


def validate_document(
    xml: str, *, with_state: bool, ctx: libyang.Context, root: tuple[str, str], label: str
) -> None:
    """Fully validate an XML datastore document that must hold the top node `root` (module, name).

    ``with_state=False``: a configuration datastore (running/candidate); state nodes are
    an error. ``with_state=True``: operational data, state nodes allowed and validated.
    Raises AssertionError carrying libyang's message if the document is invalid.
    """
    mode = "operational" if with_state else "config"
    try:
        if with_state:
            tree = ctx.parse_data_mem(xml, "xml", strict=True, validate_present=True)
        else:
            tree = ctx.parse_data_mem(xml, "xml", no_state=True, strict=True)
    except libyang.LibyangError as err:
        raise AssertionError(f"{label} {mode} data invalid: {err}") from err
    if tree is None:
        raise AssertionError(f"{label} {mode} data invalid: empty document")
    try:
        roots = [(node.module().name(), node.name()) for node in tree.siblings()]
        if root not in roots:
            raise AssertionError(f"{label} {mode} data has no {root[0]}:{root[1]} root: {roots}")
    finally:
        tree.free()


def validate_015(xml: str, *, with_state: bool, ctx: libyang.Context) -> None:
    """`validate_document` for a document whose root is ``<qkd_node xmlns=NODE_NS>``."""
    validate_document(xml, with_state=with_state, ctx=ctx, root=(NODE_MODULE, "qkd_node"), label="ETSI 015")
