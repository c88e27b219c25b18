"""Independent judges of generated images: which object of the embedded world, what colour, what
pattern, and which way its front faces.

* Primitives (``bench/view_prior_quality.py``, the former ``bench/prior_quality.py``):
  :func:`reference_silhouettes`, :func:`judge_shapes` (silhouette IoU) and :func:`judge_colors` (the
  palette hue nearest to the mean foreground colour).
* The embedded world (:mod:`recon.data.objects`): :func:`kind_references` renders every kind from a grid
  of views (the caption's view word picks the grid); :func:`judge_world` gives kind, primary colour,
  pattern and pattern colour by comparing an image's per-pixel colour classes (:func:`colour_classes`:
  8 hues, white, black; shading changes brightness, not hue) with each kind's references recoloured in
  each hue, then looking at the pixels the best kind's primary-colour parts cover
  (:func:`judge_patterns`: a frequency / contrast test of the two main colours there).
* Front-facing (asymmetric kinds): :func:`front_votes` compares each view of a turntable with the object
  rendered as it should be and turned around; :func:`janus_verdict` tells a front that faces one way
  from a front on more than one side (the Janus problem).
* :func:`caption_image`: a world caption for a picture (``"a red duck"``), or ``""`` when unsure.

Accuracy on ground-truth renders from 4 random front views each (references: the front grid's 42 views;
32 px): kind 1.000 and colour 0.989 on the 160 solid objects (the misses: a bed seen level with its
footboard, blanket hidden); on 40 patterned objects kind 0.975, both colours 0.963; pattern 0.938 over
the patternable kinds. Front-facing, 8-view turntables at cameras jittered by up to 5 degrees of
azimuth, 4 of elevation and 0.1 of distance (two seeds): 16/16 asymmetric objects as made and 16/16 turned
around judged "one-way", 12/14 two-faced ones "janus" (the others: one back view voted, one abstained); a
featureless blob abstains everywhere. ``tests/priors/test_judge.py`` checks each judge on a small grid.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from recon.atomic import atomic_torch_save
from recon.cameras import cameras_from_spherical
from recon.data.procedural import COLORS, SHAPES, render_primitive

FOREGROUND_THRESHOLD = 0.2
"""A pixel is foreground when some channel is at least this far below white."""


def foreground_mask(images: Tensor, threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """``[B, 3, H, W]`` images in ``[0, 1]`` -> ``[B, H, W]`` bool foreground."""
    return (1.0 - images).amax(dim=1) > threshold


def reference_silhouettes(
    resolution: int = 32,
    elevations_deg: tuple[float, ...] = (-10.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0),
    azimuths_deg: tuple[float, ...] = (0.0, 15.0, 30.0, 45.0),
    distances: tuple[float, ...] = (2.6, 2.8, 3.0, 3.2, 3.4),
    fov_deg: float = 40.0,
) -> Tensor:
    """Binary silhouettes ``[S, V, H, W]`` of every shape from a grid of views (default: front views)."""
    grid = list(itertools.product(elevations_deg, azimuths_deg, distances))
    el, az, d = (torch.tensor(v, dtype=torch.float32) for v in zip(*grid))
    cams = cameras_from_spherical(el, az, d, torch.full_like(el, fov_deg), resolution, resolution)
    masks = [render_primitive(s, "red", cams)[1][..., 0] > 0.5 for s in SHAPES]
    return torch.stack(masks)


def judge_shapes(images: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted shape index ``[B]`` and its best IoU ``[B]`` for images ``[B, 3, H, W]``."""
    fg = foreground_mask(images).flatten(1).float()  # [B, P]
    ref = references.flatten(2).float()  # [S, V, P]
    inter = torch.einsum("bp,svp->bsv", fg, ref)
    union = fg.sum(-1)[:, None, None] + ref.sum(-1)[None] - inter
    iou = (inter / union.clamp_min(1.0)).amax(-1)  # [B, S]
    best, idx = iou.max(-1)
    return idx, best


