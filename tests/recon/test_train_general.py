"""The one loop over any representation: several named modules, frozen groups, auxiliary trainables,
checkpoint/resume of all of them."""

from __future__ import annotations

import pytest
import torch

from recon.cameras import orbit_cameras
from recon.errors import UserError
from recon.gaussians import GaussianModel
from recon.render import RenderOutput, rasterization, render_gaussians
from recon.train import Auxiliary, LearningRate, LossTerm, Stage, TrainConfig, Trainer, load_representations


class KilledError(Exception):
    pass


class Poses(torch.nn.Module):
    """Per-frame translations: a plain module (one group ``params``, default lr)."""

    def __init__(self, n: int):
        super().__init__()
        self.offsets = torch.nn.Parameter(torch.zeros(n, 3))


class TwoGroups(torch.nn.Module):
    """A module that names its groups and their learning rates (the fields' protocol)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(4))
        self.b = torch.nn.Parameter(torch.zeros(4))

    def parameter_groups(self):
        return {"a": [self.a], "b": [self.b]}

    def default_learning_rates(self):
        return {"a": 0.05, "b": 0.05}


def _multi_setup(kill_at: int | None = None):
    cams = orbit_cameras(4, width=16, height=16, distance=3.0)
    target = GaussianModel.random_in_sphere(60, radius=0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = render_gaussians(target, cams).rgb
    modules = {
        "object": GaussianModel.random_in_sphere(60, radius=0.5, generator=torch.Generator().manual_seed(2)),
        "poses": Poses(4),
        "code": TwoGroups(),
    }
    goal = torch.arange(4.0)

    def sample(step, gen):
        return torch.randint(0, 4, (1,), generator=gen)

    def render(model, idx):
        obj, c = model["object"], cams[idx]
        rgb, alpha, meta = rasterization(
            obj.means + model["poses"].offsets[idx], obj.quats, obj.scales, obj.opacities, obj.sh_coeffs,
            c.viewmats(), c.Ks(), c.width, c.height, sh_degree=obj.sh_degree, backgrounds=torch.ones(3),
        )  # fmt: skip
        return RenderOutput(rgb, alpha, None, meta)

    def photometric(ctx):
        return (ctx.render.rgb - targets[ctx.batch]).abs().mean()

    def code(ctx):
        return ((ctx.model["code"].a - goal) ** 2).sum() + ((ctx.model["code"].b - goal) ** 2).sum()

    def hook(model, step):
        if kill_at is not None and step == kill_at:
            raise KilledError

    stages = [
        Stage(
            "all", 8, sample, render, [LossTerm("l1", photometric), LossTerm("code", code)], on_step_end=hook
        ),
        Stage(
            "only-a",
            6,
            sample,
            render,
            [LossTerm("l1", photometric), LossTerm("code", code)],
            train=("code.a", "poses"),
            learning_rates={"code.a": LearningRate(0.1)},
        ),
    ]
    return modules, stages


def _snapshot(modules):
    return {f"{n}.{k}": v.detach().clone() for n, m in modules.items() for k, v in m.state_dict().items()}


def test_several_modules_train_and_frozen_groups_stay(tmp_path):
    modules, stages = _multi_setup()
    trainer = Trainer(modules, stages, tmp_path, TrainConfig(checkpoint_every=100, progress_bar=False))
    assert sorted(trainer.optimizers) == sorted(
        ["code.a", "code.b", "poses.params"] + [f"object.{k}" for k in modules["object"].splats]
    )
    trainer.stages = stages[:1]
    trainer.fit()
    after_first = _snapshot(modules)
    assert float(modules["poses"].offsets.detach().abs().sum()) > 0  # the plain module got its default group
    assert float(modules["code"].b.detach().abs().sum()) > 0
    trainer.stages = stages
    trainer.fit()  # the second stage: only code.a and poses train
    after = _snapshot(modules)
    for key in after:
        changed = not torch.equal(after[key], after_first[key])
        assert changed == (key.startswith("code.a") or key.startswith("poses.")), key


def test_several_modules_resume_bit_identically(tmp_path):
    cfg = TrainConfig(seed=3, checkpoint_every=5, progress_bar=False)
    modules, stages = _multi_setup()
    Trainer(modules, stages, tmp_path / "full", cfg).fit()
    reference = _snapshot(modules)

    modules, stages = _multi_setup(kill_at=6)
    with pytest.raises(KilledError):
        Trainer(modules, stages, tmp_path / "killed", cfg).fit()
    modules, stages = _multi_setup()
    trainer = Trainer(modules, stages, tmp_path / "killed", cfg)
    trainer.load_checkpoint()
    assert trainer.global_step == 5
    trainer.fit()
    resumed = _snapshot(modules)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    path = tmp_path / "killed" / "ckpt" / "last.pt"
    loaded = load_representations(path, names=["object"])
    assert torch.equal(loaded["object"].means, modules["object"].means)
    with pytest.raises(UserError, match="Poses"):  # a plain module needs its pipeline to be rebuilt
        load_representations(path)


def test_auxiliary_trains_on_its_own_loss_only(tmp_path):
    """The scene's loss depends on the auxiliary module, yet only the auxiliary loss moves it."""
    scene = Poses(1)
    helper = torch.nn.Linear(3, 3, bias=False)
    torch.nn.init.eye_(helper.weight)
    seen_grads = []

    def scene_loss(ctx):  # pulls the scene through the helper; would move the helper if it could
        return ((helper(ctx.model.offsets) - 1.0) ** 2).sum()

    def aux_loss(ctx):  # trains the helper towards 2 * identity, independent of the scene
        seen_grads.append(scene.offsets.grad)
        return ((helper.weight - 2.0 * torch.eye(3)) ** 2).sum()

    aux = Auxiliary("helper", helper, aux_loss, learning_rate=0.1, every=2)
    stage = Stage(
        "s", 40, lambda step, gen: None, lambda m, b: None, [LossTerm("fit", scene_loss)], auxiliaries=[aux]
    )
    trainer = Trainer(scene, [stage], tmp_path, TrainConfig(progress_bar=False))
    trainer.fit()
    assert len(seen_grads) == 20  # every second step
    # Only the auxiliary loss moved the helper: it went to 2 * I (the scene's loss would pull it elsewhere).
    assert torch.allclose(helper.weight, 2.0 * torch.eye(3), atol=0.35)
    off_diagonal = helper.weight - torch.diag(torch.diagonal(helper.weight))
    assert float(off_diagonal.abs().max()) < 1e-6
    assert all(p.requires_grad is False for p in helper.parameters())  # frozen outside its own step
    # Its optimizer state went into the checkpoint with it.
    payload = torch.load(trainer.checkpoint_path, weights_only=False)
    assert "helper" in payload["auxiliaries"] and payload["auxiliaries"]["helper"]["optimizer"]["state"]


