"""The catalogue of procedural object kinds: parts, poses and color slots.

A kind is a union of :class:`Part` primitives, each with a rigid pose and a color *slot*
(``"primary"``, ``"secondary"`` or a fixed RGB). Kinds are authored in any units and normalized here:
the bounding box is centred on the origin and the whole object scaled so that its farthest surface
point lies at radius :data:`FIT_RADIUS` (computed analytically from the parts). The five primitive kinds
are exactly :mod:`recon.data.procedural`'s shapes (no normalization, radius up to 0.955). World axes
follow :mod:`recon.cameras`: up is +Y and objects face +Z (camera azimuth 0 looks from +Z).

Evaluating these parts (SDFs, colors, rendering) lives in :mod:`recon.data.objects`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

PrimitiveType = Literal["sphere", "ellipsoid", "dome", "box", "cylinder", "cone", "torus", "capsule", "prism"]
PRIMITIVE_TYPES: tuple[str, ...] = (
    "sphere",
    "ellipsoid",
    "dome",
    "box",
    "cylinder",
    "cone",
    "torus",
    "capsule",
    "prism",
)
"""Part primitives and their ``size`` parameters (local frame; axis of revolution = local +Y):

- ``sphere``: ``(radius,)``
- ``ellipsoid``: ``(rx, ry, rz)`` (conservative 1-Lipschitz bound ``min(r) * (|p / r| - 1)``)
- ``dome``: ``(rx, ry, rz)``: the upper half (local ``y >= 0``) of that ellipsoid
- ``box``: ``(hx, hy, hz, rounding)`` half extents, edges rounded by ``rounding``
- ``cylinder``: ``(radius, half_height, rounding)``
- ``cone``: ``(bottom_radius, top_radius, half_height)`` capped cone, bottom at ``-half_height``
- ``torus``: ``(major, minor)``, the ring in the local XZ plane
- ``capsule``: ``(radius, half_length)``: segment along local Y, dilated
- ``prism``: ``(half_width, half_height, half_depth)``: triangle ``(-w, -h), (w, -h), (0, h)`` in local
  XY, extruded along Z (a gable roof)
