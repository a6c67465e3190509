"""libyang data trees with structured errors.

libyang-python flattens errors into one string; NETCONF needs each error's kind and data path to
build an `<rpc-error>`. This module calls the C API (through libyang-python's cffi binding) for
the handful of operations the datastore needs and turns libyang's stored errors into `RpcError`s.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import libyang
from _libyang import ffi, lib
from libyang.util import c2str, str2c

from .netconf import errors as E

_LOC = re.compile(r'(Data|Schema) location "([^"]*)"')
_NODE_NAME = re.compile(r'[Nn]ode "([^"]+)"')


@dataclass(frozen=True)
class YangIssue:
    vecode: int
    message: str
    path: str | None
    schema_path: bool
    app_tag: str | None


def collect_errors(ctx: libyang.Context) -> list[YangIssue]:
    """Take (and clear) libyang's stored errors."""
    out: list[YangIssue] = []
    err = lib.ly_err_first(ctx.cdata)
    while err:
        where = c2str(err.path) or ""
        m = _LOC.search(where)
        out.append(
            YangIssue(
                vecode=int(err.vecode),
                message=c2str(err.msg) or "",
                path=m.group(2) if m else None,
                schema_path=bool(m and m.group(1) == "Schema"),
                app_tag=c2str(err.apptag),
            )
        )
        err = err.next
    lib.ly_err_clean(ctx.cdata, ffi.NULL)
    return out


def xml_path(ctx: libyang.Context, path: str) -> tuple[str, dict[str, str]]:
    """Turn libyang's JSON-style data path into an XPath with every step prefixed.

    libyang prefixes a step only where the module changes; NETCONF's error-path is an XML XPath
    in which an unprefixed name has no namespace. Module names are valid prefixes, so each step
    and predicate key gets its module name, declared on the `<error-path>` element.
    """
    nsmap: dict[str, str] = {}
    out: list[str] = []
    module = ""
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c in "'\"":
            j = path.index(c, i + 1)
            out.append(path[i : j + 1])
            i = j + 1
            continue
        if c.isalpha() or c == "_":
            j = i
            while j < n and (path[j].isalnum() or path[j] in "_-.:"):
                j += 1
            name = path[i:j]
            prev = out[-1][-1] if out and out[-1] else ""
            if prev in "/[" or (prev == "" and not out):
                if ":" in name:
                    module, name = name.split(":", 1)
                if module:
                    if module not in nsmap:
                        nsmap[module] = module_namespace(ctx, module)
                    name = f"{module}:{name}"
            out.append(name)
            i = j
            continue
        out.append(c)
        i += 1
    return "".join(out), nsmap


def module_namespace(ctx: libyang.Context, module: str) -> str:
    mod = lib.ly_ctx_get_module_latest(ctx.cdata, str2c(module))
    if mod == ffi.NULL:
        raise KeyError(module)
    return c2str(mod.ns) or ""


def _info_name(issue: YangIssue) -> str | None:
    m = _NODE_NAME.search(issue.message)
    if m:
        return m.group(1)
    if issue.path:
        last = issue.path.rstrip("/").split("/")[-1]
        return last.split("[", 1)[0].split(":")[-1]
    return None


