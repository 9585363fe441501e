"""The worker program: the Python end of a bridge port.

Run as::

    python -m bridge.worker --handler mypkg.handlers [--handler ...] \\
        [--codec json|orjson|msgpack] [--worker-id ID] [--packet 1|2|4] [--spin-us N]

It imports the handler modules (which register commands with :mod:`bridge.registry`), then
serves requests read from stdin and answers on stdout, one ``{packet, N}`` frame per message,
each payload encoded with the chosen codec. It answers one request at a time, in order.

Protocol
--------
Request: ``{"id": any, "command": str, "args": list | dict, "session_id": str | int | None}``;
a list of args is passed positionally, a dict as keywords. ``args`` may be omitted.

Replies, with the request's ``id``::

    {"id": 7, "ok": True, "result": ...}
    {"id": 7, "ok": False, "error": {"type": "ValueError", "message": "...", "traceback": "..."}}

Error types the worker produces itself (everything else is the handler's exception class name):

==================  ===========================================================================
``BadFrame``        the payload could not be decoded (``id`` is ``None``); the worker goes on
``BadRequest``      it decoded but is not a request (no ``command``, args not list/dict, ...)
``UnknownCommand``  no such command; the message lists the accepted ones
``SessionRequired`` a session command came without a ``session_id``
``EncodeError``     the handler's result cannot be encoded with the codec
``FrameTooLarge``   the reply does not fit the packet header (only likely with ``--packet 1/2``)
==================  ===========================================================================

Built-in commands: ``ping`` -> ``{"worker_id", "pid", "uptime"}`` (the first ping reply is the
readiness signal: nothing else is ever written to stdout); ``info``; ``session_put(key,
value)``, ``session_get(key, default=None)``, ``session_drop()`` on the request's session;
``shutdown`` replies ``None`` and exits. The explicit ``shutdown`` exists because EOF is not
reliable: after a ``fork()`` in the parent, a copy of the write end of our stdin may stay open.

Exit statuses
-------------
======  ==========================================================================
``0``   stdin EOF, ``shutdown``, SIGTERM, or the parent stopped reading our replies
``2``   bad command line or unavailable codec (message on stderr)
``3``   a handler module failed to import (full traceback on stderr)
``4``   framing error: stdin ended in the middle of a frame (message on stderr)
======  ==========================================================================

SIGTERM raises ``SystemExit(0)`` in the main thread wherever it is, a running handler included.
One that lands in the instant before a handler enters a blocking call (``time.sleep``, a socket
read) is only seen when that call returns: CPython looks for signals between bytecodes and when
a system call is interrupted, and that one was not. A port that stops its worker therefore
follows SIGTERM with SIGKILL after its grace period.

Stdio discipline
----------------
The frame channel is moved off fds 0 and 1 before any handler code is imported: fd 1 becomes a
copy of stderr (so ``print``, ``sys.__stdout__`` and C libraries writing to fd 1 all land on
stderr) and fd 0 becomes ``/dev/null`` (so ``input()`` or a subprocess started by a handler
cannot swallow request bytes). The frames travel on private close-on-exec descriptors, which
also keeps them out of grandchildren: the parent still sees EOF on our stdout when we die, even
if a handler left a subprocess running. SIGINT is ignored: a Ctrl-C in the parent's terminal
reaches the whole process group, and the parent, which owns our lifetime, decides what to do.

Handlers must not leave non-daemon threads running: the interpreter would wait for them at exit.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from bridge.codec import CODECS, DEFAULT_CODEC, Codec, CodecError, EncodeError, get_codec
from bridge.framing import FrameTooLarge, FramingError, PacketDecoder, encode_frame
from bridge.registry import RESERVED, commands, lookup
from bridge.spin import Spinner

__all__ = [
    "EXIT_FRAMING",
    "EXIT_IMPORT",
    "EXIT_OK",
    "EXIT_USAGE",
    "Options",
    "UsageError",
    "Worker",
    "main",
    "parse_args",
    "serve",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_IMPORT = 3
EXIT_FRAMING = 4

#: Bytes asked of each read(): a pipe holds 64 KiB, so one read can drain it.
READ_SIZE = 65536

# Longest message kept when a reply must be shrunk to fit a small packet header.
_SHORT_MESSAGE = 80

Reply = dict[str, Any]


class BadRequest(Exception):
    """The payload decoded, but not into a request dict of the expected shape."""


class UnknownCommand(LookupError):
    """No built-in or registered handler answers this command."""


class SessionRequired(Exception):
    """A session command arrived without a ``session_id``."""


class Worker:
    """The state of one worker program: its identity, codec and per-session dicts.

    It is transport-agnostic (frames in, frames out), which lets :func:`serve` stay a tight
    read/write loop and keeps the dispatch testable without pipes.

    >>> w = Worker("w1", get_codec("json"))
    >>> w.handle_request({"id": 1, "command": "session_put", "args": ["k", 2], "session_id": "s"})
    {'id': 1, 'ok': True, 'result': None}
    """

    def __init__(
        self,
        worker_id: str,
        codec: Codec,
        packet: int = 4,
        handler_modules: Sequence[str] = (),
    ) -> None:
        self.worker_id = worker_id
        self.codec = codec
        self.packet = packet
        self.handler_modules = list(handler_modules)
        self.sessions: dict[Any, dict[str, Any]] = {}
        self.started = time.monotonic()
        #: Set by ``shutdown``: the serve loop exits after writing the reply.
        self.stopping = False
        #: Set by :func:`serve` when the worker spins for requests; ``info`` reports its stats.
        self.spinner: Spinner | None = None
        # Built-ins take the request's session_id first, then the request's args.
        self._builtins: dict[str, Callable[..., Any]] = {
            "ping": self._ping,
            "info": self._info,
            "session_put": self._session_put,
            "session_get": self._session_get,
            "session_drop": self._session_drop,
            "shutdown": self._shutdown,
        }
        assert set(self._builtins) == RESERVED, "registry.RESERVED must list the built-ins"

    # -- frames --------------------------------------------------------------------------------

    def reply_frame(self, frame: bytes) -> bytes:
        """Serve one request frame and return the complete reply frame (header included)."""
        reply = self.handle_frame(frame)
        try:
            return encode_frame(self._encode_reply(reply), self.packet)
        except FrameTooLarge as exc:
            return self._shrunk_frame(reply, exc)

    def handle_frame(self, frame: bytes) -> Reply:
        """Decode *frame* and serve it; an undecodable frame gives a ``BadFrame`` reply."""
        try:
            request = self.codec.decode(frame)
        except CodecError as exc:
            return error_reply(None, "BadFrame", str(exc))
        return self.handle_request(request)

    # -- requests ------------------------------------------------------------------------------

    def handle_request(self, request: object) -> Reply:
        """Serve one decoded request; every failure becomes an error reply."""
        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            command, args, session_id = parse_request(request)
            result = self.dispatch(command, args, session_id)
        except Exception as exc:
            return exception_reply(request_id, exc)
        return {"id": request_id, "ok": True, "result": result}

    def dispatch(self, command: str, args: list[Any] | dict[str, Any], session_id: Any) -> Any:
        """Run *command* and return its result; raise what the handler raises."""
        builtin = self._builtins.get(command)
        if builtin is not None:
            return apply(builtin, (session_id,), args)
        entry = lookup(command)
        if entry is None:
            raise UnknownCommand(
                f"unknown command {command!r}; accepted commands: {', '.join(self.commands())}"
            )
        if entry.session:
            return apply(entry.func, (self._session(command, session_id, create=True),), args)
        return apply(entry.func, (), args)

    def commands(self) -> list[str]:
        """Every command this worker accepts, built-ins included, sorted."""
        return sorted(RESERVED.union(commands()))

    # -- built-in commands -------------------------------------------------------------------

    def _ping(self, _session_id: Any) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "pid": os.getpid(), "uptime": self._uptime()}

    def _info(self, _session_id: Any) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "codec": self.codec.name,
            "packet": self.packet,
            "handler_modules": self.handler_modules,
            "commands": self.commands(),
            "sessions": len(self.sessions),
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "uptime": self._uptime(),
            "spin": None if self.spinner is None else self.spinner.stats(),
        }

    def _session_put(self, session_id: Any, key: str, value: Any) -> None:
        self._session("session_put", session_id, create=True)[key] = value

    def _session_get(self, session_id: Any, key: str, default: Any = None) -> Any:
        return self._session("session_get", session_id, create=False).get(key, default)

    def _session_drop(self, session_id: Any) -> bool:
        self._require_session("session_drop", session_id)
        return self.sessions.pop(session_id, None) is not None

    def _shutdown(self, _session_id: Any) -> None:
        self.stopping = True

    # -- helpers -------------------------------------------------------------------------------

    def _session(self, command: str, session_id: Any, *, create: bool) -> dict[str, Any]:
        self._require_session(command, session_id)
        session = self.sessions.get(session_id)
        if session is None:
            session = {}
            # A read must not create a session: session counts would grow with every probe.
            if create:
                self.sessions[session_id] = session
        return session

    @staticmethod
    def _require_session(command: str, session_id: Any) -> None:
        if session_id is None:
            raise SessionRequired(f"command {command!r} needs a session_id")

    def _uptime(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def _encode_reply(self, reply: Reply) -> bytes:
        try:
            return self.codec.encode(reply)
        except EncodeError as exc:
            return self.codec.encode(exception_reply(reply.get("id"), exc, traceback=False))

    def _shrunk_frame(self, reply: Reply, exc: FrameTooLarge) -> bytes:
        """Return the most informative reply that fits the packet header."""
        for smaller in _smaller_replies(reply, exc):
            try:
                return encode_frame(self._encode_reply(smaller), self.packet)
            except FrameTooLarge:
                continue
        raise exc


def parse_request(request: object) -> tuple[str, list[Any] | dict[str, Any], Any]:
    """Validate a decoded request; return ``(command, args, session_id)``.

    >>> parse_request({"id": 1, "command": "echo", "args": [1]})
    ('echo', [1], None)
    """
    if not isinstance(request, dict):
        raise BadRequest(f"a request must be a map, got {type(request).__name__}")
    command = request.get("command")
    if not isinstance(command, str):
        raise BadRequest(f"a request needs a str 'command', got {command!r}")
    args = request.get("args")
    if args is None:
        args = []
    elif not isinstance(args, (list, dict)):
        raise BadRequest(f"'args' must be a list or a map, got {type(args).__name__}")
    session_id = request.get("session_id")
    if session_id is not None and not isinstance(session_id, (str, int)):
        raise BadRequest(f"'session_id' must be a str, an int or null, got {session_id!r}")
    return command, args, session_id


def apply(func: Callable[..., Any], lead: tuple[Any, ...], args: list[Any] | dict[str, Any]) -> Any:
    """Call *func* with *lead* then *args* (positional if a list, keywords if a dict).

    >>> apply(divmod, (), [7, 2]), apply(pow, (), {"base": 2, "exp": 10})
    ((3, 1), 1024)
    """
    if isinstance(args, dict):
        return func(*lead, **args)
    return func(*lead, *args)


def error_reply(request_id: Any, type_: str, message: str, traceback: str = "") -> Reply:
    """Build an error reply.

    >>> error_reply(3, "BadRequest", "no command")["error"]["type"]
    'BadRequest'
    """
    error = {"type": type_, "message": message, "traceback": traceback}
    return {"id": request_id, "ok": False, "error": error}


def exception_reply(request_id: Any, exc: BaseException, *, traceback: bool = True) -> Reply:
    """Build the error reply describing *exc* (type name, message, handler-side traceback)."""
    text = format_traceback(exc) if traceback else ""
    return error_reply(request_id, type(exc).__name__, _message(exc), text)


def format_traceback(exc: BaseException) -> str:
    """Format *exc* with the worker's own frames removed, so it starts in the handler.

    Errors raised by the worker itself (``UnknownCommand``, ``SessionRequired``, ...) keep
    only their last line, since their stack says nothing the message does not.
    """
    # Imported here, not at the top: it costs ~3 ms and is only needed once something failed.
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, _skip_own_frames(exc.__traceback__)))


def serve(worker: Worker, frames_in: int, frames_out: int, spin: float = 0.0) -> int:
    """Read request frames from *frames_in* and write replies to *frames_out* until EOF.

    With `spin` (seconds), looks for the next request up to that long after each reply before
    it blocks in read, while that pays (see :mod:`bridge.spin`): back-to-back calls then find
    the worker awake. Returns the exit status; raises :class:`FramingError` if the input ends
    mid-frame.
    """
    decoder = PacketDecoder(worker.packet)
    read, reply_frame = os.read, worker.reply_frame
    spinner = worker.spinner = Spinner(frames_in, spin) if spin > 0 else None
    while True:
        if spinner is not None:
            spinner.wait()
        chunk = read(frames_in, READ_SIZE)
        if not chunk:
            decoder.eof()
            return EXIT_OK
        for frame in decoder.feed(chunk):
            try:
                write_all(frames_out, reply_frame(frame))
            except BrokenPipeError:
                return EXIT_OK  # nobody reads our replies any more: same as EOF
            if worker.stopping:
                return EXIT_OK


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to *fd* (a pipe write can be partial, e.g. after a signal)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    with memoryview(data) as view:
        while written < len(view):
            written += os.write(fd, view[written:])


def claim_stdio() -> tuple[int, int]:
    """Move the frame channel to private fds; return ``(frames_in, frames_out)``.

    Afterwards fd 1 and ``sys.stdout`` are stderr and fd 0 is ``/dev/null``. Must run before
    any handler module is imported, or its import-time output could corrupt the stream.
    """
    if sys.stdout is not None:
        sys.stdout.flush()
    # os.dup returns non-inheritable fds: subprocesses of handlers do not get the frame pipes.
    frames_in = os.dup(0)
    frames_out = os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    sys.stdout = sys.stderr
    return frames_in, frames_out


USAGE = """\
usage: python -m bridge.worker [--handler MODULE]... [--codec {json,orjson,msgpack}]
                               [--worker-id ID] [--packet {1,2,4}] [--spin-us N]

