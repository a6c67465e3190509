"""Path computation: key routes on the key graph, direct QKD links on the physical graph.

Key routes: an application asks for `rate` bit/s of key between two nodes. A hop can carry what
its PHYS links generate (live skr) minus what key routes already reserve there (`spare`). The
answer is the fewest-hop path whose every hop has `spare >= rate`; when no single path has the
rate, the request is split over several paths (successive widest paths on the residual spare
rates), up to `max_paths`.

Direct links: which emitter/receiver module pairs could form a PHYS QKD link through the optical
switches: same technology, compatible roles and wavelength, and a light path whose loss fits the
pair's loss budget (015 `max_absorption` of both interfaces).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Iterable

import networkx as nx

from .model import Interface


class NoRoute(Exception):
    """No path (or set of paths) carries the requested key rate."""

    def __init__(self, message: str, best_bps: int = 0) -> None:
        super().__init__(message)
        self.best_bps = best_bps


@dataclass(frozen=True)
class PathShare:
    nodes: tuple[str, ...]
    rate: int  # bit/s carried on this path


def shortest_feasible_path(g: nx.Graph, src: str, dst: str, rate: int) -> list[str] | None:
    """Fewest hops over edges with spare >= rate; among equals, the one with the widest bottleneck."""
    if src not in g or dst not in g:
        return None
    # BFS layers from src over feasible edges, then pick the widest among shortest (DAG DP).
    dist = {src: 0}
    order = [src]
    frontier = [src]
    while frontier and dst not in dist:
        nxt: list[str] = []
        for u in frontier:
            for v, attrs in g.adj[u].items():
                if v not in dist and attrs.get("spare", 0) >= rate:
                    dist[v] = dist[u] + 1
                    nxt.append(v)
        order.extend(nxt)
        frontier = nxt
    if dst not in dist:
        return None
    width: dict[str, float] = {src: float("inf")}
    parent: dict[str, str] = {}
    for u in order:
        if u == dst or u not in width:
            continue
        for v, attrs in g.adj[u].items():
            s = attrs.get("spare", 0)
            if dist.get(v) == dist[u] + 1 and s >= rate:
                w = min(width[u], s)
                if w > width.get(v, -1):
                    width[v] = w
                    parent[v] = u
    path = [dst]
    while path[-1] != src:
        path.append(parent[path[-1]])
    return path[::-1]


def widest_path(g: nx.Graph, src: str, dst: str, spare: dict[frozenset[str], int]) -> tuple[list[str], int] | None:
    """Maximum-bottleneck path (ties: fewer hops) on residual spare rates."""
    if src not in g or dst not in g:
        return None
    best: dict[str, tuple[int, int]] = {src: (2**62, 0)}  # node -> (width, hops)
    parent: dict[str, str] = {}
    tie = itertools.count()
    heap: list[tuple[int, int, int, str]] = [(-(2**62), 0, next(tie), src)]
    done: set[str] = set()
    while heap:
        negw, hops, _, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if u == dst:
            break
        for v in g.adj[u]:
            s = spare.get(frozenset((u, v)), 0)
            if s <= 0 or v in done:
                continue
            w = min(-negw, s)
            cur = best.get(v)
            if cur is None or w > cur[0] or (w == cur[0] and hops + 1 < cur[1]):
                best[v] = (w, hops + 1)
                parent[v] = u
                heapq.heappush(heap, (-w, hops + 1, next(tie), v))
    if dst not in parent:
        return None
    path = [dst]
    while path[-1] != src:
        path.append(parent[path[-1]])
    return path[::-1], best[dst][0]


def key_route(g: nx.Graph, src: str, dst: str, rate: int, *, max_paths: int = 4) -> list[PathShare]:
    """Paths from src to dst that together carry `rate` bit/s; raises NoRoute."""
    if src == dst:
        raise NoRoute("source and destination are the same node")
    if src not in g or dst not in g:
        missing = src if src not in g else dst
        raise NoRoute(f"node {g.nodes[missing]['name'] if missing in g else missing} is not in the key graph")
    rate = max(1, int(rate))
    path = shortest_feasible_path(g, src, dst, rate)
    if path is not None:
        return [PathShare(tuple(path), rate)]
    residual = {frozenset((a, b)): int(d.get("spare", 0)) for a, b, d in g.edges(data=True)}
    shares: list[PathShare] = []
    left = rate
    while left > 0 and len(shares) < max_paths:
        found = widest_path(g, src, dst, residual)
        if found is None:
            break
        p, width = found
        take = min(width, left)
        shares.append(PathShare(tuple(p), take))
        left -= take
        for a, b in zip(p, p[1:]):
            residual[frozenset((a, b))] -= take
    if left > 0:
        got = rate - left
        raise NoRoute(
            f"no key route carries {rate} bit/s: at most {got} bit/s over {len(shares)} path(s)"
            if shares else "no key route joins the two nodes with spare key rate", got)
    return shares


# -- direct links -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """A QKD interface and where its light enters the optical plant (a physical-graph vertex)."""

    qkdn_id: str
    interface: Interface
    vertex: str


@dataclass(frozen=True)
class DirectLink:
    emitter: Endpoint
    receiver: Endpoint
    loss_db: float
    budget_db: float
    hops: tuple[str, ...]  # physical-graph vertices of the light path


COMPATIBLE_ROLES = {("TRANSMITTER", "RECEIVER"), ("TRANSCEIVER", "RECEIVER"), ("TRANSMITTER", "TRANSCEIVER"),
                    ("TRANSCEIVER", "TRANSCEIVER")}


def _channels(wl: str | None) -> set[int] | None:
    """ITU channels of a 015 wavelength-range-type ("n" or "a-b" or space-separated); None: any."""
    if not wl:
        return None
    out: set[int] = set()
    for part in wl.replace(",", " ").split():
        if "-" in part:
            lo, _, hi = part.partition("-")
            if lo.isdigit() and hi.isdigit():
                out.update(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.add(int(part))
    return out or None


def wavelength_ok(a: Interface, b: Interface) -> bool:
    """Both on a common DWDM channel, or neither on the DWDM grid (e.g. O band)."""
    ca, cb = _channels(a.wavelength), _channels(b.wavelength)
    if ca is None or cb is None:
        return ca is None and cb is None
    return bool(ca & cb)


def direct_links(phys: nx.Graph, endpoints: Iterable[Endpoint]) -> list[DirectLink]:
    """Every emitter/receiver pairing on different nodes whose lowest-loss light path fits its budget."""
    eps = list(endpoints)
    emitters = [e for e in eps if e.interface.role in ("TRANSMITTER", "TRANSCEIVER")]
    receivers = [e for e in eps if e.interface.role in ("RECEIVER", "TRANSCEIVER")]
    out: list[DirectLink] = []
    dist_cache: dict[str, tuple[dict[str, float], dict[str, list[str]]]] = {}
    for tx in emitters:
        if tx.vertex not in phys:
            continue
        if tx.vertex not in dist_cache:
            dist_cache[tx.vertex] = nx.single_source_dijkstra(phys, tx.vertex, weight="loss_db")
        dist, paths = dist_cache[tx.vertex]
        for rx in receivers:
            if rx is tx or rx.qkdn_id == tx.qkdn_id or (tx.interface.role, rx.interface.role) not in COMPATIBLE_ROLES:
                continue
            if tx.interface.technology != rx.interface.technology or not wavelength_ok(tx.interface, rx.interface):
                continue
            if rx.vertex not in dist:
                continue
            budgets = [b for b in (tx.interface.max_absorption, rx.interface.max_absorption) if b is not None]
            budget = min(budgets) if budgets else float("inf")
            loss = float(dist[rx.vertex])
            if loss <= budget:
                out.append(DirectLink(tx, rx, round(loss, 3), budget, tuple(paths[rx.vertex])))
    out.sort(key=lambda d: (d.loss_db, d.emitter.qkdn_id, d.receiver.qkdn_id))
    return out


def generated_graph(nodes: int, links: int, seed: int = 1, skr: tuple[int, int] = (1_000, 100_000)) -> nx.Graph:
    """A connected random key graph (for benchmarks): a random spanning tree plus random extra hops."""
    import random

    rnd = random.Random(seed)
    g = nx.Graph()
    names = [f"n{i}" for i in range(nodes)]
    g.add_nodes_from((n, {"name": n}) for n in names)
    for i in range(1, nodes):
        _edge(g, names[i], names[rnd.randrange(i)], rnd.randint(*skr))
    while g.number_of_edges() < links:
        a, b = rnd.sample(names, 2)
        if not g.has_edge(a, b):
            _edge(g, a, b, rnd.randint(*skr))
    return g


def _edge(g: nx.Graph, a: str, b: str, cap: int) -> None:
    attrs: dict[str, Any] = {"capacity": cap, "reserved": 0, "spare": cap, "links": [], "up": []}
    g.add_edge(a, b, **attrs)