def rgb_to_hue(rgb: Tensor) -> Tensor:
    """Hue in degrees ``[...]`` of RGB ``[..., 3]``."""
    r, g, b = rgb.unbind(-1)
    mx, mn = rgb.amax(-1), rgb.amin(-1)
    c = (mx - mn).clamp_min(1e-6)
    h = torch.where(mx == r, ((g - b) / c) % 6, torch.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return h * 60.0


def judge_colors(images: Tensor) -> Tensor:
    """Predicted color index (into ``COLORS``) ``[B]``; images without foreground get ``-1``."""
    fg = foreground_mask(images)  # [B, H, W]
    w = fg[:, None].float()
    mean = (images * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1.0)  # [B, 3]
    hue = rgb_to_hue(mean)  # [B]
    ref = rgb_to_hue(torch.tensor(list(COLORS.values())))  # [K]
    diff = (hue[:, None] - ref[None]).abs()
    diff = torch.minimum(diff, 360.0 - diff)
    idx = diff.argmin(-1)
    return torch.where(fg.flatten(1).any(-1), idx, torch.full_like(idx, -1))


# --- judges of the embedded world -----------------------------------------------------------------------
WORLD_FOREGROUND_THRESHOLD = 0.04
"""Foreground threshold for world objects: lit white parts (snow, a white stripe) are 0.06 below white."""
NORMALIZED_SIZE = 32
"""Side of the frame in which images and references are compared."""
NORMALIZED_FILL = 0.9
"""Share of the normalised frame the bounding box's long side fills."""
WHITE, BLACK = 8, 9
"""Colour classes beyond the 8 palette hues (indices into ``COLORS``): achromatic light and dark."""
N_CLASSES = 10
"""Colour classes: 8 hues, white, black."""
SATURATION_THRESHOLD = 0.15
"""A pixel whose channel spread is below this share of its brightest channel is achromatic (white or
black): shading scales the channels, so the share is the albedo's (snow, linen, metal: below; cream, 0.2)."""
DARK_VALUE = 0.12
"""A pixel whose brightest channel is below this is achromatic, whatever its spread (black parts)."""
BLACK_VALUE = 0.3
"""An achromatic pixel whose brightest channel is below this is black."""
SECONDARY_NAMES: tuple[str, ...] = (*COLORS, "white", "black")
"""Colour class names: :data:`recon.data.objects.SECONDARY_COLORS` order (hues, white, black)."""

_GRID_ELEVATIONS = (-10.0, 5.0, 20.0, 35.0, 50.0, 60.0)
VIEW_RANGES: dict[str | None, tuple[tuple[float, ...], tuple[float, ...]]] = {
    None: ((-10.0, 10.0, 30.0, 50.0, 70.0), tuple(float(a) for a in range(-180, 180, 30))),
    "front view": (_GRID_ELEVATIONS, tuple(float(a) for a in range(-45, 46, 15))),
    "side view": (_GRID_ELEVATIONS, tuple(float(a) for a in (*range(45, 136, 15), *range(-135, -44, 15)))),
    "back view": (_GRID_ELEVATIONS, tuple(float(a) for a in range(135, 226, 15))),
    "overhead view": ((65.0, 75.0, 85.0), tuple(float(a) for a in range(-180, 180, 30))),
}
"""Reference views (elevations, azimuths in degrees) for a caption's view word (``None``: any view), as
:func:`recon.cameras.view_direction_words` assigns the words (overhead above 60 degrees, front within 45
degrees of azimuth 0)."""


def colour_classes(images: Tensor, masks: Tensor) -> Tensor:
    """Per-pixel colour class ``[B, H, W]`` (long): the nearest palette hue (``0..7``, ``COLORS`` order)
    for chromatic pixels, ``WHITE`` / ``BLACK`` for achromatic ones, ``-1`` outside ``masks [B, H, W]``.

    Shading scales the channels and anti-aliasing against white offsets them equally, so a pixel's hue is
    its albedo's; chromatic means a saturation (spread over brightest channel) of at least
    :data:`SATURATION_THRESHOLD`.
    """
    rgb = images.permute(0, 2, 3, 1)  # [B, H, W, 3]
    value = rgb.amax(-1)
    saturation = (value - rgb.amin(-1)) / value.clamp_min(1e-6)
    ref = rgb_to_hue(torch.tensor(list(COLORS.values()), dtype=rgb.dtype, device=rgb.device))  # [8]
    diff = (rgb_to_hue(rgb)[..., None] - ref).abs()
    nearest = torch.minimum(diff, 360.0 - diff).argmin(-1)
    achromatic = torch.where(value < BLACK_VALUE, BLACK, WHITE)
    classes = torch.where((saturation >= SATURATION_THRESHOLD) & (value >= DARK_VALUE), nearest, achromatic)
    return torch.where(masks, classes, torch.full_like(classes, -1))


def clean_foreground(images: Tensor, threshold: float = WORLD_FOREGROUND_THRESHOLD) -> Tensor:
    """``[B, 3, H, W]`` -> ``[B, H, W]`` bool: pixels ``threshold`` below white, the largest connected
    component with its holes filled (a lit white stripe inside the object stays in)."""
    from scipy import ndimage

    out = []
    for m in foreground_mask(images, threshold).cpu().numpy():
        labels, n = ndimage.label(m)
        if n > 1:
            m = labels == int(ndimage.sum(m, labels, range(1, n + 1)).argmax()) + 1
        out.append(torch.from_numpy(ndimage.binary_fill_holes(m)))
    return torch.stack(out).to(images.device)


def _bounding_square(mask: Tensor) -> tuple[float, float, float]:
    """``(cy, cx, side)`` of a ``[H, W]`` bool mask's bounding square in pixels (side 0 if empty)."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if len(rows) == 0:
        return 0.0, 0.0, 0.0
    y0, y1, x0, x1 = float(rows[0]), float(rows[-1]) + 1, float(cols[0]), float(cols[-1]) + 1
    return (y0 + y1) / 2, (x0 + x1) / 2, max(y1 - y0, x1 - x0)


def normalize_to_box(
    maps: Tensor,  # [N, C, H, W]
    masks: Tensor,  # [N, H, W] bool
    size: int = NORMALIZED_SIZE,
    fill: float = NORMALIZED_FILL,
) -> Tensor:  # [N, C, size, size]
    """Crops each map to a square around its mask's bounding box (the long side ``fill`` of it) and
    resamples it to ``size`` (bilinear, zeros outside), so objects compare whatever their position and
    scale."""
    import torch.nn.functional as F

    n, c, h, w = maps.shape
    thetas = []
    for i in range(n):
        cy, cx, side = _bounding_square(masks[i])
        if side == 0:
            cy, cx, side = h / 2, w / 2, max(h, w) * fill
        half = side / fill / 2
        thetas.append([[half / (w / 2), 0.0, cx / (w / 2) - 1.0], [0.0, half / (h / 2), cy / (h / 2) - 1.0]])
    grid = F.affine_grid(torch.tensor(thetas).to(maps), [n, c, size, size], align_corners=False)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _resize(maps: Tensor, size: int) -> Tensor:  # [N, C, H, W] -> [N, C, size, size]
    import torch.nn.functional as F

    if tuple(maps.shape[-2:]) == (size, size):
        return maps
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def view_cameras(
    elevations_deg: tuple[float, ...],
    azimuths_deg: tuple[float, ...],
    resolution: int = 32,
    distance: float = 3.0,
    fov_deg: float = 40.0,
):  # -> recon.cameras.Cameras
    """Cameras on the grid ``elevations x azimuths`` (elevation-major), looking at the origin."""
    grid = list(itertools.product(elevations_deg, azimuths_deg))
    el, az = (torch.tensor(v, dtype=torch.float32) for v in zip(*grid))
    ones = torch.ones(len(grid))
    return cameras_from_spherical(el, az, ones * distance, ones * fov_deg, resolution, resolution)


@dataclass(frozen=True)
class KindReferences:
    """Every kind of the world rendered from a grid of views, in each primary hue, in a common frame."""

    kinds: tuple[str, ...]
    """Kind names (axis ``K``)."""
    elevation_deg: Tensor  # [V]
    azimuth_deg: Tensor  # [V]
    masks: Tensor  # [K, V, S, S] bool
    """Silhouettes."""
    primary: Tensor  # [K, V, S, S] bool
    """Coverage of the primary-colour part groups (``KindSpec.primary_parts``)."""
    classes: Tensor  # [K, V, 8, S, S] int8
    """:func:`colour_classes` of the kind in each primary hue (its default secondary), ``-1`` outside."""
    normalized: bool = True
    """Maps cropped to their bounding squares (else the camera's frame, resampled to ``S``)."""


@functools.lru_cache(maxsize=8)
def kind_references(
    view_word: str | None = None,
    normalized: bool = False,
    elevations_deg: tuple[float, ...] | None = None,
    azimuths_deg: tuple[float, ...] | None = None,
    resolution: int = 32,
    size: int = NORMALIZED_SIZE,
    distance: float = 3.0,
    fov_deg: float = 40.0,
) -> KindReferences:
    """Renders every kind from the views a caption's view word allows (cached in memory and on disk,
    ``$SDS3D_CACHE_DIR/judge``, keyed by the arguments and the world's description).

    Args:
        view_word: ``"front view"``, ``"side view"``, ``"back view"``, ``"overhead view"`` or ``None``
            (any view): picks the grid of :data:`VIEW_RANGES`.
        normalized: Compare in each object's bounding square (position and scale free: images whose
            camera is unknown, e.g. a recentred reference picture); else in the camera's frame.
        elevations_deg: Override the grid's elevations.
        azimuths_deg: Override the grid's azimuths.
        resolution: Render size.
        size: Side of the comparison frame.
        distance: Camera distance (the embedded priors' 3).
        fov_deg: Vertical field of view (the embedded priors' 40 degrees).

    Returns:
        The :class:`KindReferences`.
    """
    els, azs = VIEW_RANGES[view_word]
    args = (elevations_deg or els, azimuths_deg or azs, resolution, size, distance, fov_deg, normalized)
    path = _references_path(args)
    if path is not None and path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return KindReferences(**{**data, "kinds": tuple(data["kinds"])})
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError):
            pass  # render again
    references = _render_references(*args)
    if path is not None:
        atomic_torch_save({f.name: getattr(references, f.name) for f in dataclasses.fields(references)}, path)
    return references


def _references_path(args: tuple) -> Path | None:
    import hashlib
    import os

    from recon.data import object_kinds, objects

    if os.environ.get("SDS3D_JUDGE_CACHE", "1") == "0":
        return None
    h = hashlib.sha256(repr(args).encode())
    for module in (objects, object_kinds):
        h.update(Path(module.__file__).read_bytes())
    root = os.environ.get("SDS3D_CACHE_DIR") or Path.home() / ".cache" / "sds3d"
    return Path(root) / "judge" / f"kind-references-{h.hexdigest()[:16]}-v1.pt"


def _render_references(
    elevations_deg: tuple[float, ...],
    azimuths_deg: tuple[float, ...],
    resolution: int,
    size: int,
    distance: float,
    fov_deg: float,
    normalized: bool,
) -> KindReferences:
    from recon.data.objects import KIND_SPECS, KINDS, SECONDARY_COLORS, ProceduralObject, render_object

    assert tuple(SECONDARY_COLORS) == SECONDARY_NAMES
    cams = view_cameras(elevations_deg, azimuths_deg, resolution, distance, fov_deg)
    masks, primary, classes = [], [], []
    for kind in KINDS:
        spec = KIND_SPECS[kind]
        out = render_object(
            ProceduralObject(kind, "red"),
            cams,
            supersample=1,
            max_steps=48,
            background=0.0,
            return_slots=True,
            return_parts=True,
        )
        groups = [spec.part_names.index(p) for p in spec.primary_parts]
        prim = out.part_masks[..., groups].sum(-1, keepdim=True)
        maps = torch.cat([out.alpha, prim, out.slots, out.fixed_rgb], -1).permute(0, 3, 1, 2)  # [V, 7, H, W]
        maps = normalize_to_box(maps, out.alpha[..., 0] > 0.5, size) if normalized else _resize(maps, size)
        alpha, sil = maps[:, 0:1], maps[:, 0] > 0.5
        per_hue = []
        for color in COLORS:
            p, s = (c.view(1, 3, 1, 1) for c in ProceduralObject(kind, color).slot_colors())
            rgb = p * maps[:, 2:3] + s * maps[:, 3:4] + maps[:, 4:7] + (1.0 - alpha)
            per_hue.append(colour_classes(rgb.clamp(0, 1), sil))
        masks.append(sil)
        primary.append(maps[:, 1] > 0.5)
        classes.append(torch.stack(per_hue, 1).to(torch.int8))
    return KindReferences(
        tuple(KINDS),
        cams.elevation_deg,
        cams.azimuth_deg,
        torch.stack(masks),
        torch.stack(primary),
        torch.stack(classes),
        normalized,
    )


@functools.cache
def _fixed_class_mask(kind: str) -> Tensor:  # [N_CLASSES] bool: colour classes of the kind's fixed parts
    from recon.data.objects import KIND_SPECS

    rgbs = [p.color for p in KIND_SPECS[kind].parts if isinstance(p.color, tuple)]
    mask = torch.zeros(N_CLASSES, dtype=torch.bool)
    if rgbs:
        image = torch.tensor(rgbs, dtype=torch.float32).T[None, :, None, :]  # [1, 3, 1, n]
        mask[colour_classes(image, torch.ones(1, 1, len(rgbs), dtype=torch.bool)).flatten()] = True
    return mask


def _erode(masks: Tensor) -> Tensor:  # [B, S, S] bool -> [B, S, S]: pixels whose 4 neighbours are in
    import torch.nn.functional as F

    x = F.pad(masks[:, None].float(), (1, 1, 1, 1))
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=x.device).view(
        1, 1, 3, 3
    )
    return F.conv2d(x, kernel)[:, 0] > 4.5