def to_rpc_error(ctx: libyang.Context, issue: YangIssue) -> E.RpcError:
    """Map one libyang error onto the RFC 6241 / RFC 7950 section 8.3 / 15 error-tag."""
    msg = issue.message
    low = msg.lower()
    cls: type[E.RpcError]
    app_tag = issue.app_tag
    if "no module with namespace" in low:
        cls = E.UnknownNamespace
    elif "not found as a child" in low or "unknown element" in low or "when condition" in low:
        cls = E.UnknownElement
    elif "mandatory node" in low or "missing its key" in low or "missing key" in low:
        cls = E.MissingElement
    elif "must condition" in low:
        cls, app_tag = E.OperationFailed, app_tag or "must-violation"
    elif "unique data leaf" in low:
        cls, app_tag = E.OperationFailed, app_tag or "data-not-unique"
    elif "too many" in low:
        cls, app_tag = E.OperationFailed, app_tag or "too-many-elements"
    elif "too few" in low:
        cls, app_tag = E.OperationFailed, app_tag or "too-few-elements"
    elif "leafref" in low or "instance-required" in low or "required instance" in low:
        cls, app_tag = E.DataMissing, app_tag or "instance-required"
    elif "duplicate instance" in low:
        cls = E.BadElement
    elif issue.vecode == lib.LYVE_SYNTAX_XML:
        cls = E.MalformedMessage
    elif issue.vecode == lib.LYVE_DATA or "invalid" in low or "unsatisfied" in low:
        cls = E.InvalidValue
    else:
        cls = E.OperationFailed
    path = None
    nsmap: dict[str, str] = {}
    if issue.path:
        raw = issue.path
        if cls in (E.MissingElement, E.UnknownElement) and "/" in raw.strip("/"):
            # RFC 6241 Appendix A: error-path of the parent, bad-element names the child
            if cls is E.MissingElement or issue.schema_path:
                raw = raw.rsplit("/", 1)[0]
        path, nsmap = xml_path(ctx, raw)
    info: dict[str, str] = {}
    name = _info_name(issue)
    if name and cls in (E.UnknownElement, E.MissingElement, E.BadElement, E.InvalidValue):
        info["bad-element"] = name
    if cls is E.UnknownNamespace:
        m = re.search(r'namespace "([^"]+)"', msg)
        if m:
            info["bad-namespace"] = m.group(1)
    return cls(message=msg, path=path, app_tag=app_tag, info=info, path_namespaces=nsmap)


class YangDataError(E.RpcErrors):
    """One or more libyang errors, already mapped to `RpcError`s."""

    @classmethod
    def from_ctx(cls, ctx: libyang.Context, fallback: str) -> "YangDataError":
        issues = collect_errors(ctx)
        errs = [to_rpc_error(ctx, i) for i in issues] or [E.OperationFailed(message=fallback)]
        # libyang repeats the generic "failed" summary for a detailed error: keep the details
        return cls(errs)


Node = Any  # cffi "struct lyd_node *"


# Trees not yet freed, per context: id(ctx) -> {id(tree): the tree's root holder}.
#
# A libyang context is destroyed by a cffi finalizer (`ffi.gc`). When a context and its trees
# become cyclic garbage together (a whole node object graph being dropped), the garbage
# collector runs that finalizer and `DataTree.__del__` in no particular order, and freeing a tree
# after its context is a use-after-free. Weakref callbacks run before any finalizer, so a guard
# object kept in the context's __dict__ (libyang's Context takes no weak references itself)
# frees the remaining trees while the context still exists.
_LIVE_TREES: dict[int, dict[int, Any]] = {}
_CTX_GUARDS: dict[int, "weakref.ref[_ContextGuard]"] = {}


class _ContextGuard:
    __slots__ = ("__weakref__",)


def _free_context_trees(key: int, _ref: object) -> None:
    _CTX_GUARDS.pop(key, None)
    for holder in _LIVE_TREES.pop(key, {}).values():
        if holder[0] != ffi.NULL:
            lib.lyd_free_all(holder[0])
            holder[0] = ffi.NULL


def _track(ctx: libyang.Context, tree_id: int, holder: Any) -> None:
    key = id(ctx)
    if key not in _CTX_GUARDS:
        guard = _ContextGuard()
        ctx._qkdnet_tree_guard = guard  # type: ignore[attr-defined]
        _CTX_GUARDS[key] = weakref.ref(guard, partial(_free_context_trees, key))
    _LIVE_TREES.setdefault(key, {})[tree_id] = holder