"""

N_SIZE = 4
"""Size parameters per part after padding with zeros."""

ColorSlot = Literal["primary", "secondary"] | tuple[float, float, float]

FIT_RADIUS = 0.95
"""Compound kinds are scaled so that their farthest surface point is at this radius."""

# Fixed albedos of parts that do not take the caption's color.
WOOD = (0.55, 0.34, 0.16)
DARK_WOOD = (0.36, 0.21, 0.10)
SNOW = (0.93, 0.94, 0.97)
CARROT = (0.98, 0.46, 0.04)
COAL = (0.06, 0.06, 0.07)
CREAM = (0.93, 0.88, 0.74)
GILLS = (0.78, 0.66, 0.52)
METAL = (0.55, 0.57, 0.60)
GLASS = (0.16, 0.22, 0.32)
WINDOW = (0.55, 0.78, 0.95)
HEADLIGHT = (1.0, 0.93, 0.55)
TIRE = (0.09, 0.09, 0.10)
ROOF = (0.40, 0.18, 0.14)
BRICK = (0.62, 0.28, 0.20)
BEAK = (0.98, 0.58, 0.08)
PATTY = (0.36, 0.19, 0.09)
LETTUCE = (0.35, 0.75, 0.22)
CHEESE = (1.0, 0.80, 0.16)
LINEN = (0.93, 0.92, 0.89)
COFFEE = (0.30, 0.17, 0.08)
STICK = (0.95, 0.93, 0.87)


@dataclass(frozen=True)
class Part:
    """One primitive of an object, in the object's frame."""

    name: str
    """Group name (several primitives may share one, e.g. ``"front legs"``)."""
    primitive: str
    """One of :data:`PRIMITIVE_TYPES`."""
    size: tuple[float, ...]
    """Size parameters of the primitive (see :data:`PRIMITIVE_TYPES`)."""
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Position of the local origin."""
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Euler angles in degrees about X, then Y, then Z (``R = Rz @ Ry @ Rx``, local to object)."""
    color: ColorSlot = "primary"
    """``"primary"``, ``"secondary"`` or a fixed RGB in [0, 1]."""

    def __post_init__(self) -> None:
        if self.primitive not in PRIMITIVE_TYPES:
            raise ValueError(f"unknown primitive {self.primitive!r}; expected one of {PRIMITIVE_TYPES}")
        if isinstance(self.color, str) and self.color not in ("primary", "secondary"):
            raise ValueError(
                f"color slot must be 'primary', 'secondary' or an RGB triple, got {self.color!r}"
            )

    @property
    def padded_size(self) -> tuple[float, ...]:
        """``size`` padded with zeros to :data:`N_SIZE` entries (optional roundings default to 0)."""
        return tuple(self.size) + (0.0,) * (N_SIZE - len(self.size))

    @property
    def rotation_matrix(self) -> np.ndarray:  # [3, 3] local -> object
        ax, ay, az = (math.radians(a) for a in self.rotation)
        rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
        ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
        rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
        return rz @ ry @ rx

    def support(self, direction: np.ndarray) -> float:
        """``max(x . direction)`` over the part (exact; ``direction`` is a unit 3-vector)."""
        r = self.rotation_matrix
        d = r.T @ np.asarray(direction, dtype=np.float64)  # direction in the local frame
        base = float(np.dot(self.translation, direction))
        s = self.padded_size
        axial, radial = abs(d[1]), math.sqrt(max(0.0, 1.0 - d[1] * d[1]))
        if self.primitive == "sphere":
            return base + s[0]
        if self.primitive in ("ellipsoid", "dome"):
            e = np.array(s[:3]) * d
            if self.primitive == "dome" and e[1] < 0:
                e[1] = 0.0
            return base + float(np.linalg.norm(e))
        if self.primitive == "box":
            return base + float(np.dot(np.array(s[:3]) - s[3], np.abs(d))) + s[3]
        if self.primitive == "cylinder":
            return base + (s[1] - s[2]) * axial + (s[0] - s[2]) * radial + s[2]
        if self.primitive == "cone":
            return base + max(s[2] * d[1] + s[1] * radial, -s[2] * d[1] + s[0] * radial)
        if self.primitive == "torus":
            return base + s[0] * radial + s[1]
        if self.primitive == "capsule":
            return base + s[1] * axial + s[0]
        return base + max(float(np.dot(v, d)) for v in _prism_vertices(s))

    def max_radius(self) -> float:
        """Distance from the object origin to the farthest point of the part (exact, or sampled)."""
        r, t = self.rotation_matrix, np.asarray(self.translation, dtype=np.float64)
        s = self.padded_size

        def rim(center: np.ndarray, radius: float) -> float:  # farthest point of a circle (local XZ)
            c = t + r @ center
            axis = r[:, 1]
            c_perp = c - np.dot(c, axis) * axis
            return math.sqrt(max(0.0, float(c @ c) + radius * radius + 2 * radius * np.linalg.norm(c_perp)))

        if self.primitive == "sphere":
            return float(np.linalg.norm(t)) + s[0]
        if self.primitive in ("ellipsoid", "dome"):
            u = _fibonacci_sphere(4096)
            if self.primitive == "dome":
                u = u[u[:, 1] >= 0]
            pts = t + (u * np.array(s[:3])) @ r.T
            return float(np.linalg.norm(pts, axis=-1).max()) * 1.001
        if self.primitive == "box":
            corners = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)]) * (
                np.array(s[:3]) - s[3]
            )
            return float(np.linalg.norm(t + corners @ r.T, axis=-1).max()) + s[3]
        if self.primitive == "cylinder":
            rr = s[2]
            return max(rim(np.array([0, y, 0]), s[0] - rr) for y in (-(s[1] - rr), s[1] - rr)) + rr
        if self.primitive == "cone":
            return max(rim(np.array([0, -s[2], 0]), s[0]), rim(np.array([0, s[2], 0]), s[1]))
        if self.primitive == "torus":
            return rim(np.zeros(3), s[0]) + s[1]
        if self.primitive == "capsule":
            return max(float(np.linalg.norm(t + r @ np.array([0, y, 0]))) for y in (-s[1], s[1])) + s[0]
        return float(np.linalg.norm(t + _prism_vertices(s) @ r.T, axis=-1).max())

    def scaled(self, factor: float, offset: np.ndarray) -> Part:
        """This part after the object map ``x -> factor * (x + offset)``."""
        s = tuple(v * factor for v in self.size)
        t = tuple(float(v) for v in (np.asarray(self.translation) + offset) * factor)
        return replace(self, size=s, translation=t)


