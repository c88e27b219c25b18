from __future__ import annotations

import json

import pytest
import torch

from recon.cameras import orbit_cameras
from recon.errors import UserError
from recon.gaussians import DensifyConfig, GaussianModel
from recon.render import render_gaussians
from recon.train import Hooks, LossTerm, Stage, Stopped, TrainConfig, Trainer


class KilledError(Exception):
    pass


def _setup(kill_at: int | None = None, nan_at: int | None = None, densify: bool = False):
    cams = orbit_cameras(6, width=24, height=24, distance=3.0)
    target_model = GaussianModel.random_in_sphere(
        150, radius=0.6, generator=torch.Generator().manual_seed(1), init_opacity=0.8
    )
    with torch.no_grad():
        targets = render_gaussians(target_model, cams).rgb
    model = GaussianModel.random_in_sphere(
        150, radius=0.6, generator=torch.Generator().manual_seed(2), init_opacity=0.5
    )

    def sample(step, gen):
        return torch.randperm(6, generator=gen)[:2]

    def render(m, idx):
        return render_gaussians(m, cams[idx])

    def l1(ctx):
        loss = (ctx.render.rgb - targets[ctx.batch]).abs().mean()
        if nan_at is not None and ctx.step == nan_at:
            loss = loss * float("nan")
        return loss

    def hook(m, step):
        if kill_at is not None and step == kill_at:
            raise KilledError

    dens = (
        DensifyConfig(refine_start_iter=2, refine_every=4, grow_grad2d=1e-6, reset_every=1000)
        if densify
        else None
    )
    stages = [
        Stage("a", 12, sample, render, [LossTerm("l1", l1)], densify=dens, on_step_end=hook),
        Stage("b", 8, sample, render, [LossTerm("l1", l1, weight=2.0, weight_end=1.0)]),
    ]
    return model, stages


def _params(model):
    return {k: v.detach().clone() for k, v in model.splats.items()}


def _assert_resumes_exactly(run_dir, cfg: TrainConfig, reference: dict) -> None:
    """A fresh setup resumed from ``run_dir``'s checkpoint ends with exactly ``reference``'s parameters."""
    model, stages = _setup()
    resumed = Trainer(model, stages, run_dir, cfg)
    resumed.load_checkpoint()
    resumed.fit()
    for k, v in _params(resumed.model).items():
        assert torch.equal(v, reference[k]), k


@pytest.mark.parametrize("densify", [False, True])
def test_killed_run_resumes_exactly(tmp_path, densify):
    cfg = TrainConfig(seed=3, checkpoint_every=5, progress_bar=False)
    model, stages = _setup(densify=densify)
    history = Trainer(model, stages, tmp_path / "full", cfg).fit()
    reference = _params(model)
    if densify:
        assert history["a"]["num_gaussians"] > 150  # the strategy cloned / split
    else:
        assert history["a"]["loss"]["l1"] > history["b"]["loss"]["l1"]  # it learns

    model, stages = _setup(kill_at=7, densify=densify)
    with pytest.raises(KilledError):
        Trainer(model, stages, tmp_path / "killed", cfg).fit()
    ckpt = torch.load(tmp_path / "killed" / "ckpt" / "last.pt", weights_only=False)
    assert (ckpt["stage_index"], ckpt["stage_step"]) == (0, 5)  # lost at most one interval (steps 5..7)

    model, stages = _setup(densify=densify)
    trainer = Trainer(model, stages, tmp_path / "killed", cfg)
    trainer.load_checkpoint()
    trainer.fit()
    resumed = _params(trainer.model)
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"a", "b"}


def test_stop_request_checkpoints_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(seed=3, checkpoint_every=5, progress_bar=False)
    model, stages = _setup()
    Trainer(model, stages, tmp_path / "full", cfg).fit()
    reference = _params(model)

    events: list[tuple] = []
    polls = {"n": 0}

    def should_stop() -> bool:  # asks to stop once 14 steps are done (stage b, step 2)
        polls["n"] += 1
        return polls["n"] == 14

    model, stages = _setup()
    trainer = Trainer(model, stages, tmp_path / "stopped", cfg)
    trainer.hooks = Hooks(
        on_run_dir=lambda p: events.append(("run_dir", p)),
        on_checkpoint=lambda p, step: events.append(("ckpt", step)),
        should_stop=should_stop,
    )
    with pytest.raises(Stopped) as stop:
        trainer.fit()
    assert stop.value.step == 14 and stop.value.run_dir == tmp_path / "stopped"
    assert polls["n"] == 14  # stopped right after the step that asked, not one later
    assert events[0] == ("run_dir", tmp_path / "stopped")
    assert [e[1] for e in events[1:]] == [5, 10, 12, 14]  # every 5 steps, end of stage a, the stop
    ckpt = torch.load(tmp_path / "stopped" / "ckpt" / "last.pt", weights_only=False)
    assert (ckpt["stage_index"], ckpt["stage_step"]) == (1, 2)  # nothing lost

    _assert_resumes_exactly(tmp_path / "stopped", cfg, reference)


def test_nan_step_is_skipped_and_not_checkpointed(tmp_path):
    model, stages = _setup(nan_at=3)
    history = Trainer(model, stages, tmp_path, TrainConfig(checkpoint_every=100, progress_bar=False)).fit()
    assert history["a"]["skipped_steps"] == 1
    for p in model.splats.values():
        assert torch.isfinite(p).all()


def test_zero_steps_is_a_user_error(tmp_path):
    model, stages = _setup()
    stages[0].steps = 0
    with pytest.raises(UserError, match="positive number of steps"):
        Trainer(model, stages, tmp_path, TrainConfig())


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    model, stages = _setup()
    with pytest.raises(UserError, match="no checkpoint"):
        Trainer(model, stages, tmp_path, TrainConfig()).load_checkpoint()


def test_ctrl_c_finishes_the_step_checkpoints_it_and_resumes_exactly(tmp_path):
    import os
    import signal

    from recon.train import Interrupted

    cfg = TrainConfig(seed=3, checkpoint_every=5, progress_bar=False)
    model, stages = _setup()
    Trainer(model, stages, tmp_path / "full", cfg).fit()
    reference = _params(model)

    model, stages = _setup()
    trainer = Trainer(model, stages, tmp_path / "cut", cfg)
    polls = {"n": 0}

    def ctrl_c_during_step_8() -> bool:  # SIGINT arrives while step 8 is being polled (stage a)
        polls["n"] += 1
        if polls["n"] == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return False

    trainer.hooks = Hooks(should_stop=ctrl_c_during_step_8)
    with pytest.raises(Interrupted) as cut:
        trainer.fit()
    assert isinstance(cut.value, KeyboardInterrupt) and cut.value.step == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    ckpt = torch.load(tmp_path / "cut" / "ckpt" / "last.pt", weights_only=False)
    assert (ckpt["stage_index"], ckpt["stage_step"]) == (0, 8)  # nothing lost, not one interval

    _assert_resumes_exactly(tmp_path / "cut", cfg, reference)
