"""Procedural hand-object videos: two hands grasping and turning an object of the embedded world.

The ground truth the BIGS pipeline is measured against, rendered by the project itself:

* an object of :mod:`recon.data.objects` (a patterned mug, cylinder, cube, ...; its exact SDF
  sphere-traced by :func:`~recon.data.objects.render_object`) scaled to ``object_radius`` metres;
* two anny hands (:mod:`recon.parametric.hands`; the left is the mirror of the right) holding it from
  both sides, palms towards it, fingers up and curled over it, rasterized
  (:func:`recon.render.mesh_raster.rasterize_mesh`) with a skin albedo that varies along the hand
  (so that photometric fitting has texture to follow) and the objects' Lambert shading;
* the grasp turns about the axis between the hands (the object rolls between the palms, ±``turn_deg``)
  while the fingers flex a little, seen by a fixed camera in front and above (or one orbiting slowly);
* hands and object composited by depth at 2x2 samples per pixel; the masks are each subject's visible
  coverage (> 1/2).

World: +Y up, the object at the origin, the camera on +Z (``recon.cameras``' conventions); metres.
Written as a sequence folder of :mod:`recon.data.hands` with per-frame ``viewmats``, the object's
prompt (its caption), initial hand parameters = ground truth + estimator-like noise (per-frame rotation
noise, a per-sequence depth bias and per-frame translation jitter), and ``gt/``: ``gt.json`` (true hand
parameters, 21 keypoints per hand and frame, the object's description, scale and per-frame pose, the
frames' background colour) and
meshes (``gt/object.obj`` in metres in the object's frame, ``gt/hands_000000.obj`` for frame 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras, cameras_from_spherical
from recon.data.objects import ProceduralObject, caption, object_mesh, render_object
from recon.data.procedural import DEFAULT_AMBIENT, DEFAULT_LIGHT_DIR, _box_pool
from recon.errors import SEED, checked
from recon.parametric.hands import HandModel, hand_models, mirror_axis_angle, mirror_points
from recon.parametric.lbs import axis_angle_to_matrix, matrix_to_axis_angle

GRASPABLE = ("mug", "cylinder", "cube", "sphere", "torus", "mushroom")
PATTERNS = ("striped", "checkered", "dotted", "two-tone")
SKIN = (0.87, 0.66, 0.53)
BACKGROUND = 1.0


@dataclass
class HandsSynthConfig:
    """A procedural hand-object video."""

    frames: int = checked(24, low=2, high=2000)
    """Frames of the video."""
    size: int = checked(128, low=32, high=2048)
    """Image side in pixels (square)."""
    seed: int = checked(0, SEED)
    """Seed of the object, the grasp, the motion and the noise."""
    object_kind: str = ""
    """A kind of the embedded world (``""``: drawn from the graspable ones by the seed)."""
    object_radius: float = checked(0.055, low=0.01, high=0.5)
    """Radius of the object's bounding sphere in metres."""
    turn_deg: float = checked(35.0, low=0.0, high=180.0)
    """Amplitude of the grasp's turn about the axis between the hands."""
    camera_motion: Literal["fixed", "orbit"] = "fixed"
    """``fixed`` or ``orbit`` (the camera swings ±12° in azimuth)."""
    distance: float = checked(0.4, low=0.1, high=10.0)
    """Camera distance to the object in metres."""
    fov_deg: float = checked(40.0, low=5.0, high=120.0)
    """Vertical field of view."""
    noise_rot_deg: float = checked(6.0, low=0.0, high=90.0)
    """Std of the initial global orientation's error (per frame, random axis)."""
    noise_pose_deg: float = checked(7.0, low=0.0, high=90.0)
    """Std of each initial joint-angle component's error (per frame)."""
    noise_transl_mm: float = checked(5.0, low=0.0, high=500.0)
    """Std of the initial translation's per-frame jitter per axis."""
    depth_bias_mm: float = checked(10.0, low=0.0, high=500.0)
    """Std of the initial translation's per-sequence bias along the camera axis."""