def _prism_vertices(s: tuple[float, ...]) -> np.ndarray:  # [6, 3]
    w, h, dz = s[0], s[1], s[2]
    return np.array([[x, y, z] for z in (-dz, dz) for x, y in ((-w, -h), (w, -h), (0.0, h))])


def _fibonacci_sphere(n: int) -> np.ndarray:  # [n, 3] near-uniform unit vectors
    i = np.arange(n) + 0.5
    y = 1 - 2 * i / n
    rho = np.sqrt(1 - y * y)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return np.stack([rho * np.cos(phi), y, rho * np.sin(phi)], axis=-1)


AXES = np.eye(3)


@dataclass(frozen=True)
class KindSpec:
    """One object kind of the catalogue."""

    name: str
    """The noun of its captions (one word)."""
    parts: tuple[Part, ...]
    """Primitives, normalized to the unit sphere."""
    asymmetric: bool = False
    """Whether the kind has a distinguishable front (or side) so that the view direction matters."""
    front_part: str | None = None
    """Name of the part group that points to +Z (asymmetric kinds with a front)."""
    patternable: bool = False
    """Whether captions may give it a pattern (striped, checkered, dotted, two-tone)."""
    default_secondary: tuple[str, ...] = ("white",)
    """Colors of its ``"secondary"`` parts when the caption names none (the first that differs from the
    primary color)."""
    pattern_box: tuple[tuple[float, float, float], tuple[float, float, float]] = field(
        default=((0,) * 3, (0,) * 3)
    )
    """Axis-aligned bounds ``(low, high)`` of its primary-slot parts: the frame of its patterns."""

    @property
    def part_names(self) -> tuple[str, ...]:
        """Part group names in order of first appearance."""
        return tuple(dict.fromkeys(p.name for p in self.parts))

    @property
    def primary_parts(self) -> tuple[str, ...]:
        """Part groups that take the caption's (primary) color."""
        return tuple(dict.fromkeys(p.name for p in self.parts if p.color == "primary"))


def _bounds(parts: tuple[Part, ...] | list[Part]) -> tuple[np.ndarray, np.ndarray]:
    hi = np.array([max(p.support(AXES[i]) for p in parts) for i in range(3)])
    lo = np.array([-max(p.support(-AXES[i]) for p in parts) for i in range(3)])
    return lo, hi


def make_kind(name: str, parts: list[Part], *, normalize: bool = True, **kwargs) -> KindSpec:
    """A :class:`KindSpec` from authored parts: bounding box centred, scaled to :data:`FIT_RADIUS`."""
    if normalize:
        lo, hi = _bounds(parts)
        offset = -(lo + hi) / 2
        centred = [p.scaled(1.0, offset) for p in parts]
        factor = FIT_RADIUS / max(p.max_radius() for p in centred)
        parts = [p.scaled(factor, np.zeros(3)) for p in centred]
    if kwargs.get("front_part") is not None and kwargs["front_part"] not in {p.name for p in parts}:
        raise ValueError(f"{name}: front part {kwargs['front_part']!r} is not a part")
    primary = [p for p in parts if p.color == "primary"]
    if not primary:
        raise ValueError(f"{name}: no part takes the primary color")
    lo, hi = _bounds(primary)
    box = (tuple(float(v) for v in lo), tuple(float(v) for v in hi))
    return KindSpec(name=name, parts=tuple(parts), pattern_box=box, **kwargs)


# --- authoring helpers --------------------------------------------------------------------------------
Vec3 = tuple[float, float, float]


def _sph(name: str, r: float, at: Vec3, color: ColorSlot = "primary") -> Part:
    return Part(name, "sphere", (r,), at, (0, 0, 0), color)


def _ell(name: str, radii: Vec3, at: Vec3, rot: Vec3 = (0, 0, 0), color: ColorSlot = "primary") -> Part:
    return Part(name, "ellipsoid", radii, at, rot, color)


def _dome(name: str, radii: Vec3, at: Vec3, rot: Vec3 = (0, 0, 0), color: ColorSlot = "primary") -> Part:
    return Part(name, "dome", radii, at, rot, color)


def _box(
    name: str,
    half: Vec3,
    at: Vec3,
    rot: Vec3 = (0, 0, 0),
    color: ColorSlot = "primary",
    rounding: float = 0.0,
) -> Part:
    return Part(name, "box", (*half, rounding), at, rot, color)


