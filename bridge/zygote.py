"""The zygote program: a warm template process that forks ready-to-serve workers on request.

Run as (by `bridge.zygote_actor`, never by hand)::

    python -m bridge.zygote --socket FD [--handler MODULE]... [--codec NAME]

Starting a worker from scratch costs an interpreter start and the handler imports (about 25 ms
on our development VM); forking one from a process that has already paid for both costs about
1 ms. The zygote imports the worker program, the codec and the handler modules once, then waits
for requests; each new worker is a fork of it that runs `bridge.worker.main` with the
zygote's handlers and codec, on pipes its parent made.

Protocol, on stdin/stdout as packet-4 JSON frames (stdout is claimed for frames before any
handler is imported, as the worker does)::

    zygote -> parent   {"ready": zygote_pid}                       once, when the imports are done
    parent -> zygote   {"spawn": tag, "worker_id": "w3"}           then, on the socket, one message
                                                                   carrying the worker's stdin,
                                                                   stdout and stderr fds
    zygote -> parent   {"spawned": tag, "pid": pid}                or {"spawned": tag, "error": "..."}
    zygote -> parent   {"exited": pid, "status": status}           for each worker it reaped
                                                                   (negative: killed by that signal)

The zygote is the workers' parent: it reaps them and reports their statuses, which is all the
parent needs, since it watches each worker through a pidfd. Lifetimes chain: the zygote dies
with the Python process that started it (its parent-death signal), and each worker dies with the
zygote (its own). The zygote exits on stdin EOF or SIGTERM, and with status 3 if a handler
module does not import (the traceback on stderr), as a worker would.

The zygote must stay single-threaded: a fork copies only the calling thread, and a handler
module that starts threads at import time is not fit for it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Sequence

from bridge import worker
from bridge.codec import DEFAULT_CODEC, CodecError, get_codec
from bridge.framing import PacketDecoder, encode_frame

__all__ = ["main"]

USAGE = "usage: python -m bridge.zygote --socket FD [--handler MODULE]... [--codec NAME]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the zygote; returns its exit status (workers never return from here)."""
    frames_in, frames_out = worker.claim_stdio()
    worker.die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(worker.EXIT_OK))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        sock_fd, handlers, codec = _parse(args)
        get_codec(codec)  # imported now, so that no worker pays for it
    except (ValueError, CodecError) as exc:
        print(f"{USAGE}\nbridge.zygote: error: {exc}", file=sys.stderr)
        return worker.EXIT_USAGE
    if not worker.import_handlers(handlers):
        return worker.EXIT_IMPORT
    import ctypes  # noqa: F401 - each worker's parent-death setup needs it: imported once, here

    sock = socket.socket(fileno=sock_fd)
    # SIGCHLD wakes the loop through this pipe (signal handlers only run between bytecodes, and
    # the loop sleeps in select).
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    worker_args = ["--codec", codec, *(a for m in handlers for a in ("--handler", m))]
    send = _sender(frames_out)
    send({"ready": os.getpid()})
    decoder = PacketDecoder(4)
    while True:
        ready, _, _ = select.select([frames_in, wake_r], [], [])
        if wake_r in ready:
            while os.read(wake_r, 512) == 512:
                pass
            _reap(send)
        if frames_in in ready:
            chunk = os.read(frames_in, worker.READ_SIZE)
            if not chunk:
                return worker.EXIT_OK  # the parent closed the channel: the workers go with us
            for frame in decoder.feed(chunk):
                request = json.loads(frame)
                send(_spawn(request, sock, worker_args))


def _parse(args: list[str]) -> tuple[int, list[str], str]:
    sock_fd: int | None = None
    handlers: list[str] = []
    codec = DEFAULT_CODEC
    while args:
        flag = args.pop(0)
        if not args:
            raise ValueError(f"{flag} needs a value")
        value = args.pop(0)
        if flag == "--socket":
            sock_fd = int(value)
        elif flag == "--handler":
            handlers.append(value)
        elif flag == "--codec":
            codec = value
        else:
            raise ValueError(f"unknown option {flag!r}")
    if sock_fd is None:
        raise ValueError("--socket is required")
    return sock_fd, handlers, codec


def _sender(fd: int):  # type: ignore[no-untyped-def]
    def send(message: dict[str, object]) -> None:
        worker.write_all(fd, encode_frame(json.dumps(message).encode(), 4))

    return send


def _spawn(request: dict[str, object], sock: socket.socket, worker_args: list[str]) -> dict[str, object]:
    tag = request.get("spawn")
    # The fds come right after the frame, from the same single-threaded sender.
    _, fds, _, _ = socket.recv_fds(sock, 16, 3)
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return {"spawned": tag, "error": f"expected 3 fds with the spawn request, got {len(fds)}"}
    zygote = os.getpid()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        pid = -1
        error = f"fork failed: {exc}"
    if pid == 0:
        _become_worker(fds, sock, zygote, ["--worker-id", str(request.get("worker_id")), *worker_args])
    for fd in fds:
        os.close(fd)
    if pid < 0:
        return {"spawned": tag, "error": error}
    return {"spawned": tag, "pid": pid}


def _become_worker(fds: list[int], sock: socket.socket, zygote: int, argv: list[str]) -> None:
    """In the forked child: take the worker's pipes as fds 0-2 and run the worker. Never returns."""
    status = 1
    try:
        sock.detach()  # its fd is closed below; the object must not close a number reused since
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setpgid(0, 0)  # its own process group, as a spawned worker gets from its port
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, _max_fd())
        # The worker's parent-death check compares its parent with this pid: the zygote's.
        os.environ["THREADOTP_PARENT_PID"] = str(zygote)
        status = worker.main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report anything, then exit: never back into the loop
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(status)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536


def _reap(send) -> None:  # type: ignore[no-untyped-def]
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send({"exited": pid, "status": os.waitstatus_to_exitcode(wait_status)})


if __name__ == "__main__":
    sys.exit(main())
