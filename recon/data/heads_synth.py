"""Procedural portraits: anny heads of varied shape, skin, hair, eye colour and expression, from any camera.

The ground truth the avatar pipeline (Zero-1-to-A, https://arxiv.org/abs/2503.15851) is measured
against, rendered by the project itself: a head of :mod:`recon.parametric.heads` (anny backend) with
random shape (small offsets of its phenotypes and local face shapes), a random expression (a few of its
facial actions, a jaw opening, a gaze and a small neck turn), per-vertex albedo (skin tone, a hair cap
over the skull, darker brows, redder lips, white eyes with a coloured iris), rasterized
(:func:`recon.render.mesh_raster.rasterize_mesh`) with the hand videos' Lambert shading
(:mod:`recon.data.hands_synth`) at 2x2 samples per pixel. The mask is the head's coverage (> 1/2).

World: FLAME's frame (+Y up, the face looks along +Z), the head's centre (the middle of its bounding
box at the neutral pose) at the origin, cameras on a sphere around it (``recon.cameras``' conventions);
metres. Ground truth per portrait: every head parameter, the camera, the 51 landmarks in 3D and in
pixels, the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras, cameras_from_spherical
from recon.data.hands_synth import vertex_normals
from recon.data.procedural import DEFAULT_AMBIENT, DEFAULT_LIGHT_DIR, _box_pool
from recon.errors import SEED, checked
from recon.parametric.heads import HeadModel, create_head_model

SKIN_TONES = (
    (0.96, 0.80, 0.69),
    (0.90, 0.70, 0.56),
    (0.78, 0.57, 0.42),
    (0.58, 0.40, 0.28),
    (0.38, 0.25, 0.17),
)
HAIR_COLORS = ((0.08, 0.06, 0.05), (0.30, 0.18, 0.10), (0.62, 0.45, 0.25), (0.85, 0.72, 0.45),
               (0.55, 0.22, 0.10),
               (0.70, 0.70, 0.70))  # fmt: skip
IRIS_COLORS = ((0.25, 0.15, 0.08), (0.30, 0.45, 0.65), (0.35, 0.45, 0.25), (0.45, 0.30, 0.15))
EXPRESSIONS = (
    ("smile", {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0, "cheekSquintLeft": 0.4,
               "cheekSquintRight": 0.4}),
    ("surprise", {"browInnerUp": 1.0, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8, "eyeWideLeft": 0.6,
                  "eyeWideRight": 0.6}),
    ("frown", {"browDownLeft": 0.9, "browDownRight": 0.9, "mouthFrownLeft": 0.7, "mouthFrownRight": 0.7}),
    ("pucker", {"mouthPucker": 1.0}),
    ("wink", {"eyeBlinkLeft": 1.0, "mouthSmileLeft": 0.5}),
    ("blink", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}),
)  # fmt: skip
"""Named expressions (facial actions and their amounts); a portrait mixes one with the neutral face."""
JAW_OPEN = {"surprise": 0.25}
BACKGROUND = 1.0


@dataclass
class HeadsSynthConfig:
    """A set of procedural portraits."""

    count: int = checked(8, low=1, high=100_000)
    """Portraits."""
    size: int = checked(96, low=16, high=2048)
    """Image side in pixels (square)."""
    seed: int = checked(0, SEED)
    """Seed of the identities, expressions and cameras."""
    azimuth_deg: tuple[float, float] = checked((-60.0, 60.0), low=-180.0, high=180.0, ordered=True)
    """Range of the camera's azimuth (0: in front of the face)."""
    elevation_deg: tuple[float, float] = checked((-15.0, 25.0), low=-89.0, high=89.0, ordered=True)
    """Range of the camera's elevation."""
    distance: float = checked(0.6, low=0.2, high=10.0)
    """Camera distance to the head's centre in metres."""
    fov_deg: float = checked(25.0, low=5.0, high=120.0)
    """Vertical field of view."""
    shape_scale: float = checked(1.0, low=0.0, high=3.0)
    """Spread of the random shapes (0: every head the mean head)."""
    expression_scale: float = checked(1.0, low=0.0, high=2.0)
    """Strength of the random expressions (0: neutral faces)."""


