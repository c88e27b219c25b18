"""Two hands and an object in one video: the input layout of the BIGS pipeline, its reader and writer.

A sequence folder::

    SEQ/
      frames/000000.png ...        the video's frames (PNG/JPG, sorted by name), or one video file
      video.mp4                    (instead of frames/: any format PyAV reads; every frame is used)
      masks/right/000000.png ...   per-frame masks, one folder per subject (right, left, object): white
      masks/left/...               (> 127) where the subject is visible; same names as the frames (or
      masks/object/...             000000.png ... for a video), same size
      cameras.json                 intrinsics and (optionally) per-frame camera poses
      hands.json                   per-frame initial hand parameters (from a hand-pose estimator)
      object.json                  optional: {"prompt": "a red mug"} for the object's score distillation
      gt/                          optional (the procedural generator writes it): ground truth for metrics

``cameras.json``: ``{"width": W, "height": H, "fx": ..., "fy": ..., "cx": ..., "cy": ...}`` and optionally
``"viewmats": [T x 4x4]`` (OpenCV world-to-camera, +Z forward, +Y down). Without ``viewmats`` the camera is
fixed and the world **is the camera's OpenCV frame**, which is the frame hand-pose estimators report in.

``hands.json`` (format ``sds3d-hands/1``)::

    {"format": "sds3d-hands/1", "flat_hand_mean": true,
     "frames": [{"right": {"global_orient": [3], "hand_pose": [45], "betas": [10], "transl": [3]},
                 "left":  {...}}, ...]}                                       one entry per video frame

MANO parameters in axis-angle, in the world frame above, MANO's joint order; ``flat_hand_mean`` says
whether ``hand_pose`` is relative to the flat hand (``true``) or to MANO's mean pose (``false``: the
model's ``hands_mean`` is added on load). A hand missing from a frame may be ``null``; it then takes the
nearest frame's parameters. Converting estimators' output:

* **HaMeR** (https://github.com/geopavlakos/hamer) / **WiLoR** (https://github.com/rolpotamias/WiLoR):
  ``pred_mano_params`` ``global_orient [1, 3, 3]`` and ``hand_pose [15, 3, 3]`` are rotation matrices
  (axis-angle them), ``betas [10]``; ``pred_cam_t_full`` is ``transl`` in the camera frame (with the
  full image's focal length, which must match ``cameras.json``). Both predict every hand as a right hand
  on a horizontally flipped crop: for a left hand mirror the rotations, ``(x, y, z) -> (x, -y, -z)`` per
  axis-angle, and negate the x of the translation the flip was applied to. Check your version's
  ``flat_hand_mean`` and say it in the file.
* **HOLD / ARCTIC** builds (``data.npy``): ``entities/{right,left}/hand_poses [T, 48]`` are
  ``global_orient + hand_pose``, ``hand_trans [T, 3]``, ``mean_shape [10]``; world = HOLD's normalized
  frame, so write its ``world_mat`` as ``viewmats``.

With the anny hand model (no MANO files), the parameters drive anny's hand in the same joint layout;
poses transfer approximately (the joint axes of both rigs are the rest frame's), shapes do not (anny's
shape space is its 6 phenotypes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.errors import UserError

SUBJECTS = ("right", "left", "object")
HANDS = ("right", "left")
FORMAT = "sds3d-hands/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
PARAM_SIZES = {"global_orient": 3, "hand_pose": 45, "transl": 3}


@dataclass
class HandSequence:
    """A loaded sequence: ``T`` frames of ``H x W``."""

    images: Tensor  # [T, H, W, 3] float in [0, 1]
    masks: Tensor  # [T, H, W, 3] float in {0, 1}: right, left, object
    cameras: Cameras  # T cameras
    hand_params: dict[
        str, dict[str, Tensor]
    ]  # side -> global_orient [T, 3], hand_pose [T, 45], betas [T, K], transl
    prompt: str = ""
    flat_hand_mean: bool = True
    names: list[str] = field(default_factory=list)
    gt: dict[str, Any] | None = None
    """The procedural generator's ground truth (``gt/gt.json`` + meshes), when present."""

    def __len__(self) -> int:
        return self.images.shape[0]


# ---------------------------------------------------------------------------------------- reading
def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path} ({err}); replace it with a PNG or JPG") from err


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read mask {path} ({err}); replace it with a PNG") from err


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_frames(folder: Path, max_frames: int = 10_000) -> tuple[np.ndarray, list[str]]:
    """The frames (``uint8 [T, H, W, 3]``) and their names (stems) of a sequence folder."""
    frames_dir = folder / "frames"
    if frames_dir.is_dir():
        paths = _images_in(frames_dir)
        if not paths:
            raise UserError(f"{frames_dir} holds no PNG/JPG frames")
        images = [_read_image(p) for p in paths[:max_frames]]
        if len({im.shape for im in images}) != 1:
            raise UserError(f"the frames in {frames_dir} have different sizes; resize them to one size")
        return np.stack(images), [p.stem for p in paths[:max_frames]]
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise UserError(
            f"{folder} has neither frames/ nor a video (mp4, mov, ...); see the layout in the README"
        )
    from recon.data.video import read_video

    frames, _ = read_video(videos[0], max_frames=max_frames)
    return frames, [f"{i:06d}" for i in range(len(frames))]


