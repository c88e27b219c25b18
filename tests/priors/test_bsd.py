"""Bootstrapped score distillation (priors/bsd.py) on tiny random priors and closed-form denoisers."""

from __future__ import annotations

import pytest
import torch

from priors.bsd import BootstrappedScoreDistillation, BSDConfig
from priors.model import DiffusionPrior, PromptConditioning
from recon.train import Stage, TrainConfig, Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_prior(seed: int = 0) -> DiffusionPrior:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4,
    )  # fmt: skip
    return DiffusionPrior(unet, DDPMScheduler(num_train_timesteps=1000), torch.nn.Identity(), None)


def _cond(b: int = 1, seed: int = 1) -> PromptConditioning:
    g = torch.Generator().manual_seed(seed)
    return PromptConditioning(["x"] * b, torch.randn(b, 4, 8, generator=g), torch.zeros(b, 4, 8))


class Scene(torch.nn.Module):
    """A learnable 8×8 image."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(1, 3, 8, 8))


def test_pretrain_loss_falls_and_the_scene_moves_only_in_distill_steps(tmp_path):
    prior = _tiny_prior()
    cond = _cond()
    # 30 pretrain steps on a fixed cache (one augmentation at step 0), then 4 distill steps.
    config = BSDConfig(block_steps=40, pretrain_fraction=0.75, augment_every=1000, learning_rate=3e-3)
    bsd = BootstrappedScoreDistillation(prior, config)
    scene = Scene()
    snapshots = []
    stage = Stage(
        "texture", 34, lambda step, gen: None, lambda m, b: torch.sigmoid(m.logits),
        [bsd.loss_term(lambda ctx: ctx.render, lambda ctx: cond)], auxiliaries=bsd.auxiliaries(),
        learning_rates=None, on_step_end=lambda m, step: snapshots.append(m.logits.detach().clone()),
    )  # fmt: skip
    trainer = Trainer(scene, [stage], tmp_path, TrainConfig(progress_bar=False, checkpoint_every=1000))
    losses = []
    original_step = trainer._auxiliary_step

    def record(aux, ctx):
        value = original_step(aux, ctx)
        if aux.name == "bsd_finetuned" and bsd.phase(ctx.step) == "pretrain":
            losses.append(value)
        return value

    trainer._auxiliary_step = record
    trainer.fit()
    assert len(bsd.cache) == 1 and len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    zero = torch.zeros(1, 3, 8, 8)
    assert all(torch.equal(s, zero) for s in snapshots[:30])  # pretrain: bit-identical
    assert not torch.equal(snapshots[-1], zero)  # distill: the scene moves


class Affine(torch.nn.Module):
    """ε(x_t, c) = a·x_t + b·mean(c) — a denoiser with a closed form."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.tensor(a)), torch.nn.Parameter(torch.tensor(b))

    def forward(self, x, t, encoder_hidden_states, return_dict=False):
        return (self.a * x + self.b * encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1),)


def test_the_gradient_matches_a_hand_computation():
    prior = _tiny_prior()
    bsd = BootstrappedScoreDistillation(prior, BSDConfig())
    bsd.finetuned, bsd.estimator = Affine(0.5, 2.0), Affine(0.25, -1.0)
    cond = PromptConditioning(["x"], torch.full((1, 4, 8), 0.3), torch.full((1, 4, 8), -0.1))
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    loss, info = bsd.scene_loss(images, cond, progress=0.0, generator=torch.Generator().manual_seed(4))
    # Same draws by hand: t then noise from the same generator.
    g = torch.Generator().manual_seed(4)
    t = torch.randint(50, 501, (2,), generator=g)
    noise = torch.randn(2, 3, 8, 8, generator=g)
    assert torch.equal(info["t"], t)
    z = images.detach() * 2 - 1
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
    eps_c, eps_u = 0.5 * x_t + 2.0 * 0.3, 0.5 * x_t + 2.0 * -0.1
    eps_pre = eps_u + 2.0 * (eps_c - eps_u)  # CFG 2.0
    eps_est = 0.25 * x_t - 1.0 * 0.3  # conditional only
    grad = (1 - abar) * (eps_pre - eps_est)
    assert torch.allclose(info["grad"], grad, atol=1e-6)
    assert torch.allclose(loss, 0.5 * (grad**2).sum() / 2, atol=1e-5)
    loss.backward()  # d loss / d z = grad / B; z = 2·image − 1
    assert torch.allclose(images.grad, 2 * grad / 2, atol=1e-6)


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    @property
    def config(self):
        return self.inner.config


