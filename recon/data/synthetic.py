"""Synthetic scenes and videos with known cameras: ground truth for the reconstruction tests.

:class:`TexturedBlocks` is a small still life — spheres and axis-aligned boxes inside the unit
sphere — whose albedo is a sum of random 3D sinusoids: texture at the scale SIFT detects (blobs a
few tens of pixels wide at 160 px), smooth enough for 3D Gaussians to fit. Surfaces are shaded
Lambertian (the light of :mod:`recon.data.procedural`) on a white background and ray-cast in closed
form, so every frame is exact. :func:`orbit_path` is a camera path around it (a hand-held orbit),
and :func:`write_synthetic_video` encodes the frames to a video file with PyAV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras, cameras_from_spherical
from recon.data.procedural import DEFAULT_AMBIENT, DEFAULT_LIGHT_DIR, camera_rays


@dataclass
class TexturedBlocks:
    """Spheres and boxes with a random sinusoidal albedo (deterministic for a seed)."""

    spheres: tuple[tuple[float, float, float, float], ...] = (
        (0.0, -0.05, 0.0, 0.5),
        (0.55, 0.35, -0.25, 0.28),
    )
    """``(x, y, z, radius)`` of each sphere."""
    boxes: tuple[tuple[float, float, float, float, float, float], ...] = (
        (-0.45, -0.25, 0.25, 0.28, 0.35, 0.28),
        (0.0, -0.62, 0.0, 0.8, 0.08, 0.8),
    )
    """``(x, y, z, half_x, half_y, half_z)`` of each axis-aligned box."""
    seed: int = 0
    """Seed of the texture's random frequencies and phases."""
    n_waves: int = 8
    """Sinusoids summed per color channel."""
    frequency_range: tuple[float, float] = (4.0, 10.0)
    """Angular frequency range of the sinusoids (radians per world unit)."""
    spot_cell: float = 0.15
    """Cell size of the spot noise (world units); one spot of radius 0.3-0.48 cells per cell."""
    background: float = 1.0
    """Background grey level."""
    _waves: tuple[Tensor, Tensor] = field(init=False, repr=False)
    _spots: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        dirs = torch.nn.functional.normalize(torch.randn(3, self.n_waves, 3, generator=gen), dim=-1)
        lo, hi = self.frequency_range
        freq = lo + (hi - lo) * torch.rand(3, self.n_waves, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(3, self.n_waves, generator=gen)
        self._waves = (dirs * freq, phase)
        n_spots = 4096
        offset = 2 * torch.rand(n_spots, 3, generator=gen) - 1
        radius = 0.3 + 0.18 * torch.rand(n_spots, 1, generator=gen)
        color = 0.05 + 0.9 * torch.rand(n_spots, 3, generator=gen)
        self._spots = torch.cat([offset, radius, color], dim=-1)

    @property
    def radius(self) -> float:
        """Radius (around the origin) of a sphere enclosing the scene."""
        r = [math.sqrt(x * x + y * y + z * z) + s for x, y, z, s in self.spheres]
        r += [
            math.sqrt((abs(x) + a) ** 2 + (abs(y) + b) ** 2 + (abs(z) + c) ** 2)
            for x, y, z, a, b, c in self.boxes
        ]
        return max(r)

    def albedo(self, points: Tensor) -> Tensor:
        """Color ``[..., 3]`` in [0.05, 0.95] at world points ``[..., 3]``.

        A smooth sinusoidal base under colored spots: one soft disc per cell of a jittered 3D grid
        (spot noise), the blobs SIFT detects and Gaussians fit well.
        """
        k, phase = self._waves  # [3, W, 3], [3, W]
        arg = torch.einsum("...j,cwj->...cw", points, k) + phase
        base = 0.5 + 0.25 * torch.tanh(torch.sin(arg).sum(-1) * math.sqrt(2.0 / self.n_waves))
        cell = torch.floor(points / self.spot_cell)
        key = (cell.long() * torch.tensor([73856093, 19349663, 83492791])).sum(-1) % self._spots.shape[0]
        return 0.5 * base + 0.5 * self._spots[key, 4:]

    def intersect(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest hit distance ``[...]`` (inf on a miss) and unit normal ``[..., 3]`` of each ray."""
        best = torch.full(origins.shape[:-1], float("inf"))
        normal = torch.zeros_like(origins)
        for x, y, z, r in self.spheres:
            oc = origins - torch.tensor([x, y, z])
            b = (oc * dirs).sum(-1)
            disc = b * b - ((oc * oc).sum(-1) - r * r)
            t = -b - disc.clamp_min(0).sqrt()
            t = torch.where((disc > 0) & (t > 1e-4), t, torch.full_like(t, float("inf")))
            closer = t < best
            best = torch.where(closer, t, best)
            n = (oc + t.clamp_max(1e6)[..., None] * dirs) / r
            normal = torch.where(closer[..., None], n, normal)
        for x, y, z, a, b_, c in self.boxes:
            center, half = torch.tensor([x, y, z]), torch.tensor([a, b_, c])
            inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
            t0 = (center - half - origins) * inv
            t1 = (center + half - origins) * inv
            t_near = torch.minimum(t0, t1).max(-1).values
            t_far = torch.maximum(t0, t1).min(-1).values
            t = torch.where(
                (t_near <= t_far) & (t_near > 1e-4), t_near, torch.full_like(t_near, float("inf"))
            )
            closer = t < best
            best = torch.where(closer, t, best)
            local = (origins + t.clamp_max(1e6)[..., None] * dirs - center) / half
            axis = local.abs().argmax(-1, keepdim=True)
            n = torch.zeros_like(local).scatter(-1, axis, torch.sign(local.gather(-1, axis)))
            normal = torch.where(closer[..., None], n, normal)
        return best, normal

    @torch.no_grad()
    def render(self, cameras: Cameras, supersample: int = 2) -> tuple[Tensor, Tensor]:
        """``(rgb [C, H, W, 3], alpha [C, H, W, 1])`` composited on the background, anti-aliased."""
        origins, dirs, _ = camera_rays(cameras, supersample)
        t, normal = self.intersect(origins, dirs)
        hit = torch.isfinite(t)
        points = origins + torch.where(hit, t, torch.zeros_like(t))[..., None] * dirs
        light = torch.nn.functional.normalize(torch.tensor(DEFAULT_LIGHT_DIR), dim=0)
        shade = DEFAULT_AMBIENT + (1 - DEFAULT_AMBIENT) * (normal * light).sum(-1).clamp_min(0)
        color = self.albedo(points) * shade[..., None]
        hit_f = hit.float()[..., None]
        rgb = color * hit_f + self.background * (1 - hit_f)
        pool = torch.nn.functional.avg_pool2d
        rgb = pool(rgb.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
        alpha = pool(hit_f.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
        return rgb.clamp(0, 1), alpha


def orbit_path(
    n: int,
    sweep_deg: float = 240.0,
    elevation_deg: float = 20.0,
    elevation_wobble_deg: float = 8.0,
    distance: float = 2.6,
    fov_deg: float = 45.0,
    width: int = 160,
    height: int = 120,
    static: bool = False,
) -> Cameras:
    """A hand-held orbit: ``n`` cameras looking at the origin, azimuth sweeping ``sweep_deg``.

    Args:
        n: Number of frames.
        sweep_deg: Azimuth covered from the first frame to the last.
        elevation_deg: Mean elevation.
        elevation_wobble_deg: Amplitude of a slow up-and-down motion (gives SfM a second direction).
        distance: Distance to the origin.
        fov_deg: Vertical field of view.
        width: Image width.
        height: Image height.
        static: Every frame from the first camera (a tripod shot: what SfM cannot reconstruct).

    Returns:
        The cameras, in frame order.
    """
    s = torch.linspace(0.0, 1.0, n)
    if static:
        s = torch.zeros(n)
    azimuth = -0.5 * sweep_deg + sweep_deg * s
    elevation = elevation_deg + elevation_wobble_deg * torch.sin(2 * math.pi * s)
    ones = torch.ones(n)
    return cameras_from_spherical(elevation, azimuth, distance * ones, fov_deg * ones, width, height)


def render_frames(scene: TexturedBlocks, cameras: Cameras, chunk: int = 8) -> np.ndarray:
    """Renders every camera to ``uint8 [C, H, W, 3]``."""
    out = []
    for i in range(0, len(cameras), chunk):
        rgb, _ = scene.render(cameras[list(range(i, min(i + chunk, len(cameras))))])
        out.append((rgb.numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)


def write_synthetic_video(
    path: str | Path,
    n_frames: int = 36,
    fps: int = 12,
    scene: TexturedBlocks | None = None,
    **path_kwargs,
) -> Cameras:
    """Renders the blocks along :func:`orbit_path` and encodes them to ``path``; returns the cameras."""
    from recon.data.video import write_video

    scene = scene or TexturedBlocks()
    cameras = orbit_path(n_frames, **path_kwargs)
    write_video(path, render_frames(scene, cameras), fps=fps)
    return cameras
