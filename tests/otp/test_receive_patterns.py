"""Receive patterns stay exact when `receive` reuses compiled patterns from its per-process cache."""

from __future__ import annotations

from collections import namedtuple

import pytest

import otp
from otp import ANY, TIMEOUT


def test_equal_values_of_other_types_are_different_patterns_even_when_cached() -> None:
    me = otp.self()
    pairs = [(1, 1.0), (1.0, 1), (True, 1), (1, True), ((1,), (1.0,)), (("a", 1), ("a", True))]
    for pattern, other in pairs:
        otp.receive(pattern, timeout=0)  # compile and cache this pattern
        otp.send(me, other)
        assert otp.receive(pattern, timeout=0) is TIMEOUT, (pattern, other)
        assert otp.receive(other, timeout=0) == other


def test_a_cached_template_matches_again_with_fresh_but_identical_elements() -> None:
    me = otp.self()
    for i in range(5):
        otp.send(me, ("n", i))
        assert otp.receive(("n", ANY), timeout=0) == ("n", i)


def test_a_template_with_a_fresh_ref_each_time_still_matches_only_its_ref() -> None:
    me = otp.self()
    for _ in range(100):  # more than the cache holds: it is emptied and refilled
        ref, other = otp.make_ref(), otp.make_ref()
        otp.send(me, ("reply", other, "not mine"))
        otp.send(me, ("reply", ref, "mine"))
        assert otp.receive(("reply", ref, ANY), timeout=0) == ("reply", ref, "mine")
        assert otp.receive(("reply", other, ANY), timeout=0) == ("reply", other, "not mine")


def test_a_namedtuple_value_and_an_equal_tuple_template_stay_apart() -> None:
    Point = namedtuple("Point", "x y")
    me = otp.self()
    otp.receive(Point(1, 2), timeout=0)  # cache the namedtuple as a value pattern
    otp.send(me, (1, 2))
    assert otp.receive(Point(1, 2), timeout=0) is TIMEOUT  # a value matches its own type only
    assert otp.receive((1, 2), timeout=0) == (1, 2)  # the template matches a plain tuple


def test_nested_templates_types_and_several_patterns() -> None:
    me = otp.self()
    for _ in range(3):
        otp.send(me, ("outer", ("inner", 5)))
        otp.send(me, 7)
        assert otp.receive(("outer", ("inner", int)), timeout=0) == ("outer", ("inner", 5))
        assert otp.receive(str, int, timeout=0) == 7


@pytest.mark.parametrize("bad", [("ok", [1]), ("ok", {"a": 1})])
def test_a_bad_element_is_a_clear_error_every_time(bad: object) -> None:
    for _ in range(2):
        with pytest.raises(TypeError, match="bad receive pattern"):
            otp.receive(bad, timeout=0)
