"""Per-attribute accuracy of an embedded prior over the embedded world (kind, colour, pattern).

``python -m bench.prior_quality --model assets/embedded-unet [--samples 8 --steps 50 --patterned 96]``

Captions: all 160 solid captions of :func:`recon.data.objects.vocabulary` (20 kinds x 8 colours) and a
seeded sample of ``patterned`` patterned captions, each with the suffix ``view_word``. ``samples`` images
per caption are drawn with DDIM and classifier-free guidance through the prior (``--model``: a
``save_pretrained`` folder or a prior name such as ``embedded-exemplar``) and judged independently by
:func:`priors.embedded.judge.judge_world` against renders of every kind from the views the view word
allows: the kind (silhouette and colour layout), the colour (solid: the primary; patterned: both colours,
in any order) and the pattern. The judges are first run on ground-truth renders of the same captions
(``judge_*_acc``: their ceiling). Printed: a per-kind table, then as the LAST line JSON with
``shape_acc`` (the kind), ``color_acc``, ``pattern_acc``, ``captions`` and ``samples``.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class BenchConfig:
    """One prior-quality measurement."""

    model: str = "assets/embedded-unet"
    """A ``save_pretrained`` folder of an embedded prior, or a prior name (``embedded-exemplar``)."""
    samples: int = 8
    """Images per caption."""
    steps: int = 50
    """DDIM steps."""
    guidance: float = 7.5
    """Classifier-free guidance scale (diffusers convention)."""
    patterned: int = 96
    """Patterned captions (a seeded sample of the 2304) besides the 160 solid ones."""
    limit: int = 0
    """Judge only this many captions of a seeded shuffle (0: all; for quick checks)."""
    view_word: str = "front view"
    """View suffix of every caption (the judge's reference views match it)."""
    seed: int = 0
    """Seed of the caption sample and of the initial noise."""
    chunk: int = 80
    """Images denoised together."""
    threads: int = 2
    """Torch CPU threads."""
    grid: Path | None = None
    """Where to write a PNG grid (one row per caption, first ``min(samples, 8)`` samples)."""


def bench_captions(patterned: int, seed: int, limit: int = 0) -> list:
    """The benchmark's objects: every solid one, a seeded sample of patterned ones (optionally cut)."""
    from recon.data.objects import vocabulary

    solid = [o for o in vocabulary() if o.pattern == "solid"]
    rng = random.Random(seed)
    objects = solid + rng.sample([o for o in vocabulary() if o.pattern != "solid"], patterned)
    if limit:
        objects = rng.sample(objects, min(limit, len(objects)))
    return objects


def correct(verdict, truth: list) -> dict[str, torch.Tensor]:
    """Per-image correctness ``[B]`` of kind, colour and pattern against the true objects."""
    from priors.embedded.judge import SECONDARY_NAMES
    from recon.data.objects import KINDS, PATTERNS

    kind, color, pattern = [], [], []
    for i, obj in enumerate(truth):
        kind.append(KINDS[int(verdict.kind[i])] == obj.kind)
        c = SECONDARY_NAMES[int(verdict.color[i])]
        s = SECONDARY_NAMES[int(verdict.secondary[i])] if int(verdict.secondary[i]) >= 0 else None
        color.append(c == obj.color if obj.pattern == "solid" else {c, s} == {obj.color, obj.secondary})
        pattern.append(PATTERNS[int(verdict.pattern[i])] == obj.pattern)
    return {k: torch.tensor(v) for k, v in (("kind", kind), ("color", color), ("pattern", pattern))}


def judge_ceiling(objects: list, references, view_word: str, seed: int = 123) -> dict[str, float]:
    """The judges on ground-truth renders of the captions (one random view each, from the view word's
    range): the best accuracy a perfect prior could get."""
    from priors.embedded.judge import VIEW_RANGES, judge_world
    from recon.cameras import sample_hemisphere_cameras
    from recon.data.objects import render_object

    els, azs = VIEW_RANGES[view_word]
    azimuth_range = (-180.0, 180.0) if max(azs) - min(azs) >= 300 else (min(azs), max(azs))
    if view_word == "side view":
        azimuth_range = (45.0, 135.0)
    cams = sample_hemisphere_cameras(
        len(objects),
        elevation_range_deg=(min(els), max(els)),
        azimuth_range_deg=azimuth_range,
        distance_range=(3.0, 3.0),
        fov_range_deg=(40.0, 40.0),
        width=32,
        height=32,
        generator=torch.Generator().manual_seed(seed),
    )
    images = torch.cat([render_object(o, cams[i]).rgb.permute(0, 3, 1, 2) for i, o in enumerate(objects)])
    ok = correct(judge_world(images, references), objects)
    return {k: float(v.float().mean()) for k, v in ok.items()}


def run(cfg: BenchConfig) -> dict[str, float]:
    """Samples and judges; returns the metrics."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(cfg.threads)
    from priors.embedded.judge import judge_world, kind_references
    from priors.model import DiffusionPrior, ddim_sample
    from recon.data.objects import KINDS, caption

    prior = DiffusionPrior.from_pretrained(cfg.model)
    objects = bench_captions(cfg.patterned, cfg.seed, cfg.limit)
    captions = [caption(o, cfg.view_word) for o in objects]
    prompts = [c for c in captions for _ in range(cfg.samples)]
    truth = [o for o in objects for _ in range(cfg.samples)]
    g = torch.Generator().manual_seed(cfg.seed)
    images = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), cfg.chunk):
        chunk = prompts[i : i + cfg.chunk]
        cond = prior.encode_prompt(chunk, [""] * len(chunk))
        images.append(
            ddim_sample(prior, cond, len(chunk), cfg.steps, cfg.guidance, generator=g, progress=True)
        )
    images = torch.cat(images)
    seconds = time.perf_counter() - t0
    references = kind_references(cfg.view_word)
    verdict = judge_world(images, references)
    ok = correct(verdict, truth)
    ceiling = judge_ceiling(objects, references, cfg.view_word)
    kinds = torch.tensor([KINDS.index(o.kind) for o in truth])
    patterned = torch.tensor([o.pattern != "solid" for o in truth])
    print(f"{'kind':<11}{'n':>5}{'shape':>8}{'colour':>8}{'pattern':>9}")
    for k, name in enumerate(KINDS):
        sel = kinds == k
        if sel.any():
            row = [float(ok[a][sel].float().mean()) for a in ("kind", "color", "pattern")]
            print(f"{name:<11}{int(sel.sum()):>5}{row[0]:>8.3f}{row[1]:>8.3f}{row[2]:>9.3f}")
    result = {
        "model": cfg.model,
        "samples_per_caption": cfg.samples,
        "ddim_steps": cfg.steps,
        "guidance": cfg.guidance,
        "view_word": cfg.view_word,
        "sampling_seconds": round(seconds, 1),
        "mean_best_iou": round(float(verdict.iou.mean()), 3),
        "judge_shape_acc": round(ceiling["kind"], 3),
        "judge_color_acc": round(ceiling["color"], 3),
        "judge_pattern_acc": round(ceiling["pattern"], 3),
        "pattern_acc_patterned": round(float(ok["pattern"][patterned].float().mean()), 3)
        if patterned.any()
        else None,
        "color_acc_solid": round(float(ok["color"][~patterned].float().mean()), 3)
        if (~patterned).any()
        else None,
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    if cfg.grid is not None:
        k = min(cfg.samples, 8)
        size = images.shape[-1]
        rows = images.view(len(captions), cfg.samples, 3, size, size)[:, :k]
        grid = rows.permute(0, 3, 1, 4, 2).reshape(len(captions) * size, k * size, 3)
        from PIL import Image

        cfg.grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid.numpy() * 255).round().astype("uint8")).save(cfg.grid)
    metrics = {
        "shape_acc": round(float(ok["kind"].float().mean()), 3),
        "color_acc": round(float(ok["color"].float().mean()), 3),
        "pattern_acc": round(float(ok["pattern"].float().mean()), 3),
        "captions": len(captions),
        "samples": len(prompts),
    }
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    import tyro

    run(tyro.cli(BenchConfig))