Serve bridge requests on stdin/stdout with the @handler functions of the given modules.

  --handler MODULE   module to import for its handlers (repeatable)
  --codec NAME       payload codec, default %(codec)s
  --worker-id ID     name reported by ping and info, default worker-<pid>
  --packet N         frame header size in bytes, default 4
  --spin-us N        after each reply, look for the next request for up to N microseconds
                     before blocking, while that pays (see bridge.spin); default 0
"""


class UsageError(Exception):
    """The command line is invalid; the message says why."""


class Options:
    """The worker's command-line options."""

    __slots__ = ("codec", "handlers", "help", "packet", "spin", "worker_id")

    def __init__(self) -> None:
        self.handlers: list[str] = []
        self.codec = DEFAULT_CODEC
        self.worker_id: str | None = None
        self.packet = 4
        self.spin = 0.0
        self.help = False


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the command line; raise :class:`UsageError` if it is invalid.

    Hand-written rather than argparse: argparse drags in shutil, locale, bz2 and lzma, ~4.5 ms
    of every worker start for four options.

    >>> o = parse_args(["--handler", "a", "--handler=b", "--packet", "2"])
    >>> o.handlers, o.packet, o.codec
    (['a', 'b'], 2, 'json')
    """
    options = Options()
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            options.help = True
            continue
        name, has_value, value = arg.partition("=")
        setter = _OPTION_SETTERS.get(name)
        if setter is None:
            raise UsageError(f"unrecognized argument {arg!r}")
        if not has_value:
            following = next(args, None)
            if following is None:
                raise UsageError(f"{name} needs a value")
            value = following
        setter(options, value)
    return options


def _set_spin(options: Options, value: str) -> None:
    try:
        micros = int(value)
    except ValueError:
        micros = -1
    if micros < 0:
        raise UsageError(f"--spin-us must be a whole number of microseconds >= 0, got {value!r}")
    options.spin = micros / 1e6


def _set_handler(options: Options, value: str) -> None:
    options.handlers.append(value)


def _set_codec(options: Options, value: str) -> None:
    if value not in CODECS:
        raise UsageError(f"--codec must be one of {', '.join(CODECS)}, got {value!r}")
    options.codec = value


def _set_worker_id(options: Options, value: str) -> None:
    options.worker_id = value


def _set_packet(options: Options, value: str) -> None:
    if value not in ("1", "2", "4"):
        raise UsageError(f"--packet must be 1, 2 or 4, got {value!r}")
    options.packet = int(value)


_OPTION_SETTERS: dict[str, Callable[[Options, str], None]] = {
    "--handler": _set_handler,
    "--codec": _set_codec,
    "--worker-id": _set_worker_id,
    "--packet": _set_packet,
    "--spin-us": _set_spin,
}


def import_handlers(modules: Sequence[str]) -> bool:
    """Import each handler module; on failure print the traceback to stderr, return False."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:
            import traceback

            print(f"bridge.worker: cannot import handler module {module!r}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker program; return its exit status (see the module docstring).

    Only for the worker's own process: it rewires the process's stdin and stdout.
    """
    frames_in, frames_out = claim_stdio()
    die_with_parent()
    # Installed before handler imports, so even a slow import ends cleanly on SIGTERM.
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
        codec = get_codec(options.codec)
    except (UsageError, CodecError) as exc:
        synopsis = USAGE.split("\n\n")[0]
        print(f"{synopsis}\nbridge.worker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if options.help:
        print(USAGE % {"codec": DEFAULT_CODEC}, file=sys.stderr)
        return EXIT_OK
    if not import_handlers(options.handlers):
        return EXIT_IMPORT
    worker_id = options.worker_id or f"worker-{os.getpid()}"
    worker = Worker(worker_id, codec, options.packet, options.handlers)
    try:
        return serve(worker, frames_in, frames_out, options.spin)
    except FramingError as exc:
        print(f"bridge.worker {worker_id}: framing error: {exc}", file=sys.stderr)
        return EXIT_FRAMING


def die_with_parent() -> None:
    """Ask Linux for SIGKILL when the parent dies, so a worker never outlives it.

    The parent forks us from its long-lived I/O thread (the signal follows the forking *thread*)
    and passes its pid in THREADOTP_PARENT_PID: if it died before we got here, exit now.
    Elsewhere than Linux this is a no-op and stdin EOF is the only guard.
    """
    expected = os.environ.get("THREADOTP_PARENT_PID")
    if not sys.platform.startswith("linux") or not expected:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(expected):
        os._exit(EXIT_OK)


def _on_sigterm(_signum: int, _frame: object) -> None:
    # Raised in the main thread wherever it is (blocked in read, or inside a handler), so the
    # worker unwinds and exits 0 like an orderly stop; finally-blocks and atexit still run.
    raise SystemExit(EXIT_OK)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not take the worker down
        return f"<unprintable {type(exc).__name__}>"


def _skip_own_frames(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_frame.f_code.co_filename == _OWN_FILE:
        tb = tb.tb_next
    return tb


def _smaller_replies(reply: Reply, exc: FrameTooLarge) -> Iterator[Reply]:
    error = reply.get("error")
    if error is not None:
        yield error_reply(reply.get("id"), error["type"], error["message"][:_SHORT_MESSAGE])
    yield error_reply(reply.get("id"), "FrameTooLarge", str(exc)[:_SHORT_MESSAGE])
    yield error_reply(reply.get("id"), "FrameTooLarge", "")


_OWN_FILE = __file__


if __name__ == "__main__":
    sys.exit(main())
