"""RPC dispatch: `rpc_<name>` handlers for every supported NETCONF operation.

Unknown operations are `operation-not-supported`. Handlers parse their parameters from the
operation element (lxml), act on the datastores and return the reply body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from lxml import etree

from ..datastore import Datastore, TestOption
from ..datatree import DataTree
from ..edit import EditOp, ErrorOption
from . import errors as E
from .filters import parse_filter, subtree_filter, xpath_filter
from .namespaces import MONITORING_NS, NC_NS, NOTIF_NS, WITH_DEFAULTS_NS
from .notifications import STREAM, Subscription

if TYPE_CHECKING:
    from .server import NetconfServer
    from .session import NetconfSession

OK = "<ok/>"
Handler = Callable[["NetconfSession", etree._Element], Awaitable[str | None]]

_WITH_DEFAULTS = ("report-all", "report-all-tagged", "trim", "explicit")


def _nc(name: str) -> str:
    return f"{{{NC_NS}}}{name}"


def _child(op: etree._Element, name: str, ns: str = NC_NS) -> etree._Element | None:
    """A parameter element; unqualified names are accepted too (ncclient sends a bare <config>)."""
    el = op.find(f"{{{ns}}}{name}")
    return el if el is not None else op.find(name)


def _required(op: etree._Element, name: str) -> etree._Element:
    el = _child(op, name)
    if el is None:
        raise E.MissingElement(
            message=f"<{etree.QName(op).localname}> needs <{name}>",
            info={"bad-element": name},
            error_type=E.ErrorType.PROTOCOL,
        )
    return el


def _text(el: etree._Element | None) -> str | None:
    return None if el is None else (el.text or "").strip()


def _enum(op: etree._Element, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = _text(_child(op, name))
    if value is None:
        return default
    if value not in allowed:
        raise E.InvalidValue(
            message=f"<{name}> must be one of {', '.join(allowed)}", info={"bad-element": name},
            error_type=E.ErrorType.PROTOCOL,
        )
    return value


def _datastore_of(container: etree._Element, *, allow_config: bool = False) -> Datastore | str:
    """Parse `<target>`/`<source>`: a datastore element, or inline `<config>` when allowed."""
    children = [c for c in container if isinstance(c.tag, str)]
    if len(children) != 1:
        raise E.MissingElement(
            message=f"<{etree.QName(container).localname}> needs exactly one datastore",
            info={"bad-element": etree.QName(container).localname}, error_type=E.ErrorType.PROTOCOL,
        )
    el = children[0]
    q = etree.QName(el)
    base = q.namespace in (NC_NS, None)
    if base and q.localname == "config" and allow_config:
        return _config_content(el)
    if base and q.localname == "url":
        raise E.OperationNotSupported(message=":url is not supported", info={"bad-element": "url"})
    try:
        if not base:
            raise ValueError
        return Datastore(q.localname)
    except ValueError:
        raise E.InvalidValue(
            message=f"unknown datastore <{q.localname}>", info={"bad-element": q.localname},
            error_type=E.ErrorType.PROTOCOL,
        ) from None


def _config_content(config: etree._Element) -> str:
    return "".join(etree.tostring(c, encoding="unicode") for c in config if isinstance(c.tag, str))


def _with_defaults(op: etree._Element) -> str:
    el = op.find(f"{{{WITH_DEFAULTS_NS}}}with-defaults")
    if el is None:
        return "explicit"
    value = (el.text or "").strip()
    if value not in _WITH_DEFAULTS:
        raise E.InvalidValue(message=f"with-defaults {value!r} is not supported", info={"bad-element": "with-defaults"})
    return value


class RpcDispatcher:
    """Maps (namespace, operation name) to a handler; the default is operation-not-supported."""

    def __init__(self, server: "NetconfServer") -> None:
        self.server = server
        self.ds = server.datastores
        self.handlers: dict[tuple[str, str], Handler] = {}
        for name in dir(self):
            if name.startswith("rpc_"):
                op = name[4:].replace("_", "-")
                self.handlers[(NC_NS, op)] = getattr(self, name)
        self.handlers[(NOTIF_NS, "create-subscription")] = self.create_subscription
        self.handlers[(MONITORING_NS, "get-schema")] = self.get_schema

    async def dispatch(self, session: "NetconfSession", op: etree._Element) -> str | None:
        q = etree.QName(op)
        handler = self.handlers.get((q.namespace or "", q.localname))
        if handler is None:
            raise E.OperationNotSupported(
                message=f"operation <{q.localname}> ({q.namespace}) is not supported",
                info={"bad-element": q.localname}, error_type=E.ErrorType.PROTOCOL,
            )
        nacm = self.server.nacm
        nacm.check_exec(session.info.username, nacm.module_of(q.namespace or "") or "", q.localname)
        return await handler(session, op)

    # -- access control (RFC 8341) ------------------------------------------------------------
    def _readable(self, session: "NetconfSession", tree: DataTree) -> DataTree | None:
        """A pruned copy of `tree` when NACM hides some of it from the user, else None."""
        nacm, user = self.server.nacm, session.info.username
        if nacm.may_read_everything(user):
            return None
        copy = tree.dup()
        nacm.prune(user, copy)
        return copy

    def _authorize_edit(self, session: "NetconfSession", target: Datastore, content: str,
                        default_op: EditOp) -> None:
        """Check an edit's changes (found by a test-only run of it) against the user's write rules."""
        nacm, user = self.server.nacm, session.info.username
        if nacm.may_write_everything(user) or target is not Datastore.CANDIDATE:
            return
        applied = self.ds.edit_config(target, content, session.id, default_op, TestOption.TEST_ONLY,
                                      ErrorOption.STOP)
        old = self.ds.config_tree(target)
        edits = []
        for e in applied:
            if e.operation in (EditOp.DELETE, EditOp.REMOVE):
                edits.append(("delete", e.path))
            elif e.operation is EditOp.CREATE or e.path != "/" and old.find(e.path) is None:
                edits.append(("create", e.path))
            else:
                edits.append(("update", e.path))
        nacm.check_write(user, edits)

    def _authorize_replace(self, session: "NetconfSession", ops: tuple[str, ...]) -> None:
        nacm, user = self.server.nacm, session.info.username
        if not nacm.may_write_everything(user):
            nacm.check_write(user, [(o, "/") for o in ops])

    # -- reading --------------------------------------------------------------------------------
    async def rpc_get_config(self, session: "NetconfSession", op: etree._Element) -> str:
        source = _datastore_of(_required(op, "source"))
        assert isinstance(source, Datastore)
        if source not in (Datastore.RUNNING, Datastore.CANDIDATE):
            raise E.InvalidValue(message=f"datastore {source.value} is not supported", info={"bad-element": source.value})
        wd = _with_defaults(op)
        ftype, fel = parse_filter(_child(op, "filter"))
        pruned = self._readable(session, self.ds.config_tree(source))
        try:
            if ftype == "xpath":
                assert fel is not None
                tree = pruned if pruned is not None else self.ds.config_tree(source)
                body = xpath_filter(tree, _select(fel), dict(fel.nsmap), wd)
            else:
                body = self.ds.get_config_xml(source, wd) if pruned is None else pruned.print(with_defaults=wd)
                if fel is not None:
                    body = subtree_filter(body, fel, self.server.list_keys)
        finally:
            if pruned is not None:
                pruned.free()
        return f"<data>{body}</data>"

    async def rpc_get(self, session: "NetconfSession", op: etree._Element) -> str:
        wd = _with_defaults(op)
        ftype, fel = parse_filter(_child(op, "filter"))
        tree = self.ds.operational_tree()
        self.server.nacm.prune(session.info.username, tree)
        try:
            if ftype == "xpath":
                assert fel is not None
                body = xpath_filter(tree, _select(fel), dict(fel.nsmap), wd)
            else:
                body = tree.print(with_defaults=wd)
                if fel is not None:
                    body = subtree_filter(body, fel, self.server.list_keys)
        finally:
            tree.free()
        return f"<data>{body}</data>"

    # -- writing --------------------------------------------------------------------------------
    async def rpc_edit_config(self, session: "NetconfSession", op: etree._Element) -> str:
        target = _datastore_of(_required(op, "target"))
        assert isinstance(target, Datastore)
        default_op = EditOp(_enum(op, "default-operation", ("merge", "replace", "none"), "merge"))
        test = TestOption(_enum(op, "test-option", ("test-then-set", "set", "test-only"), "test-then-set"))
        err_opt = ErrorOption(
            _enum(op, "error-option", ("stop-on-error", "continue-on-error", "rollback-on-error"), "stop-on-error")
        )
        config = _child(op, "config")
        if config is None:
            if _child(op, "url") is not None:
                raise E.OperationNotSupported(message=":url is not supported", info={"bad-element": "url"})
            raise E.MissingElement(message="<edit-config> needs <config>", info={"bad-element": "config"},
                                   error_type=E.ErrorType.PROTOCOL)
        content = _config_content(config)
        self._authorize_edit(session, target, content, default_op)
        self.ds.edit_config(target, content, session.id, default_op, test, err_opt)
        return OK

    async def rpc_copy_config(self, session: "NetconfSession", op: etree._Element) -> str:
        target = _datastore_of(_required(op, "target"))
        source = _datastore_of(_required(op, "source"), allow_config=True)
        assert isinstance(target, Datastore)
        self._authorize_replace(session, ("create", "update", "delete"))
        self.ds.copy_config(target, source, session.id)
        return OK

    async def rpc_delete_config(self, session: "NetconfSession", op: etree._Element) -> str:
        target = _datastore_of(_required(op, "target"))
        assert isinstance(target, Datastore)
        self._authorize_replace(session, ("delete",))
        self.ds.delete_config(target, session.id)
        return OK

    async def rpc_lock(self, session: "NetconfSession", op: etree._Element) -> str:
        target = _datastore_of(_required(op, "target"))
        assert isinstance(target, Datastore)
        self.ds.lock(target, session.id)
        return OK

    async def rpc_unlock(self, session: "NetconfSession", op: etree._Element) -> str:
        target = _datastore_of(_required(op, "target"))
        assert isinstance(target, Datastore)
        self.ds.unlock(target, session.id)
        return OK

    async def rpc_commit(self, session: "NetconfSession", op: etree._Element) -> str:
        if _child(op, "confirmed") is not None or _child(op, "persist") is not None:
            raise E.OperationNotSupported(message=":confirmed-commit is not supported", info={"bad-element": "confirmed"})
        self.ds.commit(session.id)
        return OK

    async def rpc_discard_changes(self, session: "NetconfSession", op: etree._Element) -> str:
        self.ds.discard_changes(session.id)
        return OK

    async def rpc_validate(self, session: "NetconfSession", op: etree._Element) -> str:
        source = _datastore_of(_required(op, "source"), allow_config=True)
        self.ds.validate(source)
        return OK

    # -- sessions -------------------------------------------------------------------------------
    async def rpc_close_session(self, session: "NetconfSession", op: etree._Element) -> None:
        session.send(f'<rpc-reply xmlns="{NC_NS}"{session_reply_attrs(op)}>{OK}</rpc-reply>')
        session.close()
        return None

    async def rpc_kill_session(self, session: "NetconfSession", op: etree._Element) -> str:
        raw = _text(_required(op, "session-id")) or ""
        if not raw.isdigit():
            raise E.InvalidValue(message="session-id must be a number", info={"bad-element": "session-id"})
        sid = int(raw)
        if sid == session.id:
            raise E.InvalidValue(message="a session cannot kill itself: use close-session",
                                 info={"bad-element": "session-id"}, error_type=E.ErrorType.PROTOCOL)
        if not self.server.kill_session(sid):
            raise E.InvalidValue(message=f"no session {sid}", info={"bad-element": "session-id"},
                                 error_type=E.ErrorType.PROTOCOL)
        return OK

    # -- notifications and schemas ----------------------------------------------------------
    async def create_subscription(self, session: "NetconfSession", op: etree._Element) -> str:
        def child(name: str) -> etree._Element | None:
            return op.find(f"{{{NOTIF_NS}}}{name}")

        stream = _text(child("stream")) or STREAM
        if stream != STREAM:
            raise E.InvalidValue(message=f"unknown stream {stream!r}", info={"bad-element": "stream"})
        if child("startTime") is not None:
            raise E.OperationFailed(message="replay is not supported on stream NETCONF", info={"bad-element": "startTime"})
        if child("stopTime") is not None:
            raise E.MissingElement(message="stopTime needs startTime", info={"bad-element": "startTime"},
                                   error_type=E.ErrorType.PROTOCOL)
        if session.subscribed:
            raise E.InUse(message="this session already has a subscription", error_type=E.ErrorType.PROTOCOL)
        fel = child("filter")
        if fel is None:  # ncclient (and others) send the filter in the base namespace
            fel = _child(op, "filter")
        ftype, fel = parse_filter(fel)
        if ftype == "xpath":
            raise E.OperationNotSupported(message="notification filters must be subtree filters",
                                          info={"bad-attribute": "type"})
        session.subscribed = True
        self.server.events.subscribe(Subscription(session.id, session.send_notification, fel))
        return OK

    async def get_schema(self, session: "NetconfSession", op: etree._Element) -> str:
        def child(name: str) -> str | None:
            return _text(op.find(f"{{{MONITORING_NS}}}{name}"))

        ident = child("identifier")
        if not ident:
            raise E.MissingElement(message="<get-schema> needs <identifier>", info={"bad-element": "identifier"},
                                   error_type=E.ErrorType.PROTOCOL)
        fmt = child("format") or "yang"
        if fmt.split(":")[-1] != "yang":
            raise E.InvalidValue(message=f"schema format {fmt!r} is not available", info={"bad-element": "format"})
        text = self.server.schema_text(ident, child("version"))
        if text is None:
            raise E.InvalidValue(message=f"no schema {ident!r}", info={"bad-element": "identifier"})
        from xml.sax.saxutils import escape

        return f'<data xmlns="{MONITORING_NS}">{escape(text)}</data>'


def _select(fel: etree._Element) -> str:
    return fel.get("select") or fel.get(f"{{{NC_NS}}}select") or ""


def session_reply_attrs(op: etree._Element) -> str:
    from .session import NetconfSession

    parent = op.getparent()
    return NetconfSession._reply_attrs(parent) if parent is not None else ""  # noqa: SLF001
