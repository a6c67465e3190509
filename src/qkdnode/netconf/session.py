"""One NETCONF session: hello exchange, framing, message parsing and in-order RPC processing."""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable
from xml.sax.saxutils import quoteattr

from lxml import etree

from . import errors as E
from .framing import FrameDecoder, Framing, FramingError, MessageTooBig, encode
from .namespaces import BASE_10, BASE_11, NC_NS

if TYPE_CHECKING:
    from .server import NetconfServer

log = logging.getLogger(__name__)

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
)


@dataclass
class SessionCounters:
    in_rpcs: int = 0
    in_bad_rpcs: int = 0
    out_rpc_errors: int = 0
    out_notifications: int = 0


@dataclass
class SessionInfo:
    session_id: int
    username: str
    source_host: str
    login_time: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def parse_xml(data: bytes, max_depth: int = 64) -> etree._Element:
    """Parse one message; DTDs (and so entity bombs) and nesting deeper than `max_depth` are refused."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise E.MalformedMessage(message="DTDs and entity declarations are not allowed")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise E.MalformedMessage(message=f"not well-formed XML: {exc}") from exc
    except ValueError as exc:  # e.g. a str with an encoding declaration; lxml refuses it
        raise E.MalformedMessage(message=f"not well-formed XML: {exc}") from exc
    if _deeper_than(root, max_depth):
        raise E.MalformedMessage(message=f"XML nesting deeper than {max_depth} elements")
    return root


def _deeper_than(root: etree._Element, limit: int) -> bool:
    stack = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in el)
    return False


class RateLimit:
    """A token bucket: `rate` tokens per second, at most `burst` banked."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class NetconfSession:
    """Transport-independent session; the SSH layer feeds bytes and provides write/close."""

    def __init__(
        self,
        server: "NetconfServer",
        info: SessionInfo,
        write: Callable[[bytes], None],
        close: Callable[[], None],
    ) -> None:
        self.server = server
        self.info = info
        self.id = info.session_id
        self._write = write
        self._close = close
        self.decoder = FrameDecoder(server.limits.max_message_bytes)
        self.max_depth = server.limits.max_xml_depth
        self.rate = RateLimit(server.limits.rpc_rate, server.limits.rpc_burst)
        self.framing = Framing.EOM
        self.hello_done = False
        self.closed = False
        self.counters = SessionCounters()
        self.subscribed = False
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    # -- transport side -------------------------------------------------------------------------
    def start(self) -> None:
        self.send_raw(self.server.hello_xml(self.id).encode())
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            messages = self.decoder.feed(data)
        except MessageTooBig as exc:
            self._fatal(E.TooBig(message=str(exc)))
            return
        except FramingError as exc:
            self._fatal(E.MalformedMessage(message=f"framing error: {exc}"))
            return
        for msg in messages:
            self._queue.put_nowait(msg)

    def connection_lost(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)
            self.server.session_ended(self, killed=False)

    # -- output ---------------------------------------------------------------------------------
    def send_raw(self, message: bytes) -> None:
        if self.closed:
            return
        if self.server.recorder is not None:
            self.server.recorder(self.id, "sent", message)
        self._write(encode(message, self.framing))

    def send(self, xml: str) -> None:
        self.send_raw(xml.encode())

    def send_notification(self, xml: str) -> None:
        self.counters.out_notifications += 1
        self.send(xml)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        self.server.session_ended(self, killed=False)
        self._close()

    def _fatal(self, err: E.RpcError) -> None:
        """Report an unrecoverable framing error and close, as RFC 6242 requires."""
        try:
            self.send(E.reply_error("", [err]))
        finally:
            self.close()

    # -- processing -----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            msg = await self._queue.get()
            if msg is None or self.closed and not self.hello_done:
                return
            if not self.hello_done:
                if not self._hello(msg):
                    self.close()
                    return
                continue
            reply = await self._handle(msg)
            if reply is not None:
                self.send(reply)
            if self.server.after_reply is not None:
                self.server.after_reply(self)

    def _hello(self, data: bytes) -> bool:
        try:
            root = parse_xml(data, self.max_depth)
        except E.RpcError:
            self.server.stats.in_bad_hellos += 1
            return False
        if root.tag != f"{{{NC_NS}}}hello":
            self.server.stats.in_bad_hellos += 1
            return False
        if root.find(f"{{{NC_NS}}}session-id") is not None:
            self.server.stats.in_bad_hellos += 1
            return False  # RFC 6241 8.1: a client hello with session-id ends the session
        caps = {(c.text or "").strip() for c in root.iter(f"{{{NC_NS}}}capability")}
        if BASE_11 in caps:
            self.framing = Framing.CHUNKED
            self.decoder.switch_to_chunked()
            pending = bytes(self.decoder._buf)  # noqa: SLF001 - bytes after hello, already chunked
            self.decoder._buf.clear()  # noqa: SLF001
            if pending:
                self.data_received(pending)
        elif BASE_10 not in caps:
            self.server.stats.in_bad_hellos += 1
            return False
        self.hello_done = True
        return True

    async def _handle(self, data: bytes) -> str | None:
        if self.server.recorder is not None:
            self.server.recorder(self.id, "received", data)
        self.counters.in_rpcs += 1
        self.server.stats.in_rpcs += 1
        attrs = ""
        op = "unknown"  # the operation's element name, for the server's rpc_observer
        try:
            root = parse_xml(data, self.max_depth)
            if root.tag != f"{{{NC_NS}}}rpc":
                raise E.MalformedMessage(message=f"expected <rpc>, got <{etree.QName(root).localname}>")
            attrs = self._reply_attrs(root)
            if root.get("message-id") is None:
                raise E.MissingAttribute(
                    message="rpc without message-id", info={"bad-attribute": "message-id", "bad-element": "rpc"}
                )
            if not self.rate.take():
                raise E.ResourceDenied(message=f"RPC rate limit of this session exceeded "
                                               f"({self.server.limits.rpc_rate:g}/s, burst {self.server.limits.rpc_burst})",
                                       app_tag="rate-limited")
            ops = [c for c in root if isinstance(c.tag, str)]
            if len(ops) != 1:
                raise E.MalformedMessage(message="an <rpc> holds exactly one operation")
            op = etree.QName(ops[0]).localname
            body = await self.server.dispatcher.dispatch(self, ops[0])
        except (E.RpcError, E.RpcErrors) as err:
            self._observe(op, False)
            errs = err.errors if isinstance(err, E.RpcErrors) else [err]
            self.counters.out_rpc_errors += 1
            self.server.stats.out_rpc_errors += 1
            if isinstance(err, E.RpcError) and err.tag in ("malformed-message", "missing-attribute", "operation-not-supported"):
                self.counters.in_bad_rpcs += 1
                self.server.stats.in_bad_rpcs += 1
            return E.reply_error(attrs, errs)
        except Exception as exc:  # anything unexpected is operation-failed, the session lives on
            log.exception("rpc failed in session %d", self.id)
            self._observe(op, False)
            self.counters.out_rpc_errors += 1
            self.server.stats.out_rpc_errors += 1
            return E.reply_error(attrs, [E.OperationFailed(message=f"internal error: {type(exc).__name__}")])
        self._observe(op, True)
        if body is None:
            return None
        return f'<rpc-reply xmlns="{NC_NS}"{attrs}>{body}</rpc-reply>'

    def _observe(self, operation: str, ok: bool) -> None:
        if self.server.rpc_observer is not None:
            self.server.rpc_observer(operation, ok)

    @staticmethod
    def _reply_attrs(root: etree._Element) -> str:
        """RFC 6241 4.2: the reply carries every attribute of the <rpc>, message-id included."""
        out: list[str] = []
        for key, value in root.attrib.items():
            if not key.startswith("{"):
                out.append(f" {key}={quoteattr(value)}")
                continue
            q = etree.QName(key)
            prefix = next((p for p, ns in root.nsmap.items() if ns == q.namespace and p), "a")
            out.append(f" xmlns:{prefix}={quoteattr(q.namespace or '')} {prefix}:{q.localname}={quoteattr(value)}")
        return "".join(out)
