"""Checks of the public API's scalar arguments: each refusal is one line naming the argument and what it
takes, raised before anything is built.

Booleans are refused where a number is wanted (``True`` is an ``int`` to Python, but
``num_envs=True`` is a mistake, not one env), and so are strings of digits.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["check_count", "check_seed", "check_timeout"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_count(value: Any, name: str, low: int, meaning: str = "") -> int:
    """``value`` as an ``int``: a ``TypeError`` unless it is an integer, a ``ValueError`` below ``low``.

    :param name: the argument, for the message
    :param low: the least value allowed
    :param meaning: what the number means, added to the messages (``"0 steps the envs in this process"``)

    Example::

        >>> check_count(4, "num_envs", 1)
        4
        >>> check_count("4", "num_envs", 1)
        Traceback (most recent call last):
        TypeError: num_envs must be an integer, at least 1, got '4' (str)
    """
    hint = f" ({meaning})" if meaning else ""
    if not _is_int(value):
        got = f"{value!r} ({type(value).__name__})"
        raise TypeError(f"{name} must be an integer, at least {low}{hint}, got {got}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}{hint}, got {value}")
    return int(value)


def check_seed(seed: Any, name: str = "seed") -> None:
    """A seed is ``None`` or an integer >= 0 (numpy's generators, which envs seed, refuse negative ones).

    :param name: the argument, for the message
    """
    if seed is None:
        return
    if not _is_int(seed):
        raise TypeError(
            f"{name} must be an int (sub-env i gets seed + i) or None, got {seed!r} ({type(seed).__name__})"
        )
    if seed < 0:
        raise ValueError(
            f"{name} must be an integer >= 0 (numpy's seeding refuses negative seeds), got {seed}"
        )


def check_timeout(value: Any, name: str) -> float | None:
    """``None`` (no limit) or a positive, finite number of seconds, as a ``float``.

    :param name: the argument, for the message
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number of seconds or None, got {value!r}")
    return float(value)
