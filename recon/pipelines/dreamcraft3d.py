"""DreamCraft3D: one picture to a textured mesh, with a view-conditioned prior and bootstrapped SDS.

Sun et al., "DreamCraft3D: Hierarchical 3D Generation with Bootstrapped Diffusion Prior", ICLR 2024,
https://arxiv.org/abs/2310.16818, code github.com/deepseek-ai/DreamCraft3D (threestudio-based). The
stages as released (configs/dreamcraft3d-{coarse-nerf,coarse-neus,geometry,texture}.yaml), scaled to a
CPU budget:

1. **coarse** — a NeRF (:class:`~recon.fields.DensityField`, blob bias) fitted to the reference view
   (``rgb`` 1000 · MSE of the image composited on the background, ``mask`` 100 · MSE of the opacity) on
   even steps, and on odd steps guided from random cameras by text SDS (the pixel prior, DeepFloyd IF
   as released, λ 0.1) and view-conditioned SDS (Zero123, λ 0.1); the camera ranges and the timestep
   range widen from the reference view over the first steps (t_min 0.7 → 0.2, t_max 0.85 → 0.5).
2. **sdf-init** — the SDF field (:class:`~recon.fields.SDFField`, NeuS) takes the coarse shape: its sign
   is fitted to the coarse field's occupancy (the released code copies the NeRF's hash grid into the
   NeuS by name; a dense-grid CPU field has no such shared meaning, so the shape is distilled).
3. **sculpt** — the same reference / guidance alternation on the SDF (geometry sculpting; the released
   code runs NeuS then DMTet at high resolution — here NeuS with eikonal and marching cubes).
4. **texture** — the mesh is fixed (marching cubes → clean → xatlas UVs → texture baked from the SDF
   field's colors) and its texture trained on the reference (L1 in an eroded mask) and on random views
   with **bootstrapped score distillation** (:mod:`priors.bsd`) — or plain SDS for the ablation.

The first three stages are one :class:`~recon.train.Trainer` over ``{"coarse", "sdf"}``; the texture
stage is a second one over the fixed mesh in ``run_dir/texture`` (the mesh only exists once the
geometry is done). Both checkpoint and resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from priors import resolve_prior_name
from priors.model import PromptConditioning
from priors.sds import SDSConfig, SDSLoss
from recon.cameras import Cameras, cameras_from_spherical, view_direction_words
from recon.data.reference import caption_reference
from recon.device import resolve, resolve_device
from recon.errors import (
    CHECKPOINT_EVERY,
    FACES,
    FRACTION,
    LEARNING_RATE,
    SEED,
    TEXTURE_SIZE,
    WEIGHT,
    UserError,
    check_fields,
    check_range,
    checked,
)
from recon.fields import DensityField, DensityFieldConfig, SDFField, SDFFieldConfig
from recon.fields.sdf import extract_sdf_mesh, uniform_box_points, update_sdf_occupancy
from recon.mesh.sdf_fit import FloaterCache, fit_mesh_level, floater_points
from recon.render.volume import OccupancyGrid, render_field
from recon.train import Hooks, LearningRate, LossTerm, Stage, StepContext, TrainConfig, Trainer

log = logging.getLogger("sds3d.dreamcraft3d")


@dataclass
class DreamCraft3DConfig:
    """Every setting of a DreamCraft3D run."""

    image: str = ""
    """The reference picture (PNG/JPEG/WebP; RGBA keeps its alpha as the mask)."""
    mask: str = ""
    """Optional mask image (white = object) overriding the picture's own segmentation."""
    segmentation: Literal["auto", "alpha", "background", "rembg"] = "auto"
    """How the mask is found when no ``mask`` is given (see :mod:`recon.data.reference`)."""
    prompt: str = ""
    """Optional text. Without it the text SDS is off and the geometry comes from the reference and the
    view-conditioned prior alone; BSD then fine-tunes on the empty prompt."""
    negative_prompt: str = ""
    prior: str = "embedded-unet"
    """Text prior of the geometry stages (IF's role): ``embedded-unet`` (the project's pixel UNet: BSD
    fine-tunes a denoiser, which the exemplar prior is not), a hub id or a local diffusers folder."""
    view_prior: str = "embedded"
    """View-conditioned prior (Zero123's role): ``embedded`` (assets/embedded-view, a miniature Zero123
    trained by the project), a Zero123 diffusers folder / hub id, or ``none`` (the ablation)."""
    texture_prior: str = "same"
    """Prior of the texture stage (SD 2.1-base's role in BSD): ``same`` (the text prior) or a source."""
    texture_guidance: Literal["bsd", "sds"] = "bsd"
    """Texture-stage guidance: bootstrapped score distillation, or plain SDS (the ablation)."""
    depth_model: str = ""
    """Optional transformers depth model (local folder or hub id) for the 1 − Pearson depth loss."""
    allow_download: bool = False
    """Let hub ids download (otherwise only local folders / the cache are used)."""
    device: str = checked("auto", nonempty=True, fix="use auto, cpu, cuda or cuda:N")
    """Where the run computes: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N`` (:func:`recon.device.resolve_device`)."""
    dtype: str = checked("auto", nonempty=True, fix="use auto, float32, float16 or bfloat16")
    """Weights dtype of the priors: ``auto`` (float16 on CUDA, float32 on the CPU), ``float32``,
    ``float16`` or ``bfloat16``. The fields, the texture and BSD's two trainable copies of the texture
    prior's denoiser train in float32 (AdamW underflows in float16)."""
    seed: int = checked(0, SEED)
    steps: int = checked(0, low=0, high=1_000_000)
    """Total steps split over the four stages in the proportions of their settings below (0: those
    settings as they are)."""
    reference_size: int = checked(64, low=16, high=1024)
    """Side of the prepared reference image (and the reference-view render)."""
    resolution: int = checked(64, low=16, high=1024)
    """Render resolution of the guidance views (resized to each prior's own resolution)."""
    coarse_steps: int = checked(300, low=0, high=1_000_000)
    sdf_init_steps: int = checked(100, low=0, high=1_000_000)
    sculpt_steps: int = checked(200, low=0, high=1_000_000)
    texture_steps: int = checked(200, low=0, high=1_000_000)
    reference_elevation_deg: float = checked(0.0, low=-90, high=90)
    """Elevation of the reference camera (DreamCraft3D assumes 0: a side-on picture)."""
    camera_distance: float = checked(3.0, low=0.01, high=1000)
    """Distance of every camera (released 3.8 at fovy 20; the embedded priors were trained at 3.0 / 40°)."""
    fov_deg: float = checked(40.0, low=1, high=179)
    elevation_range_deg: tuple[float, float] = checked((-10.0, 45.0), low=-90, high=90, ordered=True)
    progressive_fraction: float = checked(0.2, FRACTION)
    """Share of the coarse stage over which cameras and timesteps widen from the reference view
    (released: 200 of 5000 steps; a short CPU run needs a larger share)."""
    guidance_views: int = checked(1, low=1, high=64)
    """Random cameras per guidance step (released: 1)."""
    lambda_rgb: float = checked(1000.0, WEIGHT)
    lambda_mask: float = checked(100.0, WEIGHT)
    lambda_sd: float = checked(0.1, WEIGHT)
    """Text SDS weight."""
    lambda_3d_sd: float = checked(0.1, WEIGHT)
    """View-conditioned SDS weight."""
    lambda_depth: float = checked(0.05, WEIGHT)
    """1 − Pearson depth loss weight (only with ``depth_model``)."""
    lambda_sparsity: float = checked(0.1, WEIGHT)
    """Mean rendered opacity on guidance steps (coarse stage)."""
    lambda_eikonal: float = checked(0.1, WEIGHT)
    lambda_floaters: float = checked(10.0, WEIGHT)
    """Weight of the sculpt stage's floater term (:func:`floater_points`: the SDF pushed outside in
    pieces smaller than ``floater_fraction`` of the body; the picture's outline must come from the body)."""
    floater_every: int = checked(20, low=0, high=1_000_000)
    """Sculpt steps between two searches for floaters (0: no floater term)."""
    floater_fraction: float = checked(0.05, FRACTION)
    text_guidance_scale: float = checked(15.0, low=0, high=1000)
    view_guidance_scale: float = checked(5.0, low=0, high=1000)
    texture_guidance_scale: float = checked(7.5, low=0, high=1000)
    nerf: DensityFieldConfig = field(
        default_factory=lambda: DensityFieldConfig(radius=1.0, grid_resolution=48, features=8, hidden=32)
    )
    nerf_samples: int = checked(64, low=1, high=4096)
    nerf_level: float = checked(1.0, low=0, high=1e6)
    """Density level that counts as inside when the SDF takes the coarse shape (1.0: the SDF's
    silhouette matches the NeRF's at 48 samples over the box — measured mask IoU 0.93 vs 0.61 at 5.0)."""
    sdf: SDFFieldConfig = field(
        default_factory=lambda: SDFFieldConfig(radius=1.0, sphere_radius=0.5, eikonal_extra=True)
    )
    sdf_samples: int = checked(64, low=1, high=4096)
    mesh_resolution: int = checked(96, low=8, high=1024)
    mesh_level: float = checked(0.0, low=-1, high=1)
    """SDF value of the textured mesh's surface (or the centre of the search below)."""
    fit_mesh_level: bool = True
    """Pick the level within ±0.05 of ``mesh_level`` whose mesh matches the picture's outline best
    (:func:`recon.mesh.sdf_fit.fit_mesh_level`; a mug: 12 → 0 of 64² pixels off the outline, 22.7 → 24.2 dB
    at the reference)."""
    texture_size: int = checked(256, TEXTURE_SIZE)
    max_faces: int = checked(20_000, FACES)
    texture_lr: float = checked(5e-3, LEARNING_RATE)
    """Adam's step on the texels. The guidance paints speckles where the picture does not reach; a
    smaller step keeps fewer (a mug at 2e-2: 22.3 dB at the reference, 5e-3: 22.7; a texture pyramid,
    which pools the texels' gradients, came out noisier still)."""
    texture_supersample: int = checked(2, low=1, high=8)
    """The texture stage renders at this many times the reference / guidance resolution (the guidance
    sees the render box-filtered back): the texels between two pixel centres train too, so the texture
    holds up in a sharper view (trained at 1×, a 2× view of the reference lost 2.7 dB)."""
    texture_erode: int = checked(1, low=1, high=63)
    """Side of the min-pool that erodes the reference mask of the texture stage's colour loss (released:
    9 at 1024 px, against a segmentation's halo; 1: the whole mask, whose edge pixels are un-blended by
    :func:`reference_albedo` — 3 left the outline's colours to the guidance: 19.6 dB at the reference)."""
    bake_views: int = checked(12, low=1, high=1024)
    """Views of the SDF field whose colors are baked into the starting texture."""
    bake_size: int = checked(96, low=8, high=4096)
    """Their resolution."""
    checkpoint_every: int = checked(100, CHECKPOINT_EVERY)
    progress_bar: bool = True


