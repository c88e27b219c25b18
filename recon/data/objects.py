"""The embedded world: compound, asymmetric, patterned objects with exact SDFs and colors.

A :class:`ProceduralObject` ``(kind, color, secondary, pattern)`` is one description from which
everything follows: its signed distance (:meth:`~ProceduralObject.sdf`), albedo and per-slot color
membership, sphere-traced renders (:func:`render_object`), a colored mesh (:func:`object_mesh`) and
its caption (:func:`caption`, inverted by :func:`parse_caption`). Kinds (parts, poses, color slots,
front parts) are catalogued in :mod:`recon.data.object_kinds`; up is +Y and objects face +Z.

Caption grammar (lower case, one space between words, an optional view suffix)::

    caption  := article " " color " " kind [", " view]                                  (solid)
              | article " " color " and " secondary " " pattern " " kind [", " view]    (patterned)
    article  := "an" if the next word starts with a vowel else "a"
    color    := one of COLORS (8 hues);  secondary := one of SECONDARY_COLORS other than color
    pattern  := "striped" | "checkered" | "dotted" | "two-tone"
    view     := "front view" | "side view" | "back view" | "overhead view"

e.g. ``"a red chair"``, ``"an orange mug, side view"``, ``"a blue and white striped sphere"``,
``"a green and black two-tone mushroom"``. Solid captions of the five primitives are exactly
:func:`recon.data.procedural.caption`'s. :func:`vocabulary` lists every valid object: 20 kinds x 8
colors solid (160) plus, for the 8 patternable kinds (the primitives, mug, lollipop, mushroom),
8 colors x 9 secondaries x 4 patterns (2304): 2464 in all.

Patterns paint the primary-slot parts, in the frame of their bounding box ``[lo, hi]``: ``striped``
is 5 horizontal bands over its height (primary at the bottom), ``checkered`` 3D cells of a quarter of
its largest side, ``dotted`` secondary spheres of radius 0.42 cells on a cubic lattice of the same
cell, ``two-tone`` primary above the box's mid-height and secondary below. SDFs after Inigo Quilez,
https://iquilezles.org/articles/distfunctions/.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.data.object_kinds import KIND_SPECS, KINDS, N_SIZE, PRIMITIVE_TYPES, KindSpec
from recon.data.procedural import (
    COLORS,
    DEFAULT_AMBIENT,
    DEFAULT_LIGHT_DIR,
    _box_pool,
    _sdf_normals,
    _sphere_trace,
    _unit_sphere_interval,
    camera_rays,
)

if TYPE_CHECKING:
    import trimesh

__all__ = [
    "COLORS",
    "KINDS",
    "KIND_SPECS",
    "PATTERNS",
    "SECONDARY_COLORS",
    "VIEW_WORDS",
    "ObjectRender",
    "ProceduralObject",
    "caption",
    "object_mesh",
    "parse_caption",
    "render_object",
    "split_view_word",
    "vocabulary",
]

PATTERNS: tuple[str, ...] = ("solid", "striped", "checkered", "dotted", "two-tone")
"""Surface patterns; every one but ``solid`` mixes the primary and the secondary color."""

SECONDARY_COLORS: dict[str, tuple[float, float, float]] = {
    **COLORS,
    "white": (0.94, 0.94, 0.94),
    "black": (0.08, 0.08, 0.08),
}
"""Colors a pattern may pair with the primary: the 8 hues of ``COLORS`` plus white and black."""

VIEW_WORDS: tuple[str, ...] = ("front view", "side view", "back view", "overhead view")
"""Caption suffixes, as :func:`recon.cameras.view_direction_words` gives them."""

STRIPES = 5
"""Horizontal bands over the height of the primary parts."""
CELLS = 4
"""Checker / dot-lattice cells along the largest side of the primary parts."""
DOT_RADIUS = 0.42
"""Dot radius as a fraction of the lattice cell."""

SLOTS = ("primary", "secondary", "fixed")


# --- batched part SDFs ----------------------------------------------------------------------------------
def _len2(a: Tensor, b: Tensor) -> Tensor:
    return torch.sqrt(a * a + b * b)


def _len3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:  # elementwise: ~2x faster than .norm(dim=-1) here
    return torch.sqrt(a * a + b * b + c * c)


def _local_sdf(kind: str, q: Tensor, s: Tensor) -> Tensor:
    """Signed distances ``[N, P]`` of ``q [N, P, 3]`` (points in each part's frame), sizes ``s [P, 4]``."""
    x, y, z = q.unbind(-1)
    if kind == "sphere":
        return _len3(x, y, z) - s[:, 0]
    if kind in ("ellipsoid", "dome"):
        d = (_len3(x / s[:, 0], y / s[:, 1], z / s[:, 2]) - 1.0) * s[:, :3].min(dim=-1).values  # 1-Lipschitz
        return torch.maximum(d, -y) if kind == "dome" else d
    if kind == "box":
        rr = s[:, 3]
        dx, dy, dz = (q.abs() - (s[:, :3] - rr[:, None])).unbind(-1)
        inside = torch.maximum(dx, torch.maximum(dy, dz)).clamp_max(0)
        return _len3(dx.clamp_min(0), dy.clamp_min(0), dz.clamp_min(0)) + inside - rr
    if kind == "cylinder":
        rr = s[:, 2]
        dx = _len2(x, z) - s[:, 0] + rr
        dy = y.abs() - s[:, 1] + rr
        return torch.maximum(dx, dy).clamp_max(0) + _len2(dx.clamp_min(0), dy.clamp_min(0)) - rr
    if kind == "cone":  # IQ's sdCappedCone, bottom radius r1 at y=-h, top radius r2 at y=+h
        r1, r2, h = s[:, 0], s[:, 1], s[:, 2]
        qx = _len2(x, z)
        k2x, k2y = r2 - r1, 2.0 * h
        ca_x = qx - torch.minimum(qx, torch.where(y < 0, r1, r2))
        ca_y = y.abs() - h
        t = (((r2 - qx) * k2x + (h - y) * k2y) / (k2x * k2x + k2y * k2y)).clamp(0.0, 1.0)
        cb_x = qx - r2 + k2x * t
        cb_y = y - h + k2y * t
        sign = torch.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
        return sign * torch.sqrt(torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y))
    if kind == "torus":
        return _len2(_len2(x, z) - s[:, 0], y) - s[:, 1]
    if kind == "capsule":
        yc = y - y.clamp(-s[:, 1], s[:, 1])
        return _len3(x, yc, z) - s[:, 0]
    if kind == "prism":  # intersection of half-spaces: exact inside, a lower bound outside
        w, h, dz = s[:, 0], s[:, 1], s[:, 2]
        slant = (2 * h * x.abs() + w * y - h * w) / torch.sqrt(4 * h * h + w * w)
        return torch.maximum(torch.maximum(z.abs() - dz, -y - h), slant)
    raise ValueError(f"unknown primitive {kind!r}; expected one of {PRIMITIVE_TYPES}")


