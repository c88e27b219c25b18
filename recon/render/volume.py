"""Volume rendering of fields (NeRF density, VolSDF, NeuS) with occupancy-grid empty-space skipping.

Emission-absorption compositing (NeRF, https://arxiv.org/abs/2003.08934): along a ray,
``w_i = T_i * alpha_i`` with ``alpha_i = 1 - exp(-sigma_i * delta_i)`` and ``T_i = prod_{j<i} (1 - alpha_j)``.

Paths, chosen by the rays' device (never by whether an import or a compiled extension works —
nerfacc's first packed call starts a CUDA JIT build on a machine that has ``nvcc`` but no GPU):

* CPU: ``S`` samples per ray inside the ray's intersection with ``field.aabb`` (own torch ray-box
  code); rays that miss the box are not sampled; with an :class:`OccupancyGrid`, samples in empty
  cells are not evaluated (the occupied samples are gathered, the field runs on them only, and the
  results are scattered back with zero density elsewhere). Weights come from nerfacc's **batched**
  ``render_weight_from_density`` / ``render_weight_from_alpha`` and ``accumulate_along_rays``
  (pure torch in batched form).
* CUDA: nerfacc's ``OccGridEstimator.sampling`` (packed, constant step ``diag / num_samples``),
  packed weights and ``accumulate_along_rays`` — nerfacc, https://arxiv.org/abs/2305.04966.
* :func:`render_rays_reference`: every sample evaluated, cumprod transmittance, no nerfacc; the
  twin the tests compare the CPU path against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from recon.fields.base import FieldSample
from recon.render import RenderOutput
from recon.render.occupancy import OccupancyGrid, uniform_random

Background = Tensor | float | None


@dataclass
class RayOutput:
    """Volume-rendered rays.

    On the CPU paths the per-sample tensors are batched ``[R, S]``; on the CUDA path they are packed
    ``[N]`` with ``ray_indices``.
    """

    rgb: Tensor  # [R, 3] composited over the background
    alpha: Tensor  # [R, 1] accumulated opacity
    depth: Tensor  # [R, 1] expected ray distance t, divided by alpha (0 where nothing was hit)
    weights: Tensor  # [R, S] (or [N] packed) compositing weights
    t_starts: Tensor  # [R, S] (or [N]) interval starts
    t_ends: Tensor  # [R, S] (or [N]) interval ends
    normals: Tensor | None = None  # [R, 3] accumulated normals (weights-summed, not renormalised)
    extras: dict[str, Tensor] = field(default_factory=dict)  # name -> [R, K] accumulated extras
    ray_indices: Tensor | None = None  # [N] for the packed CUDA path
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- rays
def ray_aabb_intersect(
    origins: Tensor,  # [R, 3]
    directions: Tensor,  # [R, 3]
    aabb: Tensor,  # [6]
    near: float = 0.0,
    far: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor]:
    """Slab-method intersection of rays with a box, clipped to ``[near, far]``.

    Returns:
        ``(t_near [R], t_far [R], hit [R] bool)``; ``hit`` is false when the clipped interval is empty.
    """
    d = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    inv = 1.0 / d
    t0 = (aabb[:3] - origins) * inv  # [R, 3]
    t1 = (aabb[3:] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(near)
    t_far = torch.maximum(t0, t1).amin(dim=-1).clamp_max(far)
    return t_near, t_far, t_far > t_near


def sample_intervals(
    t_near: Tensor,  # [R]
    t_far: Tensor,  # [R]
    num_samples: int,
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``num_samples`` equal intervals per ray between ``t_near`` and ``t_far``.

    Args:
        t_near: Interval start per ray.
        t_far: Interval end per ray.
        num_samples: Intervals per ray ``S``.
        stratified: Jitter each sample uniformly inside its interval (else at its midpoint).
        generator: Random generator for the jitter.

    Returns:
        ``(t_starts [R, S], t_ends [R, S], t_samples [R, S])``.
    """
    u = torch.linspace(0.0, 1.0, num_samples + 1, device=t_near.device, dtype=t_near.dtype)
    span = (t_far - t_near)[:, None]
    edges = t_near[:, None] + span * u  # [R, S + 1]
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    if stratified:
        jitter = uniform_random(t_starts.shape, generator, t_near.device).to(t_near.dtype)
    else:
        jitter = torch.full_like(t_starts, 0.5)
    return t_starts, t_ends, t_starts + (t_ends - t_starts) * jitter


