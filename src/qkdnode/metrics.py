"""The node's Prometheus metrics: a per-process registry and a small HTTP server for `GET /metrics`.

Two kinds of figures (README "Telemetry"):

* **Read at scrape time** from the live subsystems, so a scrape shows exactly what the node holds
  now: link figures from the key plane's modules (`qkd_link_*`), key store levels per association
  (`qkd_keystore_*`), the key forwarder's own counters (`qkd_relay_*`) and the open NETCONF
  sessions (`qkd_netconf_sessions`).
* **Counted at the event**, by hooks the subsystems call: ETSI 014 requests (an aiohttp middleware
  on the 014 app: counted when the handler returns its response, before the bytes leave), ETSI 004
  calls (a gRPC server interceptor, likewise), NETCONF RPCs (a callback of the NETCONF session).
  The `sae` label is the subject CN of the client certificate, the identity the APIs themselves
  use; "" when there is none.

Every metric carries the label `node` (the node's name). Only numbers are exported: no key bytes,
no key IDs. The registry is per `NodeMetrics` (not prometheus_client's global one), so several
nodes may live in one process (tests).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .keystore.etsi014 import DELIVERED_KEYS
from .pki import peer_common_name

if TYPE_CHECKING:
    from .keyplane import KeyPlane
    from .netconf.server import NetconfServer

log = logging.getLogger(__name__)

ETSI014_ENDPOINTS = frozenset({"status", "enc_keys", "dec_keys"})
ETSI014_PREFIX = "/api/v1/keys/"
ETSI004_SERVICE = "Etsi004"  # the application service of etsi004.proto (not Etsi004Peer)
RELAY_DIRECTIONS = {"originated": "keys_originated", "forwarded": "keys_forwarded",
                    "terminated": "keys_terminated"}
RELAY_FAILURE_PREFIX = "failed:"  # forwarder counters "failed:<kind>" (kind = the 014 reason)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def etsi014_endpoint(path: str) -> str | None:
    """status | enc_keys | dec_keys for a 014 key request path, else None."""
    if not path.startswith(ETSI014_PREFIX):
        return None
    last = path.rsplit("/", 1)[-1]
    return last if last in ETSI014_ENDPOINTS and path.count("/") == 5 else None


class _LiveCollector(Collector):
    """Figures read from the node's subsystems when Prometheus scrapes."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        yield from self._links(m)
        yield from self._store(m)
        yield from self._relay(m)
        sessions = GaugeMetricFamily("qkd_netconf_sessions", "Open NETCONF sessions", labels=["node"])
        if m.netconf is not None:
            sessions.add_metric([m.node], len(m.netconf.sessions))
        yield sessions

    def _links(self, m: NodeMetrics) -> Iterator[GaugeMetricFamily]:
        node = m.node
        skr = GaugeMetricFamily("qkd_link_skr_bps", "Secret key rate of a PHYS link (bit/s)",
                                labels=["node", "qkdl_id", "peer"])
        qber = GaugeMetricFamily("qkd_link_qber_ratio", "QBER of a DV PHYS link (fraction)",
                                 labels=["node", "qkdl_id"])
        snr = GaugeMetricFamily("qkd_link_snr_db", "SNR of a CV PHYS link (dB)", labels=["node", "qkdl_id"])
        loss = GaugeMetricFamily("qkd_link_loss_db", "Channel loss of a PHYS link (dB)", labels=["node", "qkdl_id"])
        up = GaugeMetricFamily("qkd_link_up", "PHYS link up (1) or down (0)", labels=["node", "qkdl_id"])
        kp = m.keyplane
        if kp is not None:
            names = m.peer_names()
            for qkdl_id, lr in sorted(kp.links.items()):
                module = lr.runtime.module
                if module is None:
                    continue
                st = module.status()
                remote = lr.link.remote_node or ""
                skr.add_metric([node, qkdl_id, names.get(remote, remote)], st.skr_bps)
                if st.qber is not None:
                    qber.add_metric([node, qkdl_id], st.qber)
                if st.snr is not None and st.snr > 0:
                    snr.add_metric([node, qkdl_id], 10 * math.log10(st.snr))
                loss.add_metric([node, qkdl_id], st.loss_db)
                up.add_metric([node, qkdl_id], 1.0 if st.up else 0.0)
        yield from (skr, qber, snr, loss, up)

    def _store(self, m: NodeMetrics) -> Iterator[Any]:
        avail = GaugeMetricFamily("qkd_keystore_available_bits",
                                  "Key bits in stock in a key association (both halves)", labels=["node", "qkdl_id"])
        delivered = CounterMetricFamily("qkd_keystore_delivered_bits",
                                        "Key bits delivered from a key association", labels=["node", "qkdl_id"])
        store = m.keyplane.store if m.keyplane is not None else None
        if store is not None:
            for a in sorted(store.associations(), key=lambda a: a.assoc_id):
                try:
                    s = store.stats(a.assoc_id)
                except Exception:  # removed between the listing and the read
                    continue
                avail.add_metric([m.node, a.assoc_id], s.stored_bits)
                delivered.add_metric([m.node, a.assoc_id], s.delivered * s.key_size_bits)
        yield from (avail, delivered)

    def _relay(self, m: NodeMetrics) -> Iterator[Any]:
        keys = CounterMetricFamily("qkd_relay_keys", "Keys relayed by the key forwarder",
                                   labels=["node", "direction"])
        failures = CounterMetricFamily("qkd_relay_failures", "Key relays that failed, by reason",
                                       labels=["node", "reason"])
        fwd = m.keyplane.forwarder if m.keyplane is not None else None
        counters: Mapping[str, int] = dict(fwd.counters) if fwd is not None else {}
        for direction, name in RELAY_DIRECTIONS.items():
            keys.add_metric([m.node, direction], counters.get(name, 0))
        for name, value in sorted(counters.items()):
            if name.startswith(RELAY_FAILURE_PREFIX):
                failures.add_metric([m.node, name[len(RELAY_FAILURE_PREFIX):]], value)
        yield from (keys, failures)