def _cyl(
    name: str,
    r: float,
    half_height: float,
    at: Vec3,
    rot: Vec3 = (0, 0, 0),
    color: ColorSlot = "primary",
    rounding: float = 0.0,
) -> Part:
    return Part(name, "cylinder", (r, half_height, rounding), at, rot, color)


def _cone(
    name: str, r_bottom: float, r_top: float, half_height: float, at: Vec3, rot: Vec3 = (0, 0, 0), color=None
) -> Part:
    return Part(name, "cone", (r_bottom, r_top, half_height), at, rot, color or "primary")


def _torus(name: str, major: float, minor: float, at: Vec3, rot: Vec3 = (0, 0, 0), color=None) -> Part:
    return Part(name, "torus", (major, minor), at, rot, color or "primary")


def _capsule(name: str, r: float, half_length: float, at: Vec3, rot: Vec3 = (0, 0, 0), color=None) -> Part:
    return Part(name, "capsule", (r, half_length), at, rot, color or "primary")


def _primitive_kinds() -> list[KindSpec]:
    """The five shapes of :mod:`recon.data.procedural`, with the same sizes (not re-normalized)."""
    from recon.data import procedural as pr

    body = {
        "sphere": Part("body", "sphere", (pr.SPHERE_RADIUS,)),
        "cube": Part("body", "box", (pr.CUBE_HALF_SIZE,) * 3 + (0.0,)),
        "cone": Part("body", "cone", (pr.CONE_RADIUS, 0.0, pr.CONE_HALF_HEIGHT)),
        "cylinder": Part("body", "cylinder", (pr.CYLINDER_RADIUS, pr.CYLINDER_HALF_HEIGHT, 0.0)),
        "torus": Part("body", "torus", (pr.TORUS_MAJOR, pr.TORUS_MINOR)),
    }
    return [make_kind(s, [body[s]], normalize=False, patternable=True) for s in pr.SHAPES]


def _chair() -> KindSpec:
    legs = [
        _cyl(name, 0.05, 0.42, (x, -0.44, z), color=WOOD)
        for name, z in (("front legs", 0.38), ("back legs", -0.38))
        for x in (-0.38, 0.38)
    ]
    parts = [
        _box("seat", (0.46, 0.05, 0.46), (0, 0, 0), rounding=0.02),
        _box("backrest", (0.46, 0.42, 0.05), (0, 0.47, -0.41), rot=(-6, 0, 0), rounding=0.02),
        *legs,
    ]
    return make_kind("chair", parts, asymmetric=True, front_part="front legs")


def _table() -> KindSpec:
    legs = [_cyl("legs", 0.055, 0.45, (x, -0.5, z), color=WOOD) for x in (-0.7, 0.7) for z in (-0.42, 0.42)]
    return make_kind("table", [_box("top", (0.85, 0.05, 0.55), (0, 0, 0), rounding=0.02), *legs])


def _snowman() -> KindSpec:
    parts = [
        _sph("bottom ball", 0.5, (0, -0.45, 0), SNOW),
        _sph("middle ball", 0.36, (0, 0.25, 0), SNOW),
        _sph("head", 0.25, (0, 0.75, 0), SNOW),
        _cone("nose", 0.075, 0.0, 0.15, (0, 0.74, 0.37), rot=(90, 0, 0), color=CARROT),
        *(_sph("eyes", 0.035, (x, 0.83, 0.215), COAL) for x in (-0.09, 0.09)),
        *(
            _sph("buttons", 0.04, (0, 0.25 + 0.36 * math.sin(a), 0.36 * math.cos(a)), COAL)
            for a in (0.35, 0.0)
        ),
        _torus("scarf", 0.27, 0.065, (0, 0.53, 0)),
        _cyl("hat", 0.27, 0.025, (0, 0.96, 0)),
        _cyl("hat", 0.17, 0.15, (0, 1.1, 0)),
    ]
    return make_kind("snowman", parts, asymmetric=True, front_part="nose")


def _mushroom() -> KindSpec:
    parts = [
        _cone("stem", 0.24, 0.17, 0.36, (0, -0.33, 0), color=CREAM),
        _dome("cap", (0.78, 0.52, 0.78), (0, 0.05, 0)),
        _cyl("gills", 0.74, 0.02, (0, 0.035, 0), color=GILLS),
    ]
    return make_kind("mushroom", parts, patternable=True)


