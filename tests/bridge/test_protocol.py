"""The parent's side of the worker protocol against a scripted subprocess: every odd reply is
a clear error, never a hang or a wrong result."""

from __future__ import annotations

import sys
import textwrap

import pytest

from bridge.codec import get_codec
from bridge.port import Port
from bridge.protocol import BadReply, WorkerError, request

# Reads one packet-4 request and answers with the frame given on the command line (hex).
SCRIPTED = textwrap.dedent(
    """
    import os, sys
    def read(n):
        data = b""
        while len(data) < n:
            chunk = os.read(0, n - len(data))
            if not chunk:
                raise SystemExit(0)
            data += chunk
        return data
    read(int.from_bytes(read(4), "big"))
    reply = bytes.fromhex(sys.argv[1])
    os.write(1, len(reply).to_bytes(4, "big") + reply)
    os.read(0, 1)  # then wait for EOF
    """
)

json = get_codec("json")


def answer_with(reply: bytes) -> Port:
    return Port.open([sys.executable, "-c", SCRIPTED, reply.hex()], active=False)


def ask(port: Port) -> object:
    try:
        return request(port, json, 7, "work", [1], None, 5.0, "w1")
    finally:
        port.close()
        assert port.wait_closed(10)


def test_a_result_reply_returns_the_result() -> None:
    assert ask(answer_with(json.encode({"id": 7, "ok": True, "result": [1, 2]}))) == [1, 2]


def test_an_error_reply_is_a_worker_error_with_the_workers_details() -> None:
    error = {"type": "KeyError", "message": "'x'", "traceback": "Traceback: ..."}
    with pytest.raises(WorkerError) as info:
        ask(answer_with(json.encode({"id": 7, "ok": False, "error": error})))
    assert (info.value.type, info.value.message, info.value.command, info.value.worker_id) == (
        "KeyError", "'x'", "work", "w1",
    )


def test_a_malformed_error_reply_still_reaches_the_caller_as_a_worker_error() -> None:
    with pytest.raises(WorkerError, match="not a dict"):
        ask(answer_with(json.encode({"id": 7, "ok": False, "error": "not a dict"})))


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (json.encode({"id": 6, "ok": True, "result": 1}), "does not answer request 7"),
        (b"\xff garbage", "undecodable"),
        (json.encode([7, True]), "not a reply"),
        (json.encode({"id": 7}), "not a reply"),
    ],
)
def test_a_reply_that_is_not_an_answer_to_this_request_is_bad_reply(reply: bytes, match: str) -> None:
    with pytest.raises(BadReply, match=match):
        ask(answer_with(reply))
