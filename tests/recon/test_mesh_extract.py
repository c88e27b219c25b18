"""Surface extraction: Gaussian opacity field, marching cubes, TSDF fusion, clean-up, simplification."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from recon.errors import UserError
from recon.mesh.analytic_scene import TexturedSphere
from recon.mesh.cleanup import clean_mesh, keep_largest_components, simplify_mesh
from recon.mesh.extract import extract_density_mesh, fuse_tsdf, grid_points
from recon.mesh.gaussian_field import (
    GaussianDensityField,
    gaussian_density,
    gaussian_density_grid,
    quaternion_to_rotation,
)
from recon.mesh.views import export_cameras, render_views

SPHERE = TexturedSphere()
SPHERE_VOLUME = 4.0 / 3.0 * math.pi * SPHERE.radius**3


def dense_gaussian_density(means, quats, scales, opacities, points):
    """Unchunked reference: full covariance inverse per Gaussian."""
    R = quaternion_to_rotation(quats)
    cov = R @ torch.diag_embed(scales**2) @ R.transpose(-1, -2)
    diff = points[:, None] - means[None]
    maha = torch.einsum("pgi,gij,pgj->pg", diff, torch.linalg.inv(cov), diff)
    return (opacities[None] * torch.exp(-0.5 * maha)).sum(-1)


def test_quaternion_to_rotation_is_orthonormal_and_matches_axis_angle():
    q = torch.tensor([[math.cos(math.pi / 4), 0.0, math.sin(math.pi / 4), 0.0]])  # 90 deg about +Y
    R = quaternion_to_rotation(q)[0]
    assert torch.allclose(R @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    qs = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    Rs = quaternion_to_rotation(qs)
    assert torch.allclose(Rs @ Rs.transpose(-1, -2), torch.eye(3).expand(16, 3, 3), atol=1e-5)


def test_gaussian_density_single_gaussian_values():
    means = torch.tensor([[0.2, -0.1, 0.3]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.tensor([[0.1, 0.2, 0.3]])
    opacity = torch.tensor([0.7])
    points = means + torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 0.3]])
    got = gaussian_density(means, quats, scales, opacity, points)
    want = 0.7 * torch.exp(torch.tensor([0.0, -0.5, -2.0, -0.5]))
    assert torch.allclose(got, want, atol=1e-6)


def test_gaussian_density_matches_dense_reference_with_tiny_chunks():
    g = torch.Generator().manual_seed(1)
    n, m = 300, 2000
    means = torch.rand(n, 3, generator=g) * 2 - 1
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.15 + 0.02
    opacities = torch.rand(n, generator=g)
    points = torch.rand(m, 3, generator=g) * 2.2 - 1.1
    want = dense_gaussian_density(means, quats, scales, opacities, points)
    got = gaussian_density(
        means, quats, scales, opacities, points, cutoff_sigmas=6.0, point_chunk=97, max_pairs=5000
    )
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    # The default 3-sigma cutoff drops at most exp(-4.5) ~ 1.1% of a Gaussian's peak per Gaussian.
    cut = gaussian_density(means, quats, scales, opacities, points)
    assert (want - cut).max() < 0.05 and (want - cut).min() > -1e-6


def test_gaussian_density_grid_splatting_matches_point_queries():
    g = torch.Generator().manual_seed(2)
    n = 400
    means = torch.rand(n, 3, generator=g) * 1.6 - 0.8
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.08 + 0.01
    scales[0] = 0.6  # one big Gaussian: its window is clipped by the grid
    opacities = torch.rand(n, generator=g)
    lo, hi, res = [-1.0, -0.9, -1.1], [1.0, 1.2, 0.9], 24
    grid = gaussian_density_grid(means, quats, scales, opacities, lo, hi, res, cutoff_sigmas=6.0)
    want = dense_gaussian_density(means, quats, scales, opacities, grid_points(lo, hi, res))
    assert grid.shape == (res, res, res)
    assert torch.allclose(grid.reshape(-1), want, atol=1e-4, rtol=1e-4)
    field = GaussianDensityField(means, quats, scales, opacities)
    default = field.sample_grid(lo, hi, res).reshape(-1)
    assert (want - default).max() < 0.05 and (want - default).min() > -1e-5  # 3-sigma cutoff only drops


def test_marching_cubes_on_analytic_sphere_volume_and_radius():
    c = np.asarray(SPHERE.center)
    mesh = extract_density_mesh(SPHERE.density, c - 1.0, c + 1.0, resolution=64, level=0.5)
    assert mesh.is_watertight
    assert abs(mesh.volume / SPHERE_VOLUME - 1) < 0.01
    radii = np.linalg.norm(mesh.vertices - c, axis=1)
    assert abs(radii.mean() - SPHERE.radius) < 0.005 and radii.std() < 0.005


def test_marching_cubes_on_gaussian_lattice_follows_the_level_set():
    s = 0.1
    axis = torch.arange(-6, 7) * s
    lattice = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    means = lattice[lattice.norm(dim=-1) <= 0.6]
    n = len(means)
    quats, scales = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.full((n, 3), 0.06)
    opacities = torch.full((n,), 0.5)
    plateau = float(gaussian_density(means, quats, scales, opacities, torch.zeros(1, 3)))
    level = 0.5 * plateau

    density = GaussianDensityField(means, quats, scales, opacities)

    mesh = extract_density_mesh(density, [-0.9] * 3, [0.9] * 3, resolution=48, level=level)
    assert mesh.is_watertight and mesh.volume > 0
    on_surface = density(torch.from_numpy(mesh.vertices).float())
    assert ((on_surface - level).abs() / level).mean() < 0.03
    radius = np.linalg.norm(mesh.vertices, axis=1).mean()
    assert 0.6 < radius < 0.7  # outermost centers at 0.6, surface about half a spacing further out


def test_marching_cubes_without_a_crossing_is_a_user_error():
    with pytest.raises(UserError, match="never crosses"):
        extract_density_mesh(lambda p: torch.zeros(len(p)), [-1] * 3, [1] * 3, resolution=8, level=0.5)


@pytest.fixture(scope="module")
def sphere_views():
    cams = export_cameras(20, center=SPHERE.center, radius=1.0, image_size=128)
    return render_views(SPHERE, cams, chunk_size=7)


def test_render_views_concatenates_chunks_and_checks_shapes(sphere_views):
    assert sphere_views.rgb.shape == (20, 128, 128, 3) and sphere_views.depth.shape == (20, 128, 128, 1)
    assert 0.1 < sphere_views.alpha.mean() < 0.9  # the object is framed, not cropped nor tiny
    with pytest.raises(ValueError, match="rgb"):
        render_views(lambda c: (torch.zeros(1, 2, 2, 3), None, None), sphere_views.cameras[:1])


def test_fuse_tsdf_sphere_volume_radius_and_colors(sphere_views):
    pytest.importorskip("open3d", reason="TSDF fusion needs open3d-cpu==0.19.0")
    mesh = clean_mesh(fuse_tsdf(sphere_views, voxel_size=2.0 / 96))
    c = np.asarray(SPHERE.center)
    assert mesh.is_watertight
    assert abs(mesh.volume / SPHERE_VOLUME - 1) < 0.03
    radii = np.linalg.norm(mesh.vertices - c, axis=1)
    assert abs(radii.mean() - SPHERE.radius) < 0.01 and radii.std() < 0.01
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    want = SPHERE.albedo(torch.from_numpy(mesh.vertices).float()).numpy()
    assert np.abs(colors - want).mean() < 0.05


def test_keep_largest_components_drops_floaters_and_clean_fills_holes():
    body = trimesh.creation.icosphere(3, radius=1.0)
    floater = trimesh.creation.icosphere(1, radius=0.05)
    floater.apply_translation([3.0, 0.0, 0.0])
    both = trimesh.util.concatenate([body, floater])
    kept = keep_largest_components(both)
    assert len(kept.faces) == len(body.faces)
    holed = body.copy()
    holed.update_faces(np.arange(1, len(holed.faces)))  # one triangle missing
    assert not holed.is_watertight
    cleaned = clean_mesh(trimesh.util.concatenate([holed, floater]))
    assert cleaned.is_watertight and len(cleaned.faces) == len(body.faces)
    assert abs(cleaned.volume - body.volume) / body.volume < 1e-3


def test_simplify_mesh_meets_the_budget_and_keeps_the_shape():
    mesh = trimesh.creation.icosphere(5, radius=1.0)  # 20480 faces
    small = simplify_mesh(mesh, 2000)
    assert len(small.faces) <= 2000 and len(small.faces) > 1500
    assert abs(small.volume / mesh.volume - 1) < 0.02
    assert simplify_mesh(small, 10_000) is small
