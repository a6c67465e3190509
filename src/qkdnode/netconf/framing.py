"""RFC 6242 message framing: end-of-message (base:1.0) and chunked (base:1.1), sans I/O.

`FrameDecoder.feed(data)` returns the complete messages found so far; `encode(msg)` frames one.
The hello exchange always uses end-of-message framing; after it, both sides switch to chunked
framing when both announced base:1.1 (`switch_to_chunked()`).
"""

from __future__ import annotations

import re
from enum import Enum

EOM = b"]]>]]>"
_CHUNK_HEADER = re.compile(rb"\n#([1-9][0-9]{0,9})\n")
_MAX_CHUNK = 4294967295


class Framing(str, Enum):
    EOM = "end-of-message"
    CHUNKED = "chunked"


class FramingError(Exception):
    """The peer broke RFC 6242 framing; the session must be closed."""


class MessageTooBig(FramingError):
    """A message exceeded the configured maximum size."""


class FrameDecoder:
    """Incremental decoder for one direction of a NETCONF session."""

    def __init__(self, max_message: int = 16 * 1024 * 1024) -> None:
        self.framing = Framing.EOM
        self.max_message = max_message
        self._buf = bytearray()
        self._chunks: list[bytes] = []
        self._msg_len = 0

    def switch_to_chunked(self) -> None:
        self.framing = Framing.CHUNKED

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        if self.framing is Framing.EOM:
            return self._feed_eom()
        return self._feed_chunked()

    def _feed_eom(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            idx = self._buf.find(EOM)
            if idx < 0:
                if len(self._buf) > self.max_message + len(EOM):
                    raise MessageTooBig(f"message exceeds {self.max_message} bytes")
                return out
            if idx > self.max_message:
                raise MessageTooBig(f"message exceeds {self.max_message} bytes")
            out.append(bytes(self._buf[:idx]))
            del self._buf[: idx + len(EOM)]
            if self.framing is Framing.CHUNKED:  # pragma: no cover - switch happens between calls
                return out

    def _feed_chunked(self) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        while True:
            if len(buf) < 4:
                return out
            if buf[0:1] != b"\n" or buf[1:2] != b"#":
                raise FramingError("expected chunk header '\\n#'")
            if buf[2:3] == b"#":
                if len(buf) < 4:
                    return out
                if buf[3:4] != b"\n":
                    raise FramingError("bad end-of-chunks marker")
                if not self._chunks:
                    raise FramingError("end-of-chunks marker without a chunk")
                out.append(b"".join(self._chunks))
                self._chunks = []
                self._msg_len = 0
                del buf[:4]
                continue
            match = _CHUNK_HEADER.match(buf)
            if match is None:
                # header may be incomplete: at most 1 + 1 + 10 digits + 1 bytes
                if len(buf) > 13 or (len(buf) > 2 and not buf[2:].split(b"\n", 1)[0].isdigit()):
                    raise FramingError("bad chunk header")
                if b"\n" in buf[2:]:
                    raise FramingError("bad chunk header")
                return out
            size = int(match.group(1))
            if size > _MAX_CHUNK:
                raise FramingError("chunk size out of range")
            start = match.end()
            if self._msg_len + size > self.max_message:
                raise MessageTooBig(f"message exceeds {self.max_message} bytes")
            if len(buf) < start + size:
                return out
            self._chunks.append(bytes(buf[start : start + size]))
            self._msg_len += size
            del buf[: start + size]


def encode(message: bytes, framing: Framing) -> bytes:
    """Frame one message."""
    if framing is Framing.EOM:
        return message + EOM
    if not message:
        raise ValueError("chunked framing cannot carry an empty message")
    return b"\n#%d\n" % len(message) + message + b"\n##\n"