def _dilate(masks: Tensor, radius: int) -> Tensor:  # [B, S, S] bool -> [B, S, S]: within a square
    import torch.nn.functional as F

    k = 2 * radius + 1
    return F.max_pool2d(masks[:, None].float(), k, stride=1, padding=radius)[:, 0] > 0.5


def frame_images(images: Tensor, masks: Tensor, references: KindReferences) -> tuple[Tensor, Tensor]:
    """``(images [B, 3, S, S] on white, masks [B, S, S])`` in the references' frame."""
    size = references.masks.shape[-1]
    maps = torch.cat([images - 1.0, masks[:, None].float()], 1)  # background 0, as the padding
    maps = normalize_to_box(maps, masks, size) if references.normalized else _resize(maps, size)
    return (maps[:, :3] + 1.0).clamp(0, 1), maps[:, 3] > 0.5


@dataclass
class WorldVerdict:
    """What the judges see in a batch of images (``[B]`` tensors)."""

    kind: Tensor
    """Index into :data:`recon.data.objects.KINDS`."""
    view: Tensor
    """Best-matching reference view of that kind (index into the references' views)."""
    iou: Tensor
    """Silhouette IoU with that view."""
    agreement: Tensor
    """Share of the union of both silhouettes whose colour class matches the kind in ``color``."""
    color: Tensor
    """Primary colour, index into ``COLORS``."""
    pattern: Tensor
    """Index into :data:`recon.data.objects.PATTERNS` (0: solid)."""
    secondary: Tensor
    """Pattern colour, index into :data:`SECONDARY_NAMES` (``-1`` when solid)."""


