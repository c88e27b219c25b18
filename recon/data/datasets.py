"""Posed image sets: loaders for video, image folders, ``transforms.json`` and COLMAP models.

Every loader returns a :class:`SceneData` — images composited on a background, pinhole
:class:`~recon.cameras.Cameras` (OpenGL camera-to-world) and, from SfM, a sparse point cloud — and
:func:`normalize_scene` brings any of them to sds3d's frame: **+Y up** (the mean camera up vector),
centered on the point the cameras look at, scaled so that the median camera distance is 3 (the
distance the project's orbits and exporters assume). :func:`write_transforms` writes the result in
nerfstudio's ``transforms.json`` layout (per-frame OpenGL ``transform_matrix``).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from recon.atomic import atomic_write, atomic_write_text
from recon.cameras import Cameras
from recon.data.poses import SfMConfig, import_pycolmap, run_sfm
from recon.data.video import VIDEO_SUFFIXES, KeyframeConfig, check_camera_moves, video_keyframes
from recon.errors import FRACTION, IMAGE_SIDE, UserError, check_fields, checked

log = logging.getLogger("sds3d.datasets")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class SceneData:
    """A posed image set."""

    images: Tensor  # [N, H, W, 3] in [0, 1], composited on the background
    cameras: Cameras  # N cameras, one image size
    names: list[str]
    points: Tensor | None = None  # [M, 3] sparse SfM points
    point_colors: Tensor | None = None  # [M, 3] in [0, 1]
    alphas: Tensor | None = None  # [N, H, W, 1] when the images carried alpha

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: list[int]) -> SceneData:
        return replace(
            self,
            images=self.images[index],
            cameras=self.cameras[index],
            names=[self.names[i] for i in index],
            alphas=None if self.alphas is None else self.alphas[index],
        )


@dataclass
class SceneConfig:
    """How an input becomes a :class:`SceneData`."""

    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    """Video frame sampling and keyframe selection."""
    sfm: SfMConfig = field(default_factory=SfMConfig)
    """Structure-from-motion settings (videos and unposed image folders)."""
    resolution: int = checked(0, IMAGE_SIDE)
    """Longer image side in pixels after loading (0: keep the input's)."""
    background: float = checked(1.0, FRACTION)
    """Grey level images with alpha are composited on."""
    normalize: bool = True
    """Recenter, rescale and rotate the scene to sds3d's frame (+Y up, cameras at distance ~3)."""


# ---------------------------------------------------------------------------------------- images
def _read_image(path: Path, background: float) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types (OSError, SyntaxError, ...)
        raise UserError(f"cannot read image {path} ({err}); replace or remove the file") from err
    if not has_alpha:
        return arr, None
    alpha = arr[..., 3:]
    return arr[..., :3] * alpha + background * (1 - alpha), alpha


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if arr.shape[1] == size[0] and arr.shape[0] == size[1]:
        return arr
    chans = [
        np.asarray(Image.fromarray(arr[..., c]).resize(size, Image.BOX), dtype=np.float32)
        for c in range(arr.shape[-1])
    ]
    return np.stack(chans, -1)


def _load_images(
    paths: list[Path], cameras: Cameras, resolution: int, background: float
) -> tuple[Tensor, Tensor | None, Cameras]:
    """Reads images (resized to ``resolution`` on the longer side) and scales the cameras to match."""
    if resolution > 0 and max(cameras.width, cameras.height) > resolution:
        cameras = cameras.scaled(resolution / max(cameras.width, cameras.height))
    size = (cameras.width, cameras.height)
    rgbs, alphas = [], []
    for p in paths:
        rgb, alpha = _read_image(p, background)
        rgbs.append(_resize(rgb, size))
        alphas.append(None if alpha is None else _resize(alpha, size))
    images = torch.from_numpy(np.stack(rgbs)).clamp(0, 1)
    alpha_t = torch.from_numpy(np.stack(alphas)).clamp(0, 1) if all(a is not None for a in alphas) else None
    return images, alpha_t, cameras


# ---------------------------------------------------------------------------------- transforms.json
def load_transforms(path: str | Path, resolution: int = 0, background: float = 1.0) -> SceneData:
    """Loads a nerfstudio / instant-ngp / Blender ``transforms.json`` (OpenGL camera-to-world).

    Intrinsics come from ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` (top level or per frame) or from
    ``camera_angle_x`` (Blender, square pixels, centered principal point). Distortion is ignored.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"cannot read {path} as a transforms.json ({err}); check the file") from err
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list):
        raise UserError(f"{path} is not a transforms.json: it needs a 'frames' list; check the file")
    if not frames:
        raise UserError(f"{path} lists no frames")
    paths, c2ws, intrinsics = [], [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise UserError(f"{path}: frame {i} needs a 'file_path' string; check the file")
        p = path.parent / frame["file_path"]
        if not p.suffix:
            p = next((p.with_suffix(s) for s in (".png", ".jpg", ".jpeg") if p.with_suffix(s).is_file()), p)
        if not p.is_file():
            raise UserError(f"{path}: image {p} is missing; fix file_path or restore the image")
        try:
            c2w, intrinsic = _frame_camera(frame, meta, p)
        except (KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError) as err:
            raise UserError(
                f"{path}: frame {i} ({frame['file_path']}) has a bad camera ({type(err).__name__}: "
                f"{str(err)[:120]}); it needs a 4x4 transform_matrix and fl_x or camera_angle_x"
            ) from None
        paths.append(p)
        c2ws.append(c2w)
        intrinsics.append(intrinsic)
    sizes = {(w, h) for *_, w, h in intrinsics}
    if len(sizes) != 1:
        raise UserError(f"{path} mixes image sizes {sorted(sizes)}; resize the images to one size")
    (w, h), k = sizes.pop(), torch.tensor([i[:4] for i in intrinsics])
    cams = Cameras(torch.from_numpy(np.stack(c2ws)), k[:, 0], k[:, 1], k[:, 2], k[:, 3], w, h)
    images, alphas, cams = _load_images(paths, cams, resolution, background)
    return SceneData(images, cams, [p.name for p in paths], alphas=alphas)


def _frame_camera(frame: dict, meta: dict, image: Path) -> tuple[np.ndarray, tuple]:
    """``(camera-to-world [4, 4], (fx, fy, cx, cy, w, h))`` of one transforms.json frame.

    Raises:
        UserError: the image cannot be read.
        KeyError, TypeError, ValueError: a missing, wrongly typed or out-of-range entry (the caller names
            the frame).
    """
    try:
        with Image.open(image) as im:
            size = im.size
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types
        raise UserError(f"cannot read image {image} ({err}); replace or remove the file") from err
    w = int(frame.get("w", meta.get("w", 0)) or 0)
    h = int(frame.get("h", meta.get("h", 0)) or 0)
    if (w or h) and (w, h) != size:
        raise ValueError(f"w, h {w}x{h} differ from the image's {size[0]}x{size[1]}")
    w, h = size
    fx = frame.get("fl_x", meta.get("fl_x"))
    if fx is None:
        angle = frame.get("camera_angle_x", meta.get("camera_angle_x"))
        if angle is None:
            raise ValueError("neither fl_x nor camera_angle_x: add the focal length")
        if not 0 < float(angle) < math.pi:
            raise ValueError(f"camera_angle_x {angle} is not an angle in (0, pi)")
        fx = 0.5 * w / math.tan(0.5 * float(angle))
    fy = frame.get("fl_y", meta.get("fl_y", fx))
    cx = frame.get("cx", meta.get("cx", w / 2))
    cy = frame.get("cy", meta.get("cy", h / 2))
    intrinsic = (float(fx), float(fy), float(cx), float(cy), w, h)
    c2w = np.asarray(frame["transform_matrix"], dtype=np.float32)
    if c2w.shape == (3, 4):
        c2w = np.concatenate([c2w, np.array([[0, 0, 0, 1]], dtype=np.float32)])
    if c2w.shape != (4, 4):
        raise ValueError(f"transform_matrix has shape {c2w.shape}, not 4x4")
    if not (np.isfinite(c2w).all() and all(math.isfinite(v) for v in intrinsic[:4])):
        raise ValueError("non-finite camera values")
    if intrinsic[0] <= 0 or intrinsic[1] <= 0:
        raise ValueError(f"focal lengths {intrinsic[0]}, {intrinsic[1]} must be positive")
    return c2w, intrinsic


def write_transforms(path: str | Path, scene: SceneData, image_dir: str = "images") -> Path:
    """Writes the scene's images (PNG) and a nerfstudio ``transforms.json`` next to them."""
    path = Path(path)
    cams = scene.cameras
    frames = []
    for i, name in enumerate(scene.names):
        rel = f"{image_dir}/{Path(name).stem}.png"
        arr = (scene.images[i].numpy() * 255).round().astype(np.uint8)
        atomic_write(path.parent / rel, lambda tmp, a=arr: Image.fromarray(a).save(tmp, format="PNG"))
        frames.append({
            "file_path": rel, "fl_x": float(cams.fx[i]), "fl_y": float(cams.fy[i]), "cx": float(cams.cx[i]),
            "cy": float(cams.cy[i]), "transform_matrix": cams.camera_to_worlds[i].tolist(),
        })  # fmt: skip
    meta = {
        "camera_model": "PINHOLE", "w": cams.width, "h": cams.height,
        "camera_angle_x": 2 * math.atan(0.5 * cams.width / float(cams.fx[0])), "frames": frames,
    }  # fmt: skip
    return atomic_write_text(path, json.dumps(meta, indent=1))


# ----------------------------------------------------------------------------------------- COLMAP
def find_colmap_model(folder: Path) -> tuple[Path, Path] | None:
    """``(model_dir, image_dir)`` of a COLMAP folder (``sparse/0`` or ``sparse`` beside ``images``)."""
    for model in (folder / "sparse" / "0", folder / "sparse", folder):
        if (model / "cameras.bin").is_file() or (model / "cameras.txt").is_file():
            for images in (folder / "images", model.parent.parent / "images"):
                if images.is_dir():
                    return model, images
    return None


COLMAP_READ_MEMORY = 4 << 30
"""Address space the trial read of a COLMAP model may use (bytes)."""
_TRIAL_READ = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
import av, PIL.Image, pycolmap  # pycolmap last, as recon.data.poses.import_pycolmap
pycolmap.Reconstruction(sys.argv[1])
"""


def read_colmap_model(model_dir: Path) -> Any:
    """``pycolmap.Reconstruction`` of a model folder (text or binary), or a :class:`UserError`.

    pycolmap's binary readers allocate whatever a damaged count says (gigabytes) and can abort the
    process, so the model is first read in a child process with bounded memory and time (a few tenths
    of a second); only a model that read there is read here.

    Raises:
        UserError: naming the folder when the model is damaged.
    """
    fix = "re-run SfM (pass the images or video instead) or re-export the model from COLMAP"
    try:
        trial = subprocess.run(
            [sys.executable, "-c", _TRIAL_READ, str(model_dir), str(COLMAP_READ_MEMORY)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise UserError(f"reading the COLMAP model in {model_dir} did not finish; {fix}") from None
    if trial.returncode != 0:
        lines = [ln.strip() for ln in trial.stderr.splitlines() if ln.strip()]
        reason = lines[-1][:200] if lines else f"exit status {trial.returncode}"
        raise UserError(f"cannot read the COLMAP model in {model_dir} ({reason}); {fix}")
    pycolmap = import_pycolmap()
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except (ValueError, RuntimeError, OSError, IndexError, MemoryError) as err:
        raise UserError(f"cannot read the COLMAP model in {model_dir} ({str(err)[:200]}); {fix}") from None


def load_colmap(folder: str | Path, resolution: int = 0, background: float = 1.0) -> SceneData:
    """Loads a COLMAP folder: registered images, pinhole cameras and the sparse points.

    Models with lens distortion are undistorted first (COLMAP's undistorter, into a temp folder).

    Raises:
        UserError: not a COLMAP folder, a damaged model, no registered image, images of several sizes
            or a missing / unreadable image.
    """
    pycolmap = import_pycolmap()
    folder = Path(folder)
    found = find_colmap_model(folder)
    if found is None:
        raise UserError(f"{folder} is not a COLMAP folder; it needs sparse/0/cameras.bin and images/")
    model_dir, image_dir = found
    rec = read_colmap_model(model_dir)
    try:
        distorted = any(not cam.is_undistorted() for cam in rec.cameras.values())
    except (ValueError, RuntimeError) as err:
        raise UserError(f"{model_dir}: a camera of the COLMAP model is damaged ({err})") from None
    if distorted:
        with tempfile.TemporaryDirectory(prefix="sds3d-undistort-") as tmp:
            try:
                pycolmap.undistort_images(tmp, model_dir, image_dir)
            except (ValueError, RuntimeError, OSError) as err:
                raise UserError(
                    f"cannot undistort the COLMAP model in {model_dir} ({str(err)[:200]}); undistort it "
                    "with COLMAP's image_undistorter, or pass the images or video instead"
                ) from None
            return load_colmap(tmp, resolution, background)
    images = sorted((img for img in rec.images.values() if img.has_pose), key=lambda im: im.name)
    if not images:
        raise UserError(f"the COLMAP model in {model_dir} has no registered image; re-run SfM")
    sizes = {(im.camera.width, im.camera.height) for im in images}
    if len(sizes) != 1:
        raise UserError(
            f"{folder}: images of several sizes {sorted(sizes)}; undistort/resize them to one size"
        )
    w, h = sizes.pop()
    if not (1 <= w <= 65536 and 1 <= h <= 65536):
        raise UserError(f"{model_dir}: camera size {w}x{h} is not an image size; fix or re-export the model")
    viewmats, Ks = [], []
    for im in images:
        m = np.eye(4, dtype=np.float64)
        m[:3] = im.cam_from_world().matrix()
        viewmats.append(m)
        Ks.append(im.camera.calibration_matrix())
    if not (np.isfinite(viewmats).all() and np.isfinite(Ks).all()):
        raise UserError(f"{model_dir}: the COLMAP model holds non-finite poses or intrinsics; re-run SfM")
    cams = Cameras.from_viewmats(
        torch.tensor(np.stack(viewmats)).float(), torch.tensor(np.stack(Ks)).float(), w, h
    )
    data, alphas, cams = _load_images([image_dir / im.name for im in images], cams, resolution, background)
    pts = [(p.xyz, p.color) for p in rec.points3D.values()]
    points = torch.tensor(np.array([p for p, _ in pts]), dtype=torch.float32).reshape(-1, 3)
    colors = torch.tensor(np.array([c for _, c in pts]), dtype=torch.float32).reshape(-1, 3) / 255.0
    return SceneData(data, cams, [im.name for im in images], points, colors, alphas)


# ---------------------------------------------------------------------------- video / image folders
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_video(path: str | Path, config: SceneConfig, work_dir: Path) -> SceneData:
    """Video → keyframes → SfM poses (sequential matching, one camera) → :class:`SceneData`."""
    frames, keep = video_keyframes(path, config.keyframes)
    image_dir = work_dir / "frames"
    image_dir.mkdir(parents=True, exist_ok=True)
    for frame, index in zip(frames, keep):
        Image.fromarray(frame).save(image_dir / f"frame_{index:05d}.png")
    sfm = replace(config.sfm, matching="sequential" if config.sfm.matching == "auto" else config.sfm.matching)
    return load_colmap(run_sfm(image_dir, work_dir / "sfm", sfm), config.resolution, config.background)


def load_image_folder(folder: Path, config: SceneConfig, work_dir: Path) -> SceneData:
    """Unposed images (sorted by name) → SfM poses → :class:`SceneData`."""
    paths = _images_in(folder)
    if len(paths) < config.keyframes.min_keyframes:
        raise UserError(
            f"{folder} holds {len(paths)} images; reconstruction needs at least "
            f"{config.keyframes.min_keyframes} views from different places: add more photos"
        )
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:2]] + [
        np.asarray(Image.open(paths[-1]).convert("RGB"))
    ]
    if len({f.shape for f in frames}) == 1:
        check_camera_moves(np.stack(frames), config.keyframes.min_difference)
    return load_colmap(run_sfm(folder, work_dir / "sfm", config.sfm), config.resolution, config.background)


def input_kind(source: str | Path) -> Literal["transforms", "video", "colmap", "images"]:
    """What an input is, from its name and folder listing only (cheap: nothing is decoded).

    Raises:
        UserError: the path does not exist, or is a folder with no images, transforms.json or COLMAP model.
    """
    source = Path(source)
    if not source.exists():
        raise UserError(f"input {source} does not exist; pass a video, an image folder, a transforms.json "
                        "or a COLMAP folder")  # fmt: skip
    if source.is_file():
        return "transforms" if source.suffix.lower() == ".json" else "video"
    if (source / "transforms.json").is_file() or (source / "transforms_train.json").is_file():
        return "transforms"
    if find_colmap_model(source) is not None:
        return "colmap"
    if not _images_in(source):
        raise UserError(
            f"input {source} is a folder with no images ({', '.join(IMAGE_SUFFIXES)}), transforms.json or "
            "COLMAP model; pass a video, an image folder, a transforms.json or a COLMAP folder"
        )
    return "images"


def load_scene(source: str | Path, config: SceneConfig, work_dir: Path) -> SceneData:
    """Any supported input — a video, an image folder, a ``transforms.json`` or a COLMAP folder.

    Args:
        source: The input path.
        config: Loading settings.
        work_dir: Scratch folder for frames and SfM files (the caller removes it).

    Returns:
        The posed images, normalized when ``config.normalize``.
    """
    check_fields(config)
    source = Path(source)
    kind = input_kind(source)
    if kind == "transforms" and source.is_file():
        scene = load_transforms(source, config.resolution, config.background)
    elif kind == "video":
        if source.suffix.lower() not in VIDEO_SUFFIXES:
            log.info("%s: unknown suffix, trying to decode it as a video", source)
        scene = load_video(source, config, work_dir)
    elif kind == "transforms":
        name = "transforms.json" if (source / "transforms.json").is_file() else "transforms_train.json"
        scene = load_transforms(source / name, config.resolution, config.background)
    elif kind == "colmap":
        scene = load_colmap(source, config.resolution, config.background)
    else:
        scene = load_image_folder(source, config, work_dir)
    return normalize_scene(scene) if config.normalize else scene


# ---------------------------------------------------------------------------------- normalization
def normalize_scene(scene: SceneData, camera_distance: float = 3.0) -> SceneData:
    """+Y up, centered on the cameras' focus point, median camera distance ``camera_distance``.

    Raises:
        UserError: The cameras did not move (a static camera: no scale can be recovered).
    """
    c2w = scene.cameras.camera_to_worlds.double()
    up = torch.nn.functional.normalize(c2w[:, :3, 1].mean(0), dim=0)
    rot = _rotation_between(up, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    center = _focus_point(c2w)
    dist = (c2w[:, :3, 3] - center).norm(dim=-1).median()
    spread = (c2w[:, :3, 3] - c2w[:, :3, 3].mean(0)).norm(dim=-1).max()
    if dist < 1e-9 or spread < 1e-3 * dist:
        raise UserError(
            "the cameras barely move (a static or tripod shot); reconstruction needs views from different "
            "places: walk around the object while filming"
        )
    scale = camera_distance / float(dist)
    out = c2w.clone()
    out[:, :3, :3] = rot @ c2w[:, :3, :3]
    out[:, :3, 3] = scale * (c2w[:, :3, 3] - center) @ rot.T
    points = None if scene.points is None else (scale * (scene.points.double() - center) @ rot.T).float()
    cams = replace(scene.cameras, camera_to_worlds=out.float())
    return replace(scene, cameras=cams, points=points)


def _focus_point(c2w: Tensor) -> Tensor:
    """Least-squares closest point to every optical axis (cameras' mean position when they don't converge)."""
    origins, dirs = c2w[:, :3, 3], -c2w[:, :3, 2]  # OpenGL: looks down -Z
    proj = torch.eye(3, dtype=c2w.dtype) - dirs[:, :, None] * dirs[:, None, :]
    A, b = proj.sum(0), (proj @ origins[:, :, None]).sum(0)[:, 0]
    if torch.linalg.cond(A) > 1e4:
        return origins.mean(0)
    return torch.linalg.solve(A, b)


def _rotation_between(a: Tensor, b: Tensor) -> Tensor:
    """The rotation taking unit vector ``a`` onto unit vector ``b`` (Rodrigues)."""
    v, c = torch.linalg.cross(a, b), float(a @ b)
    if c < -1 + 1e-9:  # opposite: half turn about any axis orthogonal to a
        axis = torch.nn.functional.normalize(
            torch.linalg.cross(a, torch.tensor([1.0, 0, 0], dtype=a.dtype)), dim=0
        )
        return 2 * torch.outer(axis, axis) - torch.eye(3, dtype=a.dtype)
    vx = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=a.dtype)
    return torch.eye(3, dtype=a.dtype) + vx + vx @ vx / (1 + c)
