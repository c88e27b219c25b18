"""Posed views with instance masks (and monocular cues, and per-object prompts): DP-Recon's input.

Two folder layouts read into one :class:`InstanceScene`:

**The documented layout** (what ``sds3d scene synth`` writes)::

    scene/
      transforms.json   fl_x, fl_y, cx, cy, w, h (top level or per frame) and frames: file_path,
                        mask_path, optional depth_path / normal_path, transform_matrix (OpenGL
                        camera-to-world, as nerfstudio)
      images/*.png      RGB
      masks/*.png       instance masks: pixel = instance id (8- or 16-bit), 0 = background
      depth/*.npy       optional float [H, W] z-depth along the camera axis (any scale: the loss is
                        scale-and-shift invariant), 0 = unknown
      normals/*.npy     optional float [H, W, 3] unit normals in camera space, OpenGL axes (x right,
                        y up, z towards the viewer), 0 = unknown
      prompts.json      {"<instance id>": "text of that object", ...}

``transforms.json`` may also give ``scene_aabb`` ``[xmin, ymin, zmin, xmax, ymax, zmax]``, the box the
scene lies in (otherwise a pipeline finds it from the depth maps or the cameras).

**DP-Recon's layout** (https://github.com/DP-Recon/DP-Recon, ``code/datasets/scene_dataset.py``; the
preprocessed Replica / ScanNet++ scans of MonoSDF / ObjectSDF++)::

    scanN/
      cameras.npz       world_mat_i (K [R|t], OpenCV) and scale_mat_i (normalised -> world) per view:
                        P = world_mat_i @ scale_mat_i, decomposed into K and the camera-to-world pose
      *_rgb.png         RGB, sorted by name
      *_depth.npy       [H, W] monocular depth (relative)
      *_normal.npy      [3, H, W] monocular normals in [0, 1] (``n * 2 - 1``), OpenCV camera axes
      instance_mask/*.png   pixel = instance id, 255 = background
      instance_id.json  {"name": id, ...}: the instances (labels [0] + ids, in this order)
      {data}_scan{id}_prompt_geometry.json / _prompt_texture.json   {"<label index>": "text"}

DP-Recon's scenes are z-up; they are turned to sds3d's +Y up on loading (``up_axis="z"``), so a scene
written by :func:`write_instance_scene` in either layout loads to the same cameras.

Bad input raises one :class:`~recon.errors.UserError` naming the file and the fix: fewer than 3
views, a mask whose size differs from its image, a prompt for an id no mask has, an instance that no
view sees. Nothing is written while loading; :func:`write_instance_scene` writes a whole folder or
nothing (a temporary folder renamed into place).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from recon.cameras import Cameras
from recon.data.procedural import camera_rays
from recon.errors import UserError

Layout = Literal["documented", "dprecon"]

MIN_VIEWS = 3
"""Fewest posed views a scene may have."""
MIN_INSTANCE_PIXELS = 4
"""An instance with fewer mask pixels than this over all views counts as seen by no view."""

_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
_Z_UP_TO_Y_UP = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])
"""(x, y, z) z-up -> (x, z, -y) y-up: a -90 degree turn about x."""


@dataclass
class InstanceScene:
    """Posed RGB views with instance masks, optional monocular cues and per-object prompts."""

    images: Tensor  # [N, H, W, 3] in [0, 1]
    cameras: Cameras  # N cameras (OpenGL camera-to-world), one image size
    masks: Tensor  # [N, H, W] int64: 0 background, else the instance id
    names: list[str]
    prompts: dict[int, str] = field(default_factory=dict)
    """Instance id -> text of that object (DP-Recon's geometry prompt)."""
    depths: Tensor | None = None  # [N, H, W] z-depth, 0 = unknown
    normals: Tensor | None = None  # [N, H, W, 3] camera-space unit normals (OpenGL axes), 0 = unknown
    texture_prompts: dict[int, str] = field(default_factory=dict)
    """Instance id -> text for the colour stage where the layout gives one (DP-Recon's texture prompts)."""
    aabb: tuple[float, float, float, float, float, float] | None = None
    """The box the scene lies in, when the layout says (DP-Recon's scans: the unit cube)."""

    def __len__(self) -> int:
        return len(self.names)

    @property
    def instance_ids(self) -> list[int]:
        """The instance ids the masks hold, sorted (object ``k`` of a pipeline is ``instance_ids[k - 1]``)."""
        ids = torch.unique(self.masks)
        return [int(i) for i in ids.tolist() if i != 0]

    def labels(self) -> Tensor:
        """Masks remapped to ``0..K`` (0 background, ``k`` the k-th instance id): ``[N, H, W]`` int64."""
        lut = torch.zeros(int(self.masks.max()) + 1, dtype=torch.long)
        for k, i in enumerate(self.instance_ids, start=1):
            lut[i] = k
        return lut[self.masks]

    def subset(self, index: list[int]) -> InstanceScene:
        """The views ``index`` (prompts kept)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(
            self,
            images=self.images[index],
            cameras=self.cameras[index],
            masks=self.masks[index],
            names=[self.names[i] for i in index],
            depths=pick(self.depths),
            normals=pick(self.normals),
        )


# ---------------------------------------------------------------------------------------- validation
def check_instance_scene(scene: InstanceScene, where: str | Path = "the scene") -> None:
    """Raises one :class:`UserError` for a scene DP-Recon cannot run on.

    Checks: at least :data:`MIN_VIEWS` views, masks the size of the images, every prompt's id in some
    mask, every instance seen (at least :data:`MIN_INSTANCE_PIXELS` mask pixels over the views), at
    least one instance.
    """
    n = len(scene)
    if n < MIN_VIEWS:
        raise UserError(
            f"{where} has {n} view{'s' if n != 1 else ''}; DP-Recon needs at least {MIN_VIEWS} posed views "
            "(10 in the paper): add views"
        )
    h, w = scene.images.shape[1:3]
    if tuple(scene.masks.shape[1:3]) != (h, w):
        raise UserError(
            f"{where}: masks are {scene.masks.shape[2]}x{scene.masks.shape[1]} but the images are {w}x{h}; "
            "write one mask per image at the image's size"
        )
    counts = torch.bincount(scene.masks.reshape(-1), minlength=1)
    present = {i for i in range(1, len(counts)) if counts[i] > 0}
    for i in sorted(scene.prompts):
        if i not in present:
            shown = ", ".join(map(str, sorted(present))) or "none"
            raise UserError(
                f"{where}: prompts.json names instance {i}, which no mask has (ids in the masks: {shown}); "
                "fix the id or remove that prompt"
            )
    for i in sorted(present):
        if counts[i] < MIN_INSTANCE_PIXELS:
            raise UserError(
                f"{where}: instance {i} is seen by no view ({int(counts[i])} mask pixel(s) in all {n} "
                "views); "
                "remove it from the masks or add views that see it"
            )
    if not present:
        raise UserError(f"{where}: the masks hold no instance (every pixel is 0, the background)")


def _check_instance_list(ids: list[int], scene: InstanceScene, where: Path) -> None:
    """Every instance a layout lists must be in some view's mask."""
    present = set(scene.instance_ids)
    for i in ids:
        if i not in present:
            raise UserError(
                f"{where}: instance {i} is seen by no view (no mask holds it); remove it from "
                "instance_id.json or add views that see it"
            )


# ---------------------------------------------------------------------------------------- reading
def scene_layout(path: str | Path) -> Layout:
    """``documented`` (a transforms.json) or ``dprecon`` (a cameras.npz) for a scene folder.

    Raises:
        UserError: the path is missing, not a folder, or holds neither file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"scene folder {path} does not exist; pass a folder with transforms.json or cameras.npz"
        )
    if not path.is_dir():
        raise UserError(f"{path} is not a folder; pass the scene folder (transforms.json or cameras.npz)")
    if (path / "transforms.json").is_file():
        return "documented"
    if (path / "cameras.npz").is_file():
        return "dprecon"
    raise UserError(
        f"{path} holds neither transforms.json (sds3d's layout) nor cameras.npz (DP-Recon's); "
        "see README 'Scenes from a few photos' for the layouts, or make one with `sds3d scene synth`"
    )


def load_instance_scene(
    path: str | Path,
    resolution: int = 0,
    up_axis: Literal["auto", "y", "z"] = "auto",
    check: bool = True,
) -> InstanceScene:
    """Reads a scene folder in either layout and checks it (:func:`check_instance_scene`).

    Args:
        path: The scene folder.
        resolution: Longer image side after loading (0: the input's); masks, depth and normals are
            resized with nearest neighbours, the cameras scaled to match.
        up_axis: The scene's up axis: ``auto`` (documented: +Y, DP-Recon: +Z), or ``y`` / ``z``.
        check: Refuse scenes DP-Recon cannot train on (:func:`check_instance_scene`); off for
            held-out views (``eval/``), which may be fewer and see fewer objects.

    Returns:
        The scene, +Y up.
    """
    path = Path(path)
    layout = scene_layout(path)
    if layout == "documented":
        scene = _load_documented(path, check)
        up = "y" if up_axis == "auto" else up_axis
    else:
        scene = _load_dprecon(path, check)
        up = "z" if up_axis == "auto" else up_axis
    if up == "z":
        c2w = torch.from_numpy(_Z_UP_TO_Y_UP).float() @ scene.cameras.camera_to_worlds
        scene = replace(scene, cameras=replace(scene.cameras, camera_to_worlds=c2w))
    if resolution > 0 and max(scene.cameras.width, scene.cameras.height) > resolution:
        scene = resize_scene(scene, resolution / max(scene.cameras.width, scene.cameras.height))
    return scene


def resize_scene(scene: InstanceScene, factor: float) -> InstanceScene:
    """The scene at ``factor`` times its resolution (images box-filtered, masks and cues nearest)."""
    cams = scene.cameras.scaled(factor)
    size = (cams.width, cams.height)

    def box(x: Tensor) -> Tensor:  # [N, H, W, C]
        return torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=size[::-1], mode="area").permute(
            0, 2, 3, 1
        )

    def nearest(x: Tensor) -> Tensor:  # [N, H, W, C]
        out = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2).float(), size=size[::-1], mode="nearest")
        return out.permute(0, 2, 3, 1).to(x.dtype)

    return replace(
        scene,
        images=box(scene.images),
        cameras=cams,
        masks=nearest(scene.masks[..., None])[..., 0],
        depths=None if scene.depths is None else nearest(scene.depths[..., None])[..., 0],
        normals=None
        if scene.normals is None
        else torch.nn.functional.normalize(nearest(scene.normals), dim=-1),
    )


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read image {path} ({err}); replace or remove the file") from err


def _read_mask(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"mask {path} is missing; write one instance mask per image")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read mask {path} ({err}); write it as an 8- or 16-bit PNG") from err
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise UserError(
            f"mask {path} is not a one-channel integer image; write instance ids as an 8/16-bit PNG"
        )
    return arr.astype(np.int64)


def _read_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; write it or drop its path from the scene")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {what} {path} ({err}); write it with numpy.save") from err
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise UserError(f"{what} {path} must hold finite numbers; fix or drop it")
    return arr.astype(np.float32)


def _check_size(arr: np.ndarray, size: tuple[int, int], path: Path, image: Path, what: str) -> None:
    h, w = size
    if arr.shape[0] != h or arr.shape[1] != w:
        raise UserError(
            f"{what} {path} is {arr.shape[1]}x{arr.shape[0]} but its image {image.name} is {w}x{h}; "
            f"write the {what} at the image's size"
        )


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path} as JSON ({err}); fix the file") from err


def _prompt_table(data: object, path: Path) -> dict[int, str]:
    if not isinstance(data, dict):
        raise UserError(f'{path} must map instance ids to texts: {{"1": "a red chair"}}')
    out: dict[int, str] = {}
    for key, text in data.items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            raise UserError(
                f'{path}: key {key!r} is not an instance id; use the mask values ("1", "2", ...)'
            ) from None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}: the prompt of instance {i} is empty; describe the object")
        if i <= 0:
            raise UserError(f"{path}: instance id {i} is not positive (0 is the background)")
        out[i] = text.strip()
    return out


def _load_documented(folder: Path, check: bool = True) -> InstanceScene:
    path = folder / "transforms.json"
    meta = _read_json(path)
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise UserError(f"{path} lists no frames; see README 'Scenes from a few photos' for the layout")
    images, masks, depths, normals, c2ws, intr, names = [], [], [], [], [], [], []
    for n, frame in enumerate(frames):
        try:
            image_path = folder / frame["file_path"]
            mask_path = folder / frame["mask_path"]
            c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"{path}: frame {n} lacks {err}; every frame needs file_path, mask_path and transform_matrix"
            ) from None
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise UserError(f"{path}: frame {n}'s transform_matrix is not a finite 4x4 matrix")
        if not image_path.is_file():
            raise UserError(f"{path}: image {image_path} is missing; fix file_path or restore the image")
        rgb = _read_rgb(image_path)
        h, w = rgb.shape[:2]
        mask = _read_mask(mask_path)
        _check_size(mask, (h, w), mask_path, image_path, "mask")

        def get(key: str, default: object, frame: dict = frame) -> object:
            return frame.get(key, meta.get(key, default))

        if get("fl_x", None) is None:
            raise UserError(f"{path}: frame {n} has no focal length; give fl_x (and fl_y, cx, cy) in pixels")
        try:
            fx = float(get("fl_x", None))
            fy, cx, cy = float(get("fl_y", fx)), float(get("cx", w / 2)), float(get("cy", h / 2))
            fw, fh = int(get("w", w)), int(get("h", h))
        except (TypeError, ValueError) as err:
            raise UserError(f"{path}: frame {n} has unreadable intrinsics ({err})") from None
        if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
            raise UserError(
                f"{path}: frame {n} has a bad focal length or principal point; give positive fl_x, fl_y"
            )
        if (fw, fh) != (w, h):
            raise UserError(f"{path}: frame {n} says {fw}x{fh} but {image_path.name} is {w}x{h}; fix w/h")
        if "depth_path" in frame:
            d = _read_npy(folder / frame["depth_path"], "depth map")
            _check_size(d, (h, w), folder / frame["depth_path"], image_path, "depth map")
            depths.append(d.reshape(h, w))
        if "normal_path" in frame:
            nm = _read_npy(folder / frame["normal_path"], "normal map")
            if nm.shape != (h, w, 3):
                raise UserError(
                    f"normal map {folder / frame['normal_path']} must be [H, W, 3] = [{h}, {w}, 3]"
                )
            normals.append(nm)
        images.append(rgb)
        masks.append(mask)
        c2ws.append(c2w)
        intr.append((fx, fy, cx, cy, w, h))
        names.append(image_path.name)
    sizes = {(w, h) for *_, w, h in intr}
    if len(sizes) != 1:
        raise UserError(f"{path} mixes image sizes {sorted(sizes)}; resize the views to one size")
    for what, maps in (("depth_path", depths), ("normal_path", normals)):
        if maps and len(maps) != len(frames):
            raise UserError(
                f"{path}: {len(maps)} of {len(frames)} frames have a {what}; give it for all or none"
            )
    k = torch.tensor([i[:4] for i in intr], dtype=torch.float32)
    ((w, h),) = sizes
    cams = Cameras(torch.from_numpy(np.stack(c2ws)).float(), k[:, 0], k[:, 1], k[:, 2], k[:, 3], w, h)
    prompts = {}
    if (folder / "prompts.json").is_file():
        prompts = _prompt_table(_read_json(folder / "prompts.json"), folder / "prompts.json")
    aabb = meta.get("scene_aabb")
    if aabb is not None:
        try:
            aabb = tuple(float(v) for v in aabb)
        except (TypeError, ValueError):
            aabb = ()
        if (
            len(aabb) != 6
            or not all(math.isfinite(v) for v in aabb)
            or any(aabb[i] >= aabb[i + 3] for i in range(3))
        ):
            raise UserError(f"{path}: scene_aabb must be [xmin, ymin, zmin, xmax, ymax, zmax] with min < max")
    scene = InstanceScene(
        images=torch.from_numpy(np.stack(images)),
        cameras=cams,
        masks=torch.from_numpy(np.stack(masks)),
        names=names,
        prompts=prompts,
        depths=torch.from_numpy(np.stack(depths)) if depths else None,
        normals=torch.from_numpy(np.stack(normals)) if normals else None,
        aabb=aabb,
    )
    if check:
        check_instance_scene(scene, folder)
    return scene


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``P = K [R | t]`` ``[3, 4]`` -> ``(K [3, 3], OpenCV camera-to-world [4, 4])`` (IDR's load_K_Rt_from_P).

    RQ decomposition of ``P[:, :3]`` with positive focal lengths (numpy only; the released code calls
    ``cv2.decomposeProjectionMatrix``).
    """
    M = P[:, :3]
    # RQ via QR of the flipped transpose.
    flip = np.flipud(np.eye(3))
    q, r = np.linalg.qr((flip @ M).T)
    K = flip @ r.T @ flip
    R = flip @ q.T
    signs = np.diag(np.sign(np.diag(K)))
    K, R = K @ signs, signs @ R
    if np.linalg.det(R) < 0:  # P was given up to a negative scale
        R, K = -R, -K
    t = np.linalg.solve(K, P[:, 3])
    K = K / K[2, 2]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return K, c2w


def _sorted_glob(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern))


def _load_dprecon(folder: Path, check: bool = True) -> InstanceScene:
    rgb_paths = _sorted_glob(folder, "*_rgb.png")
    if not rgb_paths:
        raise UserError(f"{folder} holds cameras.npz but no *_rgb.png images (DP-Recon's layout)")
    mask_paths = _sorted_glob(folder / "instance_mask", "*.png")
    if len(mask_paths) != len(rgb_paths):
        raise UserError(
            f"{folder}: {len(rgb_paths)} *_rgb.png images but {len(mask_paths)} instance_mask/*.png masks; "
            "write one instance mask per image"
        )
    depth_paths = _sorted_glob(folder, "*_depth.npy")
    normal_paths = _sorted_glob(folder, "*_normal.npy")
    for what, paths in (("*_depth.npy", depth_paths), ("*_normal.npy", normal_paths)):
        if paths and len(paths) != len(rgb_paths):
            raise UserError(
                f"{folder}: {len(paths)} {what} files for {len(rgb_paths)} images; give all or none"
            )
    try:
        cams_npz = dict(np.load(folder / "cameras.npz"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {folder / 'cameras.npz'} ({err}); re-export it") from err
    ids: list[int] = []
    if (folder / "instance_id.json").is_file():
        table = _read_json(folder / "instance_id.json")
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise UserError(f"{folder / 'instance_id.json'} must map names to integer instance ids")
        ids = [int(v) for v in table.values() if int(v) not in (0, 255)]
    images, masks, depths, normals, c2ws, intr = [], [], [], [], [], []
    for n, image_path in enumerate(rgb_paths):
        try:
            P = cams_npz[f"world_mat_{n}"] @ cams_npz.get(f"scale_mat_{n}", np.eye(4))
        except KeyError:
            raise UserError(
                f"{folder / 'cameras.npz'} has no world_mat_{n} for image {image_path.name}"
            ) from None
        K, c2w_cv = decompose_projection(np.asarray(P, dtype=np.float64)[:3, :4])
        rgb = _read_rgb(image_path)
        h, w = rgb.shape[:2]
        raw = _read_mask(mask_paths[n])
        _check_size(raw, (h, w), mask_paths[n], image_path, "mask")
        mask = np.where(raw == 255, 0, raw)
        if ids:  # DP-Recon maps ids it does not list to the background
            mask = np.where(np.isin(mask, ids), mask, 0)
        if depth_paths:
            d = _read_npy(depth_paths[n], "depth map")
            d = d.reshape(d.shape[-2:]) if d.ndim == 3 and d.shape[0] == 1 else d
            _check_size(d, (h, w), depth_paths[n], image_path, "depth map")
            depths.append(d)
        if normal_paths:
            nm = _read_npy(normal_paths[n], "normal map")
            if nm.shape != (3, h, w):
                raise UserError(f"normal map {normal_paths[n]} must be [3, H, W] = [3, {h}, {w}] in [0, 1]")
            nm = nm.transpose(1, 2, 0) * 2.0 - 1.0  # OpenCV camera axes -> OpenGL: flip y and z
            normals.append(nm * np.array([1.0, -1.0, -1.0], dtype=np.float32))
        images.append(rgb)
        masks.append(mask)
        c2ws.append(c2w_cv @ _GL_TO_CV)
        intr.append((K[0, 0], K[1, 1], K[0, 2], K[1, 2], w, h))
    sizes = {(w, h) for *_, w, h in intr}
    if len(sizes) != 1:
        raise UserError(f"{folder} mixes image sizes {sorted(sizes)}; resize the views to one size")
    ((w, h),) = sizes
    k = torch.tensor([i[:4] for i in intr], dtype=torch.float32)
    cams = Cameras(torch.from_numpy(np.stack(c2ws)).float(), k[:, 0], k[:, 1], k[:, 2], k[:, 3], w, h)
    label_ids = [0] + (ids or sorted({int(i) for m in masks for i in np.unique(m) if i != 0}))
    prompts, texture = {}, {}
    for kind, table in (("geometry", prompts), ("texture", texture)):
        found = sorted(folder.glob(f"*_prompt_{kind}.json"))
        if found:  # keys are label indices: 0 background, k the k-th instance of instance_id.json
            for key, text in _prompt_table_labels(_read_json(found[0]), found[0]).items():
                if key >= len(label_ids):
                    raise UserError(
                        f"{found[0]}: label {key} has no instance (instance_id.json lists "
                        f"{len(label_ids) - 1}); "
                        "fix the key or remove that prompt"
                    )
                if key > 0:
                    table[label_ids[key]] = text
    scene = InstanceScene(
        images=torch.from_numpy(np.stack(images)),
        cameras=cams,
        masks=torch.from_numpy(np.stack(masks)),
        names=[p.name for p in rgb_paths],
        prompts=prompts,
        depths=torch.from_numpy(np.stack(depths)) if depths else None,
        normals=torch.from_numpy(np.stack(normals)) if normals else None,
        texture_prompts=texture,
        aabb=(-1.0, -1.0, -1.0, 1.0, 1.0, 1.0),  # scale_mat normalises the scan into the unit sphere
    )
    if check:
        check_instance_scene(scene, folder)
        _check_instance_list(ids, scene, folder / "instance_id.json")
    return scene


def _prompt_table_labels(data: object, path: Path) -> dict[int, str]:
    if not isinstance(data, dict):
        raise UserError(f'{path} must map label indices to texts: {{"1": "a red chair"}}')
    out = {}
    for key, text in data.items():
        try:
            out[int(key)] = str(text).strip()
        except (TypeError, ValueError):
            raise UserError(f"{path}: key {key!r} is not a label index") from None
    return out


# ---------------------------------------------------------------------------------------- writing
@contextmanager
def atomic_scene_folder(out: str | Path) -> Iterator[Path]:
    """Yields a temporary folder beside ``out``; on success it is renamed to ``out`` (which must not
    exist, or be an empty folder). On failure nothing is left behind."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; pass a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _rgb8(x: Tensor) -> np.ndarray:
    return (x.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def _mask_png(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) if mask.max() < 256 else mask.astype(np.uint16)


def write_documented(folder: Path, scene: InstanceScene) -> None:
    """Writes ``scene`` into ``folder`` in the documented layout (no atomicity: see
    :func:`write_instance_scene`)."""
    cams = scene.cameras
    frames = []
    for i, name in enumerate(scene.names):
        stem = Path(name).stem
        frame = {"file_path": f"images/{stem}.png", "mask_path": f"masks/{stem}.png"}
        _save_png(folder / frame["file_path"], _rgb8(scene.images[i]))
        _save_png(folder / frame["mask_path"], _mask_png(scene.masks[i].numpy()))
        if scene.depths is not None:
            frame["depth_path"] = f"depth/{stem}.npy"
            (folder / "depth").mkdir(exist_ok=True)
            np.save(folder / frame["depth_path"], scene.depths[i].numpy().astype(np.float32))
        if scene.normals is not None:
            frame["normal_path"] = f"normals/{stem}.npy"
            (folder / "normals").mkdir(exist_ok=True)
            np.save(folder / frame["normal_path"], scene.normals[i].numpy().astype(np.float32))
        frame.update(
            fl_x=float(cams.fx[i]), fl_y=float(cams.fy[i]), cx=float(cams.cx[i]), cy=float(cams.cy[i]),
            transform_matrix=cams.camera_to_worlds[i].double().tolist(),
        )  # fmt: skip
        frames.append(frame)
    meta = {"camera_model": "PINHOLE", "w": cams.width, "h": cams.height, "frames": frames}
    if scene.aabb is not None:
        meta["scene_aabb"] = list(scene.aabb)
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
    prompts = {str(k): v for k, v in sorted(scene.prompts.items())}
    (folder / "prompts.json").write_text(json.dumps(prompts, indent=1))


def write_dprecon(folder: Path, scene: InstanceScene, data: str = "sds3d", scan: int = 1) -> None:
    """Writes ``scene`` into ``folder`` in DP-Recon's layout (z-up, identity scale matrices)."""
    ids = scene.instance_ids
    if 255 in ids or max(ids, default=0) > 254:
        raise UserError(
            "DP-Recon's layout stores instance ids below 255 in 8-bit masks; renumber the instances"
        )
    cams = scene.cameras
    y_up_to_z_up = np.linalg.inv(_Z_UP_TO_Y_UP)
    mats = {}
    for i in range(len(scene)):
        stem = f"{i:06d}"
        _save_png(folder / f"{stem}_rgb.png", _rgb8(scene.images[i]))
        mask = scene.masks[i].numpy()
        _save_png(folder / "instance_mask" / f"{stem}.png", np.where(mask == 0, 255, mask).astype(np.uint8))
        if scene.depths is not None:
            np.save(folder / f"{stem}_depth.npy", scene.depths[i].numpy().astype(np.float32))
        if scene.normals is not None:
            cv = scene.normals[i].numpy() * np.array([1.0, -1.0, -1.0], dtype=np.float32)
            np.save(folder / f"{stem}_normal.npy", ((cv + 1.0) / 2.0).transpose(2, 0, 1).astype(np.float32))
        c2w_cv = y_up_to_z_up @ cams.camera_to_worlds[i].double().numpy() @ _GL_TO_CV
        K = np.eye(4)
        K[0, 0], K[1, 1], K[0, 2], K[1, 2] = (float(v[i]) for v in (cams.fx, cams.fy, cams.cx, cams.cy))
        mats[f"world_mat_{i}"] = K @ np.linalg.inv(c2w_cv)
        mats[f"scale_mat_{i}"] = np.eye(4)
    np.savez(folder / "cameras.npz", **mats)
    (folder / "instance_id.json").write_text(json.dumps({f"object_{i}": i for i in ids}, indent=1))
    for kind, table in (("geometry", scene.prompts), ("texture", scene.texture_prompts or scene.prompts)):
        labels = {str(ids.index(i) + 1): text for i, text in sorted(table.items()) if i in ids}
        (folder / f"{data}_scan{scan}_prompt_{kind}.json").write_text(json.dumps(labels, indent=1))


def write_instance_scene(out: str | Path, scene: InstanceScene, layout: Layout = "documented") -> Path:
    """Writes a whole scene folder atomically (the folder appears complete, or not at all)."""
    check_instance_scene(scene, "the scene to write")
    with atomic_scene_folder(out) as tmp:
        if layout == "documented":
            write_documented(tmp, scene)
        elif layout == "dprecon":
            write_dprecon(tmp, scene)
        else:
            raise ValueError(f"layout must be 'documented' or 'dprecon', got {layout!r}")
    return Path(out)


# ---------------------------------------------------------------------------------------- rays
@dataclass
class SceneFrame:
    """The map from the input's coordinates to the normalised box: ``x_n = (x - center) * scale``."""

    center: tuple[float, float, float]
    scale: float

    def to_box(self, points: Tensor) -> Tensor:
        return (points - points.new_tensor(self.center)) * self.scale

    def to_scene(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points) / self.scale + np.asarray(self.center)

    def cameras(self, cams: Cameras) -> Cameras:
        c2w = cams.camera_to_worlds.clone()
        c2w[:, :3, 3] = self.to_box(c2w[:, :3, 3])
        return replace(cams, camera_to_worlds=c2w)


def scene_frame(scene: InstanceScene, radius: float) -> SceneFrame:
    """Fits the scene into ``[-radius, radius]^3``: its ``aabb``, else the depth maps' points, else the
    cameras and the point they look at."""
    if scene.aabb is not None:
        lo, hi = np.array(scene.aabb[:3]), np.array(scene.aabb[3:])
    elif scene.depths is not None:
        o, d, z_per_t = camera_rays(scene.cameras)
        valid = scene.depths > 0
        pts = (o + (scene.depths / z_per_t)[..., None] * d)[valid]
        pts = torch.cat([pts, scene.cameras.camera_centers])
        lo, hi = (torch.quantile(pts[:200_000], q, dim=0).numpy() for q in (0.01, 0.99))
    else:
        centers = scene.cameras.camera_centers.numpy()
        spread = np.linalg.norm(centers - centers.mean(0), axis=-1).max()
        lo, hi = centers.min(0) - 1.5 * spread, centers.max(0) + 1.5 * spread
    center = (lo + hi) / 2
    half = float(np.max(hi - lo)) / 2
    return SceneFrame(tuple(float(c) for c in center), radius / max(half, 1e-9))


@dataclass
class RayTable:
    """Every pixel of the training views as a ray with its targets (in the normalised box)."""

    origins: Tensor  # [M, 3]
    directions: Tensor  # [M, 3]
    z_per_t: Tensor  # [M] z-depth per unit ray distance
    camera: Tensor  # [M] view index
    rgb: Tensor  # [M, 3]
    labels: Tensor  # [M] 0 background, k object k
    depth: Tensor | None  # [M] z-depth (scaled with the scene), 0 unknown
    normals: Tensor | None  # [M, 3] camera-space (OpenGL) unit normals, 0 unknown
    rotations: Tensor  # [V, 3, 3] camera -> world

    def __len__(self) -> int:
        return self.origins.shape[0]


def ray_table(scene: InstanceScene, frame: SceneFrame) -> RayTable:
    cams = frame.cameras(scene.cameras)
    o, d, z = camera_rays(cams)
    n = len(cams)
    flat = lambda x: x.reshape(-1, *x.shape[3:])  # noqa: E731
    return RayTable(
        origins=flat(o), directions=flat(d), z_per_t=flat(z),
        camera=torch.arange(n).repeat_interleave(cams.height * cams.width),
        rgb=flat(scene.images).float(), labels=flat(scene.labels()),
        depth=None if scene.depths is None else flat(scene.depths).float() * frame.scale,
        normals=None if scene.normals is None else flat(scene.normals).float(),
        rotations=cams.camera_to_worlds[:, :3, :3].float(),
    )  # fmt: skip


def sample_rays(rays: RayTable, n: int, object_fraction: float, generator: torch.Generator) -> Tensor:
    """``n`` ray indices: ``object_fraction`` of them from instance pixels, the rest from all pixels."""
    n_obj = round(n * object_fraction)
    obj = (rays.labels > 0).nonzero().squeeze(-1)
    picks = [torch.randint(len(rays), (n - n_obj,), generator=generator)]
    if n_obj and len(obj):
        picks.append(obj[torch.randint(len(obj), (n_obj,), generator=generator)])
    return torch.cat(picks)


def slug(text: str, max_len: int = 48) -> str:
    """A file-name slug of a prompt: ``"a red chair"`` -> ``a-red-chair``."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "object"


__all__ = [
    "InstanceScene",
    "RayTable",
    "SceneFrame",
    "MIN_VIEWS",
    "atomic_scene_folder",
    "check_instance_scene",
    "decompose_projection",
    "load_instance_scene",
    "ray_table",
    "resize_scene",
    "sample_rays",
    "scene_frame",
    "scene_layout",
    "slug",
    "write_documented",
    "write_dprecon",
    "write_instance_scene",
]
