"""Fit the head model to one portrait: 51 iBUG landmarks and the head's silhouette mask.

The first step of Zero-1-to-A (Zhou et al. 2025, https://arxiv.org/abs/2503.15851; HeadStudio's FLAME-bound
Gaussians, https://arxiv.org/abs/2402.06149): the avatar's Gaussians are bound to a head mesh that already
sits where the portrait's head is. The fit finds the head model's shape ``betas``, ``expression``,
``jaw_pose``, ``neck_pose``, ``global_orient`` and ``transl`` (and the focal length when the camera is
unknown) in the portrait's **camera frame**: the camera is at the origin, OpenGL convention (looks down
-Z, +Y up; :mod:`recon.cameras`), so the returned :class:`~recon.cameras.Cameras` has an identity pose.

Inputs a user's tools give:

* **Landmarks**: the 51 inner points of iBUG's 68-point scheme (brows, nose, eyes, mouth), in iBUG's
  order — iBUG's points 18-68 (1-based): right brow 18-22, left brow 23-27, nose bridge 28-31, nose base
  32-36, right eye 37-42, left eye 43-48, outer lips 49-60, inner lips 61-68 ("right" is the subject's
  right, the image's left in a frontal photo). A 68-point detector's output (dlib, ``face_alignment``)
  is accepted as it is: its first 17 points (the jaw line, which slides along the face's contour and
  no mesh point embeds) are dropped. Pixel coordinates, x right, y down, pixel centres at ``i + 0.5``.
* **Mask** (optional): the head's silhouette (skin, face, ears, neck; hair only where the head model
  has it, i.e. painted on the skull), ``[H, W]`` bool.

Losses, all scaled by the landmarks' spread ``s`` in pixels so weights do not depend on the image size:
landmark reprojection ``mean |π(L) - l|² / s²``; the silhouette as a distance-field proxy of a soft
silhouette — every projected vertex outside the mask pays its distance to the mask (the mask's
Euclidean distance transform, sampled bilinearly), and every pixel of the mask's contour pays its
distance to the nearest projected vertex (a one-sided Chamfer distance; contour pixels on the image
border are not silhouette edges and are skipped); L2 priors on shape, expression and the neck and the
jaw's sideways turns. Optimisation: a rigid stage (orientation and translation from several yaw
guesses at once, landmarks only; the best is kept), then every parameter with Adam.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.errors import SEED, UserError, checked
from recon.parametric.heads import HeadModel

log = logging.getLogger(__name__)

NUM_LANDMARKS = 51
IBUG68_INNER = slice(17, 68)
"""The rows of a 68-point iBUG detection that are the model's 51 landmarks."""
MIN_MASK_FRACTION = 0.002
"""A mask covering less of the image than this holds no face the fit can use."""
MIN_INSIDE = 0.8
"""Fraction of the landmarks that must lie inside the image."""


@dataclass
class HeadFitConfig:
    """How the head model is fitted to a portrait."""

    steps: int = checked(300, low=1, high=100_000)
    """Adam steps of the full fit (every parameter)."""
    rigid_steps: int = checked(80, low=0, high=100_000)
    """Adam steps of the rigid stage (orientation, translation) from each yaw guess."""
    yaw_guesses_deg: tuple[float, ...] = (-60.0, -30.0, 0.0, 30.0, 60.0)
    """Initial head yaws tried in the rigid stage (0: facing the camera)."""
    lr: float = checked(0.02, low=1e-6, high=1.0)
    """Adam's step size for rotations (radians), shape and expression; translation takes lr / 4 (m)."""
    silhouette_weight: float = checked(0.5, low=0.0, high=1e3)
    """Weight of the silhouette terms (0: landmarks only)."""
    shape_prior: float = checked(1e-3, low=0.0, high=1e3)
    """L2 weight on ``betas``."""
    expression_prior: float = checked(1e-3, low=0.0, high=1e3)
    """L2 weight on ``expression``."""
    pose_prior: float = checked(1e-2, low=0.0, high=1e3)
    """L2 weight on ``neck_pose`` and the jaw's sideways rotations."""
    fov_guess_deg: float = checked(30.0, low=5.0, high=120.0)
    """Vertical field of view the fit starts from when the focal length is unknown."""
    seed: int = checked(0, SEED)
    """Seed (the fit is deterministic; kept for the contour subsampling)."""
    max_contour_points: int = checked(400, low=16, high=1_000_000)
    """Contour pixels used by the silhouette's Chamfer term at most (evenly subsampled)."""


