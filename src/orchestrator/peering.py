"""Domain peering: key routes across administrative domains, each domain installing its own part.

Domains share only an abstract view (`abstract_view`): their border nodes (nodes that belong to
both domains) and, towards a named node, the widest spare key rate from each border node. No
topology, no link, no node configuration and no node ID of a domain's interior crosses the boundary.

A cross-domain route from `src` (this domain) to `dst` (a node of a peer, by name) is two segments,
each a VIRT link (its own `qkdl_id`) that one domain writes on its own nodes, stitched at a border
node `b` that belongs to both:

    src ... b   (this domain: qkdl_local = src, qkdl_remote = b)
            b ... dst   (the peer: qkdl_local = b, qkdl_remote = dst)

Both segments list the same SAE pair in `qkdl_applications`; the border node's forwarder continues
one with the other (see qkdnode/forwarder/relay.py), so the keys travel end to end while neither
domain names a node of the other's interior. The origin picks the border node and its own path to
it, asks the peer to install `b ... dst` (POST /segments), then installs `src ... b` itself; if that
fails, it asks the peer to remove its part again (DELETE /segments/{id}). Each domain heals its own
segment alone: the border node, where they meet, does not move.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

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
    out: dict[str, Any] = {"domain": orch.domain, "border": border, "reachable": False, "spare_bps": {}}
    target = orch.model.resolve(node_ref) if node_ref else None
    if target is None:
        return out
    out["reachable"] = True
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
    best: tuple[int, str, list[str]] | None = None
    unreachable: list[str] = []
    for domain in orch.peers.urls:
        try:
            view = await orch.peers.request(domain, "GET", f"/abstract?node={quote(dst_ref)}")
        except PeerError as exc:
            log.warning("%s", exc)
            unreachable.append(str(exc))
            continue
        if not view.get("reachable"):
            continue
        for b, spare in view.get("spare_bps", {}).items():
            if b not in orch.model.nodes or spare < rate:
                continue
            path = [src] if b == src else shortest_feasible_path(graph, src, b, rate)
            if path is not None and (best is None or len(path) < best[0]):
                best = (len(path), domain, path)
    if best is None:
        raise RequestError(f"no node {dst_ref!r} in domain {orch.domain} or in a peer domain reachable "
                           f"with {rate} bit/s spare" + (f" (peers not answering: {'; '.join(unreachable)})"
                                                         if unreachable else ""),
                           409 if orch.peers.urls else 404)
    _, domain, path = best
    border = path[-1]
    apps = tuple(sae_uuid(x) for x in saes)
    body = {"route_id": rid, "qkdl_id": qkdl_id_for(rid, 1), "entry": border, "dst": dst_ref,
            "rate_bps": rate, "max_rate_bps": max_rate, "saes": list(saes), "applications": list(apps),
            "origin_domain": orch.domain}
    await orch.peers.request(domain, "POST", "/segments", body)
    # from a border node itself, the peer's segment is the whole route: nothing to write here
    segs = [Segment(qkdl_id_for(rid, 0), path, rate, src, border)] if len(path) > 1 else []
    route = Route(rid, src, border, saes, rate, max_rate, segs, apps, peer_domain=domain, origin=True,
                  stitch=border, peer_dst=dst_ref)
    try:
        await orch._apply(None, route)
    except Exception:
        await orch.peers.delete_segment(domain, rid)
        raise
    orch.routes[rid] = route
    orch._recompute_reservations()
    orch._event("route-provisioned", route=rid, paths=[path], peer_domain=domain, border=border)
    return route


async def install_segment(orch: "Orchestrator", body: dict[str, Any]) -> Route:
    """A peer asks us for the part of its route from our border node `entry` to our node `dst`."""
    from .controller import RequestError

    try:
        rid, qkdl_id = str(body["route_id"]), str(body["qkdl_id"])
        entry_ref, dst_ref = str(body["entry"]), str(body["dst"])
        rate, max_rate = int(body["rate_bps"]), int(body.get("max_rate_bps") or body["rate_bps"])
        saes = tuple(str(x) for x in body.get("saes") or [])
        apps = tuple(str(x) for x in body.get("applications") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError(f"bad segment request: {exc}") from exc
    entry, dst = orch.model.resolve(entry_ref), orch.model.resolve(dst_ref)
    if entry is None or dst is None:
        raise RequestError(f"{entry_ref} or {dst_ref} is not a node of domain {orch.domain}", 404)
    if entry == dst:
        raise RequestError("a segment needs a border node other than its destination")
    async with orch.lock:
        old = orch.routes.get(rid)
        if old is not None:
            if (old.src, old.dst, old.min_rate) == (entry, dst, rate):
                return old
            raise RequestError(f"route {rid} exists with other parameters", 409)
        path = shortest_feasible_path(orch.model.key_graph(), entry, dst, rate)
        if path is None:
            raise RequestError(f"no path with {rate} bit/s spare from {orch.model.name_of(entry)} "
                               f"to {orch.model.name_of(dst)} in domain {orch.domain}", 409)
        seg = Segment(qkdl_id, list(path), rate, entry, dst)
        route = Route(rid, entry, dst, saes, rate, max_rate, [seg], apps,
                      peer_domain=str(body.get("origin_domain") or "") or None, origin=False, stitch=entry)
        await orch._apply(None, route)
        orch.routes[rid] = route
        orch._recompute_reservations()
        orch._event("segment-installed", route=rid, path=list(path))
        return route
