"""Surface extraction: TSDF fusion of rendered depth (open3d) and marching cubes on a density field.

* TSDF fusion (Curless & Levoy 1996, https://doi.org/10.1145/237170.237269) integrates the z-depth and
  color of many rendered views into a truncated signed distance volume and extracts its zero level
  set. It needs only a render function, so it works for Gaussians and NeRFs alike.
* Marching cubes (Lorensen & Cline 1987, https://doi.org/10.1145/37402.37422) on a sampled density
  field, e.g. the opacity field of 3D Gaussians (as DreamGaussian, https://arxiv.org/abs/2309.16653).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import trimesh
from torch import Tensor

from recon.cameras import project_points
from recon.errors import UserError
from recon.mesh.views import RenderedViews

DensityFn = Callable[[Tensor], Tensor]
"""``points [M, 3] -> density [M]``."""

OPEN3D_INSTALL_HINT = "pip install open3d-cpu==0.19.0  (0.20 needs the system library libusb-1.0-0)"


def grid_points(bounds_min: Sequence[float], bounds_max: Sequence[float], resolution: int) -> Tensor:
    """Points ``[R^3, 3]`` of a ``resolution^3`` grid spanning the box, ordered x-major (i, j, k)."""
    axes = [torch.linspace(float(lo), float(hi), resolution) for lo, hi in zip(bounds_min, bounds_max)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def extract_density_mesh(
    density_fn: DensityFn,
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution: int = 128,
    level: float = 0.5,
    chunk_size: int = 65536,
) -> trimesh.Trimesh:
    """Marching cubes on ``density_fn`` sampled on a ``resolution^3`` grid inside the box.

    The grid is padded with zero density, so a surface that reaches the box is closed at its faces.

    Args:
        density_fn: ``points [M, 3] -> density [M]``; higher inside the object. If it also has a
            ``sample_grid(bounds_min, bounds_max, resolution) -> [R, R, R]`` method (as
            :class:`~recon.mesh.gaussian_field.GaussianDensityField`), that is used instead.
        bounds_min: Lower corner of the box, world units.
        bounds_max: Upper corner of the box.
        resolution: Samples per axis.
        level: Iso level of the surface.
        chunk_size: Points per call of ``density_fn``.

    Returns:
        The iso-surface, normals pointing outwards (towards lower density).

    Raises:
        UserError: if the field never crosses ``level`` inside the box.
    """
    if hasattr(density_fn, "sample_grid"):  # e.g. GaussianDensityField: splats onto the grid, much faster
        values = density_fn.sample_grid(bounds_min, bounds_max, resolution).float().cpu()
    else:
        points = grid_points(bounds_min, bounds_max, resolution)
        values = torch.cat(
            [density_fn(points[s : s + chunk_size]).float().cpu() for s in range(0, len(points), chunk_size)]
        )
    volume = np.pad(values.reshape(resolution, resolution, resolution).numpy(), 1, constant_values=0.0)
    if not volume.min() < level < volume.max():
        raise UserError(
            f"the density field never crosses level {level} in the box (range {volume.min():.3g}.."
            f"{volume.max():.3g}); lower density_level or enlarge the bounds"
        )
    return _iso_surface(volume, bounds_min, bounds_max, resolution, level)


def _iso_surface(
    volume: np.ndarray,
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution: int,
    level: float,
) -> trimesh.Trimesh:
    """Marching cubes on a grid padded by one voxel (``resolution`` samples per axis inside the box)."""
    from skimage.measure import marching_cubes

    lo = np.asarray(bounds_min, dtype=np.float64)
    step = (np.asarray(bounds_max, dtype=np.float64) - lo) / (resolution - 1)
    verts, faces, _, _ = marching_cubes(volume, level=level, spacing=tuple(step), gradient_direction="ascent")
    verts = verts - step + lo  # undo the one-voxel pad
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if mesh.is_watertight and mesh.volume < 0:  # "ascent" gives outward normals here; guard anyway
        mesh.invert()
    return mesh


@torch.no_grad()
def carve_views(
    views: RenderedViews,
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution: int = 128,
    alpha_threshold: float = 0.5,
    depth_margin: float = 0.15,
    min_votes: int = 1,
    dilate_pixels: int = 0,
    point_chunk: int = 1 << 18,
) -> Tensor:
    """Occupancy ``[R, R, R]`` (1 inside) of space carving with a depth tolerance.

    A grid point is carved (free) in a view that sees it when it projects outside the view's silhouette
    (``alpha < alpha_threshold``) or more than ``depth_margin`` in front of the view's rendered depth;
    it is kept when fewer than ``min_votes`` views carve it. With an infinite margin this is the visual
    hull (Laurentini 1994, https://doi.org/10.1109/34.273735); the margin carves concavities deeper than
    it (a mug's inside) while a fuzzy surface, whose expected depth lies behind where it turns opaque,
    is not eaten away as it is by TSDF fusion, where any view that sees a point in front of its depth
    marks it free.

    Args:
        views: Rendered views (cameras, rgb, z-depth, alpha).
        bounds_min: Lower corner of the box, world units.
        bounds_max: Upper corner of the box.
        resolution: Samples per axis.
        alpha_threshold: Pixels with lower alpha are outside the silhouette.
        depth_margin: How far in front of a view's depth a point may lie and stay, world units.
        min_votes: Views that must carve a point to remove it (2+ tolerates one view's stray hole).
        dilate_pixels: Grow each view's alpha by this many pixels (max filter) first, so that a part one
            pixel wide (a chair's leg) covers the grid points next to it.
        point_chunk: Grid points projected at once.

    Returns:
        The occupancy on ``grid_points(bounds_min, bounds_max, resolution)``, float 0/1.
    """
    points = grid_points(bounds_min, bounds_max, resolution)
    cams = views.cameras
    viewmats, ks = cams.viewmats().float(), cams.Ks().float()  # OpenCV: z forward, y down
    alpha, depth = views.alpha[..., 0].float(), views.depth[..., 0].float()
    if dilate_pixels > 0:
        k = 2 * dilate_pixels + 1
        alpha = torch.nn.functional.max_pool2d(alpha[:, None], k, stride=1, padding=dilate_pixels)[:, 0]
    height, width = cams.height, cams.width
    votes = torch.zeros(len(points), dtype=torch.int32)
    for start in range(0, len(points), point_chunk):
        p = points[start : start + point_chunk]
        carved = torch.zeros(len(p), dtype=torch.int32)
        for j in range(len(cams)):
            uv, z, seen = project_points(p, viewmats[j], ks[j], width, height)
            u = uv[:, 0].floor().long().clamp(0, width - 1)
            v = uv[:, 1].floor().long().clamp(0, height - 1)
            a, d = alpha[j, v, u], depth[j, v, u]
            outside = a < alpha_threshold
            in_front = torch.isfinite(d) & (z < d - depth_margin)
            carved += (seen & (outside | in_front)).to(torch.int32)
        votes[start : start + point_chunk] = carved
    return (votes < min_votes).float().reshape(resolution, resolution, resolution)


def smooth_volume(volume: Tensor, sigma_voxels: float) -> Tensor:
    """``volume [R, R, R]`` blurred by a separable Gaussian of ``sigma_voxels`` (zero outside)."""
    if sigma_voxels <= 0:
        return volume
    radius = max(1, int(3 * sigma_voxels + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma_voxels) ** 2)
    kernel = kernel / kernel.sum()
    out = volume[None, None].float()
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(kernel)
        padding = [0, 0, 0]
        padding[axis] = radius
        out = torch.nn.functional.conv3d(out, kernel.reshape(shape), padding=tuple(padding))
    return out[0, 0]


@torch.no_grad()
def extract_carved_mesh(
    views: RenderedViews,
    bounds_min: Sequence[float],
    bounds_max: Sequence[float],
    resolution: int = 128,
    alpha_threshold: float = 0.5,
    depth_margin: float = 0.15,
    min_votes: int = 1,
    smooth_voxels: float = 0.8,
    dilate_pixels: int = 0,
) -> trimesh.Trimesh:
    """The surface of :func:`carve_views`' occupancy, smoothed by ``smooth_voxels`` (marching cubes at 0.5).

    Raises:
        UserError: if nothing is left after carving (the views do not see the object in the box).
    """
    occupancy = carve_views(
        views, bounds_min, bounds_max, resolution, alpha_threshold, depth_margin, min_votes, dilate_pixels
    )
    volume = np.pad(smooth_volume(occupancy, smooth_voxels).numpy(), 1, constant_values=0.0)
    if not volume.max() > 0.5:
        raise UserError(
            "space carving left nothing: check that the views see the object (alpha > "
            f"{alpha_threshold}) inside the box and that the voxels are small next to it"
        )
    return _iso_surface(volume, bounds_min, bounds_max, resolution, 0.5)


def fuse_tsdf(
    views: RenderedViews,
    voxel_size: float,
    sdf_trunc: float | None = None,
    alpha_threshold: float = 0.5,
    depth_max: float = 100.0,
) -> trimesh.Trimesh:
    """TSDF fusion of rendered z-depth and color with open3d's ``ScalableTSDFVolume``.

    Pixels with ``alpha < alpha_threshold`` carry no depth. open3d's pixel grid puts pixel centers at
    integers while :class:`~recon.cameras.Cameras` puts them at ``i + 0.5``; the principal point is
    shifted by half a pixel to match.

    Args:
        views: Rendered views (cameras, rgb, z-depth, alpha).
        voxel_size: Edge length of a voxel, world units.
        sdf_trunc: Truncation distance of the signed distance; ``4 * voxel_size`` when None.
        alpha_threshold: Minimum alpha of a pixel whose depth is fused.
        depth_max: Depths beyond this are ignored.

    Returns:
        The fused surface with per-vertex colors (uint8 RGBA in ``visual.vertex_colors``).

    Raises:
        UserError: if open3d is not installed or nothing was fused.
    """
    try:
        import open3d as o3d
    except ImportError as e:  # the chain's only open3d use; marching cubes works without it
        raise UserError(f"TSDF fusion needs open3d ({e}); install it: {OPEN3D_INSTALL_HINT}") from e
    integration = o3d.pipelines.integration
    volume = integration.ScalableTSDFVolume(
        voxel_length=float(voxel_size),
        sdf_trunc=float(sdf_trunc if sdf_trunc is not None else 4 * voxel_size),
        color_type=integration.TSDFVolumeColorType.RGB8,
    )
    cams = views.cameras
    viewmats = cams.viewmats().double().numpy()
    # All tensor work before the open3d loop: interleaving torch's and open3d's thread pools on few
    # cores makes both wait on each other's spinning workers.
    depths = views.depth[..., 0].clone()
    depths[(views.alpha[..., 0] < alpha_threshold) | ~torch.isfinite(depths)] = 0.0
    depths = depths.numpy().astype(np.float32)
    colors = (views.rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    for i in range(len(views)):
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(colors[i])),
            o3d.geometry.Image(np.ascontiguousarray(depths[i])),
            depth_scale=1.0,
            depth_trunc=float(depth_max),
            convert_rgb_to_intensity=False,
        )
        intrinsic = o3d.camera.PinholeCameraIntrinsic(
            cams.width,
            cams.height,
            float(cams.fx[i]),
            float(cams.fy[i]),
            float(cams.cx[i]) - 0.5,
            float(cams.cy[i]) - 0.5,
        )
        volume.integrate(rgbd, intrinsic, viewmats[i])
    o3d_mesh = volume.extract_triangle_mesh()
    if len(o3d_mesh.triangles) == 0:
        raise UserError(
            "TSDF fusion produced an empty mesh: check that the views see the object (alpha > "
            f"{alpha_threshold}) and that voxel_size ({voxel_size}) is small next to the object"
        )
    colors = (np.asarray(o3d_mesh.vertex_colors) * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return trimesh.Trimesh(
        vertices=np.asarray(o3d_mesh.vertices),
        faces=np.asarray(o3d_mesh.triangles),
        vertex_colors=colors,
        process=True,
    )