def _background(background: Background, like: Tensor) -> Tensor | None:
    if background is None:
        return None
    return torch.as_tensor(background, dtype=like.dtype, device=like.device).reshape(-1)[None].expand(1, 3)


def _values(x: Tensor, n: int) -> Tensor:  # [N] or [N, K] -> [N, K]
    return x.reshape(n, -1)


# ---------------------------------------------------------------------------------------------- rendering
def _composite_batched(
    sample: FieldSample,
    t_starts: Tensor,  # [R, S]
    t_ends: Tensor,  # [R, S]
    t_samples: Tensor,  # [R, S]
    scatter: tuple[Tensor, int] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, dict[str, Tensor]]:
    """Weights and accumulated values of batched samples; ``scatter=(flat_index, R*S)`` places packed
    samples into the ``[R, S]`` layout (zero density / alpha elsewhere)."""
    from nerfacc import accumulate_along_rays, render_weight_from_alpha, render_weight_from_density

    shape = t_starts.shape

    def full(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        n = x.shape[0] if scatter is not None else shape[0] * shape[1]
        x = x.reshape(n, -1)
        if scatter is not None:
            index, total = scatter
            x = x.new_zeros(total, x.shape[-1]).index_copy(0, index, x)
        return x.reshape(*shape, -1)  # [R, S, K]

    if sample.alpha is not None:
        weights, _ = render_weight_from_alpha(full(sample.alpha)[..., 0])
    else:
        weights, _, _ = render_weight_from_density(t_starts, t_ends, full(sample.density)[..., 0])
    rgb = accumulate_along_rays(weights, full(sample.rgb))  # [R, 3]
    opacity = accumulate_along_rays(weights, None)  # [R, 1]
    depth = accumulate_along_rays(weights, t_samples[..., None])  # [R, 1]
    normals = None if sample.normals is None else accumulate_along_rays(weights, full(sample.normals))
    extras = {k: accumulate_along_rays(weights, full(v)) for k, v in sample.extras.items()}
    return weights, rgb, opacity, depth, normals, extras


def _scatter_rows(x: Tensor, rows: Tensor, n: int) -> Tensor:  # [M, ...] -> [n, ...]
    return x.new_zeros(n, *x.shape[1:]).index_copy(0, rows, x)


def _finish_rays(
    n_rays: int,
    rows: Tensor,
    weights: Tensor,
    rgb: Tensor,
    opacity: Tensor,
    depth: Tensor,
    normals: Tensor | None,
    extras: dict[str, Tensor],
    t_starts: Tensor,
    t_ends: Tensor,
    background: Background,
    meta: dict[str, Any],
) -> RayOutput:
    full = n_rays != rows.numel()
    put = (lambda x: _scatter_rows(x, rows, n_rays)) if full else (lambda x: x)
    rgb, opacity, depth = put(rgb), put(opacity), put(depth)
    bg = _background(background, rgb)
    if bg is not None:
        rgb = rgb + (1.0 - opacity) * bg
    return RayOutput(
        rgb=rgb,
        alpha=opacity,
        depth=depth / opacity.clamp_min(1e-10),
        weights=put(weights),
        t_starts=put(t_starts),
        t_ends=put(t_ends),
        normals=None if normals is None else put(normals),
        extras={k: put(v) for k, v in extras.items()},
        meta=meta,
    )


def render_rays(
    field: nn.Module,
    origins: Tensor,  # [R, 3]
    directions: Tensor,  # [R, 3] unit length
    num_samples: int = 128,
    background: Background = 1.0,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    occupancy: OccupancyGrid | None = None,
    near: float = 0.0,
    far: float = 1e10,
) -> RayOutput:
    """Volume-renders rays through a field; the path follows ``origins.device`` (see the module docstring).

    Args:
        field: A :class:`~recon.fields.base.Field`.
        origins: Ray origins.
        directions: Unit ray directions.
        num_samples: Samples per ray across the box (CPU: per ray inside its box chord; CUDA: the
            constant step is ``box diagonal / num_samples``).
        background: RGB behind the field (a float for gray, ``[3]``), ``None`` for none (black).
        stratified: Jitter the samples (training).
        generator: Random generator for the jitter and (CPU) reproducible runs.
        occupancy: Skip samples in its empty cells (``None``: evaluate every sample in the box).
        near: Rays start at this distance.
        far: Rays end at this distance.

    Returns:
        The rendered rays.
    """
    if origins.shape != directions.shape or origins.shape[-1] != 3 or origins.dim() != 2:
        raise ValueError(
            f"origins and directions must be [R, 3], got {tuple(origins.shape)}, {tuple(directions.shape)}"
        )
    if origins.device.type == "cuda":
        return _render_rays_cuda(
            field, origins, directions, num_samples, background, stratified, occupancy, near, far
        )
    return _render_rays_cpu(
        field, origins, directions, num_samples, background, stratified, generator, occupancy, near, far
    )


def _render_rays_cpu(
    field, origins, directions, num_samples, background, stratified, generator, occupancy, near, far
) -> RayOutput:
    n_rays, S = origins.shape[0], num_samples
    aabb = field.aabb.to(origins)
    t_near, t_far, hit = ray_aabb_intersect(origins, directions, aabb, near, far)
    t_starts, t_ends, t_samples = sample_intervals(t_near, t_far, S, stratified, generator)  # [R, S]
    rows = hit.nonzero().squeeze(-1)
    o, d = origins[rows], directions[rows]
    t_starts, t_ends, t_samples = t_starts[rows], t_ends[rows], t_samples[rows]
    points = o[:, None, :] + t_samples[..., None] * d[:, None, :]  # [Rh, S, 3]
    scatter = None
    n_eval = points.shape[0] * S
    if occupancy is not None and n_eval:
        mask = occupancy.query(points, inside_box=True)  # [Rh, S]
        keep = mask.any(dim=-1)
        if not bool(keep.all()):
            rows, mask = rows[keep], mask[keep]
            o, d, points = o[keep], d[keep], points[keep]
            t_starts, t_ends, t_samples = t_starts[keep], t_ends[keep], t_samples[keep]
        index = mask.view(-1).nonzero().squeeze(-1)  # [M]
        n_eval = index.numel()
        if n_eval < mask.numel():
            scatter = (index, mask.numel())
    if rows.numel() == 0:  # nothing to evaluate: the background only
        return _empty_rays(n_rays, S, origins, background, n_eval)
    if scatter is not None:
        index = scatter[0]
        sample = field(
            points.reshape(-1, 3)[index],
            d[:, None, :].expand_as(points).reshape(-1, 3)[index],
            (t_ends - t_starts).reshape(-1)[index],
        )
    else:
        sample = field(
            points.reshape(-1, 3),
            d[:, None, :].expand_as(points).reshape(-1, 3),
            (t_ends - t_starts).reshape(-1),
        )
    weights, rgb, opacity, depth, normals, extras = _composite_batched(
        sample, t_starts, t_ends, t_samples, scatter
    )
    meta = {
        "path": "cpu",
        "n_rays": n_rays,
        "n_rays_sampled": int(rows.numel()),
        "n_samples_evaluated": n_eval,
        "num_samples": S,
    }
    return _finish_rays(
        n_rays, rows, weights, rgb, opacity, depth, normals, extras, t_starts, t_ends, background, meta
    )


def _empty_rays(
    n_rays: int, S: int, like: Tensor, background: Background, n_eval: int, path: str = "cpu"
) -> RayOutput:
    zeros = like.new_zeros(n_rays, 1)
    bg = _background(background, like)
    rgb = like.new_zeros(n_rays, 3) if bg is None else bg.expand(n_rays, 3).clone()
    flat = like.new_zeros(n_rays, S)
    meta = {
        "path": path,
        "n_rays": n_rays,
        "n_rays_sampled": 0,
        "n_samples_evaluated": n_eval,
        "num_samples": S,
    }
    return RayOutput(
        rgb=rgb, alpha=zeros, depth=zeros.clone(), weights=flat, t_starts=flat, t_ends=flat, meta=meta
    )


def _render_rays_cuda(
    field, origins, directions, num_samples, background, stratified, occupancy, near, far
) -> RayOutput:
    from nerfacc import (
        OccGridEstimator,
        accumulate_along_rays,
        render_weight_from_alpha,
        render_weight_from_density,
    )

    n_rays = origins.shape[0]
    aabb = field.aabb.to(origins)
    if occupancy is not None:
        estimator = occupancy.nerfacc_estimator()
    else:
        estimator = OccGridEstimator(roi_aabb=aabb.detach().cpu(), resolution=1, levels=1).to(origins.device)
        estimator.binaries.fill_(True)
    step = float((aabb[3:] - aabb[:3]).norm()) / num_samples
    with torch.no_grad():
        ray_indices, t_starts, t_ends = estimator.sampling(
            origins, directions, near_plane=near, far_plane=far, render_step_size=step, stratified=stratified
        )
    if ray_indices.numel() == 0:  # every ray missed the occupied cells
        return _empty_rays(n_rays, num_samples, origins, background, 0, path="cuda")
    t_mid = (t_starts + t_ends) * 0.5
    d = directions[ray_indices]
    points = origins[ray_indices] + t_mid[:, None] * d  # [N, 3]
    sample: FieldSample = field(points, d, t_ends - t_starts)
    if sample.alpha is not None:
        weights, _ = render_weight_from_alpha(
            sample.alpha.reshape(-1), ray_indices=ray_indices, n_rays=n_rays
        )
    else:
        weights, _, _ = render_weight_from_density(
            t_starts, t_ends, sample.density.reshape(-1), ray_indices=ray_indices, n_rays=n_rays
        )
    acc = lambda v: accumulate_along_rays(weights, v, ray_indices=ray_indices, n_rays=n_rays)  # noqa: E731
    n = points.shape[0]
    rgb, opacity, depth = acc(sample.rgb.reshape(n, 3)), acc(None), acc(t_mid[:, None])
    normals = None if sample.normals is None else acc(sample.normals.reshape(n, 3))
    extras = {k: acc(_values(v, n)) for k, v in sample.extras.items()}
    bg = _background(background, rgb)
    if bg is not None:
        rgb = rgb + (1.0 - opacity) * bg
    meta = {"path": "cuda", "n_rays": n_rays, "n_samples_evaluated": n, "num_samples": num_samples}
    return RayOutput(
        rgb=rgb,
        alpha=opacity,
        depth=depth / opacity.clamp_min(1e-10),
        weights=weights,
        t_starts=t_starts,
        t_ends=t_ends,
        normals=normals,
        extras=extras,
        ray_indices=ray_indices,
        meta=meta,
    )


def render_rays_reference(
    field: nn.Module,
    origins: Tensor,  # [R, 3]
    directions: Tensor,  # [R, 3]
    num_samples: int = 128,
    background: Background = 1.0,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    near: float = 0.0,
    far: float = 1e10,
) -> RayOutput:
    """Dense pure-torch twin of the CPU path: the same samples, all evaluated, cumprod transmittance.

    Rays that miss the box get zero-length intervals (so zero weight) but are still evaluated.
    Arguments as :func:`render_rays`.
    """
    n_rays, S = origins.shape[0], num_samples
    aabb = field.aabb.to(origins)
    t_near, t_far, hit = ray_aabb_intersect(origins, directions, aabb, near, far)
    t_far = torch.where(hit, t_far, t_near)
    t_starts, t_ends, t_samples = sample_intervals(t_near, t_far, S, stratified, generator)
    points = origins[:, None, :] + t_samples[..., None] * directions[:, None, :]  # [R, S, 3]
    dirs = directions[:, None, :].expand_as(points)
    sample = field(points, dirs, t_ends - t_starts)
    if sample.alpha is not None:
        alpha = sample.alpha.reshape(n_rays, S)
    else:
        alpha = 1.0 - torch.exp(-sample.density.reshape(n_rays, S) * (t_ends - t_starts))
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=-1), dim=-1)
    weights = trans * alpha  # [R, S]
    acc = lambda v: (weights[..., None] * v).sum(dim=1)  # noqa: E731
    rgb = acc(sample.rgb.reshape(n_rays, S, 3))
    opacity = weights.sum(dim=1, keepdim=True)
    depth = acc(t_samples[..., None])
    normals = None if sample.normals is None else acc(sample.normals.reshape(n_rays, S, 3))
    extras = {k: acc(v.reshape(n_rays, S, -1)) for k, v in sample.extras.items()}
    bg = _background(background, rgb)
    if bg is not None:
        rgb = rgb + (1.0 - opacity) * bg
    meta = {"path": "reference", "n_rays": n_rays, "n_samples_evaluated": n_rays * S, "num_samples": S}
    return RayOutput(
        rgb=rgb,
        alpha=opacity,
        depth=depth / opacity.clamp_min(1e-10),
        weights=weights,
        t_starts=t_starts,
        t_ends=t_ends,
        normals=normals,
        extras=extras,
        meta=meta,
    )


