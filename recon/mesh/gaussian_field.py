"""The opacity field of 3D Gaussians, for marching cubes: point queries and splatting onto a grid.

``density(p) = sum_i o_i exp(-1/2 (p - mu_i)^T Sigma_i^-1 (p - mu_i))`` with ``Sigma_i = R_i S_i^2 R_i^T``
(3D Gaussian Splatting, https://arxiv.org/abs/2308.04079; used for mesh extraction by DreamGaussian,
https://arxiv.org/abs/2309.16653).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def quaternion_to_rotation(quats_wxyz: Tensor) -> Tensor:
    """Rotation matrices ``[N, 3, 3]`` from (not necessarily unit) quaternions ``[N, 4]`` (w, x, y, z)."""
    w, x, y, z = torch.nn.functional.normalize(quats_wxyz, dim=-1).unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )


@torch.no_grad()
def gaussian_density(
    means: Tensor,  # [N, 3]
    quats_wxyz: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] standard deviations (not log-scales)
    opacities: Tensor,  # [N] in [0, 1] (not logits)
    points: Tensor,  # [M, 3]
    cutoff_sigmas: float = 3.0,
    point_chunk: int = 8192,
    max_pairs: int = 4_000_000,
) -> Tensor:  # [M]
    """Opacity field of 3D Gaussians: ``sum_i o_i exp(-1/2 (p - mu_i)^T Sigma_i^-1 (p - mu_i))``.

    Points are sorted into spatial bricks of about ``point_chunk`` points and processed brick by brick;
    for each chunk only the Gaussians whose ``cutoff_sigmas`` box meets the chunk's bounding box are
    evaluated, in batches of at most ``max_pairs / point_chunk``. Memory stays ``O(max_pairs)`` whatever
    ``N`` and ``M``; time is about ``M`` times the number of Gaussians near a point.

    Args:
        means: Gaussian centers.
        quats_wxyz: Rotations as quaternions (w, x, y, z).
        scales: Per-axis standard deviations.
        opacities: Opacities in [0, 1].
        points: Query points.
        cutoff_sigmas: Contributions beyond this many standard deviations (of the largest axis) are
            dropped; ``exp(-4.5) ~ 1%`` at 3.
        point_chunk: Points per chunk.
        max_pairs: Upper bound on (point, Gaussian) pairs evaluated at once.

    Returns:
        The density at each point.
    """
    device = points.device
    means, scales, opacities = (
        means.float().to(device),
        scales.float().to(device),
        opacities.float().to(device),
    )
    # Sigma^-1 = R diag(1/s^2) R^T, so mahalanobis^2 = |diag(1/s) R^T (p - mu)|^2.
    inv_sqrt_cov = (
        quaternion_to_rotation(quats_wxyz.float().to(device)).transpose(-1, -2) / scales[:, :, None]
    )
    reach = scales.amax(dim=-1, keepdim=True) * cutoff_sigmas
    lo_g, hi_g = means - reach, means + reach
    out = torch.zeros(points.shape[0], device=device)
    if points.shape[0] == 0 or means.shape[0] == 0:
        return out
    gauss_chunk = max(1, max_pairs // point_chunk)
    # Sort the points into bricks so that each chunk is spatially compact (few Gaussians near it).
    lo = points.amin(0)
    extent = (points.amax(0) - lo).clamp_min(1e-9)
    n_bricks = max(1, round((points.shape[0] / point_chunk) ** (1 / 3)))
    cell = ((points - lo) / extent * n_bricks).long().clamp(0, n_bricks - 1)
    order = torch.argsort((cell[:, 0] * n_bricks + cell[:, 1]) * n_bricks + cell[:, 2])
    for start in range(0, points.shape[0], point_chunk):
        chunk = order[start : start + point_chunk]
        p = points[chunk].float()
        lo_p, hi_p = p.amin(0), p.amax(0)
        near = ((hi_g >= lo_p) & (lo_g <= hi_p)).all(dim=-1).nonzero().squeeze(-1)
        acc = torch.zeros(p.shape[0], device=device)
        for g0 in range(0, near.numel(), gauss_chunk):
            idx = near[g0 : g0 + gauss_chunk]
            diff = p[:, None, :] - means[idx][None]  # [P, G, 3]
            local = torch.einsum("gij,pgj->pgi", inv_sqrt_cov[idx], diff)
            acc += (opacities[idx][None] * torch.exp(-0.5 * (local * local).sum(-1))).sum(-1)
        out[chunk] = acc
    return out


@torch.no_grad()
def gaussian_density_grid(
    means: Tensor,  # [N, 3]
    quats_wxyz: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] standard deviations
    opacities: Tensor,  # [N]
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution: int,
    cutoff_sigmas: float = 3.0,
    max_pairs: int = 4_000_000,
) -> Tensor:  # [R, R, R]
    """The same field on the grid of :func:`recon.mesh.extract.grid_points`, by splatting each Gaussian.

    Each Gaussian adds its values to the grid points within ``cutoff_sigmas`` of its largest standard
    deviation (a cube window around its center), so the cost is ``N`` times the window size rather
    than ``N * R^3``. Gaussians are grouped by window size and processed in batches of at most
    ``max_pairs`` (Gaussian, grid point) pairs.

    Args:
        means: Gaussian centers.
        quats_wxyz: Rotations as quaternions (w, x, y, z).
        scales: Per-axis standard deviations.
        opacities: Opacities in [0, 1].
        bounds_min: Lower corner of the grid (its first sample).
        bounds_max: Upper corner of the grid (its last sample).
        resolution: Samples per axis ``R``.
        cutoff_sigmas: Window half-size in standard deviations of each Gaussian's largest axis.
        max_pairs: Upper bound on pairs evaluated at once (memory).

    Returns:
        Density at the grid samples, indexed ``[i, j, k]`` along x, y, z.
    """
    R = int(resolution)
    lo = torch.tensor([float(v) for v in bounds_min])
    step = (torch.tensor([float(v) for v in bounds_max]) - lo) / (R - 1)
    means, scales, opacities = means.float().cpu(), scales.float().cpu(), opacities.float().cpu()
    inv_sqrt_cov = quaternion_to_rotation(quats_wxyz.float().cpu()).transpose(-1, -2) / scales[:, :, None]
    reach = scales.amax(dim=-1) * cutoff_sigmas
    half = torch.ceil(reach / step.min()).long().clamp(0, R)  # window half-size in voxels
    center = torch.round((means - lo) / step).long()
    # Gaussians whose window misses the grid entirely contribute nothing.
    inside = ((center + half[:, None]) >= 0).all(-1) & ((center - half[:, None]) <= R - 1).all(-1)
    out = torch.zeros(R * R * R)
    for k in torch.unique(half[inside]).tolist():
        ids = (inside & (half == k)).nonzero().squeeze(-1)
        r = torch.arange(-k, k + 1)
        offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)  # [K^3, 3]
        batch = max(1, max_pairs // offsets.shape[0])
        for b0 in range(0, ids.numel(), batch):
            g = ids[b0 : b0 + batch]
            idx = center[g][:, None, :] + offsets[None]  # [B, K^3, 3]
            valid = ((idx >= 0) & (idx < R)).all(-1)
            diff = lo + idx * step - means[g][:, None, :]
            local = torch.einsum("gij,gkj->gki", inv_sqrt_cov[g], diff)
            value = opacities[g][:, None] * torch.exp(-0.5 * (local * local).sum(-1))
            flat = (idx[..., 0] * R + idx[..., 1]) * R + idx[..., 2]
            out.index_add_(0, flat[valid], value[valid])
    return out.reshape(R, R, R)


@dataclass
class GaussianDensityField:
    """A density function over 3D Gaussians that also splats onto grids (used by marching cubes)."""

    means: Tensor  # [N, 3]
    quats_wxyz: Tensor  # [N, 4]
    scales: Tensor  # [N, 3] standard deviations (exp of 3DGS log-scales)
    opacities: Tensor  # [N] in [0, 1] (sigmoid of 3DGS logits)
    cutoff_sigmas: float = 3.0
    """Contributions beyond this many standard deviations (largest axis) are dropped."""

    def __call__(self, points: Tensor) -> Tensor:
        """Density ``[M]`` at ``points [M, 3]``."""
        return gaussian_density(
            self.means, self.quats_wxyz, self.scales, self.opacities, points, cutoff_sigmas=self.cutoff_sigmas
        )

    def sample_grid(
        self, bounds_min: Sequence[float], bounds_max: Sequence[float], resolution: int
    ) -> Tensor:
        """Density ``[R, R, R]`` on the grid of :func:`recon.mesh.extract.grid_points`."""
        return gaussian_density_grid(
            self.means,
            self.quats_wxyz,
            self.scales,
            self.opacities,
            bounds_min,
            bounds_max,
            resolution,
            cutoff_sigmas=self.cutoff_sigmas,
        )
