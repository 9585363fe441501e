"""The zygote program: a warm template process that forks ready-to-serve workers on request.

Run as (by `bridge.zygote_actor`, never by hand)::

    python -m bridge.zygote --socket FD [--handler MODULE]... [--codec NAME] [--spin-us N]

Starting a worker from scratch costs an interpreter start and the handler imports (about 25 ms
on our development VM); forking one from a process that has already paid for both, and
answering the first ping, about 2.5 ms. The zygote imports the worker program, the codec and the handler modules once, then waits
for requests; each new worker is a fork of it that runs `bridge.worker.main` with the
zygote's handlers and codec, on pipes its parent made.

Protocol. Requests and their replies travel on a Unix socket (SOCK_SEQPACKET: one message per
request, the JSON and the fds in the same message); exit reports are packet-4 JSON frames on
stdout (claimed for frames before any handler is imported, as the worker does)::

    zygote -> parent   frame {"ready": zygote_pid}                once, when the imports are done
    parent -> zygote   socket {"spawn": tag, "worker_id": "w3"}   with the worker's stdin, stdout
                                                                  and stderr fds
    zygote -> parent   socket {"spawned": tag, "pid": pid}        with a pidfd of the new worker,
                                                                  or {"spawned": tag, "error": "..."}
    zygote -> parent   frame {"exited": tag, "status": status}    for each worker it reaped, by the
                                                                  tag of the request that made it
                                                                  (status < 0: killed by a signal)

The zygote is the workers' parent: it reaps them and reports their statuses. The parent watches
each worker through the pidfd the zygote opened right after the fork, before it could reap the
worker, so a pid reused since never gets mistaken for it. Lifetimes chain: the zygote dies with
the Python process that started it (its parent-death signal), and each worker dies with the
zygote (its own). The zygote exits on stdin EOF or SIGTERM, and with status 3 if a handler
module does not import (the traceback on stderr), as a worker would.

A forked worker keeps what the handler modules opened at import (files, log handlers) and runs
their ``atexit`` hooks when it exits, as a worker started on its own would.

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
from typing import Any

from bridge import worker
from bridge.codec import DEFAULT_CODEC, CodecError, get_codec
from bridge.framing import encode_frame

__all__ = ["main"]

USAGE = "usage: python -m bridge.zygote --socket FD [--handler MODULE]... [--codec NAME] [--spin-us N]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the zygote; returns its exit status (workers never return from here)."""
    frames_in, frames_out = worker.claim_stdio()
    worker.die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(worker.EXIT_OK))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        sock_fd, handlers, codec, spin_us = _parse(args)
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
    worker_args = ["--codec", codec, "--spin-us", spin_us, *(a for m in handlers for a in ("--handler", m))]
    own_fds = [frames_in, frames_out, wake_r, wake_w, sock.fileno()]
    tags: dict[int, Any] = {}  # pid -> the tag of the request that forked it, until reaped
    send = _sender(frames_out)
    send({"ready": os.getpid()})
    while True:
        ready, _, _ = select.select([frames_in, sock, wake_r], [], [])
        if wake_r in ready:
            _drain(wake_r)
            _reap(send, tags)
        if sock in ready:
            request = _take_request(sock)
            if request is not None:
                # Called from here, outside any try/finally: the forked worker's exit unwinds
                # through these frames, and nothing on the way may close or send anything.
                pid = _spawn(sock, *request, worker_args, own_fds)
                if pid is not None:
                    tags[pid] = request[0]
        if frames_in in ready and not os.read(frames_in, worker.READ_SIZE):
            return worker.EXIT_OK  # the parent closed the channel: the workers go with us


def _parse(args: list[str]) -> tuple[int, list[str], str, str]:
    sock_fd: int | None = None
    handlers: list[str] = []
    codec = DEFAULT_CODEC
    spin_us = "0"
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
        elif flag == "--spin-us":
            spin_us = value  # the workers check it
        else:
            raise ValueError(f"unknown option {flag!r}")
    if sock_fd is None:
        raise ValueError("--socket is required")
    return sock_fd, handlers, codec, spin_us


def _sender(fd: int):  # type: ignore[no-untyped-def]
    def send(message: dict[str, object]) -> None:
        worker.write_all(fd, encode_frame(json.dumps(message).encode(), 4))

    return send


def _take_request(sock: socket.socket) -> tuple[Any, str, list[int]] | None:
    """The next spawn request: ``(tag, worker_id, fds)``, or None (a bad one was answered)."""
    try:
        data, fds, _, _ = socket.recv_fds(sock, 4096, 3)
    except OSError:
        return None
    if not data:
        return None  # the parent's end is gone; its stdin EOF ends us next
    tag = None
    try:
        request = json.loads(data)
        tag = request["spawn"]
        if len(fds) != 3:
            raise ValueError(f"expected 3 fds with the spawn request, got {len(fds)}")
        return tag, str(request.get("worker_id")), fds
    except (ValueError, KeyError, TypeError) as exc:
        _close_all(fds)
        _reply(sock, {"spawned": tag, "error": f"bad request: {exc}"})
        return None


def _spawn(sock: socket.socket, tag: Any, worker_id: str, fds: list[int], worker_args: list[str], own_fds: list[int]) -> int | None:
    """Fork a worker and answer the request; the worker's pid, or None if there is none."""
    zygote = os.getpid()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        _close_all(fds)
        _reply(sock, {"spawned": tag, "error": f"fork failed: {exc}"})
        return None
    if pid == 0:
        sock.detach()  # the socket object must not close its number later: the worker's by then
        _become_worker(fds, own_fds, zygote, ["--worker-id", worker_id, *worker_args])
    _close_all(fds)  # the worker has its own copies
    try:
        pidfd = os.pidfd_open(pid)  # before any reaping: this is the worker, whatever its pid
    except OSError as exc:
        os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still the worker's
        _reply(sock, {"spawned": tag, "error": f"pidfd_open failed: {exc}"})
        return pid  # reaped and reported like any other
    try:
        _reply(sock, {"spawned": tag, "pid": pid}, [pidfd])
    finally:
        os.close(pidfd)
    return pid


def _reply(sock: socket.socket, reply: dict[str, Any], fds: Sequence[int] = ()) -> None:
    try:
        socket.send_fds(sock, [json.dumps(reply).encode()], list(fds))
    except OSError:
        pass  # the parent went away; its stdin EOF ends us next


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def _become_worker(fds: list[int], own_fds: list[int], zygote: int, argv: list[str]) -> None:
    """In the forked child: take the worker's pipes as fds 0-2 and run the worker.

    Never returns into the zygote's loop: it ends with the worker's SystemExit, which unwinds
    this process as any Python program's exit does (atexit hooks run, stdio is flushed).
    """
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setpgid(0, 0)  # its own process group, as a spawned worker gets from its port
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        # The zygote's own fds only: whatever the handler modules opened at import stays theirs.
        for fd in {*fds, *own_fds}:
            os.close(fd)
        # The worker's parent-death check compares its parent with this pid: the zygote's.
        os.environ["THREADOTP_PARENT_PID"] = str(zygote)
        status = worker.main(argv)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - report anything; never back into the zygote's loop
        traceback.print_exc()
        status = 1
    raise SystemExit(status)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _reap(send, tags: dict[int, Any]) -> None:  # type: ignore[no-untyped-def]
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send({"exited": tags.pop(pid, None), "status": os.waitstatus_to_exitcode(wait_status)})


if __name__ == "__main__":
    sys.exit(main())
