"""Zero-1-to-A: one portrait -> an animatable head avatar, distilled from a video prior through a dataset.

Zero-1-to-A (Zhou et al., CVPR 2025, https://arxiv.org/abs/2503.15851; no code released, see
/work/shared/research/zero1toa-bigs.md §1) builds on HeadStudio's FLAME-bound Gaussians. Plain score
distillation from a video diffusion model over-smooths the avatar because the prior's clips disagree
with each other; the paper instead keeps an **updatable dataset of pseudo-ground-truth clips** (SymGEN)
that the video prior makes from the avatar's own renders, refreshed as the avatar improves, and learns
**progressively**: spatial consistency first (fixed expression, cameras widening from the front to the
side), then temporal consistency (a fixed near-frontal camera, expressions from relaxed to exaggerated).

This module runs it on sds3d's pieces:

1. the head model (:mod:`recon.parametric.heads`) is fitted to the portrait's landmarks and silhouette
   (:func:`recon.parametric.head_fit.fit_head`); the avatar's world is the fitted head at zero global
   pose, its neutral bounding-box centre at the origin (the framing of :mod:`recon.data.head_clips`),
   and the portrait's camera is placed in it;
2. Gaussians bound to the mesh's triangles (:class:`recon.parametric.head_gaussians.HeadGaussians`),
   coloured from the portrait where it shows the head, are fitted to the portrait first;
3. the stages: clips are registered in :class:`recon.data.avatar_dataset.PseudoGTClips`; a stale clip is
   re-rendered from the avatar along its cameras/expressions and SDEdited by the video prior
   (:meth:`priors.video.VideoPrior.refine`, conditioned on the portrait cropped to the prior's framing and
   on the avatar's projected landmarks). The prior works at its own (small) resolution; the pseudo-ground
   truth keeps the render's detail and takes the prior's correction: ``render + up(refined − down(render))``.
   The avatar fits the clips with 10·L1 + D-SSIM (LPIPS in the paper) and HeadStudio's position/scale
   regularisers, and keeps fitting the portrait itself;
4. ``mode="sds"`` — the ablation: the same curriculum of driving signals, but the clip's loss is direct
   video score distillation (:meth:`priors.video.VideoPrior.sds_loss`) on renders at the prior's size.

Outputs (``out_dir``): ``avatar.pt`` (Gaussians, rig parameters, portrait camera, config), ``head.glb``
(head mesh, baked texture, expression morph targets), ``driven.mp4`` (a driving sequence), previews, and
``metrics.json``. A run checkpoints (``ckpt/state.pt``, atomic) and resumes from it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.atomic import atomic_torch_save, atomic_write
from recon.cameras import Cameras
from recon.data.avatar_dataset import (
    ClipSpec,
    PseudoGTClips,
    curriculum_stage,
    spatial_azimuths,
    temporal_expressions,
)
from recon.data.head_clips import CLIP_DISTANCE, CLIP_FOV_DEG, clip_cameras, named_expression
from recon.errors import SEED, UserError, checked
from recon.gaussians import rgb_to_sh
from recon.metrics import ssim
from recon.parametric.hand_gaussians import quat_to_matrix
from recon.parametric.head_fit import HeadFit, HeadFitConfig, fit_head, portrait_vertex_colors
from recon.parametric.head_gaussians import HeadGaussians
from recon.parametric.heads import HeadModel

log = logging.getLogger(__name__)

Mode = Literal["symgen", "sds"]
POSE_KEYS = ("expression", "jaw_pose", "neck_pose", "leye_pose", "reye_pose")
BACKGROUND = 1.0
MAX_NECK_RESIDUAL = 0.02
"""Largest distance (m) between the fitted head and its rigid best fit (the neck's turn folded into the
camera) before the fit is warned about: 3.5 and 9.8 mm for the bench's near-frontal portraits."""
THICKNESS = 0.1
"""Initial extent of a Gaussian along its triangle's normal, relative to its in-plane extent."""
VISIBLE_TOLERANCE = 0.01
MIN_FACING = 0.3
"""A view updates a Gaussian only where it sees the surface at more than this cosine (not edge-on)."""
"""A Gaussian whose centre lies more than this (m) behind the rendered depth is occluded in that view."""


