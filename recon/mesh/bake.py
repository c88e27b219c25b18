"""Texture baking: project every texel's surface point into rendered views and average what is seen.

For each texel covered by the UV layout we know a 3D position and normal (:mod:`recon.mesh.raster`).
Each view contributes the color at the texel's projection if the texel is visible there (in the
image, in front of the camera, on the rendered object, and not behind the rendered depth by more than a
tolerance), weighted by ``cos(normal, direction to the camera) ** angle_power``. Texels no view saw
take the color of the nearest seen texel in 3D; finally colors are dilated into the empty texels
around every chart so that bilinear filtering and mipmaps never mix in background at UV seams.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor
from tqdm.auto import tqdm

from recon.mesh.raster import interpolate_attribute, rasterize_uv
from recon.mesh.uv import UVMesh
from recon.mesh.views import RenderedViews

log = logging.getLogger(__name__)


@dataclass
class BakedTexture:
    """A baked texture and where its colors came from."""

    image: np.ndarray  # [S, S, 3] float32 in [0, 1]; row 0 is the top (v = 1)
    covered: np.ndarray  # [S, S] bool: texel center inside a triangle of the UV layout
    seen: np.ndarray  # [S, S] bool: covered and visible in at least one view

    @property
    def seen_fraction(self) -> float:
        """Fraction of covered texels that some view saw."""
        return float(self.seen.sum() / max(self.covered.sum(), 1))


def _sample(image: Tensor, u: Tensor, v: Tensor, mode: str) -> Tensor:
    """Samples ``image [H, W, K]`` at pixel coordinates ``(u, v)`` (centers at ``i + 0.5``) -> ``[T, K]``."""
    H, W = image.shape[:2]
    grid = torch.stack([u / W * 2 - 1, v / H * 2 - 1], dim=-1)[None, None]  # [1, 1, T, 2]
    out = F.grid_sample(
        image.permute(2, 0, 1)[None], grid, mode=mode, padding_mode="border", align_corners=False
    )
    return out[0, :, 0].T


def dilate_texture(image: np.ndarray, filled: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Grows filled texels into empty neighbours, one ring per iteration (mean of filled 3x3 neighbours).

    Args:
        image: ``[S, S, 3]`` colors.
        filled: ``[S, S]`` bool, texels that hold a color.
        iterations: Rings to grow.

    Returns:
        The dilated image and the new filled mask.
    """
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    mask = torch.from_numpy(filled)[None, None].float()
    kernel = torch.ones(1, 1, 3, 3)
    for _ in range(iterations):
        count = F.conv2d(mask, kernel, padding=1)
        sums = F.conv2d(rgb * mask, kernel.repeat(3, 1, 1, 1), padding=1, groups=3)
        grow = (mask == 0) & (count > 0)
        if not grow.any():
            break
        rgb = torch.where(grow, sums / count.clamp_min(1), rgb)
        mask = torch.where(grow, torch.ones_like(mask), mask)
    return rgb[0].permute(1, 2, 0).numpy(), mask[0, 0].numpy() > 0


