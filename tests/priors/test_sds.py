"""SDS gradient, weighting, clipping and weight maps against a prior whose ε̂ is known."""

from __future__ import annotations

import pytest
import torch

from priors.model import add_noise, classifier_free_guidance
from priors.sds import SDSConfig, SDSLoss, sds_weight


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is as fast idle and ~10x faster when other jobs share the 2 cores
    (measured: SDS + render step at 32², 31 ms with 1 thread vs 344 ms with 2 under load 8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class KnownPrior:
    """A pixel prior whose noise prediction is a fixed function: ε̂_c = 0.5 x_t, ε̂_u = -0.25 x_t."""

    is_latent = False
    latent_channels = 3
    resolution = 16
    latent_size = 16
    num_train_timesteps = 1000
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode_prompt(self, prompts, negative=None, elevation_deg=None, azimuth_deg=None):
        return prompts

    def encode_images(self, x):
        return 2 * x - 1

    def decode(self, z):
        return (z + 1) / 2

    def add_noise(self, x0, noise, t):
        return add_noise(self.alphas_cumprod, x0, noise, t)

    def predict_noise(self, x_t, t, cond, guidance_scale, cfg_convention):
        self.calls.append((x_t.clone(), t.clone()))
        return classifier_free_guidance(-0.25 * x_t, 0.5 * x_t, guidance_scale, cfg_convention)


def _run(config: SDSConfig, images: torch.Tensor, weight_map=None, progress: float = 0.0):
    prior = KnownPrior()
    x = images.clone().requires_grad_(True)
    loss, info = SDSLoss(prior, config)(
        x, ["p"], progress, weight_map=weight_map, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    (x_t, t) = prior.calls[-1]
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = 2 * images - 1
    eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()  # the noise that was drawn
    return x, loss, info, x_t, t, a, eps


@pytest.mark.parametrize("weighting", ["1-alpha", "uniform", "sqrt_alpha_1-alpha"])
@pytest.mark.parametrize("convention", ["diffusers", "dreamfusion"])
def test_gradient_is_w_times_eps_hat_minus_eps(weighting: str, convention: str) -> None:
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    s = 7.5
    x, loss, info, x_t, t, a, eps = _run(
        SDSConfig(guidance_scale=s, cfg_convention=convention, weighting=weighting), images
    )
    if convention == "diffusers":
        eps_hat = -0.25 * x_t + s * (0.5 * x_t + 0.25 * x_t)
    else:
        eps_hat = (1 + s) * 0.5 * x_t + s * 0.25 * x_t
    w = {"1-alpha": 1 - a, "uniform": torch.ones_like(a), "sqrt_alpha_1-alpha": a.sqrt() * (1 - a)}[weighting]
    grad = w * (eps_hat - eps)
    b = images.shape[0]
    # d loss / d latents = grad / B, and latents = 2 x - 1.
    torch.testing.assert_close(x.grad, 2 * grad / b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss, 0.5 * (grad**2).sum() / b, atol=1e-4, rtol=1e-4)
    assert info["grad_norm"] == pytest.approx(grad.norm().item(), rel=1e-4)
    assert torch.equal(info["t"], t)


def test_timesteps_follow_the_schedule() -> None:
    config = SDSConfig(t_min=0.02, t_max=0.98, anneal="linear", t_max_end=0.3)
    prior = KnownPrior()
    loss_fn = SDSLoss(prior, config)
    gen = torch.Generator().manual_seed(0)
    early = torch.cat([loss_fn.sample_timesteps(64, 0.0, gen) for _ in range(20)])
    late = torch.cat([loss_fn.sample_timesteps(64, 1.0, gen) for _ in range(20)])
    assert early.min() >= 20 and early.max() <= 980 and early.max() > 900
    assert late.min() >= 20 and late.max() <= 300 and late.max() > 280
    one = SDSLoss(prior, SDSConfig(one_timestep_per_batch=True)).sample_timesteps(8, 0.5, gen)
    assert len(set(one.tolist())) == 1


def test_clipping_bounds_the_gradient_and_follows_its_schedule() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    config = SDSConfig(guidance_scale=100.0, weighting="uniform", grad_clip=0.5, grad_clip_end=0.1)
    x, *_ = _run(config, images, progress=0.0)
    assert x.grad.abs().max() == pytest.approx(0.5, rel=1e-5)  # x.grad = 2 grad / B = grad for B = 2
    x_late, *_ = _run(config, images, progress=1.0)
    assert x_late.grad.abs().max() <= 0.1 + 1e-6
    assert x_late.grad.abs().max() == pytest.approx(0.1, rel=1e-5)  # guidance 100 saturates the clip


def test_weight_map_scales_the_gradient_per_pixel() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    weight_map = torch.zeros(2, 1, 16, 16)
    weight_map[:, :, :, :8] = 1.0
    x, *_ = _run(SDSConfig(), images, weight_map=weight_map)
    x_full, *_ = _run(SDSConfig(), images)
    assert torch.all(x.grad[..., 8:] == 0)
    torch.testing.assert_close(x.grad[..., :8], x_full.grad[..., :8])


def test_non_finite_predictions_give_zero_gradient() -> None:
    prior = KnownPrior()
    prior.predict_noise = lambda x_t, t, cond, s, c: torch.full_like(x_t, float("nan"))
    x = torch.rand(1, 3, 16, 16).requires_grad_(True)
    loss, _ = SDSLoss(prior)(x, ["p"])
    loss.backward()
    assert torch.isfinite(loss) and torch.all(x.grad == 0)


def test_renders_are_resized_to_the_prior_resolution() -> None:
    prior = KnownPrior()
    x = torch.rand(2, 3, 40, 40).requires_grad_(True)
    SDSLoss(prior)(x, ["p"])[0].backward()
    assert prior.calls[-1][0].shape == (2, 3, 16, 16) and x.grad.shape == (2, 3, 40, 40)


def test_weights_are_the_documented_functions() -> None:
    a = torch.tensor([0.25, 0.81])
    torch.testing.assert_close(sds_weight(a, "1-alpha"), torch.tensor([0.75, 0.19]))
    torch.testing.assert_close(sds_weight(a, "uniform"), torch.ones(2))
    torch.testing.assert_close(sds_weight(a, "sqrt_alpha_1-alpha"), torch.tensor([0.5 * 0.75, 0.9 * 0.19]))
