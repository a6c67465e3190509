"""RESTCONF data resources on the node's `Datastores`: reading (content, depth, with-defaults) and
writing through the same candidate edit -> commit path as NETCONF.

A write builds a NETCONF `<edit-config>` from the request (the target's ancestors, the body parsed
by libyang in place under them, an `nc:operation` on the target) and runs it on the candidate under
the RESTCONF session ID, then commits at once; on any failure the candidate is discarded, so
RESTCONF never leaves it dirty. A NETCONF lock on candidate or running, or uncommitted NETCONF
changes in the candidate, refuse the write with `in-use`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote

import libyang
from _libyang import ffi, lib
from libyang.util import str2c
from lxml import etree

from ..datastore import Change, Datastore, Datastores
from ..datatree import (
    _WD_FLAGS, DataTree, Node, YangDataError, children, is_inner, is_key, module_namespace, node_value, xml_path,
)
from ..edit import EditOp
from ..netconf import errors as E
from ..netconf.namespaces import NC_NS
from .errors import RESTCONF_NS
from .paths import ApiPath, Step

#: the datastores' session ID of every RESTCONF write (NETCONF session IDs count up from 1)
RESTCONF_SESSION_ID = 0xFFFF_FFFF
WITH_DEFAULTS = ("explicit", "trim", "report-all", "report-all-tagged")


@dataclass(frozen=True)
class ReadOptions:
    content: str = "all"  # config | nonconfig | all
    depth: int | None = None  # None: unbounded
    with_defaults: str = "explicit"


# -- reading ------------------------------------------------------------------------------------
def _dup(node: Node) -> Node:
    out = ffi.new("struct lyd_node **")
    if lib.lyd_dup_single(node, ffi.NULL, lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_FLAGS, out) != lib.LY_SUCCESS:
        raise E.OperationFailed(message="cannot copy data")
    return out[0]






def _is_config(node: Node) -> bool:
    return node.schema != ffi.NULL and bool(node.schema.flags & lib.LYS_CONFIG_W)




def _keep_state_only(node: Node) -> bool:
    """Drop config leaves (not keys) below `node`; False when nothing of `node` is left."""
    for child in children(node):
        if not _keep_state_only(child):
            lib.lyd_free_tree(child)
    if is_inner(node):
        if any(not is_key(c) for c in children(node)):
            return True
        return not _is_config(node)  # an empty state container still says "here"
    return is_key(node) or not _is_config(node)


def _print_one(node: Node, fmt: str, with_defaults: str) -> str:
    """One subtree; an empty container is still printed (depth=1 shows the target itself)."""
    flags = _WD_FLAGS[with_defaults] | lib.LYD_PRINT_SHRINK | lib.LYD_PRINT_KEEPEMPTYCONT
    out = ffi.new("char **")
    if lib.lyd_print_mem(out, node, lib.LYD_JSON if fmt == "json" else lib.LYD_XML, flags) != lib.LY_SUCCESS:
        raise E.OperationFailed(message="cannot print data")
    try:
        return ffi.string(out[0]).decode() if out[0] != ffi.NULL else ""
    finally:
        lib.free(out[0])


def _prune_depth(node: Node, depth: int) -> None:
    """RFC 8040 4.8.2: the target is level 1; keep `depth` levels (list keys always)."""
    for child in children(node):
        if depth <= 1 and not is_key(child):
            lib.lyd_free_tree(child)
        else:
            _prune_depth(child, depth - 1)


class Reader:
    def __init__(self, datastores: Datastores, yang_library: Callable[[], DataTree] | None = None) -> None:
        self.ds = datastores
        self.ctx = datastores.ctx
        self.yang_library = yang_library

    def _tree(self, path: ApiPath, opts: ReadOptions) -> DataTree:
        if opts.content == "config":
            return self.ds.running.dup()
        tree = self.ds.operational_tree()
        wants_yanglib = path.is_root or path.steps[0].module == "ietf-yang-library"
        if wants_yanglib and self.yang_library is not None:
            tree.merge_tree(self.yang_library())
        return tree

    def read(self, path: ApiPath, opts: ReadOptions, fmt: str,
             prune: Callable[[DataTree], object] | None = None) -> str | None:
        """The resource in `fmt` ('json' | 'xml'), or None when it does not exist; `prune` removes
        what the caller may not read (NACM) from the tree first."""
        if opts.content == "config" and not path.is_root and not path.target.config:
            return None
        tree = self._tree(path, opts)
        try:
            if prune is not None:
                prune(tree)
            if path.is_root:
                nodes = list(tree.top_nodes())
            elif path.instance:
                found = tree.find(path.data_path)
                nodes = [found] if found is not None else []
            else:
                nodes = tree.xpath(path.data_path)
            copies = [_dup(n) for n in nodes]
        finally:
            tree.free()
        parts: list[str] = []
        for c in copies:
            try:
                if opts.content == "nonconfig" and not _keep_state_only(c):
                    continue
                if opts.depth is not None:
                    _prune_depth(c, opts.depth)
                parts.append(_print_one(c, fmt, opts.with_defaults))
            finally:
                lib.lyd_free_tree(c)
        if not parts and not path.is_root:
            return None
        if fmt == "json":
            merged: dict[str, object] = {}
            for part in parts:
                for name, value in json.loads(part).items():
                    if isinstance(value, list) and isinstance(merged.get(name), list):
                        merged[name].extend(value)  # type: ignore[union-attr]
                    else:
                        merged[name] = value
            body = json.dumps(merged)
        else:
            body = "".join(parts)
        if not path.is_root:
            return body
        if fmt == "json":
            inner = json.loads(body) if body else {}
            return json.dumps({"ietf-restconf:data": inner})
        return f'<data xmlns="{RESTCONF_NS}">{body}</data>'


# -- writing ------------------------------------------------------------------------------------
def _unwrap_datastore_body(body: str, fmt: str) -> str:
    """The `ietf-restconf:data` wrapper of a datastore-level body removed."""
    if fmt == "json":
        try:
            doc = json.loads(body or "{}")
        except json.JSONDecodeError as exc:
            raise E.MalformedMessage(message=f"body is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise E.MalformedMessage(message="body must be a JSON object")
        if set(doc) == {"ietf-restconf:data"}:
            doc = doc["ietf-restconf:data"] or {}
        return json.dumps(doc)
    try:
        root = etree.fromstring(body.encode())
    except etree.XMLSyntaxError as exc:
        raise E.MalformedMessage(message=f"body is not XML: {exc}") from exc
    if etree.QName(root) == etree.QName(RESTCONF_NS, "data"):
        return "".join(etree.tostring(c).decode() for c in root)
    return body


class Writer:
    def __init__(self, datastores: Datastores) -> None:
        self.ds = datastores
        self.ctx: libyang.Context = datastores.ctx

    # -- the one write path -------------------------------------------------------------------
    def _run(self, work: Callable[[], None]) -> Change | None:
        ds = self.ds
        for d in (Datastore.CANDIDATE, Datastore.RUNNING):
            holder = ds.locks.get(d)
            if holder is not None and holder != RESTCONF_SESSION_ID:
                raise E.InUse(message=f"{d.value} is locked by NETCONF session {holder}",
                              info={"session-id": str(holder)}, error_type=E.ErrorType.PROTOCOL)
        if ds.candidate_modified:
            raise E.InUse(message="the candidate holds uncommitted NETCONF changes: commit or discard them first",
                          error_type=E.ErrorType.PROTOCOL)
        try:
            work()
            return ds.commit(RESTCONF_SESSION_ID)
        except BaseException:
            ds.discard_changes(RESTCONF_SESSION_ID, force=True)
            raise

    def exists(self, path: ApiPath) -> bool:
        return path.is_root or self.ds.running.find(path.data_path) is not None

    # -- building edits -----------------------------------------------------------------------
    def _scratch(self, parent: ApiPath, body: str, fmt: str) -> DataTree:
        """`parent`'s ancestors and keys, with `body` parsed (not validated) under it."""
        tree = DataTree(self.ctx)
        parent_node = ffi.NULL
        if not parent.is_root:
            out = ffi.new("struct lyd_node **")
            if lib.lyd_new_path(ffi.NULL, self.ctx.cdata, str2c(parent.data_path), ffi.NULL, 0, out) != lib.LY_SUCCESS:
                raise YangDataError.from_ctx(self.ctx, f"cannot create {parent.data_path}")
            top = out[0]
            while top.parent != ffi.NULL:
                top = ffi.cast("struct lyd_node *", top.parent)
            tree = DataTree(self.ctx, top)
            parent_node = tree.find(parent.data_path)
            if parent_node is None:
                raise E.OperationFailed(message=f"cannot find {parent.data_path} just created")
        data = body.encode()
        inp = ffi.new("struct ly_in **")
        buf = ffi.new("char[]", data)
        if lib.ly_in_new_memory(buf, inp) != lib.LY_SUCCESS:
            raise E.OperationFailed(message="cannot read the body")
        out = ffi.new("struct lyd_node **")
        flags = lib.LYD_PARSE_ONLY | lib.LYD_PARSE_STRICT | lib.LYD_PARSE_NO_STATE
        fmt_c = lib.LYD_JSON if fmt == "json" else lib.LYD_XML
        try:
            ret = lib.lyd_parse_data(self.ctx.cdata, parent_node, inp[0], fmt_c, flags, 0, out)
        finally:
            lib.ly_in_free(inp[0], 0)
        if ret != lib.LY_SUCCESS:
            tree.free()
            err = YangDataError.from_ctx(self.ctx, "invalid request body")
            # a body libyang cannot parse at all (not JSON/XML, a DTD, no namespace, too deep) is
            # the client's fault: malformed-message (400), not operation-failed (500)
            err.errors = [E.MalformedMessage(message=e.message, path=e.path, path_namespaces=e.path_namespaces,
                                             info=e.info) if e.tag == "operation-failed" else e for e in err.errors]
            if not parent.is_root:  # libyang locates errors below a given parent from the body's top
                where, nsmap = xml_path(self.ctx, parent.data_path)
                for e in err.errors:
                    if e.path and not e.path.startswith(where):
                        e.path = where + e.path
                        e.path_namespaces = {**nsmap, **e.path_namespaces}
            raise err
        if parent.is_root:
            tree = DataTree(self.ctx, out[0])
        return tree

    def _edit_xml(self, tree: DataTree, marks: list[tuple[list[Step], EditOp]]) -> str:
        """The tree as `<config>` with `nc:operation` on the elements reached by each step chain."""
        xml = tree.print(fmt="xml")
        root = etree.fromstring(f'<config xmlns="{NC_NS}">{xml}</config>'.encode())
        for steps, op in marks:
            for el in self._elements(root, steps):
                el.set(f"{{{NC_NS}}}operation", op.value)
        return "".join(etree.tostring(c).decode() for c in root)

    def _elements(self, root: etree._Element, steps: list[Step]) -> list[etree._Element]:
        level = [root]
        for s in steps:
            tag = f"{{{module_namespace(self.ctx, s.module)}}}{s.name}"
            level = [c for el in level for c in el if c.tag == tag]
        return level

    def _check_single_target(self, tree: DataTree, path: ApiPath) -> None:
        if path.parent.is_root:
            new = list(tree.top_nodes())
        else:
            parent = tree.find(path.parent.data_path)
            new = [c for c in children(parent) if not is_key(c)] if parent is not None else []
        if len(new) != 1 or tree.find(path.data_path) is None:
            raise E.InvalidValue(
                message=f"the body must hold exactly one {path.target.module}:{path.target.name}"
                        + (", with the key values of the URI" if path.target.values else ""),
                info={"bad-element": path.target.name},
            )

    # -- methods ------------------------------------------------------------------------------
    def put(self, path: ApiPath, body: str, fmt: str) -> bool:
        """Create or replace; True when the resource was created."""
        created = not self.exists(path)
        if path.is_root:
            inner = _unwrap_datastore_body(body, fmt)
            tree = self._scratch(path, inner, fmt)
            try:
                xml = tree.print(fmt="xml")
            finally:
                tree.free()
            self._run(lambda: self.ds.copy_config(Datastore.CANDIDATE, xml, RESTCONF_SESSION_ID))
            return False
        tree = self._scratch(path.parent, body, fmt)
        try:
            self._check_single_target(tree, path)
            xml = self._edit_xml(tree, [(list(path.steps), EditOp.REPLACE)])
        finally:
            tree.free()
        self._run(lambda: self.ds.edit_config(Datastore.CANDIDATE, xml, RESTCONF_SESSION_ID))
        return created

    def post(self, path: ApiPath, body: str, fmt: str) -> str:
        """Create one child of `path`; returns the api-path (encoded) of the new resource."""
        if path.is_root:
            body = _unwrap_datastore_body(body, fmt)
        elif not path.instance:
            raise E.InvalidValue(message="POST needs a data resource (a list needs its keys)")
        tree = self._scratch(path, body, fmt)
        try:
            if path.is_root:
                new = list(tree.top_nodes())
            else:
                target = tree.find(path.data_path)
                new = [c for c in children(target) if not is_key(c)] if target is not None else []
            if len(new) != 1:
                raise E.InvalidValue(message=f"POST creates exactly one child resource, the body holds {len(new)}")
            child = new[0]
            step = _step_of(child)
            xml = self._edit_xml(tree, [([*path.steps, step], EditOp.CREATE)])
        finally:
            tree.free()
        self._run(lambda: self.ds.edit_config(Datastore.CANDIDATE, xml, RESTCONF_SESSION_ID))
        return _api_path([*path.steps, step])

    def patch(self, path: ApiPath, body: str, fmt: str) -> None:
        """Plain patch (RFC 8040 4.6.1): merge; the target must exist."""
        if path.is_root:
            inner = _unwrap_datastore_body(body, fmt)
            tree = self._scratch(path, inner, fmt)
            try:
                xml = self._edit_xml(tree, [])
            finally:
                tree.free()
        else:
            if not self.exists(path):
                raise E.DataMissing(message=f"{path.data_path} does not exist: PATCH does not create it")
            tree = self._scratch(path.parent, body, fmt)
            try:
                self._check_single_target(tree, path)
                xml = self._edit_xml(tree, [(list(path.steps), EditOp.MERGE)])
            finally:
                tree.free()
        self._run(lambda: self.ds.edit_config(Datastore.CANDIDATE, xml, RESTCONF_SESSION_ID))

    def delete(self, path: ApiPath) -> None:
        if path.is_root:
            raise E.OperationNotSupported(message="DELETE of the whole datastore is not supported")
        found = self.ds.running.find(path.data_path) if path.instance else None
        if found is None:
            raise E.DataMissing(message=f"{path.data_path} does not exist")
        tree = DataTree(self.ctx)
        try:
            tree.merge_node(found, with_parents=True, recursive=False)
            xml = self._edit_xml(tree, [(list(path.steps), EditOp.DELETE)])
        finally:
            tree.free()
        self._run(lambda: self.ds.edit_config(Datastore.CANDIDATE, xml, RESTCONF_SESSION_ID))


def _step_of(node: Node) -> Step:
    sch = node.schema
    module = ffi.string(sch.module.name).decode()
    name = ffi.string(sch.name).decode()
    keys: list[str] = []
    values: list[str] = []
    if sch.nodetype & lib.LYS_LIST:
        for c in children(node):
            if is_key(c):
                keys.append(ffi.string(c.schema.name).decode())
                values.append(node_value(c) or "")
    elif sch.nodetype & lib.LYS_LEAFLIST:
        keys, values = ["."], [node_value(node) or ""]
    return Step(module, name, tuple(keys), tuple(values), bool(sch.nodetype & lib.LYS_LIST),
                bool(sch.nodetype & lib.LYS_LEAFLIST))


def _api_path(steps: list[Step]) -> str:
    out = []
    module = ""
    for s in steps:
        seg = quote(s.name if s.module == module else f"{s.module}:{s.name}", safe=":")
        module = s.module
        if s.values:
            seg += "=" + ",".join(quote(v, safe="") for v in s.values)
        out.append(seg)
    return "/".join(out)
