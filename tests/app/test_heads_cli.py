"""``sds3d heads synth`` writes portraits with consistent ground truth; ``heads fit`` fits and exports one."""

from __future__ import annotations

import json

import numpy as np
import pygltflib
import pytest
import torch
from PIL import Image

from app.cli import main
from recon.cameras import Cameras
from recon.data.heads_synth import project

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def portraits(tmp_path_factory):
    out = tmp_path_factory.mktemp("heads") / "portraits"
    assert main(["heads", "synth", str(out), "--count", "2", "--size", "96", "--seed", "5"]) == 0
    return out


def test_synth_writes_portraits_whose_landmarks_match_their_camera(portraits):
    names = sorted(p.name for p in portraits.iterdir())
    kinds = [("mask", "png"), ("portrait", "json"), ("portrait", "png")]
    assert names == sorted(f"{k}_{i:06d}.{e}" for i in range(2) for k, e in kinds)
    assert not [p for p in portraits.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    record = json.loads((portraits / "portrait_000000.json").read_text())
    cam = record["camera"]
    intrinsics = (torch.tensor([cam[k]]) for k in ("fx", "fy", "cx", "cy"))
    camera = Cameras(torch.tensor([cam["camera_to_world"]]), *intrinsics, cam["width"], cam["height"])
    reprojected = project(torch.tensor(record["landmarks_3d"]), camera)
    assert torch.allclose(reprojected, torch.tensor(record["landmarks_2d"]), atol=1e-3)
    mask = np.asarray(Image.open(portraits / "mask_000000.png")) > 127
    image = np.asarray(Image.open(portraits / "portrait_000000.png"))
    assert image.shape == (96, 96, 3) and 0.1 < mask.mean() < 0.9
    assert (image[~mask] > 200).all(axis=-1).mean() > 0.95  # white background outside the head
    assert len(record["params"]["expression"]) == 40 and len(record["params"]["betas"]) == 38
    assert main(["heads", "synth", str(portraits), "--count", "1"]) == 2  # not empty: refused


def test_fit_exports_a_glb_with_morph_targets(portraits, tmp_path):
    out = tmp_path / "head"
    argv = ["heads", "fit", str(portraits / "portrait_000001.png"), str(out), "--landmarks",
            str(portraits / "portrait_000001.json"), "--mask", str(portraits / "mask_000001.png"),
            "--steps", "150", "--texture-size", "64"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fit.json", "head.glb"]
    record = json.loads((out / "fit.json").read_text())
    assert record["landmark_error_px"] < 3.0 and record["silhouette_iou"] > 0.9
    gltf = pygltflib.GLTF2.load(out / "head.glb")
    assert len(gltf.meshes[0].extras["targetNames"]) == 41 and len(gltf.meshes[0].primitives[0].targets) == 41


@pytest.mark.parametrize("bad", ["not_an_image", "wrong_landmarks", "empty_mask"])
def test_fit_refuses_a_portrait_with_no_usable_face(portraits, tmp_path, bad, capsys):
    portrait, landmarks, mask = (portraits / f"{k}_000000.{e}" for k, e in
                                 [("portrait", "png"), ("portrait", "json"), ("mask", "png")])  # fmt: skip
    if bad == "not_an_image":
        portrait = tmp_path / "portrait.png"
        portrait.write_text("not a png")
    elif bad == "wrong_landmarks":
        landmarks = tmp_path / "lm.json"
        landmarks.write_text(json.dumps([[1.0, 2.0]] * 10))
    else:
        mask = tmp_path / "mask.png"
        Image.fromarray(np.zeros((96, 96), np.uint8)).save(mask)
    out = tmp_path / "head"
    before = set(tmp_path.rglob("*"))
    code = main(["heads", "fit", str(portrait), str(out), "--landmarks", str(landmarks), "--mask", str(mask)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("sds3d: error:") == 1 and "Traceback" not in err
    assert {"not_an_image": "not a readable image", "wrong_landmarks": "[51, 2]",
            "empty_mask": "no face-like region"}[bad] in err  # fmt: skip
    assert set(tmp_path.rglob("*")) == before  # nothing written
