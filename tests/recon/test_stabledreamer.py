"""The StableDreamer pipeline end to end on CPU, with a tiny Stable-Diffusion-class prior."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon.errors import UserError
from recon.pipelines import generate
from recon.pipelines.stabledreamer import StableDreamerConfig
from recon.runs import load_model
from tests.priors.test_model import save_tiny_sd


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


def test_real_checkpoint_path_runs_with_a_tiny_sd_prior(tmp_path, tiny_sd):
    """UNet2DConditionModel + AutoencoderKL + CLIP through the same pipeline code as real weights."""
    config = StableDreamerConfig(
        prompt="a red cube", prior=str(tiny_sd), steps=4, num_gaussians=300, views_per_step=2,
        checkpoint_every=2, progress_bar=False,
    )  # fmt: skip
    run_dir = generate(config, out_root=tmp_path, export=False)
    assert run_dir.parent == tmp_path / "stabledreamer"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stages"]["geometry"]["steps"] == 2 and metrics["stages"]["color"]["steps"] == 2
    assert metrics["stages"]["geometry"]["skipped_steps"] == 0
    model = load_model(run_dir)
    assert all(torch.isfinite(p).all() for p in model.splats.values())
    assert (run_dir / "config.yaml").is_file() and (run_dir / "renders" / "turntable.png").is_file()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"steps": 0}, "steps must be positive"),
        ({"prior": "/no/such/folder"}, "/no/such/folder"),
    ],
)
def test_bad_input_is_one_clear_error_and_leaves_no_folder(tmp_path, overrides, message):
    config = StableDreamerConfig(**{"progress_bar": False, **overrides})
    with pytest.raises(UserError, match=message):
        generate(config, out_root=tmp_path, export=False)
    assert not any(tmp_path.iterdir())
