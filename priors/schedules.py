"""Timestep ranges for score distillation as plain functions of training progress.

Every function maps progress ``p`` in ``[0, 1]`` to a ``(t_min, t_max)`` range given as **fractions**
of the prior's ``num_train_timesteps`` (threestudio's ``min_step_percent`` / ``max_step_percent``), so
one schedule serves priors trained with any number of timesteps. Annealing ``t_max`` downward over
training follows DreamTime (https://arxiv.org/abs/2306.12422) and ProlificDreamer
(https://arxiv.org/abs/2305.16213): large noise early shapes the coarse geometry, small noise late
refines details.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

TimestepRange = tuple[float, float]
"""``(t_min, t_max)`` as fractions of the prior's training timesteps, ``0 <= t_min <= t_max <= 1``."""


def _check_progress(p: float) -> float:
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"progress must be in [0, 1], got {p}")
    return float(p)


def _check_range(t_min: float, t_max: float) -> None:
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"timestep range must satisfy 0 <= t_min <= t_max <= 1, got ({t_min}, {t_max})")


def uniform(p: float, t_min: float = 0.02, t_max: float = 0.98) -> TimestepRange:
    """A constant range (DreamFusion, https://arxiv.org/abs/2209.14988).

    Args:
        p: Training progress in ``[0, 1]`` (unused, kept for a uniform signature).
        t_min: Lower end of the range.
        t_max: Upper end of the range.

    Returns:
        ``(t_min, t_max)``.
    """
    _check_progress(p)
    _check_range(t_min, t_max)
    return (t_min, t_max)


def linear_anneal(
    p: float, t_max_start: float = 0.98, t_max_end: float = 0.5, t_min: float = 0.02
) -> TimestepRange:
    """``t_max`` moves linearly from ``t_max_start`` (at ``p = 0``) to ``t_max_end`` (at ``p = 1``).

    Args:
        p: Training progress in ``[0, 1]``.
        t_max_start: Upper end at the start of training.
        t_max_end: Upper end at the end of training.
        t_min: Constant lower end (``t_max`` never goes below it).

    Returns:
        ``(t_min, t_max(p))``.
    """
    p = _check_progress(p)
    _check_range(t_min, max(t_max_start, t_max_end))
    t_max = t_max_start + (t_max_end - t_max_start) * p
    return (t_min, max(t_min, t_max))


def sqrt_anneal(
    p: float, t_max_start: float = 0.98, t_max_end: float = 0.5, t_min: float = 0.02
) -> TimestepRange:
    """``t_max`` moves from ``t_max_start`` to ``t_max_end`` along ``sqrt(p)``: fast early, slow late.

    Args:
        p: Training progress in ``[0, 1]``.
        t_max_start: Upper end at the start of training.
        t_max_end: Upper end at the end of training.
        t_min: Constant lower end.

    Returns:
        ``(t_min, t_max(p))``.
    """
    p = _check_progress(p)
    _check_range(t_min, max(t_max_start, t_max_end))
    t_max = t_max_start + (t_max_end - t_max_start) * math.sqrt(p)
    return (t_min, max(t_min, t_max))


@dataclass(frozen=True)
class Stage:
    """One piece of a :func:`staged` schedule."""

    until: float
    """Progress at which this stage ends (exclusive, except for the last stage, which must end at 1)."""
    t_min: float
    """Lower end of the timestep range during this stage."""
    t_max: float
    """Upper end of the timestep range during this stage."""


def staged(p: float, stages: Sequence[Stage]) -> TimestepRange:
    """A piecewise-constant range: the first stage whose ``until`` exceeds ``p`` decides.

    Args:
        p: Training progress in ``[0, 1]``.
        stages: Stages ordered by ``until`` (strictly increasing, the last one at ``1.0``).

    Returns:
        ``(t_min, t_max)`` of the current stage.
    """
    p = _check_progress(p)
    if not stages:
        raise ValueError("staged schedule needs at least one stage")
    ends = [s.until for s in stages]
    if any(b <= a for a, b in zip(ends, ends[1:])) or ends[-1] != 1.0:
        raise ValueError(f"stage ends must increase strictly and finish at 1.0, got {ends}")
    for stage in stages:
        _check_range(stage.t_min, stage.t_max)
        if p < stage.until:
            return (stage.t_min, stage.t_max)
    return (stages[-1].t_min, stages[-1].t_max)