def judge_world(
    images: Tensor,
    references: KindReferences,
    masks: Tensor | None = None,
    chunk: int = 16,
) -> WorldVerdict:
    """Judges images of objects of the embedded world: kind, colour, pattern.

    * **kind**: the kind and view whose reference agrees best with the image: the share of the union of
      both silhouettes where both are object and the colour classes (:func:`colour_classes`) match, the
      reference recoloured in each primary hue (so a cylinder and a mug seen from the handle's side,
      same silhouette, differ by the coffee on top; a blue rocket and a snowman by where the white is);
    * **colour**: the primary hue that agrees best there (the hue of the pixels that the kind's
      primary-colour parts cover);
    * **pattern**: :func:`judge_patterns` inside those parts.

    Args:
        images: ``[B, 3, H, W]`` in ``[0, 1]`` on white.
        references: From :func:`kind_references`.
        masks: ``[B, H, W]`` bool object masks (default: :func:`clean_foreground`).
        chunk: Images compared at once (memory).

    Returns:
        A :class:`WorldVerdict`.
    """
    from recon.data.objects import KIND_SPECS

    if masks is None:
        masks = clean_foreground(images)
    rgb, fg = frame_images(images, masks, references)
    classes = colour_classes(rgb, fg)  # [B, S, S], -1 outside
    ref_fg = references.masks.flatten(2).float()  # [K, V, P]
    ref_classes = references.classes.flatten(3)  # [K, V, 8, P] int8, -1 outside
    out = {k: [] for k in ("kind", "view", "iou", "agreement", "color")}
    for lo in range(0, len(images), chunk):
        s_fg = fg[lo : lo + chunk].flatten(1).float()  # [b, P]
        s_cls = classes[lo : lo + chunk].flatten(1).to(torch.int8)  # [b, P]
        inter = torch.einsum("bp,kvp->bkv", s_fg, ref_fg)
        union = (s_fg.sum(-1)[:, None, None] + ref_fg.sum(-1)[None] - inter).clamp_min(1.0)
        same = [
            ((s_cls[:, None, None] == ref_classes[None, :, :, c]) & (s_cls >= 0)[:, None, None]).sum(-1)
            for c in range(len(COLORS))
        ]
        agree_c, hue = (torch.stack(same, 1).float() / union[:, None]).max(1)  # [b, K, V]
        best, view = agree_c.max(-1)  # [b, K]
        kind = best.argmax(-1)
        view = view.gather(1, kind[:, None])[:, 0]
        rows = torch.arange(len(kind))
        out["kind"].append(kind)
        out["view"].append(view)
        out["iou"].append((inter / union)[rows, kind, view])
        out["agreement"].append(agree_c[rows, kind, view])
        out["color"].append(hue[rows, kind, view])
    result = {k: torch.cat(v) for k, v in out.items()}
    # Colour: the most frequent hue inside the kind's primary-colour parts, leaving out the colours of
    # its fixed parts (a bed's wood, a mushroom's gills) that misalignment lets in; else the hue that
    # agreed best. Pattern: the two main colours there.
    kinds = [references.kinds[int(k)] for k in result["kind"]]
    fixed = torch.stack([_fixed_class_mask(k) for k in kinds]).to(classes.device)  # [B, N_CLASSES]
    # (Inside the silhouette's 1-pixel rim: anti-aliased pixels there are washed out towards white.)
    region = references.primary[result["kind"], result["view"]].to(classes.device) & _erode(fg)  # [B, S, S]
    in_fixed = fixed.gather(1, classes.clamp_min(0).flatten(1)).view_as(classes)
    counts = torch.stack([((classes == c) & region).flatten(1).sum(-1) for c in range(len(COLORS))], -1)
    free = counts * ~fixed[:, : len(COLORS)]  # hues that no fixed part has
    enough = free.amax(-1) >= (0.25 * region.flatten(1).sum(-1)).clamp_min(3)
    color = torch.where(enough, free.argmax(-1), counts.argmax(-1))
    # Hardly any primary part in view (a bed's blanket behind its footboard): the free hues of the whole
    # object, else the hue that agreed best.
    anywhere = torch.stack([((classes == c) & fg).flatten(1).sum(-1) for c in range(len(COLORS))], -1)
    anywhere = anywhere * ~fixed[:, : len(COLORS)]
    fallback = torch.where(anywhere.amax(-1) >= 2, anywhere.argmax(-1), result["color"])
    color = torch.where(counts.sum(-1) >= 8, color, fallback)
    # Pixels of a fixed part's hue next to where the reference has fixed parts (a mushroom's gills, a
    # mug's coffee, let in by misalignment) are no pattern colour; white and black stay.
    ref_fixed = references.masks & ~references.primary
    near_fixed = _dilate(ref_fixed[result["kind"], result["view"]].to(classes.device), 2)
    in_fixed_hue = in_fixed & (classes < len(COLORS)) & near_fixed
    region = region & (~in_fixed_hue | (classes == color[:, None, None]))
    pattern, first, second = judge_patterns(classes, region)
    patternable = torch.tensor([KIND_SPECS[k].patternable for k in kinds], device=pattern.device)
    pattern = torch.where(patternable, pattern, torch.zeros_like(pattern))
    color = torch.where((pattern > 0) & (first < len(COLORS)), first, color)
    secondary = torch.where(pattern > 0, second, torch.full_like(second, -1))
    return WorldVerdict(
        result["kind"], result["view"], result["iou"], result["agreement"], color, pattern, secondary
    )


