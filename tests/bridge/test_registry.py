"""bridge.registry: registering, looking up and clearing handlers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge import registry
from bridge.registry import RESERVED, clear, commands, handler, lookup, register


@pytest.fixture(autouse=True)
def isolated_registry() -> Iterator[None]:
    """Each test starts empty; whatever was registered before (bridge.examples) comes back."""
    saved = dict(registry._handlers)
    clear()
    try:
        yield
    finally:
        clear()
        registry._handlers.update(saved)


def test_bare_decorator_registers_under_the_function_name():
    @handler
    def shout(text):
        return text.upper()

    entry = lookup("shout")
    assert entry is not None
    assert entry.func is shout
    assert entry.session is False
    assert shout("a") == "A"  # the function itself is returned unchanged


def test_called_decorator_takes_a_name_and_the_session_flag():
    @handler("store", session=True)
    def put(session, key, value):
        session[key] = value

    entry = lookup("store")
    assert entry is not None and entry.func is put and entry.session is True
    assert lookup("put") is None


def test_decorator_with_empty_parentheses():
    @handler()
    def plain():
        return 1

    assert lookup("plain").func is plain


def test_commands_are_sorted_and_clear_forgets_them():
    for name in ("b", "a", "c"):
        register(lambda: None, name)
    assert commands() == ["a", "b", "c"]
    clear()
    assert commands() == []
    assert lookup("a") is None


def test_registering_the_same_function_again_replaces_it():
    def once():
        return 1

    register(once)
    register(once)
    assert commands() == ["once"]


def test_a_different_function_under_a_taken_name_is_refused():
    @handler("dup")
    def first():
        return 1

    with pytest.raises(ValueError, match=r"'dup' is already registered by .*first"):

        @handler("dup")
        def second():
            return 2

    assert lookup("dup").func is first


@pytest.mark.parametrize("name", sorted(RESERVED))
def test_builtin_command_names_are_reserved(name):
    with pytest.raises(ValueError, match="worker built-in"):
        register(lambda: None, name)


@pytest.mark.parametrize("name", ["", 42])
def test_a_command_name_must_be_a_non_empty_str(name):
    with pytest.raises(ValueError, match="non-empty str"):
        register(lambda: None, name)


def test_bridge_examples_registers_every_example():
    clear()
    import importlib

    import bridge.examples

    importlib.reload(bridge.examples)  # re-registration of the same functions is allowed
    assert commands() == sorted(
        ["echo", "add", "sleep", "fail", "flaky", "noisy", "crash", "counter_incr", "counter_get"]
    )
    assert lookup("counter_incr").session and lookup("counter_get").session
    assert not lookup("echo").session