def test_augmentation_bootstraps_from_the_finetuned_copy():
    prior = _tiny_prior()
    bsd = BootstrappedScoreDistillation(prior, BSDConfig(augment_every=5, cache_size=3))
    prior.unet, bsd.finetuned = Counting(prior.unet), Counting(bsd.finetuned)
    cond = _cond()
    g = torch.Generator().manual_seed(0)
    render = torch.rand(1, 3, 8, 8, generator=g)
    assert bsd.maybe_augment(0, render, cond, 0.0, g)
    n_first = int(25 * 0.5)  # DDIM steps at strength 0.5
    assert (prior.unet.calls, bsd.finetuned.calls) == (n_first, 0)
    assert not bsd.maybe_augment(3, render, cond, 0.0, g)  # not an augmentation step
    for step in (5, 10, 15, 20):
        assert bsd.maybe_augment(step, render, cond, 1.0, g)
        assert len(bsd.cache) <= 3
    assert prior.unet.calls == n_first  # the original prior only once
    assert bsd.finetuned.calls == 4 * int(25 * 0.2)
    assert len(bsd.cache) == 3 and bsd.augmentations == 5


def test_estimator_trains_on_detached_renders_and_the_strength_anneals():
    prior = _tiny_prior()
    bsd = BootstrappedScoreDistillation(prior, BSDConfig())
    assert bsd.strength(0.0) == 0.5 and bsd.strength(1.0) == pytest.approx(0.2)
    assert bsd.strength(0.5) == pytest.approx(0.35)
    assert [bsd.phase(s) for s in (0, 199, 200, 999, 1000, 1199, 1200)] == [
        "pretrain", "pretrain", "distill", "distill", "pretrain", "pretrain", "distill"
    ]  # fmt: skip
    scene = Scene()
    images = torch.sigmoid(scene.logits)
    g = torch.Generator().manual_seed(0)
    bsd.scene_loss(images, _cond(), 0.3, g)
    latents, hidden = bsd._last
    assert not latents.requires_grad
    loss = bsd.estimator_loss(torch.sigmoid(scene.logits) * 2 - 1, hidden, g)
    loss.backward()
    assert scene.logits.grad is None  # sg(z): nothing reaches the scene
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bsd.estimator.parameters())
    assert all(p.grad is None for p in bsd.finetuned.parameters())
    assert all(p.grad is None for p in prior.unet.parameters())


def test_text_dropout_uses_zeros():
    prior = _tiny_prior()
    bsd = BootstrappedScoreDistillation(prior, BSDConfig(text_dropout=1.0))
    seen = []
    inner = bsd.finetuned.forward
    bsd.finetuned.forward = lambda *a, **k: (seen.append(k["encoder_hidden_states"].clone()), inner(*a, **k))[
        1
    ]
    bsd.cache.append((torch.zeros(1, 3, 8, 8), torch.ones(1, 4, 8)))
    bsd.finetune_loss(torch.Generator().manual_seed(0))
    assert len(seen) == 1 and torch.equal(seen[0], torch.zeros(1, 4, 8))


def test_copies_can_have_their_own_dtype_and_bad_settings_are_refused():
    from recon.errors import UserError

    prior = _tiny_prior()
    bsd = BootstrappedScoreDistillation(prior, BSDConfig(copy_dtype="float64"))
    assert next(bsd.finetuned.parameters()).dtype == torch.float64
    assert next(bsd.estimator.parameters()).dtype == torch.float64
    assert next(prior.unet.parameters()).dtype == torch.float32  # the original is untouched
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 8, 8, generator=g).requires_grad_(True)
    bsd.maybe_augment(0, images, _cond(), 0.0, g)  # original prior
    bsd.maybe_augment(25, images, _cond(), 0.0, g)  # fine-tuned float64 copy
    loss, info = bsd.scene_loss(images, _cond(), 0.0, g)
    loss.backward()
    assert torch.isfinite(images.grad).all() and info["grad_norm"] > 0
    assert bsd.finetune_loss(g).dtype == torch.float32
    with pytest.raises(UserError, match="copy_dtype"):
        BSDConfig(copy_dtype="float17")
    with pytest.raises(UserError, match="pretrain_fraction"):
        BSDConfig(pretrain_fraction=1.0)


def test_the_loop_augments_only_in_pretrain_steps(tmp_path):
    prior = _tiny_prior()
    bsd = BootstrappedScoreDistillation(prior, BSDConfig(block_steps=10, augment_every=2, cache_size=10))
    cond = _cond()
    stage = Stage(
        "texture", 20, lambda step, gen: None, lambda m, b: torch.sigmoid(m.logits),
        [bsd.loss_term(lambda ctx: ctx.render, lambda ctx: cond)], auxiliaries=bsd.auxiliaries(),
    )  # fmt: skip
    Trainer(Scene(), [stage], tmp_path, TrainConfig(progress_bar=False, checkpoint_every=1000)).fit()
    # Pretrain steps are 0, 1 and 10, 11 (a fifth of each 10-step block); augmentation at 0 and 10.
    assert bsd.augmentations == 2 and len(bsd.cache) == 2
