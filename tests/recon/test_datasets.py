"""Loaders of posed image sets: transforms.json (nerfstudio / Blender), COLMAP text models, normalization."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from recon.cameras import orbit_cameras
from recon.data.datasets import (
    SceneData,
    load_colmap,
    load_scene,
    load_transforms,
    normalize_scene,
    write_transforms,
)
from recon.errors import UserError


def _scene(n: int = 6, size: int = 24) -> SceneData:
    cams = orbit_cameras(n, elevation_deg=20.0, distance=3.0, fov_deg=40.0, width=size, height=size)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(n, size, size, 3, generator=gen) * 255).round() / 255
    return SceneData(images, cams, [f"v{i}.png" for i in range(n)])


def test_transforms_round_trip_keeps_cameras_and_pixels(tmp_path):
    scene = _scene()
    write_transforms(tmp_path / "transforms.json", scene)
    loaded = load_transforms(tmp_path / "transforms.json")
    assert torch.allclose(loaded.cameras.camera_to_worlds, scene.cameras.camera_to_worlds, atol=1e-6)
    assert torch.allclose(loaded.cameras.fx, scene.cameras.fx)
    assert torch.allclose(loaded.images, scene.images, atol=1e-6)
    assert loaded.names == scene.names


def test_blender_transforms_with_camera_angle_and_rgba(tmp_path):
    """Blender layout: camera_angle_x, file paths without suffix, RGBA composited on white."""
    (tmp_path / "train").mkdir()
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)  # left half opaque red, right half transparent
    Image.fromarray(rgba).save(tmp_path / "train" / "r_0.png")
    c2w = torch.eye(4).tolist()
    meta = {
        "camera_angle_x": 2 * math.atan(0.5),
        "frames": [{"file_path": "./train/r_0", "transform_matrix": c2w}],
    }
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    scene = load_transforms(tmp_path / "transforms_train.json", resolution=20)
    assert (scene.cameras.width, scene.cameras.height) == (20, 10)
    assert float(scene.cameras.fx[0]) == pytest.approx(20.0)  # 0.5 * w / tan(0.5 * angle), halved
    assert torch.allclose(scene.images[0, 5, 2], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(scene.images[0, 5, 17], torch.ones(3))
    assert scene.alphas is not None and float(scene.alphas[0, 5, 17]) == 0.0


def test_colmap_text_model_matches_known_cameras(tmp_path):
    """A hand-written COLMAP text model (PINHOLE) loads to the cameras it was written from."""
    scene = _scene(n=3)
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    (tmp_path / "images").mkdir()
    cams = scene.cameras
    (tmp_path / "sparse/0/cameras.txt").write_text(
        f"1 PINHOLE {cams.width} {cams.height} {float(cams.fx[0])} {float(cams.fy[0])} {float(cams.cx[0])} "
        f"{float(cams.cy[0])}\n"
    )
    lines = []
    for i, name in enumerate(scene.names):
        w2c = cams.viewmats()[i].double()
        q = _rotmat_to_qvec(w2c[:3, :3])
        t = w2c[:3, 3].tolist()
        lines += [f"{i + 1} {' '.join(map(str, q))} {' '.join(map(str, t))} 1 {name}", ""]
        Image.fromarray((scene.images[i].numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / "images" / name
        )
    (tmp_path / "sparse/0/images.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "sparse/0/points3D.txt").write_text("1 0.1 0.2 0.3 255 0 0 0.5\n")
    loaded = load_colmap(tmp_path)
    # atol: the test's quaternion helper loses digits on near-zero components (sqrt of ~1e-8)
    assert torch.allclose(loaded.cameras.camera_to_worlds, cams.camera_to_worlds, atol=2e-3)
    assert torch.allclose(loaded.points, torch.tensor([[0.1, 0.2, 0.3]]))
    assert torch.allclose(loaded.point_colors, torch.tensor([[1.0, 0.0, 0.0]]))


def _rotmat_to_qvec(R: torch.Tensor) -> list[float]:
    w = math.sqrt(max(0.0, 1 + float(R[0, 0] + R[1, 1] + R[2, 2]))) / 2
    x = math.copysign(
        math.sqrt(max(0.0, 1 + float(R[0, 0] - R[1, 1] - R[2, 2]))) / 2, float(R[2, 1] - R[1, 2])
    )
    y = math.copysign(
        math.sqrt(max(0.0, 1 - float(R[0, 0] - R[1, 1] + R[2, 2]))) / 2, float(R[0, 2] - R[2, 0])
    )
    z = math.copysign(
        math.sqrt(max(0.0, 1 - float(R[0, 0] + R[1, 1] - R[2, 2]))) / 2, float(R[1, 0] - R[0, 1])
    )
    return [w, x, y, z]


def test_normalize_scene_puts_up_on_y_and_cameras_at_distance_3():
    scene = _scene(n=8)
    # Tilt the world (Z up, as Blender), move and scale it.
    rot = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    c2w = rot @ scene.cameras.camera_to_worlds
    c2w[:, :3, 3] = c2w[:, :3, 3] * 2.5 + torch.tensor([1.0, -2.0, 0.5])
    from dataclasses import replace

    moved = replace(scene, cameras=replace(scene.cameras, camera_to_worlds=c2w))
    out = normalize_scene(moved)
    centers = out.cameras.camera_centers
    assert torch.allclose(centers.norm(dim=-1), torch.full((8,), 3.0), atol=1e-4)
    up = out.cameras.camera_to_worlds[:, :3, 1].mean(0)
    assert float(torch.nn.functional.normalize(up, dim=0)[1]) == pytest.approx(1.0, abs=1e-5)


def test_static_cameras_and_missing_input_are_user_errors(tmp_path):
    scene = _scene(n=4)
    from dataclasses import replace

    c2w = scene.cameras.camera_to_worlds[:1].repeat(4, 1, 1)
    with pytest.raises(UserError, match="walk around"):
        normalize_scene(replace(scene, cameras=replace(scene.cameras, camera_to_worlds=c2w)))
    from recon.data.datasets import SceneConfig

    with pytest.raises(UserError, match="does not exist"):
        load_scene(tmp_path / "nope.mp4", SceneConfig(), tmp_path)
