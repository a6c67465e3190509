"""Request limits of the ETSI 014 server: body size and a request rate per SAE.

The rate is a token bucket per calling SAE (the client certificate's CN): `rate` requests per
second with `burst` banked. ETSI GS QKD 014 has no 429, so a request beyond the rate is refused
with 503 and a `message` saying so (the status 014 uses for "cannot serve this now"); it consumes
nothing. Defaults are generous: they stop a runaway client, not a busy application.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .errors import KeyStoreError


class RateLimited(KeyStoreError):
    """The SAE sent more requests than its rate allows (ETSI 014: 503, nothing consumed)."""

    http_status = 503

    def __init__(self, sae: str, rate: float, burst: int) -> None:
        super().__init__(f"request rate of SAE {sae} exceeded ({rate:g}/s, burst {burst}): retry later",
                         [{"reason": "rate-limited", "rate": rate, "burst": burst}])


@dataclass(frozen=True)
class ApiLimits:
    max_body: int = 64 * 1024  # bytes of a request body; beyond: 400 with a message
    rate: float = 500.0  # requests per second per SAE ...
    burst: int = 1000  # ... with this burst

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> "ApiLimits":
        """From the node config's `etsi014:` section (`max_body`, `rate`, `burst`)."""
        section = section or {}
        out: dict[str, Any] = {}
        for name, kind in (("max_body", int), ("rate", float), ("burst", int)):
            if name in section:
                value = section[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"etsi014.{name}: {value!r} is not a positive number")
                out[name] = kind(value)
        return cls(**out)


class SaeRateLimiter:
    """One token bucket per SAE."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # SAE -> (tokens, stamp)
        self.refused = 0

    def check(self, sae: str) -> None:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(sae, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[sae] = (tokens, now)
            self.refused += 1
            raise RateLimited(sae, self.rate, self.burst)
        self._buckets[sae] = (tokens - 1.0, now)
        if len(self._buckets) > 10000:  # forget idle SAEs (full buckets)
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst - 1}
