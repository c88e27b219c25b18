"""Bootstrapped score distillation (BSD), DreamCraft3D's texture boosting (Sun et al. 2023).

https://arxiv.org/abs/2310.16818; behaviour as released in ``stable_diffusion_bsd_guidance.py`` (see
``/work/shared/research/dreamcraft3d-dprecon-nerf.md`` §1.4):

* two trainable copies of the prior's denoiser: ``finetuned`` (the "DreamBooth" prior) and
  ``estimator`` (a VSD-style score estimator of the current renders; a full copy, as released);
* every ``augment_every`` steps of the pretrain phase the current render is SDEdit-augmented
  (noised to a strength annealed 0.5 → 0.2, denoised with CFG 7.5) into a FIFO cache. The first
  augmentation uses the original prior, every later one the fine-tuned copy: that is the bootstrap;
* in the first fifth of every block of steps only the fine-tuned copy trains (ε-MSE on cached frames,
  10 % of the time with the text embedding replaced by zeros) and the scene gets no gradient;
* otherwise the scene gets ``grad = (1 − ᾱ_t)(ε_finetuned,cfg − ε_estimator)`` and the estimator trains
  on the detached renders.

Both copies are :class:`recon.train.Auxiliary` trainables of the one loop (:meth:`auxiliaries`); the
scene's term is :meth:`loss_term`. Copies are full deep copies on the prior's device, in the prior's
dtype unless ``BSDConfig.copy_dtype`` says otherwise (no LoRA option yet).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from priors.model import PromptConditioning, ddim_timesteps

Phase = Literal["pretrain", "distill"]


@dataclass
class BSDConfig:
    """BSD settings; the defaults are the released ones (a 5000-step texture stage)."""

    block_steps: int = 1000
    """Length of one fine-tune/distill block (released ``only_pretrain_step`` 1000)."""
    pretrain_fraction: float = 0.2
    """Leading fraction of every block that only trains the fine-tuned copy (released: 200 of 1000)."""
    augment_every: int = 25
    """Steps between two SDEdit augmentations of the current render."""
    cache_size: int = 10
    """FIFO cache of augmented frames."""
    strength_start: float = 0.5
    """SDEdit strength (and the scene's maximal timestep fraction) at the start of the run."""
    strength_end: float = 0.2
    """... and at its end (linear in progress)."""
    sdedit_steps: int = 25
    """Schedule length of the SDEdit denoiser; ``int(sdedit_steps · strength)`` of them run. Released:
    DPMSolverMultistep; here deterministic DDIM (η = 0) on the same trailing-spaced timesteps."""
    augment_guidance: float = 7.5
    """CFG scale (diffusers convention) of the augmentation."""
    guidance_scale: float = 2.0
    """CFG scale of the fine-tuned copy in the scene gradient."""
    text_dropout: float = 0.1
    """Probability of replacing the text embedding by zeros in the fine-tune loss."""
    min_step_fraction: float = 0.05
    """Scene timesteps ``t ~ U[min_step_fraction·T, strength·T]``."""
    lambda_sd: float = 0.01
    """Weight of the scene's BSD term."""
    weight_pretrain: float = 0.1
    """Weight of the fine-tuned copy's ε-MSE."""
    weight_estimator: float = 0.1
    """Weight of the estimator's ε-MSE."""
    learning_rate: float = 1e-5
    """AdamW learning rate of both copies (released 1e-5; also right for the embedded pixel UNet: 40
    fine-tune steps on one cached frame take its ε-MSE from 0.180 to 0.114 at 1e-5, 0.097 at 1e-4 and
    only 0.129 at 1e-3)."""
    copy_dtype: str | None = None
    """dtype of the two trainable copies (``"float32"``, ``"float16"``, ...); ``None``: the prior's.
    An fp16 prior with fp32 copies keeps AdamW out of fp16 underflow (the loop's AdamW uses eps 1e-8;
    the release trained fp16 copies with eps 1e-4)."""

    def __post_init__(self) -> None:
        from recon.errors import UserError

        if self.block_steps < 1 or self.augment_every < 1 or self.cache_size < 1 or self.sdedit_steps < 1:
            raise UserError("BSD block_steps, augment_every, cache_size and sdedit_steps must be positive")
        if not 0.0 <= self.pretrain_fraction < 1.0:
            raise UserError(f"BSD pretrain_fraction must be in [0, 1), got {self.pretrain_fraction}")
        for name in ("strength_start", "strength_end"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UserError(f"BSD {name} must be in (0, 1], got {getattr(self, name)}")
        if self.copy_dtype is not None and not isinstance(getattr(torch, self.copy_dtype, None), torch.dtype):
            raise UserError(f"BSD copy_dtype {self.copy_dtype!r} is not a torch dtype; use e.g. 'float32'")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise UserError(f"BSD text_dropout must be in [0, 1], got {self.text_dropout}")


def _with_unet(prior: Any, unet: torch.nn.Module) -> Any:
    """A shallow copy of ``prior`` whose ``predict_noise`` runs ``unet``."""
    bound = copy.copy(prior)
    bound.unet = unet
    param = next(unet.parameters(), None)
    if param is not None and hasattr(bound, "dtype"):
        bound.dtype = param.dtype  # inputs are cast to the copy's dtype
    return bound


def _predict(
    prior: Any, unet: torch.nn.Module, x_t: Tensor, t: Tensor, cond: PromptConditioning, scale: float
) -> Tensor:
    """``prior.predict_noise`` through ``unet`` (diffusers CFG), text cast to the copy's dtype."""
    bound = _with_unet(prior, unet)
    dtype = getattr(bound, "dtype", cond.cond.dtype)
    cast = PromptConditioning(
        cond.prompts, cond.cond.to(dtype), cond.uncond.to(dtype), cond.cond_mask, cond.uncond_mask
    )
    return bound.predict_noise(x_t, t, cast, scale, "diffusers")


class BootstrappedScoreDistillation:
    """BSD over a :class:`priors.model.DiffusionPrior` (pixel or latent).

    Args:
        prior: The original prior; it stays frozen (its ``unet`` is deep-copied twice).
        config: Settings (defaults: :class:`BSDConfig`).
    """

    def __init__(self, prior: Any, config: BSDConfig | None = None) -> None:
        self.prior = prior
        self.config = config or BSDConfig()
        dtype = getattr(torch, self.config.copy_dtype) if self.config.copy_dtype else None
        self.finetuned: torch.nn.Module = copy.deepcopy(prior.unet).to(dtype=dtype).requires_grad_(True)
        self.estimator: torch.nn.Module = copy.deepcopy(prior.unet).to(dtype=dtype).requires_grad_(True)
        self.cache: deque[tuple[Tensor, Tensor]] = deque(maxlen=self.config.cache_size)
        """Augmented frames: (denoiser-space latents [1, C, h, w], text hidden states [1, L, D]). The
        release caches decoded images and re-encodes them (a VAE posterior sample) per use; caching the
        SDEdit latents skips that round trip."""
        self.augmentations = 0
        self._last: tuple[Tensor, Tensor] | None = None  # detached latents [B, C, h, w], cond [B, L, D]

    # ---------------------------------------------------------------- schedule
    def phase(self, step: int) -> Phase:
        """``"pretrain"`` in the first ``pretrain_fraction`` of every block, else ``"distill"``."""
        cfg = self.config
        return (
            "pretrain" if step % cfg.block_steps < int(cfg.block_steps * cfg.pretrain_fraction) else "distill"
        )

    def strength(self, progress: float) -> float:
        """SDEdit strength / maximal timestep fraction, linear from start to end over the run."""
        cfg = self.config
        return cfg.strength_start + (cfg.strength_end - cfg.strength_start) * min(max(progress, 0.0), 1.0)

    def _latents(self, images: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, C, h, w]
        prior = self.prior
        x = images.to(prior.device)
        if x.shape[-2:] != (prior.resolution, prior.resolution):
            x = F.interpolate(
                x, size=(prior.resolution, prior.resolution), mode="bilinear", align_corners=False
            )
        return prior.encode_images(x).float()

    @staticmethod
    def _fit(h: Tensor, b: int) -> Tensor:
        return h if h.shape[0] == b else h.expand(b, *h.shape[1:])

    # ---------------------------------------------------------------- augmentation
    def maybe_augment(
        self,
        step: int,
        render: Tensor,  # [B, 3, H, W] in [0, 1]
        cond: PromptConditioning,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> bool:
        """SDEdit ``render`` into the cache every ``augment_every`` steps (and whenever the cache is
        empty); True when it did. :meth:`loss_term` calls it in pretrain steps only, as released.

        The first augmentation denoises with the original prior, all later ones with the fine-tuned
        copy (the bootstrap). Each of the ``B`` frames is cached with its text embedding.
        """
        cfg = self.config
        if step % cfg.augment_every != 0 and self.cache:
            return False
        prior = self.prior
        denoiser = self.finetuned if self.augmentations > 0 else prior.unet
        strength = self.strength(progress)
        ts = ddim_timesteps(prior.num_train_timesteps, cfg.sdedit_steps)
        n = max(1, int(cfg.sdedit_steps * strength))
        ts = ts[-n:]
        alphas = prior.alphas_cumprod.to(prior.device)
        with torch.no_grad():
            z0 = self._latents(render.detach())
            b = z0.shape[0]
            gen_device = generator.device if generator is not None else "cpu"
            noise = torch.randn(z0.shape, generator=generator, device=gen_device).to(z0.device)
            x = prior.add_noise(z0, noise, torch.full((b,), ts[0], device=z0.device))
            for i, t in enumerate(ts):
                a_t = alphas[t]
                a_prev = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=alphas.device)
                eps = _predict(prior, denoiser, x, torch.full((b,), t), cond, cfg.augment_guidance)
                x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
                if not prior.is_latent:
                    x0 = x0.clamp(-1.0, 1.0)
                    eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            hidden = self._fit(cond.cond, b)
            for k in range(b):
                self.cache.append((x[k : k + 1].detach().float(), hidden[k : k + 1].detach()))
        self.augmentations += 1
        return True

    # ---------------------------------------------------------------- losses
    def _eps_mse(
        self, unet: torch.nn.Module, z0: Tensor, hidden: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        prior = self.prior
        b = z0.shape[0]
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(0, prior.num_train_timesteps, (b,), generator=generator, device=gen_device)
        t = t.to(z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=gen_device).to(z0.device)
        x_t = prior.add_noise(z0, noise, t)
        cond = PromptConditioning([""] * b, hidden, hidden)
        eps = _predict(prior, unet, x_t, t, cond, 1.0)
        return F.mse_loss(eps.float(), noise)

    def finetune_loss(self, generator: torch.Generator | None = None) -> Tensor:
        """ε-MSE of the fine-tuned copy on one random cached frame, ``t ~ U[0, T)``, text zeroed with
        probability ``text_dropout``; weighted by ``weight_pretrain``. A graph-less zero if the cache
        is empty."""
        cfg = self.config
        if not self.cache:
            return torch.zeros((), requires_grad=True)
        gen_device = generator.device if generator is not None else "cpu"
        idx = int(torch.randint(0, len(self.cache), (1,), generator=generator, device=gen_device))
        z0, hidden = self.cache[idx]
        if float(torch.rand((), generator=generator, device=gen_device)) < cfg.text_dropout:
            hidden = torch.zeros_like(hidden)
        return cfg.weight_pretrain * self._eps_mse(self.finetuned, z0, hidden, generator)

    def estimator_loss(
        self, latents: Tensor, hidden: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """ε-MSE of the estimator on ``sg(latents)`` ``[B, C, h, w]`` with text ``hidden`` ``[B, L, D]``,
        ``t ~ U[0, T)``; weighted by ``weight_estimator``."""
        z0 = latents.detach().float()
        return self.config.weight_estimator * self._eps_mse(
            self.estimator, z0, self._fit(hidden.detach(), z0.shape[0]), generator
        )

    def scene_loss(
        self,
        images: Tensor,  # [B, 3, H, W] in [0, 1], rendered (requires grad)
        cond: PromptConditioning,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """BSD on the render: ``loss = ½‖z − sg(z − grad)‖² / B`` with
        ``grad = (1 − ᾱ_t)(ε_finetuned,cfg − ε_estimator)``, ``t ~ U[min_step_fraction·T, strength·T]``.

        Returns ``(loss, info)`` with ``info = {"t": [B], "grad": [B, C, h, w], "grad_norm": float}``.
        The detached latents are kept for the estimator's step.
        """
        cfg = self.config
        prior = self.prior
        latents = self._latents(images)
        b = latents.shape[0]
        T = prior.num_train_timesteps
        lo = min(max(round(cfg.min_step_fraction * T), 0), T - 1)
        hi = min(max(round(self.strength(progress) * T), lo), T - 1)
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(lo, hi + 1, (b,), generator=generator, device=gen_device).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator, device=gen_device).to(latents.device)
        with torch.no_grad():
            x_t = prior.add_noise(latents.detach(), noise, t)
            eps_pre = _predict(prior, self.finetuned, x_t, t, cond, cfg.guidance_scale)
            hidden = self._fit(cond.cond, b)
            est_cond = PromptConditioning(list(cond.prompts), hidden, hidden)
            eps_est = _predict(prior, self.estimator, x_t, t, est_cond, 1.0)
            alpha_bar = prior.alphas_cumprod.to(latents.device)[t].view(-1, 1, 1, 1)
            grad = (1 - alpha_bar) * (eps_pre.float() - eps_est.float())
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        self._last = (latents.detach(), hidden.detach())
        target = (latents - grad).detach()
        loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / b
        return loss, {"t": t, "grad": grad, "grad_norm": float(grad.norm())}

    # ---------------------------------------------------------------- the loop
    def loss_term(
        self,
        images: Callable[[Any], Tensor],
        cond: Callable[[Any], PromptConditioning],
        name: str = "bsd",
    ) -> Any:
        """The scene's :class:`recon.train.LossTerm` (weight ``lambda_sd``).

        Args:
            images: ``ctx -> [B, 3, H, W]`` rendered images in ``[0, 1]`` of the step.
            cond: ``ctx -> PromptConditioning`` of those images (view-dependent text).

        In pretrain steps it augments (every ``augment_every`` steps, or when the cache is empty) and
        returns a graph-less zero (the scene gets no gradient); in distill steps :meth:`scene_loss`.
        """
        from recon.train import LossTerm

        def fn(ctx: Any) -> tuple[Tensor, dict[str, Any]]:
            imgs, c = images(ctx), cond(ctx)
            if self.phase(ctx.step) == "pretrain":
                self.maybe_augment(ctx.step, imgs, c, ctx.progress, ctx.generator)
                self._last = None
                return torch.zeros(()), {"phase": "pretrain"}
            loss, info = self.scene_loss(imgs, c, ctx.progress, ctx.generator)
            info["phase"] = "distill"
            return loss, info

        return LossTerm(name, fn, weight=self.config.lambda_sd)

    def auxiliaries(self) -> list[Any]:
        """The two :class:`recon.train.Auxiliary` trainables: ``bsd_finetuned`` trains in pretrain
        steps, ``bsd_estimator`` in distill steps (on the latents of that step's :meth:`scene_loss`);
        in the other phase each returns a graph-less zero, so its optimizer skips the step."""
        from recon.train import Auxiliary

        def idle() -> Tensor:
            return torch.zeros((), requires_grad=True)

        def finetune(ctx: Any) -> Tensor:
            return self.finetune_loss(ctx.generator) if self.phase(ctx.step) == "pretrain" else idle()

        def estimate(ctx: Any) -> Tensor:
            if self.phase(ctx.step) != "distill" or self._last is None:
                return idle()
            return self.estimator_loss(*self._last, generator=ctx.generator)

        lr = self.config.learning_rate
        return [
            Auxiliary("bsd_finetuned", self.finetuned, finetune, learning_rate=lr),
            Auxiliary("bsd_estimator", self.estimator, estimate, learning_rate=lr),
        ]
