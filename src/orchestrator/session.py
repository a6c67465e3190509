"""One persistent NETCONF session per node (ncclient), used from asyncio, plus its notifications.

ncclient is synchronous: every RPC runs in a worker thread, one at a time per node. The
orchestrator gives its sessions an executor with a thread per node, so that a transaction's RPCs
reach all its nodes at once (asyncio's default pool has only min(32, CPUs + 4) threads). A
session that broke is reopened on the next call (bounded by `connect_timeout`).
Notifications (RFC 5277) come over a second session per node, whose reader thread hands every
`<notification>` to the event loop; when that session dies the listener learns it
(`on_session_lost`) and it is reopened with backoff.

`WireRecorder` keeps every NETCONF message this side sent or received (for audits, and for the
test that no key material ever crosses the management plane).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from lxml import etree
from ncclient import manager
from ncclient.operations.errors import TimeoutExpiredError
from ncclient.operations.rpc import RPCError
from ncclient.transport.session import SessionListener

from .nodeclient import NetconfEndpoint, connect

log = logging.getLogger(__name__)

T = TypeVar("T")

NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"


class NodeUnreachable(Exception):
    """A node's NETCONF session cannot be (re)opened."""

    def __init__(self, node: str, cause: BaseException) -> None:
        super().__init__(f"{node}: NETCONF session failed: {type(cause).__name__}: {cause}")
        self.node = node
        self.cause = cause


class WireRecorder:
    """Every NETCONF message sent or received, per node (thread-safe; bounded)."""

    def __init__(self, limit: int = 100_000, path: str | None = None) -> None:
        self.limit = limit
        self.messages: list[tuple[str, str, str]] = []  # (node, "sent"|"received", xml)
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8") if path else None

    def record(self, node: str, direction: str, xml: str) -> None:
        with self._lock:
            if len(self.messages) < self.limit:
                self.messages.append((node, direction, xml))
            if self._file is not None:
                self._file.write(f"--- {node} {direction}\n{xml}\n")
                self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Tap(SessionListener):
    def __init__(self, node: str, recorder: WireRecorder) -> None:
        self.node, self.recorder = node, recorder

    def callback(self, root: Any, raw: str) -> None:
        self.recorder.record(self.node, "received", raw)

    def errback(self, ex: Exception) -> None:
        return None


def _tap(m: manager.Manager, node: str, recorder: WireRecorder | None) -> None:
    if recorder is None:
        return
    session = m._session  # ncclient exposes no send hook: wrap the transport's send
    original = session.send

    def send(message: str) -> None:
        recorder.record(node, "sent", message)
        original(message)

    session.send = send  # type: ignore[method-assign]
    session.add_listener(_Tap(node, recorder))


class PipelineError(Exception):
    """RPC number `index` of a pipeline failed with `cause`."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"rpc {index}: {cause}")
        self.index = index
        self.cause = cause


@dataclass
class RpcFailure:
    """An `<rpc-error>` in plain terms, for error messages."""

    tag: str | None
    message: str | None
    path: str | None
    severity: str | None = None

    @classmethod
    def of(cls, err: RPCError) -> "RpcFailure":
        return cls(err.tag, (err.message or str(err) or "").strip() or None, (err.path or "").strip() or None,
                   err.severity)

    def __str__(self) -> str:
        parts = [self.tag or "rpc-error"]
        if self.message:
            parts.append(self.message)
        if self.path:
            parts.append(f"at {self.path}")
        return ": ".join(parts)


class NodeSession:
    """The orchestrator's session to one node."""

    def __init__(self, name: str, endpoint: NetconfEndpoint, *, recorder: WireRecorder | None = None,
                 connect_timeout: float = 10.0, executor: Executor | None = None) -> None:
        self.name = name
        self.executor = executor
        self.endpoint = endpoint
        self.recorder = recorder
        self.connect_timeout = connect_timeout
        self._m: manager.Manager | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._m is not None and self._m.connected

    def _open(self) -> manager.Manager:
        m = connect(self.endpoint, timeout=self.connect_timeout)
        _tap(m, self.name, self.recorder)
        return m

    async def call(self, fn: Callable[[manager.Manager], T]) -> T:
        """Run `fn(manager)` in a worker thread; reopen the session first if it broke."""
        async with self._lock:
            if not self.connected:
                await self._reopen()
            assert self._m is not None
            try:
                return await self._run(fn, self._m)
            except RPCError:
                raise
            except Exception as exc:
                if self._m is not None and not self._m.connected:
                    self._drop()
                    raise NodeUnreachable(self.name, exc) from exc
                raise

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _reopen(self) -> None:
        self._drop()
        try:
            self._m = await self._run(self._open)
        except Exception as exc:
            raise NodeUnreachable(self.name, exc) from exc

    def _drop(self) -> None:
        m, self._m = self._m, None
        if m is not None:
            try:
                m.close_session() if m.connected else None
            except Exception:  # closing a broken session: nothing to save
                log.debug("%s: close of a broken session failed", self.name, exc_info=True)

    async def pipeline(self, ops: list[Callable[[manager.Manager], Any]], timeout: float = 30.0) -> list[Any]:
        """Send several RPCs without waiting for each reply (RFC 6241 allows it; the server answers
        in order), then wait for all: one round trip instead of len(ops). Raises `PipelineError`
        for the first RPC that failed (`index`), with its RPCError (or transport error) as cause."""

        def run(m: manager.Manager) -> list[Any]:
            m.async_mode = True
            try:
                rpcs = [op(m) for op in ops]
            finally:
                m.async_mode = False
            replies = []
            for i, rpc in enumerate(rpcs):
                if not rpc.event.wait(timeout):
                    raise PipelineError(i, TimeoutExpiredError("no reply in time"))
                if rpc.error is not None:
                    raise PipelineError(i, rpc.error)
                reply = rpc.reply
                reply.parse()
                if reply.error is not None:
                    raise PipelineError(i, reply.error)
                replies.append(reply)
            return replies

        return await self.call(run)

    async def ensure(self) -> None:
        async with self._lock:
            if not self.connected:
                await self._reopen()

    # -- RPCs the orchestrator uses ----------------------------------------------------------------
    async def get(self, subtree: str) -> etree._Element:
        reply = await self.call(lambda m: m.get(filter=("subtree", subtree)))
        return reply.data_ele

    async def get_xpath(self, select: str, namespaces: dict[str, str]) -> etree._Element:
        reply = await self.call(lambda m: m.get(filter=("xpath", (namespaces, select))))
        return reply.data_ele

    async def get_config(self, subtree: str, source: str = "running") -> etree._Element:
        reply = await self.call(lambda m: m.get_config(source=source, filter=("subtree", subtree)))
        return reply.data_ele

    async def close(self) -> None:
        async with self._lock:
            await self._run(self._drop)