@dataclass
class Zero1toAConfig:
    """One portrait-to-avatar run (defaults: the embedded path on a laptop CPU)."""

    mode: Mode = "symgen"
    """``symgen``: the pseudo-GT clip dataset + progressive learning (the method); ``sds``: direct video
    score distillation along the same curriculum (the paper's ablation)."""
    video_prior: str = "embedded"
    """The video prior: ``embedded``, a Stable Video Diffusion-layout folder or a hub id."""
    allow_download: bool = False
    """Let a hub id download."""
    device: str = "auto"
    """Where the video prior runs: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
    The avatar itself is small and stays on the CPU."""
    portrait_steps: int = checked(150, low=0, high=1_000_000)
    """Steps fitting the Gaussians to the portrait alone, before the video stages."""
    steps: int = checked(600, low=1, high=1_000_000)
    """Steps of the video stages (spatial, then temporal)."""
    spatial_fraction: float = checked(0.5, low=0.0, high=1.0)
    """Share of ``steps`` in the spatial stage (the paper: 5000 of 10000)."""
    size: int = checked(64, low=16, high=1024)
    """Side of the clips' renders (pixels)."""
    num_frames: int = checked(8, low=2, high=64)
    """Frames per clip."""
    frames_per_step: int = checked(2, low=1, high=64)
    """Frames of the drawn clip fitted per step."""
    spatial_clips: int = checked(6, low=1, high=1000)
    """Camera paths of the spatial stage (alternating sides, spread in elevation)."""
    temporal_clips: int = checked(6, low=1, high=1000)
    """Expression sequences of the temporal stage."""
    side_deg: float = checked(90.0, low=0.0, high=180.0)
    """How far to the side the spatial paths reach at the end of their widening."""
    refresh_every: int = checked(30, low=1, high=1_000_000)
    """A clip is regenerated from the current avatar after this many steps (the paper: 30)."""
    strength: float = checked(0.5, low=0.0, high=1.0)
    """How far the renders are noised before the video prior denoises them (SDEdit strength)."""
    prior_steps: int = checked(10, low=1, high=1000)
    """DDIM steps of a full (strength 1) denoising; a refresh runs ``strength`` of them."""
    correction_blur: float = checked(1.0, low=0.0, high=100.0)
    """σ (pixels of the prior's resolution) of a Gaussian blur of the prior's correction before it is added
    to the render: the prior corrects colour and shape, the render keeps its detail and the prior's
    pixel noise stays out of the pseudo-ground truth (0: no blur)."""
    guidance_scale: float = checked(2.0, low=1.0, high=100.0)
    """Classifier-free guidance of the refresh (on the reference portrait)."""
    sds_guidance: float = checked(5.0, low=1.0, high=100.0)
    """Guidance of the ``sds`` ablation."""
    sds_weight: float = checked(1.0, low=0.0, high=1e6)
    """Weight of the video SDS loss (``sds`` mode)."""
    l1_weight: float = checked(10.0, low=0.0, high=1e6)
    """λ of the clips' L1 (the paper: 10)."""
    ssim_weight: float = checked(2.0, low=0.0, high=1e6)
    """λ of the clips' D-SSIM (stands in for the paper's LPIPS, λ 10, which needs a VGG download)."""
    portrait_weight: float = checked(10.0, low=0.0, high=1e6)
    """λ of the portrait's L1 + D-SSIM, every step."""
    position_weight: float = checked(0.1, low=0.0, high=1e6)
    """λ of HeadStudio's position regulariser (offsets leaving their triangle)."""
    scale_weight: float = checked(10.0, low=0.0, high=1e6)
    """λ of HeadStudio's scale regulariser."""
    video_groups: tuple[str, ...] = ("sh0",)
    """What the video stages train (of ``means``, ``scales``, ``quats``, ``opacities``, ``sh0``); the portrait
    stage trains all. Colours only by default: the head mesh already gives the geometry, and a 32-pixel
    teacher's noise punched see-through holes (white specks) when opacities and shapes followed it."""
    color_lr: float = checked(0.025, low=0.0, high=10.0)
    """Adam's step size for the Gaussians' colours (SH degree 0); the rest keep the bound Gaussians'
    defaults (:meth:`recon.parametric.hand_gaussians.HandGaussians.default_learning_rates`)."""
    per_face: int = checked(1, low=1, high=16)
    """Gaussians per triangle."""
    portrait_size: int = checked(128, low=16, high=2048)
    """The portrait is fitted at most at this side (pixels)."""
    fit_steps: int = checked(300, low=1, high=100_000)
    """Steps of the head model's fit to the portrait."""
    checkpoint_every: int = checked(100, low=1, high=1_000_000)
    """Steps between checkpoints."""
    seed: int = checked(0, SEED)


# ------------------------------------------------------------------------------------------ portrait
@dataclass
class Portrait:
    """The user's portrait and what the head fit gives: the avatar's rig and the portrait's camera."""

    image: Tensor  # [H, W, 3] in [0, 1], on white where a mask is known
    mask: Tensor | None  # [H, W] bool
    betas: Tensor  # [1, K]
    params: dict[str, Tensor]  # expression, jaw/neck/eye poses of the portrait [1, ...]
    transl: Tensor  # [1, 3] puts the neutral head's box centre at the origin
    camera: Cameras  # the portrait's camera in the avatar's world
    fit: HeadFit
    reference: Tensor  # [R, R, 3] the portrait cropped to the clips' framing (the prior's reference)


def _kabsch(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """``R, t`` with ``dst ≈ src @ R.T + t`` (least squares, proper rotation)."""
    cs, cd = src.mean(0), dst.mean(0)
    H = (src - cs).T @ (dst - cd)
    U, _, Vt = torch.linalg.svd(H.double())
    d = torch.sign(torch.det(Vt.T @ U.T))
    D = torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=torch.float64))
    R = (Vt.T @ D @ U.T).float()
    return R, cd - cs @ R.T