# ------------------------------------------------------------------------------------------ identity
def draw_identity(model: HeadModel, rng: np.random.Generator, shape_scale: float = 1.0) -> dict[str, Any]:
    """Random shape ``betas [K]`` and colours: phenotypes ±0.15 around the mean, local shapes ±0.5."""
    from recon.parametric.anny_head import PHENOTYPES

    betas = np.zeros(model.num_betas)
    betas[: len(PHENOTYPES)] = rng.uniform(-0.15, 0.15, len(PHENOTYPES))
    betas[len(PHENOTYPES) :] = rng.uniform(-0.5, 0.5, model.num_betas - len(PHENOTYPES))
    skin = np.asarray(SKIN_TONES[rng.integers(len(SKIN_TONES))]) * rng.uniform(0.95, 1.05, 3)
    return {
        "betas": betas * shape_scale,
        "skin": np.clip(skin, 0, 1),
        "hair": np.asarray(HAIR_COLORS[rng.integers(len(HAIR_COLORS))]),
        "iris": np.asarray(IRIS_COLORS[rng.integers(len(IRIS_COLORS))]),
        "hairline": float(rng.uniform(0.55, 0.75)),
    }


def draw_expression(model: HeadModel, rng: np.random.Generator, scale: float = 1.0) -> dict[str, Any]:
    """A named expression at a random strength, a jaw opening, a gaze and a small neck turn."""
    name, actions = EXPRESSIONS[rng.integers(len(EXPRESSIONS))]
    strength = float(rng.uniform(0.3, 1.0)) * scale
    expression = np.zeros(model.num_expressions)
    for action, amount in actions.items():
        expression[model.expression_names.index(action)] = amount * strength
    jaw = np.array([JAW_OPEN.get(name, 0.0) * strength + rng.uniform(0.0, 0.12) * scale, 0.0, 0.0])
    gaze = np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.25, 0.25), 0.0]) * scale
    neck = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.2, 0.2), rng.uniform(-0.08, 0.08)]) * scale
    return {"name": name, "expression": expression, "jaw_pose": jaw, "leye_pose": gaze, "reye_pose": gaze,
            "neck_pose": neck}  # fmt: skip


def head_albedo(model: HeadModel, identity: dict[str, Any], betas: Tensor | None = None) -> Tensor:
    """``[V, 3]``: skin, a hair cap above the hairline and behind the ears, brows, lips, eyes."""
    with torch.no_grad():
        v = model(betas=betas).vertices[0]
    W = model.weights
    E = model.expression_names
    skin = torch.tensor(identity["skin"], dtype=torch.float32)
    albedo = skin.expand_as(v).clone()
    # hair: the skull above a plane tilted from the forehead (hairline) down to the nape
    lo, hi = v[:, 1].min(), v[:, 1].max()
    eye_y = v[W[:, 3] > 0.99, 1].mean()
    front = v[:, 2].max()
    height = (v[:, 1] - eye_y) / (hi - eye_y)  # 0 at the eyes, 1 at the top
    depth = (front - v[:, 2]) / (front - v[:, 2].min())  # 0 at the nose, 1 at the back
    hair = (height - identity["hairline"] + 0.9 * depth > 0.0) & (v[:, 1] > lo + 0.45 * (hi - lo))
    hair = hair & (depth > 0.12) | (height > identity["hairline"])
    albedo[hair] = torch.tensor(identity["hair"], dtype=torch.float32)
    # brows and lips: where their facial actions move the skin most
    brows = sum(model.exprdirs[:, :, E.index(n)].norm(dim=1) for n in ("browDownLeft", "browDownRight"))
    brow_mask = (brows > 0.6 * brows.max()) & ~hair
    albedo[brow_mask] = 0.55 * albedo[brow_mask] + 0.45 * torch.tensor(identity["hair"], dtype=torch.float32)
    lips = sum(model.exprdirs[:, :, E.index(n)].norm(dim=1) for n in ("mouthRollLower", "mouthRollUpper"))
    lip_mask = lips > 0.55 * lips.max()
    albedo[lip_mask] = albedo[lip_mask] * torch.tensor([0.95, 0.65, 0.65])
    # eyes: white, with a coloured iris and a dark pupil where the eyeball faces forward
    for joint in (3, 4):
        ball = W[:, joint] > 0.99
        center = v[ball].mean(0)
        direction = torch.nn.functional.normalize(v[ball] - center, dim=-1)[:, 2]
        color = torch.full((int(ball.sum()), 3), 0.92)
        color[direction > 0.8] = torch.tensor(identity["iris"], dtype=torch.float32)
        color[direction > 0.95] = 0.05
        albedo[ball] = color
    return albedo.clamp(0, 1)