class DataTree:
    """A datastore's content: one libyang sibling list (possibly empty), owned by this object."""

    __slots__ = ("ctx", "_root")

    def __init__(self, ctx: libyang.Context, root: Node = ffi.NULL) -> None:
        self.ctx = ctx
        self._root = ffi.new("struct lyd_node **", root)
        _track(ctx, id(self), self._root)

    # -- life cycle -------------------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        ctx: libyang.Context,
        data: str | bytes,
        *,
        fmt: str = "xml",
        config_only: bool = True,
        validate: bool = True,
        strict: bool = True,
    ) -> "DataTree":
        parse_flags = lib.LYD_PARSE_STRICT if strict else 0
        if config_only:
            parse_flags |= lib.LYD_PARSE_NO_STATE
        if not validate:
            parse_flags |= lib.LYD_PARSE_ONLY
        val_flags = lib.LYD_VALIDATE_NO_STATE if config_only else 0
        if isinstance(data, str):
            data = data.encode()
        inp = ffi.new("struct ly_in **")
        buf = ffi.new("char[]", data)
        if lib.ly_in_new_memory(buf, inp) != lib.LY_SUCCESS:
            raise E.OperationFailed(message="cannot read data")
        out = ffi.new("struct lyd_node **")
        fmt_c = lib.LYD_XML if fmt == "xml" else lib.LYD_JSON
        try:
            ret = lib.lyd_parse_data(ctx.cdata, ffi.NULL, inp[0], fmt_c, parse_flags, val_flags, out)
        finally:
            lib.ly_in_free(inp[0], 0)
        if ret != lib.LY_SUCCESS:
            raise YangDataError.from_ctx(ctx, "invalid data")
        return cls(ctx, out[0])

    def dup(self) -> "DataTree":
        if self._root[0] == ffi.NULL:
            return DataTree(self.ctx)
        out = ffi.new("struct lyd_node **")
        flags = lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_FLAGS
        if lib.lyd_dup_siblings(self._root[0], ffi.NULL, flags, out) != lib.LY_SUCCESS:
            raise YangDataError.from_ctx(self.ctx, "cannot copy data")
        return DataTree(self.ctx, out[0])

    def free(self) -> None:
        if self._root[0] != ffi.NULL:
            lib.lyd_free_all(self._root[0])
            self._root[0] = ffi.NULL
        trees = _LIVE_TREES.get(id(self.ctx))
        if trees is not None:
            trees.pop(id(self), None)

    def __del__(self) -> None:  # trees are owned: free the C memory with the object
        try:
            self.free()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    @property
    def root(self) -> Node:
        return self._root[0]

    @property
    def empty(self) -> bool:
        return self._root[0] == ffi.NULL

    def take(self) -> Node:
        """Detach and return the sibling list (this tree becomes empty)."""
        node = self._root[0]
        self._root[0] = ffi.NULL
        return node

    # -- validation ---------------------------------------------------------------------------
    def validate(self, *, config_only: bool = True) -> list[str]:
        """Full validation (when, must, mandatory, unique, leafref); adds implicit defaults.

        Returns the paths of the nodes validation deleted: libyang removes data whose 'when'
        became false (RFC 7950 8.3.2), and a commit must record those deletions too.
        """
        flags = lib.LYD_VALIDATE_PRESENT
        if config_only:
            flags |= lib.LYD_VALIDATE_NO_STATE
        diff = ffi.new("struct lyd_node **")
        try:
            if lib.lyd_validate_all(self._root, self.ctx.cdata, flags, diff) != lib.LY_SUCCESS:
                raise YangDataError.from_ctx(self.ctx, "validation failed")
            return _diff_deletions(self.ctx, diff[0])
        finally:
            if diff[0] != ffi.NULL:
                lib.lyd_free_all(diff[0])

    # -- access -------------------------------------------------------------------------------
    def find(self, path: str) -> Node | None:
        if self._root[0] == ffi.NULL:
            return None
        out = ffi.new("struct lyd_node **")
        ret = lib.lyd_find_path(self._root[0], str2c(path), 0, out)
        if ret == lib.LY_SUCCESS:
            return out[0]
        lib.ly_err_clean(self.ctx.cdata, ffi.NULL)
        return None

    def xpath(self, expr: str) -> list[Node]:
        if self._root[0] == ffi.NULL:
            return []
        out = ffi.new("struct ly_set **")
        if lib.lyd_find_xpath(self._root[0], str2c(expr), out) != lib.LY_SUCCESS:
            raise YangDataError.from_ctx(self.ctx, f"invalid XPath {expr!r}")
        try:
            return [out[0].dnodes[i] for i in range(out[0].count)]
        finally:
            lib.ly_set_free(out[0], ffi.NULL)

    def top_nodes(self) -> Iterator[Node]:
        node = self._root[0]
        while node != ffi.NULL:
            yield node
            node = node.next

    # -- modification -------------------------------------------------------------------------
    def merge_node(self, node: Node, *, with_parents: bool = True, recursive: bool = True) -> None:
        """Copy `node` (with its ancestors, without NETCONF metadata) into this tree."""
        flags = lib.LYD_DUP_NO_META | lib.LYD_DUP_WITH_FLAGS
        if recursive:
            flags |= lib.LYD_DUP_RECURSIVE
        if with_parents:
            flags |= lib.LYD_DUP_WITH_PARENTS
        out = ffi.new("struct lyd_node **")
        if lib.lyd_dup_single(node, ffi.NULL, flags, out) != lib.LY_SUCCESS:
            raise YangDataError.from_ctx(self.ctx, "cannot copy edit data")
        top = out[0]
        while top.parent != ffi.NULL:
            top = ffi.cast("struct lyd_node *", top.parent)
        if lib.lyd_merge_siblings(self._root, top, lib.LYD_MERGE_DESTRUCT) != lib.LY_SUCCESS:
            lib.lyd_free_all(top)
            raise YangDataError.from_ctx(self.ctx, "cannot merge edit data")

    def merge_tree(self, other: "DataTree") -> None:
        """Move every node of `other` into this tree (merge)."""
        if other.empty:
            return
        src = other.take()
        if lib.lyd_merge_siblings(self._root, src, lib.LYD_MERGE_DESTRUCT) != lib.LY_SUCCESS:
            lib.lyd_free_all(src)
            raise YangDataError.from_ctx(self.ctx, "cannot merge data")

    def delete_node(self, node: Node) -> None:
        if node == self._root[0]:
            nxt = node.next
            self._root[0] = nxt if nxt != ffi.NULL else ffi.NULL
        lib.lyd_free_tree(node)

    # -- output -------------------------------------------------------------------------------
    def print(self, *, fmt: str = "xml", with_defaults: str = "explicit", pretty: bool = False) -> str:
        if self._root[0] == ffi.NULL:
            return ""
        return print_nodes(self._root[0], fmt=fmt, with_defaults=with_defaults, pretty=pretty)


