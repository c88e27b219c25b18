"""Clips from the video prior (Zero-1-to-A's teacher), judged against ground-truth renders of held-out heads.

``python bench/video_prior_quality.py [--prior embedded|FOLDER] [--n 16] [--steps 50] [--guidance 2.0]
[--seed 0] [--out grid.png]``

Held-out clips: clip ``i`` is :func:`recon.data.head_clips.render_clip` with the rng seeded
``clip_seed + i`` (the training bank is drawn from one rng seeded 0; shapes are new, the skin / hair
palettes are shared), kinds alternating spatial / temporal, at the prior's resolution and clip length.
Each clip is made two ways through :class:`priors.video.VideoPrior`, conditioned on the clip's reference
portrait and its ground-truth landmarks:

* **sample** — from pure noise (:meth:`~priors.video.VideoPrior.sample`, DDIM ``--steps``, guidance
  ``--guidance``): the prior's own picture of the driven portrait;
* **refine** — SDEdit at ``--strength`` (0.6) of a *degraded* truth, as the pipeline refreshes its clips
  (:meth:`~priors.video.VideoPrior.refine` with ``--refine-steps`` 20, the pipeline's ``prior_steps``):
  the truth blurred (Gaussian, σ = 1 px) and its foreground colour-shifted by ``0.12 d``, ``d`` a random
  unit RGB vector per clip (more than the colour tolerance, less where a channel clips).

The judges, every clip against its truth:

* **identity** — in every frame, the mean colour of the prediction over the truth's skin region and over
  its hair region (pixels fully covered by skin / hair triangles, from a render of the same frames with
  label colours, eroded by one pixel) vs the truth's mean over the same pixels: ``color_acc`` is the
  share of (frame, region) pairs within ``--color-tolerance`` (0.08, RGB Euclidean; neighbouring skin
  tones are ≈ 0.12 apart once shaded) and ``color_dist`` the mean distance. A prediction whose head is
  elsewhere shows background there and fails.
* **motion** — per-frame silhouette IoU (foreground: some channel 0.2 below white,
  :func:`priors.embedded.judge.foreground_mask`; ``iou_median`` over all frames), and
  ``landmark_err``: the mean absolute error on the pixels under the truth's landmark heatmap
  (:func:`priors.video.landmark_maps` > 0.1: eyes, brows, nose, mouth, jaw line), where the expression
  shows. It is not a landmark detector: a sample with the right features one pixel off scores badly.
* **temporal** — the mean absolute frame-to-frame change of the prediction over that of the truth
  (``temporal_ratio``: 1 is the truth's amount of motion, 0 a still clip, above 1 flicker).
* **PSNR** vs the truth; ``refine_psnr_gain`` is the refined clip's minus the degraded input's.

Baselines in the same run: the reference portrait repeated over the frames (``baseline_*``: a prior that
ignored the driving signal) and the degraded input of the refinement (``degraded_*``). ``--out`` writes a
PNG, one row per clip: reference | truth frames | sampled frames | refined frames. The last line is
JSON with ``iou_median``, ``color_acc``, ``psnr``, ``refine_psnr_gain`` and ``median_s`` (seconds of
one ``sample`` call, median over clips).

Cost: a clip takes ``steps + strength · refine_steps`` guided UNet calls (62 by default). On an 8-frame
32 px clip one call took 0.4-0.5 s with a training job sharing the 2 cores (idle: not measured), so the
defaults ran ≈ 40 s a clip, ≈ 11 minutes for 16; ``--steps 20`` takes about half.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_REGION_PIXELS = 4
"""A frame's skin / hair region is judged only when it has at least this many pixels."""
SHIFT = 0.12
"""Size of the degradation's colour shift (RGB offset ``SHIFT d`` on the foreground, ``|d| = 1``)."""
BLUR_SIGMA = 1.0
"""Width (pixels) of the degradation's Gaussian blur."""


@dataclass
class BenchConfig:
    """One video-prior quality measurement."""

    prior: str = "embedded"
    """``embedded`` (assets/embedded-video) or a Stable Video Diffusion-layout folder."""
    n: int = 16
    """Held-out clips (kinds alternate spatial / temporal)."""
    steps: int = 50
    """DDIM steps of sampling from noise."""
    guidance: float = 2.0
    """Classifier-free guidance scale (diffusers convention) of sampling and refinement."""
    seed: int = 0
    """Seed of the initial noise and of the degradations."""
    out: Path | None = None
    """Where to write the PNG grid (reference | truth | sampled | refined, one row per clip)."""
    strength: float = 0.6
    """SDEdit strength of the refinement."""
    refine_steps: int = 20
    """DDIM steps of a full denoising in the refinement (it runs ``strength`` of them)."""
    clip_seed: int = 1000
    """Clip ``i`` is rendered with the rng seeded ``clip_seed + i`` (the training bank uses 0)."""
    color_tolerance: float = 0.08
    """RGB distance under which a region's mean colour matches the truth's."""
    size: int | None = None
    """Side of the rendered clips (default: the prior's resolution)."""
    frames: int | None = None
    """Frames per clip (default: the UNet's ``num_frames``)."""
    threads: int = 2
    """Torch CPU threads."""