def _house() -> KindSpec:
    parts = [
        _box("walls", (0.6, 0.42, 0.55), (0, -0.2, 0)),
        Part("roof", "prism", (0.74, 0.34, 0.64), (0, 0.56, 0), (0, 0, 0), ROOF),
        _box("chimney", (0.08, 0.2, 0.08), (0.34, 0.62, -0.2), color=BRICK),
        _box("door", (0.14, 0.25, 0.03), (0, -0.37, 0.55), color=DARK_WOOD),
        *(_box("windows", (0.12, 0.1, 0.03), (x, -0.08, 0.55), color=WINDOW) for x in (-0.37, 0.37)),
        *(_box("windows", (0.03, 0.1, 0.14), (x, -0.08, 0.0), color=WINDOW) for x in (-0.6, 0.6)),
    ]
    return make_kind("house", parts, asymmetric=True, front_part="door")


def _tree() -> KindSpec:
    parts = [
        _cyl("trunk", 0.12, 0.3, (0, -0.72, 0), color=WOOD),
        _cone("foliage", 0.62, 0.12, 0.3, (0, -0.3, 0)),
        _cone("foliage", 0.5, 0.08, 0.28, (0, 0.08, 0)),
        _cone("foliage", 0.38, 0.0, 0.3, (0, 0.45, 0)),
    ]
    return make_kind("tree", parts)


def _rocket() -> KindSpec:
    fins = []
    for angle in (45.0, 135.0, 225.0, 315.0):  # fins off the front, so the window shows from +Z
        a = math.radians(angle)
        fins.append(
            _box(
                "fins",
                (0.2, 0.22, 0.025),
                (0.38 * math.sin(a), -0.55, 0.38 * math.cos(a)),
                (0, angle - 90, 0),
                "secondary",
            )
        )
    parts = [
        _cyl("body", 0.28, 0.55, (0, -0.05, 0), rounding=0.03),
        _cone("nose cone", 0.28, 0.0, 0.32, (0, 0.82, 0), color="secondary"),
        _cone("nozzle", 0.14, 0.2, 0.1, (0, -0.68, 0), color=METAL),
        *fins,
        _cyl("window", 0.1, 0.03, (0, 0.2, 0.265), rot=(90, 0, 0), color=GLASS),
        _torus("window", 0.1, 0.025, (0, 0.2, 0.275), rot=(90, 0, 0), color=METAL),
    ]
    return make_kind(
        "rocket", parts, asymmetric=True, front_part="window", default_secondary=("red", "white")
    )


def _lamp() -> KindSpec:
    parts = [
        _cyl("base", 0.34, 0.05, (0, -0.85, 0), color=METAL, rounding=0.02),
        _cyl("pole", 0.04, 0.45, (0, -0.38, 0), color=METAL),
        _cone("shade", 0.5, 0.28, 0.3, (0, 0.28, 0)),
        _sph("bulb", 0.12, (0, 0.02, 0), HEADLIGHT),
    ]
    return make_kind("lamp", parts)


def _mug() -> KindSpec:
    parts = [
        _cyl("body", 0.45, 0.46, (0, -0.04, 0), rounding=0.02),
        _torus("body", 0.41, 0.04, (0, 0.46, 0)),
        _cyl("coffee", 0.39, 0.02, (0, 0.43, 0), color=COFFEE),
        _torus("handle", 0.24, 0.06, (0.48, 0.0, 0), rot=(90, 0, 0)),
    ]
    return make_kind("mug", parts, asymmetric=True, patternable=True)


def _dumbbell() -> KindSpec:
    parts = [
        _cyl("bar", 0.06, 0.72, (0, 0, 0), rot=(0, 0, 90), color=METAL),
        *(_cyl("weights", 0.32, 0.12, (x, 0, 0), rot=(0, 0, 90), rounding=0.04) for x in (-0.52, 0.52)),
        *(_cyl("weights", 0.24, 0.05, (x, 0, 0), rot=(0, 0, 90), rounding=0.02) for x in (-0.68, 0.68)),
    ]
    return make_kind("dumbbell", parts)


def _lollipop() -> KindSpec:
    parts = [
        _cyl("candy", 0.46, 0.1, (0, 0.35, 0), rot=(90, 0, 0), rounding=0.1),
        _cyl("stick", 0.04, 0.5, (0, -0.5, 0), color=STICK),
    ]
    return make_kind("lollipop", parts, patternable=True)


