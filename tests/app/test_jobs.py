"""The UI's worker (app.jobs.RunJob) without Gradio: a cancel stops the run through the library hooks
within one step, and the stopped run resumes to its end."""

from __future__ import annotations

import json
import time

import torch

from app.jobs import RunJob
from recon.pipelines import generate
from recon.pipelines.stabledreamer import StableDreamerConfig


def test_cancelled_job_stops_within_a_step_and_resumes_to_the_end(tmp_path):
    config = StableDreamerConfig(
        prompt="a blue sphere", steps=60, num_gaussians=300, views_per_step=1, checkpoint_every=5,
        progress_bar=False,
    )  # fmt: skip
    job = RunJob(lambda hooks: generate(config, out_root=tmp_path, export=False, hooks=hooks)).start()
    deadline = time.time() + 120
    while job.checkpoints < 1:  # the first periodic checkpoint (step 5): the trainer is running
        assert not job.done.is_set(), f"the run ended early: {job.error!r}"
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    assert job.cancel(timeout=60), "the worker did not stop within 60 s"
    assert job.error is None and job.result is None
    stop = job.stopped
    assert stop is not None and stop.run_dir == job.run_dir
    assert job.run_dir.parent == tmp_path / "stabledreamer"
    # The stop was honoured right after the step during which it was asked (a few steps at most: the
    # polling above does not land exactly on the checkpoint), and written as the last checkpoint.
    assert 5 <= stop.step <= 5 + 10 and job.step == stop.step
    ckpt = torch.load(job.run_dir / "ckpt" / "last.pt", weights_only=False)
    assert (ckpt["stage_index"], ckpt["stage_step"]) == (0, stop.step)
    print(f"cancel honoured at step {stop.step} (first checkpoint at 5)")

    assert generate(resume=job.run_dir, export=False) == job.run_dir
    metrics = json.loads((job.run_dir / "metrics.json").read_text())
    assert metrics["stages"]["geometry"]["steps"] == 36 and metrics["stages"]["color"]["steps"] == 24
    final = torch.load(job.run_dir / "ckpt" / "last.pt", weights_only=False)
    assert final["stage_index"] == 2 and all(torch.isfinite(v).all() for v in final["splats"].values())
