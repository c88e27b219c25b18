"""Run hooks through the library entry points: generate stops on request and resumes to the same result;
reconstruct reports its folder and checkpoints and stops (the Trainer-level test is in test_train.py)."""

from __future__ import annotations

import json

import pytest
import torch

from recon.pipelines import generate
from recon.pipelines.stabledreamer import StableDreamerConfig
from recon.train import Hooks, Stopped


def _config() -> StableDreamerConfig:
    return StableDreamerConfig(
        prompt="a red cube", steps=20, num_gaussians=300, views_per_step=1, checkpoint_every=5,
        progress_bar=False, seed=4,
    )  # fmt: skip


def _final_params(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "ckpt" / "last.pt", weights_only=False)["splats"]


def test_generate_stops_on_request_and_resume_finishes_it_identically(tmp_path):
    reference = generate(_config(), out_root=tmp_path / "full", export=False)

    events: list[tuple] = []
    polls = {"n": 0}

    def should_stop() -> bool:  # true once 9 steps are done (the geometry stage has 12)
        polls["n"] += 1
        return polls["n"] >= 9

    hooks = Hooks(
        on_run_dir=lambda p: events.append(("run_dir", p)),
        on_checkpoint=lambda p, step: events.append(("ckpt", p, step)),
        should_stop=should_stop,
    )
    with pytest.raises(Stopped, match="resume with --resume") as stop:
        generate(_config(), out_root=tmp_path / "stopped", export=False, hooks=hooks)
    run_dir = stop.value.run_dir
    assert polls["n"] == 9 and stop.value.step == 9  # the step that asked was the last one run
    assert events[0] == ("run_dir", run_dir) and run_dir.parent == tmp_path / "stopped" / "stabledreamer"
    assert [e[2] for e in events[1:]] == [5, 9]  # the periodic checkpoint, then the one at the stop
    assert all(e[1] == run_dir / "ckpt" / "last.pt" for e in events[1:])
    ckpt = torch.load(run_dir / "ckpt" / "last.pt", weights_only=False)
    assert (ckpt["stage_index"], ckpt["stage_step"]) == (0, 9)
    assert not (run_dir / "renders" / "turntable.png").exists()  # nothing after the loop ran

    assert generate(resume=run_dir, export=False) == run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stages"]["geometry"]["steps"] == 12 and metrics["stages"]["color"]["steps"] == 8
    resumed, full = _final_params(run_dir), _final_params(reference)
    assert resumed.keys() == full.keys()
    for k in full:  # stop + resume == one uninterrupted run (seeded; RNG state is checkpointed)
        assert torch.equal(resumed[k], full[k]), k


def test_reconstruct_reports_its_folder_and_checkpoints_and_stops(tmp_path):
    from recon.data.synthetic import write_synthetic_video
    from recon.pipelines.video_recon import reconstruct, reconstruct_config

    video = tmp_path / "blocks.mp4"
    write_synthetic_video(video, n_frames=36, sweep_deg=150.0)
    config = reconstruct_config(max_frames=24, steps=60, resolution=160)
    config.progress_bar, config.checkpoint_every = False, 10
    seen: dict[str, list] = {"run_dir": [], "ckpt": []}
    hooks = Hooks(
        on_run_dir=seen["run_dir"].append,
        on_checkpoint=lambda p, step: seen["ckpt"].append((step, p.is_file())),
        should_stop=lambda: len(seen["ckpt"]) >= 2,
    )
    with pytest.raises(Stopped) as stop:
        reconstruct(video, config, tmp_path / "out", hooks=hooks)
    (run_dir,) = seen["run_dir"]
    assert run_dir.parent == tmp_path / "out" / "video_recon" and stop.value.run_dir == run_dir
    # Checkpoints at 10 and 20; the poll after step 21 (the first to see two) stops and checkpoints there.
    assert seen["ckpt"] == [(10, True), (20, True), (21, True)] and stop.value.step == 21
    # The stopped run is kept, with the posed frames it resumes from (tests/recon/test_video_recon_resume.py).
    assert (run_dir / "ckpt" / "last.pt").is_file() and (run_dir / "transforms.json").is_file()
