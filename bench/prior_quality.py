"""Per-attribute accuracy of a trained embedded prior (shape by silhouette IoU, color by hue).

``python -m bench.prior_quality --model assets/embedded-unet [--samples 8 --steps 50 --guidance 7.5]``

Samples ``samples`` images for every ``"a <color> <shape>, front view"`` caption (DDIM, classifier-free
guidance, through :class:`priors.model.DiffusionPrior`) and judges each image independently with
:mod:`priors.embedded.judge`: the shape whose front-view reference silhouettes overlap the
foreground best, and the palette color nearest in hue to the mean foreground color. The judges are
first run on ground-truth renders (``judge_shape_acc`` / ``judge_color_acc``: their ceiling). The
last printed line is JSON with ``shape_acc`` and ``color_acc``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class BenchConfig:
    """One prior-quality measurement."""

    model: Path = Path("assets/embedded-unet")
    """A ``save_pretrained`` folder of the embedded prior."""
    samples: int = 8
    """Images per caption."""
    steps: int = 50
    """DDIM steps."""
    guidance: float = 7.5
    """Classifier-free guidance scale (diffusers convention)."""
    view_word: str = "front view"
    """View suffix of every caption (the judge's reference views match it)."""
    seed: int = 0
    """Seed of the initial noise."""
    chunk: int = 80
    """Images denoised together."""
    threads: int = 2
    """Torch CPU threads."""
    grid: Path | None = None
    """Where to write a PNG grid (one row per caption, first ``min(samples, 8)`` samples)."""


def _judge_ceiling(references: torch.Tensor, n_views: int = 6) -> tuple[float, float]:
    from priors.embedded.judge import judge_colors, judge_shapes
    from recon.cameras import sample_hemisphere_cameras
    from recon.data.procedural import COLORS, SHAPES, render_primitive

    cams = sample_hemisphere_cameras(
        n_views,
        elevation_range_deg=(-10, 55),
        azimuth_range_deg=(-45, 45),
        distance_range=(2.6, 3.4),
        fov_range_deg=(40, 40),
        width=32,
        height=32,
        generator=torch.Generator().manual_seed(123),
    )
    ok_s = ok_c = n = 0
    for si, s in enumerate(SHAPES):
        for ci, c in enumerate(COLORS):
            im = render_primitive(s, c, cams)[0].permute(0, 3, 1, 2)
            ok_s += int((judge_shapes(im, references)[0] == si).sum())
            ok_c += int((judge_colors(im) == ci).sum())
            n += n_views
    return ok_s / n, ok_c / n


def run(cfg: BenchConfig) -> dict[str, float]:
    """Samples and judges; returns the metrics."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(cfg.threads)
    from priors.embedded.judge import judge_colors, judge_shapes, reference_silhouettes
    from priors.model import DiffusionPrior, PromptConditioning, ddim_sample
    from priors.text import encode_tokens
    from recon.data.procedural import COLORS, SHAPES, caption

    prior = DiffusionPrior.from_pretrained(str(cfg.model))
    labels = [(si, ci) for si in range(len(SHAPES)) for ci in range(len(COLORS))]
    captions = [caption(SHAPES[si], list(COLORS)[ci], cfg.view_word) for si, ci in labels]
    prompts = [c for c in captions for _ in range(cfg.samples)]
    # Padding is masked in the denoiser, so 16-token states equal the wrapper's 512-token ones.
    hidden, mask = encode_tokens(prompts + [""], max_length=16)
    g = torch.Generator().manual_seed(cfg.seed)
    images = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), cfg.chunk):
        sl = slice(i, min(i + cfg.chunk, len(prompts)))
        n = sl.stop - sl.start
        cond = PromptConditioning(
            prompts[sl], hidden[sl], hidden[-1:].expand(n, -1, -1), mask[sl], mask[-1:].expand(n, -1)
        )
        images.append(ddim_sample(prior, cond, n, cfg.steps, cfg.guidance, generator=g, progress=True))
    images = torch.cat(images)
    seconds = time.perf_counter() - t0
    refs = reference_silhouettes()
    pred_shape, iou = judge_shapes(images, refs)
    pred_color = judge_colors(images)
    true_shape = torch.tensor([si for si, _ in labels]).repeat_interleave(cfg.samples)
    true_color = torch.tensor([ci for _, ci in labels]).repeat_interleave(cfg.samples)
    ceiling_s, ceiling_c = _judge_ceiling(refs)
    result = {
        "model": str(cfg.model),
        "samples_per_caption": cfg.samples,
        "ddim_steps": cfg.steps,
        "guidance": cfg.guidance,
        "sampling_seconds": round(seconds, 1),
        "mean_best_iou": round(float(iou.mean()), 3),
        "judge_shape_acc": round(ceiling_s, 3),
        "judge_color_acc": round(ceiling_c, 3),
        "per_shape_acc": {
            s: round(float((pred_shape == true_shape)[true_shape == i].float().mean()), 3)
            for i, s in enumerate(SHAPES)
        },
        "per_color_acc": {
            c: round(float((pred_color == true_color)[true_color == i].float().mean()), 3)
            for i, c in enumerate(COLORS)
        },
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    if cfg.grid is not None:
        k = min(cfg.samples, 8)
        rows = images.view(len(captions), cfg.samples, 3, 32, 32)[:, :k]
        grid = rows.permute(0, 3, 1, 4, 2).reshape(len(captions) * 32, k * 32, 3)
        from PIL import Image

        cfg.grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid.numpy() * 255).round().astype("uint8")).save(cfg.grid)
    metrics = {
        "shape_acc": round(float((pred_shape == true_shape).float().mean()), 3),
        "color_acc": round(float((pred_color == true_color).float().mean()), 3),
    }
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    import tyro

    run(tyro.cli(BenchConfig))
