"""`<filter>` for get/get-config and notifications: subtree (RFC 6241 section 6) and XPath (:xpath).

Subtree filtering is NETCONF protocol logic that libyang does not provide; it runs on lxml
elements of the printed data. XPath filters are evaluated by libyang on the data tree.
"""

from __future__ import annotations

import re
from typing import Iterable

import libyang
from lxml import etree

from ..datatree import DataTree
from . import errors as E
from .namespaces import NC_NS

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_blank_text=True)


class ListKeys:
    """(namespace, list name) -> key leaf names, taken once from the schema."""

    def __init__(self, ctx: libyang.Context) -> None:
        self.keys: dict[tuple[str, str], tuple[str, ...]] = {}
        for module in ctx:
            if not module.implemented():
                continue
            ns = module.cdata.ns
            ns_s = libyang.util.c2str(ns) if ns else ""
            try:
                children = list(module.children())
            except Exception:  # pragma: no cover - module without data nodes
                continue
            self._walk(ns_s, children)

    def _walk(self, ns: str, nodes: Iterable[libyang.SNode]) -> None:
        for node in nodes:
            if isinstance(node, libyang.SList):
                self.keys[(ns, node.name())] = tuple(k.name() for k in node.keys())
            if isinstance(node, (libyang.SContainer, libyang.SList)):
                try:
                    self._walk(ns, node.children())
                except Exception:  # pragma: no cover
                    continue

    def for_element(self, el: etree._Element) -> tuple[str, ...]:
        q = etree.QName(el)
        return self.keys.get((q.namespace or "", q.localname), ())


def _qname_matches(f: etree._Element, d: etree._Element) -> bool:
    fq, dq = etree.QName(f), etree.QName(d)
    if fq.localname != dq.localname:
        return False
    return fq.namespace is None or fq.namespace == dq.namespace


def _is_content_match(f: etree._Element) -> bool:
    return len(f) == 0 and bool((f.text or "").strip())


def _mark_siblings(
    data: list[etree._Element], filters: list[etree._Element], keys: ListKeys,
    keep: dict[etree._Element, bool],
) -> bool:
    """Mark the data elements the filters select (True: the whole subtree); sibling filters OR."""
    found = False
    for d in data:
        for f in filters:
            if _qname_matches(f, d) and not _is_content_match(f) and _mark_element(d, f, keys, keep):
                found = True
    return found


def _mark_element(d: etree._Element, f: etree._Element, keys: ListKeys, keep: dict[etree._Element, bool]) -> bool:
    fchildren = [c for c in f if isinstance(c.tag, str)]
    if not fchildren:
        keep[d] = True  # selection node
        return True
    dchildren = [c for c in d if isinstance(c.tag, str)]
    matches = [c for c in fchildren if _is_content_match(c)]
    for m in matches:
        want = (m.text or "").strip()
        if not any(_qname_matches(m, c) and (c.text or "").strip() == want for c in dchildren):
            return False
    others = [c for c in fchildren if not _is_content_match(c)]
    if not others:
        keep[d] = True
        return True
    sub: dict[etree._Element, bool] = {}
    if not _mark_siblings(dchildren, others, keys, sub) and not matches:
        return False
    # list keys and content-match leaves are always returned with the selected descendants
    key_names = set(keys.for_element(d))
    for c in dchildren:
        if etree.QName(c).localname in key_names or any(_qname_matches(m, c) for m in matches):
            sub[c] = True
    keep.setdefault(d, False)
    for el, whole in sub.items():
        keep[el] = keep.get(el, False) or whole
    return True


def _prune(el: etree._Element, keep: dict[etree._Element, bool]) -> None:
    for c in list(el):
        whole = keep.get(c) if isinstance(c.tag, str) else None
        if whole is None:
            el.remove(c)
        elif not whole:
            _prune(c, keep)


