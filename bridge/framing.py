"""Erlang-style port framing: ``{packet, N}``, ``line`` and raw streams.

A port exchanges *frames* over a byte stream (a pipe). This module turns frames into bytes and
bytes back into frames, and nothing else: it owns no threads, no file descriptors and no locks,
so both ends of the bridge (the :mod:`bridge.port` reader thread in the parent and the
:mod:`bridge.worker` loop in the child) share it.

Modes, as ``open_port`` names them:

=========  =====================================================================================
``1``      each frame is preceded by its length as a 1-byte big-endian integer (max 255 bytes)
``2``      ... a 2-byte length (max 65,535 bytes)
``4``      ... a 4-byte length (max 4,294,967,295 bytes)
``"line"`` each frame is one line; the ``\\n`` is the delimiter and is not part of the frame
``"raw"``  no framing: every chunk read from the stream is delivered as it came
=========  =====================================================================================

Decoders are incremental and share one interface:

* ``feed(data) -> list[bytes]`` returns the frames that *data* completed, in order (possibly
  none, possibly several);
* ``eof() -> list[bytes]`` is called once when the stream ends; it returns whatever the mode
  considers a last frame (a trailing line without ``\\n``) or raises :class:`FramingError` when
  the stream stopped in the middle of a frame.

A decoder that raised is left in an unspecified state: a framing error means the stream is
corrupt and the port must be closed, exactly as Erlang closes a port on a bad packet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "PACKET_SIZES",
    "Decoder",
    "FrameTooLarge",
    "FramingError",
    "LineDecoder",
    "PacketDecoder",
    "RawDecoder",
    "encode_frame",
    "frame_limit",
    "make_decoder",
    "make_encoder",
]

#: Header size in bytes -> struct format of the big-endian length prefix.
_HEADERS: dict[int, struct.Struct] = {
    1: struct.Struct(">B"),
    2: struct.Struct(">H"),
    4: struct.Struct(">I"),
}

#: The packet header sizes a port accepts.
PACKET_SIZES: tuple[int, ...] = (1, 2, 4)

DEFAULT_MAX_LINE = 65536


class FramingError(ValueError):
    """The byte stream does not follow the framing (bad length, EOF mid-frame, line too long)."""


class FrameTooLarge(FramingError):
    """A frame is larger than the header can express or than the configured maximum."""


class Decoder(Protocol):
    """What every decoder offers; see the module docstring for the contract."""

    def feed(self, data: bytes) -> list[bytes]: ...

    def eof(self) -> list[bytes]: ...


def frame_limit(packet: int) -> int:
    """Return the largest payload a ``packet``-byte header can describe.

    >>> frame_limit(1), frame_limit(2)
    (255, 65535)
    """
    return (1 << (8 * _header(packet).size)) - 1


def encode_frame(data: bytes, packet: int) -> bytes:
    """Prefix *data* with its length as a ``packet``-byte big-endian integer.

    Raises :class:`FrameTooLarge` if *data* does not fit the header.

    >>> encode_frame(b"hi", 2)
    b'\\x00\\x02hi'
    """
    header = _header(packet)
    size = len(data)
    limit = (1 << (8 * header.size)) - 1
    if size > limit:
        raise FrameTooLarge(
            f"frame of {size} bytes exceeds the limit of {limit} bytes for packet={packet}"
        )
    # One concatenation, so the caller can hand the result to a single write(): two writes
    # would double the syscalls on the hot path and could interleave with another writer.
    return header.pack(size) + data


def make_encoder(mode: int | str) -> Callable[[bytes], bytes]:
    """Return a function that turns one payload into the bytes to write for *mode*.

    Packet modes add the length prefix, ``"line"`` appends ``\\n`` (refusing payloads that
    contain one, since they would arrive as two frames) and ``"raw"`` passes bytes through.

    >>> make_encoder("line")(b"hello")
    b'hello\\n'
    """
    if mode in PACKET_SIZES and not isinstance(mode, bool):
        packet = int(mode)
        return lambda data: encode_frame(data, packet)
    if mode == "line":
        return _encode_line
    if mode == "raw":
        return bytes
    raise ValueError(f"unknown framing mode {mode!r}; expected 1, 2, 4, 'line' or 'raw'")


def make_decoder(mode: int | str, max_length: int | None = None) -> Decoder:
    """Return a fresh decoder for *mode* (``1``, ``2``, ``4``, ``"line"`` or ``"raw"``).

    *max_length* bounds a packet's declared length or a line's length; ``None`` means the
    mode's own limit (the header's range, or :data:`DEFAULT_MAX_LINE` for lines). Raw streams
    ignore it.

    >>> make_decoder(1).feed(b"\\x02hi\\x00")
    [b'hi', b'']
    """
    if mode in PACKET_SIZES and not isinstance(mode, bool):
        return PacketDecoder(int(mode), max_length)
    if mode == "line":
        return LineDecoder(DEFAULT_MAX_LINE if max_length is None else max_length)
    if mode == "raw":
        return RawDecoder()
    raise ValueError(f"unknown framing mode {mode!r}; expected 1, 2, 4, 'line' or 'raw'")


class PacketDecoder:
    """Incremental decoder for ``{packet, N}`` streams.

    >>> d = PacketDecoder(4)
    >>> d.feed(b"\\x00\\x00\\x00\\x03ab")
    []
    >>> d.feed(b"c\\x00\\x00\\x00\\x00")
    [b'abc', b'']
    >>> d.eof()
    []
    """

    __slots__ = ("_buf", "_header", "_max_length", "packet")

    def __init__(self, packet: int, max_length: int | None = None) -> None:
        self.packet = packet
        self._header = _header(packet)
        limit = frame_limit(packet)
        if max_length is not None and max_length < 0:
            raise ValueError(f"max_length must be >= 0, got {max_length}")
        self._max_length = limit if max_length is None else min(max_length, limit)
        # Invariant: _buf holds only bytes that do not yet form a complete frame.
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Consume *data*; return the frames it completed, in order."""
        if not self._buf:
            # Fast path (the common case: one read holds whole frames): parse the caller's
            # bytes directly and only buffer the tail, instead of copying everything first.
            frames, used = self._split(data)
            if used < len(data):
                self._buf += memoryview(data)[used:]
            return frames
        self._buf += data
        frames, used = self._split(self._buf)
        # Deleting a bytearray's prefix only moves its start pointer in CPython, so the
        # remainder is not copied: feeding a big frame byte by byte stays linear.
        del self._buf[:used]
        return frames

    def eof(self) -> list[bytes]:
        """Signal the end of the stream; raise :class:`FramingError` if a frame is incomplete."""
        pending = len(self._buf)
        if not pending:
            return []
        hsize = self._header.size
        if pending < hsize:
            detail = f"{pending} of the {hsize} header bytes"
        else:
            (declared,) = self._header.unpack_from(self._buf, 0)
            detail = f"{pending - hsize} of the {declared} bytes of a frame"
        self._buf.clear()
        raise FramingError(f"stream ended mid-frame (packet={self.packet}): got {detail}")

    def _split(self, buf: bytes | bytearray) -> tuple[list[bytes], int]:
        """Return the complete frames at the start of *buf* and how many bytes they used."""
        header = self._header
        hsize = header.size
        end = len(buf)
        frames: list[bytes] = []
        pos = 0
        # The memoryview must be released before the caller resizes a bytearray buffer.
        with memoryview(buf) as view:
            while end - pos >= hsize:
                (length,) = header.unpack_from(buf, pos)
                if length > self._max_length:
                    raise FrameTooLarge(
                        f"declared frame length {length} exceeds max_length {self._max_length}"
                    )
                stop = pos + hsize + length
                if stop > end:
                    break
                frames.append(bytes(view[pos + hsize : stop]))
                pos = stop
        return frames, pos


