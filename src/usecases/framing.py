"""Frames between a use case's peer processes over loopback TCP: `u32 length | u8 type | payload`.

The channels carry only what an application would put on an untrusted network: key IDs,
ciphertext, tags, public keys and key confirmations, never key bytes.
"""

from __future__ import annotations

import asyncio
import json
import struct
from enum import IntEnum
from typing import Any

MAX_FRAME = 2 << 20
_HEAD = struct.Struct("!IB")


class FrameType(IntEnum):
    DATA = 1  # use-case payload
    ACK = 2  # receiver's answer to a DATA frame
    CONTROL = 3  # JSON message
    END = 4  # no more data: answer with STATS
    STATS = 5  # JSON: the peer's counts (and its 014 client tally)


class FramingError(Exception):
    """The peer sent a malformed frame or closed the connection mid-protocol."""


async def send(writer: asyncio.StreamWriter, kind: FrameType, payload: bytes = b"") -> None:
    writer.write(_HEAD.pack(len(payload) + 1, kind) + payload)
    await writer.drain()


def send_nowait(writer: asyncio.StreamWriter, kind: FrameType, payload: bytes = b"") -> None:
    writer.write(_HEAD.pack(len(payload) + 1, kind) + payload)


async def recv(reader: asyncio.StreamReader) -> tuple[FrameType, bytes]:
    try:
        head = await reader.readexactly(_HEAD.size)
        length, kind = _HEAD.unpack(head)
        if not 1 <= length <= MAX_FRAME:
            raise FramingError(f"frame length {length} out of range")
        payload = await reader.readexactly(length - 1)
    except asyncio.IncompleteReadError as exc:
        raise FramingError("connection closed by the peer") from exc
    try:
        return FrameType(kind), payload
    except ValueError:
        raise FramingError(f"unknown frame type {kind}") from None


async def send_json(writer: asyncio.StreamWriter, kind: FrameType, obj: Any) -> None:
    await send(writer, kind, json.dumps(obj).encode())


async def recv_json(reader: asyncio.StreamReader, expect: FrameType) -> Any:
    kind, payload = await recv(reader)
    if kind != expect:
        raise FramingError(f"expected a {expect.name} frame, got {kind.name}")
    return json.loads(payload)
