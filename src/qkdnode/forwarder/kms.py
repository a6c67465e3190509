"""How the forwarder plugs into the node's ETSI 014 server (keystore/etsi014.py, unchanged).

* `RelayResolver` is the server's `AssociationResolver`: direct neighbours first (the PHYS link
  associations of `NeighbourResolver`), then the VIRT links this node ends whose other end is the
  remote SAE's node and whose `qkdl_applications` admit the SAE pair, then a VIRT link ending here
  whose `qkdl_applications` name both SAEs (a domain's segment of a cross-domain route; the border
  node at its other end continues it, see `Forwarder.continuation`).
* `RelayCommitter` stands in for the server's `GroupCommitter`: an enc_keys (MasterRequest) on a
  relay association first relays `number` fresh keys to the far end (durable there, then here),
  then delivers from the store as usual; so enc_keys answers only once the far end can serve
  dec_keys. A MasterRequest on a link association must leave the link keys reserved by prepared
  relays alone (503 otherwise). Everything else passes straight through.
"""

from __future__ import annotations

from typing import Any

from ..keystore.committer import GroupCommitter
from ..keystore.errors import InsufficientKeys
from ..keystore.etsi014 import Etsi014Server, NeighbourResolver, SaeDirectory
from ..keystore.types import Delivery, DeliveryRequest, MasterRequest
from .relay import Forwarder


class RelayResolver:
    """Neighbour associations first, then relay routes ending here (see the module docstring)."""

    def __init__(self, directory: SaeDirectory, neighbours: NeighbourResolver, forwarder: Forwarder) -> None:
        self.directory = directory
        self.neighbours = neighbours
        self.forwarder = forwarder

    def association_for(self, local_sae: str, remote_sae: str) -> str | None:
        found = self.neighbours.association_for(local_sae, remote_sae)
        if found is not None or not self.directory.is_local(local_sae):
            return found
        return self.forwarder.route_to(self.directory.node_of(remote_sae), local_sae, remote_sae)


class RelayCommitter:
    """A `GroupCommitter` that relays before delivering on relay associations."""

    def __init__(self, inner: GroupCommitter, forwarder: Forwarder) -> None:
        self.inner = inner
        self.forwarder = forwarder

    async def deliver(self, request: DeliveryRequest) -> Delivery:
        if isinstance(request, MasterRequest):
            if self.forwarder.end_route(request.assoc_id) is not None:
                await self.forwarder.relay_for(request)
            elif request.assoc_id in self.forwarder.links():
                free = self.forwarder.free_link_keys(request.assoc_id)
                if free < request.number:
                    raise InsufficientKeys(request.number, max(free, 0))
        return await self.inner.deliver(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:  # counters (batches, requests) of the inner committer
        return getattr(self.inner, name)


def attach_to_014(server: Etsi014Server, forwarder: Forwarder, neighbours: NeighbourResolver) -> None:
    """Route the 014 server's resolution and deliveries through the forwarder (before `start()`)."""
    server.committer = RelayCommitter(server.committer, forwarder)  # type: ignore[assignment]
    server.resolver = RelayResolver(server.directory, neighbours, forwarder)