def subtree_filter(data_xml: str, filter_el: etree._Element, keys: ListKeys) -> str:
    """Apply a subtree filter to printed data (siblings of top-level elements).

    The data are pruned in place rather than copied into new parents: lxml drops a copied
    element's namespace declarations whose URI its new parent already binds, even when the
    prefix is still used in an identityref value (e.g. `<format>ncm:yang</format>`).
    """
    fchildren = [c for c in filter_el if isinstance(c.tag, str)]
    if not fchildren:
        return ""  # an empty filter selects nothing (RFC 6241 6.4.2)
    if not data_xml:
        return ""
    root = etree.fromstring(f"<data>{data_xml}</data>".encode(), _PARSER)
    keep: dict[etree._Element, bool] = {}
    _mark_siblings([c for c in root if isinstance(c.tag, str)], fchildren, keys, keep)
    _prune(root, keep)
    return "".join(etree.tostring(k, encoding="unicode", with_tail=False) for k in root)


_NAME = re.compile(r"(?<![\w.'\"-])([A-Za-z_][\w.-]*):(?=[A-Za-z_*])")
_QNAME_LITERAL = re.compile(r"([A-Za-z_][\w.-]*):([A-Za-z_][\w.-]*)")


def xpath_to_libyang(select: str, nsmap: dict[str | None, str], ctx: libyang.Context) -> str:
    """Rewrite XML prefixes of an XPath `select` into the module names libyang expects."""
    ns_to_module: dict[str, str] = {}
    for module in ctx:
        ns = libyang.util.c2str(module.cdata.ns)
        if ns:
            ns_to_module[ns] = module.name()

    def repl(m: re.Match[str]) -> str:
        prefix = m.group(1)
        ns = nsmap.get(prefix)
        if ns is None:
            if prefix in ns_to_module.values():
                return m.group(0)
            raise E.InvalidValue(message=f"XPath prefix {prefix!r} is not declared", info={"bad-attribute": "select"})
        module = ns_to_module.get(ns)
        if module is None:
            raise E.UnknownNamespace(message=f"no module with namespace {ns}", info={"bad-namespace": ns})
        return f"{module}:"

    def literal(p: str) -> str:
        # an identity literal ('prefix:NAME', as in qkdl_type = 't:VIRT') uses the filter's
        # prefixes too; libyang compares identityref values with module-name prefixes
        m = _QNAME_LITERAL.fullmatch(p[1:-1])
        if m is None or m.group(1) not in nsmap or nsmap[m.group(1)] not in ns_to_module:
            return p
        return f"{p[0]}{ns_to_module[nsmap[m.group(1)]]}:{m.group(2)}{p[0]}"

    parts = re.split(r"('[^']*'|\"[^\"]*\")", select)
    return "".join(literal(p) if p[:1] in "'\"" else _NAME.sub(repl, p) for p in parts)


def xpath_filter(tree: DataTree, select: str, nsmap: dict[str | None, str], with_defaults: str) -> str:
    expr = xpath_to_libyang(select, nsmap, tree.ctx)
    nodes = tree.xpath(expr)
    if not nodes:
        return ""
    result = DataTree(tree.ctx)
    try:
        for node in nodes:
            result.merge_node(node, with_parents=True, recursive=True)
        return result.print(with_defaults=with_defaults)
    finally:
        result.free()


def parse_filter(rpc_filter: etree._Element | None) -> tuple[str, etree._Element | None]:
    """('none'|'subtree'|'xpath', element) with RFC 6241 checks on the type attribute."""
    if rpc_filter is None:
        return "none", None
    ftype = rpc_filter.get("type") or rpc_filter.get(f"{{{NC_NS}}}type") or "subtree"
    if ftype not in ("subtree", "xpath"):
        raise E.BadAttribute(message=f"filter type {ftype!r} is not supported", info={"bad-attribute": "type", "bad-element": "filter"})
    if ftype == "xpath" and not (rpc_filter.get("select") or rpc_filter.get(f"{{{NC_NS}}}select")):
        raise E.MissingAttribute(message="xpath filter without select", info={"bad-attribute": "select", "bad-element": "filter"})
    return ftype, rpc_filter
