"""Analytic renders of primitives: the project's own ground truth.

Five primitives (sphere, cube, cone, cylinder, torus) are defined by exact signed distance
functions, each fitting inside the unit sphere centred at the origin (cone, cylinder and torus have
their axis along +Y, the world's up). :func:`render_primitive` sphere-traces them for a batch of
:class:`~recon.cameras.Cameras` in plain, vectorized PyTorch and shades them Lambertian with one
fixed directional light plus ambient, on a white background, with anti-aliased coverage from
supersampling. SDFs after Inigo Quilez, https://iquilezles.org/articles/distfunctions/.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from recon.cameras import Cameras

Shape = Literal["sphere", "cube", "cone", "cylinder", "torus"]
SHAPES: tuple[str, ...] = ("sphere", "cube", "cone", "cylinder", "torus")
"""The primitives, in a fixed order (their index is a class label)."""

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (0.96, 0.50, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.15, 0.68, 0.20),
    "cyan": (0.08, 0.74, 0.80),
    "blue": (0.15, 0.25, 0.88),
    "purple": (0.55, 0.18, 0.78),
    "pink": (0.96, 0.40, 0.66),
}
"""Linear-ish RGB in [0, 1] of well-separated hues that all show on a white background."""

SPHERE_RADIUS = 0.8
CUBE_HALF_SIZE = 0.55  # corner at 0.95 from the origin
CONE_HALF_HEIGHT, CONE_RADIUS = 0.7, 0.65  # base rim at 0.955
CYLINDER_HALF_HEIGHT, CYLINDER_RADIUS = 0.7, 0.55  # rim at 0.89
TORUS_MAJOR, TORUS_MINOR = 0.6, 0.25  # outer edge at 0.85

DEFAULT_LIGHT_DIR: tuple[float, float, float] = (0.35, 0.8, 0.5)
"""World-space direction towards the light (normalized on use): above, a little front-right."""
DEFAULT_AMBIENT = 0.4
"""Shade of a surface facing away from the light (fraction of its albedo)."""


def _length2(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y)


def primitive_sdf(shape: str, points: Tensor) -> Tensor:
    """Signed distance to a primitive (negative inside); exact for every shape.

    Args:
        shape: One of :data:`SHAPES`.
        points: World points ``[..., 3]``.

    Returns:
        Distances ``[...]``.
    """
    x, y, z = points.unbind(-1)
    if shape == "sphere":
        return points.norm(dim=-1) - SPHERE_RADIUS
    if shape == "cube":
        q = points.abs() - CUBE_HALF_SIZE
        outside = q.clamp_min(0).norm(dim=-1)
        inside = q.max(dim=-1).values.clamp_max(0)
        return outside + inside
    if shape == "cylinder":
        dx = _length2(x, z) - CYLINDER_RADIUS
        dy = y.abs() - CYLINDER_HALF_HEIGHT
        return torch.maximum(dx, dy).clamp_max(0) + _length2(dx.clamp_min(0), dy.clamp_min(0))
    if shape == "torus":
        return _length2(_length2(x, z) - TORUS_MAJOR, y) - TORUS_MINOR
    if shape == "cone":
        # Capped cone (IQ's sdCappedCone) with base radius r1 at y=-h and apex (r2=0) at y=+h.
        h, r1 = CONE_HALF_HEIGHT, CONE_RADIUS
        qx, qy = _length2(x, z), y
        k2x, k2y = -r1, 2.0 * h  # (r2 - r1, 2h)
        ca_x = qx - torch.minimum(qx, torch.where(qy < 0, torch.full_like(qx, r1), torch.zeros_like(qx)))
        ca_y = qy.abs() - h
        s = ((0.0 - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)  # dot(k1 - q, k2) / |k2|^2
        s = s.clamp(0.0, 1.0)
        cb_x = qx - 0.0 + k2x * s
        cb_y = qy - h + k2y * s
        sign = torch.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
        return sign * torch.sqrt(torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _checker(points: Tensor, cells_per_unit: float = 2.5) -> Tensor:
    """A 3D checker in {0, 1} ``[...]``."""
    idx = torch.floor(points * cells_per_unit).long().sum(dim=-1)
    return (idx % 2).to(points.dtype)


def _resolve_color(color: str | tuple[float, float, float] | Tensor) -> Tensor:
    if isinstance(color, str):
        if color not in COLORS:
            raise ValueError(f"unknown color {color!r}; expected one of {tuple(COLORS)} or an RGB triple")
        color = COLORS[color]
    rgb = torch.as_tensor(color, dtype=torch.float32)
    if rgb.shape != (3,):
        raise ValueError(f"color must be an RGB triple, got shape {tuple(rgb.shape)}")
    return rgb


def camera_rays(cameras: Cameras, supersample: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """World-space rays through pixel (sub-)sample centres.

    Args:
        cameras: ``C`` cameras of size ``H x W``.
        supersample: Samples per pixel along each axis (``s x s`` per pixel, on a regular grid).

    Returns:
        ``(origins [C, H*s, W*s, 3], directions [C, H*s, W*s, 3] unit length,
        z_per_t [C, H*s, W*s])`` where ``z_per_t`` converts a ray distance into z-depth.
    """
    s = supersample
    H, W = cameras.height * s, cameras.width * s
    dev = cameras.device
    v, u = torch.meshgrid(
        (torch.arange(H, device=dev, dtype=torch.float32) + 0.5) / s,
        (torch.arange(W, device=dev, dtype=torch.float32) + 0.5) / s,
        indexing="ij",
    )
    fx, fy = cameras.fx.float()[:, None, None], cameras.fy.float()[:, None, None]
    cx, cy = cameras.cx.float()[:, None, None], cameras.cy.float()[:, None, None]
    d_cam = torch.stack(
        [(u - cx) / fx, -(v - cy) / fy, -torch.ones_like((u - cx) / fx)], dim=-1
    )  # OpenGL: looks down -Z, +Y up
    norm = d_cam.norm(dim=-1)
    rot = cameras.camera_to_worlds[:, :3, :3].float()
    dirs = torch.einsum("cij,chwj->chwi", rot, d_cam) / norm[..., None]
    origins = cameras.camera_to_worlds[:, None, None, :3, 3].float().expand_as(dirs)
    return origins, dirs, 1.0 / norm


def _sdf_normals(sdf: Callable[[Tensor], Tensor], points: Tensor, eps: float = 1e-3) -> Tensor:
    """Unit normals ``[..., 3]`` of ``sdf`` at ``points [..., 3]`` by central differences."""
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    grads = [sdf(points + offsets[i]) - sdf(points - offsets[i]) for i in range(3)]
    return torch.nn.functional.normalize(torch.stack(grads, dim=-1), dim=-1)


def _normals(shape: str, points: Tensor, eps: float = 1e-3) -> Tensor:
    return _sdf_normals(lambda p: primitive_sdf(shape, p), points, eps)


def _unit_sphere_interval(origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where rays ``[..., 3]`` cross the unit sphere: ``(crosses [...] bool, t_near [...], t_far [...])``.

    ``t_near`` is clamped to 0 for rays that start inside the sphere.
    """
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - 1.0
    disc = b * b - c
    inside_bound = disc > 0
    sq = disc.clamp_min(0).sqrt()
    t = (-b - sq).clamp_min(0.0)
    t_far = -b + sq
    return inside_bound, t, t_far


