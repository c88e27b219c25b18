"""An analytic textured sphere with an exact render function: ground truth for the export chain.

The tests and ``bench/export.py`` use it in place of a trained scene: every pixel's color, z-depth
and alpha is computed in closed form by ray casting, so extracted geometry and baked textures can be
compared against exact values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from recon.cameras import Cameras


@dataclass
class TexturedSphere:
    """A sphere whose albedo is a smooth, asymmetric function of the surface point (unlit)."""

    center: tuple[float, float, float] = (0.1, -0.05, 0.0)
    """World-space center (off the origin, so that axis flips show up in tests)."""
    radius: float = 0.8
    """Sphere radius in world units."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Color composited behind the sphere."""
    frequency: float = 3.0
    """Spatial frequency of the color pattern, in radians per world unit."""
    _center: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._center = torch.tensor(self.center, dtype=torch.float32)

    def albedo(self, points: Tensor) -> Tensor:
        """Color ``[M, 3]`` in [0.1, 0.9] at world points ``[M, 3]`` (defined everywhere)."""
        p = (points.float() - self._center) * self.frequency
        r = 0.5 + 0.4 * torch.sin(p[:, 0] + 0.3)
        g = 0.5 + 0.4 * torch.sin(p[:, 1] * 1.3 + 1.0)
        b = 0.5 + 0.4 * torch.cos(p[:, 2] - 0.5 * p[:, 0])
        return torch.stack([r, g, b], dim=-1)

    def density(self, points: Tensor, sharpness: float = 40.0) -> Tensor:
        """A smooth occupancy ``[M]`` in (0, 1) that crosses 0.5 exactly on the surface."""
        d = (points.float() - self._center).norm(dim=-1)
        return torch.sigmoid((self.radius - d) * sharpness)

    @torch.no_grad()
    def __call__(self, cameras: Cameras) -> tuple[Tensor, Tensor, Tensor]:
        """Renders ``(rgb [C,H,W,3], z-depth [C,H,W,1], alpha [C,H,W,1])``; background depth is 0."""
        c2w = cameras.camera_to_worlds.float()
        H, W = cameras.height, cameras.width
        v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        # OpenGL camera: looks down -Z, +Y up; a direction with unit z-component has t == z-depth.
        x = (u[None] - cameras.cx[:, None, None]) / cameras.fx[:, None, None]
        y = -(v[None] - cameras.cy[:, None, None]) / cameras.fy[:, None, None]
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [C, H, W, 3]
        d = torch.einsum("cij,chwj->chwi", c2w[:, :3, :3], d_cam)
        o = (c2w[:, :3, 3] - self._center)[:, None, None, :]
        a = (d * d).sum(-1)
        b = (d * o).sum(-1)
        c = (o * o).sum(-1) - self.radius**2
        disc = b * b - a * c
        hit = (disc > 0) & (c > 0)
        t = (-b - disc.clamp_min(0).sqrt()) / a
        hit = hit & (t > 0)
        points = c2w[:, None, None, :3, 3] + t[..., None] * d
        color = self.albedo(points.reshape(-1, 3)).reshape(*points.shape)
        alpha = hit.float()[..., None]
        rgb = color * alpha + torch.tensor(self.background) * (1 - alpha)
        depth = torch.where(hit, t, torch.zeros_like(t))[..., None]
        return rgb, depth, alpha