# ------------------------------------------------------------------------------------------- scene
def draw_object(rng: np.random.Generator, kind: str = "") -> ProceduralObject:
    from recon.data.objects import COLORS, KIND_SPECS, SECONDARY_COLORS

    kind = kind or GRASPABLE[rng.integers(len(GRASPABLE))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    if not KIND_SPECS[kind].patternable:
        return ProceduralObject(kind, color)
    secondaries = [c for c in SECONDARY_COLORS if c != color]
    return ProceduralObject(
        kind, color, secondaries[rng.integers(len(secondaries))], PATTERNS[rng.integers(4)]
    )


def rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def grasp_pose(t: float, rng_phase: float) -> np.ndarray:
    """The right hand's 45 joint angles at phase ``t`` in [0, 1]: fingers curled, flexing a little."""
    pose = np.zeros((15, 3))
    wave = 0.12 * math.sin(2 * math.pi * (t + rng_phase))
    for finger, spread in zip(range(4), (0.10, 0.0, -0.12, -0.06)):  # index, middle, pinky, ring
        base = 3 * finger
        pose[base, 2] = 0.55 + wave  # flexion: +Z curls a right hand's fingers towards the palm (-Y)
        pose[base, 1] = spread
        pose[base + 1, 2] = 0.75 + wave
        pose[base + 2, 2] = 0.45 + 0.5 * wave
    pose[12] = (0.25, 0.35, 0.15 + 0.5 * wave)  # thumb towards the palm
    pose[13, 2] = 0.25
    pose[14, 2] = 0.3 + 0.5 * wave
    return pose.reshape(-1)


def sequence_motion(config: HandsSynthConfig, model: HandModel, rng: np.random.Generator) -> dict[str, Any]:
    """True hand parameters (both hands), object poses and cameras of every frame."""
    T = config.frames
    phase = float(rng.uniform(0, 1))
    yaw0 = float(rng.uniform(-math.pi, math.pi))
    # right hand: fingers (-X canonical) up (+Y), back of the hand (+Y canonical) out (+X), thumb (+Z) to us
    base = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    zero = model(torch.zeros(1, 3), torch.from_numpy(grasp_pose(0.0, phase)).float()[None])
    palm = zero.joints[0, [0, 1, 4, 7, 10]].mean(0).double().numpy()  # wrist + knuckles
    palm_y = zero.vertices[0, :, 1].min().item() * 0.35  # the palm's surface, below the knuckles
    contact = base @ np.array([palm[0], palm_y, palm[2]])
    offset = np.array([config.object_radius * 0.92, -config.object_radius * 0.35, 0.0]) - contact
    wrist = model.joint_template[0].double().numpy()
    out: dict[str, Any] = {"right": {k: [] for k in ("global_orient", "hand_pose", "betas", "transl")}}
    obj_R, obj_t = [], []
    for i in range(T):
        t = i / max(T - 1, 1)
        turn = math.radians(config.turn_deg) * math.sin(2 * math.pi * t)
        R_turn = rot_x(turn)
        R = R_turn @ base
        out["right"]["global_orient"].append(matrix_to_axis_angle(torch.from_numpy(R)).numpy())
        out["right"]["hand_pose"].append(grasp_pose(t, phase))
        out["right"]["betas"].append(np.zeros(model.num_betas))
        out["right"]["transl"].append(R_turn @ (wrist + offset) - wrist)  # about the wrist, as MANO turns
        obj_R.append(R_turn @ rot_y(yaw0))
        obj_t.append(np.zeros(3))
    right = {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in out["right"].items()}
    left = {
        "global_orient": mirror_axis_angle(right["global_orient"]),
        "hand_pose": mirror_axis_angle(right["hand_pose"]),
        "betas": right["betas"].clone(),
        "transl": mirror_points(right["transl"]),
    }
    if config.camera_motion == "orbit":
        azimuth = torch.tensor([12.0 * math.sin(2 * math.pi * i / max(T - 1, 1)) for i in range(T)])
    else:
        azimuth = torch.zeros(T)
    ones = torch.ones(T)
    cameras = cameras_from_spherical(
        ones * 25.0, azimuth, ones * config.distance, ones * config.fov_deg, config.size, config.size
    )
    return {
        "hands": {"right": right, "left": left},
        "object_rotations": torch.tensor(np.asarray(obj_R), dtype=torch.float32),
        "object_translations": torch.tensor(np.asarray(obj_t), dtype=torch.float32),
        "cameras": cameras,
    }


def noisy_initial_params(
    hands: dict[str, dict[str, Tensor]], config: HandsSynthConfig, cameras: Cameras, rng: np.random.Generator
) -> dict[str, dict[str, Tensor]]:
    """Ground truth + what an estimator gets wrong: rotation noise, joint-angle noise, depth bias, jitter."""
    out = {}
    for side, params in hands.items():
        T = params["global_orient"].shape[0]
        axis = rng.normal(size=(T, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        angle = rng.normal(0, math.radians(config.noise_rot_deg), (T, 1))
        R_noise = axis_angle_to_matrix(torch.tensor(axis * angle, dtype=torch.float32))
        R = R_noise @ axis_angle_to_matrix(params["global_orient"])
        pose = params["hand_pose"] + torch.tensor(
            rng.normal(0, math.radians(config.noise_pose_deg), (T, 45)), dtype=torch.float32
        )
        view_dir = -cameras.camera_to_worlds[:, :3, 2]  # OpenGL: the camera looks down its -Z
        bias = float(rng.normal(0, config.depth_bias_mm / 1000))
        jitter = torch.tensor(rng.normal(0, config.noise_transl_mm / 1000, (T, 3)), dtype=torch.float32)
        out[side] = {
            "global_orient": matrix_to_axis_angle(R),
            "hand_pose": pose,
            "betas": params["betas"].clone(),
            "transl": params["transl"] + bias * view_dir + jitter,
        }
    return out


# ------------------------------------------------------------------------------------------- render
def hand_albedo(model: HandModel) -> Tensor:
    """``[V, 3]`` skin albedo varying along the hand (bands across the fingers, a lighter palm)."""
    v = model.v_template if model.side == "right" else mirror_points(model.v_template)
    skin = torch.tensor(SKIN)
    bands = 0.82 + 0.18 * torch.cos(2 * math.pi * v[:, 0] / 0.035)
    palm = torch.where(v[:, 1] < -0.004, 1.1, 0.95)
    tint = torch.stack(
        [torch.ones_like(v[:, 2]), 0.97 + 0.06 * torch.sin(v[:, 2] / 0.02), torch.ones_like(v[:, 2])], -1
    )
    return (skin * (bands * palm)[:, None] * tint).clamp(0, 1)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    n = torch.linalg.cross(b - a, c - a, dim=-1)
    out = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), n.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(out, dim=-1)


def render_frame(
    hands: list[
        tuple[Tensor, Tensor, Tensor]
    ],  # per hand: posed vertices [V, 3], faces [F, 3], albedo [V, 3]
    obj: ProceduralObject,
    obj_scale: float,
    obj_rotation: Tensor,  # [3, 3]
    obj_translation: Tensor,  # [3]
    camera: Cameras,  # one camera
    supersample: int = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(rgb [H, W, 3], coverage [H, W, 3] (right, left, object), depth [H, W])`` of one frame."""
    from recon.render.mesh_raster import rasterize_mesh

    big = camera.scaled(supersample)
    light = torch.nn.functional.normalize(torch.tensor(DEFAULT_LIGHT_DIR), dim=0)
    # hands: one mesh, face ids tell which hand
    verts = torch.cat([h[0] for h in hands])
    offsets = [0, hands[0][0].shape[0]]
    faces = torch.cat([hands[0][1], hands[1][1] + offsets[1]])
    albedo = torch.cat([h[2] for h in hands])
    normals = torch.cat([vertex_normals(h[0], h[1]) for h in hands])
    raster = rasterize_mesh(verts, faces, big)
    fid = raster.face_ids[0]
    hit = fid >= 0
    tri = faces[fid.clamp_min(0)]  # [H, W, 3]
    bary = raster.barycentrics[0]
    n = torch.nn.functional.normalize((normals[tri] * bary[..., None]).sum(-2), dim=-1)
    cam_pos = big.camera_to_worlds[0, :3, 3]
    points = (verts[tri] * bary[..., None]).sum(-2)
    facing = torch.sign(((cam_pos - points) * n).sum(-1, keepdim=True)).clamp_min(0) * 2 - 1
    n = n * facing  # the side the camera sees
    shade = DEFAULT_AMBIENT + (1 - DEFAULT_AMBIENT) * (n * light).sum(-1).clamp_min(0)
    hand_rgb = (albedo[tri] * bary[..., None]).sum(-2) * shade[..., None]
    hand_depth = torch.where(hit, raster.depth[0], torch.full_like(raster.depth[0], float("inf")))
    hand_label = torch.where(fid < hands[0][1].shape[0], 0, 1)
    # object: trace the unit object from the camera moved into the object's frame
    T_obj = torch.eye(4)
    T_obj[:3, :3] = obj_rotation * obj_scale
    T_obj[:3, 3] = obj_translation
    c2w_obj = torch.linalg.inv(T_obj) @ big.camera_to_worlds[0]
    c2w_obj[:3, :3] = c2w_obj[:3, :3] * obj_scale  # back to a rotation (the inverse divided it)
    obj_cam = Cameras(c2w_obj[None], big.fx, big.fy, big.cx, big.cy, big.width, big.height)
    light_obj = tuple((obj_rotation.T @ light).tolist())
    o = render_object(obj, obj_cam, light_dir=light_obj, supersample=1, background=BACKGROUND)
    obj_hit = o.alpha[0, ..., 0] > 0.5
    obj_depth = torch.where(
        obj_hit, o.depth[0, ..., 0] * obj_scale, torch.full_like(hand_depth, float("inf"))
    )
    hand_front = hit & (hand_depth <= obj_depth)
    obj_front = obj_hit & ~hand_front
    rgb = torch.full((big.height, big.width, 3), BACKGROUND)
    rgb = torch.where(obj_front[..., None], o.rgb[0], rgb)
    rgb = torch.where(hand_front[..., None], hand_rgb, rgb)
    labels = torch.stack(
        [hand_front & (hand_label == 0), hand_front & (hand_label == 1), obj_front], -1
    ).float()
    depth = torch.where(
        hand_front, hand_depth, torch.where(obj_front, obj_depth, torch.zeros_like(hand_depth))
    )
    pooled = _box_pool(torch.cat([rgb, labels, depth[..., None]], -1)[None], supersample)[0]
    return pooled[..., :3].clamp(0, 1), pooled[..., 3:6], pooled[..., 6]


def synth_hands_sequence(config: HandsSynthConfig) -> dict[str, Any]:
    """Renders a sequence; returns images, masks, cameras, true and initial parameters and the object."""
    rng = np.random.default_rng(config.seed)
    obj = draw_object(rng, config.object_kind)
    models = hand_models("anny")
    motion = sequence_motion(config, models["right"], rng)
    cameras = motion["cameras"]
    albedo = {side: hand_albedo(m) for side, m in models.items()}
    images, masks, keypoints = [], [], {"right": [], "left": []}
    with torch.no_grad():
        outputs = {side: models[side](**motion["hands"][side]) for side in ("right", "left")}
        for t in range(config.frames):
            hands = [(outputs[s].vertices[t], models[s].faces, albedo[s]) for s in ("right", "left")]
            rgb, cover, _ = render_frame(
                hands, obj, config.object_radius, motion["object_rotations"][t],
                motion["object_translations"][t], cameras[t],
            )  # fmt: skip
            images.append((rgb.numpy() * 255).round().astype(np.uint8))
            masks.append(cover.numpy() > 0.5)
        for side in ("right", "left"):
            keypoints[side] = outputs[side].keypoints
    initial = noisy_initial_params(motion["hands"], config, cameras, rng)
    return {
        "images": np.stack(images),
        "masks": np.stack(masks),
        "cameras": cameras,
        "object": obj,
        "prompt": caption(obj),
        "hands": motion["hands"],
        "keypoints": keypoints,
        "initial": initial,
        "object_rotations": motion["object_rotations"],
        "object_translations": motion["object_translations"],
        "vertices": {s: outputs[s].vertices for s in outputs},
        "faces": {s: models[s].faces for s in models},
    }


def _obj_text(vertices: np.ndarray, faces: np.ndarray) -> str:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def write_synth_sequence(out_dir: str | Path, config: HandsSynthConfig | None = None) -> Path:
    """Renders a procedural sequence and writes it as a :mod:`recon.data.hands` folder (all or nothing)."""
    from recon.data.hands import write_hand_sequence

    config = config or HandsSynthConfig()
    seq = synth_hands_sequence(config)
    cams: Cameras = seq["cameras"]
    obj: ProceduralObject = seq["object"]
    mesh = object_mesh(obj, resolution=64)
    gt = {
        "backend": "anny",
        "hand_params": {s: {k: v.tolist() for k, v in p.items()} for s, p in seq["hands"].items()},
        "keypoints": {s: k.tolist() for s, k in seq["keypoints"].items()},
        "object": {
            "kind": obj.kind, "color": obj.color, "secondary": obj.secondary, "pattern": obj.pattern,
            "scale": config.object_radius, "rotations": seq["object_rotations"].tolist(),
            "translations": seq["object_translations"].tolist(),
        },
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "background": [BACKGROUND] * 3,  # the frames' own background: renders compare with the frames
    }  # fmt: skip
    extra = {
        "gt/gt.json": gt,
        "gt/object.obj": _obj_text(np.asarray(mesh.vertices) * config.object_radius, np.asarray(mesh.faces)),
    }
    hands_v = torch.cat([seq["vertices"]["right"][0], seq["vertices"]["left"][0]]).numpy()
    V = seq["vertices"]["right"].shape[1]
    hands_f = torch.cat([seq["faces"]["right"], seq["faces"]["left"] + V]).numpy()
    extra["gt/hands_000000.obj"] = _obj_text(hands_v, hands_f)
    K = cams.Ks()[0]
    return write_hand_sequence(
        out_dir,
        seq["images"],
        seq["masks"],
        {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])},
        seq["initial"],
        viewmats=cams.viewmats().numpy(),
        prompt=seq["prompt"],
        extra=extra,
    )
