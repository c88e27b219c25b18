"""StableDreamer: text-to-3D Gaussians with annealed SDS and an image-space then latent-space prior.

Guo et al., "StableDreamer: Taming Noisy Score Distillation Sampling for Text-to-3D", 2023,
https://arxiv.org/abs/2312.02189 (no official code; implemented from the paper):

* 3D Gaussians initialised in a ball, optimized from random cameras on a sphere with view-dependent
  prompt suffixes ("front view", ...).
* SDS whose timestep range is **annealed** from high to low noise over training (the paper shows
  SDS is a supervised reconstruction loss whose noise level should fall as the shape settles).
* **Two stages**: an image-space (pixel) prior first for geometry, then a latent-space prior for
  color and detail (the paper pairs DeepFloyd IF with Stable Diffusion; sds3d's embedded prior has
  a pixel and a latent variant).
* Opacity and scale regularisers against floaters and needle-like Gaussians, and density control
  (gsplat's clone / split / prune).

``representation="nerf"`` runs the same stages on a :class:`~recon.fields.DensityField` instead
(DreamFusion-style, Poole et al. 2022, https://arxiv.org/abs/2209.14988): a dense feature grid with a
blob density bias, volume-rendered with stratified samples and occupancy-grid skipping, with an
opacity-sparsity and a grid total-variation regulariser in place of the Gaussian ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from priors import embedded_latent_source, resolve_prior_name
from priors.model import PromptConditioning
from priors.sds import SDSConfig, SDSLoss
from recon.cameras import sample_hemisphere_cameras, view_direction_words
from recon.device import resolve, resolve_device
from recon.errors import (
    CHECKPOINT_EVERY,
    FRACTION,
    IMAGE_SIDE,
    LEARNING_RATE,
    SEED,
    STEPS,
    WEIGHT,
    UserError,
    check_fields,
    checked,
)
from recon.fields import DensityField, DensityFieldConfig
from recon.gaussians import DensifyConfig, GaussianModel
from recon.render import render_gaussians
from recon.render.volume import OccupancyGrid, render_field
from recon.train import LearningRate, LossTerm, Stage, StepContext, TrainConfig, Trainer

log = logging.getLogger("sds3d.stabledreamer")


@dataclass
class StableDreamerConfig:
    """Every hyper-parameter of a StableDreamer run."""

    prompt: str = "a red cube"
    """What to make."""
    representation: Literal["gaussians", "nerf"] = "gaussians"
    """What is optimized: 3D Gaussians, or a NeRF density field (dense grid + tiny MLP)."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""
    prior: str = "embedded"
    """Geometry-stage (image-space) prior: ``embedded``, a hub id (e.g. DeepFloyd/IF-I-XL-v1.0) or a
    local diffusers folder."""
    color_prior: str = "same"
    """Color-stage (latent) prior: ``same`` (the geometry prior; for ``embedded``, its latent variant
    when one is shipped), a hub id (e.g. stabilityai/stable-diffusion-2-1-base) or a local folder."""
    allow_download: bool = False
    """Let diffusers download hub checkpoints (otherwise only the local cache is used)."""
    device: str = checked("auto", nonempty=True, fix="use auto, cpu, cuda or cuda:N")
    """Where the run computes: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N`` (:func:`recon.device.resolve_device`)."""
    dtype: str = checked("auto", nonempty=True, fix="use auto, float32, float16 or bfloat16")
    """Weights dtype of the priors: ``auto`` (float16 on CUDA, float32 on the CPU), ``float32``,
    ``float16`` or ``bfloat16``; the Gaussians / field always train in float32."""
    steps: int = checked(1500, STEPS)
    """Total optimization steps over both stages. 1500 on the embedded prior: a chair's legs and back, a
    duck's head and beak come out from ~900 geometry steps on (300 steps gave a blob); about a minute on
    2 cores with ``max_gaussians`` 16000."""
    geometry_fraction: float = checked(0.6, FRACTION)
    """Fraction of the steps spent in the geometry (image-space prior) stage."""
    seed: int = checked(0, SEED)
    """Seed of every random choice."""
    num_gaussians: int = checked(2048, low=1, high=10_000_000)
    """Gaussians at initialisation."""
    init_radius: float = checked(0.6, low=0.001, high=100)
    """Radius of the ball the Gaussians start in."""
    init_opacity: float = checked(0.3, low=0.0001, high=0.9999)
    """Initial opacity of every Gaussian."""
    sh_degree: int = checked(0, low=0, high=3)
    """SH degree of the colors (SDS gives little view-dependent signal: 0 is the usual choice)."""
    views_per_step: int = checked(4, low=1, high=64)
    """Cameras rendered per step (the SDS batch)."""
    resolution: int = checked(0, IMAGE_SIDE)
    """Render resolution; 0 = the prior's native resolution."""
    elevation_range_deg: tuple[float, float] = checked((-10.0, 50.0), low=-90, high=90, ordered=True)
    """Camera elevation range."""
    distance_range: tuple[float, float] = checked((3.0, 3.0), low=0.01, high=1000, ordered=True)
    """Camera distance range (the embedded prior was trained at distance 3)."""
    fov_range_deg: tuple[float, float] = checked((40.0, 40.0), low=1, high=179, ordered=True)
    """Camera vertical field of view range (the embedded prior was trained at 40 deg)."""
    view_dependent_prompt: bool = True
    """Append "front view" / "side view" / "back view" / "overhead view" to the prompt."""
    background: float = checked(1.0, FRACTION)
    """Gray level of the background the Gaussians are rendered over (the embedded prior uses white)."""
    sds: SDSConfig = field(
        default_factory=lambda: SDSConfig(
            guidance_scale=15.0, t_min=0.02, t_max=0.98, anneal="linear", t_max_end=0.25, weighting="1-alpha"
        )
    )
    """Score distillation settings; the timestep range anneals over each stage."""
    color_guidance_scale: float = checked(0.0, low=0, high=1000)
    """Guidance of the color stage (0: same as ``sds.guidance_scale``)."""
    opacity_reg: float = checked(0.001, WEIGHT)
    """Weight of the mean-opacity penalty (fewer, more decisive Gaussians; fewer floaters)."""
    scale_reg: float = checked(0.1, WEIGHT)
    """Weight of the penalty on Gaussians larger than ``max_scale`` or more elongated than ``max_aniso``."""
    max_scale: float = checked(0.15, low=1e-6, high=100)
    """Largest comfortable Gaussian standard deviation (world units)."""
    max_aniso: float = checked(6.0, low=1, high=1e6)
    """Largest comfortable ratio of a Gaussian's longest to shortest axis (needles above)."""
    densify: DensifyConfig = field(
        default_factory=lambda: DensifyConfig(
            grow_grad2d=0.002,
            refine_start_iter=50,
            refine_every=50,
            reset_every=100_000,
            prune_opa=0.02,
            max_gaussians=16_000,
        )
    )
    """Density control of the geometry stage (growth stops at 16k Gaussians: uncapped, 1500 steps grew
    163k and took 6 minutes)."""
    lr_means: float = checked(3e-3, LEARNING_RATE)
    lr_scales: float = checked(5e-3, LEARNING_RATE)
    lr_opacities: float = checked(5e-2, LEARNING_RATE)
    lr_colors: float = checked(1e-2, LEARNING_RATE)
    nerf: DensityFieldConfig = field(
        default_factory=lambda: DensityFieldConfig(radius=1.0, grid_resolution=48, features=8, hidden=32)
    )
    """The density field of ``representation="nerf"`` (blob bias on: the shape starts as a ball)."""
    nerf_samples: int = checked(64, low=1, high=4096)
    """Samples per ray of ``representation="nerf"`` (stratified during training)."""
    nerf_sparsity_reg: float = checked(0.01, WEIGHT)
    """Weight of the mean rendered opacity (against a field that fills the view; NeRF only)."""
    nerf_tv_reg: float = checked(0.1, WEIGHT)
    """Weight of the feature grid's total variation (smooth, floater-free grids; NeRF only)."""
    nerf_occupancy_resolution: int = checked(32, low=0, high=512)
    """Cells per axis of the occupancy grid that skips empty space (NeRF only; 0: off)."""
    nerf_mesh_level: float = checked(5.0, low=0, high=1e6)
    """Density iso level of the exported mesh's marching cubes (NeRF only)."""
    checkpoint_every: int = checked(100, CHECKPOINT_EVERY)
    """Steps between checkpoints."""
    progress_bar: bool = True


