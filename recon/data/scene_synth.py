"""Procedural rooms with objects of the embedded world: DP-Recon's input with its own ground truth.

A :class:`ProceduralScene` is a box room (floor, back and side walls, ceiling; open towards the
cameras) holding 3-6 objects of :mod:`recon.data.objects`, each scaled, turned about +Y and set on the
floor (contact), one against the back wall (contact, its back hidden) and one partly behind another
(a real occlusion, checked in every view). Everything follows from the exact SDFs: sphere-traced
Lambertian renders (the light of :mod:`recon.data.procedural`), instance masks (the nearest channel
at the hit point), z-depth, camera-space normals, and each object's ground-truth mesh in scene
coordinates. :func:`synth_scene` writes the documented layout of :mod:`recon.data.scene` plus
``eval/`` (held-out views between the training views, the same layout) and ``gt/`` (``scene.json``
and ``objects/<id>.ply``).

The scene lives in the cube ``[-1, 1]^3`` (the reconstruction's box; every camera ray meets a surface
inside it): the room's interior is ``|x| <= 0.85``, ``-0.5 <= y <= 0.85``, ``z >= -0.85``, the walls fill
the box around it, and the cameras stand in front of the open side (``z`` about 2) on a sweeping arc.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.cameras import Cameras, focal_from_fov, look_at
from recon.data.object_kinds import KIND_SPECS, KINDS
from recon.data.objects import COLORS, PATTERNS, SECONDARY_COLORS, ProceduralObject, caption, object_mesh
from recon.data.procedural import DEFAULT_AMBIENT, DEFAULT_LIGHT_DIR, _sdf_normals, _sphere_trace, camera_rays
from recon.data.scene import InstanceScene, atomic_scene_folder, write_documented
from recon.errors import SEED, UserError, check_fields, checked

BOX = 1.0
"""Half side of the scene cube."""


def _box_sdf(p: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Exact SDF of an axis-aligned box ``[lo, hi]`` at points ``[N, 3]``."""
    q = (p - (lo + hi) / 2).abs() - (hi - lo) / 2
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


@dataclass(frozen=True)
class Room:
    """A box room open at ``z = +BOX`` (towards the cameras), its walls filling the cube around it."""

    half_width: float = 0.85
    floor: float = -0.5
    ceiling: float = 0.85
    back: float = -0.85

    def sdf(self, p: Tensor) -> Tensor:
        """Signed distance ``[N]`` (1-Lipschitz: the wall material is the cube minus the interior)."""
        outer = _box_sdf(p, p.new_tensor([-BOX] * 3), p.new_tensor([BOX] * 3))
        inner = _box_sdf(
            p,
            p.new_tensor([-self.half_width, self.floor, self.back]),
            p.new_tensor([self.half_width, self.ceiling, 3.0 * BOX]),
        )
        return torch.maximum(outer, -inner)

    def albedo(self, p: Tensor) -> Tensor:
        """Colours ``[N, 3]`` of surface points: a checkered wooden floor, pale walls, white ceiling."""
        x, y, z = p.unbind(-1)
        d_floor, d_ceiling = (y - self.floor).abs(), (y - self.ceiling).abs()
        d_wall = torch.minimum((x.abs() - self.half_width).abs(), (z - self.back).abs())
        cells = (torch.floor(x / 0.25) + torch.floor(z / 0.25)).long() % 2
        floor = torch.where(
            cells[:, None] == 0, p.new_tensor([0.62, 0.47, 0.33]), p.new_tensor([0.48, 0.35, 0.24])
        )
        side = (x.abs() - self.half_width).abs() < (z - self.back).abs()
        wall = torch.where(side[:, None], p.new_tensor([0.72, 0.76, 0.80]), p.new_tensor([0.80, 0.78, 0.70]))
        out = torch.where((d_wall < d_floor)[:, None], wall, floor)
        ceiling = (d_ceiling < d_floor) & (d_ceiling < d_wall)
        return torch.where(ceiling[:, None], p.new_tensor([0.92, 0.92, 0.90]), out)


