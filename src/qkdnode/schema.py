"""The YANG schema a node serves: one libyang context with our modules and the IETF ones.

Our own modules live in the repository's `yang/` (installed to `<prefix>/share/qkdnet/yang`).
The IETF NETCONF modules (ietf-netconf, -with-defaults, -monitoring, -notifications) come from
pyang's module collection (`<prefix>/share/yang/modules/ietf`), a dependency of ours.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import libyang
from _libyang import ffi, lib

_REPO_YANG = Path(__file__).resolve().parents[2] / "yang"


def project_yang_dir() -> Path:
    """Directory holding the project's own YANG modules."""
    if (_REPO_YANG / "etsi-qkd-sdn-node.yang").exists():
        return _REPO_YANG
    return Path(sys.prefix) / "share" / "qkdnet" / "yang"


def ietf_yang_dir() -> Path:
    """pyang's copy of the IETF modules."""
    for base in (Path(sys.prefix), Path(sys.base_prefix), Path("/usr"), Path("/usr/local")):
        d = base / "share" / "yang" / "modules" / "ietf"
        if (d / "ietf-netconf.yang").exists():
            return d
    raise FileNotFoundError("IETF YANG modules not found: is pyang installed?")


@dataclass(frozen=True)
class ServedModule:
    name: str
    features: tuple[str, ...] = ()


# Modules whose data the node serves (the first group) and the NETCONF protocol modules.
DATA_MODULES: tuple[ServedModule, ...] = (
    ServedModule("etsi-qkd-node-types"),
    ServedModule("etsi-qkd-sdn-node"),
    ServedModule("qkdnet-etsi-qkd-sdn-node-deviations"),
)
TAPI_MODULES: tuple[ServedModule, ...] = (
    ServedModule("tapi-common"),
    ServedModule("tapi-topology"),
    ServedModule("tapi-connectivity"),
    ServedModule("tapi-photonic-media"),
)
PROTOCOL_MODULES: tuple[ServedModule, ...] = (
    ServedModule("ietf-netconf", ("candidate", "validate", "xpath", "rollback-on-error")),
    ServedModule("ietf-netconf-with-defaults"),
    ServedModule("ietf-netconf-monitoring"),
    ServedModule("ietf-netconf-notifications"),
    ServedModule("ietf-netconf-acm"),  # NACM (RFC 8341): /nacm in running
)

_logging_configured = False


def _configure_libyang_logging() -> None:
    """Keep libyang's error paths in stored errors (they need LY_LOLOG) without printing them."""
    global _logging_configured
    if _logging_configured:
        return
    libyang.configure_logging(True, logging.CRITICAL + 1)
    logging.getLogger("libyang").setLevel(logging.CRITICAL + 1)
    lib.ly_log_options(lib.LY_LOSTORE | lib.LY_LOLOG)
    _logging_configured = True


def build_context(extra_dirs: tuple[Path, ...] = (), with_tapi: bool = True) -> libyang.Context:
    """A compiled context with every served module implemented (TAPI too, unless `with_tapi=False`)."""
    _configure_libyang_logging()
    search = [project_yang_dir(), *extra_dirs, ietf_yang_dir()]
    ctx = libyang.Context(":".join(str(p) for p in search))
    modules = list(DATA_MODULES)
    if with_tapi:
        modules += TAPI_MODULES
    for served in (*modules, *PROTOCOL_MODULES):
        mod = ctx.load_module(served.name)
        if served.features:
            _enable_features(mod, served.features)
    return ctx


def _enable_features(mod: libyang.Module, features: tuple[str, ...]) -> None:
    """Enable all `features` at once: libyang-python's feature_enable() replaces the whole set
    with its one feature on each call (lys_set_implemented takes the complete list)."""
    names = [ffi.new("char[]", f.encode()) for f in features]
    arr = ffi.new("char *[]", [*names, ffi.NULL])
    if lib.lys_set_implemented(mod.cdata, arr) != lib.LY_SUCCESS:
        raise ValueError(f"cannot enable features {features} of {mod.name()}")


def module_file(ctx: libyang.Context, name: str) -> Path | None:
    """Source file of a loaded module, when it came from a file."""
    mod = ctx.get_module(name)
    path = mod.filepath()
    if path:
        return Path(path)
    for d in (project_yang_dir(), ietf_yang_dir()):
        for cand in (d / f"{name}.yang", *d.glob(f"{name}@*.yang")):
            if cand.exists():
                return cand
    return None
