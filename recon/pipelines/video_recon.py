"""Reconstruction from video or posed images: 3D Gaussian Splatting or a NeRF fitted to keyframes.

Kerbl et al., "3D Gaussian Splatting for Real-Time Radiance Field Rendering", SIGGRAPH 2023,
https://arxiv.org/abs/2308.04079: Gaussians initialised from the SfM points, an L1 + D-SSIM
photometric loss, adaptive density control, and SH degree raised one band at a time. Every
``holdout_every``-th view is held out; PSNR / SSIM on them go into ``metrics.json``. Optionally,
score distillation on unseen views (off by default) fills what no camera saw.

``representation="nerf"`` fits a :class:`~recon.fields.DensityField` instead (NeRF, Mildenhall et al.
2020, https://arxiv.org/abs/2003.08934, with DVGO's dense grid, https://arxiv.org/abs/2111.11215):
each step renders a random batch of rays drawn across every training image (stratified samples,
occupancy-grid skipping after a warm-up, nerfacc's scheme) with an MSE loss on their colors and a
small total variation of the grid.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.data.datasets import SceneConfig, SceneData, load_scene, write_transforms
from recon.device import resolve, resolve_device
from recon.errors import (
    CHECKPOINT_EVERY,
    FACES,
    FRACTION,
    HOLDOUT_EVERY,
    LEARNING_RATE,
    SEED,
    STEPS,
    TEXTURE_SIZE,
    WEIGHT,
    UserError,
    check_fields,
    checked,
)
from recon.fields import DensityField, DensityFieldConfig
from recon.gaussians import DensifyConfig, GaussianModel
from recon.metrics import psnr, ssim
from recon.render import render_gaussians, render_scene
from recon.render.volume import OccupancyGrid, render_rays
from recon.runs import create_run_dir, export_run, new_run_dir, save_config, validate_export_options
from recon.train import Hooks, LearningRate, LossTerm, Stage, StepContext, TrainConfig, Trainer

log = logging.getLogger("sds3d.video_recon")


@dataclass
class VideoReconConfig:
    """Every setting of a reconstruction run."""

    scene: SceneConfig = field(default_factory=SceneConfig)
    """Input loading: keyframes, SfM, resolution, background, normalization."""
    representation: Literal["gaussians", "nerf"] = "gaussians"
    """What is fitted: 3D Gaussians, or a NeRF density field (dense grid + small MLP)."""
    steps: int = checked(1500, STEPS)
    """Optimization steps (Gaussians: one training view per step; NeRF: one batch of rays)."""
    seed: int = checked(0, SEED)
    """Seed of every random choice."""
    holdout_every: int = checked(8, HOLDOUT_EVERY)
    """Every k-th view is held out for evaluation (0: train on all)."""
    ssim_weight: float = checked(0.2, FRACTION)
    """Weight λ of D-SSIM in ``(1 - λ) L1 + λ (1 - SSIM)`` (the 3DGS paper's 0.2)."""
    sh_degree: int = checked(3, low=0, high=3)
    """Highest SH degree."""
    sh_degree_interval: int = checked(100, low=1, high=10_000_000)
    """Steps between raising the SH degree by one (0 → ``sh_degree``)."""
    init_copies: int = checked(8, low=1, high=1000)
    """Gaussians per SfM point at the start (jittered copies; 1: one per point)."""
    random_init_points: int = checked(5000, low=1, high=10_000_000)
    """Gaussians at random positions when the input has no SfM points (transforms.json)."""
    random_init_radius: float = checked(1.2, low=0.001, high=1000)
    """Radius of the ball random Gaussians start in (the scene is normalized to cameras at ~3)."""
    init_opacity: float = checked(0.1, low=0.0001, high=0.9999)
    """Initial opacity of every Gaussian."""
    densify: DensifyConfig = field(
        default_factory=lambda: DensifyConfig(
            grow_grad2d=0.0002,
            refine_start_iter=100,
            refine_every=100,
            reset_every=3000,
            refine_stop_iter=15_000,
        )
    )
    """Adaptive density control (clone / split / prune)."""
    lr_means: float = checked(1.6e-4, LEARNING_RATE)
    """Learning rate of the centers (times the scene scale), decaying 100x."""
    lr_colors: float = checked(1e-2, LEARNING_RATE)
    """Learning rate of the SH colors (the paper's 2.5e-3 suits 30k steps; 1e-2 converges in the few
    hundred steps a CPU affords: 25.0 vs 22.0 dB held-out after 300 steps on the synthetic video)."""
    background: float = checked(1.0, FRACTION)
    """Background grey level the Gaussians are rendered over (match the images')."""
    sds_weight: float = checked(0.0, WEIGHT)
    """Weight of score distillation on random unseen views (0: off)."""
    sds_prior: str = "embedded"
    """Prior of the SDS term: ``embedded``, a hub id or a local diffusers folder."""
    sds_prompt: str = ""
    """Text prompt of the SDS term (what the scene shows)."""
    device: str = checked("auto", nonempty=True, fix="use auto, cpu, cuda or cuda:N")
    """Where the run computes: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N`` (:func:`recon.device.resolve_device`); the input is loaded and posed on the CPU."""
    dtype: str = checked("auto", nonempty=True, fix="use auto, float32, float16 or bfloat16")
    """Weights dtype of the SDS term's prior: ``auto`` (float16 on CUDA, float32 on the CPU), ``float32``,
    ``float16`` or ``bfloat16``; the Gaussians / field train in float32."""
    checkpoint_every: int = checked(500, CHECKPOINT_EVERY)
    """Steps between checkpoints."""
    export_formats: tuple[str, ...] = ("glb", "obj", "ply", "splat")
    """What to export into ``export/``."""
    faces: int = checked(20_000, FACES)
    """Face budget of the exported mesh."""
    texture_size: int = checked(512, TEXTURE_SIZE)
    """Side of the baked texture."""
    export_views: int = checked(24, low=1, high=1024)
    """Views rendered to extract and bake the mesh."""
    export_image_size: int = checked(256, low=16, high=4096)
    """Side of those views in pixels."""
    progress_bar: bool = True
    """Show tqdm bars."""
    nerf: DensityFieldConfig = field(
        default_factory=lambda: DensityFieldConfig(
            radius=0.0, grid_resolution=64, features=12, hidden=64, density_bias="none", density_shift=-2.0
        )
    )
    """The density field of ``representation="nerf"`` (no blob bias: the scene is not a ball at the origin).
    ``radius`` 0 takes the half side of its box from the scene: the export radius (the SfM points' 95th
    percentile radius x 1.1, else 1.2, which covers an object the cameras at distance ~3 look at), kept in
    [0.5, 2]; a positive ``radius`` is used as given."""
    nerf_rays_per_step: int = checked(4096, low=1, high=1 << 24)
    """Rays per step of ``representation="nerf"``, drawn uniformly over the pixels of every training view."""
    nerf_samples: int = checked(64, low=1, high=4096)
    """Samples per ray across the box (stratified during training; NeRF only)."""
    nerf_occupancy_resolution: int = checked(64, low=0, high=512)
    """Cells per axis of the occupancy grid that skips empty space (NeRF only; 0: off)."""
    nerf_occupancy_warmup: int = checked(64, low=0, high=10_000_000)
    """Steps before the occupancy grid starts skipping (it is refreshed every 8 steps; NeRF only)."""
    nerf_tv_weight: float = checked(1e-3, WEIGHT)
    """Weight of the feature grid's total variation (NeRF only)."""
    nerf_eval_chunk: int = checked(8192, low=1, high=1 << 24)
    """Rays per render call when evaluating held-out views (bounds memory; NeRF only)."""
    nerf_mesh_level: float = checked(5.0, low=0, high=1e6)
    """Density iso level of the exported mesh's marching cubes (NeRF only). The fitted surfaces reach
    densities of 5-15 (blocks, 400 steps: 9 % of the box above 5, about the solids' share; 1 % above 10,
    where level 10 gave 8 faces)."""


# ------------------------------------------------------------------------------------------ plan
def split_views(n: int, holdout_every: int) -> tuple[list[int], list[int]]:
    """``(train, test)`` indices: every ``holdout_every``-th view (from mid first block) is test."""
    if holdout_every <= 1 or n < 2 * holdout_every:
        return list(range(n)), []
    test = list(range(holdout_every // 2, n, holdout_every))
    return [i for i in range(n) if i not in set(test)], test


def initial_model(scene: SceneData, config: VideoReconConfig) -> GaussianModel:
    """Gaussians at the SfM points (with their colors), or random in a ball without points."""
    gen = torch.Generator().manual_seed(config.seed)
    if scene.points is not None and len(scene.points) >= 10:
        points, colors = scene.points, scene.point_colors
        if config.init_copies > 1:  # jittered copies: SfM of small frames gives a few hundred points
            spread = 0.02 * float(points.std(0).norm())
            jitter = torch.randn(len(points), config.init_copies - 1, 3, generator=gen) * spread
            points = torch.cat([points, (points[:, None] + jitter).reshape(-1, 3)])
            colors = torch.cat([colors, colors.repeat_interleave(config.init_copies - 1, 0)])
        return GaussianModel.from_points(
            points, colors, sh_degree=config.sh_degree, init_opacity=config.init_opacity
        )
    return GaussianModel.random_in_sphere(
        config.random_init_points, config.random_init_radius, config.sh_degree,
        init_opacity=config.init_opacity, generator=gen,
    )  # fmt: skip


def build_trainer(scene: SceneData, train_idx: list[int], config: VideoReconConfig, run_dir: Path) -> Trainer:
    """The model and the one-stage plan of a reconstruction run (Gaussians or NeRF, by ``representation``)."""
    if config.representation == "nerf":
        return build_nerf_trainer(scene, train_idx, config, run_dir)
    return build_gaussian_trainer(scene, train_idx, config, run_dir)


def build_gaussian_trainer(
    scene: SceneData, train_idx: list[int], config: VideoReconConfig, run_dir: Path
) -> Trainer:
    """3D Gaussians from the SfM points, one view per step, L1 + D-SSIM (optional SDS)."""
    model = initial_model(scene, config)
    device = resolve_device(config.device)
    cams, images = scene.cameras, scene.images.to(device)  # targets; the renderer moves the cameras
    centers = cams.camera_centers[train_idx]
    scene_scale = 1.1 * float((centers - centers.mean(0)).norm(dim=-1).max())
    bg = config.background

    def sample(step: int, generator: torch.Generator) -> dict:
        i = train_idx[int(torch.randint(len(train_idx), (1,), generator=generator))]
        return {"index": i, "step": step}

    def render(m: GaussianModel, batch: dict):
        degree = min(config.sh_degree, batch["step"] // max(config.sh_degree_interval, 1))
        return render_gaussians(m, cams[batch["index"]], background=bg, sh_degree=degree)

    def photometric(ctx: StepContext):
        target = images[ctx.batch["index"]][None]
        pred = ctx.render.rgb
        l1 = (pred - target).abs().mean()
        d_ssim = 1.0 - ssim(pred, target)
        return (1 - config.ssim_weight) * l1 + config.ssim_weight * d_ssim, {"l1": float(l1.detach())}

    losses = [LossTerm("photometric", photometric)]
    if config.sds_weight > 0:
        losses.append(LossTerm("sds", sds_term(config, cams.width, cams.height), config.sds_weight))
    lrs = {
        "means": LearningRate(config.lr_means * scene_scale, config.lr_means * scene_scale * 0.01),
        "scales": LearningRate(5e-3),
        "quats": LearningRate(1e-3),
        "opacities": LearningRate(5e-2),
        "sh0": LearningRate(config.lr_colors),
        "shN": LearningRate(config.lr_colors / 20),
    }
    stage = Stage("fit", config.steps, sample, render, losses, lrs, config.densify)
    train_config = TrainConfig(
        seed=config.seed, checkpoint_every=config.checkpoint_every, progress_bar=config.progress_bar,
        scene_scale=scene_scale, device=str(device),
    )  # fmt: skip
    return Trainer(model, [stage], run_dir, train_config)


# ------------------------------------------------------------------------------------------ NeRF
def nerf_box_radius(scene: SceneData, config: VideoReconConfig) -> float:
    """Half side of the NeRF's box: ``config.nerf.radius``, or from the scene (see the field's docs)."""
    if config.nerf.radius > 0:
        return float(config.nerf.radius)
    return min(max(_export_radius(scene), 0.5), 2.0)


def pixel_rays(
    cameras: Cameras,
    index: Tensor,  # [R] camera of each ray
    u: Tensor,  # [R] pixel column
    v: Tensor,  # [R] pixel row
) -> tuple[Tensor, Tensor]:
    """World rays through pixel centres, as :func:`recon.data.procedural.camera_rays` for chosen pixels.

    Returns:
        ``(origins [R, 3], directions [R, 3] unit length)``.
    """
    fx, fy = cameras.fx.float()[index], cameras.fy.float()[index]
    cx, cy = cameras.cx.float()[index], cameras.cy.float()[index]
    x, y = (u.float() + 0.5 - cx) / fx, -(v.float() + 0.5 - cy) / fy
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # OpenGL: looks down -Z, +Y up
    c2w = cameras.camera_to_worlds[index].float()  # [R, 4, 4]
    dirs = torch.einsum("rij,rj->ri", c2w[:, :3, :3], d_cam)
    return c2w[:, :3, 3], torch.nn.functional.normalize(dirs, dim=-1)


def initial_field(scene: SceneData, config: VideoReconConfig) -> DensityField:
    """The NeRF of a run: ``config.nerf`` in the scene's box, initial weights from ``config.seed``."""
    from dataclasses import replace

    torch.manual_seed(config.seed)
    return DensityField(replace(config.nerf, radius=nerf_box_radius(scene, config)))


def build_nerf_trainer(
    scene: SceneData, train_idx: list[int], config: VideoReconConfig, run_dir: Path
) -> Trainer:
    """A :class:`~recon.fields.DensityField` fitted to random ray batches (MSE + TV), exact on resume.

    The pixels of each step come from the trainer's generator; the stratified jitter and the occupancy
    grid's cell samples come from generators seeded by the step, so a resumed run draws what the
    uninterrupted one did (the grid itself is checkpointed through ``state=``).
    """
    model = initial_field(scene, config)
    device = resolve_device(config.device)
    cams = scene.cameras[train_idx]
    images = scene.images[train_idx]  # [N, H, W, 3]
    n, h, w = images.shape[:3]
    occupancy = (
        OccupancyGrid(model.aabb, config.nerf_occupancy_resolution)
        if config.nerf_occupancy_resolution
        else None
    )
    step_size = float((model.aabb[3:] - model.aabb[:3]).norm()) / config.nerf_samples
    log.info("NeRF box half side %.2f, %d rays x %d samples per step", float(model.aabb[3]),
             config.nerf_rays_per_step, config.nerf_samples)  # fmt: skip

    def step_generator(step: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 4 + stream)

    def sample(step: int, generator: torch.Generator) -> dict:
        r = config.nerf_rays_per_step
        index = torch.randint(n, (r,), generator=generator)
        pixel = torch.randint(h * w, (r,), generator=generator)
        v, u = pixel // w, pixel % w
        origins, dirs = pixel_rays(cams, index, u, v)
        return {  # drawn on the CPU, rendered on the run's device (render_rays follows the rays')
            "origins": origins.to(device),
            "directions": dirs.to(device),
            "rgb": images[index, v, u].to(device),
            "jitter": step_generator(step, 0),
        }

    def render(m: DensityField, batch: dict):
        return render_rays(
            m, batch["origins"], batch["directions"], config.nerf_samples, config.background, stratified=True,
            generator=batch["jitter"], occupancy=occupancy,
        )  # fmt: skip

    def photometric(ctx: StepContext):
        mse = (ctx.render.rgb - ctx.batch["rgb"]).square().mean()
        return mse, {"psnr": -10.0 * math.log10(max(float(mse.detach()), 1e-10))}

    def tv(ctx: StepContext):
        return ctx.model.tv_loss()

    def update_occupancy(m: DensityField, step: int) -> None:
        if occupancy is not None:
            occupancy.update(
                m, step, step_size=step_size, warmup_steps=config.nerf_occupancy_warmup, every_n=8,
                generator=step_generator(step, 1),
            )  # fmt: skip

    losses = [LossTerm("photometric", photometric)]
    if config.nerf_tv_weight > 0:
        losses.append(LossTerm("tv", tv, config.nerf_tv_weight))
    stage = Stage(
        "fit", config.steps, sample, render, losses, None,
        on_step_end=update_occupancy if occupancy is not None else None,
    )  # fmt: skip
    train_config = TrainConfig(
        seed=config.seed, checkpoint_every=config.checkpoint_every, progress_bar=config.progress_bar,
        device=str(device),
    )  # fmt: skip
    state = {"occupancy": occupancy} if occupancy is not None else None
    return Trainer(model, [stage], run_dir, train_config, state=state)


def sds_term(config: VideoReconConfig, width: int, height: int):
    """Score distillation on random views around the scene (the priors interface)."""
    from priors import resolve_prior_name
    from priors.model import DiffusionPrior
    from priors.sds import SDSConfig, SDSLoss
    from recon.cameras import sample_hemisphere_cameras

    if not config.sds_prompt.strip():
        raise UserError("sds_weight > 0 needs sds_prompt: say what the scene shows")
    device, dtype = resolve(config.device, config.dtype)
    prior = DiffusionPrior.from_pretrained(resolve_prior_name(config.sds_prior), device=device, dtype=dtype)
    sds = SDSLoss(prior, SDSConfig())
    res = prior.resolution
    conditioning = prior.encode_prompt([config.sds_prompt], [""])

    def term(ctx: StepContext):
        cams = sample_hemisphere_cameras(
            1, distance_range=(3.0, 3.0), width=res, height=res, generator=ctx.generator
        )
        images = render_gaussians(ctx.model, cams, background=config.background).rgb.permute(0, 3, 1, 2)
        return sds(images, conditioning, ctx.progress, generator=ctx.generator)

    return term


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    scene: SceneData,
    index: list[int],
    background: float,
    **render_options,
) -> dict[str, float]:
    """Mean PSNR / SSIM of the renders of views ``index`` against their images.

    Args:
        model: 3D Gaussians or a field (rendered by :func:`recon.render.render_scene`).
        scene: The posed images.
        index: Views to score.
        background: Background grey level.
        **render_options: Passed to the renderer (a field's ``num_samples``, ``chunk``, ``occupancy``).
    """
    if not index:
        return {}
    ps, ss = [], []
    for i in index:
        pred = render_scene(model, scene.cameras[i], background=background, **render_options).rgb.clamp(0, 1)
        target = scene.images[i][None].to(pred.device)  # a CUDA run renders on the GPU
        ps.append(psnr(pred, target))
        ss.append(float(ssim(pred, target)))
    return {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "n_views": len(index)}


def evaluation_options(trainer: Trainer, config: VideoReconConfig) -> dict:
    """Render options of :func:`evaluate` for the run's representation (a NeRF: samples, chunk, grid)."""
    if config.representation != "nerf":
        return {}
    return {"num_samples": config.nerf_samples, "chunk": config.nerf_eval_chunk,
            "occupancy": trainer.extra_state.get("occupancy")}  # fmt: skip


# ---------------------------------------------------------------------------------------- entry
def validate(config: VideoReconConfig) -> None:
    """Raises a UserError for settings a run cannot start with (every field's declaration, then the rest)."""
    check_fields(config)
    resolve(config.device, config.dtype)  # CUDA asked for where there is none: refused before any folder
    if config.export_formats:  # () exports nothing
        validate_export_options(
            config.export_formats, config.faces, config.texture_size, config.export_image_size,
            config.export_views,
        )  # fmt: skip
    if config.representation != "nerf":
        return
    if config.sds_weight > 0:
        raise UserError("the SDS term renders Gaussians; set sds_weight 0 or use --representation gaussians")


SCENE_FILE = "scene.pt"
"""The run's exact cameras and SfM points (its images are ``transforms.json`` + ``images/``), for resuming."""


def quantized(scene: SceneData) -> SceneData:
    """The scene with its images rounded to 8 bits: what the run's ``images/`` PNGs hold, so a resumed
    run trains on exactly the targets the first one did."""
    from dataclasses import replace

    return replace(scene, images=torch.round(scene.images * 255) / 255)


def save_run_scene(run_dir: Path, scene: SceneData) -> None:
    """Writes the posed images (``transforms.json`` + ``images/``) and :data:`SCENE_FILE`."""
    from recon.atomic import atomic_torch_save

    write_transforms(run_dir / "transforms.json", scene)
    atomic_torch_save(
        {"cameras": scene.cameras, "points": scene.points, "point_colors": scene.point_colors},
        run_dir / SCENE_FILE,
    )


def load_run_scene(run_dir: Path, config: VideoReconConfig) -> SceneData:
    """The scene a run was started on, from its folder (:func:`save_run_scene`).

    Raises:
        UserError: when the folder lacks the files (a run of an older version, or damaged).
    """
    from dataclasses import replace

    from recon.data.datasets import load_transforms

    path = run_dir / SCENE_FILE
    if not path.is_file() or not (run_dir / "transforms.json").is_file():
        raise UserError(
            f"{run_dir} has no {SCENE_FILE} or transforms.json to resume from (a run of an older sds3d, or "
            "damaged); start it again from its input"
        )
    saved = torch.load(path, map_location="cpu", weights_only=False)
    scene = load_transforms(run_dir / "transforms.json", 0, config.background)
    if len(scene) != len(saved["cameras"]):
        raise UserError(f"{run_dir}: transforms.json and {SCENE_FILE} disagree; start the run again")
    return replace(
        scene, cameras=saved["cameras"], points=saved["points"], point_colors=saved["point_colors"]
    )


def reconstruct(
    source: str | Path | None = None,
    config: VideoReconConfig | None = None,
    out_root: str | Path = "outputs",
    run_dir: str | Path | None = None,
    export: bool = True,
    hooks: Hooks | None = None,
    resume: str | Path | None = None,
) -> Path:
    """Input (video, image folder, transforms.json, COLMAP folder) → fitted Gaussians → export.

    The run folder is created only once the input has been loaded and posed, so a bad input leaves
    nothing behind. ``hooks`` (:class:`recon.train.Hooks`) report the run folder and checkpoints and
    can stop the run (:class:`recon.train.Stopped`). A run that fails before its first checkpoint is
    removed; a stopped or interrupted one (both checkpoint first) or one that fails later is kept, and
    ``resume=RUN_DIR`` continues it from its own copy of the posed images (``transforms.json``,
    ``images/``, :data:`SCENE_FILE`) and ``config.yaml``.

    Returns:
        The run folder (``config.yaml``, ``transforms.json`` + ``images/``, ``scene.pt``,
        ``ckpt/last.pt``, ``metrics.json``, ``export/``).
    """
    from recon import runs

    started = time.perf_counter()
    if resume is not None:
        run_dir = Path(resume)
        config = runs.resumed_config(run_dir, "video_recon", VideoReconConfig)
        validate(config)
        scene = load_run_scene(run_dir, config)
    else:
        if source is None:
            raise UserError("give the input: a video, an image folder, a transforms.json or a COLMAP folder")
        config = config or VideoReconConfig()
        validate(config)
        with tempfile.TemporaryDirectory(prefix="sds3d-recon-") as work:
            scene = quantized(load_scene(source, config.scene, Path(work)))
    train_idx, test_idx = split_views(len(scene), config.holdout_every)
    if resume is not None:
        planned = run_dir
    else:
        planned = (
            Path(run_dir) if run_dir is not None else new_run_dir(out_root, "video_recon", Path(source).stem)
        )
    trainer = build_trainer(scene, train_idx, config, planned)
    if hooks is not None:
        trainer.hooks = hooks
    bg = config.background
    if resume is not None:
        if trainer.checkpoint_path.is_file():
            trainer.load_checkpoint()
    elif run_dir is not None:
        planned.mkdir(parents=True, exist_ok=False)
        run_dir = planned
    else:  # atomic and collision-free: two runs of one video in one second get two folders
        run_dir = create_run_dir(out_root, "video_recon", Path(source).stem)
        trainer.run_dir = run_dir
    try:
        if resume is None:
            save_config(config, run_dir, "video_recon")
            save_run_scene(run_dir, scene)
        trainer.fit()
        options = evaluation_options(trainer, config)
        metrics = {
            "representation": config.representation,
            "test": evaluate(trainer.model, scene, test_idx, bg, **options),
            "train": evaluate(trainer.model, scene, train_idx[:: max(1, len(train_idx) // 8)], bg, **options),
            "n_views": len(scene), "n_train": len(train_idx), "n_test": len(test_idx),
            "image_size": [scene.cameras.width, scene.cameras.height],
        }  # fmt: skip
        if isinstance(trainer.model, GaussianModel):
            metrics["num_gaussians"] = len(trainer.model)
        else:
            metrics["nerf_box_radius"] = float(trainer.model.aabb[3])
            if options.get("occupancy") is not None:
                metrics["occupied_fraction"] = options["occupancy"].occupied_fraction
        metrics["seconds"] = time.perf_counter() - started
        trainer.write_metrics(metrics)
        log.info("held-out PSNR %.2f dB, SSIM %.3f", metrics["test"].get("psnr", math.nan),
                 metrics["test"].get("ssim", math.nan))  # fmt: skip
        if export and config.export_formats:
            radius = _export_radius(scene)
            export_run(
                run_dir, tuple(config.export_formats), faces=config.faces, texture_size=config.texture_size,
                image_size=config.export_image_size, n_views=config.export_views, radius=radius,
            )  # fmt: skip
    except BaseException:
        if resume is None:
            runs.remove_incomplete_run(run_dir)
        raise
    return run_dir


def _export_radius(scene: SceneData) -> float:
    """Radius of the region the mesh is extracted from: the SfM points' 95th percentile, else 1.2."""
    if scene.points is None or len(scene.points) < 10:
        return 1.2
    return float(torch.quantile(scene.points.norm(dim=-1), 0.95)) * 1.1


def reconstruct_config(
    max_frames: int = 60,
    steps: int = 1500,
    resolution: int = 0,
    seed: int = 0,
    holdout_every: int = 8,
    representation: Literal["gaussians", "nerf"] = "gaussians",
) -> VideoReconConfig:
    """The config behind the ``reconstruct`` / ``batch`` command-line options."""
    from dataclasses import replace

    config = VideoReconConfig(
        steps=steps, seed=seed, holdout_every=holdout_every, representation=representation
    )
    config.scene = replace(config.scene, resolution=resolution,
                           keyframes=replace(config.scene.keyframes, max_keyframes=max_frames))  # fmt: skip
    return config
