"""Timestep schedules: endpoints, monotonicity, stages."""

from __future__ import annotations

import pytest

from priors import schedules
from priors.schedules import Stage

PROGRESS = [i / 100 for i in range(101)]


def test_uniform_is_constant() -> None:
    assert {schedules.uniform(p, 0.02, 0.98) for p in PROGRESS} == {(0.02, 0.98)}


@pytest.mark.parametrize("anneal", [schedules.linear_anneal, schedules.sqrt_anneal])
def test_anneals_hit_their_endpoints_and_fall_monotonically(anneal) -> None:
    ranges = [anneal(p, 0.98, 0.5, 0.02) for p in PROGRESS]
    assert ranges[0] == pytest.approx((0.02, 0.98)) and ranges[-1] == pytest.approx((0.02, 0.5))
    t_max = [hi for _, hi in ranges]
    assert all(b < a for a, b in zip(t_max, t_max[1:]))
    assert all(lo == 0.02 for lo, _ in ranges)


def test_linear_and_sqrt_differ_as_documented() -> None:
    assert schedules.linear_anneal(0.25, 1.0, 0.0, 0.0)[1] == pytest.approx(0.75)
    assert schedules.sqrt_anneal(0.25, 1.0, 0.0, 0.0)[1] == pytest.approx(0.5)  # 1 - sqrt(0.25)


def test_anneal_never_goes_below_t_min() -> None:
    assert schedules.linear_anneal(1.0, 0.98, 0.1, 0.2) == (0.2, 0.2)


def test_staged_is_piecewise_constant() -> None:
    stages = (Stage(0.3, 0.5, 0.98), Stage(0.7, 0.2, 0.8), Stage(1.0, 0.02, 0.5))
    assert schedules.staged(0.0, stages) == (0.5, 0.98)
    assert schedules.staged(0.29, stages) == (0.5, 0.98)
    assert schedules.staged(0.3, stages) == (0.2, 0.8)
    assert schedules.staged(0.99, stages) == (0.02, 0.5)
    assert schedules.staged(1.0, stages) == (0.02, 0.5)
    t_max = [schedules.staged(p, stages)[1] for p in PROGRESS]
    assert all(b <= a for a, b in zip(t_max, t_max[1:]))


@pytest.mark.parametrize(
    "call",
    [
        lambda: schedules.uniform(1.5),
        lambda: schedules.uniform(0.5, 0.9, 0.1),
        lambda: schedules.staged(0.5, ()),
        lambda: schedules.staged(0.5, (Stage(0.5, 0.1, 0.9),)),  # does not end at 1
        lambda: schedules.staged(0.5, (Stage(0.6, 0.1, 0.9), Stage(0.6, 0.1, 0.5), Stage(1.0, 0.1, 0.3))),
    ],
)
def test_bad_schedules_raise(call) -> None:
    with pytest.raises(ValueError):
        call()
