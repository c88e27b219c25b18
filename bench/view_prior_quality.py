"""Novel views from a view-conditioned prior, judged against the ground-truth render of the target view.

``python bench/view_prior_quality.py [--model embedded|FOLDER] [--triples 64] [--steps 50] [--guidance 3.0]
[--grid grid.png]``

Held-out triples (object, reference view, target view): objects of :mod:`recon.data.objects` spanning every
kind, the eight colours and the patterns; cameras drawn with seed ``camera_seed`` (the world bank the
embedded prior trains on uses seed 0, :mod:`priors.embedded.world`), the reference at elevation
``[-10, 30]``, the target at ``[-10, 60]``, both all around in azimuth, at distance 3, fov 40, 32 x 32,
composited on white. Each target is sampled with DDIM (``--steps``, classifier-free guidance
``--guidance``) through :class:`priors.view.ViewConditionedPrior` and judged against the truth:

* **silhouette IoU** — foreground is every pixel far from white
  (:func:`priors.embedded.judge.foreground_mask`), the same rule on the sample and on the truth;
* **colour** — the object's primary colour must be the palette entry (8 hues) that most of the sample's
  saturated foreground pixels are nearest to in hue. Where other colours show (patterns, a white-stemmed
  mushroom, a snowman's white body: the primary slot covers < 95% of the truth's foreground), only the
  pixels inside the truth's primary-slot mask (``render_object(..., return_slots=True)``) vote.
  ``color_acc_mean_hue`` is the same judge reading the hue of the region's *mean* colour instead; on
  64 triples it passes every truth but only 0.89 of the reference pictures used as predictions (a
  misaligned checker or stripe blends two hues), the vote 1.0 and 0.97.

Baseline in the same run: the reference picture itself as the prediction (what a prior that ignored the
camera would give). The judge is also run on the truth (``truth_color_acc``: its ceiling). The last line
is JSON with ``iou_median`` and ``color_acc``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

RESOLUTION = 32
DISTANCE = 3.0
FOV_DEG = 40.0


@dataclass
class BenchConfig:
    """One view-prior quality measurement."""

    model: str = "embedded"
    """``embedded`` (assets/embedded-view) or a Zero123-family diffusers folder."""
    triples: int = 64
    """Held-out (object, reference view, target view) triples."""
    steps: int = 50
    """DDIM steps."""
    guidance: float = 3.0
    """Classifier-free guidance scale (diffusers convention)."""
    threads: int = 2
    """Torch CPU threads."""
    grid: Path | None = None
    """Where to write a PNG: reference | sample | truth rows, 16 triples a block."""
    object_seed: int = 7
    """Seed of the objects (colours, patterns)."""
    camera_seed: int = 2024
    """Seed of the cameras (the training bank uses 0)."""
    noise_seed: int = 0
    """Seed of the initial noise."""
    chunk: int = 32
    """Triples denoised together."""


@dataclass
class Triples:
    """The held-out triples and their ground truth."""

    objects: list  # [N] recon.data.objects.ProceduralObject
    ref_elevation: Tensor  # [N]
    ref_azimuth: Tensor  # [N]
    elevation: Tensor  # [N]
    azimuth: Tensor  # [N]
    reference: Tensor  # [N, 3, H, W] on white
    truth: Tensor  # [N, 3, H, W] on white
    truth_primary: Tensor  # [N, H, W] bool: pixels of the primary colour slot in the truth


def held_out_objects(n: int, seed: int) -> list:
    """``n`` objects cycling through every kind, random colours, patterns on the patternable kinds."""
    from recon.data.object_kinds import KIND_SPECS
    from recon.data.objects import COLORS, KINDS, PATTERNS, SECONDARY_COLORS, ProceduralObject

    g = torch.Generator().manual_seed(seed)
    colors, secondaries = list(COLORS), list(SECONDARY_COLORS)
    objects = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        color = colors[int(torch.randint(len(colors), (1,), generator=g))]
        patterned = KIND_SPECS[kind].patternable and float(torch.rand(1, generator=g)) < 0.6
        if not patterned:
            objects.append(ProceduralObject(kind, color))
            continue
        pattern = PATTERNS[1 + int(torch.randint(len(PATTERNS) - 1, (1,), generator=g))]
        choices = [c for c in secondaries if c != color]
        secondary = choices[int(torch.randint(len(choices), (1,), generator=g))]
        objects.append(ProceduralObject(kind, color, secondary, pattern))
    return objects


def make_triples(n: int, object_seed: int, camera_seed: int) -> Triples:
    """Objects, cameras and the ground-truth renders of both views."""
    from recon.cameras import cameras_from_spherical
    from recon.data.objects import render_object
    from recon.data.procedural import DEFAULT_AMBIENT

    objects = held_out_objects(n, object_seed)
    g = torch.Generator().manual_seed(camera_seed)
    ref_el = -10.0 + 40.0 * torch.rand(n, generator=g)
    ref_az = -180.0 + 360.0 * torch.rand(n, generator=g)
    el = -10.0 + 70.0 * torch.rand(n, generator=g)
    az = -180.0 + 360.0 * torch.rand(n, generator=g)
    refs, truths, primaries = [], [], []
    for i, obj in enumerate(objects):
        cams = cameras_from_spherical(
            torch.stack([ref_el[i], el[i]]),
            torch.stack([ref_az[i], az[i]]),
            torch.full((2,), DISTANCE),
            torch.full((2,), FOV_DEG),
            RESOLUTION,
            RESOLUTION,
        )
        out = render_object(obj, cams, return_slots=True)
        rgb = out.rgb.permute(0, 3, 1, 2)
        refs.append(rgb[0])
        truths.append(rgb[1])
        s = out.slots[1]  # [H, W, 2] shade x coverage of the primary / secondary slots
        # Shade is at least the ambient term, so a pixel at least half covered by primary parts passes.
        primaries.append((s[..., 0] >= s[..., 1]) & (s[..., 0] > 0.5 * DEFAULT_AMBIENT))
    return Triples(
        objects, ref_el, ref_az, el, az, torch.stack(refs), torch.stack(truths), torch.stack(primaries)
    )


def silhouette_iou(images: Tensor, truth: Tensor) -> Tensor:  # [N, 3, H, W] x2 -> [N]
    from priors.embedded.judge import foreground_mask

    a, b = foreground_mask(images), foreground_mask(truth)
    inter = (a & b).flatten(1).sum(-1).float()
    union = (a | b).flatten(1).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


SATURATION = 0.15
"""Pixels below this saturation (max - min channel) have no reliable hue (white, black, grey parts)."""


def judge_primary_colors(
    images: Tensor,  # [N, 3, H, W] in [0, 1]
    truth: Tensor,  # [N, 3, H, W]
    truth_primary: Tensor,  # [N, H, W] bool
    rule: str = "vote",
) -> Tensor:  # [N] index into COLORS, -1 without pixels
    """The primary colour each image shows, read where the truth shows its primary colour slot.

    The region is the image's foreground inside the truth's primary-slot mask when other colours show
    in the truth (the primary slot covers < 95% of its foreground) and some foreground lies there, else
    the image's whole foreground. ``rule="vote"``: the palette hue most of the region's saturated pixels
    are nearest to; ``rule="mean"``: the palette hue nearest to the region's mean colour.
    """
    from priors.embedded.judge import foreground_mask, rgb_to_hue
    from recon.data.procedural import COLORS

    fg = foreground_mask(images)
    mixed = truth_primary.flatten(1).sum(-1) < 0.95 * foreground_mask(truth).flatten(1).sum(-1)
    inside = fg & truth_primary
    region = torch.where((mixed & inside.flatten(1).any(-1))[:, None, None], inside, fg)
    palette = rgb_to_hue(torch.tensor(list(COLORS.values())))

    def nearest(hue: Tensor) -> Tensor:
        diff = (hue[..., None] - palette).abs()
        return torch.minimum(diff, 360.0 - diff).argmin(-1)

    if rule == "mean":
        w = region[:, None].float()
        idx = nearest(rgb_to_hue((images * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1.0)))
        return torch.where(region.flatten(1).any(-1), idx, torch.full_like(idx, -1))
    pixels = images.permute(0, 2, 3, 1)
    voters = region & ((pixels.amax(-1) - pixels.amin(-1)) > SATURATION)
    votes = torch.nn.functional.one_hot(nearest(rgb_to_hue(pixels)), len(palette)) * voters[..., None]
    votes = votes.flatten(1, 2).sum(1)  # [N, K]
    return torch.where(votes.sum(-1) > 0, votes.argmax(-1), torch.full((images.shape[0],), -1))


def sample_novel_views(prior, triples: Triples, cfg: BenchConfig) -> Tensor:  # [N, 3, H, W]
    """DDIM samples of every target view, conditioned on its reference and relative camera."""
    import torch.nn.functional as F

    from priors.model import ddim_sample
    from priors.view import ViewConditioning, relative_pose

    g = torch.Generator().manual_seed(cfg.noise_seed)
    n = len(triples.objects)
    samples = []
    for start in range(0, n, cfg.chunk):
        sl = slice(start, min(n, start + cfg.chunk))
        with torch.no_grad():
            ref = triples.reference[sl]
            pose = relative_pose(
                triples.ref_elevation[sl],
                triples.ref_azimuth[sl],
                DISTANCE,
                triples.elevation[sl],
                triples.azimuth[sl],
                DISTANCE,
                prior.pose_convention,
            )
            cond = ViewConditioning(prior.embed_image(ref), prior.concat_latent(ref), pose.to(prior.device))
        out = ddim_sample(prior, cond, ref.shape[0], cfg.steps, cfg.guidance, generator=g).float().cpu()
        if out.shape[-1] != RESOLUTION:
            out = F.interpolate(out, size=(RESOLUTION, RESOLUTION), mode="area")
        samples.append(out)
        print(f"[view-bench] sampled {sl.stop}/{n}", flush=True)
    return torch.cat(samples)


def write_grid(path: Path, triples: Triples, samples: Tensor, per_block: int = 16) -> None:
    """reference | sample | truth rows, ``per_block`` triples per block of three rows (atomic write)."""
    from PIL import Image

    n, gap = samples.shape[0], 2
    blocks = []
    for start in range(0, n, per_block):
        rows = [x[start : start + per_block] for x in (triples.reference, samples, triples.truth)]
        k = rows[0].shape[0]
        block = torch.ones(3, 3 * RESOLUTION + 2 * gap, per_block * (RESOLUTION + gap) - gap)
        for r, row in enumerate(rows):
            for j in range(k):
                y, x = r * (RESOLUTION + gap), j * (RESOLUTION + gap)
                block[:, y : y + RESOLUTION, x : x + RESOLUTION] = row[j]
        blocks.append(block)
        blocks.append(torch.full((3, 3 * gap, block.shape[-1]), 0.6))
    grid = torch.cat(blocks[:-1], dim=1).clamp(0, 1).permute(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray((grid.numpy() * 255).round().astype("uint8")).save(tmp, format="PNG")
    os.replace(tmp, path)


def _median(values: Tensor) -> float:
    return round(float(values.median()), 3) if values.numel() else float("nan")


def run(cfg: BenchConfig) -> dict:
    """Samples, judges and prints; returns the metrics of the last line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(cfg.threads)
    from priors.view import ViewConditionedPrior
    from recon.data.procedural import COLORS

    prior = ViewConditionedPrior.from_pretrained(cfg.model)
    info = prior.info()
    print(
        f"[view-bench] {info['source']}: {info['kind']}, {info['resolution']} px, {info['pose_convention']}"
    )
    t0 = time.perf_counter()
    triples = make_triples(cfg.triples, cfg.object_seed, cfg.camera_seed)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = sample_novel_views(prior, triples, cfg)
    sample_s = time.perf_counter() - t0

    primary = torch.tensor([list(COLORS).index(o.color) for o in triples.objects])
    iou = silhouette_iou(samples, triples.truth)
    base_iou = silhouette_iou(triples.reference, triples.truth)
    color_ok = judge_primary_colors(samples, triples.truth, triples.truth_primary) == primary
    mean_ok = judge_primary_colors(samples, triples.truth, triples.truth_primary, rule="mean") == primary
    base_color_ok = judge_primary_colors(triples.reference, triples.truth, triples.truth_primary) == primary
    truth_color_ok = judge_primary_colors(triples.truth, triples.truth, triples.truth_primary) == primary

    kinds = [o.kind for o in triples.objects]
    print(f"{'kind':<10} {'n':>2}  {'iou':>5} {'ref iou':>7}  {'color':>5} {'ref color':>9}")
    for kind in dict.fromkeys(kinds):
        m = torch.tensor([k == kind for k in kinds])
        print(
            f"{kind:<10} {int(m.sum()):>2}  {_median(iou[m]):>5.3f} {_median(base_iou[m]):>7.3f}  "
            f"{float(color_ok[m].float().mean()):>5.2f} {float(base_color_ok[m].float().mean()):>9.2f}"
        )
    patterned = torch.tensor([o.pattern != "solid" for o in triples.objects])
    for name, m in (("solid", ~patterned), ("patterned", patterned)):
        if m.any():
            print(
                f"{name:<10} {int(m.sum()):>2}  {_median(iou[m]):>5.3f} {_median(base_iou[m]):>7.3f}  "
                f"{float(color_ok[m].float().mean()):>5.2f} {float(base_color_ok[m].float().mean()):>9.2f}"
            )
    if cfg.grid is not None:
        write_grid(cfg.grid, triples, samples)
        print(f"[view-bench] grid (reference | sample | truth) -> {cfg.grid}")
    iou_median, base_median = _median(iou), _median(base_iou)
    metrics = {
        "iou_median": iou_median,
        "color_acc": round(float(color_ok.float().mean()), 3),
        "color_acc_mean_hue": round(float(mean_ok.float().mean()), 3),
        "iou_mean": round(float(iou.mean()), 3),
        "baseline_iou_median": base_median,
        "baseline_color_acc": round(float(base_color_ok.float().mean()), 3),
        "iou_gain": round(iou_median - base_median, 3),
        "truth_color_acc": round(float(truth_color_ok.float().mean()), 3),
        "triples": cfg.triples,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "model": cfg.model,
        "render_s": round(render_s, 1),
        "sample_s": round(sample_s, 1),
    }
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    import tyro

    run(tyro.cli(BenchConfig))