class NodeMetrics:
    """The metrics of one node: counters the subsystems' hooks increment, and live collectors."""

    def __init__(self, node: str, peers: Mapping[str, str] | None = None) -> None:
        disable_created_metrics()  # no `*_created` series (process-wide setting of prometheus_client)
        self.node = node
        self.peers = dict(peers or {})  # node_id -> node name, for the `peer` label
        self.keyplane: KeyPlane | None = None
        self.netconf: NetconfServer | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.etsi014_requests = Counter("qkd_etsi014_requests", "ETSI 014 requests answered",
                                        ["node", "sae", "endpoint", "code"], registry=r)
        self.etsi014_keys = Counter("qkd_etsi014_keys", "Keys delivered over ETSI 014",
                                    ["node", "sae", "endpoint"], registry=r)
        self.etsi014_seconds = Histogram("qkd_etsi014_request_seconds", "ETSI 014 request latency (s)",
                                         ["node", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.etsi004_requests = Counter("qkd_etsi004_requests", "ETSI 004 calls answered",
                                        ["node", "sae", "op", "code"], registry=r)
        self.etsi004_keys = Counter("qkd_etsi004_keys", "Key chunks delivered over ETSI 004",
                                    ["node", "sae"], registry=r)
        self.netconf_rpcs = Counter("qkd_netconf_rpcs", "NETCONF RPCs answered", ["node", "operation", "result"],
                                    registry=r)
        r.register(_LiveCollector(self))
        self._runner: web.AppRunner | None = None
        self.port = 0

    @classmethod
    def from_config(cls, node: str, extra: Mapping[str, Any]) -> NodeMetrics:
        """Peer names from the node config's `peers` (name -> {node_id}) and `neighbours`."""
        names: dict[str, str] = {}
        for name, info in (extra.get("peers") or {}).items():
            if isinstance(info, dict) and info.get("node_id"):
                names[str(info["node_id"])] = str(name)
        for nb in extra.get("neighbours") or []:
            if isinstance(nb, dict) and nb.get("node_id") and nb.get("name"):
                names[str(nb["node_id"])] = str(nb["name"])
        return cls(node, names)

    def watch(self, keyplane: KeyPlane | None = None, netconf: NetconfServer | None = None) -> None:
        """The live sources read at scrape time."""
        if keyplane is not None:
            self.keyplane = keyplane
        if netconf is not None:
            self.netconf = netconf
            netconf.rpc_observer = self.netconf_rpc

    def peer_names(self) -> dict[str, str]:
        return self.peers

    # -- hooks ------------------------------------------------------------------------------------
    def netconf_rpc(self, operation: str, ok: bool) -> None:
        self.netconf_rpcs.labels(self.node, operation, "ok" if ok else "error").inc()

    @property
    def etsi014_middleware(self) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
        """An aiohttp middleware for the 014 app (append to `app.middlewares` before start)."""

        @web.middleware
        async def observe(request: web.Request, handler: _Handler) -> web.StreamResponse:
            endpoint = etsi014_endpoint(request.path)
            if endpoint is None:
                return await handler(request)
            t0 = time.perf_counter()
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._etsi014(request, endpoint, exc.status, 0, t0)
                raise
            except BaseException:
                self._etsi014(request, endpoint, 500, 0, t0)
                raise
            self._etsi014(request, endpoint, response.status, int(response.get(DELIVERED_KEYS, 0)), t0)
            return response

        return observe

    def _etsi014(self, request: web.Request, endpoint: str, status: int, keys: int, t0: float) -> None:
        transport = request.transport
        sae = peer_common_name(transport.get_extra_info("peercert") if transport else None) or ""
        self.etsi014_seconds.labels(self.node, endpoint).observe(time.perf_counter() - t0)
        self.etsi014_requests.labels(self.node, sae, endpoint, str(status)).inc()
        if keys:
            self.etsi014_keys.labels(self.node, sae, endpoint).inc(keys)

    def etsi004_interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Etsi004Interceptor(self)

    def etsi004_call(self, sae: str, op: str, code: str, keys: int) -> None:
        self.etsi004_requests.labels(self.node, sae, op, code).inc()
        if keys:
            self.etsi004_keys.labels(self.node, sae).inc(keys)

    # -- exposition -------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve `GET /metrics` (plain HTTP); returns the bound port."""
        app = web.Application()

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("metrics of %s on http://%s:%d/metrics", self.node, host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _sae_of(context: grpc.aio.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else ""


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    return grpc.StatusCode.UNKNOWN.name


class _Etsi004Interceptor(grpc.aio.ServerInterceptor):
    """Counts the application calls of the GS 004 service: `code` is the GS status of the reply
    (0..8), or the gRPC status name when the call was refused (e.g. PERMISSION_DENIED)."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, _, op = str(handler_call_details.method).rpartition("/")
        if handler is None or handler.unary_unary is None or service.rsplit(".", 1)[-1].lstrip("/") != ETSI004_SERVICE:
            return handler
        inner = handler.unary_unary
        metrics = self.metrics

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            sae = _sae_of(context)
            try:
                response = await inner(request, context)
            except BaseException:
                metrics.etsi004_call(sae, op, _code_name(context), 0)
                raise
            status = int(getattr(response, "status", 0))
            keys = 1 if op == "GET_KEY" and status == 0 else 0  # one key chunk per successful GET_KEY
            metrics.etsi004_call(sae, op, str(status), keys)
            return response

        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def metric_values(text: str, name: str) -> Iterable[tuple[dict[str, str], float]]:
    """Samples of one metric from Prometheus text (for tests and the telemetry sampler)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                yield dict(s.labels), float(s.value)
