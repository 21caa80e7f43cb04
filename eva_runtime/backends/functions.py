"""A user's Python functions: rewards ``f(prompts, responses)`` and preferences
``f(prompts, responses_a, responses_b)``. Loading the reference, calling it, and checking
what it returned, each in one place, so both kinds fail alike: a ValueError that names the
function and, for a bad value, the first offending index.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from ..spec import parse_function_ref


def checked_numbers(
    result: Any,
    expected: int,
    where: str,
    *,
    what: str = "scores",
    per: str = "responses",
    probabilities: bool = False,
) -> list[float]:
    """One finite number per row (in [0, 1] with ``probabilities``), or a ValueError."""
    if isinstance(result, str | bytes | dict) or not hasattr(result, "__len__"):
        raise ValueError(f"{where} returned {type(result).__name__}, expected a list of floats")
    values = list(result)
    if len(values) != expected:
        raise ValueError(f"{where} returned {len(values)} {what} for {expected} {per}")
    rule = (
        "a probability is a number in [0, 1]"
        if probabilities
        else ("every score must be a finite number")
    )
    out: list[float] = []
    for i, value in enumerate(values):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        ok = ok and math.isfinite(float(value))
        if ok and probabilities:
            ok = 0.0 <= float(value) <= 1.0
        if not ok:
            raise ValueError(f"{where} returned {value!r} at index {i}; {rule}")
        out.append(float(value))
    return out


def call_user_function(fn: Callable[..., Any], where: str, *columns: Sequence[str]) -> Any:
    """Call a user's function on lists; whatever it raises becomes a ValueError naming it."""
    try:
        return fn(*(list(c) for c in columns))
    except Exception as exc:
        raise ValueError(f"{where} raised {type(exc).__name__}: {exc}") from exc


def load_function(ref: str) -> Callable[..., Any]:
    """Import the callable ``ref`` names; a ValueError says what is wrong with it."""
    parsed = parse_function_ref(ref)
    if parsed is None:
        raise ValueError(
            f"reward function {ref!r} is not of the form 'module:function' "
            "(e.g. 'my_rewards:length_penalty')"
        )
    module_name, attribute = parsed
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            reason = f"module {module_name!r} not found; is it installed or on PYTHONPATH?"
        else:  # the module exists but fails while importing: show why
            reason = f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        raise ValueError(f"reward function {ref!r}: {reason}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ValueError(
                f"reward function {ref!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from exc
    if not callable(target):
        raise ValueError(f"reward function {ref!r} is a {type(target).__name__}, not callable")
    fn: Callable[..., Any] = target
    return fn
