"""Receive patterns: a predicate, a type, a value, or a tuple template with `ANY` wildcards.

Compiling a pattern builds closures, which costs several times more than matching one message,
and `receive` is called with the same literal patterns over and over (each call of
``receive(("reply", ANY))`` builds a fresh but equal tuple). So `receive` hands in its process's
own small cache (touched only by the owner thread, so it needs no lock), keyed by the pattern.
A hit counts only if the pattern, or for a template every element, is the very same object as
the cached one: equal is not enough, because ``1`` and ``1.0``, or ``(1,)`` and ``(1.0,)``, are
equal but different patterns (a value matches only values of its own type). Predicates are
their own matchers and are never cached.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import is_
from types import FunctionType, MethodType
from typing import Any

from otp._terms import ANY

Matcher = Callable[[Any], bool]

_UNSUPPORTED = (list, dict, set, frozenset, bytearray)
CACHE_SIZE = 64
"""Templates remembered per process; the cache is emptied when full."""


def _always(msg: Any) -> bool:
    return True


def compile_patterns(
    patterns: tuple[Any, ...], cache: dict[Any, tuple[Any, Matcher]] | None = None
) -> Matcher | None:
    """Turn `receive`'s patterns into one predicate; None means "any message".

    `cache`, if given, remembers compiled templates (see the module doc); it must belong to
    the calling thread alone.

    >>> m = compile_patterns((("reply", ANY),))
    >>> m(("reply", 1)), m(("other", 1))
    (True, False)
    """
    if not patterns:
        return None
    if len(patterns) == 1:
        return _one(patterns[0], cache)
    matchers = tuple(_one(p, cache) for p in patterns)

    def match_any(msg: Any) -> bool:
        for m in matchers:
            if m(msg):
                return True
        return False

    return match_any


def _one(pattern: Any, cache: dict[Any, tuple[Any, Matcher]] | None) -> Matcher:
    cls = pattern.__class__
    if cls is FunctionType or cls is MethodType:
        return pattern  # type: ignore[no-any-return]  # a predicate is its own matcher
    if cache is None:
        return compile_pattern(pattern)
    try:
        hit = cache.get(pattern)
    except TypeError:  # unhashable: compile_pattern names the problem (or takes a callable)
        return compile_pattern(pattern)
    if hit is not None:
        kept = hit[0]
        if kept is pattern or (
            cls is tuple and kept.__class__ is tuple and all(map(is_, kept, pattern))
        ):
            return hit[1]
    matcher = compile_pattern(pattern)
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[pattern] = (pattern, matcher)
    return matcher


def compile_pattern(pattern: Any) -> Matcher:
    """One pattern to a predicate. Raises TypeError naming a pattern we cannot match on."""
    if pattern is ANY:
        return _always
    if isinstance(pattern, type):
        return lambda msg: isinstance(msg, pattern)
    if pattern.__class__ is tuple:
        return _template(pattern)
    if isinstance(pattern, _UNSUPPORTED):
        raise TypeError(
            f"bad receive pattern {pattern!r}: a {type(pattern).__name__} is not a pattern; "
            "use a predicate, a type, a value or a tuple template with ANY"
        )
    if callable(pattern):
        return pattern  # type: ignore[no-any-return]
    return _value(pattern)


def _value(value: Any) -> Matcher:
    cls = value.__class__
    return lambda msg: msg is value or (msg.__class__ is cls and msg == value)


def _template(template: tuple[Any, ...]) -> Matcher:
    """A matcher for a tuple template: right size, then each non-ANY element.

    Elements that are plain values (the common case: a tag such as ``"reply"``, a ref) are
    compared inline; the others (types, nested templates) go through their own matchers.
    """
    size = len(template)
    values: list[tuple[int, Any, type]] = []
    others: list[tuple[int, Matcher]] = []
    for i, part in enumerate(template):
        if part is ANY:
            continue
        if part.__class__ is tuple or isinstance(part, type):
            others.append((i, _element(part)))
        elif isinstance(part, _UNSUPPORTED):
            raise TypeError(
                f"bad receive pattern element {part!r}: use a tuple, a type, ANY or a value"
            )
        else:
            values.append((i, part, part.__class__))

    if not others and len(values) == 1:
        (at, value, cls), = values

        def match_one(msg: Any) -> bool:
            if msg.__class__ is not tuple or len(msg) != size:
                return False
            v = msg[at]
            return v is value or (v.__class__ is cls and v == value)

        return match_one

    def match(msg: Any) -> bool:
        if msg.__class__ is not tuple or len(msg) != size:
            return False
        for at, value, cls in values:
            v = msg[at]
            if v is not value and (v.__class__ is not cls or not v == value):
                return False
        for at, element in others:
            if not element(msg[at]):
                return False
        return True

    return match


def _element(part: Any) -> Matcher:
    """Inside a template: a type (isinstance) or a nested template.

    Callables inside templates are values, not predicates, so a template can match a message
    that carries a function.
    """
    if isinstance(part, type):
        return lambda v: isinstance(v, part)
    return _template(part)
