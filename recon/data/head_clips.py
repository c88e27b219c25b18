"""Procedural head clips: what the embedded video prior learns from and what the avatar is judged against.

A clip is one anny head (:mod:`recon.data.heads_synth`: random shape, skin, hair, iris, hairline) seen
along a driving signal of ``T`` frames, plus a *reference portrait* of the same head (near-frontal,
mild expression) that conditions the video prior, as the user's portrait conditions it in Zero-1-to-A
(https://arxiv.org/abs/2503.15851). The two driving signals of the paper's curricula:

* ``spatial``: one fixed expression, the camera moving from near the front towards one side (up to
  ``max_side_deg``), at a fixed elevation;
* ``temporal``: one fixed near-frontal camera, the expression ramping from neutral to a named expression
  (and the jaw opening) — relaxed to exaggerated.

Framing (shared by the prior, the pipeline and the bench): the head's neutral bounding-box centre at
the origin, cameras on a sphere of radius :data:`CLIP_DISTANCE` m with a vertical field of view of
:data:`CLIP_FOV_DEG`, white background. Every frame also carries the 51 landmarks projected to pixels
(the driving signal the prior sees, as AniPortrait-style portrait video models see facial landmarks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras, cameras_from_spherical
from recon.data.heads_synth import EXPRESSIONS, draw_identity, head_albedo, project, render_head
from recon.parametric.heads import HeadModel

CLIP_DISTANCE = 0.6
"""Camera distance to the head's centre (m)."""
CLIP_FOV_DEG = 25.0
"""Vertical field of view of every clip camera."""
KINDS = ("spatial", "temporal")


def clip_cameras(azimuth_deg: Tensor, elevation_deg: Tensor, size: int) -> Cameras:
    """Cameras of the shared framing at ``azimuth_deg [T]`` / ``elevation_deg [T]`` (0, 0: the front)."""
    ones = torch.ones(len(azimuth_deg))
    return cameras_from_spherical(
        elevation_deg.float(), azimuth_deg.float(), ones * CLIP_DISTANCE, ones * CLIP_FOV_DEG, size, size
    )


def named_expression(model: HeadModel, name: str, strength: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(expression [E], jaw_pose [3])`` of one of :data:`recon.data.heads_synth.EXPRESSIONS`."""
    actions = dict(EXPRESSIONS)[name]
    expression = torch.zeros(model.num_expressions)
    for action, amount in actions.items():
        expression[model.expression_names.index(action)] = amount * strength
    jaw = torch.zeros(3)
    jaw[0] = (0.25 if name == "surprise" else 0.05) * strength
    return expression, jaw


def head_params(model: HeadModel, identity: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """``(betas [1, K], centring translation [1, 3])``: the identity's shape and the shift that puts its
    neutral head's bounding-box centre at the origin."""
    betas = torch.as_tensor(np.asarray(identity["betas"]), dtype=torch.float32)[None]
    with torch.no_grad():
        neutral = model(betas=betas).vertices[0]
    center = 0.5 * (neutral.min(0).values + neutral.max(0).values)
    return betas, -center[None]


def render_frames(
    model: HeadModel,
    betas: Tensor,  # [1, K]
    transl: Tensor,  # [1, 3]
    albedo: Tensor,  # [V, 3]
    cameras: Cameras,  # T cameras
    expressions: Tensor,  # [T, E]
    jaw_poses: Tensor,  # [T, 3]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(frames [T, S, S, 3] in [0, 1], masks [T, S, S], landmarks [T, 51, 2] pixels)`` of a head."""
    T = len(cameras)
    with torch.no_grad():
        out = model(
            betas=betas.expand(T, -1), expression=expressions, jaw_pose=jaw_poses, transl=transl.expand(T, -1)
        )
        frames, masks, marks = [], [], []
        for i in range(T):
            rgb, cover, _ = render_head(out.vertices[i], model.faces, albedo, cameras[i])
            frames.append(rgb)
            masks.append(cover)
            marks.append(project(out.landmarks[i], cameras[i]))
    return torch.stack(frames), torch.stack(masks), torch.stack(marks)


def draw_clip_signal(
    model: HeadModel,
    rng: np.random.Generator,
    num_frames: int,
    kind: str | None = None,
    max_side_deg: float = 100.0,
) -> dict[str, Any]:
    """A random driving signal: azimuths, elevations ``[T]`` (degrees), expressions ``[T, E]``, jaw
    poses ``[T, 3]``."""
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    T = num_frames
    name = EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))][0]
    if kind == "spatial":
        start = rng.uniform(-15.0, 15.0)
        side = rng.uniform(20.0, max_side_deg) * (1 if rng.random() < 0.5 else -1)
        azimuth = torch.linspace(start, start + side, T)
        elevation = torch.full((T,), rng.uniform(-10.0, 20.0))
        strength = rng.uniform(0.0, 1.0) if rng.random() < 0.6 else 0.0
        expr, jaw = named_expression(model, name, strength)
        expressions, jaws = expr.expand(T, -1).clone(), jaw.expand(T, -1).clone()
    elif kind == "temporal":
        azimuth = torch.full((T,), rng.uniform(-30.0, 30.0))
        elevation = torch.full((T,), rng.uniform(-10.0, 20.0))
        strength = rng.uniform(0.4, 1.5)
        expr, jaw = named_expression(model, name, strength)
        ramp = torch.linspace(0.0, 1.0, T)[:, None]
        expressions, jaws = ramp * expr, ramp * jaw
        jaws[:, 0] += torch.linspace(0.0, rng.uniform(0.0, 0.15), T)
    else:
        raise ValueError(f"unknown clip kind {kind!r}; use one of {KINDS}")
    return {"kind": kind, "expression_name": name, "azimuth": azimuth, "elevation": elevation,
            "expressions": expressions, "jaw_poses": jaws}  # fmt: skip


