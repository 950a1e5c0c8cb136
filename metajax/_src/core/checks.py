"""Argument checks shared by the library: each error names the argument and what was expected."""

from __future__ import annotations

import numpy as np


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """``int(value)`` if ``value`` is an integer (not a bool) in ``[low, high]``.

    Raises:
        ValueError: naming ``name``, the expected range and the value given.

    Examples:
        >>> check_int("k_shot", 5, 1)
        5
        >>> check_int("n_way", 1, 2, 10)
        Traceback (most recent call last):
        ...
        ValueError: `n_way` must be an int in [2, 10]; got 1.
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {bound}; got {value!r}.")
    return int(value)
