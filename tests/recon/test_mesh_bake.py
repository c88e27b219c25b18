"""UV rasterization, xatlas unwrapping and texture baking against an analytic textured sphere."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from recon.mesh.analytic_scene import TexturedSphere
from recon.mesh.bake import bake_texture, dilate_texture
from recon.mesh.raster import interpolate_attribute, rasterize_uv
from recon.mesh.uv import unwrap_uv
from recon.mesh.views import export_cameras, render_views

SPHERE = TexturedSphere()
TEXTURE = 256


def sphere_mesh(subdivisions: int = 4) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions, radius=SPHERE.radius)
    mesh.apply_translation(SPHERE.center)
    return mesh


def analytic_color_at(points: np.ndarray) -> np.ndarray:
    """Albedo at the points pushed radially onto the exact sphere (the mesh is a polygonal approximation)."""
    c = np.asarray(SPHERE.center)
    on_sphere = c + (points - c) / np.linalg.norm(points - c, axis=1, keepdims=True) * SPHERE.radius
    return SPHERE.albedo(torch.from_numpy(on_sphere).float()).numpy()


def test_rasterize_uv_covers_the_square_once_with_exact_barycentrics():
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    face_index, bary = rasterize_uv(uvs, faces, 16, max_candidates=37)  # tiny chunks on purpose
    assert (face_index >= 0).all()
    assert np.allclose(bary.sum(-1), 1.0, atol=1e-6)
    # Row 0 is the top of the image = v near 1; the lower-left triangle 0 is at the bottom-left.
    assert face_index[-1, 0] == 0 and face_index[0, -1] == 1
    uv_at_texels = interpolate_attribute(face_index, bary, faces, uvs)
    rows, cols = np.nonzero(face_index >= 0)
    want = np.stack([(cols + 0.5) / 16, 1 - (rows + 0.5) / 16], axis=-1)
    assert np.allclose(uv_at_texels, want, atol=1e-6)
    half, _ = rasterize_uv(uvs, faces[:1], 64)
    assert abs((half >= 0).mean() - 0.5) < 0.01


def test_unwrap_uv_decimates_to_budget_and_keeps_uvs_in_unit_square():
    uv_mesh = unwrap_uv(sphere_mesh(4), texture_size=TEXTURE, max_faces=1500)
    assert len(uv_mesh.faces) <= 1500
    assert uv_mesh.uvs.min() >= 0.0 and uv_mesh.uvs.max() <= 1.0
    assert uv_mesh.uvs.shape == (len(uv_mesh.vertices), 2)
    assert np.allclose(np.linalg.norm(uv_mesh.vertex_normals, axis=1), 1.0, atol=1e-3)
    face_index, _ = rasterize_uv(uv_mesh.uvs, uv_mesh.faces, TEXTURE)
    assert (face_index >= 0).mean() > 0.4  # charts are packed, not scattered specks
    # xatlas charts do not overlap: UV area of the faces ~ covered texel area.
    uv3 = np.concatenate([uv_mesh.uvs, np.zeros((len(uv_mesh.uvs), 1))], axis=1)
    uv_area = trimesh.triangles.area(uv3[uv_mesh.faces]).sum()
    assert abs(uv_area - (face_index >= 0).mean()) < 0.03


@pytest.fixture(scope="module")
def unwrapped():
    return unwrap_uv(sphere_mesh(4), texture_size=TEXTURE, max_faces=3000)


@pytest.fixture(scope="module")
def all_round_views():
    return render_views(SPHERE, export_cameras(20, center=SPHERE.center, radius=1.0, image_size=160))


def test_bake_texture_matches_the_analytic_texture(unwrapped, all_round_views):
    baked = bake_texture(unwrapped, all_round_views, TEXTURE, depth_tolerance=0.03)
    assert baked.seen_fraction > 0.99
    face_index, bary = rasterize_uv(unwrapped.uvs, unwrapped.faces, TEXTURE)
    points = interpolate_attribute(face_index, bary, unwrapped.faces, unwrapped.vertices)
    err = np.abs(baked.image[face_index >= 0] - analytic_color_at(points))
    assert err.mean() < 0.01 and np.quantile(err, 0.99) < 0.05
    assert baked.image[baked.covered].std(axis=0).min() > 0.1  # a pattern, not one flat color


def test_bake_accepts_a_surface_in_front_of_the_rendered_depth_but_not_behind_it(unwrapped, all_round_views):
    """An iso-surface of a Gaussian field sits outside the rendered expected depth: it must still bake."""
    c = np.asarray(SPHERE.center, dtype=np.float32)
    inflated = replace(unwrapped, vertices=c + (unwrapped.vertices - c) * 1.08)  # 6 cm in front
    baked = bake_texture(inflated, all_round_views, TEXTURE, depth_tolerance=0.02)
    assert baked.seen_fraction > 0.99
    shrunk = replace(unwrapped, vertices=c + (unwrapped.vertices - c) * 0.92)  # 6 cm behind: occluded
    assert bake_texture(shrunk, all_round_views, TEXTURE, depth_tolerance=0.02).seen_fraction == 0.0


def test_bake_pads_seams_without_background_bleed(unwrapped, all_round_views):
    baked = bake_texture(unwrapped, all_round_views, TEXTURE, depth_tolerance=0.03, padding_iterations=4)
    covered = torch.from_numpy(baked.covered)[None, None].float()
    band = torch.nn.functional.max_pool2d(covered, 9, stride=1, padding=4)[0, 0].numpy() > 0
    band &= ~baked.covered  # up to 4 texels outside the charts
    assert band.sum() > 0
    # The renders' background is white; the albedo stays within [0.1, 0.9] per channel.
    assert baked.image[band].max() < 0.91 and baked.image[band].min() > 0.09
    # Padding continues the chart's colors: a padded texel is close to its nearest covered texel.
    from scipy.ndimage import distance_transform_edt

    _, (rows, cols) = distance_transform_edt(~baked.covered, return_indices=True)
    nearest = baked.image[rows[band], cols[band]]
    assert np.abs(baked.image[band] - nearest).mean() < 0.03


def test_texels_no_view_saw_take_the_nearest_seen_color(unwrapped):
    front_only = render_views(SPHERE, export_cameras(6, center=SPHERE.center, elevations_deg=(0.0,))[:3])
    baked = bake_texture(unwrapped, front_only, TEXTURE, depth_tolerance=0.03)
    assert 0.2 < baked.seen_fraction < 0.95
    unseen = baked.covered & ~baked.seen
    assert unseen.any()
    colors = baked.image[unseen]
    assert colors.min() > 0.09 and colors.max() < 0.91  # copied object colors, no black, no background
    # ... namely the color of the nearest seen surface point in 3D
    from scipy.spatial import cKDTree

    face_index, bary = rasterize_uv(unwrapped.uvs, unwrapped.faces, TEXTURE)
    points = np.zeros((TEXTURE, TEXTURE, 3), dtype=np.float32)
    points[face_index >= 0] = interpolate_attribute(face_index, bary, unwrapped.faces, unwrapped.vertices)
    _, nearest = cKDTree(points[baked.seen]).query(points[unseen])
    assert np.allclose(colors, baked.image[baked.seen][nearest], atol=1e-6)


def test_dilate_texture_grows_one_ring_per_iteration():
    image = np.zeros((9, 9, 3), dtype=np.float32)
    filled = np.zeros((9, 9), dtype=bool)
    image[4, 4] = [0.2, 0.4, 0.6]
    filled[4, 4] = True
    out, mask = dilate_texture(image, filled, iterations=2)
    assert mask.sum() == 25 and np.allclose(out[mask], [0.2, 0.4, 0.6])
    assert (out[~mask] == 0).all()
