"""Space carving with a depth tolerance (``method="carve"``): exact on a sphere, carves a concavity deeper
than its margin, and keeps a surface whose rendered depth lies behind where it turns opaque (a fuzzy
Gaussian surface), which TSDF fusion eats away."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from recon.cameras import Cameras
from recon.mesh import MeshExportConfig, carve_views, export_mesh, extract_carved_mesh, grid_points
from recon.mesh.analytic_scene import TexturedSphere
from recon.mesh.views import RenderedViews, export_cameras

SPHERE = TexturedSphere()


def test_carve_export_of_a_sphere_is_the_sphere(tmp_path):
    strict = {"carve_alpha_threshold": 0.5, "carve_min_votes": 1, "carve_dilate_pixels": 0}
    config = MeshExportConfig(method="carve", center=SPHERE.center, resolution=64, max_faces=3000, **strict)
    paths = export_mesh(
        SPHERE, tmp_path, config, n_views=14, image_size=128, texture_size=256, formats=("glb",)
    )
    mesh = trimesh.load(paths["glb"], force="mesh")
    radii = np.linalg.norm(mesh.vertices - np.asarray(SPHERE.center), axis=1)
    # measured: mean radius 0.998 of the true one (a visual hull from 14 views is a polyhedron around
    # the sphere, the depth margin cuts its corners; the blur of the 0/1 grid takes about half a voxel)
    assert abs(radii.mean() / SPHERE.radius - 1) < 0.02 and radii.std() < 0.02
    assert abs(mesh.volume / (4 / 3 * math.pi * SPHERE.radius**3) - 1) < 0.06


def test_carve_defaults_keep_a_sphere_within_a_few_percent(tmp_path):
    """The export defaults (4 votes to carve, alpha 0.2, one pixel of dilation; 24 views at 256 px as
    ``sds3d export`` renders): measured mean radius 1.031 of the true one, volume 1.09."""
    config = MeshExportConfig(method="carve", center=SPHERE.center, radius=1.1, max_faces=5000, n_views=24)
    paths = export_mesh(SPHERE, tmp_path, config, image_size=256, texture_size=128, formats=("glb",))
    mesh = trimesh.load(paths["glb"], force="mesh")
    radii = np.linalg.norm(mesh.vertices - np.asarray(SPHERE.center), axis=1) / SPHERE.radius
    assert 1.0 < radii.mean() < 1.05 and radii.max() < 1.1


def _open_box() -> trimesh.Trimesh:
    """A box 1.2 wide and 0.8 tall, open at the top: floor and four walls 0.1 thick."""
    parts = [trimesh.creation.box((1.2, 0.1, 1.2), trimesh.transformations.translation_matrix((0, -0.35, 0)))]
    for axis, sign in ((0, 1), (0, -1), (2, 1), (2, -1)):
        extents = [0.1, 0.8, 1.2] if axis == 0 else [1.2, 0.8, 0.1]
        offset = [0.0, 0.0, 0.0]
        offset[axis] = sign * 0.55
        parts.append(trimesh.creation.box(extents, trimesh.transformations.translation_matrix(offset)))
    return trimesh.util.concatenate(parts)


def _in_open_box(points: np.ndarray, shrink: float = 0.0) -> np.ndarray:
    """Exactly which points lie in :func:`_open_box`'s solid (``shrink``: that far inside its faces)."""
    x, y, z = np.abs(points[:, 0]), points[:, 1], np.abs(points[:, 2])
    e = shrink
    floor = (x <= 0.6 - e) & (z <= 0.6 - e) & (y >= -0.4 + e) & (y <= -0.3 - e)
    height = (y >= -0.4 + e) & (y <= 0.4 - e)
    x_walls = (x >= 0.5 + e) & (x <= 0.6 - e) & (z <= 0.6 - e) & height
    z_walls = (z >= 0.5 + e) & (z <= 0.6 - e) & (x <= 0.6 - e) & height
    return floor | x_walls | z_walls


def _ray_cast(mesh: trimesh.Trimesh, cams: Cameras, depth_bias: float = 0.0) -> RenderedViews:
    """Exact renders of ``mesh`` (grey, alpha 1 where hit); ``depth_bias`` pushes every depth deeper."""
    h, w = cams.height, cams.width
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    depth = torch.zeros(len(cams), h, w, 1)
    alpha = torch.zeros(len(cams), h, w, 1)
    for i in range(len(cams)):
        d_cam = torch.stack(
            [(xs - cams.cx[i]) / cams.fx[i], -(ys - cams.cy[i]) / cams.fy[i], -torch.ones_like(xs)], -1
        ).reshape(-1, 3)  # OpenGL camera: -z forward; z-depth = t * |d_cam.z| with |d_cam.z| = 1
        c2w = cams.camera_to_worlds[i].double()
        dirs = (d_cam.double() @ c2w[:3, :3].T).numpy()
        origins = np.broadcast_to(c2w[:3, 3].numpy(), dirs.shape)
        loc, ray, _ = mesh.ray.intersects_location(origins, dirs, multiple_hits=False)
        t = np.zeros(len(dirs))
        t[ray] = np.einsum("ij,ij->i", loc - origins[ray], dirs[ray]) / np.einsum(
            "ij,ij->i", dirs[ray], dirs[ray]
        )
        hit = np.zeros(len(dirs), dtype=bool)
        hit[ray] = True
        depth[i, ..., 0] = torch.from_numpy(np.where(hit, t + depth_bias, 0.0).reshape(h, w)).float()
        alpha[i, ..., 0] = torch.from_numpy(hit.reshape(h, w)).float()
    return RenderedViews(cams, torch.full((len(cams), h, w, 3), 0.5), depth, alpha)


