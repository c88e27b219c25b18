"""Scenes with instance masks (recon.data.scene) and procedural rooms (recon.data.scene_synth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recon.data.objects import ProceduralObject
from recon.data.scene import (
    decompose_projection,
    load_instance_scene,
    scene_layout,
    write_instance_scene,
)
from recon.data.scene_synth import (
    PlacedObject,
    ProceduralScene,
    Room,
    SceneSynthConfig,
    load_ground_truth,
    occlusion_fractions,
    room_trajectory,
    scene_from_description,
    synth_scene,
)
from recon.errors import UserError


def _small_scene() -> ProceduralScene:
    """Three hand-placed objects (no layout search): a cube in front of a cone, a mug at the back wall."""
    room = Room()
    objs = [
        PlacedObject(ProceduralObject("cube", "red"), 1, (0.1, room.floor + 0.201, 0.0), 0.2 / 0.55, 20.0),
        PlacedObject(ProceduralObject("cone", "blue"), 2, (0.25, room.floor + 0.251, -0.4), 0.25 / 0.7, 0.0),
        PlacedObject(ProceduralObject("mug", "green"), 7, (-0.4, room.floor + 0.15, -0.6), 0.25, 0.0),
    ]
    return ProceduralScene(room, objs)


@pytest.fixture(scope="module")
def small_views():
    scene = _small_scene()
    cams = room_trajectory(4, 48, 36)
    return scene, scene.instance_scene(cams)


def test_both_layouts_load_to_the_same_cameras_masks_and_cues(tmp_path, small_views):
    _, views = small_views
    a = write_instance_scene(tmp_path / "documented", views, "documented")
    b = write_instance_scene(tmp_path / "dprecon", views, "dprecon")
    assert scene_layout(a) == "documented" and scene_layout(b) == "dprecon"
    assert (b / "cameras.npz").is_file() and (b / "instance_mask" / "000000.png").is_file()
    assert json.loads((b / "instance_id.json").read_text()) == {"object_1": 1, "object_2": 2, "object_7": 7}
    # DP-Recon's prompt files are keyed by label index (0 = background, then instance_id.json's order)
    assert json.loads((b / "sds3d_scan1_prompt_geometry.json").read_text())["3"] == "a green mug"
    sa, sb = load_instance_scene(a), load_instance_scene(b)
    for s in (sa, sb):
        assert torch.allclose(s.cameras.camera_to_worlds, views.cameras.camera_to_worlds, atol=1e-5)
        for k in ("fx", "fy", "cx", "cy"):
            assert torch.allclose(getattr(s.cameras, k), getattr(views.cameras, k), atol=1e-4)
        assert torch.equal(s.masks, views.masks)
        assert (s.images - views.images).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
        assert torch.allclose(s.depths, views.depths) and torch.allclose(s.normals, views.normals, atol=1e-6)
        assert s.prompts == {1: "a red cube", 2: "a blue cone", 7: "a green mug"}
        assert s.instance_ids == [1, 2, 7]
    assert torch.equal(sa.labels().unique(), torch.tensor([0, 1, 2, 3]))


def test_decompose_projection_recovers_intrinsics_and_pose():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
        R = (q * torch.sign(torch.det(q))).numpy()
        t = torch.randn(3, generator=g, dtype=torch.float64).numpy()
        K = np.array([[120.0, 0.0, 31.0], [0.0, 118.0, 22.0], [0.0, 0.0, 1.0]])
        P = 2.5 * K @ np.concatenate([R, t[:, None]], 1)  # any positive scale
        K2, c2w = decompose_projection(P)
        assert np.allclose(K2, K, atol=1e-8) and np.allclose(c2w[:3, :3], R.T, atol=1e-8)
        assert np.allclose(c2w[:3, 3], -R.T @ t, atol=1e-8)


def test_rendered_views_are_exact(small_views):
    """Masks are the nearest object at the hit point, depth is on the surface, normals are unit."""
    scene, views = small_views
    from recon.data.procedural import camera_rays

    o, d, z_per_t = camera_rays(views.cameras)
    hit = views.depths > 0
    t = views.depths / z_per_t
    p = (o + t[..., None] * d)[hit]
    assert scene.sdf(p).abs().max() < 3e-3
    chans = scene.channel_sdfs(p).argmin(-1)
    ids = torch.tensor([0, 1, 2, 7])[chans]
    assert torch.equal(ids, views.masks[hit])
    assert torch.allclose(views.normals[hit].norm(dim=-1), torch.ones(int(hit.sum())), atol=1e-4)
    # camera-space normals face the camera: against the camera-space ray direction
    rot = views.cameras.camera_to_worlds[:, None, None, :3, :3].expand(*d.shape[:3], 3, 3)
    d_cam = torch.einsum("...ji,...j->...i", rot, d)[hit]
    assert ((views.normals[hit] * d_cam).sum(-1) < 1e-3).float().mean() > 0.99


def _write_bad(tmp_path: Path, views, edit) -> Path:
    folder = write_instance_scene(tmp_path / "scene", views)
    edit(folder)
    return folder


def test_bad_scenes_give_one_clear_error_each(tmp_path, small_views):
    _, views = small_views

    def small_mask(folder):
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / "masks" / "001.png")

    def ghost_prompt(folder):
        (folder / "prompts.json").write_text(json.dumps({"1": "a red cube", "9": "a ghost"}))

    def lonely_pixel(folder):
        m = np.asarray(Image.open(folder / "masks" / "002.png")).copy()
        m[0, 0] = 42
        Image.fromarray(m).save(folder / "masks" / "002.png")

    def two_views(folder):
        meta = json.loads((folder / "transforms.json").read_text())
        meta["frames"] = meta["frames"][:2]
        (folder / "transforms.json").write_text(json.dumps(meta))

    cases = [
        (small_mask, "masks/001.png is 12x10 but its image 001.png is 48x36"),
        (ghost_prompt, "names instance 9, which no mask has"),
        (lonely_pixel, "instance 42 is seen by no view"),
        (two_views, "has 2 views; DP-Recon needs at least 3"),
    ]
    for i, (edit, message) in enumerate(cases):
        folder = _write_bad(tmp_path / str(i), views, edit)
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            load_instance_scene(folder)
    with pytest.raises(UserError, match="neither transforms.json"):
        load_instance_scene(tmp_path)
    # DP-Recon's layout: an instance listed in instance_id.json that no mask holds
    folder = write_instance_scene(tmp_path / "dp", views, "dprecon")
    (folder / "instance_id.json").write_text(json.dumps({"a": 1, "b": 2, "c": 7, "d": 9}))
    with pytest.raises(UserError, match="instance 9 is seen by no view"):
        load_instance_scene(folder)


def test_writing_is_all_or_nothing(tmp_path, small_views):
    _, views = small_views
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(UserError, match="not an empty folder"):
        write_instance_scene(tmp_path / "taken", views)
    bad = views.subset([0, 1])  # fewer than 3 views: refused before anything is written
    with pytest.raises(UserError):
        write_instance_scene(tmp_path / "new", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_synth_scene_writes_views_eval_views_and_ground_truth(tmp_path):
    cfg = SceneSynthConfig(
        num_objects=3, num_views=5, eval_views=2, seed=11, width=64, height=48, mesh_resolution=40
    )
    out = synth_scene(tmp_path / "room", cfg)
    train, held_out = load_instance_scene(out), load_instance_scene(out / "eval", check=False)
    assert len(train) == 5 and len(held_out) == 2 and train.cameras.width == 64
    assert train.depths is not None and train.normals is not None
    gt = load_ground_truth(out)
    room = gt.description["room"]
    assert sorted(gt.meshes) == train.instance_ids == [1, 2, 3]
    assert train.prompts == {int(i): o["caption"] for i, o in gt.description["objects"].items()}
    for i, mesh in gt.meshes.items():
        desc = gt.description["objects"][str(i)]
        lo, hi = mesh.bounds
        assert np.allclose(lo, desc["bbox_min"], atol=0.03) and np.allclose(hi, desc["bbox_max"], atol=0.03)
        assert abs(lo[1] - room["floor"]) < 0.01  # standing on the floor
    assert abs(gt.description["objects"]["3"]["bbox_min"][2] - room["back"]) < 0.01  # against the wall
    # the description rebuilds the very scene: same masks; some object is partly hidden in every view
    scene = scene_from_description(gt.description)
    assert torch.equal(scene.render(train.cameras).masks, train.masks)
    frac = occlusion_fractions(scene, train.cameras)  # [K, views]
    assert bool(((frac > 0.05) & (frac < 0.9)).any(0).all())
    assert float(frac[1].nan_to_num(1.0).min()) < 0.9  # object 2 stands partly behind object 1
    # almost every pixel sees a surface inside the scene box
    assert (train.depths > 0).float().mean() > 0.999