class _PartTable:
    """A kind's parts stacked by primitive type, for evaluating all of them in a few batched ops."""

    def __init__(self, spec: KindSpec, device: torch.device) -> None:
        order = sorted(range(len(spec.parts)), key=lambda i: PRIMITIVE_TYPES.index(spec.parts[i].primitive))
        parts = [spec.parts[i] for i in order]
        f32 = {"dtype": torch.float32, "device": device}
        self.catalogue_index = torch.tensor(order, dtype=torch.long, device=device)  # sorted -> spec.parts
        rotations = np.stack([p.rotation_matrix for p in parts])
        self.rotation = torch.tensor(rotations, **f32)  # [P, 3, 3] local -> object
        self.translation = torch.tensor([p.translation for p in parts], **f32)  # [P, 3]
        self.size = torch.tensor([p.padded_size for p in parts], **f32)  # [P, 4]
        assert self.size.shape[1] == N_SIZE
        self.stacked_rotation = self.rotation.permute(1, 0, 2).reshape(3, -1).contiguous()  # [3, 3P]
        self.local_offset = torch.einsum("pj,pji->pi", self.translation, self.rotation)  # [P, 3]
        self.identity = bool((self.rotation - torch.eye(3, device=device)).abs().max() < 1e-7)
        self.slot = torch.tensor(
            [0 if p.color == "primary" else 1 if p.color == "secondary" else 2 for p in parts], device=device
        )
        self.fixed_rgb = torch.tensor(
            [p.color if isinstance(p.color, tuple) else (0, 0, 0) for p in parts], **f32
        )
        names = spec.part_names
        self.group = torch.tensor([names.index(p.name) for p in parts], device=device)  # [P]
        self.slices: list[tuple[str, int, int]] = []
        for i, p in enumerate(parts):
            if self.slices and self.slices[-1][0] == p.primitive:
                self.slices[-1] = (p.primitive, self.slices[-1][1], i + 1)
            else:
                self.slices.append((p.primitive, i, i + 1))

    def _local(self, points: Tensor) -> Tensor:  # [N, 3] -> [N, P, 3]: R^T (p - t) = p R - t R
        if self.identity:
            return points[:, None, :] - self.translation
        P = self.translation.shape[0]
        return (points @ self.stacked_rotation).view(-1, P, 3) - self.local_offset

    def distances(self, points: Tensor) -> Tensor:
        """Per-part signed distances ``[N, P]`` (sorted part order) of ``points [N, 3]``."""
        q = self._local(points)
        return torch.cat([_local_sdf(k, q[:, a:b], self.size[a:b]) for k, a, b in self.slices], dim=1)

    def sdf(self, points: Tensor) -> Tensor:
        """Union distance ``[N]``."""
        q = self._local(points)
        d = None
        for k, a, b in self.slices:
            dk = _local_sdf(k, q[:, a:b], self.size[a:b])
            dk = dk[:, 0] if b - a == 1 else dk.min(dim=1).values
            d = dk if d is None else torch.minimum(d, dk)
        return d


