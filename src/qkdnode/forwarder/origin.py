"""The origin side of a relay: an enc_keys on a relay association becomes a relay of fresh keys.

`Origin` is a part of `Forwarder` (relay.py), which provides the attributes declared below: the
origin draws the keys (QRNG service or OS CSPRNG), holds the route to its `virt_bandwidth`, runs the
commit pass of a relay prepared ahead when one fits (ready.py), else both passes, and stores its own
copy once the far end has stored the keys.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..keystore.errors import KeySizeNotSupported, RequestLimitExceeded
from ..keystore.store import KeyStore
from ..keystore.types import Delivery, MasterRequest
from .errors import EntropyUnavailable, NoRoute, RateLimited, RelayError, RelayUnavailable, UnknownRelay
from .routes import RelayRoute, TokenBucket
from .service import Neighbour, pb

if TYPE_CHECKING:
    from .ready import ReadyRelays
    from .relay import Pending

log = logging.getLogger(__name__)

RELAY_KEY_SIZE_BITS = 256
BANDWIDTH_WAIT_S = 0.25


class Origin:
    """The origin methods of `Forwarder`."""

    node_id: str
    store: KeyStore
    entropy: Callable[[int], Awaitable[bytes]]
    pending: dict[str, Pending]
    ready: ReadyRelays
    counters: Counter[str]
    _buckets: dict[str, tuple[int, TokenBucket]]

    if TYPE_CHECKING:
        @property
        def where(self) -> str: ...
        def end_route(self, assoc_id: str) -> RelayRoute | None: ...
        async def _ensure_assoc(self, route: RelayRoute) -> None: ...
        async def _prepare(self, req: pb.PrepareRequest, caller: Neighbour | None) -> Pending: ...
        async def _forward(self, p: Pending, ids: list[str], keys: list[bytes],
                           taken: Delivery | None = None) -> pb.CommitReply: ...
        async def _store(self, p: Pending, ids: list[str], keys: list[bytes]) -> None: ...
        async def _abort_downstream(self, p: Pending, reason: str) -> None: ...
        def _release(self, p: Pending) -> None: ...
        def _spawn(self, coro: Awaitable[Any]) -> None: ...

    def _abandon(self, p: Pending, reason: str) -> None:
        """Release relay p here, and downstream if link keys are still reserved for it there (not
        committed yet, or commits left of a relay prepared ahead)."""
        if p.out_link_keys:
            self._spawn(self._abort_downstream(p, reason))
        self._release(p)

    def _bucket(self, route: RelayRoute) -> TokenBucket | None:
        if not route.bandwidth_bps:
            return None
        entry = self._buckets.get(route.route_id)
        if entry is None:
            entry = (route.bandwidth_bps, TokenBucket(route.bandwidth_bps, RELAY_KEY_SIZE_BITS))
            self._buckets[route.route_id] = entry
        return entry[1]

    async def relay(self, route_id: str, n: int) -> Delivery:
        """Generate n keys here, relay them to the other end of the route; return them once stored there
        and here (durably). Raises RelayError; on failure before the commit nothing is consumed."""
        route = self.end_route(route_id)
        if route is None:
            raise NoRoute(f"{self.where}: no VIRT link {route_id} ending here")
        bits = n * RELAY_KEY_SIZE_BITS
        bucket = self._bucket(route)
        if bucket is not None:
            ok, wait = bucket.take(bits, BANDWIDTH_WAIT_S)
            if not ok:
                self.counters["failed:" + RateLimited.kind] += 1
                raise RateLimited(
                    f"{self.where}: {bits} bits exceed the burst of route {route_id} (virt_bandwidth "
                    f"{route.bandwidth_bps} bit/s); ask for fewer keys" if wait == float("inf") else
                    f"{self.where}: virt_bandwidth of route {route_id} ({route.bandwidth_bps} bit/s) "
                    f"exceeded; retry in {wait:.2f} s")
            if wait:
                await asyncio.sleep(wait)
        try:
            return await self._relay(route, n)
        except RelayError as err:
            self.counters["relays_failed"] += 1
            self.counters["failed:" + err.kind] += 1
            if route_id in self._buckets:
                self._buckets[route_id][1].give_back(bits)
            raise

    async def _relay(self, route: RelayRoute, n: int) -> Delivery:
        p = self.ready.take(route.route_id, n)
        if p is not None:  # prepared ahead: the commit pass only
            self.counters["ready_used"] += 1
            try:
                return await self._commit_origin(route, p, n)
            except UnknownRelay as err:  # a hop lost it (restarted, say): both passes afresh
                self.counters["ready_lost"] += 1
                log.info("%s: relay prepared ahead on route %s was lost (%s); preparing afresh",
                         self.where, route.route_id, err.message)
        return await self._commit_origin(route, await self.prepare_origin(route, n), n)

    async def prepare_origin(self, route: RelayRoute, n: int, ahead_slots: int = 0) -> Pending:
        """The prepare pass of a relay of n keys from this origin: for a request now, or, with
        `ahead_slots`, ahead of demand for that many commits (ready.py)."""
        req = pb.PrepareRequest(relay_id=str(uuid.uuid4()), route_id=route.route_id, origin=self.node_id,
                                target=route.other_end(self.node_id), hop=0, keys=n,
                                key_size_bits=RELAY_KEY_SIZE_BITS, ahead=ahead_slots > 0, slots=ahead_slots)
        p = await self._prepare(req, None)
        if self.pending.pop(p.relay_id, None) is not p:  # the sweeper released it meanwhile
            raise UnknownRelay(f"{self.where}: relay {p.relay_id} expired while it was being prepared")
        return p

    async def _commit_origin(self, route: RelayRoute, p: Pending, n: int) -> Delivery:
        """The commit pass of prepared relay p from this origin, with n fresh keys."""
        kb = RELAY_KEY_SIZE_BITS // 8
        try:
            try:
                material = await self.entropy(n * kb)
            except Exception as exc:
                raise EntropyUnavailable(f"{self.where}: entropy source failed ({type(exc).__name__})") from None
            if len(material) != n * kb:
                raise EntropyUnavailable(f"{self.where}: entropy source returned {len(material)} of {n * kb} bytes")
            ids = [str(uuid.uuid4()) for _ in range(n)]
            keys = [material[i * kb:(i + 1) * kb] for i in range(n)]
            await self._forward(p, ids, keys)
            await self._store(p, ids, keys)
        except BaseException:  # a RelayError, or the 014 request was cancelled
            self.ready.give_back(route, p, False)
            self._abandon(p, "origin failed")
            raise
        self.counters["relays_originated"] += 1
        self.counters["keys_originated"] += n
        if not self.ready.give_back(route, p, True):
            self._abandon(p, "relay prepared ahead withdrawn")
        self.ready.after_relay(route, n)
        return list(zip(ids, keys, strict=True))

    async def relay_for(self, request: MasterRequest) -> None:
        """enc_keys on a relay association: relay `number` new keys first (see RelayCommitter)."""
        route = self.end_route(request.assoc_id)
        assert route is not None
        try:
            await self._ensure_assoc(route)
            st = self.store.stats(request.assoc_id)
            if request.size_bits != st.key_size_bits:
                raise KeySizeNotSupported(request.size_bits, st.key_size_bits)
            if not 1 <= request.number <= st.max_keys_per_request:
                raise RequestLimitExceeded(request.number, st.max_keys_per_request)
            await self.relay(request.assoc_id, request.number)
        except RelayError as err:
            log.info("relay for %s -> %s on route %s failed: %s", request.master_sae, request.slave_sae,
                     request.assoc_id, err.message)
            raise RelayUnavailable(err, request.assoc_id, route.other_end(self.node_id)) from None

