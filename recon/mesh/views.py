"""Cameras around an object and the renders that mesh extraction and texture baking read.

A render function is the only thing the export chain needs from a 3D scene:

``render_fn(cameras) -> (rgb [C, H, W, 3] in [0, 1], depth [C, H, W, 1], alpha [C, H, W, 1])``

where ``depth`` is the z-depth along each camera's viewing axis (expected depth, "ED": the
alpha-weighted depth divided by alpha) and ``alpha`` the accumulated opacity. Pixels with low alpha
are background; their depth is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.cameras import Cameras, cameras_from_spherical

RenderFn = Callable[[Cameras], tuple[Tensor, Tensor, Tensor]]
"""``cameras -> (rgb [C,H,W,3] in [0,1], z-depth [C,H,W,1], alpha [C,H,W,1])``."""


@dataclass
class RenderedViews:
    """Renders of a scene from ``C`` cameras, kept on the CPU in float32."""

    cameras: Cameras
    rgb: Tensor  # [C, H, W, 3] in [0, 1]
    depth: Tensor  # [C, H, W, 1] z-depth along the camera axis
    alpha: Tensor  # [C, H, W, 1] accumulated opacity

    def __len__(self) -> int:
        return len(self.cameras)


def export_cameras(
    n_views: int,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    radius: float = 1.0,
    image_size: int = 256,
    fov_deg: float = 40.0,
    elevations_deg: Sequence[float] = (-30.0, 0.0, 30.0, 60.0),
    margin: float = 1.15,
) -> Cameras:
    """Cameras on rings of several elevations, plus one from straight above and one below.

    The distance is chosen so that a sphere of ``radius * margin`` around ``center`` fills the view.

    Args:
        n_views: Total number of cameras (at least ``len(elevations_deg) + 2``).
        center: World-space center of the object.
        radius: Radius of a sphere around ``center`` that holds the whole object.
        image_size: Width and height of the square images, in pixels.
        fov_deg: Vertical field of view in degrees.
        elevations_deg: Elevations of the rings; the ring views are shared out evenly among them.
        margin: How much larger than ``radius`` the sphere that must fit in the view is.

    Returns:
        ``n_views`` cameras looking at ``center``; each ring starts at a different azimuth so that the
        rings interleave.
    """
    n_rings = len(elevations_deg)
    if n_views < n_rings + 2:
        raise ValueError(f"n_views must be at least {n_rings + 2} for {n_rings} rings, got {n_views}")
    distance = radius * margin / math.sin(math.radians(fov_deg) / 2)
    n_ring_views = n_views - 2
    per_ring = [n_ring_views // n_rings + (1 if i < n_ring_views % n_rings else 0) for i in range(n_rings)]
    elevation, azimuth = [], []
    for ring, (el, n) in enumerate(zip(elevations_deg, per_ring)):
        offset = 360.0 / max(n, 1) * ring / n_rings
        for k in range(n):
            elevation.append(el)
            azimuth.append(offset + 360.0 * k / n)
    elevation += [89.0, -89.0]  # not exactly +-90: keeps look_at's up vector well defined
    azimuth += [0.0, 0.0]
    n = len(elevation)
    return cameras_from_spherical(
        torch.tensor(elevation),
        (torch.tensor(azimuth) + 180.0) % 360.0 - 180.0,
        torch.full((n,), distance),
        torch.full((n,), fov_deg),
        image_size,
        image_size,
        target=torch.tensor([float(c) for c in center]),
    )


@torch.no_grad()
def render_views(render_fn: RenderFn, cameras: Cameras, chunk_size: int = 8) -> RenderedViews:
    """Renders ``cameras`` in chunks of ``chunk_size`` and checks the shapes the chain relies on.

    Args:
        render_fn: The scene's render function (see the module docstring).
        cameras: Cameras to render.
        chunk_size: Cameras per call of ``render_fn`` (bounds the renderer's memory).

    Returns:
        The renders, concatenated on the CPU.
    """
    rgbs, depths, alphas = [], [], []
    for start in range(0, len(cameras), chunk_size):
        chunk = cameras[start : start + chunk_size]
        rgb, depth, alpha = render_fn(chunk)
        expected = (len(chunk), cameras.height, cameras.width)
        for name, t, channels in (("rgb", rgb, 3), ("depth", depth, 1), ("alpha", alpha, 1)):
            if tuple(t.shape) != (*expected, channels):
                raise ValueError(
                    f"render_fn returned {name} of shape {tuple(t.shape)}, want {(*expected, channels)}"
                )
        rgbs.append(rgb.detach().float().cpu())
        depths.append(depth.detach().float().cpu())
        alphas.append(alpha.detach().float().cpu())
    return RenderedViews(cameras.to("cpu"), torch.cat(rgbs), torch.cat(depths), torch.cat(alphas))