@lru_cache(maxsize=64)
def _table(kind: str, device: str) -> _PartTable:
    return _PartTable(KIND_SPECS[kind], torch.device(device))


def _pattern_mask(pattern: str, points: Tensor, spec: KindSpec) -> Tensor:
    """Where a pattern paints the secondary color on primary parts: ``[N]`` in {0, 1}."""
    lo = torch.tensor(spec.pattern_box[0], dtype=points.dtype, device=points.device)
    hi = torch.tensor(spec.pattern_box[1], dtype=points.dtype, device=points.device)
    if pattern == "solid":
        return torch.zeros_like(points[:, 0])
    if pattern == "striped":
        u = (points[:, 1] - lo[1]) / (hi[1] - lo[1]) * STRIPES
        return (u.floor().clamp(0, STRIPES - 1).long() % 2).to(points.dtype)
    if pattern == "two-tone":
        return (points[:, 1] < (lo[1] + hi[1]) / 2).to(points.dtype)
    cell = (hi - lo).max() / CELLS
    u = (points - lo) / cell
    if pattern == "checkered":
        n = torch.ceil((hi - lo) / cell - 1e-4).long()
        idx = torch.minimum(u.floor().long().clamp_min(0), n - 1)
        return (idx.sum(dim=-1) % 2).to(points.dtype)
    if pattern == "dotted":
        return ((u - u.round()).norm(dim=-1) < DOT_RADIUS).to(points.dtype)
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