@pytest.fixture(scope="module")
def box_views() -> tuple[trimesh.Trimesh, Cameras]:
    return _open_box(), export_cameras(14, radius=1.0, image_size=64)


def _occupied(occupancy: torch.Tensor, points: np.ndarray, resolution: int) -> np.ndarray:
    """Occupancy at the grid points nearest to ``points`` (the grid spans [-1, 1]^3)."""
    idx = np.clip(np.rint((points + 1) / 2 * (resolution - 1)).astype(int), 0, resolution - 1)
    return occupancy.numpy()[idx[:, 0], idx[:, 1], idx[:, 2]] > 0.5


def test_carving_hollows_a_concavity_deeper_than_its_margin(box_views):
    box, cams = box_views
    views = _ray_cast(box, cams)
    inside = np.array(
        [[0.0, 0.0, 0.0], [0.3, 0.1, -0.3], [-0.3, 0.0, 0.2]]
    )  # in the open box, farther than the margin from a wall
    walls = np.array([[0.55, 0.0, 0.0], [0.0, -0.35, 0.0], [0.0, 0.2, -0.55]])
    hull = carve_views(views, [-1] * 3, [1] * 3, 64, depth_margin=1e9)  # no depth test: the visual hull
    assert _occupied(hull, inside, 64).all() and _occupied(hull, walls, 64).all()
    carved = carve_views(views, [-1] * 3, [1] * 3, 64, depth_margin=0.15)
    assert not _occupied(carved, inside, 64).any() and _occupied(carved, walls, 64).all()
    points = grid_points([-1] * 3, [1] * 3, 64).numpy()
    kept = carved.flatten().numpy() > 0.5
    # the solid, half a voxel in from its faces (grid points on a face are neither in nor out), is kept;
    # what is kept besides lies within the margin (+ a pixel's footprint) of a wall
    core = _in_open_box(points, shrink=1 / 63)
    assert kept[core].all()
    extra = points[kept & ~_in_open_box(points)]
    assert np.abs(trimesh.proximity.signed_distance(box, extra)).max() < 0.15 + 0.05


def test_a_surface_rendered_too_deep_stays_where_it_turns_opaque(box_views):
    """Expected depth of a fuzzy surface lies behind where it turns opaque: here every depth is 0.08 too
    deep. Carving with a margin of 0.15 keeps the walls where the silhouettes put them."""
    box, cams = box_views
    views = _ray_cast(box, cams, depth_bias=0.08)
    mesh = extract_carved_mesh(views, [-1] * 3, [1] * 3, 64, depth_margin=0.15)
    for probe, face in (([0.9, 0.0, 0.0], 0.6), ([0.0, 0.0, -0.9], -0.6)):
        axis = int(np.argmax(np.abs(probe)))
        wall = trimesh.proximity.closest_point(mesh, np.array([probe]))[0][0]
        assert abs(wall[axis] - face) < 0.04, (probe, wall)  # the outer face of the wall
    inside = _occupied(carve_views(views, [-1] * 3, [1] * 3, 64, depth_margin=0.15), np.zeros((1, 3)), 64)
    assert not inside.any()  # the box is still hollow


def test_dilating_the_silhouettes_keeps_a_part_about_a_pixel_wide():
    """A rod 0.03 wide (a chair's leg; about 0.8 pixel at 64 px) under a plate. Grid points on its axis
    project into pixels next to the ones the rod covers in many views, and are carved; one pixel of
    dilation keeps most of them (measured on a 96^3 grid: 3 of 9 axis points kept without, 7 with)."""
    plate = trimesh.creation.box((0.8, 0.1, 0.8), trimesh.transformations.translation_matrix((0, 0.3, 0)))
    rod = trimesh.creation.box(
        (0.03, 0.6, 0.03), trimesh.transformations.translation_matrix((0.3, -0.05, 0.3))
    )
    views = _ray_cast(trimesh.util.concatenate([plate, rod]), export_cameras(14, radius=1.0, image_size=64))
    axis = np.stack([np.full(9, 0.3), np.linspace(-0.3, 0.2, 9), np.full(9, 0.3)], -1)
    plain = _occupied(carve_views(views, [-1] * 3, [1] * 3, 96, depth_margin=0.3), axis, 96)
    dilated_grid = carve_views(views, [-1] * 3, [1] * 3, 96, depth_margin=0.3, dilate_pixels=1)
    dilated = _occupied(dilated_grid, axis, 96)
    assert plain.mean() < 0.5 and dilated.mean() >= 0.75
    assert _occupied(dilated_grid, np.array([[0.0, 0.3, 0.0], [-0.3, 0.3, 0.3]]), 96).all()  # the plate
    assert not _occupied(dilated_grid, np.array([[0.0, -0.2, 0.0], [-0.3, -0.2, -0.3]]), 96).any()  # below
