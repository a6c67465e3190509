"""`ietf-restconf:errors` (RFC 8040 section 7.1) rendered from our NETCONF `RpcError` classes.

The same exception that NETCONF sends as `<rpc-error>` becomes, over RESTCONF, one `error` entry in
JSON (RFC 7951) or XML, with the HTTP status RFC 8040 section 7 assigns to its error-tag.
"""

from __future__ import annotations

import json
import re
from xml.sax.saxutils import escape

from aiohttp import web

from ..netconf import errors as E

RESTCONF_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf"
JSON_TYPE = "application/yang-data+json"
XML_TYPE = "application/yang-data+xml"

# RFC 8040 section 7, table "error-tag to status code"
STATUS: dict[str, int] = {
    "in-use": 409,
    "invalid-value": 400,
    "too-big": 413,
    "missing-attribute": 400,
    "bad-attribute": 400,
    "unknown-attribute": 400,
    "bad-element": 400,
    "unknown-element": 400,
    "unknown-namespace": 400,
    "access-denied": 403,
    "lock-denied": 409,
    "resource-denied": 409,
    "rollback-failed": 500,
    "data-exists": 409,
    "data-missing": 409,
    "operation-not-supported": 501,
    "operation-failed": 500,
    "partial-operation": 500,
    "malformed-message": 400,
}


class RestconfError(Exception):
    """One or more `RpcError`s with the HTTP status to send (None: from the first error's tag)."""

    def __init__(self, errors: list[E.RpcError], status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
        self.status = status or STATUS.get(errors[0].tag, 500)
        self.headers = headers or {}

    @classmethod
    def of(cls, exc: E.RpcError | E.RpcErrors, status: int | None = None) -> "RestconfError":
        errs = exc.errors if isinstance(exc, E.RpcErrors) else [exc]
        return cls(errs or [E.OperationFailed(message="unknown error")], status)

    def response(self, media: str) -> web.Response:
        body = errors_xml(self.errors) if media == XML_TYPE else errors_json(self.errors)
        return web.Response(status=self.status, text=body, content_type=media, headers=self.headers)


_PREFIXED = re.compile(r"([A-Za-z_][\w.-]*):([A-Za-z_][\w.-]*)")


def json_instance_identifier(path: str) -> str:
    """Our error paths prefix every name with its module name (XML form); RFC 7951 section 6.11
    prefixes only the first step and steps where the module changes, and never predicate keys."""
    out: list[str] = []
    module = ""
    i, n = 0, len(path)
    in_pred = False
    while i < n:
        c = path[i]
        if c in "'\"":
            j = path.index(c, i + 1) if c in path[i + 1:] else n - 1
            out.append(path[i:j + 1])
            i = j + 1
            continue
        if c == "[":
            in_pred = True
        elif c == "]":
            in_pred = False
        m = _PREFIXED.match(path, i)
        if m and (i == 0 or path[i - 1] in "/["):
            prefix, name = m.group(1), m.group(2)
            if in_pred or prefix == module:
                out.append(name)
            else:
                out.append(f"{prefix}:{name}")
                module = prefix
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _entry(err: E.RpcError) -> dict[str, object]:
    assert err.error_type is not None
    entry: dict[str, object] = {"error-type": err.error_type.value, "error-tag": err.tag}
    if err.app_tag:
        entry["error-app-tag"] = err.app_tag
    if err.path:
        entry["error-path"] = json_instance_identifier(err.path)
    if err.message:
        entry["error-message"] = err.message
    if err.info:
        entry["error-info"] = {k: str(v) for k, v in err.info.items()}
    return entry


def errors_json(errors: list[E.RpcError]) -> str:
    return json.dumps({"ietf-restconf:errors": {"error": [_entry(e) for e in errors]}}, indent=2)


def errors_xml(errors: list[E.RpcError]) -> str:
    parts = [f'<errors xmlns="{RESTCONF_NS}">']
    for err in errors:
        assert err.error_type is not None
        parts.append(f"<error><error-type>{err.error_type.value}</error-type><error-tag>{err.tag}</error-tag>")
        if err.app_tag:
            parts.append(f"<error-app-tag>{escape(err.app_tag)}</error-app-tag>")
        if err.path:
            decls = "".join(f' xmlns:{p}="{escape(ns)}"' for p, ns in sorted(err.path_namespaces.items()))
            parts.append(f"<error-path{decls}>{escape(err.path)}</error-path>")
        if err.message:
            parts.append(f"<error-message>{escape(err.message)}</error-message>")
        if err.info:
            parts.append("<error-info>" + "".join(
                f"<{k}>{escape(str(v))}</{k}>" for k, v in err.info.items()) + "</error-info>")
        parts.append("</error>")
    parts.append("</errors>")
    return "".join(parts)