@dataclass
class LoadedPriors:
    geometry: Any
    color: Any


def load_priors(config: StableDreamerConfig) -> LoadedPriors:
    """Builds the two priors (the same object when the color prior is ``same`` and none is shipped), on
    the run's device in its dtype."""
    from priors.model import DiffusionPrior

    device, dtype = resolve(config.device, config.dtype)

    def load(source: str):
        return DiffusionPrior.from_pretrained(
            resolve_prior_name(source), allow_download=config.allow_download, device=device, dtype=dtype
        )

    geometry = load(config.prior)
    if config.color_prior != "same":
        return LoadedPriors(geometry, load(config.color_prior))
    latent = embedded_latent_source() if config.prior == "embedded" else None
    return LoadedPriors(geometry, load(latent) if latent else geometry)


class ViewConditioning:
    """Per-view prompt conditioning, cached by prompt for text priors."""

    def __init__(self, prior: Any, config: StableDreamerConfig):
        self.prior = prior
        self.config = config
        self._cache: dict[str, Any] = {}

    def prompts(self, cameras) -> list[str]:
        if not self.config.view_dependent_prompt:
            return [self.config.prompt] * len(cameras)
        words = view_direction_words(cameras.elevation_deg, cameras.azimuth_deg)
        return [f"{self.config.prompt}, {w}" for w in words]

    def __call__(self, cameras) -> Any:
        prompts = self.prompts(cameras)
        negative = [self.config.negative_prompt] * len(prompts)
        probe = self.prior.encode_prompt(
            prompts[:1], negative[:1], cameras.elevation_deg[:1], cameras.azimuth_deg[:1]
        )
        if not isinstance(probe, PromptConditioning):  # view-aware priors (exemplar): no caching
            return self.prior.encode_prompt(prompts, negative, cameras.elevation_deg, cameras.azimuth_deg)
        parts = []
        for p in prompts:
            if p not in self._cache:
                self._cache[p] = self.prior.encode_prompt([p], [self.config.negative_prompt])
            parts.append(self._cache[p])
        return _concat_conditioning(parts)


