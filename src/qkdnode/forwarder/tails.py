"""Settling the stream tails of this node's link key associations with its neighbours.

When a QKD module pair restarts, the keys one KMS had pulled from its module and the other had not
are stored at one end only (`keystore/tails.py`). Every `SETTLE_INTERVAL_S` each node asks the
neighbour at the other end of each of its links, over the forwarder's channel (`Tails`), how far it
holds each closed run of the link's key stream, and forgets its own keys beyond that, so that its
masters never hand out, and its relays never name, a key the neighbour does not hold. A run is
settled once the neighbour could answer (its own stream has gone past the run); both ends do it,
each for the keys it holds alone. Only seqs and counts cross the wire, never key material.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from ..keystore.errors import KeyStoreError, UnknownAssociation
from ..keystore.store import KeyStore
from .errors import BadRelayMessage, NotNeighbour, RelayError
from .service import CALL_TIMEOUT_S, Neighbour, NeighbourChannels, pb

log = logging.getLogger(__name__)

SETTLE_INTERVAL_S = 1.0
MAX_RUNS = 256  # runs per request


class StreamTails:
    """The tail settling of one node's forwarder (see the module docstring)."""

    def __init__(self, store: KeyStore, node_name: str, links: Callable[[], dict[str, str]],
                 neighbours: Callable[[], dict[str, Neighbour]], channels: NeighbourChannels,
                 counters: Counter[str]) -> None:
        self.store = store
        self.node_name = node_name
        self.links = links
        self.neighbours = neighbours
        self.channels = channels
        self.counters = counters
        self.settled: set[tuple[str, int]] = set()  # (link, run end) the neighbour holds up to
        self._looked: dict[str, int] = {}  # link -> its store's stream_breaks when every run was settled

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SETTLE_INTERVAL_S)
            try:
                await self.settle()
            except KeyStoreError as err:  # the next round asks again
                log.error("node %s: stream tails not settled: %s", self.node_name, err.message)

    async def settle(self) -> int:
        """One round over every link in service; returns how many keys were forgotten."""
        by_id = {nb.node_id: nb for nb in self.neighbours().values()}
        forgotten = 0
        for link_id, remote in sorted(self.links().items()):
            nb = by_id.get(remote)
            if nb is None:
                continue
            try:
                breaks = self.store.stream_breaks(link_id)
                if self._looked.get(link_id) == breaks:  # no run closed since all were settled
                    continue
                runs = await asyncio.to_thread(self.store.segment_ends, link_id)
            except UnknownAssociation:
                continue
            ask = [r for r in runs if (link_id, r[1]) not in self.settled][:MAX_RUNS]
            if not ask:
                self._looked[link_id] = breaks
                continue
            req = pb.TailsRequest(link_id=link_id, first=[f for f, _ in ask], last=[e for _, e in ask])
            try:
                reply = await self.channels.call(nb, "tails", req, CALL_TIMEOUT_S)
            except RelayError as err:
                log.info("node %s: stream tails of link %s not compared with %s: %s", self.node_name, link_id,
                         nb.name, err.message)
                continue
            for (first, end), known, high in zip(ask, reply.known, reply.high, strict=False):
                if not known:
                    continue
                if first - 1 <= high < end:
                    n = await asyncio.to_thread(self.store.forget, link_id, high, end)
                    forgotten += n
                    self.counters["link_keys_forgotten"] += n
                    log.warning("node %s: link %s: %d keys (seq %d..%d) were stored here only, %s never "
                                "stored them (the module pair restarted): forgotten", self.node_name, link_id, n,
                                high + 1, end, nb.name)
                    end = high
                self.settled.add((link_id, end))
        return forgotten

    async def handle(self, req: pb.TailsRequest, caller_name: str) -> pb.TailsReply:
        """How far this node holds the caller's runs of a link they share."""
        caller = self.neighbours().get(caller_name)
        if caller is None or self.links().get(req.link_id) != caller.node_id:
            raise NotNeighbour(f"node {self.node_name}: {caller_name} is not the other end of link {req.link_id}")
        if len(req.first) != len(req.last) or len(req.first) > MAX_RUNS \
                or any(f > e for f, e in zip(req.first, req.last)):
            raise BadRelayMessage(f"node {self.node_name}: malformed stream tails request")
        highs = await asyncio.to_thread(lambda: [self.store.high_water(req.link_id, f, e)
                                                 for f, e in zip(req.first, req.last)])
        return pb.TailsReply(known=[h is not None for h in highs], high=[h if h is not None else 0 for h in highs])
