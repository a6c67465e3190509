"""A small ETSI GS QKD 014 client for one SAE: HTTPS with mutual TLS (the SAE's certificate,
the network CA verifies the KME), keep-alive connections, and a tally of what it asked and got.

The tally (`requests[(endpoint, code)]`, `keys[endpoint]`) is what the use case compares with the
node's `qkd_etsi014_requests_total{sae,endpoint,code}` and `qkd_etsi014_keys_total{sae,endpoint}`.
Key bytes are returned to the caller and never logged.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections import Counter
from typing import Any

import aiohttp


class Etsi014Error(Exception):
    """A 014 request that did not return keys: HTTP status, the KME's message and, for relay
    failures, `details[0].reason` (README "Key relay routes")."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(f"{status} {message}" + (f" ({reason})" if reason else ""))
        self.status = status
        self.message = message
        self.reason = reason

    @property
    def retryable(self) -> bool:
        """Key short for now (503, or 400 keys-not-available): asking again later may succeed."""
        return self.status == 503 or (self.status == 400 and "available" in self.message.lower())


class TransportError(Exception):
    """The KME could not be reached or answered something that is not ETSI 014 JSON."""


def sae_ssl_context(sae: dict[str, str]) -> ssl.SSLContext:
    """TLS client context of an SAE from network.json `saes[ID]`: its certificate, the network CA."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=sae["ca"])
    ctx.load_cert_chain(sae["cert"], sae["key"])
    return ctx


class Etsi014Client:
    """One SAE talking to its own KME (the node network.json attaches it to)."""

    def __init__(self, network: dict[str, Any], sae_id: str, *, limit: int = 8) -> None:
        sae = network["saes"].get(sae_id)
        if sae is None:
            raise KeyError(f"network.json lists no SAE {sae_id!r}")
        self.sae_id = sae_id
        self.node = str(sae["node"])
        self.url = str(network["nodes"][self.node]["etsi014"]["url"]) + "/api/v1/keys"
        self._ssl = sae_ssl_context(sae)
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self.requests: Counter[tuple[str, str]] = Counter()
        self.keys: Counter[str] = Counter()

    async def __aenter__(self) -> Etsi014Client:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit),
            timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, endpoint: str, peer: str, body: dict[str, Any] | None) -> dict[str, Any]:
        assert self._session is not None, "use `async with Etsi014Client(...)`"
        url = f"{self.url}/{peer}/{endpoint}"
        try:
            if body is None:
                resp_cm = self._session.get(url)
            else:
                resp_cm = self._session.post(url, json=body)
            async with resp_cm as r:
                status, text = r.status, await r.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"{self.sae_id} -> {self.node} {endpoint}: {type(exc).__name__}: {exc}") from exc
        self.requests[(endpoint, str(status))] += 1
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TransportError(f"{self.sae_id} -> {self.node} {endpoint}: {status} with a non-JSON body") from exc
        if status != 200:
            details = data.get("details") or [{}]
            reason = details[0].get("reason") if isinstance(details[0], dict) else None
            raise Etsi014Error(status, str(data.get("message", "")), reason)
        return data  # type: ignore[no-any-return]

    def _keys(self, endpoint: str, data: dict[str, Any]) -> list[tuple[str, bytes]]:
        out = [(str(k["key_ID"]), base64.b64decode(k["key"])) for k in data["keys"]]
        self.keys[endpoint] += len(out)
        return out

    async def status(self, slave: str) -> dict[str, Any]:
        return await self._call("status", slave, None)

    async def enc_keys(self, slave: str, number: int = 1) -> list[tuple[str, bytes]]:
        """`number` fresh keys shared with `slave`: [(key_ID, key bytes)]."""
        return self._keys("enc_keys", await self._call("enc_keys", slave, {"number": number}))

    async def dec_keys(self, master: str, key_ids: list[str]) -> list[tuple[str, bytes]]:
        """The keys `master` got with enc_keys, by ID."""
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        return self._keys("dec_keys", await self._call("dec_keys", master, body))

    def tally(self) -> dict[str, int]:
        """Client-side counts as Prometheus series names (see `prometheus.series`)."""
        from .prometheus import series

        out = {series("qkd_etsi014_requests_total", sae=self.sae_id, endpoint=e, code=c): n
               for (e, c), n in self.requests.items()}
        out |= {series("qkd_etsi014_keys_total", sae=self.sae_id, endpoint=e): n for e, n in self.keys.items()}
        return out
