"""An ETSI GS QKD 014 SAE client (HTTPS, mutual TLS with the SAE's certificate) that registers every
request in flight, so that a driver killing a node knows which requests the kill cut."""

from __future__ import annotations

import base64
import json
import ssl
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

REQUEST_TIMEOUT_S = 30.0


class Refused(Exception):
    """The node answered with an error status (400/401/503)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}

    def reasons(self) -> list[str]:
        return [str(d.get("reason", "")) for d in self.body.get("details") or [] if isinstance(d, dict)]


class Unreachable(Exception):
    """No answer: connection refused or reset, or timed out."""


@dataclass
class Flight:
    """One outstanding request and the nodes it involves; `cut` once one of them was killed meanwhile."""

    nodes: frozenset[str]
    start: dict[str, int]
    flights: Flights

    @property
    def cut(self) -> bool:
        return any(self.flights.kills[n] > self.start[n] for n in self.nodes)


@dataclass
class Flights:
    """The requests in flight, and how often each node was killed (a kill is counted before the
    signal is sent, so a request that fails because of it always sees it)."""

    kills: Counter[str] = field(default_factory=Counter)
    _live: dict[int, Flight] = field(default_factory=dict)

    @contextmanager
    def track(self, nodes: frozenset[str]) -> Iterator[Flight]:
        f = Flight(nodes, {n: self.kills[n] for n in nodes}, self)
        self._live[id(f)] = f
        try:
            yield f
        finally:
            del self._live[id(f)]

    def kill(self, node: str) -> int:
        """Count a kill of `node` (call before signalling); returns how many requests involve it."""
        self.kills[node] += 1
        return sum(1 for f in self._live.values() if node in f.nodes)


def sae_context(sae: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=sae["ca"])
    ctx.load_cert_chain(sae["cert"], sae["key"])
    return ctx


class SaeClient:
    """The 014 client of one SAE at its node (`network.json` `saes.<id>` and `nodes.<node>.etsi014.url`)."""

    def __init__(self, sae_id: str, sae: dict[str, str], url: str) -> None:
        self.sae_id = sae_id
        self.url = url
        self._ctx = sae_context(sae)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no keep-alive: a restarted node must not meet a connection its predecessor accepted
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ctx, force_close=True),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with self._http().request(method, f"{self.url}/api/v1/keys/{path}", json=body) as r:
                text = await r.text()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise Unreachable(f"not JSON ({status})") from exc
        if status != 200:
            raise Refused(status, data)
        return data

    @staticmethod
    def _keys(data: dict[str, Any]) -> list[tuple[str, bytes]]:
        return [(k["key_ID"], base64.b64decode(k["key"])) for k in data["keys"]]

    async def enc_keys(self, slave: str, number: int) -> list[tuple[str, bytes]]:
        return self._keys(await self._call("POST", f"{slave}/enc_keys", {"number": number}))

    async def dec_keys(self, master: str, key_ids: list[str]) -> list[tuple[str, bytes]]:
        return self._keys(await self._call("POST", f"{master}/dec_keys",
                                           {"key_IDs": [{"key_ID": k} for k in key_ids]}))

    async def status(self, slave: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", f"{slave}/status")
        return data