def crop_to_clip_framing(image: Tensor, camera: Cameras, size: int) -> Tensor:  # [H, W, 3] -> [size, size, 3]
    """The portrait resampled so the head sits as in the clips (centred, :data:`CLIP_DISTANCE` away with a
    :data:`CLIP_FOV_DEG` field of view): a similarity crop about the world origin's projection."""
    c2w = camera.camera_to_worlds[0]
    origin_cam = c2w[:3, :3].T @ (-c2w[:3, 3])  # the world origin in the camera frame (OpenGL)
    depth = float(-origin_cam[2])
    fx = float(camera.fx[0])
    u = fx * float(origin_cam[0]) / depth + float(camera.cx[0])
    v = -fx * float(origin_cam[1]) / depth + float(camera.cy[0])
    f_clip = size / 2.0 / math.tan(math.radians(CLIP_FOV_DEG) / 2.0)
    side = size * (fx / depth) / (f_clip / CLIP_DISTANCE)  # portrait pixels spanned by the clip frame
    H, W = image.shape[:2]
    ys = (torch.arange(size) + 0.5) / size * side + (v - side / 2)
    xs = (torch.arange(size) + 0.5) / size * side + (u - side / 2)
    grid = torch.stack(torch.meshgrid(xs / W * 2 - 1, ys / H * 2 - 1, indexing="xy"), -1)
    img = image.permute(2, 0, 1)[None].float() - BACKGROUND
    if side > size:  # low-pass before down-sampling
        k = max(1, int(round(side / size)))
        img = F.avg_pool2d(img, k, stride=1, padding=k // 2, count_include_pad=False)[..., :H, :W]
    out = F.grid_sample(img, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out[0].permute(1, 2, 0) + BACKGROUND).clamp(0, 1)


def prepare_portrait(
    model: HeadModel,
    image: np.ndarray | Tensor,  # [H, W, 3] in [0, 1]
    landmarks: np.ndarray | Tensor,  # [51 or 68, 2] pixels
    mask: np.ndarray | Tensor | None = None,
    focal: float | None = None,
    fit_config: HeadFitConfig | None = None,
    reference_size: int = 32,
) -> Portrait:
    """Fits the head to the portrait and expresses the result in the avatar's head-centred world."""
    image = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"the portrait must be an RGB image [H, W, 3], got {tuple(image.shape)}")
    H, W = image.shape[:2]
    mask_t = None if mask is None else torch.as_tensor(np.asarray(mask)).bool()
    fit = fit_head(model, landmarks, W, H, mask=mask_t, focal=focal, config=fit_config)
    p = fit.params
    betas = p["betas"]
    # The avatar rests with the neck straight: the fit's split of the head's turn between its global
    # rotation and the neck joint is arbitrary (a head-only model cannot tell them apart), so the whole turn
    # goes into the portrait's camera. Kept in the rig, the neck turn was applied to every render: at
    # novel views the avatar looked 8° off where the portrait's head was (bench/avatar.py, seed 902).
    pose = {k: p[k] for k in POSE_KEYS if k in p and k != "neck_pose"}
    with torch.no_grad():
        neutral = model(betas=betas).vertices[0]
        center = 0.5 * (neutral.min(0).values + neutral.max(0).values)
        transl = -center[None]
        world = model(betas=betas, transl=transl, **pose).vertices[0]
        seen = model(**p).vertices[0]  # the camera frame (OpenGL)
    R, t = _kabsch(world, seen)  # camera = R world + t
    residual = (world @ R.T + t - seen).norm(dim=-1)  # the neck's bend, at the neck's base
    log.info(
        "the portrait's neck turn goes into its camera: %.1f mm off at most, %.1f mm on average",
        1000 * float(residual.max()), 1000 * float(residual.mean()),
    )  # fmt: skip
    if float(residual.max()) > MAX_NECK_RESIDUAL:
        log.warning(
            "the portrait's head is turned %.0f mm away from a rigid turn at the neck: the avatar will not "
            "match the portrait's neck; a portrait facing the camera works best",
            1000 * float(residual.max()),
        )
    c2w = torch.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    cam = fit.camera
    camera = Cameras(c2w[None], cam.fx.clone(), cam.fy.clone(), cam.cx.clone(), cam.cy.clone(), W, H)
    if mask_t is not None:
        image = torch.where(mask_t[..., None], image, torch.full_like(image, BACKGROUND))
    reference = crop_to_clip_framing(image, camera, reference_size)
    return Portrait(image, mask_t, betas, pose, transl, camera, fit, reference)


