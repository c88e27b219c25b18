"""GLB / OBJ writers, atomic export folders, and the whole export_mesh chain on an analytic sphere."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

import recon.mesh.io as mesh_io
from recon.errors import UserError
from recon.mesh import MeshExportConfig, export_mesh
from recon.mesh.analytic_scene import TexturedSphere
from recon.mesh.bake import bake_texture
from recon.mesh.uv import unwrap_uv
from recon.mesh.views import export_cameras, render_views

SPHERE = TexturedSphere()


def surface_color_error(mesh: trimesh.Trimesh, n: int = 3000) -> float:
    """Mean |texture color - analytic albedo| at random surface points, looked up through the UVs."""
    points, face_ids = trimesh.sample.sample_surface(mesh, n, seed=0)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[face_ids], points)
    uv = (mesh.visual.uv[mesh.faces[face_ids]] * bary[:, :, None]).sum(axis=1)
    material = mesh.visual.material
    image = getattr(material, "baseColorTexture", None) or material.image
    colors = trimesh.visual.color.uv_to_color(uv, image)[:, :3] / 255.0
    c = np.asarray(SPHERE.center)
    on_sphere = c + (points - c) / np.linalg.norm(points - c, axis=1, keepdims=True) * SPHERE.radius
    return float(np.abs(colors - SPHERE.albedo(torch.from_numpy(on_sphere).float()).numpy()).mean())


@pytest.fixture(scope="module")
def baked_sphere():
    mesh = trimesh.creation.icosphere(4, radius=SPHERE.radius)
    mesh.apply_translation(SPHERE.center)
    uv_mesh = unwrap_uv(mesh, texture_size=256, max_faces=3000)
    views = render_views(SPHERE, export_cameras(20, center=SPHERE.center, image_size=160))
    return uv_mesh, bake_texture(uv_mesh, views, 256, depth_tolerance=0.03).image


def test_glb_round_trip_keeps_geometry_uvs_and_texture(tmp_path, baked_sphere):
    uv_mesh, texture = baked_sphere
    path = mesh_io.write_glb(tmp_path / "model.glb", uv_mesh, texture)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.glb"]  # no temp leftovers
    loaded = trimesh.load(path, force="mesh")
    assert np.allclose(loaded.vertices, uv_mesh.vertices, atol=1e-6)
    assert np.array_equal(loaded.faces, uv_mesh.faces)
    assert np.allclose(loaded.visual.uv, uv_mesh.uvs, atol=1e-6)
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB")) / 255.0
    assert image.shape == (256, 256, 3) and image.reshape(-1, 3).std(axis=0).min() > 0.1
    assert surface_color_error(loaded) < 0.03
    # glTF facts: +Y up needs no transform, v is flipped in the file (trimesh undoes it on load)
    from pygltflib import GLTF2

    gltf = GLTF2().load(str(path))
    attributes = gltf.meshes[0].primitives[0].attributes
    assert attributes.TEXCOORD_0 is not None and attributes.NORMAL is not None
    assert gltf.materials[0].pbrMetallicRoughness.baseColorTexture is not None
    assert gltf.images[0].mimeType == "image/png"


def test_obj_mtl_png_round_trip(tmp_path, baked_sphere):
    uv_mesh, texture = baked_sphere
    paths = mesh_io.write_obj(tmp_path, uv_mesh, texture)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mtl", "model.obj", "texture.png"]
    assert "map_Kd texture.png" in paths["mtl"].read_text()
    assert "mtllib model.mtl" in paths["obj"].read_text()
    loaded = trimesh.load(paths["obj"], force="mesh")
    assert len(loaded.faces) == len(uv_mesh.faces)
    assert loaded.visual.uv is not None and loaded.visual.uv.min() >= 0 and loaded.visual.uv.max() <= 1
    assert np.asarray(Image.open(paths["texture"])).shape == (256, 256, 3)
    assert surface_color_error(loaded) < 0.03


def test_a_crash_mid_write_leaves_no_partial_file_and_keeps_the_old_export(
    tmp_path, baked_sphere, monkeypatch
):
    uv_mesh, texture = baked_sphere
    mesh_io.write_obj(tmp_path, uv_mesh, texture)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_write = mesh_io.write_bytes_synced
    calls: list[str] = []
    crash_at = [2]  # crash while writing the second file (the OBJ writer writes three)

    def crash_mid_write(path, data):
        calls.append(path.name)
        if len(calls) == crash_at[0]:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])  # half a file, then the process "dies"
            raise KeyboardInterrupt("killed mid-write")
        real_write(path, data)

    monkeypatch.setattr(mesh_io, "write_bytes_synced", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        mesh_io.write_obj(tmp_path, uv_mesh, np.clip(texture * 0.5, 0, 1))
    calls.clear()
    crash_at[0] = 1  # the GLB is a single file
    with pytest.raises(KeyboardInterrupt):
        mesh_io.write_glb(tmp_path / "model.glb", uv_mesh, texture)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # nothing new, nothing half-written, no temp folder left


def test_leftovers_of_a_killed_export_are_removed_once_stale(tmp_path, baked_sphere):
    uv_mesh, texture = baked_sphere
    stale, recent = tmp_path / ".tmp-export-killed", tmp_path / ".tmp-export-running"
    for folder in (stale, recent):
        folder.mkdir()
        (folder / "model.obj").write_bytes(b"v 0 0")  # half a file
    os.utime(stale, (0, 0))
    mesh_io.write_glb(tmp_path / "model.glb", uv_mesh, texture)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-export-running", "model.glb"]


def test_export_mesh_marching_cubes_end_to_end(tmp_path):
    paths = export_mesh(
        SPHERE,
        tmp_path / "export",
        MeshExportConfig(method="marching_cubes", center=SPHERE.center, resolution=64, max_faces=3000),
        density_fn=SPHERE.density,
        n_views=14,
        image_size=128,
        texture_size=256,
    )
    assert set(paths) == {"glb", "obj", "mtl", "texture"} and all(p.exists() for p in paths.values())
    assert sorted(os.listdir(tmp_path / "export")) == ["model.glb", "model.mtl", "model.obj", "texture.png"]
    mesh = trimesh.load(paths["glb"], force="mesh")
    assert len(mesh.faces) <= 3000 and mesh.visual.uv.min() >= 0 and mesh.visual.uv.max() <= 1
    assert abs(mesh.volume / (4 / 3 * math.pi * SPHERE.radius**3) - 1) < 0.03
    assert surface_color_error(mesh) < 0.05


def test_export_mesh_tsdf_end_to_end(tmp_path):
    pytest.importorskip("open3d", reason="TSDF fusion needs open3d-cpu==0.19.0")
    paths = export_mesh(
        SPHERE,
        tmp_path,
        center=SPHERE.center,
        resolution=64,
        n_views=14,
        image_size=128,
        max_faces=3000,
        texture_size=256,
        formats=("glb",),
    )
    assert list(paths) == ["glb"]
    mesh = trimesh.load(paths["glb"], force="mesh")
    radii = np.linalg.norm(mesh.vertices - np.asarray(SPHERE.center), axis=1)
    assert abs(radii.mean() / SPHERE.radius - 1) < 0.02
    assert abs(mesh.volume / (4 / 3 * math.pi * SPHERE.radius**3) - 1) < 0.05
    assert surface_color_error(mesh) < 0.05


def test_export_mesh_user_errors(tmp_path):
    with pytest.raises(UserError, match="density_fn"):
        export_mesh(SPHERE, tmp_path, method="marching_cubes")
    with pytest.raises(UserError, match="unknown mesh extraction method"):
        export_mesh(SPHERE, tmp_path, method="poisson")
    with pytest.raises(TypeError):
        export_mesh(SPHERE, tmp_path, not_a_field=1)
    assert list(tmp_path.iterdir()) == []
