"""Issue #18 (4c, 5), under ``-m slow``: the kill soak and the app under load and attack, scaled down from
``bench/reliability.py`` (which runs them at full size and prints the numbers bench/README.md records)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_reliability", ROOT / "bench" / "reliability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_progress_parsing_gives_the_global_step():
    bench = _bench()
    log = (
        "stage geometry: 24 steps from step 0\ngeometry:  50%|#####     | 12/24 [00:01<00:01]\r"
        "geometry: 100%|##########| 24/24\nstage color: 16 steps from step 0\n"
        "color:  31%|###       | 5/16 [00:00<00:01]\r"
    )
    assert bench.reached_step(log) == 29 and bench.stage_sizes(log) == [24, 16]
    assert bench.resumed_step("resumed from x/ckpt/last.pt at stage 1 step 0", [24, 16]) == 24


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["generate", "reconstruct"])
def test_sigkilled_runs_continue_and_never_leave_a_partial_export(kind, tmp_path):
    bench = _bench()
    trials = bench.kill_trials(kind, 2, seed=3, root=tmp_path)
    assert all(t["finished"] for t in trials), trials
    assert not any(t["partial_after_kill"] or t["broken_after_finish"] for t in trials), trials
    if kind == "generate":  # resumed from the last checkpoint: at most one interval (10 steps) lost
        assert all(t["steps_lost"] <= 10 for t in trials), trials


@pytest.mark.slow
def test_app_answers_every_request_under_load_and_refuses_traversal(tmp_path):
    bench = _bench()
    result = bench.app_attack(clients=8, seconds=20, root=tmp_path)
    assert result["app_requests"] > 8 and result["app_failed"] == 0, result["app_failures"]
    assert result["app_alive_after"]
    assert result["traversal_refused"] == result["traversal_tried"], result["traversal_leaks"]
    assert result["oversize_upload_status"] == 413
