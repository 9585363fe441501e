"""Telemetry in the shape of Erlang's ``telemetry``: attach, attach_many, detach, execute, span."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

import otp
from otp import telemetry
from otp.telemetry import AlreadyExists

Call = tuple[tuple[str, ...], dict[str, Any], dict[str, Any], Any]


@pytest.fixture(autouse=True)
def no_handlers_left_behind() -> Iterator[None]:
    """Handlers are global (as Erlang's are): detach whatever a test attached."""
    before = {hid for hid, _ in telemetry.list_handlers()}
    yield
    for hid, _ in telemetry.list_handlers():
        if hid not in before:
            telemetry.detach(hid)


@pytest.fixture
def errors() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", format="{level} {message}\n{exception}")
    try:
        yield lines
    finally:
        logger.remove(sink)


def recorder() -> tuple[list[Call], Any]:
    calls: list[Call] = []

    def handler(event: tuple[str, ...], measurements: dict[str, Any], metadata: dict[str, Any], config: Any) -> None:
        calls.append((event, measurements, metadata, config))

    return calls, handler


class TestAttachAndExecute:
    def test_a_handler_gets_event_measurements_metadata_and_config(self) -> None:
        calls, handler = recorder()
        telemetry.attach("h", ["pool", "checkout"], handler, {"cfg": 1})
        telemetry.execute(["pool", "checkout"], {"duration": 0.5}, {"pool": "p"})
        assert calls == [(("pool", "checkout"), {"duration": 0.5}, {"pool": "p"}, {"cfg": 1})]

    def test_metadata_defaults_to_an_empty_dict(self) -> None:
        calls, handler = recorder()
        telemetry.attach("h", ["e"], handler)
        telemetry.execute(["e"], {"n": 1})
        assert calls == [(("e",), {"n": 1}, {}, None)]

    def test_only_handlers_of_that_exact_event_run(self) -> None:
        calls, handler = recorder()
        telemetry.attach("h", ["a", "b"], handler)
        telemetry.execute(["a"], {})
        telemetry.execute(["a", "b", "c"], {})
        telemetry.execute(("a", "b"), {})  # any sequence of names is the same event
        assert [c[0] for c in calls] == [("a", "b")]

    def test_execute_with_no_handler_does_nothing(self) -> None:
        telemetry.execute(["nobody", "listens"], {"x": 1}, {})

    def test_handlers_run_in_attach_order_in_the_executing_thread(self) -> None:
        seen: list[tuple[str, threading.Thread]] = []
        for name in ("first", "second", "third"):
            telemetry.attach(name, ["e"], lambda e, m, md, cfg: seen.append((cfg, threading.current_thread())), name)
        telemetry.execute(["e"], {})
        assert seen == [(n, threading.current_thread()) for n in ("first", "second", "third")]

    def test_attach_many_attaches_one_handler_to_several_events(self) -> None:
        calls, handler = recorder()
        telemetry.attach_many("h", [["a", "start"], ["a", "stop"]], handler)
        telemetry.execute(["a", "start"], {})
        telemetry.execute(["a", "stop"], {})
        assert [c[0] for c in calls] == [("a", "start"), ("a", "stop")]
        assert sorted(telemetry.list_handlers(["a"])) == [("h", ("a", "start")), ("h", ("a", "stop"))]

    def test_an_id_can_be_attached_only_once(self) -> None:
        _, handler = recorder()
        telemetry.attach("dup", ["e"], handler)
        with pytest.raises(AlreadyExists, match="dup"):
            telemetry.attach("dup", ["other"], handler)
        with pytest.raises(AlreadyExists):
            telemetry.attach_many("dup", [["x"]], handler)

    def test_an_event_must_be_a_sequence_of_names_not_a_string(self) -> None:
        _, handler = recorder()
        with pytest.raises(TypeError, match="sequence of names"):
            telemetry.attach("h", "pool.checkout", handler)  # type: ignore[arg-type]

    def test_a_handler_must_be_callable(self) -> None:
        with pytest.raises(TypeError, match="callable"):
            telemetry.attach("h", ["e"], "not a function")  # type: ignore[arg-type]
        assert "h" not in {h for h, _ in telemetry.list_handlers()}

    def test_handlers_run_in_whichever_process_executes(self) -> None:
        pids: list[otp.Pid] = []
        telemetry.attach("h", ["e"], lambda e, m, md, cfg: pids.append(otp.self()))
        pid, ref = otp.spawn_monitor(telemetry.execute, ["e"], {})
        otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == ref, timeout=5)
        assert pids == [pid]