def _box_pool(x: Tensor, supersample: int) -> Tensor:
    """Box-filters supersampled maps ``[C, H*s, W*s, K] -> [C, H, W, K]``."""
    if supersample == 1:
        return x
    x = x.permute(0, 3, 1, 2)
    x = torch.nn.functional.avg_pool2d(x, supersample)
    return x.permute(0, 2, 3, 1)


def _sphere_trace(
    sdf: Callable[[Tensor], Tensor],
    origins: Tensor,  # [..., 3]
    dirs: Tensor,  # [..., 3]
    t: Tensor,  # [...] start distances
    t_far: Tensor,  # [...]
    active: Tensor,  # [...] bool
    max_steps: int,
    eps: float,
) -> Tensor:
    """Marches rays by ``sdf`` (``[N, 3] -> [N]``, 1-Lipschitz), only those still in flight.

    Converged and escaped rays are dropped from the working set; returns the ray distances ``[...]``.
    """
    t = t.clone()
    flat_t, flat_far = t.view(-1), t_far.reshape(-1)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    idx = active.reshape(-1).nonzero().squeeze(-1)
    ray_t = flat_t[idx]
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        dist = sdf(o[idx] + ray_t[:, None] * d[idx])
        ray_t = ray_t + dist
        keep = (dist.abs() > eps * (1.0 + ray_t)) & (ray_t < flat_far[idx])
        flat_t[idx] = ray_t
        idx, ray_t = idx[keep], ray_t[keep]
    return flat_t.view_as(t)