def _car() -> KindSpec:
    wheels = [
        _cyl("wheels", 0.17, 0.07, (x, -0.36, z), rot=(0, 0, 90), color=TIRE, rounding=0.03)
        for x in (-0.37, 0.37)
        for z in (-0.55, 0.55)
    ]
    parts = [
        _box("body", (0.42, 0.16, 0.9), (0, -0.2, 0), rounding=0.06),
        _box("cabin", (0.36, 0.17, 0.45), (0, 0.1, -0.15), rounding=0.06),
        _box("windshield", (0.31, 0.12, 0.02), (0, 0.1, 0.3), color=GLASS),
        _box("rear window", (0.31, 0.12, 0.02), (0, 0.1, -0.6), color=GLASS),
        *(_box("side windows", (0.02, 0.11, 0.36), (x, 0.1, -0.15), color=GLASS) for x in (-0.36, 0.36)),
        *(
            _cyl("headlights", 0.065, 0.03, (x, -0.16, 0.89), rot=(90, 0, 0), color=HEADLIGHT)
            for x in (-0.27, 0.27)
        ),
        *wheels,
    ]
    return make_kind("car", parts, asymmetric=True, front_part="headlights")


def _duck() -> KindSpec:
    parts = [
        _ell("body", (0.48, 0.36, 0.62), (0, -0.3, -0.08)),
        _cone("body", 0.2, 0.02, 0.22, (0, -0.12, -0.66), rot=(-120, 0, 0)),  # tail
        *(_ell("body", (0.1, 0.2, 0.36), (x, -0.26, -0.1), rot=(-15, 0, 0)) for x in (-0.44, 0.44)),  # wings
        _sph("head", 0.28, (0, 0.26, 0.3)),
        _ell("beak", (0.14, 0.05, 0.17), (0, 0.2, 0.6), color=BEAK),
        *(_sph("eyes", 0.04, (x, 0.34, 0.52), COAL) for x in (-0.13, 0.13)),
    ]
    return make_kind("duck", parts, asymmetric=True, front_part="beak")


def _hamburger() -> KindSpec:
    parts = [
        _cyl("bottom bun", 0.62, 0.13, (0, -0.42, 0), rounding=0.08),
        _cyl("patty", 0.66, 0.08, (0, -0.22, 0), color=PATTY, rounding=0.06),
        _box("cheese", (0.5, 0.02, 0.5), (0, -0.12, 0), rot=(0, 45, 0), color=CHEESE),
        _cyl("lettuce", 0.7, 0.03, (0, -0.07, 0), color=LETTUCE, rounding=0.02),
        _dome("top bun", (0.64, 0.44, 0.64), (0, -0.05, 0)),
    ]
    return make_kind("hamburger", parts)


def _bed() -> KindSpec:
    parts = [
        _box("frame", (0.6, 0.1, 0.95), (0, -0.35, 0), color=WOOD),
        _box("mattress", (0.55, 0.12, 0.9), (0, -0.15, 0), color=LINEN, rounding=0.04),
        _box("blanket", (0.57, 0.14, 0.6), (0, -0.13, 0.24), rounding=0.03),
        _box("pillow", (0.36, 0.07, 0.16), (0, 0.02, -0.65), color=LINEN, rounding=0.06),
        _box("headboard", (0.6, 0.42, 0.05), (0, 0.02, -0.97), color=WOOD, rounding=0.02),
        _box("footboard", (0.6, 0.22, 0.05), (0, -0.18, 0.97), color=WOOD, rounding=0.02),
        *(
            _box("legs", (0.05, 0.1, 0.05), (x, -0.52, z), color=DARK_WOOD)
            for x in (-0.54, 0.54)
            for z in (-0.9, 0.9)
        ),
    ]
    return make_kind("bed", parts, asymmetric=True, front_part="footboard")


KIND_SPECS: dict[str, KindSpec] = {
    k.name: k
    for k in (
        *_primitive_kinds(),
        _chair(),
        _table(),
        _snowman(),
        _mushroom(),
        _house(),
        _tree(),
        _rocket(),
        _lamp(),
        _mug(),
        _dumbbell(),
        _lollipop(),
        _car(),
        _duck(),
        _hamburger(),
        _bed(),
    )
}
"""Every kind by name: the five primitives first (in :data:`recon.data.procedural.SHAPES` order)."""

KINDS: tuple[str, ...] = tuple(KIND_SPECS)
"""Kind names, in catalogue order (an index is a class label)."""