STAGE_FIELDS = ("coarse_steps", "sdf_init_steps", "sculpt_steps", "texture_steps")


def stage_steps(config: DreamCraft3DConfig) -> dict[str, int]:
    """Steps of each stage: the settings, or ``steps`` shared out in their proportions."""
    counts = {name: int(getattr(config, name)) for name in STAGE_FIELDS}
    if config.steps <= 0:
        return counts
    total = sum(counts.values())
    scaled = {k: (max(1, round(config.steps * v / total)) if v else 0) for k, v in counts.items()}
    scaled["coarse_steps"] = max(2, scaled["coarse_steps"])
    return scaled


def with_stage_steps(config: DreamCraft3DConfig) -> DreamCraft3DConfig:
    """``config`` with ``steps`` applied to the stage settings (and ``steps`` 0)."""
    return replace(config, steps=0, **stage_steps(config))


def validate(config: DreamCraft3DConfig) -> None:
    """Raises a UserError for settings a run cannot start with (the image is checked when loaded)."""
    check_fields(config)
    resolve(config.device, config.dtype)  # CUDA asked for where there is none: refused before any folder
    if not config.image:
        raise UserError("no reference image: give one with --image PICTURE.png")
    for name in ("coarse_steps", "sdf_init_steps", "sculpt_steps", "texture_steps"):
        check_range(f"--{name.replace('_', '-')}", getattr(config, name), 0, 1_000_000)
    if config.coarse_steps == 0:
        raise UserError("--coarse-steps must be positive: the coarse stage makes the shape")
    check_range("--steps", config.steps, 0, 1_000_000)
    check_range("--reference-size", config.reference_size, 16, 1024)
    check_range("--resolution", config.resolution, 16, 1024)
    check_range("--guidance-views", config.guidance_views, 1, 64)
    check_range("--checkpoint-every", config.checkpoint_every, 1)
    check_range("progressive_fraction", config.progressive_fraction, 0.0, 1.0, integer=False)
    if config.texture_guidance not in ("bsd", "sds"):
        raise UserError(f"texture_guidance must be bsd or sds, got {config.texture_guidance!r}")


