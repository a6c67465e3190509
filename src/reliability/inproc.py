"""An in-process chain of KMSes for property tests: real SQLite key stores, real forwarders (gRPC, mutual
TLS), real ETSI 014 servers (HTTPS, mutual TLS) and ETSI 004 servers (gRPC) on 127.0.0.1; no NETCONF
and no QKD modules. Both ends of every link association ingest the same synthetic key stream, so every
count is exact.

Chain a - b - c; SAEs sae-a, sae-b, sae-c on a, b, c; the relay route a..c for (sae-a, sae-c); link
a-b serves 014 and 004 between sae-a and sae-b directly, and every relay over it.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.launcher import free_port
from qkdnode.forwarder import Forwarder, Neighbour, attach_to_014, sae_uuid
from qkdnode.keystore import Etsi014Server, KeyStore, NeighbourResolver, SaeDirectory
from qkdnode.keystore.etsi004 import Etsi004Kms, PeerKms, start_etsi004_server
from qkdnode.pki import CertificateAuthority, CertPaths, client_context, server_context
from qkdnode.qkd015 import LinkConfig

NAMES = ("a", "b", "c")
SAES = {"sae-a": "a", "sae-b": "b", "sae-c": "c"}


def store_snapshot(stores: Mapping[str, KeyStore]) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(node, association) -> (delivered, available_for_masters, available_for_peer) of every store."""
    out = {}
    for n, store in stores.items():
        for a in store.associations():
            s = store.stats(a.assoc_id)
            out[n, a.assoc_id] = (s.delivered, s.available_for_masters, s.available_for_peer)
    return out


@dataclass
class Kms:
    name: str
    node_id: str
    store: KeyStore
    fwd: Forwarder
    api: Etsi014Server
    etsi004: Etsi004Kms | None = None


@dataclass
class Chain:
    nodes: dict[str, Kms]
    certs: dict[str, CertPaths]
    link_ids: dict[frozenset[str], str]
    route_id: str
    _http: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def link(self, x: str, y: str) -> str:
        return self.link_ids[frozenset((x, y))]

    def snapshot(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        return store_snapshot({n: k.store for n, k in self.nodes.items()})

    def idle(self) -> bool:
        """No relay reservation or pending relay left at any node."""
        return all(k.fwd.idle() for k in self.nodes.values())

    async def call(self, node: str, sae: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if sae not in self._http:
            self._http[sae] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(self.certs[sae])))
        url = f"https://127.0.0.1:{self.nodes[node].api.port}/api/v1/keys/{path}"
        async with self._http[sae].request(method, url, json=body) as r:
            return r.status, json.loads(await r.text())

    async def enc(self, master: str, slave: str, n: int) -> tuple[int, Any]:
        return await self.call(SAES[master], master, "POST", f"{slave}/enc_keys", {"number": n})

    async def dec(self, slave: str, master: str, ids: list[str]) -> tuple[int, Any]:
        return await self.call(SAES[slave], slave, "POST", f"{master}/dec_keys",
                               {"key_IDs": [{"key_ID": k} for k in ids]})

    async def close(self) -> None:
        for s in self._http.values():
            await s.close()
        for k in self.nodes.values():
            await k.fwd.stop()
            await k.api.stop()
            if k.etsi004 is not None:
                await k.etsi004.stop()
            k.store.close()


def synthetic_stream(n: int) -> list[tuple[str, int, bytes]]:
    return [(str(uuid.uuid4()), s, os.urandom(32)) for s in range(n)]


async def make_chain(tmp: Path, link_keys: int = 20000, with_004: bool = True) -> Chain:
    ca = CertificateAuthority(tmp / "ca")
    certs = {n: ca.issue_server(n, tmp / "pki") for n in NAMES}
    certs.update({s: ca.issue_client(s, tmp / "pki") for s in SAES})
    ids = {n: str(uuid.uuid4()) for n in NAMES}
    ports = {n: free_port() for n in NAMES}
    stores = {n: KeyStore(tmp / n) for n in NAMES}
    links: dict[str, dict[str, str]] = {n: {} for n in NAMES}
    link_ids: dict[frozenset[str], str] = {}
    for x, y in zip(NAMES, NAMES[1:]):
        lid = str(uuid.uuid4())
        link_ids[frozenset((x, y))] = lid
        keys = synthetic_stream(link_keys)
        stores[x].add_association(lid, ids[x], ids[y], master_parity=0)
        stores[y].add_association(lid, ids[y], ids[x], master_parity=1)
        assert stores[x].ingest(lid, keys) == stores[y].ingest(lid, keys) == len(keys)
        links[x][lid], links[y][lid] = ids[y], ids[x]
    nodes: dict[str, Kms] = {}
    directory_map = {s: ids[node] for s, node in SAES.items()}
    for i, n in enumerate(NAMES):
        nbs = [Neighbour(o, ids[o], "127.0.0.1", ports[o]) for o in NAMES[max(i - 1, 0):i + 2] if o != n]
        fwd = Forwarder(n, ids[n], stores[n], certs[n], neighbours=nbs, links=lambda n=n: links[n])
        await fwd.start("127.0.0.1", ports[n])
        directory = SaeDirectory(ids[n], dict(directory_map))
        resolver = NeighbourResolver(directory, {remote: lid for lid, remote in links[n].items()})
        api = Etsi014Server(stores[n], directory, resolver, server_context(certs[n]))
        attach_to_014(api, fwd, resolver)
        await api.start()
        kms = Kms(n, ids[n], stores[n], fwd, api)
        if with_004 and n in ("a", "b"):
            kms.etsi004, _ = await start_etsi004_server(
                stores[n], directory, NeighbourResolver.from_store(directory, stores[n]), n, {}, certs[n])
        nodes[n] = kms
    if with_004:
        for x, y in (("a", "b"), ("b", "a")):
            e = nodes[x].etsi004
            other = nodes[y].etsi004
            assert e is not None and other is not None
            e.peers[y] = PeerKms(y, ids[y], f"127.0.0.1:{other.port}")
    route = str(uuid.uuid4())
    path = [ids[n] for n in NAMES]
    for i, n in enumerate(NAMES):
        nodes[n].fwd.set_routes([LinkConfig(
            route, "VIRT", True, path[0], None, path[-1], None, None, path[i - 1] if i else None,
            (path[i + 1],) if i < len(path) - 1 else (), None, (sae_uuid("sae-a"), sae_uuid("sae-c")))])
    chain = Chain(nodes, certs, link_ids, route)
    for _ in range(100):  # relay associations are created in the background
        if all(any(a.assoc_id == route for a in nodes[n].store.associations()) for n in ("a", "c")):
            break
        await asyncio.sleep(0.02)
    return chain
