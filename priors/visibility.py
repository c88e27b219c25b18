"""Per-pixel SDS weights from how visible each region was in the input views (DP-Recon).

Ni et al., "Decompositional Neural Scene Reconstruction with Generative Diffusion Prior", CVPR 2025,
https://arxiv.org/abs/2503.14830, code github.com/DP-Recon/DP-Recon (``code/model/VisField.py``,
``DPRecon_train.py``). Score distillation fills what no camera saw; where the photos already say what
is there, the prior must not fight them. DP-Recon learns a **visibility grid** ``G`` (a dense grid,
trilinear) from the reconstruction's transmittance along the training rays with the hinge loss

    L = mean_i max(T_i.detach() - G(x_i), 0)

over every volume sample ``x_i`` of every training ray (``T_i`` the scene transmittance in front of
the sample). The hinge only pushes ``G`` up where it lies below ``T``, so ``G`` converges to the upper
envelope ``max over views of T(x)``: 1 in free space and on surfaces some camera saw, 0 behind them.

Three details keep the fit on that envelope (measured on a sphere behind a wall, where the released
recipe — Adam with momentum, every sample — leaves 0.3 in the hidden regions): the hinge's gradient
does not shrink with the gap, so samples with a vanishing transmittance (``T < min_transmittance``,
default 1 %) are left out instead of lifting hidden cells by Adam's normalised step; Adam runs without
momentum (``betas = (0, 0.99)``), which would carry ``G`` past the envelope where the one-sided hinge
can no longer pull it back; and the grid is kept in ``[0, 1]`` after each step.

At a novel view the per-pixel visibility is ``vis = min(sum_i w_i G(x_i), 1)`` with the render's
compositing weights ``w_i`` (:func:`visibility_map`), and the SDS gradient is multiplied per pixel by

* geometry stage: ``0.1 -> 0`` linearly for ``vis`` in ``[0.5, 1]`` and ``20 -> 1`` for ``vis`` in
  ``[0, 0.5)`` (:func:`geometry_weights`),
* colour stage: ``0`` where ``vis >= 0.3``, ``1`` below (:func:`color_weights`),

the released thresholds, all fields of :class:`VisibilityWeightsConfig`. The map goes into
:class:`priors.sds.SDSLoss` as ``weight_map``.

One departure, optional: where a render draws nothing, ``sum_i w_i = 0`` gives ``vis = 0`` and the largest
geometry weight, so the prior is free to grow geometry even in space every photo saw empty (measured in
``bench/dprecon.py``: the accuracy of partly hidden objects falls). :func:`free_space_visibility` gives such
pixels the visibility of the space they look through instead (``visibility_map(..., free_space=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.errors import checked


@dataclass
class VisibilityWeightsConfig:
    """How per-pixel visibility becomes SDS weights (DP-Recon's released thresholds by default)."""

    geometry_split: float = checked(0.5, low=0.0, high=1.0)
    """Geometry stage: visibility at or above this counts as seen."""
    geometry_seen_at_split: float = checked(0.1, low=0.0, high=1e4)
    """Geometry stage: weight of a seen pixel at ``vis = geometry_split`` ..."""
    geometry_seen_at_one: float = checked(0.0, low=0.0, high=1e4)
    """... falling linearly to this at ``vis = 1``."""
    geometry_unseen_at_zero: float = checked(20.0, low=0.0, high=1e4)
    """Geometry stage: weight of an unseen pixel at ``vis = 0`` ..."""
    geometry_unseen_at_split: float = checked(1.0, low=0.0, high=1e4)
    """... falling linearly to this as ``vis`` reaches ``geometry_split``."""
    color_threshold: float = checked(0.3, low=0.0, high=1.0)
    """Colour stage: visibility at or above this counts as seen."""
    color_seen: float = checked(0.0, low=0.0, high=1e4)
    """Colour stage: weight of a seen pixel."""
    color_unseen: float = checked(1.0, low=0.0, high=1e4)
    """Colour stage: weight of an unseen pixel."""


def geometry_weights(vis: Tensor, config: VisibilityWeightsConfig | None = None) -> Tensor:
    """Geometry-stage SDS weights ``[...]`` of visibilities ``vis [...]`` in ``[0, 1]``.

    ``vis >= split``: ``seen_at_split + (seen_at_one - seen_at_split) * (vis - split) / (1 - split)``
    (released: ``0.1 * (1 - (vis - 0.5) / 0.5)``); ``vis < split``: ``unseen_at_zero + (unseen_at_split -
    unseen_at_zero) * vis / split`` (released: ``20 - 38 vis``).
    """
    c = config or VisibilityWeightsConfig()
    vis = vis.clamp(0.0, 1.0)
    split = c.geometry_split
    seen_t = (vis - split) / max(1.0 - split, 1e-12)
    seen = c.geometry_seen_at_split + (c.geometry_seen_at_one - c.geometry_seen_at_split) * seen_t
    unseen_t = vis / max(split, 1e-12)
    unseen = c.geometry_unseen_at_zero + (c.geometry_unseen_at_split - c.geometry_unseen_at_zero) * unseen_t
    return torch.where(vis >= split, seen, unseen)


def color_weights(vis: Tensor, config: VisibilityWeightsConfig | None = None) -> Tensor:
    """Colour-stage SDS weights ``[...]``: ``color_seen`` where ``vis >= color_threshold``, else
    ``color_unseen``."""
    c = config or VisibilityWeightsConfig()
    return torch.where(
        vis >= c.color_threshold, torch.full_like(vis, c.color_seen), torch.full_like(vis, c.color_unseen)
    )


class VisibilityGrid(nn.Module):
    """A dense ``R^3`` grid of visibilities over a box, read trilinearly (0 outside the box).

    Args:
        aabb: ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        resolution: Vertices per axis (DP-Recon: 256 over ``[-1.1, 1.1]^3``; 64 is enough on a CPU).
    """

    def __init__(self, aabb: Tensor | Sequence[float], resolution: int = 64) -> None:
        super().__init__()
        if resolution < 2:
            raise ValueError(f"resolution must be >= 2, got {resolution}")
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(6).clone())
        self.resolution = int(resolution)
        self.grid = nn.Parameter(torch.zeros(1, 1, resolution, resolution, resolution))  # [1, 1, z, y, x]

    def forward(self, points: Tensor) -> Tensor:
        """Visibility ``[...]`` at world points ``[..., 3]``."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        u = (points.reshape(1, -1, 1, 1, 3) - lo) / (hi - lo) * 2.0 - 1.0  # grid_sample wants (x, y, z)
        out = F.grid_sample(
            self.grid, u.to(self.grid.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return out.reshape(points.shape[:-1])

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keeps every value in ``[0, 1]`` (call after each optimizer step)."""
        self.grid.clamp_(0.0, 1.0)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One group, ``grid`` (what :class:`recon.train.Trainer` optimises)."""
        return {"grid": [self.grid]}

    def default_learning_rates(self) -> dict[str, float]:
        """DP-Recon's Adam learning rate of the grid (1e-2)."""
        return {"grid": 1e-2}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint_state(cls, state: dict[str, Any]) -> VisibilityGrid:
        grid = cls(state["state_dict"]["aabb"], state["resolution"])
        grid.load_state_dict(state["state_dict"])
        return grid