def read_masks(folder: Path, names: list[str], size: tuple[int, int]) -> np.ndarray:
    """``bool [T, H, W, 3]`` (right, left, object); one clear error listing frames without a mask."""
    out = np.zeros((len(names), *size, 3), dtype=bool)
    for s, subject in enumerate(SUBJECTS):
        sub = folder / "masks" / subject
        if not sub.is_dir():
            raise UserError(
                f"{folder} has no masks/{subject}/; give one mask per frame for {', '.join(SUBJECTS)}"
            )
        available = {p.stem: p for p in _images_in(sub)}
        missing = [n for n in names if n not in available]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise UserError(
                f"masks/{subject}/ has no mask for {len(missing)} of {len(names)} frames ({shown}); "
                "every frame needs a mask of each subject (an empty black image where it is not visible)"
            )
        for t, n in enumerate(names):
            mask = _read_mask(available[n])
            if mask.shape != size:
                raise UserError(
                    f"mask {available[n]} is {mask.shape[1]}x{mask.shape[0]}, "
                    f"the frames are {size[1]}x{size[0]}; give masks of the frames' size"
                )
            out[t, ..., s] = mask
    return out


def read_cameras(path: Path, n_frames: int, size: tuple[int, int]) -> Cameras:
    """Cameras of ``cameras.json`` for ``n_frames`` frames of ``size = (H, W)``."""
    if not path.is_file():
        raise UserError(
            f"no {path.name} in {path.parent}; give the intrinsics (fx, fy, cx, cy, width, height)"
        )
    data = _read_json(path)
    try:
        W, H = int(data["width"]), int(data["height"])
        fx, fy, cx, cy = (float(data[k]) for k in ("fx", "fy", "cx", "cy"))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} needs numbers width, height, fx, fy, cx, cy ({err})") from err
    if (H, W) != size:
        raise UserError(f"{path} says {W}x{H}, the frames are {size[1]}x{size[0]}")
    if not all(math.isfinite(v) and v > 0 for v in (fx, fy)) or not all(math.isfinite(v) for v in (cx, cy)):
        raise UserError(f"{path}: fx, fy must be positive and cx, cy finite")
    if data.get("viewmats") is not None:
        viewmats = torch.tensor(np.asarray(data["viewmats"], dtype=np.float32))
        if viewmats.shape != (n_frames, 4, 4) or not torch.isfinite(viewmats).all():
            raise UserError(f"{path}: viewmats must be {n_frames} finite 4x4 matrices, one per frame")
    else:
        viewmats = torch.eye(4).expand(n_frames, 4, 4).clone()
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]).expand(n_frames, 3, 3)
    return Cameras.from_viewmats(viewmats, K, W, H)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path} ({err}); fix the JSON") from err