SOLID_SHARE = 0.08
"""Below this share of the second colour inside the primary parts, an object is solid."""
BAND_CROSS_CHANGES = 0.1
"""Bands (stripes, two-tone) change colour between fewer than this share of side-by-side pixels."""
PATTERN_INDEX = {"solid": 0, "striped": 1, "checkered": 2, "dotted": 3, "two-tone": 4}
"""Pattern indices (:data:`recon.data.objects.PATTERNS` order)."""


def pattern_features(classes: Tensor, region: Tensor) -> dict[str, Tensor]:
    """Statistics of the two main colours inside ``region`` (``[B, S, S]`` each) that tell patterns apart.

    Returns:
        ``first`` / ``second`` (the two most frequent colour classes, ``[B]``), ``share`` (of the second),
        ``vertical`` / ``horizontal`` (share of vertically / horizontally adjacent pixel pairs whose
        colour differs: bands make the first large and the second small), ``bands`` (colour changes down
        the rows' majority colours), ``bottom`` / ``top`` (the colour of the lowest / highest rows, 1 for
        the second colour) and ``islands`` (connected pieces of the second colour).
    """
    from scipy import ndimage

    b = classes.shape[0]
    counts = torch.stack([((classes == c) & region).flatten(1).sum(-1) for c in range(N_CLASSES)], -1)
    top, idx = counts.float().topk(2, dim=-1)
    share = top[:, 1] / top.sum(-1).clamp_min(1.0)
    first, second = idx[:, 0], idx[:, 1]
    is_first = (classes == first[:, None, None]) & region
    is_second = (classes == second[:, None, None]) & region
    valid = is_first | is_second
    label = is_second.float()

    def changes(a: Tensor, b_: Tensor, ok: Tensor) -> Tensor:
        return ((a != b_) & ok).flatten(1).sum(-1) / ok.flatten(1).sum(-1).clamp_min(1)

    vertical = changes(label[:, 1:], label[:, :-1], valid[:, 1:] & valid[:, :-1])
    checker = _checker_correlation(label, valid)
    horizontal = changes(label[:, :, 1:], label[:, :, :-1], valid[:, :, 1:] & valid[:, :, :-1])
    bands, bottom, top_label, islands, first_islands = [], [], [], [], []
    for i in range(b):
        n_row = valid[i].sum(-1)
        rows = (n_row >= 2).nonzero().flatten()
        if len(rows) == 0:
            bands.append(0), bottom.append(0.0), top_label.append(0.0), islands.append(0)
            first_islands.append(0)
            continue
        majority = (is_second[i].sum(-1)[rows].float() / n_row[rows].float()) > 0.5
        runs = torch.unique_consecutive(majority)
        bands.append(len(runs) - 1)
        k = max(1, len(rows) // 6)  # a sixth of the rows at each end
        bottom.append(float(is_second[i][rows[-k:]].sum()) / float(valid[i][rows[-k:]].sum().clamp_min(1)))
        top_label.append(float(is_second[i][rows[:k]].sum()) / float(valid[i][rows[:k]].sum().clamp_min(1)))
        islands.append(int(ndimage.label(is_second[i].cpu().numpy())[1]))
        first_islands.append(int(ndimage.label(is_first[i].cpu().numpy())[1]))
    return {
        "first": first,
        "second": second,
        "share": share,
        "vertical": vertical,
        "horizontal": horizontal,
        "bands": torch.tensor(bands),
        "bottom": torch.tensor(bottom),
        "top": torch.tensor(top_label),
        "islands": torch.tensor(islands),
        "first_islands": torch.tensor(first_islands),
        "checker": checker,
    }


def _shifted_correlation(x: Tensor, valid: Tensor, dy: int, dx: int) -> Tensor:  # [B, S, S] -> [B]
    h, w = x.shape[-2:]
    a = x[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    b = x[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    ok = valid[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    ok = ok & valid[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    n = ok.flatten(1).sum(-1).clamp_min(1)
    return (a * b * ok).flatten(1).sum(-1) / n


def _checker_correlation(label: Tensor, valid: Tensor, offsets: range = range(2, 11)) -> Tensor:  # [B]
    """``max_k`` of the label's autocorrelation at diagonal offsets ``(k, ±k)`` minus that at axis offsets
    ``(k, 0), (0, k)``: a checkerboard of cell ``k`` flips colour along the axes and keeps it along the
    diagonals; a lattice of dots repeats along both."""
    v = valid.float()
    mean = (label * v).flatten(1).sum(-1) / v.flatten(1).sum(-1).clamp_min(1)
    x = (label - mean[:, None, None]) * v
    var = (x * x).flatten(1).sum(-1) / v.flatten(1).sum(-1).clamp_min(1)
    best = torch.full_like(mean, -2.0)
    for k in offsets:
        diag = (_shifted_correlation(x, valid, k, k) + _shifted_correlation(x, valid, k, -k)) / 2
        axis = (_shifted_correlation(x, valid, k, 0) + _shifted_correlation(x, valid, 0, k)) / 2
        best = torch.maximum(best, (diag - axis) / var.clamp_min(1e-6))
    return best


def judge_patterns(classes: Tensor, region: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pattern inside an object's primary-colour parts: a frequency/contrast test on its two main colours.

    Args:
        classes: ``[B, S, S]`` colour classes (:func:`colour_classes`).
        region: ``[B, S, S]`` bool, the pixels of the primary-colour parts.

    Returns:
        ``(pattern [B], primary [B], secondary [B])``: index into ``PATTERNS`` (0 solid), and the two
        colours as classes (:data:`SECONDARY_NAMES` indices; the primary is a hue where one of the two is
        white or black, the bottom band of stripes, the top of a two-tone, the majority of dots).
    """
    f = pattern_features(classes, region)
    share, v, h, bands = f["share"], f["vertical"], f["horizontal"], f["bands"]
    banded = (h < BAND_CROSS_CHANGES) & (v > 2.5 * h)
    checker = 10.0 * share + f["checker"] - 0.08 * (f["islands"] + f["first_islands"]).float() - 3.0 > 0
    pattern = torch.where(checker, PATTERN_INDEX["checkered"], PATTERN_INDEX["dotted"])
    pattern = torch.where(banded & (bands >= 2), PATTERN_INDEX["striped"], pattern)
    pattern = torch.where((bands <= 1) & (h < BAND_CROSS_CHANGES), PATTERN_INDEX["two-tone"], pattern)
    pattern = torch.where(share < SOLID_SHARE, 0, pattern)
    # Which of the two colours is the primary: a hue over white / black; else the bottom band of stripes,
    # the top of a two-tone, the majority elsewhere.
    first, second = f["first"], f["second"]
    swap = torch.where(
        pattern == PATTERN_INDEX["striped"], f["bottom"] > 0.5, torch.zeros_like(share, dtype=torch.bool)
    )
    swap = torch.where(pattern == PATTERN_INDEX["two-tone"], f["top"] > 0.5, swap)
    swap = torch.where((first >= len(COLORS)) & (second < len(COLORS)), True, swap)
    swap = torch.where((second >= len(COLORS)) & (first < len(COLORS)), False, swap)
    primary, secondary = torch.where(swap, second, first), torch.where(swap, first, second)
    return pattern, primary, torch.where(pattern > 0, secondary, torch.full_like(secondary, -1))


# --- front-facing: which way an asymmetric object's front points ----------------------------------------
FRONT_DIFFERENCE = 0.15
"""Pixels where the two orientation hypotheses differ by more than this (some channel) are compared."""
FRONT_MARGIN = 0.25
"""A view votes for the hypothesis it is nearer to by at least this share of the hypotheses' own mean
difference (a featureless blob, halfway between them, abstains)."""
FRONT_MIN_SHARE = 0.004
"""A view abstains when the hypotheses differ on fewer pixels than this share of the image (a rocket's
window is about 12 pixels of a 48 x 48 view)."""


def turned_cameras(cameras):  # -> recon.cameras.Cameras
    """The cameras carried 180 degrees around the vertical axis: seeing the object from them is seeing it
    turned around (its front where its back was) from the original cameras."""
    import dataclasses

    rot = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0])).to(cameras.camera_to_worlds)
    az = None if cameras.azimuth_deg is None else (cameras.azimuth_deg + 360.0) % 360.0 - 180.0
    return dataclasses.replace(cameras, camera_to_worlds=rot @ cameras.camera_to_worlds, azimuth_deg=az)


def orientation_hypotheses(obj, cameras, ambient: float | None = None) -> tuple[Tensor, Tensor]:
    """Renders ``[V, 3, H, W]`` of an object as it should be (front on +Z) and turned around, from
    ``cameras``, lit by the same world light (for the turned one the light goes around with the cameras).

    Args:
        obj: A :class:`recon.data.objects.ProceduralObject`.
        cameras: ``V`` cameras (e.g. a turntable).
        ambient: Shading's ambient share (``None``: the renderer's; 1: flat albedo, as a texture).
    """
    from recon.data.objects import render_object
    from recon.data.procedural import DEFAULT_AMBIENT, DEFAULT_LIGHT_DIR

    ambient = DEFAULT_AMBIENT if ambient is None else ambient
    lx, ly, lz = DEFAULT_LIGHT_DIR
    canonical = render_object(obj, cameras, ambient=ambient).rgb.permute(0, 3, 1, 2)
    turned = render_object(obj, turned_cameras(cameras), light_dir=(-lx, ly, -lz), ambient=ambient)
    return canonical, turned.rgb.permute(0, 3, 1, 2)


def front_votes(
    images: Tensor, obj, cameras, margin: float = FRONT_MARGIN, ambient: float | None = None
) -> Tensor:
    """Per view, whether the object in ``images`` faces the way ``obj`` does or is turned around.

    Each view compares the image with the two :func:`orientation_hypotheses` where they differ (the
    front part on one side or the other, the back of a chair, the handle of a mug); a view where they
    hardly differ abstains.

    Args:
        images: ``[V, 3, H, W]`` in ``[0, 1]`` on white, seen from ``cameras``.
        obj: The prompted :class:`recon.data.objects.ProceduralObject` (its kind should be asymmetric).
        cameras: ``V`` cameras of size ``H x W``.
        margin: Share of the hypotheses' own difference by which a view must be nearer to one.
        ambient: Shading of the hypotheses (``None``: as rendered; 1.0: flat, for textures).

    Returns:
        ``[V]`` long: ``+1`` front where it should be, ``-1`` turned around, ``0`` undecided.
    """
    canonical, turned = orientation_hypotheses(obj, cameras, ambient)
    differ = (canonical - turned).abs().amax(1) > FRONT_DIFFERENCE  # [V, H, W]
    n = differ.flatten(1).sum(-1)

    def mean_error(a: Tensor, b: Tensor) -> Tensor:  # [V]: mean |a - b| where the hypotheses differ
        return ((a - b).abs().mean(1) * differ).flatten(1).sum(-1) / n.clamp_min(1)

    gap = mean_error(images, turned) - mean_error(images, canonical)  # > 0: nearer as it should be
    needed = margin * mean_error(canonical, turned)
    votes = torch.where(gap >= needed, 1, torch.where(gap <= -needed, -1, 0))
    min_pixels = max(4, int(FRONT_MIN_SHARE * images.shape[-1] * images.shape[-2]))
    return torch.where(n >= min_pixels, votes, torch.zeros_like(votes))


def janus_verdict(votes: Tensor, min_votes: int = 2) -> str:
    """``"one-way"`` (the front faces one way: every decided view agrees, up to one), ``"janus"`` (at
    least ``min_votes`` views see the front on each side) or ``"undecided"``, from :func:`front_votes` of
    a turntable."""
    ahead, behind = int((votes > 0).sum()), int((votes < 0).sum())
    if ahead >= min_votes and behind >= min_votes:
        return "janus"
    if max(ahead, behind) >= min_votes:
        return "one-way"
    return "undecided"


# --- captions -------------------------------------------------------------------------------------------
CAPTION_MIN_IOU = 0.6
"""Below this silhouette IoU with the best kind, :func:`caption_image` gives no caption."""


def caption_references() -> KindReferences:
    """The references :func:`caption_image` compares with: every kind from all around, in a normalised
    frame (the picture's camera is unknown)."""
    return kind_references(None, normalized=True)


def caption_image(rgb: Tensor, mask: Tensor, min_iou: float = CAPTION_MIN_IOU) -> str:
    """A caption of the embedded world for a picture of one object (``"a red duck"``), or ``""`` if unsure
    (see :func:`caption_image_scored`)."""
    text, iou = caption_image_scored(rgb, mask)
    return text if iou >= min_iou else ""


def caption_image_scored(rgb: Tensor, mask: Tensor) -> tuple[str, float]:
    """The best caption of the embedded world for a picture of one object (``"a red duck"``) and its IoU.

    The judges of :func:`judge_world` against :func:`caption_references`: the kind whose silhouette and
    colour layout agree best (position and scale free), its primary colour, and its pattern when the kind
    takes one. DreamCraft3D captions its reference with BLIP-2; this is the embedded stand-in.

    Args:
        rgb: ``[H, W, 3]`` in ``[0, 1]``, the object on white.
        mask: ``[H, W]`` object mask (bool, or float with ``> 0.5`` the object).

    Returns:
        A caption of :func:`recon.data.objects.caption` and the silhouette IoU of its kind (``("", 0)``
        for an empty mask).
    """
    import torch.nn.functional as F

    from recon.data.objects import KIND_SPECS, KINDS, PATTERNS, ProceduralObject, caption

    m = (mask > 0.5) if mask.dtype != torch.bool else mask
    if not m.any():
        return "", 0.0
    image = rgb.permute(2, 0, 1)[None].float()
    mf = m[None, None].float()
    while image.shape[-1] > 4 * NORMALIZED_SIZE:  # area-average large pictures before resampling
        image, mf = F.avg_pool2d(image, 2), F.avg_pool2d(mf, 2)
    verdict = judge_world(image, caption_references(), mf[:, 0] > 0.5)
    kind = KINDS[int(verdict.kind[0])]
    iou = float(verdict.iou[0])
    color = list(COLORS)[int(verdict.color[0])]
    pattern, secondary = int(verdict.pattern[0]), int(verdict.secondary[0])
    if (
        pattern > 0
        and KIND_SPECS[kind].patternable
        and 0 <= secondary
        and SECONDARY_NAMES[secondary] != color
    ):
        return caption(ProceduralObject(kind, color, SECONDARY_NAMES[secondary], PATTERNS[pattern])), iou
    return caption(ProceduralObject(kind, color)), iou