def transmittance_from_weights(weights: Tensor) -> Tensor:
    """Transmittance in front of each sample ``[R, S]`` from compositing weights ``[R, S]``.

    ``w_i = T_i alpha_i`` and ``prod_{j<i} (1 - alpha_j) = 1 - sum_{j<i} w_j``, so the renderer's weights
    give ``T`` exactly for any field (NeRF density, VolSDF, NeuS alphas) and occupancy skipping
    (skipped samples have zero weight and leave ``T`` unchanged).
    """
    return (1.0 - (torch.cumsum(weights, dim=-1) - weights)).clamp(0.0, 1.0)


def sample_points(
    origins: Tensor,  # [R, 3]
    directions: Tensor,  # [R, 3]
    t_starts: Tensor,  # [R, S]
    t_ends: Tensor,  # [R, S]
) -> Tensor:  # [R, S, 3]
    """Midpoints of the renderer's sample intervals."""
    t_mid = (t_starts + t_ends) * 0.5
    return origins[:, None, :] + t_mid[..., None] * directions[:, None, :]


def visibility_hinge_loss(
    grid: VisibilityGrid,
    points: Tensor,  # [R, S, 3]
    transmittance: Tensor,  # [R, S]
    min_transmittance: float = 0.01,
) -> Tensor:
    """``mean(max(T.detach() - G(x), 0))`` over the samples with ``T >= min_transmittance`` (DP-Recon's
    visibility loss; see the module docstring for the threshold)."""
    trans = transmittance.detach()
    gap = F.relu(trans - grid(points))
    keep = (trans >= min_transmittance).to(gap.dtype)
    return (gap * keep).sum() / keep.numel()


