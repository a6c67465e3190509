"""Domain peering: key routes across administrative domains, each domain installing its own part.

Domains share only an abstract view (`abstract_view`): their border nodes (nodes that belong to
both domains) and, towards a named node, the widest spare key rate from each border node. No
topology, no link, no node configuration crosses the boundary.

A cross-domain route from `src` (this domain) to `dst` (a peer's node) is one VIRT link (one
end-to-end key association, one `qkdl_id`) whose nodes are split between the domains:

    src ... x | b ... dst          b: a border node, in both domains
    ^^^^^^^^^   ^^^^^^^^^
    this domain  the peer (including the border node's entry: it knows b's next hop)

The origin picks the border node and its own path to it, asks the peer to install `b ... dst`
with `b`'s upstream hop `x` (POST /segments), then installs `src ... x` itself; if that fails, it
asks the peer to remove its part again (DELETE /segments/{id}).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp

from .model import Route, Segment, sae_uuid
from .routing import shortest_feasible_path, widest_path

if TYPE_CHECKING:
    from .controller import Orchestrator

log = logging.getLogger(__name__)

UNBOUNDED_BPS = 2**32 - 1


class PeerError(Exception):
    """A peer orchestrator could not be reached or refused."""

    def __init__(self, domain: str, message: str, status: int | None = None) -> None:
        super().__init__(f"domain {domain}: {message}")
        self.domain = domain
        self.status = status


class Peers:
    """REST clients of the other domains' orchestrators."""

    def __init__(self, urls: dict[str, str], timeout: float = 30.0) -> None:
        self.urls = dict(urls)
        self.timeout = timeout
        self._http: aiohttp.ClientSession | None = None

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._http

    async def request(self, domain: str, method: str, path: str, body: Any = None) -> Any:
        url = self.urls.get(domain)
        if url is None:
            raise PeerError(domain, "no such peer domain")
        http = await self._session()
        try:
            async with http.request(method, url.rstrip("/") + path, json=body) as r:
                text = await r.text()
                data = json.loads(text) if text else None
                if r.status >= 400:
                    msg = data.get("message") if isinstance(data, dict) else text
                    raise PeerError(domain, f"{method} {path}: {r.status}: {msg}", r.status)
                return data
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            raise PeerError(domain, f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def delete_segment(self, domain: str | None, route_id: str) -> None:
        """Remove a route's part in `domain` (None: ask every peer; a peer without it says 404)."""
        for d in ([domain] if domain else list(self.urls)):
            try:
                await self.request(d, "DELETE", f"/segments/{route_id}")
            except PeerError as exc:
                if exc.status != 404:
                    raise

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def abstract_view(orch: "Orchestrator", node_ref: str | None) -> dict[str, Any]:
    """Border nodes and, towards `node_ref` (if it is ours), the widest spare key rate from each."""
    border = {orch.ids[n]: {"name": n, "domains": list(orch.inventory.nodes[n].domains)}
              for n in orch.inventory.border_nodes() if n in orch.ids}
    out: dict[str, Any] = {"domain": orch.domain, "border": border, "node": None, "spare_bps": {}}
    target = orch.model.resolve(node_ref) if node_ref else None
    if target is None:
        return out
    out["node"] = target
    g = orch.model.key_graph()
    spare = {frozenset((a, b)): int(d["spare"]) for a, b, d in g.edges(data=True)}
    for b in border:
        if b == target:
            out["spare_bps"][b] = UNBOUNDED_BPS
            continue
        found = widest_path(g, b, target, spare)
        out["spare_bps"][b] = found[1] if found else 0
    return out


async def provision_cross_domain(orch: "Orchestrator", src: str, dst_ref: str, rate: int, max_rate: int,
                                 saes: tuple[str, ...], rid: str) -> Route:
    """Called with `orch.lock` held: a route from our `src` to a node of another domain."""
    from .controller import RequestError, qkdl_id_for

    graph = orch.model.key_graph()
    best: tuple[int, str, list[str], dict[str, Any]] | None = None
    unreachable: list[str] = []
    for domain in orch.peers.urls:
        try:
            view = await orch.peers.request(domain, "GET", f"/abstract?node={dst_ref}")
        except PeerError as exc:
            log.warning("%s", exc)
            unreachable.append(str(exc))
            continue
        if not view.get("node"):
            continue
        for b, spare in view.get("spare_bps", {}).items():
            if b not in orch.model.nodes or spare < rate:
                continue
            path = [src] if b == src else shortest_feasible_path(graph, src, b, rate)
            if path is not None and (best is None or len(path) < best[0]):
                best = (len(path), domain, path, view)
    if best is None:
        raise RequestError(f"no node {dst_ref!r} in domain {orch.domain} or in a peer domain reachable "
                           f"with {rate} bit/s spare" + (f" (peers not answering: {'; '.join(unreachable)})"
                                                         if unreachable else ""),
                           409 if orch.peers.urls else 404)
    _, domain, path, view = best
    dst = str(view["node"])
    border = path[-1]
    qkdl_id = qkdl_id_for(rid, 0)
    apps = tuple(sae_uuid(x) for x in saes)
    body = {"route_id": rid, "qkdl_id": qkdl_id, "src": src, "dst": dst, "entry": border,
            "upstream": path[-2] if len(path) > 1 else None, "rate_bps": rate, "max_rate_bps": max_rate,
            "saes": list(saes), "applications": list(apps), "origin_domain": orch.domain}
    await orch.peers.request(domain, "POST", "/segments", body)
    seg = Segment(qkdl_id, path[:-1], rate, src, dst, None, border if len(path) > 1 else None)
    route = Route(rid, src, dst, saes, rate, max_rate, [seg], apps, peer_domain=domain, origin=True)
    try:
        await orch._apply(None, route)
    except Exception:
        await orch.peers.delete_segment(domain, rid)
        raise
    orch.routes[rid] = route
    orch._recompute_reservations()
    orch._event("route-provisioned", route=rid, paths=[path], peer_domain=domain)
    return route


async def install_segment(orch: "Orchestrator", body: dict[str, Any]) -> Route:
    """A peer asks us for the part of its route from our border node `entry` to our node `dst`
    (or updates it: a new `upstream` after the peer healed its part)."""
    from .controller import RequestError

    try:
        rid, qkdl_id = str(body["route_id"]), str(body["qkdl_id"])
        src, dst, entry = str(body["src"]), str(body["dst"]), str(body["entry"])
        upstream = body.get("upstream")
        rate, max_rate = int(body["rate_bps"]), int(body.get("max_rate_bps") or body["rate_bps"])
        saes = tuple(str(x) for x in body.get("saes") or [])
        apps = tuple(str(x) for x in body.get("applications") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError(f"bad segment request: {exc}") from exc
    if entry not in orch.model.nodes or dst not in orch.model.nodes:
        raise RequestError(f"{entry} or {dst} is not a node of domain {orch.domain}", 404)
    async with orch.lock:
        old = orch.routes.get(rid)
        graph = orch.model.key_graph()
        if old is not None and old.segments and old.segments[0].upstream == upstream:
            return old
        if old is not None:
            path = old.segments[0].path
        else:
            found = [entry] if entry == dst else shortest_feasible_path(graph, entry, dst, rate)
            if found is None:
                raise RequestError(f"no path with {rate} bit/s spare from {orch.model.name_of(entry)} "
                                   f"to {orch.model.name_of(dst)} in domain {orch.domain}", 409)
            path = found
        seg = Segment(qkdl_id, list(path), rate, src, dst, upstream, None)
        route = Route(rid, src, dst, saes, rate, max_rate, [seg], apps,
                      peer_domain=str(body.get("origin_domain") or "") or None, origin=False)
        await orch._apply(old, route)
        orch.routes[rid] = route
        orch._recompute_reservations()
        orch._event("segment-installed" if old is None else "segment-updated", route=rid, path=list(path))
        return route


async def notify_upstream_change(orch: "Orchestrator", route: Route) -> None:
    """After healing our part of a route we originated: tell the peer the border node's new upstream."""
    seg = route.segments[0]
    if not route.origin or seg.downstream is None:
        return
    body = {"route_id": route.route_id, "qkdl_id": seg.qkdl_id, "src": route.src, "dst": route.dst,
            "entry": seg.downstream, "upstream": seg.path[-1] if seg.path else None, "rate_bps": route.min_rate,
            "max_rate_bps": route.max_rate, "saes": list(route.saes), "applications": list(route.applications),
            "origin_domain": orch.domain}
    for domain in ([route.peer_domain] if route.peer_domain else list(orch.peers.urls)):
        try:
            await orch.peers.request(domain, "POST", "/segments", body)
            return
        except PeerError as exc:
            log.warning("route %s: %s", route.route_id, exc)