# -- the held-out clips ----------------------------------------------------------------------------------


def _erode(masks: Tensor) -> Tensor:  # [T, S, S] bool -> [T, S, S]: pixels whose 4 neighbours are in
    m = F.pad(masks.float()[:, None], (1, 1, 1, 1))[:, 0]
    core = m[:, 1:-1, 1:-1] * m[:, :-2, 1:-1] * m[:, 2:, 1:-1] * m[:, 1:-1, :-2] * m[:, 1:-1, 2:]
    return core > 0


def region_masks(model: Any, clip: dict[str, Any], size: int) -> tuple[Tensor, Tensor]:
    """``(skin [T, S, S], hair [T, S, S])`` bool: pixels of the clip's frames fully covered by skin (hair)
    triangles, eroded by one pixel (the frames rendered again with label colours)."""
    from recon.data.head_clips import clip_cameras, head_params, render_frames
    from recon.data.heads_synth import head_albedo

    identity = clip["identity"]
    betas, transl = head_params(model, identity)
    labels = {**identity, "skin": (1.0, 0.0, 0.0), "hair": (0.0, 1.0, 0.0), "iris": (0.0, 0.0, 1.0)}
    albedo = head_albedo(model, labels, betas)  # brows, lips, eyes: mixtures / other colours
    skin_v = (albedo - torch.tensor([1.0, 0.0, 0.0])).abs().amax(-1) < 1e-6
    hair_v = (albedo - torch.tensor([0.0, 1.0, 0.0])).abs().amax(-1) < 1e-6
    label = torch.zeros_like(albedo)
    label[:, 2] = 1.0
    label[skin_v], label[hair_v] = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    cams = clip_cameras(clip["azimuth"], clip["elevation"], size)
    rgb, cover, _ = render_frames(model, betas, transl, label, cams, clip["expressions"], clip["jaw_poses"])
    share = rgb / rgb.sum(-1, keepdim=True).clamp_min(1e-6)
    inside = cover > 0.99
    skin = _erode(inside & (share[..., 0] > 0.95))
    hair = _erode(inside & (share[..., 1] > 0.95))
    return skin, hair


def held_out_clips(n: int, size: int, num_frames: int, clip_seed: int) -> list[dict[str, Any]]:
    """``n`` clips of new heads (kinds alternating), each with its skin and hair region masks."""
    import numpy as np

    from recon.data.head_clips import KINDS, render_clip
    from recon.parametric.heads import create_head_model

    model = create_head_model("anny")
    clips = []
    for i in range(n):
        clip = render_clip(
            model, np.random.default_rng(clip_seed + i), size, num_frames, KINDS[i % len(KINDS)]
        )
        clip["skin"], clip["hair"] = region_masks(model, clip, size)
        clips.append(clip)
    return clips


def degrade(frames: Tensor, masks: Tensor, generator: torch.Generator) -> Tensor:
    """The truth ``[T, S, S, 3]`` blurred (σ = :data:`BLUR_SIGMA` px), its foreground (coverage ``masks
    [T, S, S]``) colour-shifted by ``SHIFT d``, ``d`` a random unit RGB vector: a stand-in for a render."""
    r = int(3 * BLUR_SIGMA)
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * BLUR_SIGMA**2))
    k = k / k.sum()

    def blur(x: Tensor) -> Tensor:  # [T, C, S, S]
        c = x.shape[1]
        x = F.conv2d(
            F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c
        )
        return F.conv2d(
            F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
        )

    x = blur(frames.permute(0, 3, 1, 2))
    m = blur(masks[:, None].float())
    d = F.normalize(torch.randn(3, generator=generator), dim=0).view(1, 3, 1, 1)
    x = x + m * SHIFT * d
    return x.clamp(0, 1).permute(0, 2, 3, 1)


# -- the judges --------------------------------------------------------------------------------------------