@dataclass
class HeadFit:
    """A fitted head: parameters ``[1, ...]`` in the camera's frame, the camera and the fit's errors."""

    params: dict[str, Tensor] = field(default_factory=dict)  # betas, expression, *_pose, transl: [1, ...]
    camera: Cameras | None = None  # identity pose, the given or fitted focal length
    landmarks_2d: Tensor | None = None  # [51, 2] the fitted head's landmarks, in pixels
    landmark_error_px: float = math.nan  # mean reprojection error
    silhouette_iou: float = math.nan  # rasterized head vs mask (nan without a mask)


# ------------------------------------------------------------------------------------------- inputs
def check_portrait_inputs(
    landmarks: np.ndarray | Tensor,  # [51, 2] or [68, 2] pixels
    mask: np.ndarray | Tensor | None,  # [H, W] bool
    width: int,
    height: int,
) -> tuple[Tensor, Tensor | None]:
    """The 51 landmarks ``[51, 2]`` and the mask ``[H, W]`` as tensors, or one :class:`UserError`.

    Raises:
        UserError: landmarks of the wrong shape or not finite, landmarks mostly outside the image or
            collapsed to a point, a mask of the wrong size, a mask with no region (no face to fit), or
            landmarks that lie mostly outside the mask.
    """
    lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (NUM_LANDMARKS, 68):
        raise UserError(
            f"face landmarks must be [51, 2] (iBUG's inner points 18-68) or [68, 2] (iBUG's 68) pixel "
            f"coordinates, got shape {tuple(lm.shape)}; run a 68-point face landmark detector on the portrait"
        )
    if lm.shape[0] == 68:
        lm = lm[IBUG68_INNER]
    if not torch.isfinite(lm).all():
        raise UserError(
            "face landmarks contain NaN or infinite values; pass the detector's pixel coordinates"
        )
    inside = (lm[:, 0] >= 0) & (lm[:, 0] <= width) & (lm[:, 1] >= 0) & (lm[:, 1] <= height)
    if inside.float().mean() < MIN_INSIDE:
        raise UserError(
            f"no face in the portrait: only {int(inside.sum())} of 51 landmarks lie inside the "
            f"{width}x{height} image; pass a portrait with the face in view (and landmarks in its pixels)"
        )
    if float(lm.std(0).norm()) < 2.0:
        raise UserError("the face landmarks collapse to one point; pass a portrait where the face is visible")
    if mask is None:
        return lm, None
    m = torch.as_tensor(np.asarray(mask)).bool()
    if m.shape != (height, width):
        raise UserError(
            f"the mask is {tuple(m.shape)}, the portrait {height}x{width}; pass the portrait's mask"
        )
    if m.float().mean() < MIN_MASK_FRACTION:
        raise UserError(
            f"no face-like region in the portrait: the head mask covers {int(m.sum())} pixels "
            f"(< {MIN_MASK_FRACTION:.1%} of the image); pass a portrait whose head mask is not empty"
        )
    px = lm.round().long()
    px[:, 0].clamp_(0, width - 1)
    px[:, 1].clamp_(0, height - 1)
    if m[px[:, 1], px[:, 0]].float().mean() < 0.5:
        raise UserError(
            "the face landmarks lie mostly outside the head mask; pass the mask and landmarks of one face"
        )
    return lm, m


# ------------------------------------------------------------------------------------------ geometry
def camera_frame_cameras(focal: float | Tensor, width: int, height: int) -> Cameras:
    """One camera at the origin (OpenGL: looks down -Z), square pixels, principal point at the centre."""
    f = torch.as_tensor(focal, dtype=torch.float32).reshape(1)
    return Cameras(
        camera_to_worlds=torch.eye(4)[None],
        fx=f.clone(),
        fy=f.clone(),
        cx=torch.tensor([width / 2.0]),
        cy=torch.tensor([height / 2.0]),
        width=width,
        height=height,
    )


def project_camera_frame(points: Tensor, focal: Tensor, cx: float, cy: float) -> Tensor:
    """``[..., 3]`` points in the OpenGL camera frame -> ``[..., 2]`` pixels (x right, y down)."""
    z = (-points[..., 2]).clamp_min(1e-4)
    return torch.stack([focal * points[..., 0] / z + cx, focal * -points[..., 1] / z + cy], dim=-1)