def visibility_map(
    grid: VisibilityGrid,
    weights: Tensor,  # [R, S] batched, or [N] packed with ray_indices
    points: Tensor,  # [R, S, 3] or [N, 3]
    ray_indices: Tensor | None = None,  # [N] for packed samples
    n_rays: int | None = None,
    free_space: Tensor | None = None,  # [R]
) -> Tensor:  # [R]
    """Per-pixel visibility of a render: ``min(sum_i w_i G(x_i), 1)`` (no gradient).

    ``free_space`` (:func:`free_space_visibility`): the visibility of what each ray looks through where
    the render draws nothing, added with the ray's remaining transmittance ``1 - sum_i w_i``. Without it
    (as released) an empty pixel has visibility 0 and so the largest geometry weight, whether or not the
    photos saw that space empty.
    """
    with torch.no_grad():
        w = weights.detach()
        g = grid(points) * w
        if ray_indices is None:
            vis, opacity = g.sum(dim=-1), w.sum(dim=-1)
        else:
            zeros = torch.zeros(int(n_rays), dtype=g.dtype, device=g.device)
            vis, opacity = zeros.index_add(0, ray_indices, g), zeros.index_add(0, ray_indices, w)
        if free_space is not None:
            vis = vis + (1.0 - opacity).clamp(0.0, 1.0) * free_space.to(vis)
    return vis.clamp(max=1.0)


def free_space_visibility(
    grid: VisibilityGrid,
    origins: Tensor,  # [R, 3]
    directions: Tensor,  # [R, 3]
    aabb: Tensor,  # [6]
    num_samples: int = 32,
    occupied: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:  # [R]
    """The lowest visibility ``G`` along each ray's chord through ``aabb`` (no gradient).

    What an empty pixel of an object render looks through: near 1 where every point of the chord was seen
    empty by some photo (geometry there would contradict them), low where the chord crosses space no photo
    saw (where the object may continue). ``occupied(points [N, 3]) -> bool [N]`` leaves out points inside
    other geometry (the floor, walls, other objects), which the object cannot fill and no photo sees into.
    Rays that miss the box, or whose every point is left out, get 1.
    """
    from recon.render.volume import ray_aabb_intersect, sample_intervals

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    with torch.no_grad():
        box = torch.cat([torch.maximum(aabb[:3], grid.aabb[:3]), torch.minimum(aabb[3:], grid.aabb[3:])])
        box = box.to(origins)
        t_near, t_far, hit = ray_aabb_intersect(origins, directions, box)
        t_starts, t_ends, _ = sample_intervals(t_near, torch.maximum(t_far, t_near), num_samples)
        points = sample_points(origins, directions, t_starts, t_ends)  # [R, K, 3] at the midpoints
        g = grid(points)
        if occupied is not None:
            inside = occupied(points.reshape(-1, 3)).reshape(g.shape)
            g = torch.where(inside, torch.ones_like(g), g)
        return torch.where(hit, g.amin(dim=-1), torch.ones_like(t_near)).clamp(0.0, 1.0)


def fit_visibility_grid(
    grid: VisibilityGrid,
    batches: Iterable[tuple[Tensor, Tensor]] | Callable[[int], tuple[Tensor, Tensor]],
    steps: int,
    learning_rate: float = 1e-2,
    min_transmittance: float = 0.01,
    betas: tuple[float, float] = (0.0, 0.99),
) -> list[float]:
    """Fits ``grid`` with the hinge loss on ``(points [R, S, 3], transmittance [R, S])`` batches.

    Args:
        grid: The grid (trained in place, kept in ``[0, 1]``).
        batches: An iterable of batches, or ``step -> batch``.
        steps: Optimizer steps (each moves a cell by about ``learning_rate``: at least
            ``1 / learning_rate`` steps reach a visibility of 1).
        learning_rate: Adam's learning rate (DP-Recon: 1e-2).
        min_transmittance: Samples with a lower transmittance are left out.
        betas: Adam's betas (no momentum by default).

    Returns:
        The loss of each step.
    """
    opt = torch.optim.Adam(grid.parameters(), lr=learning_rate, betas=betas)
    iterator = None if callable(batches) else iter(batches)
    losses = []
    for step in range(steps):
        points, trans = batches(step) if iterator is None else next(iterator)
        loss = visibility_hinge_loss(grid, points, trans, min_transmittance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        grid.clamp_()
        losses.append(float(loss.detach()))
    return losses


__all__ = [
    "VisibilityGrid",
    "VisibilityWeightsConfig",
    "color_weights",
    "fit_visibility_grid",
    "free_space_visibility",
    "geometry_weights",
    "sample_points",
    "transmittance_from_weights",
    "visibility_hinge_loss",
    "visibility_map",
]