# ---------------------------------------------------------------------- priors
@dataclass
class LoadedPriors:
    reference: Any  # recon.data.reference.ReferenceImage
    text: Any | None
    view: Any | None
    texture: Any
    prompt: str = ""
    """The prompt in use: the user's, or the caption of the picture (embedded priors), or ""."""


def load_priors(config: DreamCraft3DConfig) -> LoadedPriors:
    """Prepares the reference image and loads the text, view-conditioned and texture priors (on the run's
    device, in its dtype; the reference stays on the CPU)."""
    from priors.model import DiffusionPrior
    from recon.data.reference import ReferenceConfig, load_reference

    device, dtype = resolve(config.device, config.dtype)
    reference = load_reference(
        config.image,
        ReferenceConfig(size=config.reference_size, segmentation=config.segmentation),
        mask=config.mask or None,
        depth_model=config.depth_model or None,
        allow_download=config.allow_download,
    )
    log.info("reference %s: mask from %s", config.image, reference.source)

    def text_prior(source: str):
        # BSD fine-tunes a denoiser and the exemplar prior has none: "embedded" is the pixel UNet here.
        name = "embedded-unet" if source == "embedded" else resolve_prior_name(source)
        return DiffusionPrior.from_pretrained(
            name, allow_download=config.allow_download, device=device, dtype=dtype
        )

    text = text_prior(config.prior)
    view = None
    if config.view_prior != "none":
        from priors.view import ViewConditionedPrior

        view = ViewConditionedPrior.from_pretrained(
            config.view_prior, allow_download=config.allow_download, device=device, dtype=dtype
        )
    texture = text if config.texture_prior == "same" else text_prior(config.texture_prior)
    prompt = config.prompt.strip()
    if not prompt and config.prior.startswith("embedded"):
        prompt = caption_reference(reference)
        if prompt:
            log.info(
                "no prompt: the embedded judges caption the picture as %r (DreamCraft3D: BLIP-2)",
                prompt,
            )
    if not prompt:
        log.info(
            "no prompt: the text SDS is off and the texture prior is unconditional; the geometry comes "
            "from the reference image%s",
            " and the view-conditioned prior" if view is not None else "",
        )
    return LoadedPriors(reference, text if prompt else None, view, texture, prompt)


