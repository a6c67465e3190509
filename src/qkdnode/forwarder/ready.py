"""Relays prepared ahead of demand: the prepare pass of a route's next request, already done.

A relay needs two passes along its route (relay.py): prepare (reserve link keys and relay store
room on every hop, so that a failure consumes nothing) and commit (the keys, padded hop by hop).
The prepare pass does not depend on the keys, so an origin that has just relayed on a route
prepares the next relays at once, in the background: one prepare pass (`PrepareRequest.ahead`)
reserves for `slots` commits of at most `keys` keys each. The route's next enc_keys of at most that
many keys then runs the commit pass only (two messages per hop instead of four), and so do the
following ones until the slots are used up, one request at a time (concurrent requests prepare
their own). Each commit takes, on every hop, the link keys of the keys actually sent (the commit
names them, the receiver recomputes the count) and releases the rest of that slot's reservation;
the durable intent of each sender is lowered in the same transaction (`spend_intents`).

* **Made** after a successful relay on a route when none is ready or in use, with the size of that
  relay (at most `READY_MAX_KEYS`) and as many slots as `READY_LINK_KEYS` link keys per hop allow
  (at most `READY_MAX_SLOTS`), one per route and direction. It holds what any prepared relay holds
  (link key reservations, durable intents, relay store room at both ends), which other users of the
  same links cannot take meanwhile.
* **Refreshed** `READY_REFRESH_S` before it would expire (`PREPARE_TTL_S`) while the route is in use
  (a relay within `READY_IDLE_S`), else **withdrawn** (abort downstream: everything is released).
  Also withdrawn when the route changes at the origin and when the forwarder stops.
* **Revoked** by a node on the path that can no longer carry it: its route was removed or changed
  there, or its stream to the next hop broke (the neighbour stopped or restarted). That node asks
  upstream, hop by hop, with `revoke`; the origin either drops the relay (`released`: no commit
  will come; every node on the way back releases its reservation and the revoking node aborts
  downstream) or answers that a request is committing it (not released: the nodes keep their
  reservations and let that commit through, like a relay in flight when the route changed). So a
  route removed anywhere leaves no reservation behind and costs no link key.
* If a hop lost it all the same (a commit answered `unknown-relay`), the origin relays the request
  afresh with both passes; the hops before the one that lost it consumed their link keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .errors import NotNeighbour, RelayError
from .routes import RelayRoute
from .service import CALL_TIMEOUT_S, pb

if TYPE_CHECKING:
    from .relay import Forwarder, Pending

log = logging.getLogger(__name__)

READY_MAX_KEYS = 64  # keys per commit
READY_MAX_SLOTS = 16  # commits per relay prepared ahead
READY_LINK_KEYS = 64  # what a relay prepared ahead may hold on each hop, in 256-bit link keys
READY_REFRESH_S = 10.0  # replace a ready relay this long before it would expire
READY_MARGIN_S = 5.0  # never commit one this close to its expiry
READY_IDLE_S = 60.0  # keep one ready while the route relayed within this time
READY_RETRY_S = 1.0  # after a prepare ahead failed (link keys short...), wait this long on that route


class ReadyRelays:
    """The relays this node prepared ahead as an origin, one per route, and the revocations."""

    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd
        self._ready: dict[str, tuple[RelayRoute, Pending]] = {}  # route_id ->
        self._making: set[str] = set()
        self._in_use: dict[str, tuple[str, Pending]] = {}  # relay_id -> (route_id, relay) of a request
        self._last_used: dict[str, float] = {}
        self._failed: dict[str, float] = {}  # route_id -> when a prepare ahead last failed

    def relays(self) -> list[Pending]:
        """The ready relays (not those a request is committing)."""
        return [p for _, p in self._ready.values()]

    @property
    def busy(self) -> bool:
        """A request is committing a ready relay."""
        return bool(self._in_use)

    # -- origin -------------------------------------------------------------------------------------
    def take(self, route_id: str, n: int) -> Pending | None:
        """The ready relay of a route for a request of n keys, or None; the request gives it back."""
        found = self._ready.get(route_id)
        if found is None or n > found[1].n or found[1].expires - time.monotonic() < READY_MARGIN_S:
            return None
        del self._ready[route_id]
        self._in_use[found[1].relay_id] = (route_id, found[1])
        return found[1]

    def give_back(self, route: RelayRoute, p: Pending, ok: bool) -> bool:
        """After a commit on p: whether p is kept for the next request (it has commits left, was
        not revoked meanwhile, the route is unchanged); if not, the caller releases it."""
        if self._in_use.pop(p.relay_id, None) is None or not ok or not p.slots or p.revoked \
                or self.fwd.routes.get(route.route_id) != route or route.route_id in self._ready \
                or p.expires - time.monotonic() < READY_REFRESH_S:
            return False
        self._ready[route.route_id] = (route, p)
        return True

    def after_relay(self, route: RelayRoute, n: int) -> None:
        """A relay of n keys on `route` succeeded: have the next ones prepared."""
        self._last_used[route.route_id] = time.monotonic()
        self._make_soon(route, min(n, READY_MAX_KEYS))

    def _make_soon(self, route: RelayRoute, n: int) -> None:
        if route.route_id in self._ready or route.route_id in self._making \
                or any(rid == route.route_id for rid, _ in self._in_use.values()) \
                or time.monotonic() - self._failed.get(route.route_id, -READY_RETRY_S) < READY_RETRY_S:
            return
        self._making.add(route.route_id)
        self.fwd._spawn(self._make(route, n))

    async def _make(self, route: RelayRoute, n: int) -> None:
        fwd = self.fwd
        slots = max(1, min(READY_MAX_SLOTS, READY_LINK_KEYS // (n + 1)))
        try:
            p = await fwd.prepare_origin(route, n, slots)
        except RelayError as err:  # link keys short, store full...: the next request prepares itself
            self._failed[route.route_id] = time.monotonic()
            fwd.counters["ready_not_made"] += 1
            log.debug("%s: no relay prepared ahead on route %s: %s", fwd.where, route.route_id, err.message)
            return
        finally:
            self._making.discard(route.route_id)
        if p.revoked or fwd.routes.get(route.route_id) != route or route.route_id in self._ready:
            await self.withdraw(p, "route changed")
            return
        self._ready[route.route_id] = (route, p)
        fwd.counters["ready_made"] += 1

    async def withdraw(self, p: Pending, reason: str) -> None:
        """Release a relay this node prepared ahead as origin, here and downstream."""
        self.fwd._release(p)
        if p.downstream is not None:
            await self.fwd._abort_downstream(p, reason)

    def maintain(self, now: float) -> None:
        """From the sweeper: refresh ready relays near their expiry while their route is in use."""
        for rid, (route, p) in list(self._ready.items()):
            if p.expires - now >= READY_REFRESH_S:
                continue
            del self._ready[rid]
            self.fwd._spawn(self.withdraw(p, "replaced"))
            if now - self._last_used.get(rid, -READY_IDLE_S) < READY_IDLE_S and self.fwd.routes.get(rid) == route:
                self._make_soon(route, p.n)

    async def close(self) -> None:
        ready, self._ready = self.relays(), {}
        await asyncio.gather(*(self.withdraw(p, "forwarder stopping") for p in ready), return_exceptions=True)

    # -- route changes and lost neighbours ---------------------------------------------------------
    def routes_changed(self) -> None:
        """After `set_routes`: withdraw this origin's ready relays whose route changed; revoke the
        relays prepared ahead through this node whose route is gone or no longer passes this way."""
        fwd = self.fwd
        for seen in (self._last_used, self._failed):  # what is known of routes that went
            for rid in [r for r in seen if r not in fwd.routes]:
                del seen[rid]
        for rid, (route, p) in list(self._ready.items()):
            if fwd.routes.get(rid) != route:
                del self._ready[rid]
                fwd._spawn(self.withdraw(p, "route changed at the origin"))
        for p in list(fwd.pending.values()):
            if p.ahead and p.upstream is not None and not self._still_carried(p):
                fwd._spawn(self.revoke(p, f"route {p.out_route or p.route_id} changed at {fwd.where}"))

    def _still_carried(self, p: Pending) -> bool:
        routes = self.fwd.routes
        route = routes.get(p.route_id)
        if route is None or route.hops_towards(p.target)[0] != (p.upstream.node_id if p.upstream else None):
            return False
        if p.out_route is not None:  # a border node: the next domain's segment
            route = routes.get(p.out_route)
            target = p.out_target or ""
            if route is None:
                return False
        else:
            target = p.target
        down = route.hops_towards(target)[1]
        return down == (p.downstream.node_id if p.downstream else None)

    def neighbour_lost(self, name: str) -> None:
        """The stream to neighbour `name` broke: what was prepared ahead through it is gone there."""
        fwd = self.fwd
        for rid, (_, p) in list(self._ready.items()):
            if p.downstream is not None and p.downstream.name == name:
                del self._ready[rid]  # the neighbour most likely lost it; if not, the abort releases it
                fwd._spawn(self.withdraw(p, f"{fwd.where}: stream to next hop {name} broke"))
        for p in list(fwd.pending.values()):
            if p.ahead and p.upstream is not None and p.downstream is not None and p.downstream.name == name:
                fwd._spawn(self.revoke(p, f"{fwd.where}: stream to next hop {name} broke"))

    # -- revocation -----------------------------------------------------------------------------------
    async def revoke(self, p: Pending, reason: str) -> None:
        """At a node that cannot carry relay p (prepared ahead): ask the origin to drop it; if it
        did, release it here and abort it downstream."""
        if await self._released(p, reason) and self.fwd.pending.get(p.relay_id) is p:
            del self.fwd.pending[p.relay_id]
            self.fwd._release(p)
            self.fwd.counters["ready_revoked"] += 1
            if p.downstream is not None:
                await self.fwd._abort_downstream(p, reason)

    def _released(self, p: Pending, reason: str) -> asyncio.Future[bool]:
        """Whether the origin dropped relay p (one question upstream per relay, shared)."""
        if p.revoking is None:
            p.revoking = asyncio.ensure_future(self._ask_upstream(p, reason))
        return asyncio.shield(p.revoking)

    async def _ask_upstream(self, p: Pending, reason: str) -> bool:
        assert p.upstream is not None
        try:
            reply = await self.fwd.channels.call(p.upstream, "revoke", pb.RevokeRequest(
                relay_id=p.relay_id, route_id=p.route_id, reason=reason[:200]), CALL_TIMEOUT_S)
        except RelayError as err:  # an upstream that cannot answer cannot commit either
            log.info("%s: revoking relay %s: %s", self.fwd.where, p.relay_id, err.message)
            return True
        return bool(reply.released)

    async def handle_revoke(self, req: pb.RevokeRequest, caller: str) -> pb.RevokeReply:
        """A downstream node cannot carry relay `req.relay_id` (see the module docstring)."""
        fwd = self.fwd
        in_use = self._in_use.get(req.relay_id)
        if in_use is not None:  # a request is committing it: not given back afterwards
            in_use[1].revoked = True
            return pb.RevokeReply(released=False)
        if req.relay_id in fwd.committing:
            return pb.RevokeReply(released=False)
        for rid, (_, ready) in list(self._ready.items()):
            if ready.relay_id == req.relay_id:
                self._check_caller(ready, caller)
                del self._ready[rid]
                fwd._release(ready)
                fwd.counters["ready_revoked"] += 1
                log.info("%s: relay prepared ahead on route %s revoked: %s", fwd.where, rid, req.reason)
                return pb.RevokeReply(released=True)
        p = fwd.pending.get(req.relay_id)
        if p is None:  # committed, aborted or expired here: nothing will be sent
            return pb.RevokeReply(released=True)
        self._check_caller(p, caller)
        if not p.ahead:  # a request's own relay, committed as soon as it is prepared
            return pb.RevokeReply(released=False)
        if p.upstream is None:  # this origin's prepare is still under way: _make withdraws it
            p.revoked = True
            return pb.RevokeReply(released=True)
        released = await self._released(p, req.reason)
        if released and fwd.pending.get(p.relay_id) is p:
            del fwd.pending[p.relay_id]
            fwd._release(p)
        return pb.RevokeReply(released=released)

    def _check_caller(self, p: Pending, caller: str) -> None:
        if p.downstream is None or p.downstream.name != caller:
            raise NotNeighbour(f"{self.fwd.where}: {caller} is not the next hop of relay {p.relay_id}")