# -------------------------------------------------------------------------------------------- render
def render_head(
    vertices: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3]
    albedo: Tensor,  # [V, 3]
    camera: Cameras,  # one camera
    supersample: int = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(rgb [H, W, 3], coverage [H, W], depth [H, W])`` of one head, Lambert-shaded, on white."""
    from recon.render.mesh_raster import rasterize_mesh

    big = camera.scaled(supersample)
    light = torch.nn.functional.normalize(torch.tensor(DEFAULT_LIGHT_DIR), dim=0)
    raster = rasterize_mesh(vertices, faces, big)
    fid, bary = raster.face_ids[0], raster.barycentrics[0]
    hit = fid >= 0
    tri = faces[fid.clamp_min(0)]
    normals = vertex_normals(vertices, faces)
    n = torch.nn.functional.normalize((normals[tri] * bary[..., None]).sum(-2), dim=-1)
    points = (vertices[tri] * bary[..., None]).sum(-2)
    facing = (
        torch.sign(((big.camera_to_worlds[0, :3, 3] - points) * n).sum(-1, keepdim=True)).clamp_min(0) * 2 - 1
    )
    n = n * facing
    shade = DEFAULT_AMBIENT + (1 - DEFAULT_AMBIENT) * (n * light).sum(-1).clamp_min(0)
    color = (albedo[tri] * bary[..., None]).sum(-2) * shade[..., None]
    rgb = torch.where(hit[..., None], color, torch.full_like(color, BACKGROUND))
    depth = torch.where(hit, raster.depth[0], torch.zeros_like(raster.depth[0]))
    pooled = _box_pool(torch.cat([rgb, hit[..., None].float(), depth[..., None]], -1)[None], supersample)[0]
    return pooled[..., :3].clamp(0, 1), pooled[..., 3], pooled[..., 4]


def project(points: Tensor, camera: Cameras) -> Tensor:
    """``[N, 3]`` world points -> ``[N, 2]`` pixel coordinates (x right, y down; pixel centres at i + 0.5)."""
    viewmat, K = camera.viewmats()[0], camera.Ks()[0]
    p = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = p @ K.T
    return uv[:, :2] / uv[:, 2:]


def synth_portraits(config: HeadsSynthConfig, model: HeadModel | None = None) -> dict[str, Any]:
    """Renders ``config.count`` portraits; returns images, masks, cameras and the ground truth."""
    rng = np.random.default_rng(config.seed)
    model = model or create_head_model("anny")
    C = config.count
    az = torch.tensor(rng.uniform(*config.azimuth_deg, C), dtype=torch.float32)
    el = torch.tensor(rng.uniform(*config.elevation_deg, C), dtype=torch.float32)
    ones = torch.ones(C)
    cameras = cameras_from_spherical(
        el, az, ones * config.distance, ones * config.fov_deg, config.size, config.size
    )
    images, masks, landmarks_2d, params, identities = [], [], [], [], []
    landmarks_3d, centers = [], []
    with torch.no_grad():
        for i in range(C):
            identity = draw_identity(model, rng, config.shape_scale)
            expr = draw_expression(model, rng, config.expression_scale)
            betas = torch.tensor(identity["betas"], dtype=torch.float32)[None]
            neutral = model(betas=betas).vertices[0]
            center = 0.5 * (neutral.min(0).values + neutral.max(0).values)
            p = {k: torch.tensor(v, dtype=torch.float32)[None] for k, v in expr.items() if k != "name"}
            p["betas"], p["transl"] = betas, -center[None]
            out = model(**p)
            albedo = head_albedo(model, identity, betas)
            rgb, cover, _ = render_head(out.vertices[0], model.faces, albedo, cameras[i])
            images.append((rgb.numpy() * 255).round().astype(np.uint8))
            masks.append(cover.numpy() > 0.5)
            landmarks_3d.append(out.landmarks[0])
            landmarks_2d.append(project(out.landmarks[0], cameras[i]))
            params.append({**{k: v[0] for k, v in p.items()}, "name": expr["name"]})
            identities.append(identity)
            centers.append(center)
    return {
        "images": np.stack(images),  # [C, H, W, 3] uint8
        "masks": np.stack(masks),  # [C, H, W] bool
        "cameras": cameras,
        "params": params,  # per portrait: betas, expression, jaw/neck/eye poses, transl (centring), name
        "identities": identities,  # skin, hair, iris colours, hairline
        "landmarks": torch.stack(landmarks_3d),  # [C, 51, 3] world
        "landmarks_2d": torch.stack(landmarks_2d),  # [C, 51, 2] pixels
        "faces": model.faces,
    }
