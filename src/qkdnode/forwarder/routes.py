"""The relay route table of a node, built from the VIRT `qkd_link` entries of its 015 running datastore.

Encoding (see README.md, "Key relay routes"): one VIRT link per end-to-end key association, with
the same `qkdl_id` on every node of the path; `qkdl_local`/`qkdl_remote` name the first and the
last node of the path (the same on every node); `virt_prev_hop` is the neighbour towards
`qkdl_local`, `virt_next_hop` the neighbour towards `qkdl_remote` (absent at the ends);
`virt_bandwidth` (bit/s) limits the relayed key rate at the origin; `qkdl_applications` lists the
SAEs that may use the route as `sae_uuid(SAE ID)` (empty: any SAE of the two end nodes).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from ..qkd015 import LinkConfig

#: uuid5 namespace of SAE IDs in `qkdl_applications` (015 types them as yang:uuid). The
#: orchestrator uses the same constant (shared names, not shared code).
SAE_NAMESPACE = uuid.UUID("0b6d3c1e-8f4a-5e7b-9c2d-4a1f6e8b3d57")


def sae_uuid(sae_id: str) -> str:
    """An SAE ID as `qkdl_applications` holds it: itself if it is a UUID, else uuid5(SAE_NAMESPACE, ID)."""
    try:
        return str(uuid.UUID(sae_id))
    except ValueError:
        return str(uuid.uuid5(SAE_NAMESPACE, sae_id))


@dataclass(frozen=True)
class RelayRoute:
    """One VIRT link as seen from this node."""

    route_id: str
    local_end: str       # qkdl_local/qkdn_id: first node of the path
    remote_end: str      # qkdl_remote/qkdn_id: last node of the path
    prev_hop: str | None  # neighbour towards local_end
    next_hop: str | None  # neighbour towards remote_end
    bandwidth_bps: int | None
    applications: frozenset[str]

    def is_end(self, node_id: str) -> bool:
        return node_id in (self.local_end, self.remote_end)

    def other_end(self, node_id: str) -> str:
        return self.remote_end if node_id == self.local_end else self.local_end

    def hops_towards(self, target: str) -> tuple[str | None, str | None]:
        """(upstream, downstream) neighbours of this node for keys travelling to `target`."""
        if target == self.remote_end:
            return self.prev_hop, self.next_hop
        return self.next_hop, self.prev_hop

    def allows(self, sae_a: str, sae_b: str) -> bool:
        return not self.applications or (sae_uuid(sae_a) in self.applications
                                         and sae_uuid(sae_b) in self.applications)


def routes_from_links(node_id: str, links: Iterable[LinkConfig]) -> tuple[dict[str, RelayRoute], list[str]]:
    """Valid routes through this node from configured links; plus why others were skipped."""
    out: dict[str, RelayRoute] = {}
    skipped: list[str] = []
    for ln in links:
        if ln.link_type != "VIRT" or not ln.enabled:
            continue
        a, b = ln.local_node, ln.remote_node
        prev = ln.prev_hop or None
        nxt = ln.next_hops[0] if ln.next_hops else None
        problem = None
        if not a or not b or a == b:
            problem = "qkdl_local and qkdl_remote must name two different nodes"
        elif len(ln.next_hops) > 1:
            problem = "several virt_next_hop (multicast) are not supported"
        elif node_id == a and (prev is not None or nxt is None):
            problem = "at qkdl_local: virt_next_hop required, virt_prev_hop absent"
        elif node_id == b and (nxt is not None or prev is None):
            problem = "at qkdl_remote: virt_prev_hop required, virt_next_hop absent"
        elif node_id not in (a, b) and (prev is None or nxt is None):
            problem = "on the path: virt_prev_hop and virt_next_hop required"
        if problem:
            skipped.append(f"{ln.qkdl_id}: {problem}")
            continue
        assert a is not None and b is not None
        out[ln.qkdl_id] = RelayRoute(ln.qkdl_id, a, b, prev, nxt, ln.bandwidth or None,
                                     frozenset(x.lower() for x in ln.applications))
    return out, skipped


class TokenBucket:
    """Rate limit in bit/s with a burst of one second's worth (at least `min_burst` bits)."""

    def __init__(self, rate_bps: float, min_burst: float = 0.0) -> None:
        self.rate = float(rate_bps)
        self.capacity = max(self.rate, float(min_burst))
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, bits: float, max_wait: float) -> tuple[bool, float]:
        """Take `bits` if they are available within `max_wait` seconds: (True, seconds to wait first).
        Otherwise take nothing: (False, seconds until they would be; inf if above the burst)."""
        self._refill()
        if bits > self.capacity:
            return False, float("inf")
        wait = max(0.0, (bits - self.tokens) / self.rate)
        if wait > max_wait:
            return False, wait
        self.tokens -= bits  # may go below zero: the wait pays it back
        return True, wait

    def give_back(self, bits: float) -> None:
        self.tokens = min(self.capacity, self.tokens + bits)
