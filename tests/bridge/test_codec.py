"""bridge.codec: every codec round trips the portable subset and fails with codec errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.codec import (
    CODECS,
    DEFAULT_CODEC,
    CodecError,
    CodecUnavailable,
    DecodeError,
    EncodeError,
    available_codecs,
    get_codec,
)

PORTABLE = {
    "id": 12345,
    "command": "echo",
    "args": [{"user": "alice", "items": [1, 2, 3], "ok": True, "score": 0.5, "none": None}],
    "session_id": "séssion-✓",
}

CODEC_PARAMS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(name not in available_codecs(), reason=f"{name} not installed"),
    )
    for name in CODECS
]


@pytest.mark.parametrize("name", CODEC_PARAMS)
def test_round_trips_the_portable_subset(name):
    codec = get_codec(name)
    assert codec.name == name
    data = codec.encode(PORTABLE)
    assert isinstance(data, bytes)
    assert codec.decode(data) == PORTABLE


@pytest.mark.parametrize("name", CODEC_PARAMS)
def test_tuples_come_back_as_lists(name):
    codec = get_codec(name)
    assert codec.decode(codec.encode((1, (2, 3)))) == [1, [2, 3]]


@pytest.mark.parametrize("name", CODEC_PARAMS)
def test_unencodable_values_raise_encode_error(name):
    with pytest.raises(EncodeError, match=name):
        get_codec(name).encode({"a": {1, 2}})


@pytest.mark.parametrize("name", CODEC_PARAMS)
def test_garbage_raises_decode_error(name):
    garbage = b"\xc1" if name == "msgpack" else b"\xff{not json"
    with pytest.raises(DecodeError):
        get_codec(name).decode(garbage)


def test_decode_and_encode_errors_are_codec_errors_and_value_errors():
    for cls in (EncodeError, DecodeError, CodecUnavailable):
        assert issubclass(cls, CodecError)
    assert issubclass(CodecError, ValueError)


def test_get_codec_returns_one_shared_instance():
    assert get_codec("json") is get_codec("json")


def test_an_unknown_codec_name_lists_the_known_ones():
    with pytest.raises(CodecError, match=r"unknown codec 'yaml'.*json, orjson, msgpack"):
        get_codec("yaml")


def test_the_default_codec_is_a_declared_dependency():
    import importlib.metadata

    requires = importlib.metadata.requires("threadotp") or []
    assert DEFAULT_CODEC == "msgpack"
    assert any(r.startswith("msgpack") and "extra" not in r for r in requires)
    assert DEFAULT_CODEC in available_codecs()


def test_a_missing_optional_library_is_codec_unavailable():
    # A fresh interpreter where importing orjson fails, whatever is installed here.
    script = (
        "import sys; sys.modules['orjson'] = None\n"
        "from bridge.codec import get_codec, CodecUnavailable\n"
        "try:\n"
        "    get_codec('orjson')\n"
        "except CodecUnavailable as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "codec 'orjson' needs the 'orjson' package" in out
    assert "pip install orjson" in out


def test_optional_libraries_are_imported_only_when_chosen():
    script = (
        "import sys\n"
        "from bridge.codec import get_codec\n"
        "get_codec('json')\n"
        "print(sorted(m for m in ('orjson', 'msgpack') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out.strip() == "[]"