@dataclass(frozen=True)
class PlacedObject:
    """An object of the embedded world at a pose in the scene: ``x_scene = c + s R_yaw x_object``."""

    obj: ProceduralObject
    instance_id: int
    center: tuple[float, float, float]
    scale: float
    yaw_deg: float

    @property
    def rotation(self) -> Tensor:  # [3, 3] object -> scene
        a = math.radians(self.yaw_deg)
        return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])

    def to_object(self, p: Tensor) -> Tensor:
        """Scene points ``[N, 3]`` in the object's frame."""
        return (p - p.new_tensor(self.center)) @ self.rotation.to(p) / self.scale

    def sdf(self, p: Tensor) -> Tensor:
        """Signed distance ``[N]``: exact near the object, the bounding sphere's distance far from it."""
        local = self.to_object(p)
        r = local.norm(dim=-1)
        out = (r - 0.96) * self.scale  # every kind fits the unit sphere
        near = (r < 1.2).nonzero().squeeze(-1)
        if near.numel():
            out = out.index_copy(0, near, self.obj.sdf(local[near]) * self.scale)
        return out

    def albedo(self, p: Tensor) -> Tensor:
        return self.obj.albedo(self.to_object(p))

    def support(self, direction: np.ndarray) -> float:
        """``max(x . direction)`` over the placed object (exact, from its parts)."""
        d_obj = self.rotation.double().numpy().T @ direction
        return float(np.dot(self.center, direction)) + self.scale * max(
            p.support(d_obj) for p in self.obj.spec.parts
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box ``(lo [3], hi [3])`` of the placed object in scene coordinates."""
        axes = np.eye(3)
        return (
            np.array([-self.support(-axes[i]) for i in range(3)]),
            np.array([self.support(axes[i]) for i in range(3)]),
        )

    def mesh(self, resolution: int = 96):
        """The ground-truth mesh in scene coordinates (``trimesh.Trimesh``, vertex-coloured)."""
        mesh = object_mesh(self.obj, resolution)
        verts = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
        mesh.vertices = (verts * self.scale @ self.rotation.T + torch.tensor(self.center)).numpy()
        return mesh

    def caption(self) -> str:
        return caption(self.obj)


@dataclass
class SceneRender:
    """Maps of :meth:`ProceduralScene.render` for ``C`` cameras of size ``H x W``."""

    rgb: Tensor  # [C, H, W, 3]
    masks: Tensor  # [C, H, W] int64 instance ids (0 background = the room)
    depth: Tensor  # [C, H, W] z-depth (0 where nothing was hit)
    normals: Tensor  # [C, H, W, 3] camera-space unit normals, OpenGL axes (0 where nothing was hit)
    hit: Tensor  # [C, H, W] bool


@dataclass
class ProceduralScene:
    """A room and its placed objects; channel 0 of :meth:`channel_sdfs` is the room."""

    room: Room
    objects: list[PlacedObject]

    def channel_sdfs(self, p: Tensor) -> Tensor:
        """``[N, K + 1]``: the room, then each object (in ``objects`` order)."""
        return torch.stack([self.room.sdf(p)] + [o.sdf(p) for o in self.objects], dim=-1)

    def sdf(self, p: Tensor) -> Tensor:
        return self.channel_sdfs(p).min(dim=-1).values

    def albedo(self, p: Tensor, channel: Tensor) -> Tensor:
        out = self.room.albedo(p)
        for k, o in enumerate(self.objects, start=1):
            idx = (channel == k).nonzero().squeeze(-1)
            if idx.numel():
                out = out.index_copy(0, idx, o.albedo(p[idx]))
        return out

    @torch.no_grad()
    def render(self, cameras: Cameras, only: int | None = None, max_steps: int = 192) -> SceneRender:
        """Sphere-traces the scene (or the object of ``instance_id == only`` alone) from ``cameras``."""
        origins, dirs, z_per_t = camera_rays(cameras)
        C, H, W = origins.shape[:3]
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        if only is None:
            sdf, ids = self.sdf, [0] + [obj.instance_id for obj in self.objects]
        else:
            placed = next(obj for obj in self.objects if obj.instance_id == only)
            sdf, ids = placed.sdf, [only]
        t0 = torch.zeros(o.shape[0])
        t_far = torch.full_like(t0, 8.0 * BOX)
        t = _sphere_trace(sdf, o, d, t0, t_far, torch.ones_like(t0, dtype=torch.bool), max_steps, 2e-5)
        p = o + t[:, None] * d
        hit = (t < t_far) & (sdf(p).abs() < 2e-3)
        idx = hit.nonzero().squeeze(-1)
        ph = p[idx]
        chans = self.channel_sdfs(ph) if only is None else sdf(ph)[:, None]
        channel = chans.argmin(dim=-1)
        normals = _sdf_normals(sdf, ph, eps=5e-4)
        light = F.normalize(torch.tensor(DEFAULT_LIGHT_DIR), dim=0)
        shade = DEFAULT_AMBIENT + (1 - DEFAULT_AMBIENT) * (normals @ light).clamp_min(0)
        albedo = self.albedo(ph, channel) if only is None else placed.albedo(ph)
        n = o.shape[0]
        rgb = torch.ones(n, 3).index_copy(0, idx, (albedo * shade[:, None]).clamp(0, 1))
        masks = torch.zeros(n, dtype=torch.long).index_copy(0, idx, torch.tensor(ids)[channel])
        depth = torch.zeros(n).index_copy(0, idx, t[idx] * z_per_t.reshape(-1)[idx])
        cam_of = torch.arange(C).repeat_interleave(H * W)[idx]
        rot = cameras.camera_to_worlds[:, :3, :3].float()[cam_of]  # camera -> world
        n_cam = torch.einsum("nji,nj->ni", rot, normals)  # R^T n
        normals_out = torch.zeros(n, 3).index_copy(0, idx, n_cam)
        return SceneRender(
            rgb.view(C, H, W, 3), masks.view(C, H, W), depth.view(C, H, W), normals_out.view(C, H, W, 3),
            hit.view(C, H, W),
        )  # fmt: skip

    def instance_scene(self, cameras: Cameras, names: list[str] | None = None) -> InstanceScene:
        """The views of ``cameras`` as an :class:`~recon.data.scene.InstanceScene`, captions as prompts."""
        r = self.render(cameras)
        return InstanceScene(
            images=r.rgb,
            cameras=cameras,
            masks=r.masks,
            names=names or [f"{i:03d}.png" for i in range(len(cameras))],
            prompts={o.instance_id: o.caption() for o in self.objects},
            depths=r.depth,
            normals=r.normals,
            aabb=(-BOX, -BOX, -BOX, BOX, BOX, BOX),
        )

    def description(self) -> dict:
        """``gt/scene.json``: the room and every object (kind, colours, pose, box, caption)."""
        objects = {}
        for o in self.objects:
            lo, hi = o.bounds()
            objects[str(o.instance_id)] = {
                "caption": o.caption(), "kind": o.obj.kind, "color": o.obj.color,
                "secondary": o.obj.secondary, "pattern": o.obj.pattern, "center": list(o.center),
                "scale": o.scale, "yaw_deg": o.yaw_deg,
                "bbox_min": lo.tolist(), "bbox_max": hi.tolist(),
            }  # fmt: skip
        r = self.room
        room = {
            "half_width": r.half_width,
            "floor": r.floor,
            "ceiling": r.ceiling,
            "back": r.back,
            "box": BOX,
        }
        return {"room": room, "objects": objects}


# ---------------------------------------------------------------------------------------- cameras
def room_trajectory(
    n: int,
    width: int,
    height: int,
    fov_deg: float = 60.0,
    u: Tensor | None = None,
) -> Cameras:
    """Cameras walking across the front of the room (inside it, by its open side), looking in and down.

    Args:
        n: Number of cameras (evenly spread along the path), unless ``u`` is given.
        width: Image width.
        height: Image height.
        fov_deg: Vertical field of view.
        u: Positions along the path in ``[0, 1]`` (``[n]``), e.g. between the training views.
    """
    u = torch.linspace(0.0, 1.0, n) if u is None else u.float()
    s = 2.0 * u - 1.0  # -1 (left) .. 1 (right)
    eye = torch.stack([0.55 * s, 0.3 + 0.12 * torch.cos(math.pi * s), 0.9 - 0.06 * s * s], -1)
    target = torch.stack([-0.15 * s, torch.full_like(u, -0.35), torch.full_like(u, -0.3)], -1)
    c2w = look_at(eye, target)
    focal = float(focal_from_fov(fov_deg, height))
    k = len(u)
    full = lambda v: torch.full((k,), float(v))  # noqa: E731
    return Cameras(c2w, full(focal), full(focal), full(width / 2), full(height / 2), width, height)


# ---------------------------------------------------------------------------------------- layout
@dataclass
class SceneSynthConfig:
    """Settings of :func:`make_scene` / :func:`synth_scene`."""

    num_objects: int = checked(4, low=3, high=6)
    """Objects in the room (3-6)."""
    num_views: int = checked(10, low=3, high=500)
    """Training views along the trajectory (DP-Recon's sparse setting: 10)."""
    eval_views: int = checked(4, low=0, high=500)
    """Held-out views between the training views, written to ``eval/`` (0: none)."""
    seed: int = checked(0, SEED)
    """Seed of the objects, their colours and poses."""
    width: int = checked(160, low=16, high=4096)
    """Image width in pixels."""
    height: int = checked(120, low=16, high=4096)
    """Image height in pixels."""
    fov_deg: float = checked(60.0, low=10, high=120)
    """Vertical field of view."""
    object_size: tuple[float, float] = checked((0.22, 0.3), low=0.05, high=0.5, ordered=True)
    """Range of each object's largest half extent (scene units; the room is 1.7 wide)."""
    max_tries: int = checked(200, low=1, high=100_000)
    """Layouts tried until one has the occlusion every view must show."""
    mesh_resolution: int = checked(96, low=16, high=512)
    """Marching-cubes resolution of the ground-truth meshes."""


def _pick_objects(rng: np.random.Generator, n: int) -> list[ProceduralObject]:
    kinds = rng.choice(len(KINDS), size=n, replace=False)
    colors = rng.choice(len(COLORS), size=n, replace=False)
    out = []
    for k, c in zip(kinds, colors):
        kind, color = KINDS[int(k)], list(COLORS)[int(c)]
        if KIND_SPECS[kind].patternable and rng.random() < 0.35:
            secondary = str(rng.choice([s for s in SECONDARY_COLORS if s != color]))
            out.append(ProceduralObject(kind, color, secondary, str(rng.choice(PATTERNS[1:]))))
        else:
            out.append(ProceduralObject(kind, color))
    return out


def _place(
    obj: ProceduralObject, iid: int, x: float, z: float, yaw: float, size: float, room: Room
) -> PlacedObject:
    ext = max(max(p.support(a) for p in obj.spec.parts) for a in np.eye(3))
    scale = size / ext
    probe = PlacedObject(obj, iid, (x, 0.0, z), scale, yaw)
    lo, _ = probe.bounds()
    return PlacedObject(obj, iid, (x, room.floor - lo[1] + 1e-3, z), scale, yaw)  # on the floor


def _height_ratio(obj: ProceduralObject) -> float:
    """Height over largest extent of a kind (tall kinds make good occluders)."""
    ext = [max(p.support(a) for p in obj.spec.parts) for a in np.eye(3)]
    return ext[1] / max(ext)


def _footprint(o: PlacedObject) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = o.bounds()
    return lo[[0, 2]], hi[[0, 2]]


def _overlaps(a: PlacedObject, b: PlacedObject, gap: float = 0.03) -> bool:
    (alo, ahi), (blo, bhi) = _footprint(a), _footprint(b)
    return bool(np.all(alo - gap < bhi) and np.all(blo - gap < ahi))


def _inside(o: PlacedObject, room: Room) -> bool:
    lo, hi = o.bounds()
    return bool(lo[0] > -room.half_width + 0.02 and hi[0] < room.half_width - 0.02
                and lo[2] > room.back - 1e-6 and hi[2] < 0.55 and hi[1] < room.ceiling - 0.05)  # fmt: skip


def _try_layout(rng: np.random.Generator, objects: list[ProceduralObject], cfg: SceneSynthConfig, room: Room):
    size = lambda: float(rng.uniform(*cfg.object_size))  # noqa: E731
    yaw = lambda: float(rng.uniform(-35.0, 35.0))  # noqa: E731
    # 1: the occluder, in the front half; 2: partly behind it (its footprint's front just behind 1's back).
    # The cameras look down on the room: the occluder is the tallest object (at the top of the size
    # range) and the hidden one the flattest (at the bottom), close behind it.
    lo_size, hi_size = cfg.object_size
    objects = sorted(objects, key=_height_ratio, reverse=True)
    objects = [objects[0], objects[-1], *objects[1:-1]]
    x1, z1 = float(rng.uniform(-0.35, 0.35)), float(rng.uniform(0.05, 0.3))
    front = _place(objects[0], 1, x1, z1, yaw(), float(rng.uniform((lo_size + hi_size) / 2, hi_size)), room)
    flo, fhi = _footprint(front)
    size2, yaw2 = float(rng.uniform(lo_size, (lo_size + hi_size) / 2)), yaw()
    probe = _place(objects[1], 2, 0.0, 0.0, yaw2, size2, room)
    _, bhi = _footprint(probe)
    bz = flo[1] - float(rng.uniform(0.03, 0.12)) - bhi[1]
    bx = (flo[0] + fhi[0]) / 2 + float(rng.uniform(-0.3, 0.3)) * (fhi[0] - flo[0])
    placed = [front, _place(objects[1], 2, bx, bz, yaw2, size2, room)]
    # 3: against the back wall, facing the cameras (yaw 0): its back touches the wall.
    x3, size3 = float(rng.uniform(-0.55, 0.55)), size()
    lo3, _ = _place(objects[2], 3, x3, 0.0, 0.0, size3, room).bounds()
    placed.append(_place(objects[2], 3, x3, room.back - lo3[2] + 1e-3, 0.0, size3, room))
    for i, obj in enumerate(objects[3:], start=4):
        for _ in range(50):
            cand = _place(
                obj, i, float(rng.uniform(-0.65, 0.65)), float(rng.uniform(-0.6, 0.35)), yaw(), size(), room
            )
            if _inside(cand, room) and not any(_overlaps(cand, o) for o in placed):
                placed.append(cand)
                break
        else:
            return None
    if not all(_inside(o, room) for o in placed):
        return None
    if any(_overlaps(a, b) for i, a in enumerate(placed) for b in placed[i + 1 :]):
        return None
    return placed


def occlusion_fractions(scene: ProceduralScene, cams: Cameras, max_steps: int = 64) -> Tensor:
    """``[K, C]``: the share of each object's silhouette (rendered alone) that view ``c`` sees in the scene
    (1: in full view, 0: hidden or out of view; NaN where the object alone is out of view)."""
    masks = scene.render(cams, max_steps=max_steps).masks
    out = []
    for o in scene.objects:
        full = scene.render(cams, only=o.instance_id, max_steps=max_steps).hit.flatten(1).sum(-1).float()
        seen = (masks == o.instance_id).flatten(1).sum(-1).float()
        out.append(torch.where(full > 0, seen / full.clamp_min(1), torch.full_like(full, math.nan)))
    return torch.stack(out)


def _occluded_everywhere(scene: ProceduralScene, cams: Cameras) -> bool:
    """Whether every view shows some object partly (5-90 %) hidden behind another surface."""
    frac = occlusion_fractions(scene, cams)
    partly = (frac > 0.05) & (frac < 0.9)
    return bool(partly.any(dim=0).all())


def make_scene(config: SceneSynthConfig | None = None) -> ProceduralScene:
    """A seeded room with ``num_objects`` objects: contact with the floor (all) and the back wall (one),
    one object placed partly behind another, and in every training view some object partly hidden
    (:func:`occlusion_fractions` between 5 and 90 %).

    Raises:
        UserError: no layout satisfied the occlusion in ``max_tries`` tries.
    """
    cfg = config or SceneSynthConfig()
    check_fields(cfg)
    rng = np.random.default_rng(cfg.seed)
    room = Room()
    probe = room_trajectory(cfg.num_views, 40, max(16, round(40 * cfg.height / cfg.width)), cfg.fov_deg)
    for _ in range(cfg.max_tries):
        objects = _pick_objects(rng, cfg.num_objects)
        placed = _try_layout(rng, objects, cfg, room)
        if placed is None:
            continue
        scene = ProceduralScene(room, placed)
        if _occluded_everywhere(scene, probe):
            return scene
    raise UserError(
        f"no layout of {cfg.num_objects} objects had an occlusion in every view after {cfg.max_tries} tries; "
        "try another --seed or fewer --views"
    )


def synth_scene(out: str | Path, config: SceneSynthConfig | None = None) -> Path:
    """Writes a procedural scene folder: the documented layout, ``eval/`` and ``gt/`` (atomically).

    Returns:
        The folder.
    """
    cfg = config or SceneSynthConfig()
    scene = make_scene(cfg)
    cams = room_trajectory(cfg.num_views, cfg.width, cfg.height, cfg.fov_deg)
    train = scene.instance_scene(cams)
    if not bool(scene.render(cams[:1], max_steps=48).hit.any()):  # pragma: no cover - a broken trajectory
        raise RuntimeError("the cameras see nothing")
    with atomic_scene_folder(out) as tmp:
        write_documented(tmp, train)
        if cfg.eval_views:
            n = cfg.num_views
            u = (torch.linspace(0, n - 2, cfg.eval_views).round() + 0.5) / max(n - 1, 1)
            ev = scene.instance_scene(room_trajectory(0, cfg.width, cfg.height, cfg.fov_deg, u=u))
            (tmp / "eval").mkdir()
            write_documented(tmp / "eval", ev)
        gt = tmp / "gt" / "objects"
        gt.mkdir(parents=True)
        for o in scene.objects:
            o.mesh(cfg.mesh_resolution).export(gt / f"{o.instance_id}.ply")
        (tmp / "gt" / "scene.json").write_text(json.dumps(scene.description(), indent=1))
    return Path(out)


@dataclass
class GroundTruth:
    """What ``gt/`` of a synthetic scene holds."""

    description: dict
    meshes: dict[int, object] = field(default_factory=dict)  # instance id -> trimesh.Trimesh


def scene_from_description(description: dict) -> ProceduralScene:
    """The :class:`ProceduralScene` of a ``gt/scene.json`` (inverse of ``ProceduralScene.description``)."""
    r = description["room"]
    room = Room(r["half_width"], r["floor"], r["ceiling"], r["back"])
    objects = [
        PlacedObject(
            ProceduralObject(o["kind"], o["color"], o["secondary"], o["pattern"]),
            int(i),
            tuple(o["center"]),
            float(o["scale"]),
            float(o["yaw_deg"]),
        )  # fmt: skip
        for i, o in description["objects"].items()
    ]
    return ProceduralScene(room, objects)


def load_ground_truth(folder: str | Path) -> GroundTruth:
    """``gt/scene.json`` and the objects' meshes of a folder written by :func:`synth_scene`."""
    import trimesh

    folder = Path(folder) / "gt"
    if not (folder / "scene.json").is_file():
        raise UserError(
            f"{folder.parent} has no gt/scene.json; it is not a procedural scene from `sds3d scene synth`"
        )
    desc = json.loads((folder / "scene.json").read_text())
    meshes = {int(i): trimesh.load(folder / "objects" / f"{i}.ply", force="mesh") for i in desc["objects"]}
    return GroundTruth(desc, meshes)


__all__ = [
    "BOX",
    "GroundTruth",
    "PlacedObject",
    "ProceduralScene",
    "Room",
    "SceneRender",
    "SceneSynthConfig",
    "load_ground_truth",
    "make_scene",
    "occlusion_fractions",
    "room_trajectory",
    "scene_from_description",
    "synth_scene",
]
