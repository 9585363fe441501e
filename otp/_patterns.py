"""Receive patterns: a predicate, a type, a value, or a tuple template with `ANY` wildcards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from otp._terms import ANY

Matcher = Callable[[Any], bool]

_UNSUPPORTED = (list, dict, set, frozenset, bytearray)


def compile_patterns(patterns: tuple[Any, ...]) -> Matcher | None:
    """Turn `receive`'s patterns into one predicate; None means "any message".

    >>> m = compile_patterns((("reply", ANY),))
    >>> m(("reply", 1)), m(("other", 1))
    (True, False)
    """
    if not patterns:
        return None
    matchers = [compile_pattern(p) for p in patterns]
    if len(matchers) == 1:
        return matchers[0]
    return lambda msg: any(m(msg) for m in matchers)


def compile_pattern(pattern: Any) -> Matcher:
    """One pattern to a predicate. Raises TypeError naming a pattern we cannot match on."""
    if pattern is ANY:
        return lambda msg: True
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
    return lambda msg: msg.__class__ is pattern.__class__ and msg == pattern


def _template(template: tuple[Any, ...]) -> Matcher:
    size = len(template)
    parts = [_element(p) for p in template]

    def match(msg: Any) -> bool:
        if msg.__class__ is not tuple or len(msg) != size:
            return False
        for part, value in zip(parts, msg):
            if not part(value):
                return False
        return True

    return match


def _element(part: Any) -> Matcher:
    """Inside a template: ANY, a type (isinstance), a nested template, else equality.

    Callables inside templates are values, not predicates, so a template can match a message
    that carries a function.
    """
    if part is ANY:
        return lambda v: True
    if isinstance(part, type):
        return lambda v: isinstance(v, part)
    if part.__class__ is tuple:
        return _template(part)
    if isinstance(part, _UNSUPPORTED):
        raise TypeError(f"bad receive pattern element {part!r}: use a tuple, a type, ANY or a value")
    return lambda v: v is part or (v.__class__ is part.__class__ and v == part)
