"""The hands input layout (reader, writer, bad inputs) and the procedural hand-object generator."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from recon.data.hands import load_hand_sequence
from recon.data.hands_synth import HandsSynthConfig, write_synth_sequence
from recon.errors import UserError
from recon.parametric import hand_models


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hands") / "seq"
    return write_synth_sequence(folder, HandsSynthConfig(frames=4, size=64, seed=11))


def test_synth_sequence_round_trips_with_its_ground_truth(sequence):
    seq = load_hand_sequence(sequence)
    assert seq.images.shape == (4, 64, 64, 3) and seq.masks.shape == (4, 64, 64, 3)
    assert len(seq.cameras) == 4 and seq.prompt
    assert (seq.masks.sum(-1) <= 1).all()  # one subject per pixel
    for s in range(3):
        assert seq.masks[..., s].mean() > 0.01  # every subject is visible
    background = (seq.images > 0.99).all(-1)
    assert float((background & (seq.masks.sum(-1) > 0)).float().mean()) < 0.01
    # the stored keypoints are the model's keypoints of the stored true parameters
    models = hand_models("anny")
    for side in ("right", "left"):
        params = {k: torch.tensor(v) for k, v in seq.gt["hand_params"][side].items()}
        kp = models[side](**params).keypoints
        assert torch.allclose(kp, torch.tensor(seq.gt["keypoints"][side]), atol=1e-5)
        # initial parameters are noisy but near: root-aligned error of a few millimetres to centimetres
        init = models[side](**seq.hand_params[side]).keypoints
        err = ((init - init[:, :1]) - (kp - kp[:, :1])).norm(dim=-1).mean() * 1000
        assert 2.0 < float(err) < 40.0, float(err)


def test_synth_hands_project_onto_their_masks(sequence):
    seq = load_hand_sequence(sequence)
    models = hand_models("anny")
    viewmats, Ks = seq.cameras.viewmats(), seq.cameras.Ks()
    # a pixel's mask says "covers more than half of it": vertices on silhouettes may fall just outside
    near = torch.nn.functional.max_pool2d(seq.masks.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
    for s, side in enumerate(("right", "left")):
        params = {k: torch.tensor(v) for k, v in seq.gt["hand_params"][side].items()}
        verts = models[side](**params).vertices  # [T, V, 3]
        cam = torch.einsum("tij,tvj->tvi", viewmats[:, :3, :3], verts) + viewmats[:, None, :3, 3]
        uv = torch.einsum("tij,tvj->tvi", Ks, cam)
        uv = (uv[..., :2] / uv[..., 2:]).floor().long().clamp(0, 63)
        t = torch.arange(4)[:, None].expand_as(uv[..., 0])
        on_own = near[t, uv[..., 1], uv[..., 0], s]
        on_any = near[t, uv[..., 1], uv[..., 0]].amax(-1)
        assert float(on_any.mean()) > 0.97  # every vertex lands on a subject (itself or an occluder)
        assert float(on_own.mean()) > 0.6
        centroid = uv[..., 0].float().mean()
        assert (centroid > 32) if side == "right" else (centroid < 32)  # right hand on the image's right


def test_missing_masks_and_short_parameters_are_refused(sequence, tmp_path):
    broken = tmp_path / "a"
    shutil.copytree(sequence, broken)
    (broken / "masks" / "left" / "000002.png").unlink()
    with pytest.raises(UserError, match=r"masks/left/ has no mask for 1 of 4 frames \(000002\)"):
        load_hand_sequence(broken)
    short = tmp_path / "b"
    shutil.copytree(sequence, short)
    data = json.loads((short / "hands.json").read_text())
    data["frames"] = data["frames"][:3]
    (short / "hands.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="parameters for 3 frames, the video has 4"):
        load_hand_sequence(short)
    data["frames"] = "nope"
    (short / "hands.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="is not a sds3d-hands/1 file"):
        load_hand_sequence(short)
    nothing = tmp_path / "c"
    nothing.mkdir()
    with pytest.raises(UserError, match="neither frames/ nor a video"):
        load_hand_sequence(nothing)


def test_missing_hand_in_a_frame_takes_the_nearest_frame(sequence, tmp_path):
    gap = tmp_path / "gap"
    shutil.copytree(sequence, gap)
    data = json.loads((gap / "hands.json").read_text())
    data["frames"][1]["left"] = None
    (gap / "hands.json").write_text(json.dumps(data))
    seq = load_hand_sequence(gap)
    assert torch.equal(seq.hand_params["left"]["transl"][1], seq.hand_params["left"]["transl"][0])


def test_writing_is_all_or_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(Exception):  # noqa: B017 - any failure mid-write
        from recon.data.hands import write_hand_sequence

        write_hand_sequence(target, np.zeros((2, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), bool), {}, {})
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "x").write_text("keep")
    with pytest.raises(UserError, match="exists and is not empty"):
        write_synth_sequence(target, HandsSynthConfig(frames=2, size=32))
    assert [p.name for p in target.iterdir()] == ["x"]
