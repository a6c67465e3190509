"""The orchestrator's Prometheus metrics (`GET /metrics` on its REST API; README "Telemetry").

Read at scrape time from the controller: `qkd_orch_routes`, `qkd_orch_route_reserved_bps{route}`,
`qkd_orch_links_up`. Counted at the event: `qkd_orch_reroutes_total` (one per route the healer
reinstalled on a new path: the controller's `route-healed` events) and
`qkd_orch_netconf_rpcs_total{node}` (every `<rpc>` the controller sent to a node, on its
management and its notification sessions: counted where the sessions' wire tap sees the message
leave). Every metric carries the label `domain`. A per-orchestrator registry, so several
controllers may run in one process.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .controller import Orchestrator
    from .session import WireRecorder

_RPC = re.compile(r"\s*(?:<\?xml[^>]*\?>\s*)?<(?:[\w.-]+:)?rpc[\s>/]")


def is_rpc(xml: str) -> bool:
    """A NETCONF message that is an `<rpc>` (not a hello)."""
    return _RPC.match(xml[:512]) is not None


class RpcCounter:
    """Stands in for the controller's wire recorder: counts the `<rpc>`s sent to each node and
    hands every message on to the recorder it replaced (if any). Thread-safe (worker threads)."""

    def __init__(self, counter: Counter, domain: str, inner: WireRecorder | None) -> None:
        self.counter = counter
        self.domain = domain
        self.inner = inner

    def record(self, node: str, direction: str, xml: str) -> None:
        if direction == "sent" and is_rpc(xml):
            self.counter.labels(self.domain, node).inc()
        if self.inner is not None:
            self.inner.record(node, direction, xml)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def __getattr__(self, name: str) -> Any:  # `messages` etc. of the replaced recorder
        if self.inner is None:
            raise AttributeError(name)
        return getattr(self.inner, name)


class _Live(Collector):
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def collect(self) -> Iterator[GaugeMetricFamily]:
        o = self.orch
        d = o.domain
        routes = GaugeMetricFamily("qkd_orch_routes", "Key routes the controller keeps", labels=["domain"])
        routes.add_metric([d], len(o.routes))
        reserved = GaugeMetricFamily("qkd_orch_route_reserved_bps",
                                     "Key rate reserved for a route over its paths (bit/s; 0 while down)",
                                     labels=["domain", "route"])
        for rid, r in sorted(o.routes.items()):
            reserved.add_metric([d, rid], 0 if r.status == "down" else sum(s.rate for s in r.segments))
        up = GaugeMetricFamily("qkd_orch_links_up", "PHYS links up in the domain", labels=["domain"])
        up.add_metric([d], sum(1 for views in o.model.phys_links().values() if o.model.link_up(views)))
        yield from (routes, reserved, up)


class OrchestratorMetrics:
    """Metrics of one orchestrator; `for_orchestrator` instruments it once (before `start()`, so
    that every NETCONF session it opens is counted)."""

    _by_orch: weakref.WeakKeyDictionary[Any, OrchestratorMetrics] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, orch: Orchestrator) -> None:
        disable_created_metrics()  # no `*_created` series (process-wide setting of prometheus_client)
        self.orch = orch
        self.registry = CollectorRegistry()
        self.reroutes = Counter("qkd_orch_reroutes", "Routes reinstalled on a new path by healing",
                                ["domain"], registry=self.registry)
        self.rpcs = Counter("qkd_orch_netconf_rpcs", "NETCONF RPCs sent to a node", ["domain", "node"],
                            registry=self.registry)
        self.reroutes.labels(orch.domain)
        for name in orch.sessions:
            self.rpcs.labels(orch.domain, name)
        self.registry.register(_Live(orch))
        orch.event_listeners.append(self._event)
        tap = RpcCounter(self.rpcs, orch.domain, orch.recorder)
        orch.recorder = tap  # type: ignore[assignment]  # notification sessions are made with it
        for session in orch.sessions.values():
            session.recorder = tap  # type: ignore[assignment]  # taps every session it (re)opens

    @classmethod
    def for_orchestrator(cls, orch: Orchestrator) -> OrchestratorMetrics:
        with cls._lock:
            m = cls._by_orch.get(orch)
            if m is None:
                m = cls._by_orch[orch] = cls(orch)
            return m

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "route-healed":
            self.reroutes.labels(self.orch.domain).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
