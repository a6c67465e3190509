"""Apply a NETCONF `<edit-config>` (RFC 6241 section 7.2) to a data tree.

libyang parses the edit (its `ietf-netconf:operation` metadata included) but has no function that
applies NETCONF edit semantics (sysrepo does that in C); this module walks the parsed edit and
changes the target with libyang's dup/merge/free primitives, touching only the edited nodes, so
the cost of an edit does not grow with the size of the datastore.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import libyang
from _libyang import ffi, lib
from libyang.util import c2str
from lxml import etree

from .datatree import DataTree, Node, children, is_inner, is_key, node_path, xml_path
from .netconf import errors as E
from .netconf.namespaces import NC_NS

NC_MODULE = "ietf-netconf"


class EditOp(str, Enum):
    MERGE = "merge"
    REPLACE = "replace"
    CREATE = "create"
    DELETE = "delete"
    REMOVE = "remove"
    NONE = "none"


class ErrorOption(str, Enum):
    STOP = "stop-on-error"
    CONTINUE = "continue-on-error"
    ROLLBACK = "rollback-on-error"


@dataclass(frozen=True)
class AppliedEdit:
    """One change made to the target: the RFC 6470 `edit` entry (operation + target path)."""

    operation: EditOp
    path: str








def _operation(ctx_c: object, node: Node) -> EditOp | None:
    meta = node.meta
    while meta != ffi.NULL:
        if c2str(meta.name) == "operation" and c2str(meta.annotation.module.name) == NC_MODULE:
            value = c2str(lib.lyd_value_get_canonical(ctx_c, ffi.addressof(meta.value)))
            try:
                return EditOp(value)
            except ValueError as exc:  # pragma: no cover - libyang already checks the enum
                raise E.BadAttribute(message=f"bad operation {value!r}", info={"bad-attribute": "operation"}) from exc
        meta = meta.next
    return None


class EditApplier:
    """Applies one parsed edit to `target`, recording what changed."""

    def __init__(self, ctx: libyang.Context, target: DataTree, error_option: ErrorOption) -> None:
        self.ctx = ctx
        self.target = target
        self.error_option = error_option
        self.applied: list[AppliedEdit] = []
        self.errors: list[E.RpcError] = []
        self._has_ops: dict[int, bool] = {}

    def apply(self, edit: DataTree, default_op: EditOp) -> None:
        for top in list(edit.top_nodes()):
            self._guarded(top, default_op)
        if self.errors:
            raise E.RpcErrors(self.errors)

    # -- internals ----------------------------------------------------------------------------
    def _guarded(self, node: Node, inherited: EditOp) -> None:
        try:
            self._apply(node, inherited)
        except E.RpcError as err:
            if self.error_option is not ErrorOption.CONTINUE:
                raise
            self.errors.append(err)

    def _ops_below(self, node: Node) -> bool:
        key = int(ffi.cast("uintptr_t", node))
        cached = self._has_ops.get(key)
        if cached is not None:
            return cached
        found = False
        for child in children(node):
            if _operation(self.ctx.cdata, child) is not None or (is_inner(child) and self._ops_below(child)):
                found = True
                break
        self._has_ops[key] = found
        return found

    def _error(self, cls: type[E.RpcError], node: Node, message: str) -> E.RpcError:
        path, nsmap = xml_path(self.ctx, node_path(node))
        name = c2str(node.schema.name) if node.schema != ffi.NULL else ""
        return cls(message=message, path=path, path_namespaces=nsmap, info={"bad-element": name})

    def _record(self, op: EditOp, node: Node) -> None:
        self.applied.append(AppliedEdit(op, node_path(node)))

    def _apply(self, node: Node, inherited: EditOp) -> None:
        explicit = _operation(self.ctx.cdata, node)
        op = explicit or inherited
        path = node_path(node)
        existing = self.target.find(path)
        if op is EditOp.DELETE or op is EditOp.REMOVE:
            if existing is None:
                if op is EditOp.DELETE:
                    raise self._error(E.DataMissing, node, f"cannot delete {path}: no such data")
                return
            self.target.delete_node(existing)
            self._record(op, node)
            return
        if op is EditOp.CREATE:
            if existing is not None:
                raise self._error(E.DataExists, node, f"cannot create {path}: data already exists")
            self.target.merge_node(node)
            self._record(op, node)
            return
        if op is EditOp.REPLACE:
            if existing is not None:
                self.target.delete_node(existing)
            self.target.merge_node(node)
            self._record(op, node)
            return
        inner = is_inner(node)
        if op is EditOp.MERGE:
            # descend while the target has the node, so that each change is recorded at the
            # smallest subtree it touches (precise journal records and config-change events)
            if not inner or existing is None and not self._ops_below(node):
                self.target.merge_node(node)
                self._record(op, node)
                return
            if existing is None:
                self.target.merge_node(node, recursive=False)
                self._record(op, node)
            for child in children(node):
                if not is_key(child):
                    self._guarded(child, EditOp.MERGE)
            return
        # NONE: only descend; ancestors get created by a child's merge/create/replace
        if inner:
            for child in children(node):
                if not is_key(child):
                    self._guarded(child, EditOp.NONE)


def _path_of(el: etree._Element, modules: dict[str, str], keys: Any) -> str | None:
    """libyang data path of an edit element, from its ancestors and their list keys."""
    chain = [e for e in el.iterancestors() if e.getparent() is not None][::-1] + [el]
    parts: list[str] = []
    module = None
    for e in chain:
        q = etree.QName(e)
        mod = modules.get(q.namespace or "")
        if mod is None:
            return None
        step = q.localname if mod == module else f"{mod}:{q.localname}"
        module = mod
        for k in keys.for_element(e):
            kel = e.find(f"{{{q.namespace}}}{k}")
            if kel is None or kel.text is None:
                return None
            value = kel.text.strip().replace("'", "")
            step += f"[{k}='{value}']"
        parts.append(step)
    return "/" + "/".join(parts)


def split_valueless_removals(
    ctx: libyang.Context, target: DataTree, config_xml: str, keys: Any,
) -> tuple[str, list[tuple[EditOp, str]]]:
    """Take `<leaf nc:operation="delete|remove"/>` without a value out of the edit.

    RFC 6241 lets a client name a leaf to delete without its value (netconf-console2 --delete
    does), but libyang type-checks every leaf it parses. Such leaves are removed from the edit
    text and returned as (operation, data path) to apply directly.
    """
    if "operation" not in config_xml:
        return config_xml, []
    root = etree.fromstring(f"<r>{config_xml}</r>".encode())
    modules = {libyang.util.c2str(m.cdata.ns): m.name() for m in ctx}
    direct: list[tuple[EditOp, str]] = []
    for el in list(root.iter()):
        op = el.get(f"{{{NC_NS}}}operation")
        if op not in ("delete", "remove") or len(el) or (el.text or "").strip() or el.getparent() is None:
            continue
        path = _path_of(el, modules, keys)
        if path is None:
            continue
        node = target.find(path)
        if node is not None and is_inner(node):
            continue  # an empty container or list entry parses fine: leave it to libyang
        direct.append((EditOp(op), path))
        el.getparent().remove(el)
    if not direct:
        return config_xml, []
    return "".join(etree.tostring(c, encoding="unicode") for c in root), direct


def parse_edit(ctx: libyang.Context, config_xml: str) -> DataTree:
    """Parse the content of `<config>` (no validation: an edit is a partial tree)."""
    return DataTree.parse(ctx, config_xml, config_only=True, validate=False, strict=True)


def apply_edit(
    ctx: libyang.Context,
    target: DataTree,
    edit: DataTree,
    default_op: EditOp = EditOp.MERGE,
    error_option: ErrorOption = ErrorOption.STOP,
    removals: list[tuple[EditOp, str]] | None = None,
) -> list[AppliedEdit]:
    applier = EditApplier(ctx, target, error_option)
    try:
        for op, path in removals or []:
            node = target.find(path)
            if node is None:
                if op is EditOp.DELETE:
                    xpath, nsmap = xml_path(ctx, path)
                    err = E.DataMissing(message=f"cannot delete {path}: no such data", path=xpath,
                                        path_namespaces=nsmap, info={"bad-element": path.rsplit("/", 1)[-1]})
                    if error_option is not ErrorOption.CONTINUE:
                        raise err
                    applier.errors.append(err)
                continue
            target.delete_node(node)
            applier.applied.append(AppliedEdit(op, path))
        applier.apply(edit, default_op)
    except E.RpcErrors as errs:
        if error_option is ErrorOption.CONTINUE:
            errs.applied = applier.applied  # type: ignore[attr-defined]
        raise
    return applier.applied