_WD_FLAGS = {
    "explicit": lib.LYD_PRINT_WD_EXPLICIT,
    "trim": lib.LYD_PRINT_WD_TRIM,
    "report-all": lib.LYD_PRINT_WD_ALL,
    "report-all-tagged": lib.LYD_PRINT_WD_ALL_TAG,
}


def print_nodes(
    node: Node, *, fmt: str = "xml", with_defaults: str = "explicit", pretty: bool = False,
    siblings: bool = True,
) -> str:
    flags = _WD_FLAGS[with_defaults]
    if siblings:
        flags |= lib.LYD_PRINT_WITHSIBLINGS
    if not pretty:
        flags |= lib.LYD_PRINT_SHRINK
    out = ffi.new("char **")
    fmt_c = lib.LYD_XML if fmt == "xml" else lib.LYD_JSON
    if lib.lyd_print_mem(out, node, fmt_c, flags) != lib.LY_SUCCESS:
        raise E.OperationFailed(message="cannot print data")
    try:
        return c2str(out[0]) or ""
    finally:
        lib.free(out[0])


def _diff_deletions(ctx: libyang.Context, node: Node) -> list[str]:
    """Paths of the subtrees a libyang diff deletes (metadata yang:operation="delete")."""
    out: list[str] = []
    while node != ffi.NULL:
        op = None
        meta = node.meta
        while meta != ffi.NULL:
            if c2str(meta.name) == "operation" and c2str(meta.annotation.module.name) == "yang":
                op = c2str(lib.lyd_value_get_canonical(ctx.cdata, ffi.addressof(meta.value)))
                break
            meta = meta.next
        if op == "delete":
            out.append(node_path(node))
        elif node.schema != ffi.NULL and node.schema.nodetype & (lib.LYS_CONTAINER | lib.LYS_LIST):
            out += _diff_deletions(ctx, lib.lyd_child(node))
        node = node.next
    return out


def children(node: Node) -> list[Node]:
    """The child nodes of an inner node, in order."""
    out: list[Node] = []
    child = lib.lyd_child(node)
    while child != ffi.NULL:
        out.append(child)
        child = child.next
    return out


def is_key(node: Node) -> bool:
    return node.schema != ffi.NULL and bool(node.schema.flags & lib.LYS_KEY)


def is_inner(node: Node) -> bool:
    """A container or a list entry."""
    return node.schema != ffi.NULL and bool(node.schema.nodetype & (lib.LYS_CONTAINER | lib.LYS_LIST))


def node_path(node: Node) -> str:
    """libyang's data path of a node (`/module:a/b[key='v']`)."""
    p = lib.lyd_path(node, lib.LYD_PATH_STD, ffi.NULL, 0)
    try:
        return c2str(p) or ""
    finally:
        lib.free(p)


def node_value(node: Node) -> str | None:
    return c2str(lib.lyd_get_value(node))