def render_clip(
    model: HeadModel,
    rng: np.random.Generator,
    size: int = 32,
    num_frames: int = 8,
    kind: str | None = None,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One clip and its reference portrait; see the module docstring.

    Returns ``frames [T, S, S, 3]``, ``masks [T, S, S]``, ``landmarks [T, 51, 2]``, ``reference [S, S, 3]``,
    ``reference_landmarks [51, 2]``, the driving signal (:func:`draw_clip_signal`) and the identity.
    """
    identity = identity or draw_identity(model, rng)
    betas, transl = head_params(model, identity)
    albedo = head_albedo(model, identity, betas)
    signal = draw_clip_signal(model, rng, num_frames, kind)
    cams = clip_cameras(signal["azimuth"], signal["elevation"], size)
    frames, masks, marks = render_frames(
        model, betas, transl, albedo, cams, signal["expressions"], signal["jaw_poses"]
    )
    ref_cam = clip_cameras(torch.tensor([rng.uniform(-15, 15)]), torch.tensor([rng.uniform(-5, 15)]), size)
    ref_name = EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))][0]
    ref_expr, ref_jaw = named_expression(model, ref_name, float(rng.uniform(0.0, 0.5)))
    ref, _, ref_marks = render_frames(model, betas, transl, albedo, ref_cam, ref_expr[None], ref_jaw[None])
    return {**signal, "frames": frames, "masks": masks, "landmarks": marks, "reference": ref[0],
            "reference_landmarks": ref_marks[0], "identity": identity, "betas": betas[0]}  # fmt: skip


def render_clip_bank(
    count: int, size: int = 32, num_frames: int = 8, seed: int = 0, model: HeadModel | None = None
) -> dict[str, Any]:
    """``count`` clips stacked: ``frames [N, T, S, S, 3]`` uint8, ``reference [N, S, S, 3]`` uint8,
    ``landmarks [N, T, 51, 2]``, ``kinds``, ``identities``, ``betas [N, K]``, azimuths and elevations
    ``[N, T]``."""
    from recon.parametric.heads import create_head_model

    model = model or create_head_model("anny")
    rng = np.random.default_rng(seed)
    keys = ("frames", "reference", "landmarks", "azimuth", "elevation", "betas", "expressions", "jaw_poses")
    out: dict[str, list] = {k: [] for k in (*keys, "kind", "identity", "expression_name")}
    for _ in range(count):
        clip = render_clip(model, rng, size, num_frames)
        for k in (*keys, "kind", "identity", "expression_name"):
            out[k].append(clip[k])
    bank: dict[str, Any] = {k: torch.stack(out[k]) for k in keys}
    bank["frames"] = (bank["frames"] * 255).round().to(torch.uint8)
    bank["reference"] = (bank["reference"] * 255).round().to(torch.uint8)
    bank.update(kind=out["kind"], identity=out["identity"], expression_name=out["expression_name"])
    bank["meta"] = {"size": size, "num_frames": num_frames, "seed": seed, "count": count}
    return bank