class LineDecoder:
    """Incremental decoder for newline-delimited streams.

    Frames are the lines without their ``\\n`` (a ``\\r`` before it is kept: the stream is
    bytes, not text). A line longer than *max_line* raises :class:`FramingError` as soon as
    that is known, without waiting for its end. At EOF a trailing line without ``\\n`` is
    returned as the last frame.

    >>> d = LineDecoder()
    >>> d.feed(b"one\\ntw")
    [b'one']
    >>> d.eof()
    [b'tw']
    """

    __slots__ = ("_buf", "_scanned", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 0:
            raise ValueError(f"max_line must be >= 0, got {max_line}")
        self.max_line = max_line
        self._buf = bytearray()
        # Bytes of _buf already known to hold no newline: never search them twice, or a long
        # line arriving in small chunks would cost quadratic time.
        self._scanned = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Consume *data*; return the lines it completed, in order."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        start = 0
        nl = buf.find(b"\n", self._scanned)
        with memoryview(buf) as view:
            while nl >= 0:
                self._check_length(nl - start)
                frames.append(bytes(view[start:nl]))
                start = nl + 1
                nl = buf.find(b"\n", start)
        del buf[:start]
        self._check_length(len(buf))
        self._scanned = len(buf)
        return frames

    def eof(self) -> list[bytes]:
        """Signal the end of the stream; return the trailing partial line, if any."""
        if not self._buf:
            return []
        last = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return [last]

    def _check_length(self, length: int) -> None:
        if length > self.max_line:
            raise FramingError(f"line exceeds max_line={self.max_line} (at least {length} bytes)")


class RawDecoder:
    """Pass-through "decoder": every non-empty chunk is one frame, EOF adds nothing.

    >>> RawDecoder().feed(b"any bytes")
    [b'any bytes']
    """

    __slots__ = ()

    def feed(self, data: bytes) -> list[bytes]:
        """Return *data* as a single frame (or nothing for an empty chunk)."""
        return [bytes(data)] if data else []

    def eof(self) -> list[bytes]:
        """Nothing is ever buffered, so EOF yields no frame."""
        return []


def _header(packet: int) -> struct.Struct:
    try:
        return _HEADERS[packet]
    except (KeyError, TypeError):
        raise ValueError(f"packet must be 1, 2 or 4, got {packet!r}") from None


def _encode_line(data: bytes) -> bytes:
    if b"\n" in data:
        raise FramingError("a line frame must not contain b'\\n'")
    return bytes(data) + b"\n"
