"""The procedural training set of the embedded prior: 5 primitives x 8 colors x random views.

Shading is a per-pixel factor times the albedo (:func:`recon.data.procedural.render_primitive`), so
a *view bank* stores, per shape and view, the white-albedo radiance ``S`` and the coverage ``alpha``;
any color is then ``albedo * S + (1 - alpha)`` on white, for free. The bank is rendered once and
cached as a tensor file. Captions are ``"a red cube, side view"`` with the view word from the
camera's elevation / azimuth (:func:`recon.cameras.view_direction_words`), or ``"a red cube"``.

No flip augmentation: every primitive is mirror-symmetric and the view words depend on ``|azimuth|``
only, but the fixed light is not mirror-symmetric, so a flip would teach a second lighting; the
bank's random views already cover all azimuths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from recon.cameras import sample_hemisphere_cameras, view_direction_words
from recon.data.procedural import COLORS, SHAPES, caption, render_primitive

VIEW_WORDS: tuple[str, ...] = ("front view", "side view", "back view", "overhead view")
"""View-dependent suffixes, in label order."""
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
"""Color names, in label order."""


@dataclass
class ViewBankConfig:
    """How the view bank is rendered."""

    views_per_shape: int = 1024
    """Random cameras per primitive."""
    resolution: int = 32
    """Image size (square)."""
    elevation_range_deg: tuple[float, float] = (-10.0, 80.0)
    """Camera elevations (above 60 deg is an overhead view)."""
    distance_range: tuple[float, float] = (2.6, 3.4)
    """Camera distances from the origin."""
    fov_deg: float = 40.0
    """Vertical field of view."""
    seed: int = 0
    """Seed of the camera sampler."""


@dataclass
class ViewBank:
    """Per-shape renders with white albedo; every tensor's first two dims are ``[shapes, views]``."""

    radiance: Tensor  # [S, V, 1, H, W] white-albedo shaded coverage (albedo multiplies it)
    alpha: Tensor  # [S, V, 1, H, W]
    elevation_deg: Tensor  # [S, V]
    azimuth_deg: Tensor  # [S, V]
    view_labels: Tensor  # [S, V] index into VIEW_WORDS

    def images(self, shape: Tensor, view: Tensor, color: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` for label tensors ``shape, view, color`` (each ``[B]``)."""
        albedo = torch.tensor([COLORS[c] for c in COLOR_NAMES])[color]  # [B, 3]
        s, a = self.radiance[shape, view], self.alpha[shape, view]
        return (albedo[:, :, None, None] * s + (1.0 - a)).clamp(0.0, 1.0)


def render_view_bank(cfg: ViewBankConfig) -> ViewBank:
    """Renders every primitive from ``cfg.views_per_shape`` random cameras (seeded)."""
    g = torch.Generator().manual_seed(cfg.seed)
    radiance, alpha, elev, azim, labels = [], [], [], [], []
    for _shape in SHAPES:
        cams = sample_hemisphere_cameras(
            cfg.views_per_shape,
            elevation_range_deg=cfg.elevation_range_deg,
            distance_range=cfg.distance_range,
            fov_range_deg=(cfg.fov_deg, cfg.fov_deg),
            width=cfg.resolution,
            height=cfg.resolution,
            generator=g,
        )
        rgb, a, _ = render_primitive(_shape, (1.0, 1.0, 1.0), cams, background=0.0)
        radiance.append(rgb[..., :1].permute(0, 3, 1, 2))
        alpha.append(a.permute(0, 3, 1, 2))
        elev.append(cams.elevation_deg)
        azim.append(cams.azimuth_deg)
        words = view_direction_words(cams.elevation_deg, cams.azimuth_deg)
        labels.append(torch.tensor([VIEW_WORDS.index(w) for w in words]))
    return ViewBank(
        torch.stack(radiance), torch.stack(alpha), torch.stack(elev), torch.stack(azim), torch.stack(labels)
    )


def load_or_render_view_bank(cfg: ViewBankConfig, cache: Path | None) -> ViewBank:
    """The view bank from ``cache`` if it was rendered with ``cfg``, else rendered (and cached atomically)."""
    key = repr(sorted(cfg.__dict__.items()))
    if cache is not None and cache.is_file():
        data = torch.load(cache, weights_only=False)
        if data.get("key") == key:
            return ViewBank(**data["bank"])
    bank = render_view_bank(cfg)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"key": key, "bank": bank.__dict__}, tmp)
        os.replace(tmp, cache)
    return bank


def caption_table() -> list[str]:
    """Every training caption, indexed by :func:`caption_index`; index 0 is the empty (unconditional) one."""
    table = [""]
    for shape in SHAPES:
        for color in COLOR_NAMES:
            table.append(caption(shape, color))
            table.extend(caption(shape, color, w) for w in VIEW_WORDS)
    return table


def caption_index(shape: Tensor, color: Tensor, view: Tensor | None) -> Tensor:
    """Rows of :func:`caption_table` for labels; ``view`` ``-1`` (or ``None``) means no view word."""
    per_shape = len(COLOR_NAMES) * (1 + len(VIEW_WORDS))
    base = 1 + shape * per_shape + color * (1 + len(VIEW_WORDS))
    if view is None:
        return base
    return base + 1 + view.clamp_min(-1)


@dataclass
class BatchConfig:
    """How training batches are drawn."""

    batch_size: int = 24
    """Images per step."""
    view_word_prob: float = 0.7
    """Probability that a caption carries its view word."""
    uncond_prob: float = 0.12
    """Probability of the empty caption (classifier-free guidance training)."""


def sample_batch(
    bank: ViewBank, cfg: BatchConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """A random batch.

    Returns:
        ``(images [B, 3, H, W] in [0, 1], caption rows [B], labels)`` with ``labels`` holding
        ``shape``, ``color``, ``view`` (the true view, even when the caption omits it).
    """
    n_shapes, n_views = bank.alpha.shape[:2]
    b = cfg.batch_size
    shape = torch.randint(n_shapes, (b,), generator=generator)
    view = torch.randint(n_views, (b,), generator=generator)
    color = torch.randint(len(COLOR_NAMES), (b,), generator=generator)
    view_label = bank.view_labels[shape, view]
    with_view = torch.rand(b, generator=generator) < cfg.view_word_prob
    rows = caption_index(shape, color, torch.where(with_view, view_label, torch.full_like(view_label, -1)))
    rows = torch.where(torch.rand(b, generator=generator) < cfg.uncond_prob, torch.zeros_like(rows), rows)
    images = bank.images(shape, view, color)
    return images, rows, {"shape": shape, "color": color, "view": view_label}
