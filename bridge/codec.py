"""Codecs: how a request or reply becomes the payload of one frame, and back.

Three codecs ship with the bridge; both ends of a port must use the same one (the worker gets it
with ``--codec``):

===========  ================================================================================
``json``     stdlib :mod:`json`, compact separators, ASCII output. Always available.
``orjson``   the ``orjson`` package (optional dependency, imported only when chosen)
``msgpack``  the ``msgpack`` package (optional dependency, imported only when chosen); binary,
             and the only one that carries ``bytes`` values
===========  ================================================================================

The portable subset, identical through every codec, is ``None``, ``bool``, ``int``, ``float``,
``str``, ``list`` and ``dict`` with ``str`` keys. Tuples come back as lists. Beyond that the codecs
differ: ``json`` turns ``int`` keys into strings, ``orjson`` refuses them, ``msgpack`` keeps them;
only ``msgpack`` carries ``bytes``; only ``json`` carries integers beyond 64 bits. Handlers that
want to work with any codec stay within the subset.

Why ``msgpack`` is the default — measured with ``python benchmarks/bench_codec.py`` (CPython 3.11.7,
Linux VM with 2 vCPUs, a 119-byte request and its reply; three runs agreed within ~10 %):

=========  ==========  ===========  ==============  ==============  ===============
codec      codec rt    import       echo, 1 CPU     echo, free      spawn -> first
           [1]_        (fresh       p50 [2]_        p50 [3]_        ping (median)
                       interpreter)
=========  ==========  ===========  ==============  ==============  ===============
json       8.4 us      1.1 ms       23 us           86-89 us        27.5 ms
orjson     1.3 us      10.1 ms      10 us           65-71 us        36 ms
msgpack    3.1 us      2.1 ms       12-14 us        64-75 us        28 ms
=========  ==========  ===========  ==============  ==============  ===============

.. [1] encode + decode of the request and of the reply, in process, hot loop.
.. [2] raw packet-4 echo through the worker program, parent and worker pinned to one CPU: the
   CPU cost of a call. The codec runs colder than in [1], so json's extra cost is ~12 us.
.. [3] the same, unpinned; cross-CPU wake-ups dominate and vary between runs.

* orjson saves ~13 us of CPU per call against json, but every worker start pays ~8.5 ms more:
  it pays back after ~650 calls per worker.
* msgpack is the best trade-off measured: ~2-4 us behind orjson per call, ~1 ms more than json
  at start (pays back after ~100 calls), and it carries ``bytes``.
* So ``msgpack`` is a declared dependency and the default. ``json`` stays for handlers that
  need integers beyond 64 bits or a human-readable wire; ``orjson`` for call-bound pools with
  long-lived workers.

Codec objects hold no per-call state, so one instance is shared by every thread of a process.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "Codec",
    "CodecError",
    "CodecUnavailable",
    "DecodeError",
    "EncodeError",
    "JsonCodec",
    "MsgpackCodec",
    "OrjsonCodec",
    "available_codecs",
    "get_codec",
]

#: Chosen by measurement; see the module docstring for the figures and the reasoning.
DEFAULT_CODEC = "msgpack"


class CodecError(ValueError):
    """Base class for codec failures (unknown codec, unencodable value, undecodable bytes)."""


class CodecUnavailable(CodecError):
    """The codec exists but the optional library it needs is not installed."""


class EncodeError(CodecError):
    """A value cannot be represented by the codec (e.g. a ``set`` through ``json``)."""


class DecodeError(CodecError):
    """The bytes are not a valid encoding for the codec."""


class Codec(Protocol):
    """Turns one Python value into one frame payload and back.

    Implementations raise :class:`EncodeError` / :class:`DecodeError` (never the underlying
    library's exceptions), so callers handle every codec alike.
    """

    name: str

    def encode(self, obj: object) -> bytes: ...

    def decode(self, data: bytes) -> object: ...


class JsonCodec:
    """Stdlib JSON, compact and ASCII-only (so lone surrogates still encode).

    >>> c = JsonCodec()
    >>> c.decode(c.encode({"a": [1, None]}))
    {'a': [1, None]}
    """

    name = "json"

    def __init__(self) -> None:
        import json

        # Pre-built encoder/decoder: json.dumps with non-default arguments builds a new
        # JSONEncoder on every call, which costs more than the encoding of a small message.
        self._encode: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode
        self._decode: Callable[[str], Any] = json.JSONDecoder().decode

    def encode(self, obj: object) -> bytes:
        """Encode *obj* to UTF-8 JSON bytes."""
        try:
            return self._encode(obj).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise EncodeError(f"json cannot encode {type(obj).__name__}: {exc}") from exc

    def decode(self, data: bytes) -> object:
        """Decode UTF-8 JSON bytes."""
        try:
            return self._decode(str(data, "utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise DecodeError(f"invalid json: {exc}") from exc


class OrjsonCodec:
    """``orjson``: the fastest round trip, at the price of a slower import.

    >>> c = OrjsonCodec()
    >>> c.decode(c.encode([1, "x"]))
    [1, 'x']
    """

    name = "orjson"

    def __init__(self) -> None:
        orjson = _require("orjson", "orjson")
        self._encode: Callable[[Any], bytes] = orjson.dumps
        self._decode: Callable[[bytes], Any] = orjson.loads

    def encode(self, obj: object) -> bytes:
        """Encode *obj* to JSON bytes with orjson."""
        try:
            return self._encode(obj)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise EncodeError(f"orjson cannot encode {type(obj).__name__}: {exc}") from exc

    def decode(self, data: bytes) -> object:
        """Decode JSON bytes with orjson."""
        try:
            return self._decode(data)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            raise DecodeError(f"invalid json: {exc}") from exc


class MsgpackCodec:
    """``msgpack`` with ``str``/``bytes`` kept distinct (``use_bin_type``, ``raw=False``).

    Map keys need not be strings (``strict_map_key=False``): that check guards against hash
    flooding from untrusted peers, and without it a worker's reply with ``int`` keys would
    encode fine and then fail to decode in the parent.

    >>> c = MsgpackCodec()
    >>> c.decode(c.encode({"b": b"\\x00"}))
    {'b': b'\\x00'}
    """

    name = "msgpack"

    def __init__(self) -> None:
        msgpack = _require("msgpack", "msgpack")
        # packb/unpackb rather than a shared Packer: a Packer has an internal buffer and the
        # same codec object is used from several threads in the parent.
        self._encode: Callable[[Any], bytes] = msgpack.packb
        self._decode: Callable[[bytes], Any] = functools.partial(
            msgpack.unpackb, strict_map_key=False
        )

    def encode(self, obj: object) -> bytes:
        """Encode *obj* to MessagePack bytes."""
        try:
            return self._encode(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"msgpack cannot encode {type(obj).__name__}: {exc}") from exc

    def decode(self, data: bytes) -> object:
        """Decode MessagePack bytes (the whole payload must be one value)."""
        try:
            return self._decode(data)
        except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, StackError
            raise DecodeError(f"invalid msgpack: {exc}") from exc


#: Codec name -> (class, module it needs or None for stdlib-only).
_CODECS: dict[str, tuple[Callable[[], Codec], str | None]] = {
    "json": (JsonCodec, None),
    "orjson": (OrjsonCodec, "orjson"),
    "msgpack": (MsgpackCodec, "msgpack"),
}

#: Every codec name, available or not.
CODECS: tuple[str, ...] = tuple(_CODECS)

# Codecs are stateless, so one instance per name is enough. A race between two first calls
# only builds two equal instances, one of which is dropped.
_instances: dict[str, Codec] = {}


def get_codec(name: str) -> Codec:
    """Return the codec called *name*, importing its library on first use.

    Raises :class:`CodecError` for an unknown name and :class:`CodecUnavailable` when the
    optional library is missing.

    >>> codec = get_codec("json")
    >>> codec.decode(codec.encode({"ok": True}))
    {'ok': True}
    """
    codec = _instances.get(name)
    if codec is not None:
        return codec
    try:
        factory, _module = _CODECS[name]
    except (KeyError, TypeError):
        raise CodecError(f"unknown codec {name!r}; choose one of: {', '.join(CODECS)}") from None
    codec = _instances.setdefault(name, factory())
    return codec


def available_codecs() -> list[str]:
    """Return the codec names whose library is installed, without importing any of them.

    >>> "json" in available_codecs()
    True
    """
    return [
        name
        for name, (_factory, module) in _CODECS.items()
        if module is None or importlib.util.find_spec(module) is not None
    ]


def _require(module: str, codec: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CodecUnavailable(
            f"codec {codec!r} needs the {module!r} package, which is not installed "
            f"(pip install {module}): {exc}"
        ) from exc
