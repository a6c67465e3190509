"""The Orchestrator: one per domain. Connects to its nodes, learns them, keeps key routes.

Start-up is connect -> discover -> rebuild the intent (key routes and their reservations) from the
VIRT links and `qkd_app` entries the nodes hold. The nodes' datastores are the only record: an
orchestrator restarted on the same network finds exactly what it had and changes nothing.

A key route is one `qkd_app` per end node (the SAEs, the rate asked for, `backing_qkdl_id`) and
one VIRT `qkd_link` per path (same `qkdl_id` on every node of the path, `virt_prev_hop` /
`virt_next_hop`, `virt_bandwidth`), installed with one all-or-nothing transaction.

Healing: a PHYS link reported down (`sdqkdn_link_down`) or a node whose session is lost takes its
hops out of the key graph; every route through them is recomputed around the failure and
reinstalled under the same `qkdl_id`, so that keys already delivered over it stay valid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lxml import etree

from . import peering
from .directlink import BuiltLink, DirectLinks
from .discovery import discover, node_id
from .inventory import Inventory
from .model import (
    EntryKey, NetworkModel, NodeView, Route, Segment, entry_diff, entry_is_ours, pair, route_entries,
    routes_from_views, sae_uuid,
)
from .routing import NoRoute, PathShare, direct_links, key_route, shortest_feasible_path
from .session import NodeSession, NodeUnreachable, NotificationListener, WireRecorder, notification_body
from .transaction import NodeEdit, Transaction, TransactionError

log = logging.getLogger(__name__)

ROUTE_NAMESPACE = uuid.UUID("2a4b6c8d-1e3f-4a5b-8c7d-9e0f1a2b3c4d")


class RequestError(Exception):
    """A request the orchestrator cannot serve (HTTP 4xx); `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def qkdl_id_for(route_id: str, index: int) -> str:
    """The VIRT link of a route's first path has the route's ID (app_id and qkdl_id are separate lists)."""
    return route_id if index == 0 else str(uuid.uuid5(ROUTE_NAMESPACE, f"{route_id}#{index}"))


class Orchestrator:
    def __init__(self, inventory: Inventory, *, recorder: WireRecorder | None = None,
                 poll_interval: float = 5.0, notifications: bool = True) -> None:
        self.inventory = inventory
        self.domain = inventory.domain
        self.recorder = recorder
        self.poll_interval = poll_interval
        self.use_notifications = notifications
        # one worker thread per node: the RPCs of a transaction run on all its nodes at once
        self.executor = ThreadPoolExecutor(max_workers=len(inventory.nodes) + 4, thread_name_prefix="netconf")
        self.sessions: dict[str, NodeSession] = {
            name: NodeSession(name, e.endpoint, recorder=recorder, executor=self.executor)
            for name, e in inventory.nodes.items()
        }
        self.listeners: dict[str, NotificationListener] = {}
        self.model = NetworkModel()
        self.routes: dict[str, Route] = {}
        self.ids: dict[str, str] = {}  # inventory name -> qkdn_id
        self.ready = asyncio.Event()
        self.lock = asyncio.Lock()  # one change at a time
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heal_pending = asyncio.Event()
        self.events: list[dict[str, Any]] = []  # what happened (for the NMS and tests)
        self.event_listeners: list[Callable[[dict[str, Any]], None]] = []  # e.g. metrics (orchestrator.metrics)
        self.peers = peering.Peers(inventory.peers)
        self.direct = DirectLinks(self)  # direct QKD links through the optical switches (directlink.py)
        self._border = set(inventory.border_nodes())

    # -- life cycle -------------------------------------------------------------------------------
    async def _discover_all(self) -> list[tuple[str, NodeView | BaseException]]:
        """Our own nodes first, then the border nodes (read with what we know by then: the interior's
        and every border node's qkdn_id, read first, so that entries between border nodes are seen)."""
        out: list[tuple[str, NodeView | BaseException]] = []
        unknown = [n for n in sorted(self._border) if n not in self.ids]
        for name, q in zip(unknown, await asyncio.gather(*(node_id(self.sessions[n]) for n in unknown),
                                                           return_exceptions=True)):
            if isinstance(q, str):
                self.ids[name] = q
        for group in ([n for n in self.sessions if n not in self._border], [n for n in self.sessions if n in self._border]):
            results = await asyncio.gather(*(self._discover(n) for n in group), return_exceptions=True)
            out.extend(zip(group, results))
        return out

    async def start(self) -> None:
        for name, res in await self._discover_all():
            if isinstance(res, BaseException):
                log.warning("%s: not discovered at start-up: %s", name, res)
        self._rebuild_intent()
        if self.use_notifications:
            for name, e in self.inventory.nodes.items():
                ln = NotificationListener(name, e.endpoint, self._on_notification, self._on_session_lost,
                                          self._on_session_back, recorder=self.recorder)
                ln.start()
                self.listeners[name] = ln
            await asyncio.to_thread(lambda: [ln.subscribed.wait(5) for ln in self.listeners.values()])
        self._spawn(self._healer())
        if self.poll_interval > 0:
            self._spawn(self._poller())
        self.ready.set()

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*(asyncio.to_thread(ln.stop, 0.0) for ln in self.listeners.values()))
        await asyncio.gather(*(s.close() for s in self.sessions.values()), return_exceptions=True)
        await self.peers.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _event(self, kind: str, **info: Any) -> None:
        event = {"time": time.time(), "event": kind, **info}
        self.events.append(event)
        del self.events[:-500]
        for listener in self.event_listeners:
            listener(event)

    # -- discovery ----------------------------------------------------------------------------------
    async def _discover(self, name: str) -> NodeView:
        if name in self._border:  # shared with other domains: read only what names our nodes
            view = await discover(self.sessions[name], set(self.ids.values()), self.ids.get(name))
        else:
            view = await discover(self.sessions[name])
        old = self.model.nodes.get(view.qkdn_id)
        if old is not None and old.name != name:
            raise ValueError(f"{name} and {old.name} claim the same qkdn_id {view.qkdn_id}")
        self.model.put(view)
        self.ids[name] = view.qkdn_id
        return view

    def _rebuild_intent(self) -> None:
        views = {q: v for q, v in self.model.nodes.items() if v.reachable}
        self.routes = {r.route_id: r for r in routes_from_views(views, self._border_ids(), self._guest_ids())}
        graph = self.model.key_graph()
        for r in self.routes.values():
            if not all(self._segment_ok(s, graph) for s in r.segments):
                r.status = "down"
        self._recompute_reservations()
        self._event("intent-rebuilt", routes=sorted(self.routes))

    def _recompute_reservations(self) -> None:
        self.model.reserved.clear()
        for r in self.routes.values():
            if r.status == "down":
                continue
            for seg in r.segments:
                for a, b in seg.hops():
                    hop = pair(a, b)
                    self.model.reserved[hop] = self.model.reserved.get(hop, 0) + seg.rate

    def _border_ids(self) -> set[str]:
        """qkdn_ids of this domain's border nodes (known so far)."""
        return {self.ids[n] for n in self._border if n in self.ids}

    def _guest_ids(self) -> set[str]:
        """qkdn_ids of the border nodes whose own domain is another one."""
        return {self.ids[n] for n in self.inventory.guests() if n in self.ids}

    def managed(self) -> set[str]:
        return set(self.model.nodes)

    def resolve(self, ref: str) -> str:
        q = self.model.resolve(ref)
        if q is None:
            raise RequestError(f"unknown node {ref!r} in domain {self.domain}", 404)
        return q

    def names(self) -> dict[str, str]:
        return {q: v.name for q, v in self.model.nodes.items()}

    async def refresh(self) -> None:
        """Re-read every reachable node (link rates, interfaces, applications)."""
        for name, res in await self._discover_all():
            q = self.ids.get(name)
            if isinstance(res, BaseException) and q in self.model.nodes:
                log.info("%s: refresh failed: %s", name, res)
        for qkdl_id, views in self.model.phys_links().items():  # a link-up notification may have been missed
            if qkdl_id in self.model.down_links and all(v.skr for v in views) and len(views) > 1:
                self.model.down_links.discard(qkdl_id)
                self._event("link-up", qkdl_id=qkdl_id)

    # -- provisioning -------------------------------------------------------------------------------
    async def provision_route(self, src: str, dst: str, rate_bps: int, saes: list[str] | tuple[str, ...] = (),
                              *, max_rate_bps: int | None = None, route_id: str | None = None,
                              path: list[str] | None = None) -> Route:
        """A key route of `rate_bps` between two nodes (names or qkdn_ids) for the given SAEs."""
        if rate_bps <= 0 or rate_bps >= 2**32:
            raise RequestError("rate_bps must be a positive 32-bit integer (bit/s)")
        max_rate = int(max_rate_bps or rate_bps)
        if max_rate < rate_bps or max_rate >= 2**32:
            raise RequestError("max_rate_bps must be >= rate_bps and fit in 32 bits")
        rid = str(uuid.UUID(route_id)) if route_id else str(uuid.uuid4())
        async with self.lock:
            existing = self.routes.get(rid)
            s = self.model.resolve(src)
            d = self.model.resolve(dst)
            if existing is not None:
                # a cross-domain route ends here at its border node (`stitch`); one rebuilt from the
                # nodes after a restart does not know the peer's destination it was asked for
                crossing = d is None and existing.stitch == existing.dst and existing.peer_dst in (None, dst)
                if s == existing.src and (d == existing.dst or crossing) and int(rate_bps) == existing.min_rate:
                    if crossing:
                        existing.peer_dst = dst
                    return existing
                raise RequestError(f"route {rid} exists with other parameters", 409)
            if s is None:
                raise RequestError(f"unknown node {src!r} in domain {self.domain}", 404)
            if d is None:
                return await peering.provision_cross_domain(self, s, dst, int(rate_bps), max_rate, tuple(saes), rid)
            try:
                shares = self._paths(s, d, int(rate_bps), path)
            except NoRoute:  # the rates may have moved since the last read: look again once
                await self.refresh()
                try:
                    shares = self._paths(s, d, int(rate_bps), path)
                except NoRoute as exc:
                    raise RequestError(str(exc), 409) from exc
            border = self._border_ids()
            if s in self._guest_ids() and all(set(sh.nodes) <= border for sh in shares):
                home = self.inventory.nodes[self.model.nodes[s].name].home
                raise RequestError(f"a key route on shared border nodes only belongs to the domain of its source "
                                   f"node: ask the orchestrator of domain {home}", 409)
            segs = [Segment(qkdl_id_for(rid, i), list(sh.nodes), sh.rate, s, d) for i, sh in enumerate(shares)]
            route = Route(rid, s, d, tuple(saes), int(rate_bps), max_rate, segs,
                          tuple(sae_uuid(x) for x in saes))
            await self._apply(None, route)
            self.routes[rid] = route
            self._recompute_reservations()
            self._event("route-provisioned", route=rid, paths=[s.path for s in segs])
            return route

    def _paths(self, s: str, d: str, rate: int, path: list[str] | None) -> list[PathShare]:
        graph = self.model.key_graph()
        if path is None:
            return key_route(graph, s, d, rate)
        ids = [self.resolve(n) for n in path]
        if ids[0] != s or ids[-1] != d or len(set(ids)) != len(ids):
            raise RequestError("path must run from src to dst without loops")
        for a, b in zip(ids, ids[1:]):
            if not graph.has_edge(a, b):
                raise RequestError(f"path: no PHYS link joins {self.model.name_of(a)} and {self.model.name_of(b)}")
            if graph.edges[a, b]["spare"] < rate:
                raise NoRoute(f"path: {self.model.name_of(a)}-{self.model.name_of(b)} has "
                              f"{graph.edges[a, b]['spare']} bit/s spare, {rate} asked")
        return [PathShare(tuple(ids), rate)]

    async def delete_route(self, route_id: str) -> Route:
        async with self.lock:
            route = self.routes.get(route_id)
            if route is None:
                raise RequestError(f"no route {route_id}", 404)
            if route.origin and route.stitch is not None and self.peers.urls:
                await self.peers.delete_segment(route.peer_domain, route.route_id)
            await self._apply(route, None, skip_unreachable=True)
            del self.routes[route_id]
            self._recompute_reservations()
            self._event("route-deleted", route=route_id)
            return route

    async def _apply(self, old: Route | None, new: Route | None, *, skip_unreachable: bool = False) -> list[str]:
        """One transaction turning the entries of `old` into those of `new`; returns the nodes edited."""
        return await self._apply_many([(old, new)], skip_unreachable=skip_unreachable)

    async def _apply_many(self, changes: Sequence[tuple[Route | None, Route | None]], *,
                          skip_unreachable: bool = False) -> list[str]:
        managed = self.managed()
        old_e: dict[str, dict[EntryKey, str]] = {}
        new_e: dict[str, dict[EntryKey, str]] = {}
        for old, new in changes:
            for target, route in ((old_e, old), (new_e, new)):
                if route is not None:
                    for q, entries in route_entries(route, managed).items():
                        target.setdefault(q, {}).update(entries)
        edits: list[NodeEdit] = []
        for q in sorted(set(old_e) | set(new_e)):
            view = self.model.nodes.get(q)
            if view is None:
                continue
            if not view.reachable and skip_unreachable:
                continue  # cleaned up when the node is back (reconcile)
            edit, undo = entry_diff(old_e.get(q, {}), new_e.get(q, {}))
            if edit:
                edits.append(NodeEdit(self.sessions[view.name], edit, undo))
        await Transaction(edits).run()
        return [e.session.name for e in edits]

    # -- direct links (directlink.py) ---------------------------------------------------------------
    async def build_direct_link(self, emitter: Any, receiver: Any) -> tuple[BuiltLink, bool]:
        """Connectivity services on the path's switches + PHYS entries at both ends, one transaction;
        returns (link, created)."""
        return await self.direct.build(emitter, receiver)

    async def delete_direct_link(self, qkdl_id: str) -> BuiltLink:
        return await self.direct.delete(qkdl_id)

    # -- healing ------------------------------------------------------------------------------------
    def _segment_ok(self, seg: Segment, graph: Any) -> bool:
        for a, b in seg.hops():
            if a not in self.model.nodes or b not in self.model.nodes:
                continue  # a hop of another domain: its orchestrator looks after it
            if not graph.has_edge(a, b) or not graph.edges[a, b]["up"]:
                return False
        return True

    async def heal(self) -> list[str]:
        """Reroute every route with a hop that is down, in one transaction; returns the routes changed."""
        async with self.lock:
            t0 = time.monotonic()
            graph = self.model.key_graph()
            broken: dict[str, list[int]] = {}
            for rid, route in self.routes.items():
                bad = [i for i, s in enumerate(route.segments) if not self._segment_ok(s, graph)]
                if bad:
                    broken[rid] = bad
                elif route.status != "up":
                    route.status = "up"
            was = {rid: self.routes[rid].status for rid in broken}
            for rid in broken:  # their own reservations must not count against their new paths
                self.routes[rid].status = "down"
            self._recompute_reservations()
            graph = self.model.key_graph()
            changes: list[tuple[Route, Route]] = []
            for rid, bad in broken.items():
                new = self._reroute(self.routes[rid], bad, graph)
                if new is None:
                    if was[rid] != "down":
                        self._event("route-down", route=rid)
                else:
                    changes.append((self.routes[rid], new))
            if changes:
                try:
                    await self._apply_many(changes, skip_unreachable=True)
                except (TransactionError, NodeUnreachable) as exc:
                    log.warning("reroute of %s failed: %s", ", ".join(o.route_id for o, _ in changes), exc)
                    self._event("reroute-failed", routes=[o.route_id for o, _ in changes], error=str(exc))
                    changes = []
            for _, new in changes:
                self.routes[new.route_id] = new
            self._recompute_reservations()
            ms = round((time.monotonic() - t0) * 1000, 1)
            for _, new in changes:
                self._event("route-healed", route=new.route_id, ms=ms, paths=[s.path for s in new.segments])
            if broken and len(changes) < len(broken):
                self._retry_later()
            return [n.route_id for _, n in changes]

    def _retry_later(self, delay: float = 1.0) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            self._heal_pending.set()

        self._spawn(later())

    def _reroute(self, route: Route, broken: list[int], graph: Any) -> Route | None:
        """`route` with its broken segments on new paths (spare taken from `graph`), or None."""
        new_segs = list(route.segments)
        for i in broken:
            seg = route.segments[i]
            head = seg.upstream if seg.upstream in self.model.nodes else seg.path[0]
            tail = seg.downstream if seg.downstream in self.model.nodes else seg.path[-1]
            path = shortest_feasible_path(graph, head, tail, seg.rate)
            if path is None:
                return None
            inner = path[1:] if seg.upstream in self.model.nodes else path
            inner = inner[:-1] if seg.downstream in self.model.nodes else inner
            new_segs[i] = Segment(seg.qkdl_id, inner, seg.rate, seg.local_end, seg.remote_end, seg.upstream,
                                  seg.downstream)
            for a, b in zip(path, path[1:]):
                graph.edges[a, b]["spare"] -= seg.rate
        return dataclasses.replace(route, segments=new_segs, status="up")

    async def _healer(self) -> None:
        while True:
            await self._heal_pending.wait()
            self._heal_pending.clear()
            try:
                await self.heal()
            except Exception:
                log.exception("healing failed")
                await asyncio.sleep(0.5)
                self._heal_pending.set()

    async def _poller(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
                self._heal_pending.set()
            except Exception:
                log.exception("poll failed")

    # -- events from the nodes ----------------------------------------------------------------------
    def _on_notification(self, name: str, root: etree._Element) -> None:
        body = notification_body(root)
        if body is None:
            return
        kind = etree.QName(body).localname
        qkdl_id = body.findtext("{*}qkd_link/{*}qkdl_id")
        if kind == "sdqkdn_link_down" and qkdl_id:
            reason = body.findtext("{*}qkd_link/{*}reason")
            if qkdl_id not in self.model.down_links:
                self._event("link-down", node=name, qkdl_id=qkdl_id, reason=reason)
            self.model.down_links.add(qkdl_id)
            self._heal_pending.set()
        elif kind == "sdqkdn_link_perf_update" and qkdl_id:
            skr = body.findtext("{*}qkd_link/{*}performance/{*}skr")
            view = self.model.nodes.get(self.ids.get(name, ""))
            if view is not None and qkdl_id in view.phys and skr is not None and skr.isdigit():
                view.phys[qkdl_id].skr = int(skr)
                if int(skr) > 0 and qkdl_id in self.model.down_links:
                    self.model.down_links.discard(qkdl_id)
                    self._event("link-up", node=name, qkdl_id=qkdl_id)
                    self._heal_pending.set()

    def _on_session_lost(self, name: str) -> None:
        view = self.model.nodes.get(self.ids.get(name, ""))
        if view is not None and view.reachable:
            view.reachable = False
            self._event("node-lost", node=name)
            self._heal_pending.set()

    async def _on_session_back(self, name: str) -> None:
        try:
            view = await self._discover(name)
        except Exception as exc:
            log.info("%s: back, but discovery failed: %s", name, exc)
            return
        self._event("node-back", node=name)
        async with self.lock:
            await self._reconcile(view)
        self._heal_pending.set()

    async def _reconcile(self, view: NodeView) -> None:
        """Make a node that was away hold exactly the entries of our routes (drop stale ones)."""
        managed = self.managed()
        want: dict[EntryKey, str] = {}
        known: set[str] = set()
        for r in self.routes.values():
            known.update(r.qkdl_ids)
            known.add(r.route_id)
            want.update(route_entries(r, managed).get(view.qkdn_id, {}))
        have = {("qkd_link", q): "?" for q, ln in view.virt.items() if q in known and entry_is_ours(ln, managed)}
        have.update({("qkd_app", a): "?" for a in view.apps if a in known})
        stale = {k: v for k, v in have.items() if k not in want}
        edit, undo = entry_diff(stale, {k: v for k, v in want.items()})
        if edit:
            try:
                await Transaction([NodeEdit(self.sessions[view.name], edit, None)]).run()
                self._event("node-reconciled", node=view.name)
            except (TransactionError, NodeUnreachable) as exc:
                log.warning("%s: reconcile failed: %s", view.name, exc)

    # -- views for the NMS ----------------------------------------------------------------------------
    def topology_json(self) -> dict[str, Any]:
        names = self.names()
        g = self.model.key_graph()
        phys = self.model.physical_graph()
        return {
            "domain": self.domain,
            "nodes": [{"name": v.name, "qkdn_id": q, "status": v.status, "reachable": v.reachable,
                       "location": v.location, "border": len(self.inventory.nodes[v.name].domains) > 1,
                       "domains": list(self.inventory.nodes[v.name].domains),
                       "interfaces": [vars(i) for i in v.interfaces.values()],
                       "switch": v.tapi is not None}
                      for q, v in sorted(self.model.nodes.items(), key=lambda kv: kv[1].name)],
            "key_graph": [{"a": names.get(a, a), "b": names.get(b, b), "a_id": a, "b_id": b, "links": d["links"],
                           "up": d["up"], "capacity_bps": d["capacity"], "reserved_bps": d["reserved"],
                           "spare_bps": d["spare"]} for a, b, d in g.edges(data=True)],
            "physical_graph": {"vertices": phys.number_of_nodes(),
                               "fibres": [{"a": a, "b": b, "loss_db": d["loss_db"], "link": d.get("link")}
                                          for a, b, d in phys.edges(data=True) if d.get("kind") == "fibre"]},
        }

    def _technology(self, ln: Any) -> str | None:
        """The 015 qkdi_type of a PHYS link's local interface (e.g. DV-QKD, CV-QKD)."""
        view = self.model.nodes.get(ln.local_node or "")
        iface = view.interfaces.get(ln.local_qkdi) if view is not None and ln.local_qkdi is not None else None
        return iface.technology if iface is not None else None

    def links_json(self) -> dict[str, Any]:
        names = self.names()
        phys = []
        for qkdl_id, views in sorted(self.model.phys_links().items()):
            ln = views[0]
            phys.append({"qkdl_id": qkdl_id, "a": names.get(ln.local_node or "", ln.local_node),
                         "b": names.get(ln.remote_node or "", ln.remote_node), "up": self.model.link_up(views),
                         "skr_bps": self.model.link_skr(views), "qber_percent": ln.qber,
                         "channel_att_db": ln.channel_att, "technology": self._technology(ln),
                         "reported_by": [names.get(x.local_node or "", "?") for x in views]})
        virt = []
        for q, v in sorted(self.model.nodes.items(), key=lambda kv: kv[1].name):
            for vl in v.virt.values():
                virt.append({"node": v.name, "qkdl_id": vl.qkdl_id, "local": names.get(vl.local_node or "", vl.local_node),
                             "remote": names.get(vl.remote_node or "", vl.remote_node),
                             "prev_hop": names.get(vl.prev_hop or "", vl.prev_hop),
                             "next_hop": [names.get(x, x) for x in vl.next_hops], "bandwidth_bps": vl.bandwidth})
        return {"phys": phys, "virt": virt}

    def direct_links_json(self) -> list[dict[str, Any]]:
        names = self.names()
        out = []
        for d in direct_links(self.model.physical_graph(), self.model.endpoints()):
            out.append({"emitter": {"node": names.get(d.emitter.qkdn_id), "qkdn_id": d.emitter.qkdn_id,
                                    "qkdi_id": d.emitter.interface.qkdi_id, "device": d.emitter.interface.device},
                        "receiver": {"node": names.get(d.receiver.qkdn_id), "qkdn_id": d.receiver.qkdn_id,
                                     "qkdi_id": d.receiver.interface.qkdi_id, "device": d.receiver.interface.device},
                        "technology": d.emitter.interface.technology, "loss_db": d.loss_db, "budget_db": d.budget_db,
                        "margin_db": round(d.budget_db - d.loss_db, 3)})
        return self.direct.mark(out)