def render_field(
    field: nn.Module,
    cameras,  # recon.cameras.Cameras
    background: Background = 1.0,
    num_samples: int = 128,
    chunk: int = 16384,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    occupancy: OccupancyGrid | None = None,
    with_depth: bool = True,
    with_normals: bool = False,
    near: float = 0.0,
    far: float = 1e10,
) -> RenderOutput:
    """Renders a field from cameras, one ray per pixel centre (:func:`recon.data.procedural.camera_rays`).

    Args:
        field: A :class:`~recon.fields.base.Field`.
        cameras: ``C`` cameras of size ``H x W``.
        background: RGB behind the field (float, ``[3]``), ``None`` for black.
        num_samples: Samples per ray.
        chunk: Rays per :func:`render_rays` call.
        stratified: Jitter the samples.
        generator: Random generator for the jitter.
        occupancy: Empty-space skipping grid.
        with_depth: Return expected z-depth (ray depth times the ray's z per unit length).
        with_normals: Return accumulated normals when the field gives normals.
        near: Rays start at this distance.
        far: Rays end at this distance.

    Returns:
        ``RenderOutput`` with rgb ``[C, H, W, 3]``, alpha ``[C, H, W, 1]``, depth ``[C, H, W, 1]``
        (expected z, normalised by alpha as gsplat's ``ED``), normals ``[C, H, W, 3]`` or ``None``;
        ``meta`` has ``n_samples_evaluated`` and the ``path``.
    """
    from recon.data.procedural import camera_rays

    device = field.aabb.device
    origins, dirs, z_per_t = camera_rays(cameras.to(device))
    C, H, W = origins.shape[:3]
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    outs = [
        render_rays(
            field,
            o[s : s + chunk],
            d[s : s + chunk],
            num_samples,
            background,
            stratified,
            generator,
            occupancy,
            near,
            far,
        )
        for s in range(0, o.shape[0], chunk)
    ]
    rgb = torch.cat([r.rgb for r in outs]).reshape(C, H, W, 3)
    alpha = torch.cat([r.alpha for r in outs]).reshape(C, H, W, 1)
    depth = (
        torch.cat([r.depth for r in outs]).reshape(C, H, W, 1) * z_per_t[..., None] if with_depth else None
    )
    normals = None
    if with_normals and outs[0].normals is not None:
        normals = torch.cat([r.normals for r in outs]).reshape(C, H, W, 3)
    extras = {k: torch.cat([r.extras[k] for r in outs]).reshape(C, H, W, -1) for k in outs[0].extras}
    meta = {
        "path": outs[0].meta["path"],
        "n_samples_evaluated": sum(r.meta["n_samples_evaluated"] for r in outs),
        "num_samples": num_samples,
        "extras": extras,
        "n_cameras": C,
        "width": W,
        "height": H,
    }
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, meta=meta, normals=normals)


__all__ = [
    "OccupancyGrid",
    "RayOutput",
    "ray_aabb_intersect",
    "render_field",
    "render_rays",
    "render_rays_reference",
    "sample_intervals",
]
