"""Score distillation sampling (SDS), DreamFusion https://arxiv.org/abs/2209.14988.

The gradient of SDS with respect to the prior-space image ``x`` (latents for a latent prior, pixels in
``[-1, 1]`` for a pixel prior) is ``w(t) (ε̂(x_t; y, t) − ε)``, with no backward through the
denoiser. It is delivered with the usual reparametrisation ``target = (x − grad).detach()``,
``loss = ½‖x − target‖² / B`` (sum over elements, divided by the batch), whose gradient is
``grad / B``; the gradient then flows to the rendered images (through the VAE encoder for latent
priors) and on to the 3D parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from priors import schedules
from priors.model import CfgConvention, Prior
from recon.errors import FRACTION, checked

Weighting = Literal["1-alpha", "uniform", "sqrt_alpha_1-alpha"]
Anneal = Literal["uniform", "linear", "sqrt", "staged"]


def sds_weight(alpha_bar: Tensor, weighting: Weighting) -> Tensor:
    """``w(t)`` from ``ᾱ_t``: ``1 − ᾱ`` (DreamFusion), ``1``, or ``√ᾱ (1 − ᾱ)``."""
    if weighting == "1-alpha":
        return 1.0 - alpha_bar
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    if weighting == "sqrt_alpha_1-alpha":
        return alpha_bar.sqrt() * (1.0 - alpha_bar)
    raise ValueError(f"unknown SDS weighting {weighting!r}")


@dataclass
class SDSConfig:
    """Score distillation settings."""

    guidance_scale: float = checked(7.5, low=0, high=1000)
    """Classifier-free guidance scale, read in ``cfg_convention`` (DreamFusion used ω = 100 with
    Imagen; threestudio uses 100 for SD and 20 for IF in the diffusers convention)."""
    cfg_convention: CfgConvention = "diffusers"
    """``"diffusers"``: ``ε̂ = ε_u + s (ε_c − ε_u)``; ``"dreamfusion"``: ``ε̂ = (1 + ω) ε_c − ω ε_u``
    (the same as diffusers with ``s = 1 + ω``)."""
    weighting: Weighting = "1-alpha"
    """``w(t)``: ``"1-alpha"`` = ``1 − ᾱ_t``, ``"uniform"`` = 1,
    ``"sqrt_alpha_1-alpha"`` = ``√ᾱ_t (1 − ᾱ_t)``."""
    t_min: float = checked(0.02, FRACTION)
    """Lowest timestep, as a fraction of the prior's training timesteps."""
    t_max: float = checked(0.98, FRACTION)
    """Highest timestep at the start of training (fraction)."""
    anneal: Anneal = "uniform"
    """How the range moves with progress: constant, ``t_max`` linearly or along ``sqrt(p)`` down to
    ``t_max_end``, or the piecewise-constant ``stages``."""
    t_max_end: float = checked(0.5, FRACTION)
    """``t_max`` at the end of training for the ``linear`` and ``sqrt`` anneals."""
    stages: tuple[schedules.Stage, ...] = field(default_factory=tuple)
    """Stages of the ``staged`` anneal."""
    one_timestep_per_batch: bool = False
    """Draw one ``t`` for the whole batch (else one per image)."""
    grad_clip: float | None = checked(None, low=0, high=1e6)
    """Clamp each gradient element to ``±grad_clip`` at the start of training (``None``: no clipping)."""
    grad_clip_end: float | None = checked(None, low=0, high=1e6)
    """Clip value at the end of training, linear in progress between (``None``: constant ``grad_clip``)."""
    resize_to_prior: bool = True
    """Resize renders to the prior's native resolution before encoding (bilinear)."""

    def timestep_range(self, progress: float) -> schedules.TimestepRange:
        """``(t_min, t_max)`` fractions at training progress ``progress``."""
        if self.anneal == "uniform":
            return schedules.uniform(progress, self.t_min, self.t_max)
        if self.anneal == "linear":
            return schedules.linear_anneal(progress, self.t_max, self.t_max_end, self.t_min)
        if self.anneal == "sqrt":
            return schedules.sqrt_anneal(progress, self.t_max, self.t_max_end, self.t_min)
        if self.anneal == "staged":
            return schedules.staged(progress, self.stages)
        raise ValueError(f"unknown anneal {self.anneal!r}")

    def clip_value(self, progress: float) -> float | None:
        """The gradient clip value at ``progress`` (``None``: no clipping)."""
        if self.grad_clip is None:
            return None
        if self.grad_clip_end is None:
            return self.grad_clip
        return self.grad_clip + (self.grad_clip_end - self.grad_clip) * progress