def _concat_conditioning(parts: list[PromptConditioning]) -> PromptConditioning:
    def cat(name: str):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return PromptConditioning(
        prompts=[q for p in parts for q in p.prompts],
        cond=cat("cond"),
        uncond=cat("uncond"),
        cond_mask=cat("cond_mask"),
        uncond_mask=cat("uncond_mask"),
    )


def validate(config: StableDreamerConfig) -> None:
    """Raises a UserError for input a run cannot start with (every field's declaration, then the rest)."""
    if not config.prompt or not config.prompt.strip():
        raise UserError('the prompt is empty; say what to make, e.g. sds3d generate "a red cube"')
    check_fields(config)
    resolve(config.device, config.dtype)  # CUDA asked for where there is none: refused before any folder
    if config.geometry_fraction <= 0.0:
        raise UserError(f"geometry_fraction must be in (0, 1], got {config.geometry_fraction}")
    if config.representation == "nerf" and config.nerf.radius <= 0:
        raise UserError(f"nerf.radius must be positive for representation nerf, got {config.nerf.radius}")


def regularisers(config: StableDreamerConfig) -> list[LossTerm]:
    def opacity(ctx: StepContext):
        return ctx.model.opacities.mean()

    def scale(ctx: StepContext):
        s = ctx.model.scales
        too_big = torch.relu(s.max(dim=-1).values - config.max_scale).mean()
        aniso = torch.relu(
            s.max(dim=-1).values / s.min(dim=-1).values.clamp_min(1e-8) - config.max_aniso
        ).mean()
        return too_big + 0.01 * aniso

    return [LossTerm("opacity", opacity, config.opacity_reg), LossTerm("scale", scale, config.scale_reg)]


def field_regularisers(config: StableDreamerConfig) -> list[LossTerm]:
    """Sparsity of the rendered opacity and total variation of the grid (the NeRF's regularisers)."""

    def sparsity(ctx: StepContext):
        return ctx.render.alpha.mean()

    def tv(ctx: StepContext):
        return ctx.model.tv_loss()

    return [LossTerm("sparsity", sparsity, config.nerf_sparsity_reg), LossTerm("tv", tv, config.nerf_tv_reg)]


