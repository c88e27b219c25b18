"""The reference image of image-to-3D: load, segment, recentre, and (optionally) estimate depth.

DreamCraft3D's ``preprocess_image.py`` keeps an RGBA input's alpha, segments RGB inputs (carvekit),
recentres the object so that its bounding box's long side is 0.9 of the frame, and predicts a
monocular depth map (Omnidata DPT) for a ``1 − Pearson`` depth loss. Here:

* an RGBA image keeps its alpha;
* an RGB image on a plain background gets its mask by **background segmentation**: the background
  color is the median of the image's border, the object is what differs from it (largest connected
  component, holes filled); a busy background is refused with the fix (``--mask FILE`` or RGBA);
* ``mask=`` (``--mask FILE``) overrides both;
* ``segmentation="rembg"`` uses rembg where it and its model are installed locally (optional extra);
* depth through transformers (``AutoModelForDepthEstimation``: DPT, Depth-Anything) from a local
  folder or a hub id the user gives — the real-weight path only; nothing is downloaded otherwise.

Everything returned is square, ``size × size``, the object composited on white.
:func:`caption_reference` names a reference in the embedded vocabulary (the prompt of the embedded text
prior when the user gives none).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.cameras import cameras_from_spherical
from recon.errors import UserError, check_range

Segmentation = Literal["auto", "alpha", "background", "rembg"]

IMAGE_HINT = "give a PNG, JPEG or WebP picture of one object (RGBA keeps its alpha as the mask)"


@dataclass
class ReferenceConfig:
    """How a reference image is prepared."""

    size: int = 256
    """Side of the square output image."""
    fill: float = 0.9
    """Share of the frame the object's long side fills after recentring (DreamCraft3D: 0.9)."""
    segmentation: Segmentation = "auto"
    """``auto``: alpha when the image has a non-trivial one, else background segmentation."""
    background_tolerance: float = 0.12
    """Color distance (RGB in [0, 1]) from the background color above which a pixel is object."""
    plain_background: float = 0.85
    """Share of border pixels that must be within tolerance of the border's median color."""
    min_object_fraction: float = 0.002
    """Masks smaller than this share of the image are refused as empty."""


@dataclass
class ReferenceImage:
    """A prepared reference view."""

    rgb: Tensor
    """``[size, size, 3]`` in [0, 1], the object composited on white."""
    mask: Tensor
    """``[size, size]`` float in [0, 1] (soft edge from the resampling); ``> 0.5`` is the object."""
    source: str
    """Where the mask came from: ``alpha``, ``background``, ``mask-file`` or ``rembg``."""
    depth: Tensor | None = None
    """``[size, size]`` relative depth normalised to [0, 1] inside the mask (0 outside), if estimated."""

    @property
    def size(self) -> int:
        return int(self.rgb.shape[0])


def _read_image(path: str | os.PathLike, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist: {IMAGE_HINT}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                arr = np.asarray(im.convert("RGBA"))
            elif im.mode in ("I;16", "I", "F", "L", "1"):
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise UserError(
            f"{what} {str(path)!r} is not an image this machine can read ({err}): {IMAGE_HINT}"
        ) from None
    return arr


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return ndimage.binary_fill_holes(mask)
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(keep)


def segment_background(rgb: np.ndarray, config: ReferenceConfig) -> np.ndarray:
    """Object mask of an RGB image ``[H, W, 3]`` (float in [0, 1]) on a plain background.

    Raises:
        UserError: when the border is not one plain color (the segmentation would be a guess).
    """
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)  # [P, 3]
    background = np.median(border, axis=0)
    near = np.linalg.norm(border - background, axis=-1) <= config.background_tolerance
    if near.mean() < config.plain_background:
        raise UserError(
            f"the image's background is not plain (only {100 * near.mean():.0f}% of its border is one "
            "color), "
            "so the object can't be separated from it: give an RGBA image with the background transparent, "
            "or a mask with --mask FILE (white = object), or --segmentation rembg where rembg is installed"
        )
    distance = np.linalg.norm(rgb - background, axis=-1)
    return _largest_component(distance > config.background_tolerance)


