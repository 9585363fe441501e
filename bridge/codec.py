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
differ (``json`` turns ``int`` keys into strings, ``orjson`` refuses them, only ``msgpack`` keeps
``bytes``): handlers that want to work with any codec stay within the subset.

Why ``json`` is the default (``python benchmarks/bench_codec.py``, CPython 3.11, Linux, 2 vCPUs;
a 119-byte request and its reply, "round trip" = encode + decode in both directions):

==========  ==============  =================  ======================  ===================
codec       codec round     import in a fresh  echo through the        spawn -> first
            trip            interpreter        worker (packet 4, p50)  ping reply (median)
==========  ==============  =================  ======================  ===================
json        8.4 us          1.6 ms             ~64 us                  ~43 ms
orjson      1.3 us          11.4 ms            ~56 us                  ~53 ms
msgpack     3.8 us          2.5 ms             ~59 us                  ~45 ms
==========  ==============  =================  ======================  ===================

* orjson saves ~7 us per call but costs ~10 ms more at every worker start; that pays back only
  after ~1,400 calls per worker, and it is a dependency the project does not declare. The pipe
  round trip through the worker (~55-65 us, dominated by two context switches and the worker's
  dispatch) shrinks by barely 10 % with it.
* A default must work on a bare install, so it has to be the stdlib codec. Pools that are
  throughput-bound and have ``orjson`` installed should pass ``codec="orjson"`` explicitly.

Codec objects hold no per-call state, so one instance is shared by every thread of a process.
"""

from __future__ import annotations

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
DEFAULT_CODEC = "json"


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
        self._decode: Callable[[bytes], Any] = msgpack.unpackb

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
        raise CodecError(
            f"unknown codec {name!r}; choose one of: {', '.join(CODECS)}"
        ) from None
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