# --- the object -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProceduralObject:
    """One object of the embedded world: a kind in a color, optionally patterned with a second color."""

    kind: str
    """One of :data:`KINDS`."""
    color: str
    """Primary color, a name in ``COLORS``."""
    secondary: str | None = None
    """Pattern color, a name in :data:`SECONDARY_COLORS` other than ``color``; ``None`` iff solid."""
    pattern: str = "solid"
    """One of :data:`PATTERNS` (only ``solid`` unless the kind is patternable)."""

    def __post_init__(self) -> None:
        if self.kind not in KIND_SPECS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {tuple(COLORS)}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; expected one of {PATTERNS}")
        if self.pattern == "solid":
            if self.secondary is not None:
                raise ValueError("a solid object takes no secondary color; pass secondary=None")
            return
        if not self.spec.patternable:
            patternable = tuple(k for k in KINDS if KIND_SPECS[k].patternable)
            raise ValueError(f"kind {self.kind!r} takes no pattern; patternable kinds: {patternable}")
        if self.secondary not in SECONDARY_COLORS or self.secondary == self.color:
            raise ValueError(
                f"pattern {self.pattern!r} needs a secondary color from {tuple(SECONDARY_COLORS)} "
                f"other than {self.color!r}, got {self.secondary!r}"
            )

    @property
    def spec(self) -> KindSpec:
        """The kind's catalogue entry (parts, front part, ...)."""
        return KIND_SPECS[self.kind]

    @property
    def part_names(self) -> tuple[str, ...]:
        """Part groups, the channels of :attr:`ObjectRender.part_masks`."""
        return self.spec.part_names

    @property
    def secondary_name(self) -> str:
        """The secondary color in use: ``secondary``, or the kind's default for its secondary parts."""
        if self.secondary is not None:
            return self.secondary
        return next(c for c in self.spec.default_secondary if c != self.color)

    def slot_colors(self, device: torch.device | str = "cpu") -> Tensor:
        """Albedos ``[2, 3]`` of the primary and secondary slots."""
        return torch.tensor([COLORS[self.color], SECONDARY_COLORS[self.secondary_name]], device=device)

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance ``[...]`` of ``points [..., 3]``: negative inside, exact or a 1-Lipschitz bound."""
        table = _table(self.kind, str(points.device))
        return table.sdf(points.reshape(-1, 3).float()).reshape(points.shape[:-1])

    def part_index(self, points: Tensor) -> Tensor:
        """Index into ``spec.parts`` of the nearest part ``[...]`` (long)."""
        table = _table(self.kind, str(points.device))
        nearest = table.distances(points.reshape(-1, 3).float()).argmin(dim=-1)
        return table.catalogue_index[nearest].reshape(points.shape[:-1])

    def _slots(self, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # [N, 3] -> sorted idx, w, fixed
        table = _table(self.kind, str(points.device))
        nearest = table.distances(points).argmin(dim=-1)
        slot = table.slot[nearest]
        sec = _pattern_mask(self.pattern, points, self.spec)
        is_p, is_s = (slot == 0).to(points.dtype), (slot == 1).to(points.dtype)
        weights = torch.stack([is_p * (1 - sec), is_s + is_p * sec, (slot == 2).to(points.dtype)], dim=-1)
        return nearest, weights, table.fixed_rgb[nearest] * weights[:, 2:3]

    def slot_weights(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Per-slot membership of surface points, so that a caller can recolor.

        Args:
            points: Object-space points ``[..., 3]`` (meaningful on or near the surface).

        Returns:
            ``(weights [..., 3], fixed_rgb [..., 3])``: one-hot weights of the slots
            ``(primary, secondary, fixed)`` and the fixed parts' RGB (0 elsewhere), such that
            ``albedo = w[..., 0:1] * primary + w[..., 1:2] * secondary + fixed_rgb``.
        """
        _, w, fixed = self._slots(points.reshape(-1, 3).float())
        return w.reshape(*points.shape[:-1], 3), fixed.reshape(*points.shape[:-1], 3)

    def albedo(self, points: Tensor) -> Tensor:
        """Surface color ``[..., 3]`` of the part nearest to each point, patterns applied."""
        w, fixed = self.slot_weights(points)
        return w[..., :2] @ self.slot_colors(points.device) + fixed


# --- rendering ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectRender:
    """Maps of :func:`render_object` for ``C`` cameras of size ``H x W``."""

    rgb: Tensor
    """``[C, H, W, 3]`` colors composited on the background, in [0, 1]."""
    alpha: Tensor
    """``[C, H, W, 1]`` anti-aliased coverage."""
    depth: Tensor
    """``[C, H, W, 1]`` z-depth along the camera axis averaged over covered samples (0 where empty)."""
    normals: Tensor
    """``[C, H, W, 3]`` world-space unit normals (SDF central differences; 0 where empty)."""
    slots: Tensor | None = None
    """``[C, H, W, 2]`` shading x coverage of the primary and secondary slots (``return_slots``)."""
    fixed_rgb: Tensor | None = None
    """``[C, H, W, 3]`` shaded fixed-color parts x coverage (``return_slots``)."""
    part_masks: Tensor | None = None
    """``[C, H, W, G]`` visible coverage of each part group of ``part_names`` (``return_parts``)."""
    part_names: tuple[str, ...] = ()
    """Part groups, the channels of ``part_masks``."""

    def part_mask(self, name: str) -> Tensor:
        """Coverage ``[C, H, W, 1]`` of one part group (``return_parts=True``), e.g. the front part."""
        if self.part_masks is None:
            raise ValueError("render with return_parts=True to get part masks")
        if name not in self.part_names:
            raise ValueError(f"no part {name!r}; parts: {self.part_names}")
        i = self.part_names.index(name)
        return self.part_masks[..., i : i + 1]


