"""The key forwarder of one node: two-pass hop-by-hop relay of keys along VIRT links.

Protocol (relay.proto; wire and MAC in mac.py; route encoding in routes.py)
--------------------------------------------------------------------------
The origin (an end node of the VIRT link whose SAE called enc_keys) relays N fresh keys to the
other end (the target):

1. **Prepare**, origin -> target, hop by hop, nested (each node answers after its downstream did).
   Every sender picks the PHYS link to its next hop and *reserves* the link keys the hop will take
   (pad + MAC key, `link_keys_needed`) against the free keys of its master-parity half; nothing is
   taken from the key store. Both ends reserve room for N keys in their relay key association.
   The receiver of each hop checks that the caller is the previous hop of the route and waits
   (bounded) until its copy of the link key stream reaches the keys the sender will use. Any
   failure (no route, link key short, store full, unknown neighbour) unwinds every reservation
   upstream: nothing is consumed anywhere. Reservations expire after `PREPARE_TTL_S`.
2. **Commit**, origin -> target, nested the same way. Every sender takes its reserved link keys
   (`take_for_master`, oldest first), pads the keys and tags the message; the receiver takes
   exactly the named link keys (`take_by_ids`, all or nothing), verifies the tag, decrypts and, as
   a sender, re-encrypts with its own next link's keys (one store transaction per hop, committed
   only if the tag verified: linkkeys.py). The target stores the keys durably in its
   relay association, then every node answers upstream; the origin stores its own copy and only
   then does enc_keys answer. A hop that fails takes nothing more and aborts the reservations
   downstream; hops before it have consumed their link keys (the price of a tampered message).

What the origin does (draw the keys, the route's rate, its own copy) is in `origin.py`.
An origin that has just relayed on a route prepares the next relay at once (`ready.py`): the next
request of at most that many keys runs the commit pass only, and may commit fewer keys than were
prepared (each hop takes the link keys of the keys sent and releases the rest of its reservation).

Each relayed bit consumes one link bit per hop, plus one 256-bit MAC key per message and hop
(with 256-bit link keys; other sizes round up to whole link keys). Relayed keys are stored with
local seqs of the origin's parity (0: `qkdl_local` end, 1: `qkdl_remote` end): both ends hold the
same key IDs, and only the origin's SAEs may take them with enc_keys, the other end's by ID.
Key bytes never leave this module except through the key store and the gRPC messages (encrypted).

Across administrative domains a key route is made of one segment per domain, each its own VIRT
link written by its own domain and ending at the border node (`qkdl_local`/`qkdl_remote` name only
that domain's nodes). Both segments list the same SAE pair in `qkdl_applications`; a border node that
is the target of one segment and an end of another with the same applications (`continuation`) does
not store the keys but sends them on under the other segment, as origin of that segment. The far end
stores them in its own segment's relay association: both ends hold the same key IDs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..keystore.errors import AssociationConflict, KeyStoreError, UnknownAssociation
from ..keystore.store import KeyStore
from ..keystore.types import Delivery, Stats, parse_key_id
from ..pki import CertPaths
from ..qkd015 import LinkConfig
from .errors import BadRelayMessage, LinkKeyShort, NoRoute, NotNeighbour, RelayError, RelayStoreFull, UnknownRelay
from .linkkeys import LinkKeys
from .mac import TAG_BYTES, authenticated_bytes, link_keys_needed, split_material, wc_tag, wc_verify, xor
from .origin import RELAY_KEY_SIZE_BITS, Origin
from .ready import ReadyRelays
from .routes import RelayRoute, TokenBucket, routes_from_links
from .service import CALL_TIMEOUT_S, Neighbour, NeighbourChannels, RelayServer, pb
from .tails import StreamTails

log = logging.getLogger(__name__)

PREPARE_TTL_S = 30.0
LINK_SEQ_WAIT_S = 1.0
MAX_KEYS_PER_RELAY = 4096
MAX_SLOTS = 64  # commits one relay prepared ahead may carry
MAX_HOPS = 64

Entropy = Callable[[int], Awaitable[bytes]]
LinkProvider = Callable[[], dict[str, str]]
"""PHYS link key associations of this node in service: qkdl_id -> remote qkdn_id."""


@dataclass
class Pending:
    """A prepared relay at this node: what was reserved, where the keys come from and go."""

    relay_id: str
    route_id: str
    origin: str
    target: str
    hop: int
    n: int  # keys per commit (at most)
    key_size_bits: int
    parity: int  # seq parity of these keys in the relay association (the origin's)
    upstream: Neighbour | None
    in_link: str | None
    in_link_kb: int  # link key size of in_link, bytes (0 at the origin)
    ahead: bool = False  # prepared ahead of demand (ready.py): may be committed with fewer keys
    slots: int = 1  # commits left (more than one only if prepared ahead)
    downstream: Neighbour | None = None
    out_link: str | None = None
    out_link_kb: int = 0
    out_link_keys: int = 0  # reserved, not yet taken (for all the slots left)
    room: int = 0  # reserved room in the relay association (ends only; for all the slots left)
    hops: int = 0  # hops from this node to the target
    # a border node stitching two domains' segments sends the keys on under another route:
    out_route: str | None = None
    out_origin: str | None = None
    out_target: str | None = None
    intent: asyncio.Future[None] | None = None  # the durable intent of this hop's out keys, until taken
    revoked: bool = False  # (origin, prepared ahead) revoked while its prepare was under way
    revoking: asyncio.Future[bool] | None = None  # (prepared ahead) the question upstream, once asked
    expires: float = field(default_factory=lambda: time.monotonic() + PREPARE_TTL_S)


async def _urandom(n: int) -> bytes:
    return os.urandom(n)


class Forwarder(Origin):
    """Relays keys between this node's key store and its neighbours' forwarders."""

    def __init__(self, node_name: str, node_id: str, store: KeyStore, pki: CertPaths, *,
                 neighbours: Iterable[Neighbour], links: LinkProvider,
                 entropy: Entropy | None = None) -> None:
        self.node_name = node_name
        self.node_id = node_id
        self.store = store
        self.pki = pki
        self.links = links
        self.entropy: Entropy = entropy or _urandom
        self.neighbours: dict[str, Neighbour] = {nb.name: nb for nb in neighbours}
        self._by_id = {nb.node_id: nb for nb in self.neighbours.values()}
        self.routes: dict[str, RelayRoute] = {}
        self.pending: dict[str, Pending] = {}
        self._reserved_room: Counter[str] = Counter()  # relay assoc -> keys of room reserved
        self._buckets: dict[str, tuple[int, TokenBucket]] = {}
        self._ingest_locks: dict[str, asyncio.Lock] = {}
        self._assoc_ready: set[str] = set()
        self.committing: set[str] = set()  # relays whose commit pass runs through this node now
        self.ready = ReadyRelays(self)
        self.channels = NeighbourChannels(pki, on_broken=self.ready.neighbour_lost)
        self.counters: Counter[str] = Counter()  # numbers only: relays, keys, link keys, failures
        self.tails = StreamTails(store, node_name, links, lambda: self.neighbours, self.channels, self.counters)
        self.server = RelayServer.create(pki, node_name, lambda: self.neighbours, {
            "prepare": self.handle_prepare, "commit": self.handle_commit, "abort": self.handle_abort,
            "revoke": self.ready.handle_revoke, "tails": self.tails.handle})
        self.port = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.linkkeys = LinkKeys(store, node_name, self.counters)

    @property
    def where(self) -> str:
        return f"node {self.node_name}"

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.port = await self.server.start(host, port)
        self._sweeper = asyncio.create_task(self._sweep(), name="forwarder-sweeper")
        self._spawn(self.tails.run())
        log.info("key forwarder of %s on %s:%d (%d neighbours)", self.node_name, host, self.port,
                 len(self.neighbours))
        return self.port

    async def stop(self) -> None:
        try:  # neighbours release what this node prepared ahead
            await asyncio.wait_for(self.ready.close(), 2)
        except TimeoutError:
            pass
        await self.server.stop(5)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channels.close()
        close = getattr(self.entropy, "close", None)
        if close is not None:
            await close()

    def idle(self) -> bool:
        """No relay in progress here: every relay held is one prepared ahead (ready.py), and the
        reservations (link keys, relay store room) are exactly theirs."""
        held = [*self.pending.values(), *self.ready.relays()]
        if self.committing or self.ready.busy or not all(p.ahead for p in held):
            return False
        room: Counter[str] = Counter()
        for p in held:
            room[p.route_id] += p.room
        return +self.linkkeys.reserved == +self.ahead_link_keys() and +self._reserved_room == +room

    def ahead_link_keys(self) -> Counter[str]:
        """Link keys reserved (and announced by intents) for relays prepared ahead, per link."""
        held: Counter[str] = Counter()
        for p in [*self.pending.values(), *self.ready.relays()]:
            if p.ahead and p.out_link is not None:
                held[p.out_link] += p.out_link_keys
        return held

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self.ready.maintain(now)
            for rid, p in list(self.pending.items()):
                if p.expires < now:
                    del self.pending[rid]
                    self._release(p)
                    self.counters["reservations_expired"] += 1
                    log.warning("%s: relay %s on route %s was prepared but never committed: reservation "
                                "released after %.0f s", self.where, rid, p.route_id, PREPARE_TTL_S)

    # -- routes (from the SDN agent) -----------------------------------------------------------------
    def set_routes(self, links: Iterable[LinkConfig]) -> None:
        """Replace the route table with the VIRT links of the running datastore."""
        routes, skipped = routes_from_links(self.node_id, links)
        for why in skipped:
            log.warning("%s: ignoring VIRT link %s", self.where, why)
        self.routes = routes
        for rid in list(self._buckets):
            if rid not in routes or routes[rid].bandwidth_bps != self._buckets[rid][0]:
                del self._buckets[rid]
        self.ready.routes_changed()
        ends = [r for r in routes.values() if r.is_end(self.node_id) and r.route_id not in self._assoc_ready]
        if ends:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return
            self._spawn(self._ensure_all(ends))

    async def _ensure_all(self, routes: list[RelayRoute]) -> None:
        for r in routes:
            try:
                await self._ensure_assoc(r)
            except RelayError as err:
                log.error("%s", err.message)

    async def _ensure_assoc(self, route: RelayRoute) -> None:
        """The relay key association of a route this node ends (same ID as the VIRT link)."""
        if route.route_id in self._assoc_ready:
            return
        parity = 0 if self.node_id == route.local_end else 1
        try:
            await asyncio.to_thread(
                self.store.add_association, route.route_id, self.node_id, route.other_end(self.node_id),
                master_parity=parity, kind="relay", key_size_bits=RELAY_KEY_SIZE_BITS,
            )
        except AssociationConflict:
            raise NoRoute(f"{self.where}: key association {route.route_id} exists with other parameters") from None
        self._assoc_ready.add(route.route_id)

    def end_route(self, assoc_id: str) -> RelayRoute | None:
        """The route of a relay association this node ends, or None."""
        r = self.routes.get(assoc_id)
        return r if r is not None and r.is_end(self.node_id) else None

    def route_to(self, node_id: str | None, local_sae: str, remote_sae: str) -> str | None:
        """A route from this node to `node_id` that the SAE pair may use (lowest qkdl_id first); else
        a route ending here that names both SAEs in its applications: a domain's segment of a
        cross-domain route, continued at its other end (a border node) by the next domain's."""
        ends = [self.routes[rid] for rid in sorted(self.routes) if self.routes[rid].is_end(self.node_id)]
        for r in ends:
            if r.other_end(self.node_id) == node_id and r.allows(local_sae, remote_sae):
                return r.route_id
        for r in ends:
            if r.applications and r.allows(local_sae, remote_sae):
                return r.route_id
        return None

    def continuation(self, route: RelayRoute, arriving_from: str) -> RelayRoute | None:
        """At a border node that ends `route`: the next domain's segment of the same end-to-end key
        route, i.e. another route ending here with the same (explicit) applications, leading elsewhere."""
        if not route.applications:
            return None
        for rid in sorted(self.routes):
            r = self.routes[rid]
            if rid != route.route_id and r.is_end(self.node_id) and r.applications == route.applications \
                    and r.other_end(self.node_id) != arriving_from:
                return r
        return None

    # -- reservations ---------------------------------------------------------------------------------
    def free_link_keys(self, link_id: str) -> int:
        """Master-parity link keys of a link association not reserved by a prepared relay."""
        return self.linkkeys.free(link_id)

    def _release(self, p: Pending) -> None:
        if p.out_link is not None and p.out_link_keys:
            self.linkkeys.release(p.out_link, p.out_link_keys)
            p.out_link_keys = 0
        if p.intent is not None:  # not taken: the intent goes (after its write, if still running)
            self._spawn(self.linkkeys.withdraw(p.relay_id, p.intent))
            p.intent = None
        if p.room:
            self._reserved_room[p.route_id] -= p.room
            p.room = 0

    def _pick_link(self, down: Neighbour, n: int, key_bytes: int, slots: int) -> tuple[str, int, Stats]:
        best: tuple[int, str, int, Stats] | None = None
        for q, remote in self.links().items():
            if remote != down.node_id:
                continue
            try:
                st = self.store.stats(q)
            except UnknownAssociation:
                continue
            m = slots * link_keys_needed(n, key_bytes, st.key_size_bits // 8)
            spare = st.available_for_masters - self.linkkeys.reserved[q] - m
            if best is None or spare > best[0]:
                best = (spare, q, m, st)
        if best is None:
            raise NoRoute(f"{self.where}: no QKD link in service to next hop {down.name}")
        spare, q, m, st = best
        if spare < 0:
            raise LinkKeyShort(f"{self.where}: link key exhausted on the QKD link to {down.name} "
                               f"({spare + m} free link keys, the hop needs {m})")
        return q, m, st

    # -- phase 1: prepare --------------------------------------------------------------------------
    async def _prepare(self, req: pb.PrepareRequest, caller: Neighbour | None) -> Pending:
        where = self.where
        route = self.routes.get(req.route_id)
        if route is None:
            raise NoRoute(f"{where}: no VIRT link {req.route_id} (route missing on this node)")
        if {req.origin, req.target} != {route.local_end, route.remote_end} or req.origin == req.target:
            raise BadRelayMessage(f"{where}: origin/target are not the ends of route {req.route_id}")
        kb = req.key_size_bits // 8
        if not 1 <= req.keys <= MAX_KEYS_PER_RELAY or req.key_size_bits % 8 or not 0 < kb <= 8192 \
                or req.hop >= MAX_HOPS or caller is not None and req.hop < 1 or req.link_seq < 0 \
                or not 0 <= req.slots <= (MAX_SLOTS if req.ahead else 1) \
                or parse_key_id(req.relay_id) is None or req.relay_id in self.pending:
            raise BadRelayMessage(f"{where}: malformed or duplicate prepare")
        upstream_id, downstream_id = route.hops_towards(req.target)
        slots = max(req.slots, 1)
        in_link: str | None = None
        link_kb = 0
        if caller is None:
            if req.origin != self.node_id or upstream_id is not None:
                raise BadRelayMessage(f"{where}: not the origin end of route {req.route_id}")
        else:
            if caller.node_id != upstream_id:
                raise NotNeighbour(f"{where}: {caller.name} is not the previous hop of route {req.route_id}")
            in_link = req.link_id
            if self.links().get(in_link) != caller.node_id:
                raise BadRelayMessage(f"{where}: {in_link} is not a QKD link with {caller.name} in service")
            link_kb = self.store.stats(in_link).key_size_bits // 8
            if req.link_keys != slots * link_keys_needed(req.keys, kb, link_kb):
                raise BadRelayMessage(f"{where}: {req.link_keys} link keys cannot carry {req.keys} keys "
                                      f"{slots} times")
            await self._await_link_seq(in_link, req.link_seq, caller.name)
        p = Pending(req.relay_id, req.route_id, req.origin, req.target, req.hop, req.keys, req.key_size_bits,
                    0 if req.origin == route.local_end else 1, caller, in_link, link_kb, req.ahead, slots)
        onward = self.continuation(route, req.origin) if self.node_id == req.target and caller else None
        try:
            if onward is not None:  # a border node: the keys go on under the next domain's segment
                return await self._prepare_onward(p, onward)
            if route.is_end(self.node_id):
                await self._ensure_assoc(route)
                st = self.store.stats(route.route_id)
                if req.key_size_bits != st.key_size_bits:
                    raise BadRelayMessage(f"{where}: route {route.route_id} relays {st.key_size_bits}-bit keys")
                room, needed = st.capacity - st.available_total - self._reserved_room[route.route_id], p.n * slots
                if room < needed:
                    raise RelayStoreFull(f"{where}: relay key store of route {route.route_id} has room for "
                                         f"{max(room, 0)} keys, {needed} needed")
                self._reserved_room[route.route_id] += needed
                p.room = needed
            if self.node_id == req.target:
                if downstream_id is not None:
                    raise BadRelayMessage(f"{where}: route {req.route_id} continues beyond its end")
                self.pending[p.relay_id] = p
                return p
            return await self._prepare_downstream(p, downstream_id)
        except BaseException:
            self.pending.pop(p.relay_id, None)
            self._release(p)
            raise

    async def _prepare_onward(self, p: Pending, onward: RelayRoute) -> Pending:
        p.out_route, p.out_origin = onward.route_id, self.node_id
        p.out_target = onward.other_end(self.node_id)
        return await self._prepare_downstream(p, onward.hops_towards(p.out_target)[1])

    async def _prepare_downstream(self, p: Pending, downstream_id: str | None) -> Pending:
        """Reserve this hop's link keys and prepare the rest of the path (nested)."""
        route_id = p.out_route or p.route_id
        down = self._by_id.get(downstream_id or "")
        if down is None:
            raise NoRoute(f"{self.where}: next hop {downstream_id} of route {route_id} is not a neighbour")
        out_link, m, st = self._pick_link(down, p.n, p.key_size_bits // 8, p.slots)
        # the receiver must hold the keys up to the last one this relay may take (after those reserved before it)
        ahead_of_it = self.linkkeys.reserved[out_link]
        self.linkkeys.reserve(out_link, m)
        p.downstream, p.out_link, p.out_link_keys = down, out_link, m
        p.out_link_kb = st.key_size_bits // 8
        self.pending[p.relay_id] = p
        link_seq = await asyncio.to_thread(self.store.own_seq, out_link, ahead_of_it + m)
        nxt = pb.PrepareRequest(
            relay_id=p.relay_id, route_id=route_id, origin=p.out_origin or p.origin,
            target=p.out_target or p.target, hop=p.hop + 1, link_id=out_link, keys=p.n,
            key_size_bits=p.key_size_bits, link_keys=m, link_seq=st.last_seq if link_seq is None else link_seq,
            ahead=p.ahead, slots=p.slots if p.slots > 1 else 0,
        )
        # the intent is written while the prepare travels on: the path's fsyncs overlap
        # (a local reference: the sweeper may release an expired reservation meanwhile, intent and all)
        intent = p.intent = asyncio.ensure_future(self.linkkeys.intend(p.relay_id, out_link, m, down.name))
        reply = await self.channels.call(down, "prepare", nxt, CALL_TIMEOUT_S)
        p.hops = reply.hops + 1
        try:
            await intent
        except RelayError:
            p.intent = None
            self._spawn(self._abort_downstream(p, "intent not recorded"))
            raise
        return p

    async def _await_link_seq(self, link_id: str, seq: int, peer: str) -> None:
        """Wait until this end of the link has ingested the key stream up to `seq` (bounded)."""
        deadline = time.monotonic() + LINK_SEQ_WAIT_S
        while (have := self.store.stats(link_id).last_seq) < seq:
            if time.monotonic() > deadline:
                raise LinkKeyShort(f"{self.where}: link key stream with {peer} is behind the sender's "
                                   f"(seq {have}, {seq} needed)")
            await asyncio.sleep(0.002)

    async def handle_prepare(self, req: pb.PrepareRequest, caller_name: str) -> pb.PrepareReply:
        self.counters["prepares_handled"] += 1
        p = await self._prepare(req, self.neighbours[caller_name])
        return pb.PrepareReply(hops=p.hops)

    # -- phase 2: commit ---------------------------------------------------------------------------
    async def handle_commit(self, msg: pb.RelayHop, caller_name: str) -> pb.CommitReply:
        p = self.pending.pop(msg.relay_id, None)
        if p is None or p.expires < time.monotonic():
            raise UnknownRelay(f"{self.where}: relay {msg.relay_id} is not prepared here (or expired)")
        self.committing.add(p.relay_id)
        done = False
        try:
            if p.upstream is None or p.upstream.name != caller_name:
                raise NotNeighbour(f"{self.where}: {caller_name} is not the previous hop of relay {p.relay_id}")
            n, kb = len(msg.key_ids), p.key_size_bits // 8
            if (msg.route_id, msg.origin, msg.target, msg.hop, msg.link_id, msg.key_size_bits) != \
                    (p.route_id, p.origin, p.target, p.hop, p.in_link, p.key_size_bits) \
                    or not (n == p.n or p.ahead and 1 <= n < p.n) \
                    or len(msg.link_key_ids) != link_keys_needed(n, kb, p.in_link_kb) \
                    or len(msg.ciphertext) != n * kb or len(msg.tag) != TAG_BYTES \
                    or any(parse_key_id(k) is None for k in msg.key_ids):
                raise BadRelayMessage(f"{self.where}: relay message does not match the prepared relay")
            data = authenticated_bytes(
                relay_id=msg.relay_id, route_id=msg.route_id, origin=msg.origin, target=msg.target,
                hop=msg.hop, link_id=msg.link_id, key_size_bits=msg.key_size_bits,
                link_key_ids=msg.link_key_ids, key_ids=msg.key_ids, ciphertext=msg.ciphertext,
            )

            def verify(material: bytes) -> bool:
                return wc_verify(split_material(material, n * kb)[0], data, msg.tag)

            assert p.in_link is not None
            material, taken, ticket = await self.linkkeys.take_hop(
                p.in_link, list(msg.link_key_ids), caller_name, self._out(p, n), verify, p.relay_id, self._per_slot(p))
            self._taken(p)
            plain = xor(msg.ciphertext, split_material(material, n * kb)[1])
            keys = [plain[i * kb:(i + 1) * kb] for i in range(n)]
            if self.node_id == p.target and p.out_route is None:
                await self._store(p, list(msg.key_ids), keys)  # durable: so is the take before it
                self.counters["relays_stored"] += 1
                self.counters["keys_terminated"] += n
                done = True
                return pb.CommitReply(stored=n)
            # the take becomes durable while the next hops work, before this node answers upstream
            durable = asyncio.ensure_future(self.linkkeys.barrier(ticket))
            try:
                reply = await self._forward(p, list(msg.key_ids), keys, taken)
            finally:
                await durable
            self.counters["relays_forwarded"] += 1
            self.counters["keys_forwarded"] += n
            done = True
            return reply
        except RelayError as err:
            self.counters["relays_failed"] += 1
            self.counters["failed:" + err.kind] += 1
            if p.downstream is not None:
                self._spawn(self._abort_downstream(p, "upstream hop failed"))
            raise
        finally:
            self.committing.discard(p.relay_id)
            if done and p.slots and p.expires > time.monotonic():
                self.pending[p.relay_id] = p  # prepared ahead, with commits left
            else:
                self._release(p)

    def _out(self, p: Pending, n: int) -> tuple[str, int, str] | None:
        """What this hop takes for the next one to carry n keys: (link, link keys, next hop)."""
        if p.downstream is None or p.out_link is None:
            return None
        return p.out_link, link_keys_needed(n, p.key_size_bits // 8, p.out_link_kb), p.downstream.name

    @staticmethod
    def _per_slot(p: Pending) -> int:
        """Link keys reserved here for one commit of p."""
        return p.out_link_keys // p.slots if p.slots else 0

    def _taken(self, p: Pending) -> None:
        """One commit's link keys are taken, its part of the intent spent with them: its reservation
        (for as many keys as prepared, maybe more than sent) goes."""
        per_slot = self._per_slot(p)
        if p.out_link is not None and per_slot:
            self.linkkeys.release(p.out_link, per_slot)
        p.out_link_keys -= per_slot
        p.slots -= 1
        if not p.slots:
            p.intent = None  # spent

    async def handle_abort(self, req: pb.AbortRequest, caller_name: str) -> pb.AbortReply:
        p = self.pending.get(req.relay_id)
        if p is not None and p.upstream is not None and p.upstream.name == caller_name:
            del self.pending[req.relay_id]
            self._release(p)
            if p.downstream is not None:
                await self._abort_downstream(p, req.reason)
        return pb.AbortReply()

    async def _abort_downstream(self, p: Pending, reason: str) -> None:
        assert p.downstream is not None
        try:
            await self.channels.call(p.downstream, "abort", pb.AbortRequest(
                relay_id=p.relay_id, route_id=p.out_route or p.route_id, reason=reason[:200]), CALL_TIMEOUT_S)
        except RelayError as err:  # reservations downstream expire on their own
            log.info("abort of relay %s towards %s: %s", p.relay_id, p.downstream.name, err.message)

    async def _forward(self, p: Pending, ids: list[str], keys: list[bytes],
                       taken: Delivery | None = None) -> pb.CommitReply:
        """Pad and tag the keys with this hop's link keys (taken here unless `taken`), send them on."""
        assert p.downstream is not None and p.out_link is not None
        if taken is None:  # the origin: its store commits durably once the far end has the keys
            taken = (await self.linkkeys.take_hop(None, [], None, self._out(p, len(keys)), None, p.relay_id,
                                                  self._per_slot(p)))[1]
            self._taken(p)
        payload = b"".join(keys)
        mac_key, pad = split_material(b"".join(k for _, k in taken), len(payload))
        msg = pb.RelayHop(relay_id=p.relay_id, route_id=p.out_route or p.route_id, origin=p.out_origin or p.origin,
                          target=p.out_target or p.target, hop=p.hop + 1, link_id=p.out_link,
                          key_size_bits=p.key_size_bits, link_key_ids=[kid for kid, _ in taken],
                          key_ids=ids, ciphertext=xor(payload, pad))
        msg.tag = wc_tag(mac_key, authenticated_bytes(
            relay_id=msg.relay_id, route_id=msg.route_id, origin=msg.origin, target=msg.target, hop=msg.hop,
            link_id=msg.link_id, key_size_bits=msg.key_size_bits, link_key_ids=msg.link_key_ids,
            key_ids=msg.key_ids, ciphertext=msg.ciphertext))
        return await self.send_commit(p.downstream, msg)

    async def send_commit(self, nb: Neighbour, msg: pb.RelayHop) -> pb.CommitReply:
        """Send one relay hop (a separate method so that tests can play the attacker on the wire)."""
        return await self.channels.call(nb, "commit", msg, CALL_TIMEOUT_S)

    # -- relay key associations ----------------------------------------------------------------------
    async def _store(self, p: Pending, ids: list[str], keys: list[bytes]) -> None:
        """Ingest relayed keys into this end's relay association, with local seqs of their parity."""
        lock = self._ingest_locks.setdefault(p.route_id, asyncio.Lock())
        async with lock:
            last = self.store.stats(p.route_id).last_seq
            first = last + 1 if (last + 1) % 2 == p.parity else last + 2
            rows = [(kid, first + 2 * i, key) for i, (kid, key) in enumerate(zip(ids, keys, strict=True))]
            try:
                stored = await asyncio.to_thread(self.store.ingest, p.route_id, rows)
            except KeyStoreError as err:
                raise RelayStoreFull(f"{self.where}: storing relayed keys failed: {err.message}") from None
        room = min(p.room, p.n)  # this commit's
        self._reserved_room[p.route_id] -= room
        p.room -= room
        self.counters["keys_stored"] += stored
        if stored != len(rows):
            raise RelayStoreFull(f"{self.where}: relay key store of route {p.route_id} took {stored} of {len(rows)} keys")
