"""The one exception type for errors a user can cause and fix, and the checks every input goes through.

Config and command dataclasses declare what each field accepts next to the field
(``steps: int = checked(300, STEPS)``); :func:`check_fields` checks a whole (nested) dataclass against its
types and declarations, naming the dotted field or the flag. No torch import here: the CLI checks its
flags before the command starts.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal


class UserError(ValueError):
    """Bad input, missing weights, unreadable files, an option this machine can't serve.

    The message says what went wrong and how to fix it; the CLI prints it without a traceback
    and exits with status 2.
    """


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    integer: bool = True,
    fix: str = "",
) -> int | float:
    """``value`` as a number inside ``[low, high]``, or a :class:`UserError` naming ``name`` and the bounds.

    Args:
        name: What the user set, as they set it (``--faces``, ``steps``).
        value: The value given (a number, or a string / None from a form).
        low: Smallest value allowed (``None``: no lower bound).
        high: Largest value allowed (``None``: no upper bound).
        integer: Refuse fractional values and return an ``int``.
        fix: Appended to the message (how to fix it), when the bounds alone don't say.

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
    hint = f"; {fix}" if fix else ""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number) or (integer and number != int(number)):
        raise UserError(f"{name} must be {kind} {bounds}, got {value!r}{hint}")
    if low is not None and number < low and integer and low == 1:
        raise UserError(f"{name} must be positive ({kind} {bounds}), got {value!r}{hint}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise UserError(f"{name} must be {kind} {bounds}, got {value!r}{hint}")
    return (
        int(value) if integer and isinstance(value, numbers.Integral) else int(number) if integer else number
    )


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


# ------------------------------------------------------------------------------- declared checks
CHECK_KEY = "sds3d_check"
"""The key of a :class:`Check` in a dataclass field's ``metadata``."""

PathKind = Literal["file", "folder", "exists", "out_folder", "out_file"]


@dataclass(frozen=True)
class Check:
    """What a config or command field accepts beyond its type, declared next to the field.

    Numbers (and every number of a tuple) must lie in ``[low, high]``; ``ordered`` tuples must not
    decrease (a ``(min, max)`` range); ``path`` says what a path must be (``file``, ``folder``, ``exists``:
    either; ``out_folder``: a folder or one that can be created; ``out_file``: a file that can be
    written); an empty string or ``None`` means "not given" and is not checked as a path.

    Declare it with :func:`checked`; :func:`check_fields` runs every declaration of a (nested) dataclass.
    """

    low: float | None = None
    high: float | None = None
    ordered: bool = False
    path: PathKind | None = None
    suffixes: tuple[str, ...] = ()
    """Allowed file suffixes (lower case, with the dot) of a ``path``."""
    nonempty: bool = False
    """A string or tuple that must not be empty (blank strings count as empty)."""
    fix: str = ""
    """Appended to the message: how to fix a refused value."""

    def __call__(self, name: str, value: Any, integer: bool = False) -> None:
        """Raises a :class:`UserError` naming ``name`` when ``value`` breaks the declaration."""
        if self.nonempty and (value is None or not (value.strip() if isinstance(value, str) else value)):
            raise UserError(f"{name} is empty; {self.fix or 'give a value'}")
        if self.low is not None or self.high is not None:
            items = value if isinstance(value, (tuple, list)) else [value]
            for number in items:
                if number is not None:
                    check_range(name, number, self.low, self.high, integer=integer, fix=self.fix)
        if self.ordered and isinstance(value, (tuple, list)) and list(value) != sorted(value):
            raise UserError(f"{name} must be a (min, max) range with min <= max, got {tuple(value)!r}")
        if self.path is not None and value not in (None, ""):
            for item in value if isinstance(value, (tuple, list)) else [value]:
                check_path(name, item, self.path, self.suffixes, self.fix)


def checked(
    default: Any = MISSING, check: Check | None = None, *, default_factory: Any = MISSING, **declaration: Any
) -> Any:
    """A dataclass field with a :class:`Check`: ``steps: int = checked(300, STEPS)`` or
    ``init_radius: float = checked(0.6, low=0.01, high=10)``.

    Args:
        default: The field's default.
        check: A shared declaration (:data:`STEPS`, :data:`SEED`, ...); ``declaration`` overrides its parts.
        default_factory: Instead of ``default``, for mutable defaults.
        **declaration: :class:`Check` fields (``low``, ``high``, ``path``, ``fix``, ...).
    """
    check = replace(check, **declaration) if check is not None else Check(**declaration)
    return field(default=default, default_factory=default_factory, metadata={CHECK_KEY: check})


def field_check(cls: type, name: str) -> Check | None:
    """The :class:`Check` declared on field ``name`` of dataclass ``cls`` (None when there is none)."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get(CHECK_KEY)
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def check_fields(obj: Any, label: Callable[[str], str] | None = None, prefix: str = "") -> None:
    """Checks every field of a (nested) dataclass against its type and its declared :class:`Check`.

    The one validation every config and command goes through, before any folder is created: the CLI
    (on the parsed command), the pipelines' ``validate`` (on their configs; the app forms and library
    callers go through it), presets and resumed runs.

    Args:
        obj: A dataclass instance; nested dataclass fields are checked too (``sds.t_min``).
        label: Turns the dotted field name into what the user set (``faces`` -> ``--faces``); default:
            the dotted name.
        prefix: Dotted prefix of ``obj``'s fields (for the recursion).

    Raises:
        UserError: naming the field (or flag) and the values it accepts.
    """
    hints = _type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        dotted = prefix + f.name
        if is_dataclass(value) and not isinstance(value, type):
            check_fields(value, label, dotted + ".")
            continue
        name = label(dotted) if label is not None else dotted
        tp = hints.get(f.name, Any)
        if not _matches(tp, value):
            raise UserError(f"{name} must be {_describe(tp)}, got {value!r}")
        check = f.metadata.get(CHECK_KEY)
        if check is not None:
            check(name, value, integer=_is_integer(tp))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: check the declarations only
        return {}


def _is_integer(tp: Any) -> bool:
    if tp is int:
        return True
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    return (
        typing.get_origin(tp) in (typing.Union, types.UnionType, tuple)
        and bool(args)
        and all(_is_integer(a) for a in args)
    )


def _matches(tp: Any, value: Any) -> bool:
    """Whether ``value`` is of type ``tp`` (numbers: ints for ints, finite reals for floats)."""
    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, (str, typing.TypeVar)):
        return True
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return any(_matches(a, value) for a in typing.get_args(tp))
    if origin is typing.Annotated:
        return _matches(typing.get_args(tp)[0], value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(args[0], v) for v in value)
        return not args or (len(args) == len(value) and all(_matches(a, v) for a, v in zip(args, value)))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, (bool, numbers.Integral)) and value in (0, 1)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if tp is Path:
        return isinstance(value, (str, os.PathLike))
    if isinstance(origin or tp, type):
        try:
            return isinstance(value, origin or tp)
        except TypeError:
            return True
    return True


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is typing.Annotated:
        return _describe(typing.get_args(tp)[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if tp is type(None):
        return "unset (None)"
    names = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text",
             Path: "a path"}  # fmt: skip
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def check_path(
    name: str, value: str | os.PathLike, kind: PathKind, suffixes: tuple[str, ...] = (), fix: str = ""
) -> None:
    """Refuses a path that is not what ``kind`` asks for (creates nothing).

    Raises:
        UserError: naming ``name`` and the path.
    """
    path = Path(value).expanduser()
    if kind == "out_folder":
        check_out_root(path, name)
        return
    if kind == "out_file":
        if path.is_dir():
            raise UserError(f"{name} {value} is a folder; {fix or 'pass a file name'}")
        check_out_root(path.parent, name)
    elif not path.exists():
        what = {"file": "a file", "folder": "a folder", "exists": "a file or folder"}[kind]
        raise UserError(f"{name} {value} does not exist; {fix or f'pass {what} that exists'}")
    elif kind == "file" and not path.is_file():
        raise UserError(f"{name} {value} is a folder; {fix or 'pass a file'}")
    elif kind == "folder" and not path.is_dir():
        raise UserError(f"{name} {value} is a file; {fix or 'pass a folder'}")
    if suffixes and path.suffix.lower() not in suffixes and not path.is_dir():
        raise UserError(f"{name} {value} must end in {' or '.join(suffixes)}" + (f"; {fix}" if fix else ""))


# Shared bounds: a flag and the config setting it sets declare the same ones.
STEPS = Check(1, 1_000_000)
"""Optimization steps of a run."""
SEED = Check(0, 2**32 - 1)
"""Random seeds (numpy's range)."""
CHECKPOINT_EVERY = Check(1, 10_000_000)
"""Steps between checkpoints."""
FACES = Check(12, 5_000_000)
"""Face budgets of an exported mesh (a closed surface needs a dozen faces at least)."""
TEXTURE_SIZE = Check(16, 8192)
"""Side of a baked texture in texels."""
IMAGE_SIDE = Check(0, 8192)
"""An image side in pixels where 0 means "the input's" / "the prior's"."""
FRACTION = Check(0.0, 1.0)
"""A share in [0, 1]."""
WEIGHT = Check(0.0, 1e6)
"""A loss weight (0: off)."""
LEARNING_RATE = Check(0.0, 10.0)
"""An Adam learning rate."""
KEYFRAMES = Check(2, 10_000)
"""Keyframes taken from a video at most."""
HOLDOUT_EVERY = Check(0, 10_000)
"""Every k-th view held out for evaluation (0: none)."""