def test_a_step_without_a_graph_leaves_the_scene_untouched(tmp_path):
    """A step whose losses have no graph (BSD's pretrain steps) neither fails nor moves the scene, even
    after earlier steps left Adam momentum (the gradients stay None, so the optimizer skips them)."""
    scene = Poses(1)

    def loss(ctx):
        if ctx.step < 3:
            return ((ctx.model.offsets - 1.0) ** 2).sum()
        return torch.zeros(())

    seen = []
    stage = Stage(
        "s", 6, lambda step, gen: None, lambda m, b: None, [LossTerm("fit", loss)],
        on_step_end=lambda m, step: seen.append(m.offsets.detach().clone()),
    )  # fmt: skip
    Trainer(scene, [stage], tmp_path, TrainConfig(progress_bar=False)).fit()
    assert not torch.equal(seen[0], torch.zeros(1, 3))  # the graph steps moved it
    assert all(torch.equal(seen[2], s) for s in seen[3:])  # the graph-less ones did not


def test_unknown_groups_and_densifying_a_non_gaussian_are_refused(tmp_path):
    stage = Stage("s", 2, lambda s, g: None, lambda m, b: None, [], train=("nope",))
    with pytest.raises(ValueError, match="unknown parameter groups"):
        Trainer(Poses(2), [stage], tmp_path, TrainConfig())
    from recon.gaussians import DensifyConfig

    stage = Stage("s", 2, lambda s, g: None, lambda m, b: None, [], densify=DensifyConfig())
    with pytest.raises(ValueError, match="not 3D Gaussians"):
        Trainer(Poses(2), [stage], tmp_path, TrainConfig())