def check_prompt(config: DreamCraft3DConfig, priors: LoadedPriors) -> None:
    """Encodes the prompt once (an embedded prior refuses unknown words before any folder exists)."""
    if priors.text is not None:
        priors.text.encode_prompt([priors.prompt], [config.negative_prompt])
    priors.texture.encode_prompt([priors.prompt], [config.negative_prompt])


class TextConditioning:
    """View-dependent prompts ("…, front view"), cached per prompt."""

    def __init__(self, prior: Any, prompt: str, negative: str):
        self.prior, self.prompt, self.negative = prior, prompt, negative
        self._cache: dict[str, PromptConditioning] = {}

    def __call__(self, cameras: Cameras) -> Any:
        words = view_direction_words(cameras.elevation_deg, cameras.azimuth_deg)
        prompts = [f"{self.prompt}, {w}" if self.prompt else "" for w in words]
        probe = self.prior.encode_prompt(
            prompts[:1], [self.negative], cameras.elevation_deg[:1], cameras.azimuth_deg[:1]
        )
        if not isinstance(probe, PromptConditioning):  # view-aware priors (exemplar)
            return self.prior.encode_prompt(
                prompts, [self.negative] * len(prompts), cameras.elevation_deg, cameras.azimuth_deg
            )
        parts = []
        for p in prompts:
            if p not in self._cache:
                self._cache[p] = self.prior.encode_prompt([p], [self.negative])
            parts.append(self._cache[p])
        from recon.pipelines.stabledreamer import _concat_conditioning

        return _concat_conditioning(parts)


class ViewGuidance:
    """View-conditioned SDS relative to the reference camera (:class:`priors.view.ViewConditionedPrior`).

    The reference is encoded once, seen from ``reference_elevation_deg``, azimuth 0 and
    ``camera_distance``; each guidance batch is conditioned on its cameras' relative pose.
    """

    def __init__(self, prior: Any, reference, config: DreamCraft3DConfig):
        self.prior, self.config = prior, config
        image = reference.rgb.permute(2, 0, 1)[None]  # [1, 3, H, W], composited on white
        prior.set_reference(image, config.reference_elevation_deg, 0.0, config.camera_distance)

    def __call__(self, cameras: Cameras) -> Any:
        return self.prior.encode_prompt(
            None, elevation_deg=cameras.elevation_deg, azimuth_deg=cameras.azimuth_deg
        )


# ---------------------------------------------------------------------- cameras
def reference_camera(config: DreamCraft3DConfig, size: int) -> Cameras:
    one = torch.ones(1)
    return cameras_from_spherical(
        one * config.reference_elevation_deg, one * 0.0, one * config.camera_distance, one * config.fov_deg,
        size, size,
    )  # fmt: skip


def guidance_cameras(
    config: DreamCraft3DConfig, widen: float, generator: torch.Generator, n: int | None = None
) -> Cameras:
    """Random cameras whose ranges grow linearly from the reference view (``widen`` 0 → 1)."""
    n = n or config.guidance_views
    lo, hi = config.elevation_range_deg
    e0 = config.reference_elevation_deg
    lo, hi = e0 + (lo - e0) * widen, e0 + (hi - e0) * widen
    elevation = lo + (hi - lo) * torch.rand(n, generator=generator)
    azimuth = (torch.rand(n, generator=generator) * 2 - 1) * 180.0 * widen
    ones = torch.ones(n)
    res = config.resolution
    return cameras_from_spherical(
        elevation, azimuth, ones * config.camera_distance, ones * config.fov_deg, res, res
    )


@dataclass
class Batch:
    kind: Literal["reference", "guidance"]
    cameras: Cameras
    jitter: torch.Generator