def build_trainer(config: StableDreamerConfig, priors: LoadedPriors, run_dir: str | Path) -> Trainer:
    """The model and the two-stage plan of a StableDreamer run."""
    validate(config)
    gen = torch.Generator().manual_seed(config.seed)
    if config.representation == "nerf":
        torch.manual_seed(config.seed)  # the field's initial weights
        model: torch.nn.Module = DensityField(config.nerf)
        occupancy = (
            OccupancyGrid(model.aabb, config.nerf_occupancy_resolution)
            if config.nerf_occupancy_resolution
            else None
        )
        step_size = float((model.aabb[3:] - model.aabb[:3]).norm()) / config.nerf_samples
        regs = field_regularisers(config)
    else:
        model = GaussianModel.random_in_sphere(
            config.num_gaussians, radius=config.init_radius, sh_degree=config.sh_degree,
            init_opacity=config.init_opacity, generator=gen,
        )  # fmt: skip
        # Start every Gaussian gray so that color is learned, not inherited from the random init.
        with torch.no_grad():
            model.splats["sh0"].zero_()
        occupancy, regs = None, regularisers(config)
    total_steps = {"geometry": 0}

    def stage_for(name: str, prior: Any, steps: int, guidance: float, densify: DensifyConfig | None) -> Stage:
        res = config.resolution or prior.resolution
        sds = SDSLoss(prior, _with_guidance(config.sds, guidance))
        conditioning = ViewConditioning(prior, config)
        offset = 0 if name == "geometry" else total_steps["geometry"]

        def sample(step: int, generator: torch.Generator):
            cameras = sample_hemisphere_cameras(
                config.views_per_step, config.elevation_range_deg, (-180.0, 180.0), config.distance_range,
                config.fov_range_deg, res, res, generator=generator,
            )  # fmt: skip
            if config.representation == "gaussians":
                return cameras
            # The field's stratified samples draw from a generator of their own, seeded by the step
            # (so a resumed run draws what the uninterrupted one did).
            cameras.jitter = torch.Generator().manual_seed(config.seed * 1_000_003 + offset + step)
            return cameras

        def render(m, cameras):
            if config.representation == "gaussians":
                return render_gaussians(m, cameras, background=config.background)
            return render_field(
                m, cameras, background=config.background, num_samples=config.nerf_samples, stratified=True,
                generator=cameras.jitter, occupancy=occupancy, with_depth=False,
            )  # fmt: skip

        def sds_term(ctx: StepContext):
            images = ctx.render.rgb.permute(0, 3, 1, 2)  # [B, 3, H, W]
            loss, info = sds(images, conditioning(ctx.batch), ctx.progress, generator=ctx.generator)
            return loss, info

        def update_occupancy(m, step: int) -> None:
            if occupancy is not None:
                occupancy.update(
                    m, offset + step, step_size=step_size, warmup_steps=64, every_n=8, generator=gen
                )

        if config.representation == "nerf":
            lrs = None  # the field's own defaults
            densify = None
        else:
            lrs = {
                "means": LearningRate(config.lr_means, config.lr_means * 0.1),
                "scales": LearningRate(config.lr_scales),
                "quats": LearningRate(1e-3),
                "opacities": LearningRate(config.lr_opacities),
                "sh0": LearningRate(config.lr_colors),
                "shN": LearningRate(config.lr_colors / 20),
            }
        return Stage(
            name, steps, sample, render, [LossTerm("sds", sds_term), *regs], lrs, densify,
            on_step_end=update_occupancy if occupancy is not None else None,
        )  # fmt: skip

    geometry_steps = max(1, round(config.steps * config.geometry_fraction))
    total_steps["geometry"] = geometry_steps
    color_steps = config.steps - geometry_steps
    stages = [
        stage_for("geometry", priors.geometry, geometry_steps, config.sds.guidance_scale, config.densify)
    ]
    if color_steps > 0:
        guidance = config.color_guidance_scale or config.sds.guidance_scale
        stages.append(stage_for("color", priors.color, color_steps, guidance, None))
    train_config = TrainConfig(
        seed=config.seed, checkpoint_every=config.checkpoint_every, progress_bar=config.progress_bar,
        device=str(resolve_device(config.device)),
    )  # fmt: skip
    state = {"occupancy": occupancy} if occupancy is not None else None
    return Trainer(model, stages, run_dir, train_config, state=state)


def _with_guidance(sds: SDSConfig, guidance: float) -> SDSConfig:
    from dataclasses import replace

    return replace(sds, guidance_scale=guidance)