def mask_contour(mask: Tensor) -> Tensor:
    """``[P, 2]`` pixel centres of the mask's contour (mask pixels with a 4-neighbour outside it, inside
    the image: where the mask meets the image border there is no silhouette edge)."""
    m = mask.bool()
    pad = torch.nn.functional.pad(m[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0].bool()
    outside = ~pad[:-2, 1:-1] | ~pad[2:, 1:-1] | ~pad[1:-1, :-2] | ~pad[1:-1, 2:]
    rows, cols = torch.nonzero(m & outside, as_tuple=True)
    return torch.stack([cols.float() + 0.5, rows.float() + 0.5], dim=-1)


def outside_distance(mask: Tensor) -> Tensor:
    """``[H, W]`` distance in pixels from each pixel to the mask (0 on it)."""
    from scipy.ndimage import distance_transform_edt

    return torch.as_tensor(distance_transform_edt(~mask.numpy()), dtype=torch.float32)


def sample_map(image: Tensor, xy: Tensor) -> Tensor:
    """Bilinear samples of ``image [H, W]`` at pixel coordinates ``xy [..., N, 2]`` -> ``[..., N]``."""
    H, W = image.shape
    grid = torch.stack([xy[..., 0] / W * 2 - 1, xy[..., 1] / H * 2 - 1], dim=-1).reshape(1, 1, -1, 2)
    out = torch.nn.functional.grid_sample(
        image[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.reshape(xy.shape[:-1])


def rotation_angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """The angle between rotations ``[..., 3, 3]`` in degrees."""
    cos = ((a.transpose(-1, -2) @ b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


# --------------------------------------------------------------------------------------------- fit
def fit_head(
    model: HeadModel,
    landmarks: np.ndarray | Tensor,  # [51, 2] or [68, 2] pixels
    width: int,
    height: int,
    mask: np.ndarray | Tensor | None = None,  # [H, W] bool
    focal: float | None = None,  # pixels; None: fitted
    config: HeadFitConfig | None = None,
) -> HeadFit:
    """Fits ``model`` to a portrait's landmarks (and mask); see the module docstring.

    Args:
        model: The head model (its 51 embedded landmarks are matched to the portrait's).
        landmarks: The 51 iBUG inner landmarks or all 68, in pixels.
        width: Portrait width in pixels.
        height: Portrait height in pixels.
        mask: The head's silhouette; None fits landmarks only.
        focal: Focal length in pixels (square pixels, principal point at the image centre); None fits it.
        config: Steps, weights, priors.

    Returns:
        The fitted parameters in the camera's frame, the camera and the errors.

    Raises:
        UserError: inputs with no face the fit can use (see :func:`check_portrait_inputs`), a model without
            landmarks (a FLAME file without its ``flame_static_embedding.pkl``).
    """
    config = config or HeadFitConfig()
    if model.num_landmarks != NUM_LANDMARKS:
        raise UserError(
            "the head model has no landmark embedding; put flame_static_embedding.pkl next to the FLAME file"
        )
    lm, m = check_portrait_inputs(landmarks, mask, width, height)
    cx, cy = width / 2.0, height / 2.0
    spread = float(lm.std(0).norm())  # pixels
    fit_focal = focal is None
    f0 = (
        float(focal) if focal is not None else 0.5 * height / math.tan(math.radians(config.fov_guess_deg) / 2)
    )
    log_focal = torch.tensor(math.log(f0), requires_grad=fit_focal)

    with torch.no_grad():
        neutral = model().landmarks[0]  # [51, 3]
    # --- rigid stage: several yaw guesses at once, landmarks only
    yaws = torch.tensor(config.yaw_guesses_deg or (0.0,), dtype=torch.float32)
    G = yaws.numel()
    orient = torch.zeros(G, 3)
    orient[:, 1] = torch.deg2rad(yaws)
    depth = f0 * float(neutral.std(0).norm()) / spread  # metres: the face's size over its size in pixels
    ray = torch.tensor([(float(lm[:, 0].mean()) - cx) / f0, -(float(lm[:, 1].mean()) - cy) / f0, -1.0])
    with torch.no_grad():
        from recon.parametric.lbs import axis_angle_to_matrix

        centred = (axis_angle_to_matrix(orient) @ neutral.mean(0)).reshape(G, 3)
    transl = (ray * depth - centred).clone()
    orient.requires_grad_(True)
    transl.requires_grad_(True)
    rigid = torch.optim.Adam(
        [{"params": [orient], "lr": config.lr}, {"params": [transl], "lr": config.lr / 4}]
        + ([{"params": [log_focal], "lr": config.lr / 2}] if fit_focal else [])
    )
    for _ in range(config.rigid_steps):
        rigid.zero_grad()
        pred = project_camera_frame(
            model(global_orient=orient, transl=transl).landmarks, log_focal.exp(), cx, cy
        )
        per_guess = ((pred - lm) ** 2).sum(-1).mean(-1) / spread**2  # [G]
        per_guess.sum().backward()
        rigid.step()
    with torch.no_grad():
        pred = project_camera_frame(
            model(global_orient=orient, transl=transl).landmarks, log_focal.exp(), cx, cy
        )
        best = int(((pred - lm) ** 2).sum(-1).mean(-1).argmin())
    log.info("head fit: rigid stage kept the yaw guess %.0f deg", float(yaws[best]))

    # --- full fit
    p = {
        "betas": torch.zeros(1, model.num_betas),
        "expression": torch.zeros(1, model.num_expressions),
        "jaw_pose": torch.zeros(1, 3),
        "neck_pose": torch.zeros(1, 3),
        "global_orient": orient[best : best + 1].detach().clone(),
        "transl": transl[best : best + 1].detach().clone(),
    }
    for t in p.values():
        t.requires_grad_(True)
    groups = [{"params": [t], "lr": config.lr / 4 if k == "transl" else config.lr} for k, t in p.items()]
    if fit_focal:
        groups.append({"params": [log_focal], "lr": config.lr / 2})
    optimizer = torch.optim.Adam(groups)
    use_mask = m is not None and config.silhouette_weight > 0
    if use_mask:
        dist = outside_distance(m)
        contour = mask_contour(m)
        if contour.shape[0] > config.max_contour_points:
            keep = torch.linspace(0, contour.shape[0] - 1, config.max_contour_points).round().long()
            contour = contour[keep]
    anny = model.source == "anny"
    for _ in range(config.steps):
        optimizer.zero_grad()
        out = model(**p)
        f = log_focal.exp()
        loss = ((project_camera_frame(out.landmarks[0], f, cx, cy) - lm) ** 2).sum(-1).mean() / spread**2
        if use_mask:
            xy = project_camera_frame(out.vertices[0], f, cx, cy)
            off_image = (
                (-xy[:, 0]).clamp_min(0) + (xy[:, 0] - width).clamp_min(0)
                + (-xy[:, 1]).clamp_min(0) + (xy[:, 1] - height).clamp_min(0)
            )  # fmt: skip
            outside = sample_map(dist, xy) + off_image
            with torch.no_grad():  # the nearest vertex of each contour pixel (the gradient of the min)
                nearest = torch.cdist(contour, xy).argmin(dim=1)
            coverage = (contour - xy[nearest]).norm(dim=-1)
            loss = loss + config.silhouette_weight * ((outside**2).mean() + (coverage**2).mean()) / spread**2
        loss = loss + config.shape_prior * (p["betas"] ** 2).sum()
        loss = loss + config.expression_prior * (p["expression"] ** 2).sum()
        loss = loss + config.pose_prior * ((p["neck_pose"] ** 2).sum() + (p["jaw_pose"][:, 1:] ** 2).sum())
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if anny:  # anny's facial actions run from 0 (neutral) to 1 (full); its jaw only opens
                p["expression"].clamp_(0.0, 1.0)
                p["jaw_pose"][:, 0].clamp_(min=0.0)

    params = {k: t.detach().clone() for k, t in p.items()}
    camera = camera_frame_cameras(log_focal.detach().exp(), width, height)
    with torch.no_grad():
        out = model(**params)
        pred = project_camera_frame(out.landmarks[0], log_focal.exp(), cx, cy)
    error = float((pred - lm).norm(dim=-1).mean())
    iou = silhouette_iou(out.vertices[0], model.faces, camera, m) if m is not None else math.nan
    log.info(
        "head fit: landmark error %.2f px, silhouette IoU %.3f, focal %.1f px", error, iou, float(camera.fx)
    )
    return HeadFit(params, camera, pred, error, iou)


def silhouette_iou(vertices: Tensor, faces: Tensor, camera: Cameras, mask: Tensor) -> float:
    """IoU of the rasterized mesh's coverage (pixel centres) with ``mask``."""
    from recon.render.mesh_raster import rasterize_mesh

    raster = rasterize_mesh(vertices, faces, camera, backend="torch")
    hit = raster.face_ids[0] >= 0
    return float((hit & mask).sum() / (hit | mask).sum().clamp_min(1))


# ------------------------------------------------------------------------------------------- files
def load_portrait(
    image_path: str | Path, landmarks_path: str | Path, mask_path: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(rgb [H, W, 3] float in [0, 1], landmarks [L, 2], mask [H, W] bool or None)`` from files.

    The landmarks' JSON is a list of ``[x, y]`` pixels (51 or 68 iBUG points) or an object with a
    ``landmarks_2d`` list (what ``sds3d heads synth`` writes); the mask is an image, white = head.

    Raises:
        UserError: a file that is not an image, landmarks that are not such JSON, a mask of another size.
    """
    import json

    from PIL import Image, UnidentifiedImageError

    def read_image(path: str | Path, what: str) -> Image.Image:
        try:
            with Image.open(path) as im:
                im.load()
                return im.copy()
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"{what} {path} is not a readable image ({err}); pass a PNG or JPEG") from None

    image = np.asarray(read_image(image_path, "the portrait").convert("RGB"), dtype=np.float32) / 255.0
    try:
        data = json.loads(Path(landmarks_path).read_text())
        if isinstance(data, dict):
            data = data["landmarks_2d"]
        landmarks = np.asarray(data, dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"the landmarks file {landmarks_path} is not a JSON list of [x, y] pixels or an object with "
            f"'landmarks_2d' ({type(err).__name__}); pass a 51- or 68-point iBUG detection as JSON"
        ) from None
    mask = None
    if mask_path is not None:
        mask = np.asarray(read_image(mask_path, "the mask").convert("L")) > 127
        if mask.shape != image.shape[:2]:
            raise UserError(
                f"the mask is {mask.shape[1]}x{mask.shape[0]}, the portrait "
                f"{image.shape[1]}x{image.shape[0]}; pass the portrait's own mask"
            )
    return image, landmarks, mask


def portrait_vertex_colors(
    model: HeadModel,
    fit: HeadFit,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    fill: str = "nearest",
    min_facing: float = 0.3,
) -> np.ndarray:  # [V, 3]
    """Each vertex's colour from the portrait where the fitted head shows it; elsewhere (the back of the
    head, the far side of a turned face) the colour of the nearest seen vertex (``fill="nearest"``: the
    hair seen on top carries on down the back) or the seen colours' median (``"median"``). A vertex counts
    as seen when it is in front, inside the mask and faces the camera at more than ``min_facing`` (cosine)."""
    from recon.render.mesh_raster import rasterize_mesh

    with torch.no_grad():
        v = model(**fit.params).vertices[0]
    cam = fit.camera
    raster = rasterize_mesh(v, model.faces, cam, backend="torch")
    xy = project_camera_frame(v, cam.fx[0], float(cam.cx[0]), float(cam.cy[0]))
    H, W = image.shape[:2]
    px = xy.floor().long()
    px[:, 0].clamp_(0, W - 1)
    px[:, 1].clamp_(0, H - 1)
    depth = raster.depth[0][px[:, 1], px[:, 0]]
    seen = (raster.face_ids[0][px[:, 1], px[:, 0]] >= 0) & ((-v[:, 2] - depth).abs() < 0.005)
    seen &= (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
    if mask is not None:
        seen &= torch.as_tensor(mask)[px[:, 1], px[:, 0]]
    if min_facing > 0:  # colours seen edge-on are the silhouette's blend of neighbours, not the surface's
        from recon.data.hands_synth import vertex_normals

        normals = vertex_normals(v, model.faces)
        seen &= (normals * torch.nn.functional.normalize(-v, dim=-1)).sum(-1) > min_facing
    colors = image[px[:, 1].numpy(), px[:, 0].numpy()]
    seen_np = seen.numpy()
    if not seen_np.any():
        return np.full((len(colors), 3), 0.7, dtype=np.float32)
    if fill == "nearest":
        from scipy.spatial import cKDTree

        points = v.numpy()
        _, nearest = cKDTree(points[seen_np]).query(points[~seen_np])
        out = colors.copy()
        out[~seen_np] = colors[seen_np][nearest]
        return out.astype(np.float32)
    if fill != "median":
        raise ValueError(f"fill must be 'nearest' or 'median', got {fill!r}")
    median = np.median(colors[seen_np], axis=0)
    return np.where(seen_np[:, None], colors, median).astype(np.float32)