def silhouette_iou(pred: Tensor, truth: Tensor) -> Tensor:  # [T, S, S, 3] x2 -> [T]
    from priors.embedded.judge import foreground_mask

    a, b = foreground_mask(pred.permute(0, 3, 1, 2)), foreground_mask(truth.permute(0, 3, 1, 2))
    inter = (a & b).flatten(1).sum(-1).float()
    union = (a | b).flatten(1).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def region_color_distances(pred: Tensor, truth: Tensor, regions: list[Tensor]) -> Tensor:
    """RGB distances ``[K]`` between the prediction's and the truth's mean colour over each frame's region,
    for every (region, frame) with at least :data:`MIN_REGION_PIXELS` pixels; ``pred``, ``truth``
    ``[T, S, S, 3]``, each region ``[T, S, S]`` bool."""
    out = []
    for region in regions:
        for f in range(pred.shape[0]):
            m = region[f]
            if int(m.sum()) < MIN_REGION_PIXELS:
                continue
            out.append(torch.linalg.vector_norm(pred[f][m].mean(0) - truth[f][m].mean(0)))
    return torch.stack(out) if out else torch.zeros(0)


def temporal_change(frames: Tensor) -> float:  # [T, S, S, 3] -> mean |x_{t+1} - x_t|
    return float((frames[1:] - frames[:-1]).abs().mean())


def landmark_error(pred: Tensor, truth: Tensor, landmarks: Tensor) -> float:
    """Mean absolute error on the pixels under the truth's landmark heatmap (``landmarks [T, L, 2]``)."""
    from priors.video import landmark_maps

    S = truth.shape[1]
    under = landmark_maps(landmarks, S, S)[:, 0] > 0.1  # [T, S, S]
    return float((pred - truth).abs().mean(-1)[under].mean())