# -------------------------------------------------------------------------------------------- avatar
class HeadAvatar(torch.nn.Module):
    """Gaussians bound to the head mesh of one identity; renders any expression from any camera."""

    def __init__(
        self, model: HeadModel, betas: Tensor, transl: Tensor, per_face: int = 1, seed: int = 0
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("betas", betas.detach().clone())
        self.register_buffer("transl", transl.detach().clone())
        g = torch.Generator().manual_seed(seed)
        self.gaussians = HeadGaussians.on_model(
            model, betas, per_face=per_face, generator=g, thickness=THICKNESS
        )

    def vertices(self, params: dict[str, Tensor]) -> Tensor:  # [B, V, 3]
        B = next(iter(params.values())).shape[0] if params else 1
        return self.model(betas=self.betas.expand(B, -1), transl=self.transl.expand(B, -1), **params).vertices

    def landmarks(self, params: dict[str, Tensor]) -> Tensor:  # [B, L, 3]
        B = next(iter(params.values())).shape[0] if params else 1
        return self.model(
            betas=self.betas.expand(B, -1), transl=self.transl.expand(B, -1), **params
        ).landmarks

    def render(
        self, params: dict[str, Tensor], camera: Cameras, visible: bool = False
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """``rgb [H, W, 3]`` on white and ``alpha [H, W]`` of one expression (``params`` ``[1, ...]``);
        with ``visible``, also which Gaussians the view sees ``[N]`` (centre in the frame, on a covered
        pixel, not behind the rendered depth by more than :data:`VISIBLE_TOLERANCE`)."""
        from recon.render import rasterization

        means, quats, scales = self.gaussians.deform(self.vertices(params))
        g = self.gaussians
        out, alpha, _ = rasterization(
            means[0], quats[0], scales[0], torch.sigmoid(g.opacities), g.colors,
            camera.viewmats(), camera.Ks(), camera.width, camera.height,
            backgrounds=torch.full((3,), BACKGROUND), near_plane=0.01,
            render_mode="RGB+ED" if visible else "RGB",
        )  # fmt: skip
        rgb, alpha = out[0, ..., :3], alpha[0, ..., 0]
        if not visible:
            return rgb, alpha
        with torch.no_grad():
            view = camera.viewmats()[0]
            p = means[0].detach() @ view[:3, :3].T + view[:3, 3]  # OpenCV camera frame, z forward
            uv = p @ camera.Ks()[0].T
            xy = (uv[:, :2] / uv[:, 2:].clamp_min(1e-6)).floor().long()
            H, W = camera.height, camera.width
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H) & (p[:, 2] > 0)
            x, y = xy[:, 0].clamp(0, W - 1), xy[:, 1].clamp(0, H - 1)
            depth = out[0, ..., 3].detach()[y, x]
            seen = inside & (alpha.detach()[y, x] > 0.5) & (p[:, 2] <= depth + VISIBLE_TOLERANCE)
            normal = quat_to_matrix(quats[0].detach())[..., :, 1]  # the surfel's thin axis
            eye = camera.camera_to_worlds[0, :3, 3]
            facing = (normal * F.normalize(eye - means[0].detach(), dim=-1)).sum(-1).abs()
            seen &= facing > MIN_FACING
        return rgb, alpha, seen

    def set_colors_from_vertices(self, colors: Tensor) -> None:  # [V, 3]
        """Each Gaussian takes the mean colour of its triangle's vertices."""
        g = self.gaussians
        per_gaussian = colors[g.faces[g.face_ids]].mean(1).clamp(0.02, 0.98)
        with torch.no_grad():
            g.sh0.copy_(rgb_to_sh(per_gaussian)[:, None, :])

    def vertex_colors(self) -> Tensor:  # [V, 3]
        """Per-vertex colours: the mean colour of the Gaussians on the vertex's triangles."""
        g = self.gaussians
        V = self.model.num_vertices
        rgb = g.colors.detach()
        acc = torch.zeros(V, 3)
        cnt = torch.zeros(V, 1)
        for k in range(3):
            acc.index_add_(0, g.faces[g.face_ids, k], rgb)
            cnt.index_add_(0, g.faces[g.face_ids, k], torch.ones(len(g), 1))
        return acc / cnt.clamp_min(1)


def params_of(expression: Tensor, jaw: Tensor, base: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Head parameters ``[T, ...]`` for expressions ``[T, E]`` and jaw poses ``[T, 3]``."""
    out = {"expression": expression, "jaw_pose": jaw}
    if base is not None:
        for k in ("neck_pose", "leye_pose", "reye_pose"):
            if k in base:
                out[k] = base[k].expand(expression.shape[0], -1)
    return out


# ----------------------------------------------------------------------------------------- curricula
def spatial_spec(index: int, step: int, cfg: Zero1toAConfig, neutral: Tensor, stage_steps: int) -> ClipSpec:
    """Spatial clip ``index`` at ``step``: a fixed neutral face, the camera from the front towards one
    side (alternating), its reach widening with the steps (:func:`spatial_azimuths`)."""
    T = cfg.num_frames
    per_frame = max(1, stage_steps // max(1, 2 * T))  # the path is fully open halfway through the stage
    az = torch.as_tensor(spatial_azimuths(step, T, cfg.side_deg, per_frame), dtype=torch.float32)
    sign = 1.0 if index % 2 == 0 else -1.0
    elevations = (-5.0, 15.0, 5.0, 25.0, -10.0, 10.0)
    el = torch.full((T,), elevations[(index // 2) % len(elevations)])
    cams = clip_cameras(sign * az, el, cfg.size)
    E = neutral.shape[-1]
    return ClipSpec(cams, torch.zeros(T, E), torch.zeros(T, 3), stage="spatial")


TEMPORAL_EXPRESSIONS = ("smile", "surprise", "frown", "pucker", "blink", "wink")


def temporal_spec(index: int, progress: float, cfg: Zero1toAConfig, model: HeadModel) -> ClipSpec:
    """Temporal clip ``index``: a fixed near-frontal camera, one expression ramping in, its strength
    growing from relaxed to exaggerated with ``progress`` (:func:`temporal_expressions`)."""
    T = cfg.num_frames
    name = TEMPORAL_EXPRESSIONS[index % len(TEMPORAL_EXPRESSIONS)]
    expr, jaw = named_expression(model, name, 1.0)
    ramp = torch.linspace(0.0, 1.0, T)[:, None]
    expressions = temporal_expressions(ramp * expr, progress, relaxed=0.4, exaggerated=1.0)
    jaws = temporal_expressions(ramp * jaw, progress, relaxed=0.4, exaggerated=1.0)
    jaws[:, 0] += torch.linspace(0.0, 0.1 * (index % 3 == 0), T)
    if model.source == "anny":
        expressions = expressions.clamp(0.0, 1.0)
    az = torch.full((T,), (-15.0, 0.0, 15.0)[index % 3])
    el = torch.full((T,), 5.0)
    return ClipSpec(clip_cameras(az, el, cfg.size), expressions, jaws, stage="temporal")


# --------------------------------------------------------------------------------------------- train
@dataclass
class AvatarResult:
    """What a run leaves: the folder, its files and the run's numbers."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    avatar: HeadAvatar | None = None
    portrait: Portrait | None = None


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:  # [B, C, H, W]
    """A separable Gaussian blur (reflect padding); ``sigma`` 0 returns ``x``."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def portrait_fingerprint(portrait: Portrait) -> str:
    """A hash of the portrait's pixels (a checkpoint belongs to one portrait)."""
    import hashlib

    return hashlib.sha1(portrait.image.detach().numpy().tobytes()).hexdigest()


def _l1_dssim(render: Tensor, target: Tensor, l1: float, dssim: float) -> Tensor:
    loss = l1 * (render - target).abs().mean()
    if dssim > 0 and min(render.shape[-3:-1]) >= 11:
        loss = loss + dssim * (1.0 - ssim(render, target))
    return loss


class Zero1toATrainer:
    """One run: portrait fit, then the spatial and temporal stages (see the module docstring)."""

    def __init__(
        self,
        cfg: Zero1toAConfig,
        portrait: Portrait,
        model: HeadModel,
        prior: Any | None = None,
        out_dir: Path | None = None,
    ) -> None:
        self.cfg, self.portrait, self.model = cfg, portrait, model
        unknown = set(cfg.video_groups) - {"means", "scales", "quats", "opacities", "sh0"}
        if unknown:
            raise UserError(
                f"video_groups has {sorted(unknown)}; use some of means, scales, quats, opacities, sh0"
            )
        torch.manual_seed(cfg.seed)
        self.avatar = HeadAvatar(model, portrait.betas, portrait.transl, cfg.per_face, cfg.seed)
        colors = portrait_vertex_colors(
            model,
            portrait.fit,
            portrait.image.numpy(),
            None if portrait.mask is None else portrait.mask.numpy(),
        )
        self.avatar.set_colors_from_vertices(torch.as_tensor(colors))
        lrs = dict(self.avatar.gaussians.default_learning_rates(), sh0=cfg.color_lr)
        groups = self.avatar.gaussians.parameter_groups()
        self.opt = torch.optim.Adam(
            [{"params": groups[k], "lr": lrs[k], "name": k} for k in groups], eps=1e-15
        )
        self.prior = prior
        if prior is not None:
            prior.set_reference(portrait.reference)
        scale = min(1.0, cfg.portrait_size / max(portrait.camera.width, portrait.camera.height))
        self.portrait_camera = portrait.camera.scaled(scale) if scale < 1.0 else portrait.camera
        img = portrait.image.permute(2, 0, 1)[None]
        size = (self.portrait_camera.height, self.portrait_camera.width)
        self.portrait_target = F.interpolate(img, size=size, mode="area")[0].permute(1, 2, 0)
        self.portrait_mask = None
        if portrait.mask is not None:
            m = F.interpolate(portrait.mask[None, None].float(), size=size, mode="area")[0, 0]
            self.portrait_mask = m > 0.5
        self.step = 0
        self.phase = "portrait"
        self.out_dir = out_dir
        self.history: list[dict[str, float]] = []
        self.clips = PseudoGTClips(self._make_clip, refresh_every=cfg.refresh_every, seed=cfg.seed)
        self.spatial_steps = int(round(cfg.steps * cfg.spatial_fraction))
        self._extent = -1.0
        self._progress_bucket = -1
        self.prior_seconds = 0.0
        self._seen = torch.zeros(len(self.avatar.gaussians), dtype=torch.bool)

    # -- clips ---------------------------------------------------------------------------------
    def render_clip(self, spec: ClipSpec, frames: list[int] | None = None) -> Tensor:  # [T', H, W, 3]
        """The avatar along ``spec`` (``frames`` of it); Gaussians seen are added to :attr:`_seen`."""
        idx = list(range(spec.num_frames)) if frames is None else frames
        out = []
        for i in idx:
            p = params_of(spec.expressions[i : i + 1], spec.jaw_poses[i : i + 1], self.portrait.params)
            rgb, _, seen = self.avatar.render(p, spec.cameras[i], visible=True)
            self._seen |= seen
            out.append(rgb)
        return torch.stack(out)

    def clip_landmarks(self, spec: ClipSpec) -> Tensor:  # [T, L, 2] pixels of the clip's frames
        from recon.data.heads_synth import project

        with torch.no_grad():
            marks = self.avatar.landmarks(params_of(spec.expressions, spec.jaw_poses, self.portrait.params))
        return torch.stack([project(marks[i], spec.cameras[i]) for i in range(spec.num_frames)])

    def _make_clip(self, key: str, spec: ClipSpec, previous: Any, generator: torch.Generator) -> Tensor:
        """SymGEN: render the avatar along the clip, SDEdit it with the video prior at its resolution, and
        keep the render's detail: ``render + up(refined − down(render))``."""
        with torch.no_grad():
            seen = self._seen.clone()
            frames = self.render_clip(spec)
            self._seen = seen  # a refresh's renders carry no loss
            if self.prior is None:
                return frames
            t0 = time.perf_counter()
            R = self.prior.resolution
            x = frames.permute(0, 3, 1, 2)
            small = F.interpolate(x, size=(R, R), mode="area")
            refined = self.prior.refine(
                small.permute(0, 2, 3, 1), self.clip_landmarks(spec) * (R / spec.cameras.width),
                self.cfg.strength, generator, self.cfg.prior_steps, self.cfg.guidance_scale,
            ).permute(0, 3, 1, 2)  # fmt: skip
            delta = gaussian_blur(refined - small, self.cfg.correction_blur)
            delta = F.interpolate(delta, size=x.shape[-2:], mode="bilinear", align_corners=False)
            self.prior_seconds += time.perf_counter() - t0
            return (x + delta).clamp(0, 1).permute(0, 2, 3, 1)

    def _register_clips(self, step: int) -> None:
        """(Re-)registers the stage's driving signals when the curriculum has moved on."""
        cfg = self.cfg
        stage = curriculum_stage(step, self.spatial_steps)
        neutral = torch.zeros(1, self.model.num_expressions)
        if stage == "spatial" or not self.clips.keys("spatial"):
            spec0 = spatial_spec(0, step, cfg, neutral, max(self.spatial_steps, 1))
            extent = float(spec0.cameras.azimuth_deg.abs().max())
            if extent != self._extent:
                for i in range(cfg.spatial_clips):
                    spec = spatial_spec(i, step, cfg, neutral, max(self.spatial_steps, 1))
                    self.clips.add(f"spatial-{i:02d}", spec, keep=True)
                self._extent = extent
        if stage == "temporal":
            temporal_steps = max(1, cfg.steps - self.spatial_steps)
            progress = (step - self.spatial_steps) / temporal_steps
            bucket = int(progress * 4)  # the expression strength is updated four times over the stage
            if bucket != self._progress_bucket:
                for i in range(cfg.temporal_clips):
                    self.clips.add(
                        f"temporal-{i:02d}", temporal_spec(i, bucket / 4, cfg, self.model), keep=True
                    )
                self._progress_bucket = bucket

    # -- steps ---------------------------------------------------------------------------------
    def portrait_loss(self) -> Tensor:
        rgb, _, seen = self.avatar.render(self.portrait.params, self.portrait_camera, visible=True)
        self._seen |= seen
        if self.portrait_mask is not None:  # the head only: the fitted silhouette is not exactly the true one
            m = self.portrait_mask[..., None]
            rgb = torch.where(m, rgb, self.portrait_target)
        return _l1_dssim(rgb, self.portrait_target, 1.0, 0.2)

    def regulariser_loss(self) -> Tensor:
        r = self.avatar.gaussians.regularisers()
        return self.cfg.position_weight * r["offset"] + self.cfg.scale_weight * r["scale"]

    def train_step(self) -> dict[str, float]:
        """One step. Only Gaussians some view of the step sees are updated: an occluded Gaussian's tiny
        gradient would otherwise take full-size Adam steps and smear the unseen side."""
        cfg = self.cfg
        stats: dict[str, float] = {}
        self._seen = torch.zeros(len(self.avatar.gaussians), dtype=torch.bool)
        loss = cfg.portrait_weight * self.portrait_loss()
        stats["portrait"] = float(loss.detach())
        if self.phase == "video":
            k = self.step - cfg.portrait_steps
            self._register_clips(k)
            stage = curriculum_stage(k, self.spatial_steps)
            pick = stage if stage == "spatial" else None  # the temporal stage keeps the spatial clips
            rng = np.random.default_rng([cfg.seed, 7, self.step])
            if cfg.mode == "symgen":
                clip = self.clips.sample(k, pick)
                frames = sorted(
                    rng.choice(
                        clip.spec.num_frames, min(cfg.frames_per_step, clip.spec.num_frames), replace=False
                    ).tolist()
                )
                render = self.render_clip(clip.spec, frames)
                clip_loss = _l1_dssim(render, clip.frames[frames], cfg.l1_weight, cfg.ssim_weight)
            else:
                keys = self.clips.keys(pick)
                spec = self.clips.specs[keys[int(rng.integers(len(keys)))]]
                clip_loss = cfg.sds_weight * self._sds_loss(spec)
            stats["clip"] = float(clip_loss.detach())
            loss = loss + clip_loss
        loss = loss + self.regulariser_loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.phase == "video":
            for group in self.opt.param_groups:
                if group["name"] not in cfg.video_groups:
                    for p in group["params"]:
                        p.grad = None  # Adam skips parameters without a gradient
        hidden = ~self._seen
        params = [p for group in self.opt.param_groups for p in group["params"]]
        kept = [p.detach()[hidden].clone() for p in params]
        self.opt.step()
        with torch.no_grad():
            for p, old in zip(params, kept):
                p[hidden] = old
        stats["seen"] = float(self._seen.float().mean())
        self.step += 1
        if self.step >= cfg.portrait_steps:
            self.phase = "video"
        stats["loss"] = float(loss.detach())
        return stats

    def _sds_loss(self, spec: ClipSpec) -> Tensor:
        R = self.prior.resolution
        small = spec.cameras.scaled(R / spec.cameras.width)
        small_spec = ClipSpec(small, spec.expressions, spec.jaw_poses, stage=spec.stage)
        frames = self.render_clip(small_spec)
        g = torch.Generator().manual_seed(int(self.cfg.seed * 1_000_003 + self.step))
        t0 = time.perf_counter()
        loss = self.prior.sds_loss(
            frames, self.clip_landmarks(small_spec), g, guidance_scale=self.cfg.sds_guidance
        )
        self.prior_seconds += time.perf_counter() - t0
        return loss

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "phase": self.phase,
            "gaussians": self.avatar.gaussians.state_dict(),
            "opt": self.opt.state_dict(),
            "clips": self.clips.state_dict(),
            "extent": self._extent,
            "bucket": self._progress_bucket,
            "history": self.history,
            "config": asdict(self.cfg),
            "portrait": portrait_fingerprint(self.portrait),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config", {}).get("mode") != self.cfg.mode:
            raise UserError(
                f"the checkpoint was made with mode {state.get('config', {}).get('mode')!r}, this run is "
                f"{self.cfg.mode!r}; pass the same --mode or a new output folder"
            )
        made_from = state.get("portrait")
        if made_from is not None and made_from != portrait_fingerprint(self.portrait):
            raise UserError(
                "the checkpoint in this output folder was made from another portrait; pass a new output "
                "folder (or the portrait it was made from)"
            )
        self.step, self.phase = int(state["step"]), state["phase"]
        self.avatar.gaussians.load_state_dict(state["gaussians"])
        self.opt.load_state_dict(state["opt"])
        self.clips.load_state_dict(state["clips"])
        self._extent, self._progress_bucket = state["extent"], state["bucket"]
        self.history = list(state["history"])

    def run(self, progress: Callable[[int, int, dict[str, float]], None] | None = None) -> None:
        cfg = self.cfg
        total = cfg.portrait_steps + cfg.steps
        ckpt = None if self.out_dir is None else self.out_dir / "ckpt" / "state.pt"
        if ckpt is not None and ckpt.is_file():
            self.load_state_dict(torch.load(ckpt, weights_only=False))
            log.info("resumed at step %d", self.step)
        if self.step >= cfg.portrait_steps:
            self.phase = "video"
        while self.step < total:
            stats = self.train_step()
            if self.step % 10 == 0 or self.step == total:
                self.history.append({"step": self.step, **stats})
            if progress is not None:
                progress(self.step, total, stats)
            if ckpt is not None and (self.step % cfg.checkpoint_every == 0 or self.step == total):
                atomic_torch_save(self.state_dict(), ckpt)


# ------------------------------------------------------------------------------------------- outputs
def save_avatar(path: Path, trainer: Zero1toATrainer) -> Path:
    """``avatar.pt``: the Gaussians, the rig (betas, centring, portrait expression), the portrait camera."""
    p = trainer.portrait
    cam = p.camera
    state = {
        "format": "sds3d-head-avatar-1",
        "head_model": trainer.model.source,
        "gaussians": trainer.avatar.gaussians.state_dict(),
        "per_face": trainer.cfg.per_face,
        "betas": p.betas,
        "transl": p.transl,
        "portrait_params": p.params,
        "portrait_camera": {
            "camera_to_world": cam.camera_to_worlds[0], "fx": float(cam.fx[0]), "fy": float(cam.fy[0]),
            "cx": float(cam.cx[0]), "cy": float(cam.cy[0]), "width": cam.width, "height": cam.height,
        },
        "config": asdict(trainer.cfg),
        "expression_names": list(trainer.model.expression_names),
    }  # fmt: skip
    return atomic_torch_save(state, path)


def load_avatar(path: str | Path, model: HeadModel | None = None) -> tuple[HeadAvatar, dict[str, Any]]:
    """An avatar saved by :func:`save_avatar` (and its record)."""
    from recon.parametric.heads import create_head_model

    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except (OSError, RuntimeError, EOFError) as err:
        raise UserError(
            f"cannot read the avatar {path}: {err}; pass an avatar.pt written by sds3d avatar"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "sds3d-head-avatar-1":
        raise UserError(f"{path} is not an sds3d head avatar; pass an avatar.pt written by sds3d avatar")
    model = model or create_head_model("anny")
    avatar = HeadAvatar(model, state["betas"], state["transl"], int(state["per_face"]))
    avatar.gaussians.load_state_dict(state["gaussians"])
    return avatar, state


def _write_png(path: Path, image: Tensor) -> Path:
    from PIL import Image

    arr = (image.detach().clamp(0, 1).numpy() * 255).round().astype(np.uint8)

    def write(tmp: Path) -> None:
        Image.fromarray(arr).save(tmp, format="PNG")

    return atomic_write(path, write)


def preview_grid(trainer: Zero1toATrainer, size: int = 128) -> Tensor:
    """Two rows: the avatar turning (neutral face), then expressions from the front."""
    model = trainer.model
    az = torch.tensor([-90.0, -45.0, 0.0, 45.0, 90.0])
    cams = clip_cameras(az, torch.full((5,), 5.0), size)
    rows = []
    with torch.no_grad():
        neutral = params_of(torch.zeros(1, model.num_expressions), torch.zeros(1, 3), trainer.portrait.params)
        rows.append(torch.cat([trainer.avatar.render(neutral, cams[i])[0] for i in range(5)], 1))
        front = clip_cameras(torch.zeros(1), torch.full((1,), 5.0), size)
        tiles = []
        for name in ("smile", "surprise", "frown", "pucker", "blink"):
            e, j = named_expression(model, name, 1.0)
            tiles.append(
                trainer.avatar.render(params_of(e[None], j[None], trainer.portrait.params), front)[0]
            )
        rows.append(torch.cat(tiles, 1))
    return torch.cat(rows, 0)


def run_avatar(
    cfg: Zero1toAConfig,
    image: np.ndarray,
    landmarks: np.ndarray,
    out_dir: str | Path,
    mask: np.ndarray | None = None,
    focal: float | None = None,
    drive: Any | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    model: HeadModel | None = None,
    prior: Any | None = None,
    write_video: bool = True,
) -> AvatarResult:
    """The whole pipeline: fit, train (checkpointed, resumable), write ``out_dir``'s outputs."""
    from recon.parametric.heads import create_head_model

    out = Path(out_dir)
    model = model or create_head_model("anny")
    t_start = time.perf_counter()
    if prior is None:
        from priors.video import VideoPrior
        from recon.device import resolve_device

        device = resolve_device(cfg.device)
        dtype = "float16" if device.type == "cuda" else None
        prior = VideoPrior.from_pretrained(
            cfg.video_prior, allow_download=cfg.allow_download, device=device, dtype=dtype
        )
    portrait = prepare_portrait(
        model,
        image,
        landmarks,
        mask,
        focal,
        HeadFitConfig(steps=cfg.fit_steps, seed=cfg.seed),
        prior.resolution,
    )
    out.mkdir(parents=True, exist_ok=True)
    trainer = Zero1toATrainer(cfg, portrait, model, prior, out)
    trainer.run(progress)
    result = AvatarResult(out, avatar=trainer.avatar, portrait=portrait)
    result.files["avatar"] = save_avatar(out / "avatar.pt", trainer)
    result.files["preview"] = _write_png(out / "preview.png", preview_grid(trainer))
    result.files["reference"] = _write_png(out / "reference.png", portrait.reference)
    from recon.parametric.head_glb import head_glb_bytes

    glb = head_glb_bytes(model, betas=portrait.betas, vertex_colors=trainer.avatar.vertex_colors().numpy())
    result.files["glb"] = atomic_write(out / "head.glb", lambda tmp: Path(tmp).write_bytes(glb))
    if write_video:
        result.files["video"] = write_driven(out / "driven.mp4", trainer, drive)
    seconds = time.perf_counter() - t_start
    result.metrics = {
        "mode": cfg.mode,
        "steps": trainer.step,
        "seconds": round(seconds, 2),
        "prior_seconds": round(trainer.prior_seconds, 2),
        "clip_refreshes": trainer.clips.refreshes,
        "landmark_error_px": portrait.fit.landmark_error_px,
        "silhouette_iou": portrait.fit.silhouette_iou,
        "gaussians": len(trainer.avatar.gaussians),
        "last": trainer.history[-1] if trainer.history else {},
    }
    text = json.dumps(result.metrics, indent=1, default=float)
    result.files["metrics"] = atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    return result


def write_driven(path: Path, trainer: Zero1toATrainer, drive: Any | None = None, size: int = 256) -> Path:
    """The avatar driven by ``drive`` (a :class:`recon.parametric.head_drive.DriveSequence`; default the
    built-in "talk" sequence), seen from the portrait's direction at the clips' framing, as an mp4."""
    from recon.parametric.head_drive import expression_sequence_preset, write_driven_video

    drive = drive or expression_sequence_preset(trainer.model, "talk")
    cam = clip_cameras(torch.zeros(1), torch.full((1,), 5.0), size)

    def render_frame(i: int, params: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return trainer.avatar.render(params, cam)[0]

    return write_driven_video(path, render_frame, drive, cam)
