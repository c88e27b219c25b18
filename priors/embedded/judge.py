"""Independent judges of generated primitives: shape by silhouette IoU, color by foreground hue.

Used by ``bench/prior_quality.py``. A sample's foreground is every pixel far from white; its shape
is the primitive whose reference silhouettes (rendered from the views its caption allows) overlap
it best (IoU); its color is the palette entry nearest in hue to the mean foreground color (shading
and anti-aliasing against white change brightness and saturation, not hue).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from recon.cameras import cameras_from_spherical
from recon.data.procedural import COLORS, SHAPES, render_primitive

FOREGROUND_THRESHOLD = 0.2
"""A pixel is foreground when some channel is at least this far below white."""


def foreground_mask(images: Tensor, threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """``[B, 3, H, W]`` images in ``[0, 1]`` -> ``[B, H, W]`` bool foreground."""
    return (1.0 - images).amax(dim=1) > threshold


def reference_silhouettes(
    resolution: int = 32,
    elevations_deg: tuple[float, ...] = (-10.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0),
    azimuths_deg: tuple[float, ...] = (0.0, 15.0, 30.0, 45.0),
    distances: tuple[float, ...] = (2.6, 2.8, 3.0, 3.2, 3.4),
    fov_deg: float = 40.0,
) -> Tensor:
    """Binary silhouettes ``[S, V, H, W]`` of every shape from a grid of views (default: front views)."""
    grid = list(itertools.product(elevations_deg, azimuths_deg, distances))
    el, az, d = (torch.tensor(v, dtype=torch.float32) for v in zip(*grid))
    cams = cameras_from_spherical(el, az, d, torch.full_like(el, fov_deg), resolution, resolution)
    masks = [render_primitive(s, "red", cams)[1][..., 0] > 0.5 for s in SHAPES]
    return torch.stack(masks)


def judge_shapes(images: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted shape index ``[B]`` and its best IoU ``[B]`` for images ``[B, 3, H, W]``."""
    fg = foreground_mask(images).flatten(1).float()  # [B, P]
    ref = references.flatten(2).float()  # [S, V, P]
    inter = torch.einsum("bp,svp->bsv", fg, ref)
    union = fg.sum(-1)[:, None, None] + ref.sum(-1)[None] - inter
    iou = (inter / union.clamp_min(1.0)).amax(-1)  # [B, S]
    best, idx = iou.max(-1)
    return idx, best


def rgb_to_hue(rgb: Tensor) -> Tensor:
    """Hue in degrees ``[...]`` of RGB ``[..., 3]``."""
    r, g, b = rgb.unbind(-1)
    mx, mn = rgb.amax(-1), rgb.amin(-1)
    c = (mx - mn).clamp_min(1e-6)
    h = torch.where(mx == r, ((g - b) / c) % 6, torch.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return h * 60.0


def judge_colors(images: Tensor) -> Tensor:
    """Predicted color index (into ``COLORS``) ``[B]``; images without foreground get ``-1``."""
    fg = foreground_mask(images)  # [B, H, W]
    w = fg[:, None].float()
    mean = (images * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1.0)  # [B, 3]
    hue = rgb_to_hue(mean)  # [B]
    ref = rgb_to_hue(torch.tensor(list(COLORS.values())))  # [K]
    diff = (hue[:, None] - ref[None]).abs()
    diff = torch.minimum(diff, 360.0 - diff)
    idx = diff.argmin(-1)
    return torch.where(fg.flatten(1).any(-1), idx, torch.full_like(idx, -1))