def judge(pred: Tensor, clip: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Per-clip scores of a prediction ``[T, S, S, 3]`` against the clip's truth."""
    from recon.metrics import psnr

    truth = clip["frames"]
    dist = region_color_distances(pred, truth, [clip["skin"], clip["hair"]])
    return {
        "iou": silhouette_iou(pred, truth),
        "color_ok": dist < tolerance,
        "color_dist": dist,
        "psnr": psnr(pred, truth),
        "change": temporal_change(pred),
        "landmark_err": landmark_error(pred, truth, clip["landmarks"]),
    }


def summarize(scores: list[dict[str, Any]], gt_change: float) -> dict[str, float]:
    iou = torch.cat([s["iou"] for s in scores])
    ok = torch.cat([s["color_ok"] for s in scores]).float()
    dist = torch.cat([s["color_dist"] for s in scores])
    return {
        "iou_median": round(float(iou.median()), 3) if iou.numel() else float("nan"),
        "color_acc": round(float(ok.mean()), 3) if ok.numel() else float("nan"),
        "color_dist": round(float(dist.mean()), 4) if dist.numel() else float("nan"),
        "psnr": round(statistics.fmean(s["psnr"] for s in scores), 2),
        "temporal_ratio": round(statistics.fmean(s["change"] for s in scores) / max(gt_change, 1e-8), 3),
        "landmark_err": round(statistics.fmean(s["landmark_err"] for s in scores), 4),
    }


# -- the run -----------------------------------------------------------------------------------------------


def write_grid(path: Path, clips: list[dict[str, Any]], samples: list[Tensor], refined: list[Tensor]) -> None:
    """One row per clip: reference | truth frames | sampled frames | refined frames (atomic write)."""
    from PIL import Image

    S = clips[0]["frames"].shape[1]
    T = clips[0]["frames"].shape[0]
    gap, group_gap = 1, 4
    width = S + 3 * (group_gap + T * (S + gap) - gap)
    rows = []
    for clip, sample, ref in zip(clips, samples, refined):
        row = torch.ones(S, width, 3)
        row[:, :S] = clip["reference"]
        x = S
        for group in (clip["frames"], sample, ref):
            x += group_gap
            for f in range(T):
                row[:, x : x + S] = group[f]
                x += S + gap
            x -= gap
        rows.append(row)
        rows.append(torch.ones(gap, width, 3))
    grid = torch.cat(rows[:-1]).clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray((grid.numpy() * 255).round().astype("uint8")).save(tmp, format="PNG")
    os.replace(tmp, path)


def run(cfg: BenchConfig) -> dict:
    """Renders, samples, refines, judges and prints; returns the metrics of the last line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(cfg.threads)
    from priors.video import VideoPrior

    prior = VideoPrior.from_pretrained(cfg.prior)
    info = prior.info()
    size = cfg.size or prior.resolution
    num_frames = cfg.frames or int(prior.unet.config.num_frames)
    print(
        f"[video-bench] {info['source']}: {info['kind']}, {info['resolution']} px, landmarks "
        f"{info['landmarks']}; {cfg.n} clips of {num_frames} frames at {size} px"
    )
    t0 = time.perf_counter()
    clips = held_out_clips(cfg.n, size, num_frames, cfg.clip_seed)
    render_s = time.perf_counter() - t0

    samples, refined, degraded = [], [], []
    sample_times, refine_times = [], []
    t_all = time.perf_counter()
    for i, clip in enumerate(clips):
        prior.set_reference(clip["reference"])
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
        t0 = time.perf_counter()
        out = prior.sample(num_frames, clip["landmarks"], size, g, cfg.steps, cfg.guidance)
        sample_times.append(time.perf_counter() - t0)
        if out.shape[1] != size:
            out = F.interpolate(out.permute(0, 3, 1, 2), size=(size, size), mode="area").permute(0, 2, 3, 1)
        samples.append(out.float().cpu())
        bad = degrade(clip["frames"], clip["masks"], g)
        t0 = time.perf_counter()
        fixed = prior.refine(bad, clip["landmarks"], cfg.strength, g, cfg.refine_steps, cfg.guidance)
        refine_times.append(time.perf_counter() - t0)
        degraded.append(bad)
        refined.append(fixed.float().cpu())
        print(
            f"[video-bench] clip {i + 1}/{cfg.n} {clip['kind']}: sample {sample_times[-1]:.1f} s, "
            f"refine {refine_times[-1]:.1f} s",
            flush=True,
        )
    denoise_s = time.perf_counter() - t_all

    tol = cfg.color_tolerance
    scores = {
        "sample": [judge(s, c, tol) for s, c in zip(samples, clips)],
        "refine": [judge(s, c, tol) for s, c in zip(refined, clips)],
        "degraded": [judge(s, c, tol) for s, c in zip(degraded, clips)],
        "baseline": [judge(c["reference"].expand_as(c["frames"]), c, tol) for c in clips],
    }
    gt_change = statistics.fmean(temporal_change(c["frames"]) for c in clips)
    summary = {name: summarize(s, gt_change) for name, s in scores.items()}
    kinds = [c["kind"] for c in clips]

    columns = ("iou_median", "color_acc", "color_dist", "psnr", "temporal_ratio", "landmark_err")
    heads = " ".join(f"{h:>6}" for h in ("iou", "color", "dist", "psnr", "motion", "lmk"))
    print(f"{'':<9} {'kind':<8} {'n':>2}  {heads}")
    for name in ("sample", "baseline", "degraded", "refine"):
        for kind in (None, *dict.fromkeys(kinds)):
            picked = [i for i, k in enumerate(kinds) if kind in (None, k)]
            gt = statistics.fmean(temporal_change(clips[i]["frames"]) for i in picked)
            m = summarize([scores[name][i] for i in picked], gt)
            values = " ".join(f"{m[c]:>6.3f}" for c in columns)
            print(f"{name:<9} {kind or 'all':<8} {len(picked):>2}  {values}")
    if cfg.out is not None:
        write_grid(cfg.out, clips, samples, refined)
        print(f"[video-bench] grid (reference | truth | sampled | refined) -> {cfg.out}")

    gains = [r["psnr"] - d["psnr"] for r, d in zip(scores["refine"], scores["degraded"])]
    metrics: dict[str, Any] = dict(summary["sample"])
    for kind in dict.fromkeys(kinds):
        picked = [s for s, k in zip(scores["sample"], kinds) if k == kind]
        m = summarize(picked, gt_change)
        metrics[f"iou_median_{kind}"], metrics[f"color_acc_{kind}"] = m["iou_median"], m["color_acc"]
    for name in ("refine", "degraded", "baseline"):
        metrics.update({f"{name}_{k}": v for k, v in summary[name].items()})
    metrics.update(
        refine_psnr_gain=round(statistics.fmean(gains), 2),
        gt_temporal_change=round(gt_change, 4),
        median_s=round(statistics.median(sample_times), 2),
        refine_median_s=round(statistics.median(refine_times), 2),
        n=cfg.n,
        frames=num_frames,
        size=size,
        steps=cfg.steps,
        refine_steps=cfg.refine_steps,
        strength=cfg.strength,
        guidance=cfg.guidance,
        prior=cfg.prior,
        render_s=round(render_s, 1),
        denoise_s=round(denoise_s, 1),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
    )
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    import tyro

    run(tyro.cli(BenchConfig))
