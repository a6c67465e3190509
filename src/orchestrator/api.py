"""The orchestrator's northbound REST API (JSON over HTTP, aiohttp), for an NMS and peer domains.

    GET    /health                 readiness (initial discovery done), node counts
    GET    /topology               nodes, key graph (hops with capacity/reserved/spare), optical plant
    GET    /links                  PHYS links (live skr, QBER, up/down) and VIRT links
    GET    /routes                 key routes;  GET /routes/{id}
    POST   /routes                 {src, dst, rate_bps, saes, [max_rate_bps], [id]} -> 201 route
    DELETE /routes/{id}
    GET    /direct-links           feasible emitter/receiver pairings through the optical switches
                                   (`built`, `qkdl_id` when built) and the built links
    POST   /direct-links           {emitter, receiver} (module names) -> 201 built link (200: already built)
    DELETE /direct-links/{qkdl_id} remove a built link (services and PHYS entries, one transaction)
    GET    /events                 what the orchestrator saw and did (link down, route healed ...)
    GET    /metrics                Prometheus metrics (orchestrator.metrics);  GET /view, GET / : live web page
    GET    /abstract?node=N        peering: border nodes and their spare key rate towards N
    POST   /segments, DELETE /segments/{id}   peering: install / remove this domain's segment

Errors are JSON: `{"message": ...}` (plus the refusing node's rpc-error for a failed transaction).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import peering
from . import web as web_view
from .controller import Orchestrator, RequestError
from .metrics import OrchestratorMetrics
from .model import Route
from .session import NodeUnreachable
from .transaction import TransactionError

log = logging.getLogger(__name__)

ORCH = web.AppKey("orchestrator", Orchestrator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, indent=1, sort_keys=True), content_type="application/json")


def error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"message": message, **extra}, status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        log.info("%s %s -> %d %s", request.method, request.path, exc.status, exc)
        return error(exc.status, str(exc))
    except TransactionError as exc:
        log.warning("%s %s -> 409 %s", request.method, request.path, exc)
        return _json(exc.to_json(), 409)
    except NodeUnreachable as exc:
        return error(503, str(exc), node=exc.node)
    except peering.PeerError as exc:
        return error(502, str(exc), domain=exc.domain)
    except web.HTTPException as exc:
        return error(exc.status, exc.reason or "error")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal error (see the orchestrator's log)")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


def _int(body: dict[str, Any], key: str, required: bool = True) -> int | None:
    v = body.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise RequestError(f"{key} must be an integer (bit/s)")
    return int(v)


async def health(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    return _json({"domain": o.domain, "ready": o.ready.is_set(), "nodes": len(o.sessions),
                  "discovered": len(o.model.nodes), "reachable": sum(v.reachable for v in o.model.nodes.values()),
                  "routes": len(o.routes)})


async def topology(request: web.Request) -> web.Response:
    return _json(request.app[ORCH].topology_json())


async def links(request: web.Request) -> web.Response:
    return _json(request.app[ORCH].links_json())


async def routes(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    names = o.names()
    return _json({"routes": [r.to_json(names) for r in o.routes.values()]})


async def route(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    r = o.routes.get(request.match_info["id"])
    if r is None:
        raise RequestError(f"no route {request.match_info['id']}", 404)
    return _json(r.to_json(o.names()))


async def create_route(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    body = await _body(request)
    for key in ("src", "dst"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise RequestError(f"{key} (a node name or qkdn_id) is required")
    saes = body.get("saes") or []
    if not isinstance(saes, list) or not all(isinstance(s, str) and s for s in saes):
        raise RequestError("saes must be a list of SAE IDs")
    path = body.get("path")
    if path is not None and (not isinstance(path, list) or len(path) < 2 or not all(isinstance(n, str) for n in path)):
        raise RequestError("path must be a list of at least two node names")
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError("id must be a UUID string")
    try:
        r = await o.provision_route(body["src"], body["dst"], _int(body, "rate_bps") or 0, saes,
                                    max_rate_bps=_int(body, "max_rate_bps", False), route_id=rid, path=path)
    except ValueError as exc:
        raise RequestError(str(exc)) from exc
    return _json(r.to_json(o.names()), 201)


async def delete_route(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    r = await o.delete_route(request.match_info["id"])
    return _json(r.to_json(o.names()))


async def direct(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    return _json({"direct_links": o.direct_links_json(),
                  "built": [o.direct.to_json(bl) for _, bl in sorted(o.direct.built().items())]})


async def build_direct(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    body = await _body(request)
    for key in ("emitter", "receiver"):
        if not isinstance(body.get(key), (str, dict)) or not body[key]:
            raise RequestError(f"{key} (a module name, NODE:QKDI or {{node, qkdi_id}}) is required")
    link, created = await o.build_direct_link(body["emitter"], body["receiver"])
    return _json(o.direct.to_json(link), 201 if created else 200)


async def delete_direct(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    link = await o.delete_direct_link(request.match_info["qkdl_id"])
    return _json({**o.direct.to_json(link), "built": False})


async def events(request: web.Request) -> web.Response:
    return _json({"events": request.app[ORCH].events})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (orchestrator.metrics)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    body = OrchestratorMetrics.for_orchestrator(request.app[ORCH]).render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def view(request: web.Request) -> web.Response:
    return _json(web_view.view_json(request.app[ORCH]))


async def index(request: web.Request) -> web.Response:
    return web.Response(body=web_view.index_html(), content_type="text/html", charset="utf-8")


async def abstract(request: web.Request) -> web.Response:
    o = request.app[ORCH]
    node = request.query.get("node")
    return _json(peering.abstract_view(o, node))


def _segment_reply(r: Route) -> dict[str, Any]:
    """What a peer domain learns of our segment: nothing of our interior (no node, no path)."""
    return {"route_id": r.route_id, "qkdl_ids": r.qkdl_ids, "rate_bps": r.min_rate, "status": r.status}


async def create_segment(request: web.Request) -> web.Response:
    r = await peering.install_segment(request.app[ORCH], await _body(request))
    return _json(_segment_reply(r), 201)


async def delete_segment(request: web.Request) -> web.Response:
    r = await request.app[ORCH].delete_route(request.match_info["id"])
    return _json(_segment_reply(r))


def make_app(orch: Orchestrator) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[ORCH] = orch
    OrchestratorMetrics.for_orchestrator(orch)  # instrument before start(): every NETCONF RPC is counted
    app.router.add_get("/health", health)
    app.router.add_get("/topology", topology)
    app.router.add_get("/links", links)
    app.router.add_get("/routes", routes)
    app.router.add_post("/routes", create_route)
    app.router.add_get("/routes/{id}", route)
    app.router.add_delete("/routes/{id}", delete_route)
    app.router.add_get("/direct-links", direct)
    app.router.add_post("/direct-links", build_direct)
    app.router.add_delete("/direct-links/{qkdl_id}", delete_direct)
    app.router.add_get("/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/view", view)
    app.router.add_get("/", index)
    app.router.add_get("/abstract", abstract)
    app.router.add_post("/segments", create_segment)
    app.router.add_delete("/segments/{id}", delete_segment)
    return app


async def serve(orch: Orchestrator, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(orch), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