class SDSLoss:
    """Score distillation against a prior; one object serves pixel and latent priors."""

    def __init__(self, prior: Prior, config: SDSConfig | None = None) -> None:
        """Args:
        prior: A :class:`priors.model.DiffusionPrior` or :class:`priors.exemplar.ExemplarPrior`.
        config: Settings (defaults: :class:`SDSConfig`).
        """
        self.prior = prior
        self.config = config or SDSConfig()

    def sample_timesteps(
        self, batch: int, progress: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """Integer timesteps ``[batch]`` drawn uniformly from the scheduled range."""
        lo_frac, hi_frac = self.config.timestep_range(progress)
        T = self.prior.num_train_timesteps
        lo = min(max(round(lo_frac * T), 0), T - 1)
        hi = min(max(round(hi_frac * T), lo), T - 1)
        n = 1 if self.config.one_timestep_per_batch else batch
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(lo, hi + 1, (n,), generator=generator, device=gen_device)
        return t.expand(batch).to(self.prior.device)

    def __call__(
        self,
        images: Tensor,  # [B, 3, H, W] in [0, 1], rendered (requires grad)
        cond: Any,
        progress: float = 0.0,
        weight_map: Tensor | None = None,  # [B, 1, H, W]
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """One SDS evaluation.

        Args:
            images: Rendered images in ``[0, 1]``.
            cond: The prior's conditioning (from ``prior.encode_prompt``), batch 1 or ``B``.
            progress: Training progress in ``[0, 1]`` (drives the timestep and clip schedules).
            weight_map: Optional per-pixel weights of the gradient (e.g. visibility); resized to the
                prior's grid (area average) for latent priors.
            generator: Random generator for timesteps and noise (seed it for reproducible runs).

        Returns:
            ``(loss, info)``: a scalar whose gradient w.r.t. the prior-space image is
            ``w(t)(ε̂ − ε) / B``, and ``{"t": [B] timesteps, "grad_norm": float, "t_range": (lo, hi),
            "loss_sds": float}``.
        """
        cfg = self.config
        prior = self.prior
        b = images.shape[0]
        x = images.to(prior.device)
        if cfg.resize_to_prior and x.shape[-2:] != (prior.resolution, prior.resolution):
            x = F.interpolate(
                x, size=(prior.resolution, prior.resolution), mode="bilinear", align_corners=False
            )
        latents = prior.encode_images(x).float()  # [B, C, h, w], grads flow (through the VAE if any)

        t = self.sample_timesteps(b, progress, generator)
        gen_device = generator.device if generator is not None else "cpu"
        noise = torch.randn(latents.shape, generator=generator, device=gen_device).to(latents.device)
        with torch.no_grad():
            x_t = prior.add_noise(latents.detach(), noise, t)
            eps_hat = prior.predict_noise(x_t, t, cond, cfg.guidance_scale, cfg.cfg_convention).float()
            alpha_bar = prior.alphas_cumprod.to(latents.device)[t].view(-1, 1, 1, 1)
            grad = sds_weight(alpha_bar, cfg.weighting) * (eps_hat - noise)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            clip = cfg.clip_value(progress)
            if clip is not None:
                grad = grad.clamp(-clip, clip)
            if weight_map is not None:
                w = weight_map.to(grad)
                if w.shape[-2:] != grad.shape[-2:]:
                    w = F.interpolate(w, size=grad.shape[-2:], mode="area")
                grad = grad * w
        target = (latents - grad).detach()
        loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / b
        info = {
            "t": t,
            "grad_norm": float(grad.norm()),
            "t_range": cfg.timestep_range(progress),
            "loss_sds": float(loss.detach()),
        }
        return loss, info
