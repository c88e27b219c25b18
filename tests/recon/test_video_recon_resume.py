"""A video_recon run stopped after its first checkpoint is kept and resumes exactly, from its own folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from app.cli import main
from recon.data.datasets import SceneData, write_transforms
from recon.data.synthetic import TexturedBlocks, orbit_path
from recon.errors import UserError
from recon.pipelines.video_recon import SCENE_FILE, VideoReconConfig, reconstruct
from recon.runs import load_model
from recon.train import Hooks, Stopped


@pytest.fixture(scope="module")
def posed_scene(tmp_path_factory) -> Path:
    """12 views (48 x 40 px) around the textured blocks, as a transforms.json; images resampled by the
    loader (so not on the 8-bit grid until the run quantizes them)."""
    cams = orbit_path(12, sweep_deg=330.0, elevation_deg=25.0, width=64, height=52)
    rgb, _ = TexturedBlocks().render(cams)
    path = tmp_path_factory.mktemp("posed") / "transforms.json"
    write_transforms(path, SceneData(rgb, cams, [f"frame_{i:03d}.png" for i in range(12)]))
    return path


def _config(representation: str) -> VideoReconConfig:
    config = VideoReconConfig(
        representation=representation, steps=40, checkpoint_every=10, progress_bar=False, export_formats=(),
        nerf_rays_per_step=256, nerf_samples=32, nerf_occupancy_resolution=16,
    )  # fmt: skip
    config.scene = replace(config.scene, resolution=48)
    config.nerf = replace(config.nerf, grid_resolution=16, features=4, hidden=16)
    return config


@pytest.mark.parametrize("representation", ["gaussians", "nerf"])
def test_a_stopped_run_is_kept_and_resumes_exactly(posed_scene, tmp_path, representation):
    config = _config(representation)
    straight = reconstruct(posed_scene, config, run_dir=tmp_path / "straight", export=False)
    steps = []

    def stop() -> bool:
        steps.append(1)
        return len(steps) > 25  # after step 25: the checkpoint of step 20 is on disk

    with pytest.raises(Stopped):
        reconstruct(
            posed_scene, config, run_dir=tmp_path / "stopped", hooks=Hooks(should_stop=stop), export=False
        )
    stopped = tmp_path / "stopped"
    assert (stopped / "ckpt" / "last.pt").is_file() and (stopped / SCENE_FILE).is_file()
    assert "test" not in json.loads((stopped / "metrics.json").read_text())  # not evaluated yet
    assert reconstruct(resume=stopped, export=False) == stopped
    a, b = load_model(straight).state_dict(), load_model(stopped).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics_a = json.loads((straight / "metrics.json").read_text())
    metrics_b = json.loads((stopped / "metrics.json").read_text())
    assert metrics_a["test"] == metrics_b["test"]


def test_a_run_that_fails_before_its_first_checkpoint_is_removed(posed_scene, tmp_path):
    """(A stop always checkpoints first; a failure on the way need not.)"""

    def fail() -> bool:
        raise RuntimeError("the machine ran out of something")

    with pytest.raises(RuntimeError, match="ran out"):
        reconstruct(
            posed_scene, _config("gaussians"), run_dir=tmp_path / "run", hooks=Hooks(should_stop=fail)
        )
    assert not (tmp_path / "run").exists()


def test_cli_resume(posed_scene, tmp_path, capsys):
    config = _config("gaussians")
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        reconstruct(
            posed_scene,
            config,
            run_dir=run,
            hooks=Hooks(should_stop=lambda: False if not (run / "ckpt" / "last.pt").exists() else True),
            export=False,
        )
    assert main(["reconstruct", "--resume", str(run), "--steps", "41"]) == 2
    assert "--steps 41 conflicts with the run's steps 40" in capsys.readouterr().err
    assert main(["reconstruct", "--resume", str(run), "--resolution", "64"]) == 2
    assert "--resolution 64 conflicts with the run's scene.resolution 48" in capsys.readouterr().err
    assert main(["reconstruct", "--resume", str(run), "--no-export"]) == 0
    assert json.loads((run / "metrics.json").read_text())["n_views"] == 12
    (run / SCENE_FILE).unlink()
    with pytest.raises(UserError, match="start it again from its input"):
        reconstruct(resume=run)
