"""Photon-channel stub: the link between the emitter and the receiver of a simulated QKD pair.

A real pair shares an optical fibre (quantum signals) and a classical service channel (sifting, error
correction, privacy amplification). This stub replaces both with one TCP connection between the two
node processes: the emitter draws the final key bits and sends them, so the receiver only ever learns
keys through this connection, never from a shared seed or file. No TLS: it stands for a fibre, which
is not encrypted either; it binds only to the configured host.

The RECEIVER listens (`ChannelListener`), the TRANSMITTER connects (`open_channel`); the module
(`qkdnode.devices.module`) runs the protocol over the resulting `Channel`.

Wire format (all integers big-endian)::

    frame    := length:u32  type:u8  body         length counts type + body, at most MAX_FRAME
    str      := n:u16  utf-8[n]
    f64?     := IEEE double, NaN when absent (qber for CV, snr/excess noise for DV)

    HELLO    1  magic "QKDC" version:u8 role:u8 instance:16s committed_seq:i64 room:u32
                key_size_bits:u16 loss_db:f64 loss_set_at:f64 name:str pairs_with:str technology:str
                profile:str
    REFUSE   2  reason:str                                  (then the sender closes)
    TICK     3  block:u64 up:u8 skr_bps:f64 qber:f64? snr:f64? excess_noise:f64? loss_db:f64
                loss_set_at:f64 n:u32 key_bytes:u16 reason:str  n x (key_id:16s seq:i64 key[key_bytes])
                (held as one `KeyRun` in memory: IDs, seqs and key bytes each packed)
    ACK      4  block:u64 room:u32                          receiver -> transmitter
    COMMIT   5  block:u64                                   transmitter -> receiver
    SET_LOSS 6  loss_db:f64 set_at:f64                      receiver -> transmitter

The connection opens with HELLO from the transmitter and HELLO (or REFUSE) from the receiver; the
transmitter may still REFUSE the receiver's HELLO. TICKs then flow once per tick, with or without keys.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .keyrun import KeyRun

log = logging.getLogger(__name__)

__all__ = [
    "Ack", "Channel", "ChannelClosed", "ChannelListener", "Commit", "Frame", "FrameError", "FrameType",
    "Hello", "MAX_FRAME", "PROTOCOL_VERSION", "PairRefused", "Refuse", "Role", "SetLoss", "Tick",
    "WireKey", "decode", "encode", "exchange_hello", "open_channel",
]

PROTOCOL_VERSION = 1
MAGIC = b"QKDC"
#: Largest accepted frame (type + body). A tick of a 10 Mbit/s link at 0.1 s is ~0.2 MiB.
MAX_FRAME = 64 * 1024 * 1024


class FrameType(enum.IntEnum):
    HELLO = 1
    REFUSE = 2
    TICK = 3
    ACK = 4
    COMMIT = 5
    SET_LOSS = 6


class Role(enum.IntEnum):
    TRANSMITTER = 1
    RECEIVER = 2


class FrameError(Exception):
    """A frame that cannot be decoded (the connection is then dropped)."""


class ChannelClosed(ConnectionError):
    """The peer closed the connection, or it broke, or it stayed silent too long."""


class PairRefused(Exception):
    """The handshake failed: one end refused the other (wrong pair, technology, key size...)."""


@dataclass(frozen=True, slots=True)
class Hello:
    role: Role
    name: str
    pairs_with: str
    technology: str
    profile: str
    key_size_bits: int
    instance: bytes  #: 16 random bytes, new at every module start
    committed_seq: int  #: highest seq committed at the sender (-1: none)
    room: int  #: free places in the sender's key buffer
    loss_db: float
    loss_set_at: float  #: wall-clock time of the last set_loss (0: configured value)
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


@dataclass(frozen=True, slots=True)
class WireKey:
    key_id: bytes  #: 16-byte UUID
    seq: int
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Tick:
    """The emitter's figures for one tick and the keys it cut in it (possibly none)."""

    block: int
    up: bool
    reason: str  #: why the link is down ("" when up)
    skr_bps: float
    qber: float | None
    snr: float | None
    excess_noise: float | None
    loss_db: float
    loss_set_at: float
    key_bytes: int
    #: the keys, as one packed run (a sequence of WireKey given here is converted)
    keys: KeyRun | Sequence[WireKey] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.keys, KeyRun):
            object.__setattr__(self, "keys", KeyRun.of(self.keys, self.key_bytes))

    @property
    def run(self) -> KeyRun:
        assert isinstance(self.keys, KeyRun)
        return self.keys