def render_object(
    obj: ProceduralObject,
    cameras: Cameras,
    *,
    light_dir: tuple[float, float, float] = DEFAULT_LIGHT_DIR,
    ambient: float = DEFAULT_AMBIENT,
    supersample: int = 2,
    max_steps: int = 64,
    background: float = 1.0,
    return_slots: bool = False,
    return_parts: bool = False,
) -> ObjectRender:
    """Sphere-traces an object for a batch of cameras, shaded as ``procedural.render_primitive``.

    The shade of a surface point with unit normal ``n`` is ``albedo * (ambient + (1 - ambient) *
    max(0, n . l))``. With ``return_slots`` the render splits by color slot:
    ``rgb == primary * slots[..., 0:1] + secondary * slots[..., 1:2] + fixed_rgb + (1 - alpha) * background``
    (before clamping to [0, 1]), with ``primary, secondary = obj.slot_colors()``, so a caller can recolor
    a render without tracing it again.

    Args:
        obj: The object.
        cameras: ``C`` cameras of size ``H x W``.
        light_dir: World-space direction towards the light.
        ambient: Fraction of the albedo seen on surfaces facing away from the light.
        supersample: Samples per pixel along each axis; coverage and colors are box-filtered.
        max_steps: Sphere-tracing iterations.
        background: Background grey level (1 = white).
        return_slots: Also return ``slots`` and ``fixed_rgb``.
        return_parts: Also return ``part_masks`` (visible coverage of each part group).

    Returns:
        An :class:`ObjectRender`.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    table = _table(obj.kind, str(cameras.device))
    origins, dirs, z_per_t = camera_rays(cameras, supersample)
    inside_bound, t, t_far = _unit_sphere_interval(origins, dirs)
    eps = 1e-4
    t = _sphere_trace(table.sdf, origins, dirs, t, t_far, inside_bound, max_steps, eps)

    # Shade only the rays that reached the surface.
    flat_t = t.reshape(-1)
    cand = (inside_bound.reshape(-1) & (flat_t < t_far.reshape(-1) + 1e-3)).nonzero().squeeze(-1)
    pts = origins.reshape(-1, 3)[cand] + flat_t[cand, None] * dirs.reshape(-1, 3)[cand]
    ok = table.sdf(pts).abs() < 1e-3 + eps * flat_t[cand]
    idx, pts = cand[ok], pts[ok]
    n_rays = flat_t.numel()

    normals = _sdf_normals(table.sdf, pts)
    light = torch.nn.functional.normalize(torch.as_tensor(light_dir, dtype=torch.float32), dim=0)
    shade = ambient + (1.0 - ambient) * (normals * light.to(normals)).sum(-1).clamp_min(0.0)
    nearest, weights, fixed = obj._slots(pts)
    colors = obj.slot_colors(pts.device)

    channels = [
        torch.ones_like(shade)[:, None],  # coverage
        (flat_t[idx] * z_per_t.reshape(-1)[idx])[:, None],  # depth
        normals,
        (weights[:, :2] @ colors + fixed) * shade[:, None],  # shaded albedo
    ]
    if return_slots:
        channels += [weights[:, :2] * shade[:, None], fixed * shade[:, None]]
    if return_parts:
        channels.append(torch.nn.functional.one_hot(table.group[nearest], len(obj.part_names)).float())
    values = torch.cat(channels, dim=-1)
    maps = torch.zeros(n_rays, values.shape[-1], device=values.device)
    maps[idx] = values
    C, Hs, Ws = t.shape
    maps = _box_pool(maps.view(C, Hs, Ws, -1), supersample)

    alpha, depth_sum, normal_sum, color_sum = maps[..., 0:1], maps[..., 1:2], maps[..., 2:5], maps[..., 5:8]
    covered = alpha > 0
    depth = torch.where(covered, depth_sum / alpha.clamp_min(1e-8), torch.zeros_like(depth_sum))
    normals_out = torch.nn.functional.normalize(normal_sum, dim=-1) * covered
    rgb = (color_sum + (1.0 - alpha) * background).clamp(0.0, 1.0)
    slots = fixed_rgb = part_masks = None
    k = 8
    if return_slots:
        slots, fixed_rgb, k = maps[..., 8:10], maps[..., 10:13], 13
    if return_parts:
        part_masks = maps[..., k:]
    return ObjectRender(rgb, alpha, depth, normals_out, slots, fixed_rgb, part_masks, obj.part_names)


def object_mesh(obj: ProceduralObject, resolution: int = 96) -> trimesh.Trimesh:
    """Marching cubes of the object's SDF on a ``resolution^3`` grid over ``[-1, 1]^3``, vertex-colored.

    Args:
        obj: The object.
        resolution: Grid samples along each axis.

    Returns:
        A ``trimesh.Trimesh`` in object space (+Y up, front +Z) with outward faces and RGBA
        ``visual.vertex_colors`` from :meth:`ProceduralObject.albedo`.
    """
    import trimesh
    from skimage.measure import marching_cubes

    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    axis = torch.linspace(-1.0, 1.0, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    sdf = torch.cat([obj.sdf(chunk) for chunk in grid.split(65536)]).reshape((resolution,) * 3)
    step = 2.0 / (resolution - 1)
    verts, faces, _, _ = marching_cubes(sdf.numpy(), level=0.0, spacing=(step,) * 3)
    verts = verts - 1.0  # skimage's default winding makes faces point to rising SDF: outwards
    albedo = obj.albedo(torch.from_numpy(verts.astype(np.float32)))
    rgba = np.concatenate([albedo.numpy(), np.ones((len(verts), 1), dtype=np.float32)], axis=1)
    return trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=(rgba * 255).round().astype(np.uint8))


# --- captions -------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(obj: ProceduralObject, view_word: str | None = None) -> str:
    """The text prompt of an object (grammar in the module docstring).

    Args:
        obj: The object.
        view_word: Optional suffix from :data:`VIEW_WORDS` (``"front view"``, ...).

    Returns:
        ``"a red chair"``, ``"a blue and white striped sphere"``, ``"an orange mug, side view"``.
    """
    if obj.pattern == "solid":
        text = f"{_article(obj.color)} {obj.color} {obj.kind}"
    else:
        text = f"{_article(obj.color)} {obj.color} and {obj.secondary} {obj.pattern} {obj.kind}"
    if view_word is None:
        return text
    if view_word not in VIEW_WORDS:
        raise ValueError(f"unknown view word {view_word!r}; expected one of {VIEW_WORDS}")
    return f"{text}, {view_word}"


def split_view_word(text: str) -> tuple[str, str | None]:
    """``"a red cube, front view"`` -> ``("a red cube", "front view")``; no suffix -> ``(text, None)``."""
    head, sep, tail = text.rpartition(", ")
    if sep and tail in VIEW_WORDS:
        return head, tail
    return text, None


def parse_caption(text: str) -> ProceduralObject | None:
    """The object of a canonical caption (the inverse of :func:`caption`), or ``None``.

    A view suffix is accepted and dropped; anything that :func:`caption` would not write returns ``None``.
    """
    body, _ = split_view_word(text)
    words = body.split(" ")
    try:
        if len(words) == 3:
            obj = ProceduralObject(kind=words[2], color=words[1])
        elif len(words) == 6 and words[2] == "and":
            obj = ProceduralObject(kind=words[5], color=words[1], secondary=words[3], pattern=words[4])
        else:
            return None
    except ValueError:
        return None
    return obj if caption(obj) == body else None


@lru_cache(maxsize=1)
def vocabulary() -> tuple[ProceduralObject, ...]:
    """Every valid object: all kinds solid in the 8 colors, then every pattern of the patternable kinds.

    Order: kind (catalogue order), then pattern, primary color and secondary color in table order.
    """
    objects = []
    for kind in KINDS:
        objects += [ProceduralObject(kind, c) for c in COLORS]
        if KIND_SPECS[kind].patternable:
            objects += [
                ProceduralObject(kind, c, s, p)
                for p in PATTERNS[1:]
                for c in COLORS
                for s in SECONDARY_COLORS
                if s != c
            ]
    return tuple(objects)
