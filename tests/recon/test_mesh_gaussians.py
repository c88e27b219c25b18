"""The export chain on real 3D Gaussians through the project's renderer (pure-PyTorch backend).

Checks the render-function contract end to end: ``render_gaussians`` (rgb, expected z-depth, alpha)
feeds TSDF fusion and baking, and ``GaussianDensityField`` feeds marching cubes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from recon.mesh import GaussianDensityField, export_mesh
from recon.mesh.analytic_scene import TexturedSphere

render = pytest.importorskip("recon.render", reason="the renderer is not in this tree")
gaussians = pytest.importorskip("recon.gaussians", reason="GaussianModel is not in this tree")

SPHERE = TexturedSphere()


@pytest.fixture(scope="module")
def gaussian_ball():
    """A solid ball of isotropic Gaussians on a lattice (spacing 0.1), colored with the analytic albedo."""
    axis = torch.arange(-8, 9) * 0.1
    lattice = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    points = torch.tensor(SPHERE.center) + lattice[lattice.norm(dim=-1) <= SPHERE.radius - 0.05]
    model = gaussians.GaussianModel.from_points(
        points, SPHERE.albedo(points), init_scale=0.06, init_opacity=0.9
    )

    def render_fn(cameras):
        out = render.render_gaussians(model, cameras, background=1.0, with_depth=True, backend="torch")
        return out.rgb, out.depth, out.alpha

    field = GaussianDensityField(
        model.means.detach(), model.quats.detach(), model.scales.detach(), model.opacities.detach()
    )
    return render_fn, field


def check_export(paths: dict, lo: float, hi: float) -> None:
    mesh = trimesh.load(paths["glb"], force="mesh")
    radii = np.linalg.norm(mesh.vertices - np.asarray(SPHERE.center), axis=1)
    assert lo < radii.mean() < hi and radii.std() < 0.05
    points, face_ids = trimesh.sample.sample_surface(mesh, 2000, seed=0)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[face_ids], points)
    uv = (mesh.visual.uv[mesh.faces[face_ids]] * bary[:, :, None]).sum(axis=1)
    colors = trimesh.visual.color.uv_to_color(uv, mesh.visual.material.baseColorTexture)[:, :3] / 255.0
    c = np.asarray(SPHERE.center)
    on_sphere = c + (points - c) / radii.mean() * SPHERE.radius
    err = np.abs(colors - SPHERE.albedo(torch.from_numpy(on_sphere).float()).numpy()).mean()
    assert err < 0.08  # Gaussians blur the pattern a little; a wrong lookup gives ~0.25


SMALL = dict(center=SPHERE.center, n_views=8, image_size=80, resolution=48, max_faces=2000, texture_size=256)


def test_export_gaussians_by_marching_cubes(tmp_path, gaussian_ball):
    render_fn, field = gaussian_ball
    paths = export_mesh(
        render_fn, tmp_path, method="marching_cubes", density_fn=field, formats=("glb",), **SMALL
    )
    check_export(paths, 0.75, 0.9)  # ~0.81: the level set lies just outside the outermost centers


def test_export_gaussians_by_tsdf(tmp_path, gaussian_ball):
    pytest.importorskip("open3d", reason="TSDF fusion needs open3d-cpu==0.19.0")
    render_fn, _ = gaussian_ball
    paths = export_mesh(render_fn, tmp_path, method="tsdf", formats=("glb",), **SMALL)
    check_export(paths, 0.72, 0.85)  # expected depth of the outer Gaussians: ~0.77
