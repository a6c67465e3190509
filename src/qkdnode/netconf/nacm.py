"""NETCONF Access Control Model (RFC 8341, module ietf-netconf-acm) for NETCONF and RESTCONF.

The NACM configuration is the `/ietf-netconf-acm:nacm` subtree of running: groups of users and
ordered rule-lists. `Nacm` answers three questions for a user:

* exec: may the user invoke an operation (`check_exec`)?
* write: may the user create/update/delete the data at these paths (`check_write`)?
* read: which data may the user see (`prune`, which removes what the user may not read)?

Rules are taken in order (rule-lists in order, rules in order) from every rule-list naming one of
the user's groups; the first rule whose module, type (protocol-operation, data-node path, or none:
every node of the module) and access operations match decides. Without a match, the schema's
`nacm:default-deny-all` / `nacm:default-deny-write` extensions deny, and otherwise the global
defaults apply: read-default (permit), write-default (deny), exec-default (permit).
`close-session` is always permitted (RFC 8341 3.2.2). Path rules apply to the node they name and to
all its descendants; a list step without predicates names every entry.

Recovery users (RFC 8341 3.2: a recovery session bypasses access control, so that a broken NACM
configuration can be repaired) are the node config users with `recovery: true`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable
from xml.sax.saxutils import escape

import libyang
from libyang.util import c2str
from lxml import etree

from ..datatree import DataTree, Node, children, is_inner, node_path
from . import errors as E

NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
NACM_MODULE = "ietf-netconf-acm"
NETCONF_MODULE = "ietf-netconf"
ACCESS_OPS = ("create", "read", "update", "delete", "exec")
# RFC 6241's ietf-netconf module marks these operations nacm:default-deny-all
_DENY_ALL_RPCS = {(NETCONF_MODULE, "kill-session"), (NETCONF_MODULE, "delete-config")}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)

#: one path step: (module, node name, key predicates)
Step = tuple[str, str, tuple[tuple[str, str], ...]]


# -- paths ------------------------------------------------------------------------------------------
_STEP = re.compile(r"(?:(?P<prefix>[A-Za-z_][\w.-]*):)?(?P<name>[A-Za-z_][\w.-]*|\*)(?P<preds>(?:\[[^\]]*\])*)")
_PRED = re.compile(r"\[\s*(?:(?P<pfx>[A-Za-z_][\w.-]*):)?(?P<key>[A-Za-z_][\w.-]*|\.)\s*=\s*(?P<q>['\"])(?P<val>.*?)(?P=q)\s*\]")


def _split_path(path: str) -> list[str]:
    """`/a/b[k='x/y']/c` -> ['a', "b[k='x/y']", 'c'] (slashes inside predicates kept)."""
    out: list[str] = []
    buf: list[str] = []
    quote: str | None = None
    depth = 0
    for ch in path.strip():
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "/" and depth == 0:
            if buf:
                out.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if buf:
        out.append("".join(buf))
    return out


def parse_path(path: str, resolve: Callable[[str], str | None]) -> tuple[Step, ...] | None:
    """A data path (libyang's, or a NACM rule's node-instance-identifier) as steps; `resolve` maps a
    prefix to a module name. None when the path cannot be understood (such a rule never matches)."""
    steps: list[Step] = []
    module = ""
    for raw in _split_path(path):
        m = _STEP.fullmatch(raw.strip())
        if m is None:
            return None
        if m.group("prefix"):
            mod = resolve(m.group("prefix"))
            if mod is None:
                return None
            module = mod
        if not module:
            return None
        preds = tuple((p.group("key"), p.group("val")) for p in _PRED.finditer(m.group("preds") or ""))
        steps.append((module, m.group("name"), preds))
    return tuple(steps)


def _step_matches(rule: Step, node: Step) -> bool:
    if rule[0] != node[0] or (rule[1] != "*" and rule[1] != node[1]):
        return False
    have = dict(node[2])
    return all(have.get(k) == v for k, v in rule[2])


def is_prefix(prefix: tuple[Step, ...], path: tuple[Step, ...]) -> bool:
    return len(prefix) <= len(path) and all(_step_matches(r, n) for r, n in zip(prefix, path))


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    name: str
    module: str  # "*" or a module name
    kind: str  # "data" (no rule-type or a path), "rpc", "notification"
    target: str | None  # rpc/notification name ("*" for all), unused for data
    path: tuple[Step, ...] | None  # data-node rule; None: every node of the module
    ops: frozenset[str]
    permit: bool
    bad_path: bool = False  # a path that could not be parsed: the rule never matches


@dataclass
class NacmConfig:
    enabled: bool = True
    read_default: bool = True
    write_default: bool = False
    exec_default: bool = True
    groups: dict[str, set[str]] = field(default_factory=dict)  # user -> groups
    rule_lists: list[tuple[frozenset[str], list[Rule]]] = field(default_factory=list)

    def rules_for(self, user: str) -> list[Rule]:
        mine = self.groups.get(user, set())
        out: list[Rule] = []
        for groups, rules in self.rule_lists:
            if "*" in groups or groups & mine:
                out.extend(rules)
        return out


def _text(el: etree._Element | None, default: str = "") -> str:
    return default if el is None else (el.text or "").strip()


def parse_config(nacm: etree._Element | None, resolve_ns: Callable[[str], str | None],
                 ctx_modules: set[str]) -> NacmConfig:
    """The `<nacm>` element of running (None: the RFC 8341 defaults, no groups, no rules)."""
    cfg = NacmConfig()
    if nacm is None:
        return cfg

    def q(name: str) -> str:
        return f"{{{NACM_NS}}}{name}"

    cfg.enabled = _text(nacm.find(q("enable-nacm")), "true") == "true"
    cfg.read_default = _text(nacm.find(q("read-default")), "permit") == "permit"
    cfg.write_default = _text(nacm.find(q("write-default")), "deny") == "permit"
    cfg.exec_default = _text(nacm.find(q("exec-default")), "permit") == "permit"
    for g in nacm.iterfind(f"{q('groups')}/{q('group')}"):
        name = _text(g.find(q("name")))
        for u in g.iterfind(q("user-name")):
            cfg.groups.setdefault(_text(u), set()).add(name)
    for rl in nacm.iterfind(q("rule-list")):
        groups = frozenset(_text(g) for g in rl.iterfind(q("group")))
        rules: list[Rule] = []
        for r in rl.iterfind(q("rule")):
            ops_raw = _text(r.find(q("access-operations")), "*").split()
            ops = frozenset(ACCESS_OPS) if "*" in ops_raw else frozenset(ops_raw)
            module = _text(r.find(q("module-name")), "*")
            kind, target, path, bad = "data", None, None, False
            if r.find(q("rpc-name")) is not None:
                kind, target = "rpc", _text(r.find(q("rpc-name")))
            elif r.find(q("notification-name")) is not None:
                kind, target = "notification", _text(r.find(q("notification-name")))
            elif r.find(q("path")) is not None:
                el = r.find(q("path"))
                nsmap = {k: v for k, v in el.nsmap.items() if k}

                def resolve(prefix: str, nsmap: dict[str, str] = nsmap) -> str | None:
                    if prefix in nsmap:
                        return resolve_ns(nsmap[prefix])
                    return prefix if prefix in ctx_modules else None

                path = parse_path(_text(el), resolve)
                bad = path is None
            rules.append(Rule(_text(r.find(q("name"))), module, kind, target, path, ops,
                              _text(r.find(q("action"))) == "permit", bad))
        cfg.rule_lists.append((groups, rules))
    return cfg


# -- decisions ------------------------------------------------------------------------------------
def _covers(rule: Rule, path: tuple[Step, ...]) -> bool:
    """A data rule that applies to the node at `path` (and so to its descendants)."""
    if rule.kind != "data" or rule.bad_path:
        return False
    if not path:  # the whole datastore
        return rule.module == "*" and rule.path is None
    if rule.module != "*" and rule.module != path[0][0]:
        return False
    return rule.path is None or is_prefix(rule.path, path)


def _below(rule: Rule, path: tuple[Step, ...]) -> bool:
    """A data rule that applies only to some descendants of the node at `path`."""
    if rule.kind != "data" or rule.bad_path:
        return False
    if not path:  # the whole datastore: every module-specific or path rule is below
        return rule.module != "*" or rule.path is not None
    if rule.path is None or len(rule.path) <= len(path):
        return False
    if rule.module != "*" and rule.module != path[0][0]:
        return False
    return all(_step_matches(n, r) or _step_matches(r, n) for r, n in zip(rule.path, path))


class Nacm:
    """Access decisions for one node, from the `/nacm` subtree of running."""

    def __init__(self, ctx: libyang.Context, running_xml: Callable[[], str],
                 recovery_users: Iterable[str] = ()) -> None:
        self.ctx = ctx
        self.running_xml = running_xml
        self.recovery_users = set(recovery_users)
        self._ns_module: dict[str, str] = {}
        self._modules: set[str] = set()
        self._deny_all: set[tuple[tuple[str, str], ...]] = set()
        self._deny_write: set[tuple[tuple[str, str], ...]] = set()
        for mod in ctx:
            ns = c2str(mod.cdata.ns) if mod.cdata.ns else ""
            self._ns_module[ns] = mod.name()
            self._modules.add(mod.name())
            if mod.implemented():
                try:
                    self._walk_schema(mod.children(), ())
                except Exception:  # pragma: no cover - a module without data nodes
                    pass
        self._cached_xml: str | None = None
        self._config = NacmConfig()
        self.denied_operations = 0
        self.denied_data_writes = 0

    def _walk_schema(self, nodes: Iterable[libyang.SNode], prefix: tuple[tuple[str, str], ...]) -> None:
        for n in nodes:
            me = (*prefix, (n.module().name(), n.name()))
            names = {e.name() for e in n.extensions()}
            if "default-deny-all" in names:
                self._deny_all.add(me)
                continue  # everything below is covered by the ancestor
            if "default-deny-write" in names:
                self._deny_write.add(me)
            if isinstance(n, (libyang.SContainer, libyang.SList)):
                self._walk_schema(n.children(), me)

    def module_of(self, namespace: str) -> str | None:
        return self._ns_module.get(namespace)

    # -- configuration ----------------------------------------------------------------------
    @property
    def config(self) -> NacmConfig:
        xml = self.running_xml()
        if xml != self._cached_xml:
            root = etree.fromstring(f"<r>{xml}</r>".encode(), _PARSER)
            self._config = parse_config(root.find(f"{{{NACM_NS}}}nacm"), self.module_of, self._modules)
            self._cached_xml = xml
        return self._config

    def bypass(self, user: str) -> bool:
        """A recovery user, or NACM switched off."""
        return user in self.recovery_users or not self.config.enabled

    def _deny_default(self, path: tuple[Step, ...], write: bool) -> bool:
        names = tuple((m, n) for m, n, _ in path)
        for i in range(1, len(names) + 1):
            if names[:i] in self._deny_all or (write and names[:i] in self._deny_write):
                return True
        return False

    def _defaults_below(self, path: tuple[Step, ...], write: bool) -> bool:
        names = tuple((m, n) for m, n, _ in path)
        marked = self._deny_all | (self._deny_write if write else set())
        return any(len(m) > len(names) and m[: len(names)] == names for m in marked)

    # -- exec -------------------------------------------------------------------------------
    def exec_allowed(self, user: str, module: str, rpc: str) -> bool:
        if rpc == "close-session" and module == NETCONF_MODULE or self.bypass(user):
            return True
        cfg = self.config
        for rule in cfg.rules_for(user):
            if "exec" not in rule.ops or rule.module not in ("*", module):
                continue
            if rule.kind == "rpc" and rule.target in ("*", rpc) or rule.kind == "data" and rule.path is None:
                return rule.permit
        if (module, rpc) in _DENY_ALL_RPCS:
            return False
        return cfg.exec_default

    def check_exec(self, user: str, module: str, rpc: str) -> None:
        if not self.exec_allowed(user, module, rpc):
            self.denied_operations += 1
            raise E.AccessDenied(message=f"access denied: user {user!r} may not invoke {module}:{rpc}",
                                 info={"bad-element": rpc})

    # -- data -------------------------------------------------------------------------------
    def _decide(self, user: str, path: tuple[Step, ...], op: str, *, subtree: bool) -> bool:
        """May `user` do `op` on the node at `path` (and, with `subtree`, on everything below it)?"""
        cfg = self.config
        write = op != "read"
        for rule in cfg.rules_for(user):
            if op not in rule.ops:
                continue
            if _covers(rule, path):
                return rule.permit
            if subtree and not rule.permit and _below(rule, path):
                return False  # a denied part of the subtree
        if path and self._deny_default(path, write):
            return False
        if subtree and self._defaults_below(path, write):
            return False
        return cfg.write_default if write else cfg.read_default

    def data_path(self, path: str) -> tuple[Step, ...]:
        steps = parse_path(path, lambda p: p if p in self._modules else None) if path not in ("", "/") else ()
        if steps is None:
            raise E.OperationFailed(message=f"cannot check access to {path}")
        return steps

    def check_write(self, user: str, edits: Iterable[tuple[str, str]]) -> None:
        """`edits`: (access operation, libyang data path; '/' is the whole datastore). Each edit
        covers the node and its subtree; one denied edit denies the whole request."""
        if self.bypass(user):
            return
        for op, path in edits:
            steps = self.data_path(path)
            if not self._decide(user, steps, op, subtree=True):
                self.denied_data_writes += 1
                where = path if path not in ("", "/") else "the whole datastore"
                raise E.AccessDenied(message=f"access denied: user {user!r} may not {op} {where}",
                                     path=path if path not in ("", "/") else None)

    def may_write_everything(self, user: str) -> bool:
        """A shortcut: the first write rules permit every module (or NACM does not apply)."""
        if self.bypass(user):
            return True
        for rule in self.config.rules_for(user):
            if not {"create", "update", "delete"} & rule.ops:
                continue
            return (rule.permit and rule.kind == "data" and rule.module == "*" and rule.path is None
                    and {"create", "update", "delete"} <= rule.ops)
        return False

    def may_read_everything(self, user: str) -> bool:
        if self.bypass(user):
            return True
        for rule in self.config.rules_for(user):
            if "read" not in rule.ops:
                continue
            return rule.permit and rule.kind == "data" and rule.module == "*" and rule.path is None
        return False

    def prune(self, user: str, tree: DataTree) -> int:
        """Remove from `tree` every node `user` may not read; returns how many subtrees went."""
        if self.may_read_everything(user):
            return 0
        removed = 0
        for top in list(tree.top_nodes()):
            removed += self._prune_node(user, tree, top)
        return removed

    def _prune_node(self, user: str, tree: DataTree, node: Node) -> int:
        steps = self.data_path(node_path(node))
        if not self._decide(user, steps, "read", subtree=False):
            tree.delete_node(node)
            return 1
        if not is_inner(node):
            return 0
        return sum(self._prune_node(user, tree, c) for c in children(node))

    def state_xml(self) -> str:
        """The config-false counters of `/nacm` (RFC 8341)."""
        return (f'<nacm xmlns="{NACM_NS}"><denied-operations>{self.denied_operations}</denied-operations>'
                f"<denied-data-writes>{self.denied_data_writes}</denied-data-writes>"
                "<denied-notifications>0</denied-notifications></nacm>")


# -- the shipped configuration ----------------------------------------------------------------------
#: operations an `operator` may not invoke (besides the data writes NACM denies by default)
OPERATOR_DENIED_RPCS = ("edit-config", "copy-config", "delete-config", "commit", "discard-changes",
                        "lock", "unlock", "kill-session")


def default_config_xml(groups: dict[str, list[str]]) -> str:
    """The `/nacm` of a new node: groups `admin` (everything) and `operator` (read and the
    read-only operations), users as the node config assigns them (`groups` -> user names)."""
    members = {g: sorted(set(u)) for g, u in groups.items()}
    members.setdefault("admin", [])
    members.setdefault("operator", [])
    grp = "".join(
        f"<group><name>{escape(g)}</name>" + "".join(f"<user-name>{escape(u)}</user-name>" for u in users)
        + "</group>" for g, users in sorted(members.items())
    )
    op_rules = "".join(
        f"<rule><name>deny-{r}</name><module-name>{NETCONF_MODULE}</module-name><rpc-name>{r}</rpc-name>"
        "<access-operations>exec</access-operations><action>deny</action></rule>" for r in OPERATOR_DENIED_RPCS
    )
    return (
        f'<nacm xmlns="{NACM_NS}"><enable-nacm>true</enable-nacm><read-default>permit</read-default>'
        "<write-default>deny</write-default><exec-default>permit</exec-default>"
        f"<groups>{grp}</groups>"
        "<rule-list><name>admin</name><group>admin</group><rule><name>permit-all</name>"
        "<module-name>*</module-name><access-operations>*</access-operations><action>permit</action>"
        "<comment>administrators may do everything</comment></rule></rule-list>"
        f"<rule-list><name>operator</name><group>operator</group>{op_rules}"
        "<rule><name>deny-writes</name><module-name>*</module-name>"
        "<access-operations>create update delete</access-operations><action>deny</action>"
        "<comment>operators read; they change nothing</comment></rule></rule-list></nacm>"
    )