NotificationHandler = Callable[[str, etree._Element], Awaitable[None] | None]
LostHandler = Callable[[str], Awaitable[None] | None]


class NotificationListener:
    """A second session per node with `<create-subscription>`; reopened with backoff when lost."""

    def __init__(self, name: str, endpoint: NetconfEndpoint, on_notification: NotificationHandler,
                 on_session_lost: LostHandler, on_session_back: LostHandler | None = None, *,
                 recorder: WireRecorder | None = None, max_backoff: float = 2.0) -> None:
        self.name = name
        self.endpoint = endpoint
        self.on_notification = on_notification
        self.on_session_lost = on_session_lost
        self.on_session_back = on_session_back
        self.recorder = recorder
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._m: manager.Manager | None = None
        self.subscribed = threading.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"notif-{self.name}", daemon=True)
        self._thread.start()

    def _dispatch(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def run() -> None:
            res = fn(*args)
            if asyncio.iscoroutine(res):
                loop.create_task(res)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closing
            pass

    def _run(self) -> None:
        backoff = 0.1
        lost = False  # the loss was reported and the session is not back yet
        while not self._stop.is_set():
            try:
                m = connect(self.endpoint, timeout=10)
                _tap(m, self.name, self.recorder)
                m.create_subscription()
            except Exception as exc:
                log.info("%s: notification session failed: %s", self.name, exc)
                if not lost:
                    lost = True
                    self._dispatch(self.on_session_lost, self.name)
                self._stop.wait(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                continue
            self._m = m
            backoff = 0.1
            if lost and self.on_session_back is not None:
                self._dispatch(self.on_session_back, self.name)
            lost = False
            self.subscribed.set()
            while not self._stop.is_set() and m.connected:
                n = m.take_notification(block=True, timeout=0.2)
                if n is not None:
                    self._dispatch(self.on_notification, self.name, n.notification_ele)
            self.subscribed.clear()
            self._m = None
            if not self._stop.is_set():
                log.warning("%s: notification session lost", self.name)
                lost = True
                self._dispatch(self.on_session_lost, self.name)
            try:
                m.close_session()
            except Exception:  # the session is gone already
                pass

    def stop(self, join: float = 1.0) -> None:
        """End the subscription: the transport is closed (the server drops the subscription with
        the session); the reader thread notices within its poll interval."""
        self._stop.set()
        m = self._m
        if m is not None:
            try:
                m._session.close()  # no <close-session> round trip: a subscribed session ends with its transport
            except Exception:  # already gone
                pass
        if self._thread is not None:
            self._thread.join(join)


def notification_body(root: etree._Element) -> etree._Element | None:
    """The event element of a `<notification>` (the first child that is not eventTime)."""
    for child in root:
        if isinstance(child.tag, str) and child.tag != f"{{{NOTIF_NS}}}eventTime":
            return child
    return None


def backoff_delays(attempts: int, first: float = 0.02, cap: float = 0.5) -> list[float]:
    """Delays for a bounded retry: first, 2x, 4x ... capped."""
    out, d = [], first
    for _ in range(attempts):
        out.append(d)
        d = min(cap, d * 2)
    return out
