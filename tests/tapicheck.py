"""Helpers to hold ONF TAPI 2.1.3 data against our TAPI subset and the official modules.

Importable by any test (``from tapicheck import ...``; pytest puts ``tests/`` on
``sys.path``). No test functions here.

Our modules (``yang/tapi-common.yang``, ``tapi-topology``, ``tapi-connectivity``,
``tapi-photonic-media``) keep the official module names, namespaces, prefixes and
revisions but only a subset of the data nodes. The official modules live outside the
repository, in ``shared/reference/tapi-2.1.3`` beside the checkout (``<repo>/../shared``),
named ``<module>@<revision>.yang``; tests that need them skip when it is absent. The
official tapi-connectivity also imports tapi-path-computation, which is loaded with them.

Full validation with libyang-python 2.8.0 (``Context.parse_data_mem``), as in yangcheck:

* configuration only: ``no_state=True, strict=True``: state nodes and unknown nodes are
  refused, every module of the context is validated (keys, leafrefs, min-elements, ...);
* with state (operational data): ``strict=True, validate_present=True``. libyang-python
  always implements ``ietf-yang-library``, whose state data has mandatory nodes; without
  ``validate_present`` every document would fail on them.

``parse_only=True`` must not be used: it checks the values' types but skips leafrefs,
min-elements and the rest of validation.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import libyang
from _libyang import ffi, lib
from yangcheck import load_modules, validate_document

REPO_ROOT: Final[Path] = Path(__file__).resolve().parents[1]
PROJECT_YANG: Final[Path] = REPO_ROOT / "yang"
OFFICIAL_TAPI: Final[Path] = REPO_ROOT.parent / "shared" / "reference" / "tapi-2.1.3"

COMMON_NS: Final = "urn:onf:otcc:yang:tapi-common"
TOPOLOGY_NS: Final = "urn:onf:otcc:yang:tapi-topology"
CONNECTIVITY_NS: Final = "urn:onf:otcc:yang:tapi-connectivity"
PHOTONIC_NS: Final = "urn:onf:otcc:yang:tapi-photonic-media"

# Our modules, in dependency order, with the official revision each keeps.
PROJECT_MODULES: Final[dict[str, str]] = {
    "tapi-common": "2020-04-23",
    "tapi-topology": "2020-04-23",
    "tapi-connectivity": "2020-06-16",
    "tapi-photonic-media": "2020-06-16",
}
# The official modules needed to hold our data, in dependency order (tapi-connectivity
# imports tapi-path-computation; tapi-notification is not needed).
OFFICIAL_MODULES: Final[dict[str, str]] = {
    "tapi-common": "2020-04-23",
    "tapi-topology": "2020-04-23",
    "tapi-path-computation": "2020-04-23",
    "tapi-connectivity": "2020-06-16",
    "tapi-photonic-media": "2020-06-16",
}

_UNBOUNDED: Final = 0xFFFFFFFF


def official_file(name: str) -> Path:
    """Path of the official module ``name`` (``<name>@<revision>.yang``)."""
    return OFFICIAL_TAPI / f"{name}@{OFFICIAL_MODULES[name]}.yang"


def official_tapi_available() -> bool:
    """True if the official TAPI 2.1.3 modules are beside the checkout."""
    return all(official_file(name).is_file() for name in OFFICIAL_MODULES)


def project_tapi_context() -> libyang.Context:
    """A context with our four TAPI modules."""
    return load_modules(PROJECT_YANG, tuple(PROJECT_MODULES))


def official_tapi_context(tmpdir: Path | str) -> libyang.Context:
    """A context with the official tapi-common, -topology, -path-computation,
    -connectivity and -photonic-media.

    The modules are copied unchanged into ``tmpdir`` as ``<name>.yang`` (so that the
    context's search directory holds them under the names their imports use); they
    compile in libyang 2.1.30 as published.
    """
    if not official_tapi_available():
        raise FileNotFoundError(f"official TAPI 2.1.3 modules not found in {OFFICIAL_TAPI}")
    target = Path(tmpdir)
    target.mkdir(parents=True, exist_ok=True)
    for name in OFFICIAL_MODULES:
        shutil.copyfile(official_file(name), target / f"{name}.yang")
    return load_modules(target, tuple(OFFICIAL_MODULES))


def validate_tapi(xml: str, *, with_state: bool, ctx: libyang.Context) -> None:
    """`validate_document` for a document whose root is ``<context xmlns=COMMON_NS>``."""
    validate_document(xml, with_state=with_state, ctx=ctx, root=("tapi-common", "context"), label="TAPI")


# --------------------------------------------------------------------------- schema walk


@dataclass(frozen=True)
class SchemaNode:
    """What of a compiled data node bears on which instance data is valid."""

    path: str  # e.g. /tapi-common:context/tapi-topology:topology-context/topology
    keyword: str  # container, list, leaf, leaf-list
    config_false: bool
    presence: bool = False  # containers
    keys: tuple[str, ...] = ()  # lists
    min_elements: int = 0  # lists, leaf-lists
    max_elements: int | None = None  # lists, leaf-lists; None: unbounded
    type_name: str = ""  # leaves, leaf-lists: the type as written, prefix stripped
    type_base: str = ""  # built-in base type (leafref, enumeration, uint64, ...)
    leafref_path: str = ""  # leafrefs: the path expression as compiled
    leafref_target_base: str = ""  # leafrefs: base type of the target
    require_instance: bool = False  # leafrefs
    enums: tuple[str, ...] = ()  # enumerations
    ranges: tuple[str, ...] = ()
    lengths: tuple[str, ...] = ()
    patterns: tuple[tuple[str, bool], ...] = ()
    default: str | None = None
    mandatory: bool = False


_DATA_NODETYPES: Final = (lib.LYS_CONTAINER, lib.LYS_LIST, lib.LYS_LEAF, lib.LYS_LEAFLIST)


def _describe(node: libyang.SNode) -> SchemaNode:
    info: dict[str, object] = {
        "path": node.schema_path(),
        "keyword": node.keyword(),
        "config_false": node.config_false(),
        "mandatory": node.mandatory(),
    }
    nodetype = node.nodetype()
    if nodetype == lib.LYS_CONTAINER:
        info["presence"] = node.presence() is not None  # type: ignore[attr-defined]
    if nodetype in (lib.LYS_LIST, lib.LYS_LEAFLIST):
        cname = "struct lysc_node_list *" if nodetype == lib.LYS_LIST else "struct lysc_node_leaflist *"
        cdata = ffi.cast(cname, node.cdata)
        info["min_elements"] = int(cdata.min)
        info["max_elements"] = None if cdata.max == _UNBOUNDED else int(cdata.max)
    if nodetype == lib.LYS_LIST:
        info["keys"] = tuple(key.name() for key in node.keys())  # type: ignore[attr-defined]
    if nodetype in (lib.LYS_LEAF, lib.LYS_LEAFLIST):
        ytype = node.type()  # type: ignore[attr-defined]
        info["type_name"] = ytype.name().rpartition(":")[2]
        info["type_base"] = ytype.basename()
        if ytype.base() == libyang.Type.LEAFREF:
            info["leafref_path"] = ytype.leafref_path()
            info["leafref_target_base"] = ytype.leafref_type().basename()
            leafref = ffi.cast("struct lysc_type_leafref *", ytype.cdata)
            info["require_instance"] = bool(leafref.require_instance)
        if ytype.base() == libyang.Type.ENUM:
            info["enums"] = tuple(enum.name() for enum in ytype.all_enums())
        info["ranges"] = tuple(ytype.all_ranges())
        info["lengths"] = tuple(ytype.all_lengths())
        info["patterns"] = tuple(ytype.all_patterns())
        if nodetype == lib.LYS_LEAF:
            default = node.default()  # type: ignore[attr-defined]
            info["default"] = None if default is None else str(default)
        else:
            defaults = tuple(node.defaults())  # type: ignore[attr-defined]
            info["default"] = " ".join(map(str, defaults)) if defaults else None
    return SchemaNode(**info)  # type: ignore[arg-type]


def tapi_data_nodes(ctx: libyang.Context) -> Iterator[SchemaNode]:
    """Every data node (container, list, leaf, leaf-list) under ``/tapi-common:context``,
    augments included, depth first. RPCs and notifications are not walked."""
    root = next(ctx.find_path("/tapi-common:context"))
    for node in root.iter_tree():
        if node.nodetype() in _DATA_NODETYPES:
            yield _describe(node)


def tapi_schema(ctx: libyang.Context) -> dict[str, SchemaNode]:
    """:func:`tapi_data_nodes` keyed by schema path."""
    return {node.path: node for node in tapi_data_nodes(ctx)}
