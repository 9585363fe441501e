"""The parent's side of the worker protocol: request frames out, replies back, errors as data.

The worker program (`bridge.worker`) documents the envelope. This module encodes requests,
decodes replies and turns an error reply into a `WorkerError` that carries the worker's
exception type, message and traceback — so a Python error in a worker is never lost.
"""

from __future__ import annotations

from typing import Any

from bridge.codec import Codec, CodecError
from bridge.port import Port, PortError

__all__ = ["BadReply", "WorkerError", "request"]


class WorkerError(Exception):
    """A handler in the worker raised; `type`, `message` and `traceback` are the worker's.

    >>> str(WorkerError("ValueError", "bad input", "Traceback ...", command="parse"))
    "ValueError in worker command 'parse': bad input\\nTraceback ..."
    """

    def __init__(
        self, type: str, message: str, traceback: str = "", *, command: str | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.type = type
        self.message = message
        self.traceback = traceback
        self.command = command
        self.worker_id = worker_id
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" in worker command {self.command!r}" if self.command else ""
        if self.worker_id:
            where += f" on {self.worker_id}"
        text = f"{self.type}{where}: {self.message}"
        return f"{text}\n{self.traceback}" if self.traceback else text

    def __reduce__(self) -> Any:
        return (_rebuild, (self.type, self.message, self.traceback, self.command, self.worker_id))


def _rebuild(type: str, message: str, traceback: str, command: str | None, worker_id: str | None) -> WorkerError:
    return WorkerError(type, message, traceback, command=command, worker_id=worker_id)


class BadReply(PortError):
    """The worker answered with something that is not a reply to our request."""


def request(
    port: Port,
    codec: Codec,
    request_id: int,
    command: str,
    args: list[Any] | dict[str, Any],
    session_id: Any = None,
    timeout: float | None = 5.0,
    worker_id: str | None = None,
    spin: float = 0.0,
) -> Any:
    """Send one request over a passive port and return the result (`spin`: see `Port.recv`).

    Raises `WorkerError` for an error reply, `BadReply` for garbage, and the port's
    `PortTimeout` / `PortClosed` when the worker is slow or gone.
    """
    try:
        frame = codec.encode({"id": request_id, "command": command, "args": args, "session_id": session_id})
    except CodecError as exc:
        raise TypeError(f"arguments of {command!r} cannot be encoded with {codec.name}: {exc}") from None
    port.command(frame)
    reply = _decode(port, codec, port.recv(timeout, spin))
    if reply["id"] != request_id:
        # An answer to an older request could only come from a call that timed out on this
        # worker, and such workers are replaced: the stream is not what we think it is.
        raise BadReply(
            f"reply {reply['id']!r} does not answer request {request_id}",
            port=port.name, os_pid=port.os_pid, stderr_tail=port.stderr_tail,
        )
    if reply["ok"] is True:
        return reply.get("result")
    error = reply.get("error") or {}
    if not isinstance(error, dict):  # a malformed error reply still reaches the caller as one
        error = {"message": repr(error)}
    raise WorkerError(
        str(error.get("type", "Error")), str(error.get("message", "")), str(error.get("traceback", "")),
        command=command, worker_id=worker_id,
    )


def _decode(port: Port, codec: Codec, data: bytes) -> dict[str, Any]:
    try:
        reply = codec.decode(data)
    except CodecError as exc:
        raise BadReply(f"undecodable reply: {exc}", port=port.name, os_pid=port.os_pid, stderr_tail=port.stderr_tail) from None
    if reply.__class__ is not dict or "id" not in reply or "ok" not in reply:
        raise BadReply(f"not a reply: {reply!r:.200}", port=port.name, os_pid=port.os_pid, stderr_tail=port.stderr_tail)
    return reply