def read_hand_params(path: Path, n_frames: int) -> tuple[dict[str, dict[str, Tensor]], bool]:
    """``side -> name -> [T, d]`` from ``hands.json`` (see the module docstring) and ``flat_hand_mean``.

    Raises:
        UserError: a missing file, another format, fewer entries than frames, a wrongly sized parameter,
            a hand that no frame has.
    """
    if not path.is_file():
        raise UserError(
            f"no {path.name} in {path.parent}; give per-frame initial hand parameters (format {FORMAT}, "
            "e.g. converted from HaMeR or WiLoR, see the README)"
        )
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("frames"), list):
        raise UserError(f"{path} is not a {FORMAT} file (a dict with format and frames); see the README")
    frames = data["frames"]
    if len(frames) < n_frames:
        raise UserError(
            f"{path} has initial hand parameters for {len(frames)} frames, the video has {n_frames}; "
            "give one entry per frame (null for a hand the estimator missed)"
        )
    out: dict[str, dict[str, Tensor]] = {}
    for side in HANDS:
        values: dict[str, list[Any]] = {k: [] for k in (*PARAM_SIZES, "betas")}
        present = []
        for entry in frames[:n_frames]:
            hand = entry.get(side) if isinstance(entry, dict) else None
            present.append(hand is not None)
            for key in values:
                values[key].append(
                    None if hand is None else hand.get(key, [0.0] * 10 if key == "betas" else None)
                )
        if not any(present):
            raise UserError(f"{path} has no {side} hand in any frame; both hands must be seen at least once")
        filled = _fill_missing(present)
        side_out = {}
        for key, rows in values.items():
            try:
                array = np.asarray([rows[filled[t]] for t in range(n_frames)], dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise UserError(
                    f"{path}: {side} {key} is not a list of numbers in every frame ({err})"
                ) from err
            size = PARAM_SIZES.get(key)
            if (
                array.ndim != 2
                or (size is not None and array.shape[1] != size)
                or not np.isfinite(array).all()
            ):
                raise UserError(f"{path}: {side} {key} must be {size or 'K'} finite numbers in every frame")
            side_out[key] = torch.from_numpy(array)
        out[side] = side_out
    return out, bool(data.get("flat_hand_mean", True))


def _fill_missing(present: list[bool]) -> list[int]:
    """For each frame, the nearest frame index where the hand is present."""
    have = [t for t, p in enumerate(present) if p]
    return [min(have, key=lambda s: (abs(s - t), s)) for t in range(len(present))]


def load_hand_sequence(folder: str | Path, max_frames: int = 10_000) -> HandSequence:
    """Reads a sequence folder (see the module docstring); every check before anything is returned.

    Raises:
        UserError: a missing or unreadable part, masks missing for some frames, initial parameters for fewer
            frames than the video, sizes that disagree.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"{folder} is not a folder; pass a hands sequence folder "
            "(frames/ or a video, masks/, cameras.json, hands.json)"
        )
    frames, names = read_frames(folder, max_frames)
    T, H, W = frames.shape[:3]
    masks = read_masks(folder, names, (H, W))
    cameras = read_cameras(folder / "cameras.json", T, (H, W))
    params, flat = read_hand_params(folder / "hands.json", T)
    prompt = ""
    if (folder / "object.json").is_file():
        meta = _read_json(folder / "object.json")
        prompt = str(meta.get("prompt", "")) if isinstance(meta, dict) else ""
    gt = _read_json(folder / "gt" / "gt.json") if (folder / "gt" / "gt.json").is_file() else None
    return HandSequence(
        images=torch.from_numpy(frames).float() / 255.0,
        masks=torch.from_numpy(masks).float(),
        cameras=cameras,
        hand_params=params,
        prompt=prompt,
        flat_hand_mean=flat,
        names=names,
        gt=gt,
    )


# ---------------------------------------------------------------------------------------- writing
def hand_params_json(params: dict[str, dict[str, Tensor | np.ndarray]], flat_hand_mean: bool = True) -> dict:
    """The ``hands.json`` dict of ``side -> name -> [T, d]`` parameters."""
    T = len(next(iter(params.values()))["global_orient"])
    frames = []
    for t in range(T):
        frames.append(
            {
                side: {
                    key: [round(float(x), 6) for x in np.asarray(values[key][t]).reshape(-1)]
                    for key in values
                }
                for side, values in params.items()
            }
        )
    return {"format": FORMAT, "flat_hand_mean": flat_hand_mean, "frames": frames}


def write_hand_sequence(
    folder: str | Path,
    images: np.ndarray,  # uint8 [T, H, W, 3]
    masks: np.ndarray,  # bool [T, H, W, 3]
    intrinsics: dict[str, float],
    hand_params: dict[str, dict[str, Any]],
    viewmats: np.ndarray | None = None,  # [T, 4, 4]
    prompt: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes a sequence folder all at once: built in a temporary sibling, then renamed into place.

    ``extra`` maps relative paths to ``bytes`` / ``str`` / JSON-able values (the generator's ``gt/``).
    """
    import shutil
    import tempfile

    from PIL import Image

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} exists and is not empty; pass a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "frames").mkdir()
        for s in SUBJECTS:
            (tmp / "masks" / s).mkdir(parents=True)
        for t in range(images.shape[0]):
            name = f"{t:06d}.png"
            Image.fromarray(images[t]).save(tmp / "frames" / name)
            for s, subject in enumerate(SUBJECTS):
                Image.fromarray((masks[t, ..., s] * 255).astype(np.uint8)).save(
                    tmp / "masks" / subject / name
                )
        cams = {
            "width": int(images.shape[2]),
            "height": int(images.shape[1]),
            **{k: float(v) for k, v in intrinsics.items()},
        }
        if viewmats is not None:
            cams["viewmats"] = np.asarray(viewmats, dtype=float).round(7).tolist()
        (tmp / "cameras.json").write_text(json.dumps(cams))
        (tmp / "hands.json").write_text(json.dumps(hand_params_json(hand_params)))
        if prompt:
            (tmp / "object.json").write_text(json.dumps({"prompt": prompt}))
        for rel, value in (extra or {}).items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(value, bytes):
                path.write_bytes(value)
            elif isinstance(value, str):
                path.write_text(value)
            else:
                path.write_text(json.dumps(value))
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