class TestDetach:
    def test_detach_stops_the_handler(self) -> None:
        calls, handler = recorder()
        telemetry.attach("h", ["e"], handler)
        telemetry.execute(["e"], {"n": 1})
        assert telemetry.detach("h") is True
        telemetry.execute(["e"], {"n": 2})
        assert [c[1] for c in calls] == [{"n": 1}]
        assert telemetry.list_handlers(["e"]) == []

    def test_detach_of_an_unknown_id_returns_false(self) -> None:
        assert telemetry.detach("never attached") is False

    def test_detach_leaves_other_handlers_of_the_event(self) -> None:
        calls_a, a = recorder()
        calls_b, b = recorder()
        telemetry.attach("a", ["e"], a)
        telemetry.attach("b", ["e"], b)
        telemetry.detach("a")
        telemetry.execute(["e"], {})
        assert (len(calls_a), len(calls_b)) == (0, 1)

    def test_an_id_may_be_attached_again_after_detach(self) -> None:
        calls, handler = recorder()
        telemetry.attach("h", ["e"], handler)
        telemetry.detach("h")
        telemetry.attach("h", ["e"], handler)
        telemetry.execute(["e"], {})
        assert len(calls) == 1


class TestFailingHandlers:
    def test_a_raising_handler_is_detached_and_logged_and_the_caller_is_unaffected(self, errors: list[str]) -> None:
        calls, good = recorder()

        def bad(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
            raise RuntimeError("handler bug")

        telemetry.attach("bad", ["e"], bad)
        telemetry.attach("good", ["e"], good)
        telemetry.execute(["e"], {"n": 1})  # does not raise
        telemetry.execute(["e"], {"n": 2})
        assert [c[1] for c in calls] == [{"n": 1}, {"n": 2}]  # the next handler still ran
        assert [h for h, _ in telemetry.list_handlers(["e"])] == ["good"]
        text = "\n".join(errors)
        assert "'bad'" in text and "detaching" in text and "handler bug" in text

    def test_a_handler_that_exits_is_detached_and_the_caller_process_carries_on(self, errors: list[str]) -> None:
        def exiting(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
            otp.call("no such server", "hello")  # exits with noproc

        telemetry.attach("exiting", ["e"], exiting)
        me = otp.self()

        def emitter() -> None:
            telemetry.execute(["e"], {})
            otp.send(me, "emitter carried on")

        pid, ref = otp.spawn_monitor(emitter)
        assert otp.receive("emitter carried on", timeout=5) == "emitter carried on"
        assert otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == ref, timeout=5).reason == "normal"
        assert telemetry.list_handlers(["e"]) == []
        assert any("'exiting'" in line for line in errors)


class TestSpan:
    def test_span_emits_start_and_stop_with_durations_and_metadata(self) -> None:
        calls, handler = recorder()
        telemetry.attach_many("h", [["job", "start"], ["job", "stop"], ["job", "exception"]], handler)
        with telemetry.span(["job"], {"id": 7}) as metadata:
            metadata["result"] = "fine"  # the block may add to what stop reports
        (start_event, start_m, start_md, _), (stop_event, stop_m, stop_md, _) = calls
        assert (start_event, stop_event) == (("job", "start"), ("job", "stop"))
        assert set(start_m) == {"monotonic_time", "system_time"}
        assert stop_m["duration"] >= 0 and stop_m["monotonic_time"] >= start_m["monotonic_time"]
        assert start_md == {"id": 7}  # a snapshot: later additions do not rewrite the past
        assert stop_md == {"id": 7, "result": "fine"}

    def test_span_emits_exception_and_lets_the_exception_through(self) -> None:
        calls, handler = recorder()
        telemetry.attach_many("h", [["job", "start"], ["job", "stop"], ["job", "exception"]], handler)
        with pytest.raises(KeyError):
            with telemetry.span(["job"], {"id": 8}):
                raise KeyError("missing")
        events = [c[0] for c in calls]
        assert events == [("job", "start"), ("job", "exception")]
        _, measurements, metadata, _ = calls[1]
        assert measurements["duration"] >= 0
        assert metadata["id"] == 8 and metadata["kind"] is KeyError
        assert isinstance(metadata["reason"], KeyError) and metadata["stacktrace"] is not None

    def test_span_with_no_handlers_is_harmless(self) -> None:
        with telemetry.span(["quiet"]):
            pass