def render_primitive(
    shape: str,
    color: str | tuple[float, float, float] | Tensor,
    cameras: Cameras,
    *,
    light_dir: tuple[float, float, float] = DEFAULT_LIGHT_DIR,
    ambient: float = DEFAULT_AMBIENT,
    texture: Literal["checker"] | None = None,
    supersample: int = 2,
    max_steps: int = 64,
    background: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sphere-traces one primitive for a batch of cameras.

    The shade of a surface point with unit normal ``n`` is
    ``albedo * (ambient + (1 - ambient) * max(0, n . l))`` with ``l`` the normalized ``light_dir``.

    Args:
        shape: One of :data:`SHAPES`.
        color: A name in :data:`COLORS` or an RGB triple in [0, 1] (the albedo).
        cameras: ``C`` cameras of size ``H x W``.
        light_dir: World-space direction towards the light.
        ambient: Fraction of the albedo seen on surfaces facing away from the light.
        texture: ``"checker"`` modulates the albedo by a 3D checker (``albedo * (0.55 + 0.45 * c)``).
        supersample: Samples per pixel along each axis; coverage and colors are box-filtered.
        max_steps: Sphere-tracing iterations.
        background: Background grey level (1 = white).

    Returns:
        ``(rgb [C, H, W, 3], alpha [C, H, W, 1], depth [C, H, W, 1])``: colors composited on the
        background, anti-aliased coverage, and z-depth along the camera axis averaged over the
        covered samples (0 where empty).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    albedo = _resolve_color(color).to(cameras.device)
    origins, dirs, z_per_t = camera_rays(cameras, supersample)

    # Start at the bounding sphere (radius 1) and stop past it.
    inside_bound, t, t_far = _unit_sphere_interval(origins, dirs)
    eps = 1e-4
    sdf = lambda p: primitive_sdf(shape, p)  # noqa: E731
    t = _sphere_trace(sdf, origins, dirs, t, t_far, inside_bound, max_steps, eps)
    points = origins + t[..., None] * dirs
    d = primitive_sdf(shape, points)
    hit = inside_bound & (d.abs() < 1e-3 + eps * t) & (t < t_far + 1e-3)

    normals = _normals(shape, points)
    light = torch.nn.functional.normalize(torch.as_tensor(light_dir, dtype=torch.float32), dim=0)
    lambert = (normals * light.to(normals)).sum(-1).clamp_min(0.0)
    shade = ambient + (1.0 - ambient) * lambert
    surface = albedo * shade[..., None]
    if texture == "checker":
        surface = surface * (0.55 + 0.45 * _checker(points))[..., None]
    elif texture is not None:
        raise ValueError(f"unknown texture {texture!r}; expected 'checker' or None")

    hit_f = hit.float()[..., None]
    depth = (t * z_per_t)[..., None] * hit_f

    alpha = _box_pool(hit_f, supersample)
    color_sum = _box_pool(surface * hit_f, supersample)
    depth_sum = _box_pool(depth, supersample)
    rgb = (color_sum + (1.0 - alpha) * background).clamp(0.0, 1.0)
    depth_out = torch.where(alpha > 0, depth_sum / alpha.clamp_min(1e-8), torch.zeros_like(depth_sum))
    return rgb, alpha, depth_out


def projected_sphere_area(radius: float, distance: float, focal: float) -> float:
    """Pixel area of a sphere's silhouette for a pinhole camera looking at its centre.

    The silhouette is a disc of radius ``focal * tan(asin(r / d)) = focal * r / sqrt(d^2 - r^2)``.
    """
    rho = focal * radius / math.sqrt(distance * distance - radius * radius)
    return math.pi * rho * rho


def caption(shape: str, color: str, view_word: str | None = None) -> str:
    """The text prompt of a render: ``"a red cube"``, ``"an orange cone"`` or ``"a red cube, front view"``."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of {tuple(COLORS)}")
    article = "an" if color[0] in "aeiou" else "a"
    text = f"{article} {color} {shape}"
    return text if view_word is None else f"{text}, {view_word}"