# ---------------------------------------------------------------------- losses
def reference_targets(reference, background: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``([1, H, W, 3] image on the background, [1, H, W, 1] mask)`` of the reference view."""
    mask = (reference.mask > 0.5).float()[None, ..., None]
    rgb = reference.rgb[None] * mask + background * (1 - mask)
    return rgb, mask


def reference_albedo(reference, background: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``([1, H, W, 3] the object's own colour, [1, H, W, 1] mask)`` of the reference view.

    The picture's edge pixels are the object blended with the background by the resampling
    (``rgb = a·c + (1 − a)·bg``); inside the mask (``a > 0.5``) this solves for ``c``, so the texture
    learns the object's colour up to its outline instead of the pale blend (or, with an eroded mask,
    nothing at all there: a one-pixel ring at 64² is a fifth of a small object's pixels).
    """
    alpha = reference.mask.clamp(0, 1)[None, ..., None]
    mask = (alpha > 0.5).float()
    color = (reference.rgb[None] - background * (1 - alpha)) / alpha.clamp_min(0.5)
    return color.clamp(0, 1) * mask + background * (1 - mask), mask


def _upsampled(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``[1, H, W, C]`` → ``[1, factor·H, factor·W, C]`` (each pixel repeated)."""
    if factor == 1:
        return image
    return image.repeat_interleave(factor, 1).repeat_interleave(factor, 2)


def eroded(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Erodes a ``[1, H, W, 1]`` mask with a ``kernel × kernel`` min-pool."""
    if kernel <= 1:
        return mask
    m = mask.permute(0, 3, 1, 2)
    m = -F.max_pool2d(-m, kernel, stride=1, padding=kernel // 2)
    return m.permute(0, 2, 3, 1)


class GeometryLosses:
    """The reference and guidance terms shared by the coarse and sculpt stages."""

    def __init__(
        self,
        config: DreamCraft3DConfig,
        priors: LoadedPriors,
        text_sds,
        view_sds,
        device: torch.device | str = "cpu",
    ):
        self.config = config
        self.rgb, self.mask = (t.to(device) for t in reference_targets(priors.reference))
        depth = priors.reference.depth
        self.depth = depth.to(device) if depth is not None else None
        self.text_sds, self.view_sds = text_sds, view_sds
        self.text_cond = (
            TextConditioning(priors.text, priors.prompt, config.negative_prompt) if priors.text else None
        )
        self.view_cond = ViewGuidance(priors.view, priors.reference, config) if priors.view else None

    def terms(self, schedule) -> list[LossTerm]:
        c = self.config

        def zero(ctx: StepContext) -> torch.Tensor:
            return ctx.render.rgb.sum() * 0.0

        def rgb(ctx):
            if ctx.batch.kind != "reference":
                return zero(ctx)
            return F.mse_loss(ctx.render.rgb, self.rgb)

        def mask(ctx):
            if ctx.batch.kind != "reference":
                return zero(ctx)
            return F.mse_loss(ctx.render.alpha, self.mask)

        def depth(ctx):
            if ctx.batch.kind != "reference" or self.depth is None or ctx.render.depth is None:
                return zero(ctx)
            from recon.data.reference import depth_correlation_loss

            inside = self.mask[0, ..., 0] > 0.5
            disparity = 1.0 / ctx.render.depth[0, ..., 0].clamp_min(1e-3)  # near = large, as the model's
            return depth_correlation_loss(disparity, self.depth, inside)

        def sds_term(sds: SDSLoss | None, cond_fn):
            def fn(ctx):
                if ctx.batch.kind != "guidance" or sds is None or cond_fn is None:
                    return zero(ctx)
                lo, hi = schedule(ctx)
                sds.config = replace(sds.config, t_min=lo, t_max=hi, anneal="uniform")
                images = ctx.render.rgb.permute(0, 3, 1, 2)
                return sds(images, cond_fn(ctx.batch.cameras), ctx.progress, generator=ctx.generator)

            return fn

        def sparsity(ctx):
            if ctx.batch.kind != "guidance":
                return zero(ctx)
            return ctx.render.alpha.mean()

        terms = [
            LossTerm("rgb", rgb, c.lambda_rgb),
            LossTerm("mask", mask, c.lambda_mask),
            LossTerm("sd", sds_term(self.text_sds, self.text_cond), c.lambda_sd),
            LossTerm("3d_sd", sds_term(self.view_sds, self.view_cond), c.lambda_3d_sd),
            LossTerm("sparsity", sparsity, c.lambda_sparsity),
        ]
        if self.depth is not None:
            terms.append(LossTerm("depth_rel", depth, c.lambda_depth))
        return terms


def _timestep_schedule(config: DreamCraft3DConfig, steps: int, released: bool):
    """t range per step: (0.7, 0.85) → (0.2, 0.5) over the progressive share (coarse), else fixed."""
    ramp = max(1, round(config.progressive_fraction * steps))

    def schedule(ctx: StepContext) -> tuple[float, float]:
        if not released:
            return 0.2, 0.5
        a = min(ctx.step / ramp, 1.0)
        return 0.7 + (0.2 - 0.7) * a, 0.85 + (0.5 - 0.85) * a

    return schedule


# ---------------------------------------------------------------------- the geometry trainer
def build_trainer(config: DreamCraft3DConfig, priors: LoadedPriors, run_dir: str | Path) -> DreamCraft3DRun:
    """The coarse → sdf-init → sculpt trainer and the texture stage that follows it."""
    validate(config)
    config = with_stage_steps(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    coarse = DensityField(config.nerf)
    sdf = SDFField(config.sdf)
    occ_coarse = OccupancyGrid(coarse.aabb, 32)
    occ_sdf = OccupancyGrid(sdf.aabb, 32)
    gen = torch.Generator().manual_seed(config.seed + 1)
    coarse_step = float((coarse.aabb[3:] - coarse.aabb[:3]).norm()) / config.nerf_samples

    text_sds = (
        SDSLoss(priors.text, SDSConfig(guidance_scale=config.text_guidance_scale, weighting="1-alpha"))
        if priors.text is not None
        else None
    )
    view_sds = (
        SDSLoss(priors.view, SDSConfig(guidance_scale=config.view_guidance_scale, weighting="1-alpha"))
        if priors.view is not None
        else None
    )
    losses = GeometryLosses(config, priors, text_sds, view_sds, device)
    ref_cam = reference_camera(config, config.reference_size)

    def sampler(stage_offset: int, steps: int, progressive: bool):
        ramp = max(1, round(config.progressive_fraction * steps))

        def sample(step: int, generator: torch.Generator) -> Batch:
            jitter = torch.Generator().manual_seed(config.seed * 1_000_003 + stage_offset + step)
            if step % 2 == 0:  # released: n_ref 2, "alternate"
                return Batch("reference", ref_cam, jitter)
            widen = min(step / ramp, 1.0) if progressive else 1.0
            return Batch("guidance", guidance_cameras(config, widen, generator), jitter)

        return sample

    def render_coarse(m, batch: Batch):
        return render_field(
            m["coarse"], batch.cameras, background=1.0, num_samples=config.nerf_samples, stratified=True,
            generator=batch.jitter, occupancy=occ_coarse, with_depth=losses.depth is not None,
        )  # fmt: skip

    def render_sdf(m, batch: Batch):
        return render_field(
            m["sdf"], batch.cameras, background=1.0, num_samples=config.sdf_samples, stratified=True,
            generator=batch.jitter, occupancy=occ_sdf, with_depth=losses.depth is not None,
        )  # fmt: skip

    def update_coarse_occupancy(m, step: int) -> None:
        occ_coarse.update(m["coarse"], step, step_size=coarse_step, warmup_steps=64, every_n=8, generator=gen)

    floaters = FloaterCache()

    def update_sdf_occ(m, step: int) -> None:
        if step % 8 == 0:
            update_sdf_occupancy(occ_sdf, m["sdf"])
        if config.floater_every and step % config.floater_every == 0:
            floaters.set(floater_points(m["sdf"], min_fraction=config.floater_fraction))

    def floater_loss(ctx: StepContext):
        # Pushes the SDF positive (outside) at the floaters' cells; found at the stage's first step
        # and every floater_every steps.
        if not config.floater_every:
            return ctx.render.rgb.sum() * 0.0
        if not bool(floaters.found):
            floaters.set(floater_points(ctx.model["sdf"], min_fraction=config.floater_fraction))
        points = floaters.points
        if not len(points):
            return ctx.render.rgb.sum() * 0.0
        return F.softplus(-20.0 * ctx.model["sdf"].sdf(points)).mean()

    # sdf-init: the SDF's sign follows the coarse field's occupancy (plus eikonal).
    def init_sample(step: int, generator: torch.Generator) -> torch.Tensor:
        return uniform_box_points(sdf.aabb, 8192, generator)

    def init_render(m, points):
        return points

    def distill(ctx: StepContext):
        points = ctx.batch
        with torch.no_grad():
            inside = (ctx.model["coarse"].density(points) > config.nerf_level).float()
        s = ctx.model["sdf"].sdf(points)
        return F.binary_cross_entropy_with_logits(-s * 20.0, inside)

    def eikonal_points(ctx: StepContext):
        if torch.is_tensor(ctx.batch):
            pts = ctx.batch[:2048]
        else:
            pts = uniform_box_points(sdf.aabb, 1024, ctx.generator)
        return ctx.model["sdf"].eikonal_loss(pts)

    def visible_eikonal(ctx: StepContext):
        extra = ctx.render.meta.get("extras", {}).get("eikonal")
        return extra.mean() if extra is not None else ctx.render.rgb.sum() * 0.0

    stages = [
        Stage(
            "coarse", config.coarse_steps, sampler(0, config.coarse_steps, True), render_coarse,
            losses.terms(_timestep_schedule(config, config.coarse_steps, True)),
            on_step_end=update_coarse_occupancy, train=("coarse",),
        ),
    ]  # fmt: skip
    if config.sdf_init_steps:
        stages.append(
            Stage(
                "sdf-init", config.sdf_init_steps, init_sample, init_render,
                [LossTerm("occupancy", distill), LossTerm("eikonal", eikonal_points, config.lambda_eikonal)],
                train=("sdf",),
            )
        )  # fmt: skip
    if config.sculpt_steps:
        offset = config.coarse_steps + config.sdf_init_steps
        stages.append(
            Stage(
                "sculpt", config.sculpt_steps, sampler(offset, config.sculpt_steps, False), render_sdf,
                [
                    *losses.terms(_timestep_schedule(config, config.sculpt_steps, False)),
                    LossTerm("eikonal", eikonal_points, config.lambda_eikonal),
                    LossTerm("eikonal_visible", visible_eikonal, config.lambda_eikonal),
                    LossTerm("floaters", floater_loss, config.lambda_floaters),
                ],
                on_step_end=update_sdf_occ, train=("sdf",),
            )
        )  # fmt: skip
    train_config = TrainConfig(
        seed=config.seed, checkpoint_every=config.checkpoint_every, progress_bar=config.progress_bar,
        device=str(device),
    )  # fmt: skip
    geometry = Trainer(
        {"coarse": coarse, "sdf": sdf}, stages, run_dir, train_config,
        state={"occupancy_coarse": occ_coarse, "occupancy_sdf": occ_sdf, "floaters": floaters},
    )  # fmt: skip
    return DreamCraft3DRun(config, priors, Path(run_dir), geometry)


# ---------------------------------------------------------------------- the texture stage
class DreamCraft3DRun:
    """The geometry trainer, then the texture trainer on the fixed mesh; resumable as a whole.

    It offers what :func:`recon.pipelines.generate` uses of a trainer: ``fit``, ``model``,
    ``checkpoint_path``, ``load_checkpoint`` and ``hooks``.
    """

    def __init__(self, config: DreamCraft3DConfig, priors: LoadedPriors, run_dir: Path, geometry: Trainer):
        self.config, self.priors, self.run_dir, self.geometry = config, priors, run_dir, geometry
        self.texture: Trainer | None = None
        self.hooks = Hooks()

    @property
    def checkpoint_path(self) -> Path:
        return self.geometry.checkpoint_path

    @property
    def model(self):
        return self.texture.model["texture"] if self.texture is not None else self.geometry.model["sdf"]

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        self.geometry.load_checkpoint(path)

    def fit(self) -> dict[str, Any]:
        self.geometry.hooks = self.hooks
        history = dict(self.geometry.fit())
        if self.config.texture_steps > 0:
            self.texture = self._texture_trainer()
            if self.texture.checkpoint_path.is_file():
                self.texture.load_checkpoint()
            self.texture.hooks = self.hooks
            history.update(self.texture.fit())
        return history

    def _initial_mesh(self):
        """Marching cubes of the sculpted SDF, cleaned, UV-unwrapped, texture baked from the field."""
        from recon.atomic import atomic_torch_save
        from recon.mesh.bake import bake_texture
        from recon.mesh.cleanup import clean_mesh
        from recon.mesh.views import export_cameras, render_views
        from recon.render.mesh import TexturedMesh

        path = self.run_dir / "texture" / "initial_mesh.pt"
        if path.is_file():  # resume: the very mesh and texture the first run started from
            state = torch.load(path, map_location="cpu", weights_only=False)
            return TexturedMesh.from_checkpoint_state(state)
        c = self.config
        sdf = self.geometry.model["sdf"] if c.sculpt_steps or c.sdf_init_steps else None
        if sdf is None:
            raise UserError("the texture stage needs an SDF: set --sdf-init-steps or --sculpt-steps above 0")
        mesh = None
        if c.fit_mesh_level:  # the fit meshes every candidate level: keep the chosen one's mesh
            _, mesh = fit_mesh_level(
                sdf,
                c.mesh_resolution,
                self.priors.reference.mask,
                reference_camera(c, c.reference_size),
                c.mesh_level,
            )
        if mesh is None:
            mesh = clean_mesh(extract_sdf_mesh(sdf, c.mesh_resolution, level=c.mesh_level))
        textured = TexturedMesh.from_trimesh(mesh, texture_size=c.texture_size, max_faces=c.max_faces)
        cameras = export_cameras(c.bake_views, radius=1.1, image_size=c.bake_size)
        occupancy = OccupancyGrid(sdf.aabb, 64).to(sdf.aabb.device)  # the SDF's device (a CUDA run)
        update_sdf_occupancy(occupancy, sdf)

        @torch.no_grad()
        def render_sdf(cams):  # the export chain's contract: surface color, depth, alpha on black
            out = render_field(sdf, cams, background=0.0, num_samples=c.sdf_samples, occupancy=occupancy)
            return (out.rgb / out.alpha.clamp_min(1e-6)).clamp(0, 1), out.depth, out.alpha

        views = render_views(render_sdf, cameras)
        baked = bake_texture(textured.uv_mesh(), views, texture_size=c.texture_size)
        with torch.no_grad():
            textured.texture.copy_(torch.as_tensor(baked.image, dtype=torch.float32))
        atomic_torch_save(textured.checkpoint_state(), path)
        log.info(
            "texture stage: %d faces, %d² texture baked from the SDF field",
            len(textured.faces),
            c.texture_size,
        )
        return textured

    def _texture_trainer(self) -> Trainer:
        c, priors = self.config, self.priors
        device = self.geometry.device
        mesh = self._initial_mesh()
        ss = c.texture_supersample
        rgb_ref, mask_ref = (
            _upsampled(t.to(device), ss) for t in reference_albedo(priors.reference)
        )  # fmt: skip
        inner = eroded(mask_ref, (c.texture_erode - 1) * ss + 1)  # released: 9×9 at 1024 px
        ref_cam = reference_camera(c, c.reference_size * ss)
        views = replace(c, resolution=c.resolution * ss)  # the guidance cameras, supersampled
        conditioning = TextConditioning(priors.texture, priors.prompt, c.negative_prompt)
        bsd = None
        auxiliaries: list = []
        if c.texture_guidance == "bsd":
            from priors.bsd import BootstrappedScoreDistillation, BSDConfig

            # Released: 5 fine-tune rounds of 1000 steps in a 5000-step stage, an SDEdit every 25.
            block = max(5, c.texture_steps // 5)
            # Half-precision priors (CUDA's default) get float32 copies: AdamW underflows in float16.
            half = getattr(priors.texture, "dtype", torch.float32) in (torch.float16, torch.bfloat16)
            bsd = BootstrappedScoreDistillation(
                priors.texture,
                BSDConfig(
                    block_steps=block, augment_every=max(1, round(block / 40)),
                    copy_dtype="float32" if half else None,
                ),
            )  # fmt: skip
            auxiliaries = bsd.auxiliaries()
        else:
            sds = SDSLoss(
                priors.texture,
                SDSConfig(
                    guidance_scale=c.texture_guidance_scale, t_min=0.02, t_max=0.5, weighting="1-alpha"
                ),
            )

        def sample(step: int, generator: torch.Generator) -> Batch:
            if bsd is not None and bsd.phase(step) == "pretrain":  # prior steps: no scene gradient
                return Batch("pretrain", guidance_cameras(views, 1.0, generator), generator)
            if step % 2 == 0:
                return Batch("reference", ref_cam, generator)
            return Batch("guidance", guidance_cameras(views, 1.0, generator), generator)

        def render(m, batch: Batch):
            return m["texture"](batch.cameras, background=1.0)

        def zero(ctx):
            # Graph-less in BSD's prior steps (the loop then leaves the scene untouched).
            return torch.zeros(()) if ctx.batch.kind == "pretrain" else ctx.render.rgb.sum() * 0.0

        def rgb(ctx):
            if ctx.batch.kind != "reference":
                return zero(ctx)
            return ((ctx.render.rgb - rgb_ref).abs() * inner).sum() / inner.sum().clamp_min(1) / 3

        def mask(ctx):
            if ctx.batch.kind != "reference":
                return zero(ctx)
            return F.mse_loss(ctx.render.alpha, mask_ref)

        def images(ctx):  # the supersampled render box-filtered to the guidance resolution
            return F.avg_pool2d(ctx.render.rgb.permute(0, 3, 1, 2), ss)

        def cond(ctx):
            return conditioning(ctx.batch.cameras)

        if bsd is not None:
            bsd_term = bsd.loss_term(images, cond)

            def guide(ctx):
                return zero(ctx) if ctx.batch.kind == "reference" else bsd_term.fn(ctx)

            guide_term = LossTerm("bsd", guide, bsd_term.weight)
        else:

            def guide(ctx):
                if ctx.batch.kind != "guidance":
                    return zero(ctx)
                return sds(images(ctx), cond(ctx), ctx.progress, generator=ctx.generator)

            guide_term = LossTerm("sds", guide, c.lambda_sd)

        stage = Stage(
            "texture", c.texture_steps, sample, render,
            [LossTerm("rgb", rgb, c.lambda_rgb), LossTerm("mask", mask, c.lambda_mask), guide_term],
            learning_rates={"texture.texture": LearningRate(c.texture_lr)}, auxiliaries=auxiliaries,
        )  # fmt: skip
        return Trainer(
            {"texture": mesh},
            [stage],
            self.run_dir / "texture",
            TrainConfig(
                seed=c.seed,
                checkpoint_every=c.checkpoint_every,
                progress_bar=c.progress_bar,
                device=str(device),
            ),
        )


INPUTS_DIR = "inputs"
"""Where a run keeps copies of its picture and mask (paths in its config.yaml are relative to the run)."""


def keep_inputs(config: DreamCraft3DConfig, run_dir: Path) -> DreamCraft3DConfig:
    """Copies the picture (and mask) into ``run_dir/inputs/``; the config then names them run-relative."""
    from recon.atomic import atomic_write_bytes

    folder = Path(run_dir) / INPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    kept = {}
    for name in ("image", "mask"):
        source = getattr(config, name)
        if not source:
            continue
        target = folder / (("reference" if name == "image" else "mask") + Path(source).suffix.lower())
        atomic_write_bytes(target, Path(source).read_bytes())
        kept[name] = f"{INPUTS_DIR}/{target.name}"
    return replace(config, **kept)


def resolve_inputs(config: DreamCraft3DConfig, run_dir: Path) -> DreamCraft3DConfig:
    """On resume: run-relative input paths (written by :func:`keep_inputs`) made absolute."""
    resolved = {}
    for name in ("image", "mask"):
        value = getattr(config, name)
        if value and not Path(value).is_absolute() and (Path(run_dir) / value).is_file():
            resolved[name] = str((Path(run_dir) / value).resolve())
    return replace(config, **resolved)


def run_name(config: DreamCraft3DConfig, priors: LoadedPriors) -> str:
    """The run folder's name: the prompt (given or captioned), else the picture's file name."""
    return priors.prompt or Path(config.image).stem or "image"


def export(run: DreamCraft3DRun, out_dir: Path) -> dict[str, Path]:
    """GLB and OBJ (+MTL, PNG) of the textured mesh."""
    mesh = run.model
    if not hasattr(mesh, "write_glb"):
        raise UserError("this run has no textured mesh yet (texture_steps is 0): nothing to export as a mesh")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"glb": mesh.write_glb(out_dir / "model.glb")}
    paths.update(mesh.write_obj(out_dir, stem="model"))
    return paths