def segment_rembg(rgb: np.ndarray) -> np.ndarray:
    """Object mask by rembg (optional extra; its model must already be on this machine)."""
    try:
        import rembg  # type: ignore[import-not-found]
    except ImportError:
        raise UserError(
            "--segmentation rembg needs the optional rembg package: pip install rembg "
            "(and its u2net model in ~/.u2net), or use --mask FILE / an RGBA image"
        ) from None
    home = Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net"))
    if not any(home.glob("*.onnx")):
        raise UserError(
            f"rembg's model is not on this machine (no .onnx file in {home}); rembg would download it. "
            "Put u2net.onnx there (or set U2NET_HOME), or use --mask FILE / an RGBA image"
        )
    from PIL import Image

    out = rembg.remove(Image.fromarray((rgb * 255).round().astype(np.uint8)))
    return np.asarray(out.convert("RGBA"))[..., 3] > 127


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def _touches_every_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any())


def recenter(rgb: np.ndarray, alpha: np.ndarray, size: int, fill: float) -> tuple[Tensor, Tensor]:
    """Crop a square around the mask's box so the box's long side is ``fill`` of it; resample to ``size``.

    Args:
        rgb: ``[H, W, 3]`` float in [0, 1].
        alpha: ``[H, W]`` float in [0, 1].

    Returns:
        ``(rgb [size, size, 3] on white, alpha [size, size])``.
    """
    y0, y1, x0, x1 = _bbox(alpha > 0.5)
    side = max(y1 - y0, x1 - x0) / fill
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    half = side / 2.0
    # The crop window in source pixels (may extend past the image: padded with background).
    top, left = int(np.floor(cy - half)), int(np.floor(cx - half))
    n = int(np.ceil(side))
    h, w = alpha.shape
    canvas_rgb = np.ones((n, n, 3), dtype=np.float32)
    canvas_a = np.zeros((n, n), dtype=np.float32)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + n, h), min(left + n, w)
    canvas_rgb[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = rgb[sy0:sy1, sx0:sx1]
    canvas_a[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = alpha[sy0:sy1, sx0:sx1]
    premult = torch.from_numpy(np.concatenate([canvas_rgb * canvas_a[..., None], canvas_a[..., None]], -1))
    x = premult.permute(2, 0, 1)[None]  # [1, 4, n, n]
    mode = "area" if n >= size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    x = F.interpolate(x, size=(size, size), mode=mode, **kwargs)[0].permute(1, 2, 0).clamp(0, 1)
    a = x[..., 3]
    out_rgb = x[..., :3] + (1.0 - a[..., None])  # premultiplied color over white
    return out_rgb.clamp(0, 1), a


def load_reference(
    image: str | os.PathLike,
    config: ReferenceConfig | None = None,
    mask: str | os.PathLike | None = None,
    depth_model: str | None = None,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> ReferenceImage:
    """Load and prepare a reference image (see the module docstring).

    Args:
        image: Path of the picture.
        config: Settings (defaults: :class:`ReferenceConfig`).
        mask: Optional mask image (white/non-zero = object), same size as the picture.
        depth_model: Optional transformers depth model (local folder or hub id) for a depth map.
        allow_download: Let ``depth_model`` be fetched from the hub when it is an id.
        device: Where the depth model runs.

    Raises:
        UserError: a missing or unreadable file, a mask of another size, an empty mask, an object
            that touches every border (cropped, or a background that couldn't be separated).
    """
    cfg = config or ReferenceConfig()
    check_range("reference size", cfg.size, 16, 4096)
    check_range("fill", cfg.fill, 0.1, 1.0, integer=False)
    arr = _read_image(image, "the reference image")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    arr = arr.astype(np.float32) / 255.0
    rgb = arr[..., :3]
    has_alpha = arr.shape[-1] == 4 and float(arr[..., 3].min()) < 0.99
    source: str
    if mask is not None:
        m = _read_image(mask, "the mask")
        m = m[..., 3] if (m.ndim == 3 and m.shape[-1] == 4) else (m if m.ndim == 2 else m[..., :3].max(-1))
        if m.shape[:2] != rgb.shape[:2]:
            raise UserError(
                f"the mask is {m.shape[1]}x{m.shape[0]} but the image is {rgb.shape[1]}x{rgb.shape[0]}: "
                "give a mask of the image's size"
            )
        alpha = (m.astype(np.float32) / (255.0 if m.dtype == np.uint8 else max(float(m.max()), 1.0))).clip(
            0, 1
        )
        source = "mask-file"
    elif cfg.segmentation == "alpha" or (cfg.segmentation == "auto" and has_alpha):
        if arr.shape[-1] != 4:
            raise UserError("--segmentation alpha needs an RGBA image; this one has no alpha channel")
        alpha = arr[..., 3]
        source = "alpha"
    elif cfg.segmentation == "rembg":
        alpha = segment_rembg(rgb).astype(np.float32)
        source = "rembg"
    else:
        alpha = segment_background(rgb, cfg).astype(np.float32)
        source = "background"
    if arr.shape[-1] == 4 and source != "alpha":
        # An RGBA picture with a separate mask: its color outside the alpha is undefined, show white.
        rgb = rgb * arr[..., 3:4] + (1 - arr[..., 3:4])
    hard = alpha > 0.5
    if hard.mean() < cfg.min_object_fraction:
        raise UserError(
            f"the object mask ({source}) is empty: nothing in the image differs from its background. "
            "Give a mask with --mask FILE (white = object) or an RGBA image"
        )
    if _touches_every_border(hard):
        raise UserError(
            f"the object ({source} mask) touches all four borders of the image, so it is cropped or its "
            "background was not separated: give a picture with some background around the whole object, "
            "or a mask with --mask FILE"
        )
    out_rgb, out_a = recenter(rgb, alpha, cfg.size, cfg.fill)
    ref = ReferenceImage(rgb=out_rgb, mask=out_a, source=source)
    if depth_model is not None:
        ref.depth = estimate_depth(ref, depth_model, allow_download=allow_download, device=device)
    return ref


def estimate_depth(
    ref: ReferenceImage, source: str, allow_download: bool = False, device: str | torch.device = "cpu"
) -> Tensor:
    """Relative depth of the reference (near = 1) by a transformers depth model, normalised in the mask.

    The model's output (disparity-like for DPT / Depth-Anything: larger is nearer) is resized back
    bicubically, min-max normalised inside the mask and zeroed outside, as DreamCraft3D does.
    """
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    kwargs = {"local_files_only": not allow_download}
    if not Path(source).is_dir() and not allow_download:
        raise UserError(
            f"the depth model {source!r} is not a local folder; pass a folder with a transformers "
            "depth model (DPT / Depth-Anything) or allow the download of a hub id"
        )
    try:
        processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        model = AutoModelForDepthEstimation.from_pretrained(source, **kwargs).to(device).eval()
    except (OSError, ValueError) as err:
        raise UserError(f"could not load the depth model {source!r}: {err}") from None
    image = (ref.rgb.numpy() * 255).round().astype(np.uint8)
    inputs = processor(images=image, return_tensors="pt").to(device)
    with torch.no_grad():
        pred = model(**inputs).predicted_depth  # [1, h, w]
    depth = F.interpolate(
        pred[:, None].float().cpu(), size=(ref.size, ref.size), mode="bicubic", align_corners=False
    )[0, 0]
    inside = ref.mask > 0.5
    lo, hi = depth[inside].min(), depth[inside].max()
    span = float(hi - lo)
    depth = ((depth - lo) / span).clamp(0, 1) if span > 0 else torch.zeros_like(depth)
    return torch.where(inside, depth, torch.zeros_like(depth))


def depth_correlation_loss(pred: Tensor, ref: Tensor, mask: Tensor) -> Tensor:
    """``1 − Pearson(pred[mask], ref[mask])`` (DreamCraft3D's relative depth loss; scale- and shift-free)."""
    p, r = pred[mask], ref[mask]
    if p.numel() < 2:
        return pred.sum() * 0.0
    p = p - p.mean()
    r = r - r.mean()
    return 1.0 - (p * r).sum() / (p.norm() * r.norm()).clamp_min(1e-8)


PRIMITIVE_MARGIN = 0.03
"""How much better (silhouette IoU) a world kind must fit the reference than the best primitive to win."""


def caption_reference(reference, min_iou: float = 0.6) -> str:
    """A caption of the embedded vocabulary for the reference ("a red cone", "a green mug"), or "" if unsure.

    Two judges, the better silhouette wins, a primitive unless the world's kind beats it by
    :data:`PRIMITIVE_MARGIN` (the simpler shape on a near tie): the primitive whose silhouette — rendered
    side-on from several elevations and azimuths and recentred like the reference
    (:func:`recenter`) — overlaps the reference's mask best, coloured with the nearest
    palette hue; and the embedded world's judge (:func:`priors.embedded.judge.caption_image_scored`: every
    kind, its colours and pattern). The primitives alone called a mug "a green cube"; the world judge alone
    called a sphere seen from the front "a yellow dumbbell" (IoU 0.968 against the sphere's 0.966).
    """
    from priors.embedded.judge import caption_image_scored

    primitive, primitive_iou = _primitive_caption(reference)
    world, world_iou = caption_image_scored(reference.rgb, reference.mask)
    world_wins = bool(world) and world_iou > primitive_iou + PRIMITIVE_MARGIN
    text, iou = (world, world_iou) if world_wins else (primitive, primitive_iou)
    return text if iou >= min_iou and text else ""


def _primitive_caption(reference) -> tuple[str, float]:
    """The best primitive's caption ("" when no palette colour fits) and its silhouette IoU."""
    from priors.embedded.judge import judge_colors
    from recon.data.procedural import COLORS, SHAPES

    fill = _mask_fill(reference.mask > 0.5)
    refs = _recentred_silhouettes(round(fill, 2))  # [S, V, 32, 32]
    mask = F.interpolate(reference.mask[None, None].float(), size=(32, 32), mode="area")[0, 0] > 0.5
    inter = (refs & mask).flatten(2).sum(-1).float()
    union = (refs | mask).flatten(2).sum(-1).float().clamp_min(1)
    iou, _ = (inter / union).max(-1)  # [S]
    best = int(iou.argmax())
    image = F.interpolate(reference.rgb.permute(2, 0, 1)[None], size=(32, 32), mode="area")
    color = int(judge_colors(image)[0])
    if color < 0:
        return "", float(iou[best])
    return f"a {list(COLORS)[color]} {SHAPES[best]}", float(iou[best])


def _mask_fill(mask: torch.Tensor) -> float:
    """The mask's box's long side over the frame's side (what :func:`recenter` sets to ``fill``)."""
    y0, y1, x0, x1 = _bbox(mask.cpu().numpy())
    return max(y1 - y0, x1 - x0) / mask.shape[0]


@functools.lru_cache(maxsize=4)
def _recentred_silhouettes(fill: float) -> torch.Tensor:
    """``[S, V, 32, 32]`` bool silhouettes of every primitive, recentred to ``fill`` of the frame."""
    import itertools

    from recon.data.procedural import SHAPES, render_primitive

    grid = list(itertools.product((-10.0, 0.0, 10.0, 20.0), (0.0, 20.0, 45.0)))
    el, az = (torch.tensor(v) for v in zip(*grid))
    ones = torch.ones(len(grid))
    cams = cameras_from_spherical(el, az, ones * 3.0, ones * 40.0, 64, 64)
    out = []
    for shape in SHAPES:
        alpha = render_primitive(shape, "red", cams)[1][..., 0].numpy()
        views = []
        for a in alpha:
            _, m = recenter(np.ones((*a.shape, 3), np.float32), a, 32, fill)
            views.append(m > 0.5)
        out.append(torch.stack(views))
    return torch.stack(out)
