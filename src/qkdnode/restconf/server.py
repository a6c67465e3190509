"""The RESTCONF server (RFC 8040) over HTTPS, on the same `Datastores` as NETCONF.

Authentication: HTTP Basic checked against the node's NETCONF users, or a client certificate
signed by the node's CA whose subject CN is one of those users; either suffices. TLS 1.3 only.
Key material never passes here (management plane).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import libyang
from _libyang import ffi, lib
from libyang.util import str2c
from aiohttp import BasicAuth, web

from ..datastore import Datastores
from ..datatree import DataTree
from ..netconf import errors as E
from ..netconf.nacm import Nacm
from ..pki import peer_common_name
from .errors import JSON_TYPE, XML_TYPE, RESTCONF_NS, RestconfError
from .paths import ApiPath, parse_api_path
from .resource import WITH_DEFAULTS, Reader, ReadOptions, Writer

log = logging.getLogger(__name__)

YANG_LIBRARY_VERSION = "2019-01-04"
ROOT = "/restconf"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
USER_KEY = web.RequestKey("restconf.user", str)


def _media_out(request: web.Request) -> str:
    accept = request.headers.get("Accept", "")
    if "yang-data+xml" in accept or ("application/xml" in accept and "json" not in accept):
        if "yang-data+json" not in accept or accept.find("yang-data+xml") < accept.find("yang-data+json"):
            return XML_TYPE
    if not accept or "json" in accept or "*/*" in accept or "application/*" in accept:
        return JSON_TYPE
    ctype = request.headers.get("Content-Type", "")
    return XML_TYPE if "xml" in ctype else JSON_TYPE


def _body_format(request: web.Request) -> str:
    ctype = request.content_type
    if ctype in (JSON_TYPE, "application/json"):
        return "json"
    if ctype in (XML_TYPE, "application/xml", "text/xml"):
        return "xml"
    raise RestconfError([E.InvalidValue(message=f"unsupported media type {ctype!r}: use {JSON_TYPE} or {XML_TYPE}")],
                        status=415)


class RestconfServer:
    def __init__(
        self,
        datastores: Datastores,
        check_password: Callable[[str, str], bool],
        users: Callable[[], set[str]],
        schema_text: Callable[[str, str | None], str | None],
        tls: ssl.SSLContext,
        nacm: "Nacm | None" = None,
        max_body: int = 1024 * 1024,
    ) -> None:
        self.ds = datastores
        self.nacm = nacm  # RFC 8341 access control (None: every authenticated user may do everything)
        self.max_body = max_body
        self.ctx: libyang.Context = datastores.ctx
        self.check_password = check_password
        self.users = users
        self.schema_text = schema_text
        self.tls = tls
        self.reader = Reader(datastores, self.yang_library)
        self.writer = Writer(datastores)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- app ------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=self.max_body)
        app.router.add_get("/.well-known/host-meta", self.host_meta)
        app.router.add_get(ROOT, self.root)
        app.router.add_get(f"{ROOT}/yang-library-version", self.yang_library_version)
        app.router.add_get(f"{ROOT}/operations", self.operations)
        app.router.add_route("*", f"{ROOT}/operations/{{op:.*}}", self.operation)
        app.router.add_get(f"{ROOT}/yang/{{module}}", self.yang_module)
        for method in ("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"):
            app.router.add_route(method, f"{ROOT}/data", self.data)
            app.router.add_route(method, f"{ROOT}/data/{{path:.*}}", self.data)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)  # bounded stop
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.tls)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes no public accessor for the bound port
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- middlewares --------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        media = _media_out(request)
        try:
            return await handler(request)
        except RestconfError as err:
            return err.response(media)
        except (E.RpcError, E.RpcErrors) as err:
            return RestconfError.of(err).response(media)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("RESTCONF %s %s failed", request.method, request.path)
            return RestconfError([E.OperationFailed(message="internal error")]).response(media)

    @web.middleware
    async def _auth(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path == "/.well-known/host-meta":
            return await handler(request)
        user = self._cert_user(request) or self._basic_user(request)
        if user is None:
            raise RestconfError([E.AccessDenied(message="authentication required: HTTP Basic or a client certificate")],
                                status=401, headers={"WWW-Authenticate": 'Basic realm="restconf"'})
        request[USER_KEY] = user
        return await handler(request)

    def _cert_user(self, request: web.Request) -> str | None:
        transport = request.transport
        if transport is None:
            return None
        cn = peer_common_name(transport.get_extra_info("peercert"))  # set only when the CA verified it
        return cn if cn is not None and cn in self.users() else None

    def _basic_user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            auth = BasicAuth.decode(header)
        except ValueError:
            return None
        return auth.login if self.check_password(auth.login, auth.password) else None

    def _authorize_write(self, request: web.Request, path: ApiPath, method: str) -> None:
        """NACM (RFC 8341) write access for the target resource and everything below it."""
        if self.nacm is None:
            return
        user = request[USER_KEY]
        if self.nacm.may_write_everything(user):
            return
        target = path.data_path or "/"
        ops = {"DELETE": ("delete",), "POST": ("create",), "PATCH": ("create", "update"),
               "PUT": ("create", "update", "delete") if path.is_root else
               (("update",) if self.writer.exists(path) else ("create",))}.get(method, ())
        self.nacm.check_write(user, [(op, target) for op in ops])

    async def _body(self, request: web.Request) -> str:
        """The request body as text; too big: 413 with an ietf-restconf:errors body."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RestconfError([E.TooBig(message=f"request body larger than {self.max_body} bytes")],
                                status=413) from None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise RestconfError([E.MalformedMessage(message="request body is not UTF-8")], status=400) from None

    # -- discovery ----------------------------------------------------------------------------
    async def host_meta(self, request: web.Request) -> web.Response:
        xrd = ('<XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">'
               f'<Link rel="restconf" href="{ROOT}"/></XRD>')
        return web.Response(text=xrd, content_type="application/xrd+xml")

    def _reply(self, request: web.Request, json_body: Any, xml_body: str, status: int = 200) -> web.Response:
        import json as _json

        media = _media_out(request)
        text = xml_body if media == XML_TYPE else _json.dumps(json_body)
        return web.Response(status=status, text=text, content_type=media)

    async def root(self, request: web.Request) -> web.Response:
        return self._reply(
            request,
            {"ietf-restconf:restconf": {"data": {}, "operations": {}, "yang-library-version": YANG_LIBRARY_VERSION}},
            f'<restconf xmlns="{RESTCONF_NS}"><data/><operations/>'
            f"<yang-library-version>{YANG_LIBRARY_VERSION}</yang-library-version></restconf>",
        )

    async def yang_library_version(self, request: web.Request) -> web.Response:
        return self._reply(
            request, {"ietf-restconf:yang-library-version": YANG_LIBRARY_VERSION},
            f'<yang-library-version xmlns="{RESTCONF_NS}">{YANG_LIBRARY_VERSION}</yang-library-version>',
        )

    def _rpcs(self) -> list[tuple[str, str, str]]:
        """(module, namespace, rpc name) of every implemented module's RPCs and actions at top level."""
        out = []
        for mod in self.ctx:
            if not mod.implemented():
                continue
            ns = ffi.string(mod.cdata.ns).decode()
            for rpc in mod.children(types=(libyang.SNode.RPC,)):
                out.append((mod.name(), ns, rpc.name()))
        return out

    async def operations(self, request: web.Request) -> web.Response:
        rpcs = self._rpcs()
        return self._reply(
            request,
            {"ietf-restconf:operations": {f"{m}:{r}": [None] for m, _, r in rpcs}},
            f'<operations xmlns="{RESTCONF_NS}">' + "".join(f'<{r} xmlns="{ns}"/>' for _, ns, r in rpcs)
            + "</operations>",
        )

    async def operation(self, request: web.Request) -> web.Response:
        raise RestconfError([E.OperationNotSupported(
            message="RESTCONF operation invocation is not supported: use NETCONF for RPCs")], status=501)

    def yang_library(self) -> DataTree:
        """ietf-yang-library (RFC 8525) of the schema context, from libyang."""
        out = ffi.new("struct lyd_node **")
        # the schema is fixed for the life of the process: one content-id
        if lib.ly_ctx_get_yanglib_data(self.ctx.cdata, out, str2c("qkdnet-1")) != lib.LY_SUCCESS:
            raise E.OperationFailed(message="cannot build the YANG library")
        return DataTree(self.ctx, out[0])

    async def yang_module(self, request: web.Request) -> web.Response:
        ident = request.match_info["module"]
        name, _, rev = ident.partition("@")
        if name.endswith(".yang"):
            name = name[:-5]
        rev = rev[:-5] if rev.endswith(".yang") else rev
        text = self.schema_text(name, rev or None)
        if text is None:
            raise RestconfError([E.InvalidValue(message=f"no module {ident}", info={"bad-element": ident})], status=404)
        return web.Response(text=text, content_type="application/yang")

    # -- data ---------------------------------------------------------------------------------
    def _path(self, request: web.Request) -> ApiPath:
        raw = request.raw_path.split("?", 1)[0]
        prefix = f"{ROOT}/data"
        rest = raw[len(prefix):].lstrip("/") if raw.startswith(prefix) else ""
        return parse_api_path(self.ctx, rest)

    @staticmethod
    def _read_options(request: web.Request) -> ReadOptions:
        q = request.query
        known = {"content", "depth", "with-defaults", "fields", "filter", "insert", "point", "start-time", "stop-time"}
        unknown = set(q) - known
        if unknown:
            raise E.InvalidValue(message=f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        content = q.get("content", "all")
        if content not in ("config", "nonconfig", "all"):
            raise E.InvalidValue(message="content must be config, nonconfig or all", info={"bad-element": "content"})
        depth_raw = q.get("depth", "unbounded")
        depth: int | None = None
        if depth_raw != "unbounded":
            if not depth_raw.isdigit() or not 1 <= int(depth_raw) <= 65535:
                raise E.InvalidValue(message="depth must be 1..65535 or unbounded", info={"bad-element": "depth"})
            depth = int(depth_raw)
        wd = q.get("with-defaults", "explicit")
        if wd not in WITH_DEFAULTS:
            raise E.InvalidValue(message=f"with-defaults must be one of {', '.join(WITH_DEFAULTS)}",
                                 info={"bad-element": "with-defaults"})
        for unsupported in ("fields", "filter", "insert", "point", "start-time", "stop-time"):
            if unsupported in q:
                raise E.InvalidValue(message=f"query parameter {unsupported} is not supported",
                                     info={"bad-element": unsupported})
        return ReadOptions(content, depth, wd)

    async def data(self, request: web.Request) -> web.StreamResponse:
        path = self._path(request)
        method = request.method
        if method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": "GET, HEAD, PUT, POST, PATCH, DELETE, OPTIONS",
                                                     "Accept-Patch": f"{JSON_TYPE}, {XML_TYPE}"})
        if method in ("GET", "HEAD"):
            media = _media_out(request)
            user = request[USER_KEY]
            nacm = self.nacm
            prune = None if nacm is None or nacm.may_read_everything(user) else (lambda t: nacm.prune(user, t))
            text = self.reader.read(path, self._read_options(request), "xml" if media == XML_TYPE else "json",
                                    prune=prune)
            if text is None:
                raise RestconfError([E.DataMissing(message=f"no data at {path.data_path}")], status=404)
            return web.Response(text="" if method == "HEAD" else text, content_type=media)
        self._authorize_write(request, path, method)
        body = (await self._body(request)) if method != "DELETE" else ""
        if method == "DELETE":
            if path.is_root or not path.instance or not self.writer.exists(path):
                raise RestconfError([E.DataMissing(message=f"no data at {path.data_path or '/'}")], status=404)
            self.writer.delete(path)
            return web.Response(status=204)
        fmt = _body_format(request)
        if method == "PUT":
            created = self.writer.put(path, body, fmt)
            return web.Response(status=201 if created else 204)
        if method == "POST":
            new = self.writer.post(path, body, fmt)
            return web.Response(status=201, headers={"Location": f"{request.scheme}://{request.host}{ROOT}/data/{new}"})
        if method == "PATCH":
            self.writer.patch(path, body, fmt)
            return web.Response(status=204)
        raise RestconfError([E.OperationNotSupported(message=f"method {method} is not supported")], status=405)