@dataclass(frozen=True, slots=True)
class Ack:
    block: int
    room: int


@dataclass(frozen=True, slots=True)
class Commit:
    block: int


@dataclass(frozen=True, slots=True)
class SetLoss:
    loss_db: float
    set_at: float


Frame = Hello | Refuse | Tick | Ack | Commit | SetLoss

_HEAD = struct.Struct(">IB")
_HELLO = struct.Struct(">4sBB16sqIHdd")
_TICK = struct.Struct(">QBdddddd IH")
_ACK = struct.Struct(">QI")
_U64 = struct.Struct(">Q")
_LOSS = struct.Struct(">dd")
_STRLEN = struct.Struct(">H")


def _s(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError("string too long for a channel frame")
    return _STRLEN.pack(len(raw)) + raw


def _opt(x: float | None) -> float:
    return math.nan if x is None else x


def _unopt(x: float) -> float | None:
    return None if math.isnan(x) else x


class _Reader:
    """Cursor over a frame body; any overrun is a FrameError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, st: struct.Struct) -> tuple[Any, ...]:
        if self.pos + st.size > len(self.data):
            raise FrameError("truncated frame")
        out = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return out

    def string(self) -> str:
        (n,) = self.take(_STRLEN)
        raw = self.data[self.pos:self.pos + n]
        if len(raw) != n:
            raise FrameError("truncated string")
        self.pos += n
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise FrameError("string is not UTF-8") from None

    def rest(self) -> bytes:
        return self.data[self.pos:]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise FrameError("trailing bytes in frame")


def encode(frame: Frame) -> bytes:
    """One complete frame (length prefix included)."""
    if isinstance(frame, Hello):
        if len(frame.instance) != 16:
            raise ValueError("instance must be 16 bytes")
        body = _HELLO.pack(MAGIC, frame.version, frame.role, frame.instance, frame.committed_seq,
                           frame.room, frame.key_size_bits, frame.loss_db, frame.loss_set_at)
        body += _s(frame.name) + _s(frame.pairs_with) + _s(frame.technology) + _s(frame.profile)
        kind = FrameType.HELLO
    elif isinstance(frame, Refuse):
        body, kind = _s(frame.reason), FrameType.REFUSE
    elif isinstance(frame, Tick):
        kb = frame.key_bytes
        run = frame.run
        if run.key_bytes != kb:
            raise ValueError(f"the keys are {run.key_bytes} bytes long, the frame says {kb}")
        body = b"".join((
            _TICK.pack(frame.block, frame.up, frame.skr_bps, _opt(frame.qber), _opt(frame.snr),
                       _opt(frame.excess_noise), frame.loss_db, frame.loss_set_at,
                       len(run), kb),
            _s(frame.reason),
            run.to_records(),
        ))
        kind = FrameType.TICK
    elif isinstance(frame, Ack):
        body, kind = _ACK.pack(frame.block, frame.room), FrameType.ACK
    elif isinstance(frame, Commit):
        body, kind = _U64.pack(frame.block), FrameType.COMMIT
    elif isinstance(frame, SetLoss):
        body, kind = _LOSS.pack(frame.loss_db, frame.set_at), FrameType.SET_LOSS
    else:  # pragma: no cover - exhaustive over Frame
        raise TypeError(f"not a channel frame: {frame!r}")
    if len(body) + 1 > MAX_FRAME:
        raise ValueError("frame too large")
    return _HEAD.pack(len(body) + 1, kind) + body


def decode(kind: int, body: bytes) -> Frame:
    """Decode the body of a frame of type `kind`; FrameError if malformed."""
    r = _Reader(body)
    frame: Frame
    try:
        ftype = FrameType(kind)
    except ValueError:
        raise FrameError(f"unknown frame type {kind}") from None
    if ftype is FrameType.HELLO:
        magic, version, role, instance, committed, room, ksize, loss, loss_at = r.take(_HELLO)
        if magic != MAGIC:
            raise FrameError("not a QKD channel hello")
        try:
            role_ = Role(role)
        except ValueError:
            raise FrameError(f"unknown role {role}") from None
        frame = Hello(role_, r.string(), r.string(), r.string(), r.string(), ksize, instance,
                      committed, room, loss, loss_at, version)
    elif ftype is FrameType.REFUSE:
        frame = Refuse(r.string())
    elif ftype is FrameType.TICK:
        block, up, skr, qber, snr, xi, loss, loss_at, n, kb = r.take(_TICK)
        reason = r.string()
        data = r.rest()
        try:  # KeyRun checks the block's length against its key count
            keys = KeyRun.from_records(data, n, kb)
        except ValueError:
            raise FrameError("key block length does not match its key count") from None
        return Tick(block, bool(up), reason, skr, _unopt(qber), _unopt(snr), _unopt(xi), loss,
                    loss_at, kb, keys)
    elif ftype is FrameType.ACK:
        block, room = r.take(_ACK)
        frame = Ack(block, room)
    elif ftype is FrameType.COMMIT:
        (block,) = r.take(_U64)
        frame = Commit(block)
    else:
        loss, at = r.take(_LOSS)
        frame = SetLoss(loss, at)
    r.end()
    return frame


class Channel:
    """One established connection; frames in, frames out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def send(self, frame: Frame) -> None:
        """Write one frame (a single write, so concurrent senders never interleave)."""
        if self._writer.is_closing():
            raise ChannelClosed("channel closed")
        try:
            self._writer.write(encode(frame))
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(f"send failed: {e}") from e

    async def recv(self, timeout: float | None = None) -> Frame:
        """The next frame; ChannelClosed on EOF, error or `timeout` seconds of silence."""
        try:
            async with asyncio.timeout(timeout):
                head = await self._reader.readexactly(_HEAD.size)
                length, kind = _HEAD.unpack(head)
                if not 1 <= length <= MAX_FRAME:
                    raise FrameError(f"bad frame length {length}")
                body = await self._reader.readexactly(length - 1)
        except asyncio.IncompleteReadError:
            raise ChannelClosed("peer closed the channel") from None
        except TimeoutError:
            raise ChannelClosed(f"peer silent for {timeout} s") from None
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(f"receive failed: {e}") from e
        return decode(kind, body)

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
        try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            async with asyncio.timeout(2.0):
                await self._writer.wait_closed()
        except (ConnectionError, OSError, TimeoutError):
            pass


async def open_channel(host: str, port: int, *, timeout: float = 5.0) -> Channel:
    """Connect to a receiver (transmitter side). OSError/TimeoutError if it is not there."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
    return Channel(reader, writer)


HelloCheck = Callable[[Hello], str | None]
"""Inspects the peer's hello; returns a refusal reason or None to accept."""


async def exchange_hello(channel: Channel, mine: Hello, check: HelloCheck, *, initiator: bool,
                         timeout: float = 5.0) -> Hello:
    """Run the handshake; returns the peer's hello or raises PairRefused / ChannelClosed / FrameError.

    The initiator (transmitter) speaks first. Whoever refuses sends REFUSE with its reason.
    """
    if initiator:
        await channel.send(mine)
    peer = await channel.recv(timeout)
    if isinstance(peer, Refuse):
        raise PairRefused(f"refused by peer: {peer.reason}")
    if not isinstance(peer, Hello):
        raise FrameError(f"expected HELLO, got {type(peer).__name__}")
    reason = (f"protocol version {peer.version} not supported" if peer.version != PROTOCOL_VERSION
              else check(peer))
    if reason is not None:
        try:
            await channel.send(Refuse(reason))
        except ChannelClosed:
            pass
        raise PairRefused(reason)
    if not initiator:
        await channel.send(mine)
    return peer


class ChannelListener:
    """TCP listener of a receiver module: hands each accepted connection to `on_connect`."""

    def __init__(self, host: str, port: int, on_connect: Callable[[Channel], Awaitable[None]]) -> None:
        self.host = host
        self.port = port
        self._on_connect = on_connect
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Bind (only to `host`) and listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        channel = Channel(reader, writer)
        try:
            await self._on_connect(channel)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("photon channel session from %s failed", channel.peer)
        finally:
            try:
                await channel.close()
            except asyncio.CancelledError:  # stopped (again) while closing: the transport is closed already;
                pass  # ending here keeps asyncio from logging the connection task's cancellation as an error
            self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
