"""The one exception type for errors a user can cause and fix, and the range check inputs go through."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """Bad input, missing weights, unreadable files, an option this machine can't serve.

    The message says what went wrong and how to fix it; the CLI prints it without a traceback
    and exits with status 2.
    """


def check_range(
    name: str, value: Any, low: float | None = None, high: float | None = None, integer: bool = True
) -> int | float:
    """``value`` as a number inside ``[low, high]``, or a :class:`UserError` naming ``name`` and the bounds.

    Args:
        name: What the user set, as they set it (``--faces``, ``steps``).
        value: The value given (a number, or a string / None from a form).
        low: Smallest value allowed (``None``: no lower bound).
        high: Largest value allowed (``None``: no upper bound).
        integer: Refuse fractional values and return an ``int``.

    Returns:
        The value as an ``int`` (``integer``) or a ``float``.

    Raises:
        UserError: for a value of the wrong type or outside the bounds; the message gives the bounds.
    """
    if low is not None and high is not None:
        bounds = f"between {_fmt(low)} and {_fmt(high)}"
    elif low is not None:
        bounds = f">= {_fmt(low)}"
    elif high is not None:
        bounds = f"<= {_fmt(high)}"
    else:
        bounds = "a finite number"
    kind = "a whole number" if integer else "a number"
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (integer and number != int(number)):
        raise UserError(f"{name} must be {kind} {bounds}, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise UserError(f"{name} must be {kind} {bounds}, got {value!r}")
    return int(number) if integer else number


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def check_out_root(out_root: str | Path, flag: str = "--out") -> None:
    """Refuses an output root that is a file, lies under a file, or is not writable (creates nothing).

    Raises:
        UserError: naming ``flag`` and the path.
    """
    path = Path(out_root).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise UserError(f"{flag} {out_root} {where}; pass a folder (it is created when missing)")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out_root}: {existing} is not writable; pass a folder you can write to")
