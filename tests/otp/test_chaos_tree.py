"""Chaos helpers, and a three-level tree killed for a bounded time that must converge back to
all-running and leave nothing behind."""

from __future__ import annotations

import random
from typing import Any

import pytest

import otp
from otp import DynamicSupervisor, Supervisor, TaskSupervisor, chaos, observer


class Echo(otp.GenServer):
    """Answers "ping"; traps exits so that its parent's shutdown runs terminate."""

    def init(self, arg: Any) -> Any:
        otp.trap_exit(True)
        return ("ok", arg)

    def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
        return ("reply", ("pong", state), state)


def echo(name: str) -> dict[str, Any]:
    return {"id": name, "start": (Echo.start_link, (name,))}


class TestHelpers:
    def test_kill_child_kills_the_chosen_child_with_the_given_reason_and_waits_for_it(self) -> None:
        sup = Supervisor.start_link([echo("a"), {"id": "b", "start": (otp.spawn_link, (otp.receive, "never"))}])
        before = {i: p for i, p, _, _ in Supervisor.which_children(sup)}
        kill = chaos.kill_child(sup, "b", reason="boom")
        assert kill == chaos.Kill(sup, "b", before["b"], "boom", "boom")
        assert not otp.is_alive(before["b"])

    def test_a_trapped_reason_leaves_the_child_alive_and_the_kill_says_so(self) -> None:
        sup = Supervisor.start_link([echo("a")])
        kill = chaos.kill_child(sup, "a", reason="please", timeout=0.1)
        assert kill is not None and kill.exit_reason is None and otp.is_alive(kill.pid)

    def test_kill_child_by_pid_and_by_seeded_random_choice(self) -> None:
        sup = Supervisor.start_link([echo(n) for n in "abcdef"])
        pids = {i: p for i, p, _, _ in Supervisor.which_children(sup)}
        assert chaos.kill_child(sup, pid=pids["c"]).id == "c"  # type: ignore[union-attr]
        chaos.wait_until_running(sup)
        first = chaos.kill_child(sup, rng=random.Random(7))
        chaos.wait_until_running(sup)
        again = chaos.kill_child(sup, rng=random.Random(7))
        assert first is not None and again is not None and first.id == again.id

    def test_kill_child_recursive_reaches_grandchildren(self) -> None:
        inner = Supervisor.spec([echo("deep")], id="inner")
        sup = Supervisor.start_link([inner])
        kill = chaos.kill_child(sup, "deep", recursive=True)
        assert kill is not None and kill.supervisor == Supervisor.which_children(sup)[0][1]
        assert chaos.kill_child(sup, "deep") is None  # not a direct child

    def test_kill_child_returns_none_when_nothing_is_running(self) -> None:
        sup = Supervisor.start_link([])
        assert chaos.kill_child(sup) is None

    def test_wait_until_running_raises_not_converged_with_the_tree(self) -> None:
        sup = Supervisor.start_link([echo("a"), echo("b")])
        Supervisor.terminate_child(sup, "b")
        with pytest.raises(chaos.NotConverged) as info:
            chaos.wait_until_running(sup, timeout=0.2)
        assert [(c.id, c.status) for c in info.value.view.children] == [("a", "waiting"), ("b", "undefined")]
        assert "'b'" in str(info.value) and "undefined" in str(info.value)
        assert telemetry_handlers() == []

    def test_wait_until_running_wakes_when_the_tree_heals(self) -> None:
        sup = Supervisor.start_link([echo("a")])
        Supervisor.terminate_child(sup, "a")
        helper = otp.spawn(lambda: Supervisor.restart_child(sup, "a"))
        view = chaos.wait_until_running(sup, timeout=5)
        assert view.children[0].alive
        del helper

    def test_kill_at_rate_keeps_its_pace_and_stops_when_the_supervisor_gives_up(self) -> None:
        sup = Supervisor.start([echo("a"), echo("b")], max_restarts=1000, max_seconds=1)
        kills = chaos.kill_at_rate(sup, rate=50, duration=0.2, rng=random.Random(1))
        # At most one kill per 20 ms (a loaded machine may manage fewer, never more).
        assert 1 <= len(kills) <= 11 and all(k.exit_reason == "killed" for k in kills)
        fragile = Supervisor.start([echo("a")], max_restarts=2)
        kills = chaos.kill_at_rate(fragile, rate=200, duration=2.0)
        assert len(kills) == 3 and not otp.is_alive(fragile)


def telemetry_handlers() -> list[Any]:
    return [h for h in otp.telemetry.list_handlers() if h[0].startswith("otp.chaos")]


def test_a_three_level_tree_killed_for_a_bounded_time_converges_and_leaks_nothing() -> None:
    leaf = Supervisor.spec([echo("l1"), echo("l2"), echo("l3")], id="leaf", strategy="rest_for_one",
                           max_restarts=5, max_seconds=1)
    mid = Supervisor.spec([echo("m1"), leaf, echo("m2")], id="mid", strategy="one_for_all",
                          max_restarts=3, max_seconds=1)
    tree = [
        echo("cache"),
        mid,
        DynamicSupervisor.spec(id="jobs", name="jobs"),
        TaskSupervisor.spec(id="tasks", name="tasks"),
    ]
    root = Supervisor.start(tree, name="root", max_restarts=10_000, max_seconds=1)
    root_ref = otp.monitor(root)
    for n in range(3):
        assert DynamicSupervisor.start_child("jobs", echo(f"job{n}"))[0] == "ok"
    TaskSupervisor.start_child("tasks", otp.receive, "never")

    kills = chaos.kill_at_rate(root, rate=150, duration=0.6, rng=random.Random(2024))
    assert len(kills) >= 15  # about 90 on a quiet machine; each kill first snapshots the tree
    assert {k.exit_reason for k in kills} == {"killed"}
    assert otp.is_alive(root), "the root's intensity is generous: it must survive"

    view = chaos.wait_until_running(root, timeout=10)
    workers = [node for _, node in observer.walk(view) if node.type == "worker"]
    for node in workers:
        assert node.pid is not None
        if node.id in ("cache", "m1", "m2", "l1", "l2", "l3"):
            assert otp.call(node.pid, "ping") == ("pong", node.id)
    assert {n.id for _, n in observer.walk(view)} >= {"cache", "mid", "m1", "leaf", "l1", "l2", "l3",
                                                       "m2", "jobs", "tasks"}
    assert sum(n.restarts for _, n in observer.walk(view)) >= 1

    Supervisor.stop(root)
    assert otp.receive(lambda m: isinstance(m, otp.Down) and m.ref == root_ref, timeout=10).reason == "normal"
    assert otp.processes() == [otp.self()], observer.render(view)
    assert telemetry_handlers() == []