@torch.no_grad()
def bake_texture(
    mesh: UVMesh,
    views: RenderedViews,
    texture_size: int = 1024,
    depth_tolerance: float = 0.02,
    alpha_threshold: float = 0.9,
    angle_power: float = 2.0,
    min_cos: float = 0.1,
    padding_iterations: int = 8,
) -> BakedTexture:
    """Bakes the rendered colors of ``views`` into a texture for ``mesh``'s UV layout.

    Args:
        mesh: Mesh with UVs (see :func:`recon.mesh.uv.unwrap_uv`).
        views: Rendered views of the scene the mesh was extracted from.
        texture_size: Side of the square texture, in texels.
        depth_tolerance: How far, in world units, a texel may lie behind the rendered depth of a view
            and still count as visible there (texels in front of it always do).
        alpha_threshold: Smallest rendered alpha (bilinear, so it also drops silhouette pixels) at a
            texel's projection for the texel to count as visible.
        angle_power: Exponent of the cosine view weight; larger favours head-on views.
        min_cos: Views seeing a texel at a more grazing angle than this cosine are ignored.
        padding_iterations: Texel rings of dilation around every chart.

    Returns:
        The texture, with masks of covered and seen texels.
    """
    face_index, bary = rasterize_uv(mesh.uvs, mesh.faces, texture_size)
    covered = face_index >= 0
    positions = torch.from_numpy(interpolate_attribute(face_index, bary, mesh.faces, mesh.vertices))
    normals = F.normalize(
        torch.from_numpy(interpolate_attribute(face_index, bary, mesh.faces, mesh.vertex_normals)), dim=-1
    )
    n_texels = positions.shape[0]
    color_sum = torch.zeros(n_texels, 3)
    weight_sum = torch.zeros(n_texels)
    cams = views.cameras
    viewmats = cams.viewmats().float()
    for i in tqdm(range(len(views)), desc="bake texture", leave=False):
        # Cull texels facing away first: about half the work of each view.
        cos = (normals * F.normalize(cams.camera_centers[i].float() - positions, dim=-1)).sum(-1)
        idx = (cos > min_cos).nonzero().squeeze(-1)
        cam_points = positions[idx] @ viewmats[i, :3, :3].T + viewmats[i, :3, 3]
        z = cam_points[:, 2]
        u = cams.fx[i] * cam_points[:, 0] / z.clamp_min(1e-8) + cams.cx[i]
        v = cams.fy[i] * cam_points[:, 1] / z.clamp_min(1e-8) + cams.cy[i]
        ok = (z > 1e-6) & (u >= 0) & (u < cams.width) & (v >= 0) & (v < cams.height)
        idx, ui, vi, zi = idx[ok], u[ok], v[ok], z[ok]
        if idx.numel() == 0:
            continue
        depth = _sample(views.depth[i], ui, vi, "nearest")[:, 0]
        alpha = _sample(views.alpha[i], ui, vi, "bilinear")[:, 0]
        # Occlusion is one-sided: a texel in front of the rendered surface hides nothing behind it (an
        # iso-surface of a Gaussian field lies a little outside the rendered expected depth).
        visible = (alpha >= alpha_threshold) & (zi - depth <= depth_tolerance)
        idx, ui, vi = idx[visible], ui[visible], vi[visible]
        weight = cos[idx] ** angle_power
        color_sum.index_add_(0, idx, _sample(views.rgb[i], ui, vi, "bilinear") * weight[:, None])
        weight_sum.index_add_(0, idx, weight)
    seen_texels = weight_sum > 0
    colors = color_sum / weight_sum.clamp_min(1e-12)[:, None]
    if seen_texels.any() and not seen_texels.all():
        tree = cKDTree(positions[seen_texels].numpy())
        _, nearest = tree.query(positions[~seen_texels].numpy())
        colors[~seen_texels] = colors[seen_texels][torch.from_numpy(nearest)]
    elif not seen_texels.any():
        log.warning("no view saw the mesh: the texture is flat grey; check the cameras and depth_tolerance")
        colors[:] = 0.5
    image = np.zeros((texture_size, texture_size, 3), dtype=np.float32)
    image[covered] = colors.clamp(0, 1).numpy()
    seen = np.zeros_like(covered)
    seen[covered] = seen_texels.numpy()
    image, filled = dilate_texture(image, covered, padding_iterations)
    if covered.any():
        image[~filled] = image[covered].mean(axis=0)  # far from any chart: a neutral fill, never black
    log.info(
        "baked %d texels from %d views; %.1f%% seen",
        n_texels,
        len(views),
        100 * seen.sum() / max(n_texels, 1),
    )
    return BakedTexture(image=np.clip(image, 0, 1), covered=covered, seen=seen)
