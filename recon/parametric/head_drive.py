"""Driving signals for a head avatar: expression, jaw and neck per frame, from a file, a video or a preset.

Zero-1-to-A (Zhou et al. 2025, https://arxiv.org/abs/2503.15851) animates its avatar — Gaussians bound to
a FLAME-parameterised head mesh (:mod:`recon.parametric.head_gaussians`) — by driving the mesh with
expression and pose sequences. A :class:`DriveSequence` holds one: ``expression [T, E]``, ``jaw_pose
[T, 3]`` and ``neck_pose [T, 3]`` (:class:`~recon.parametric.heads.HeadModel`'s parameters) and a frame
rate. :func:`load_drive` reads one from

* a **JSON file**, any of::

      {"fps": 25, "frames": [{"expression": [E numbers] or {"mouthSmileLeft": 0.8, ...},
                              "jaw_pose": [x, y, z], "neck_pose": [x, y, z]}, ...]}
      {"fps": 25, "expression": [[E numbers], ...], "jaw_pose": [[x, y, z], ...], "neck_pose": [...]}
      {"fps": 25, "sequence": [["smile", 0.0], ["smile", 1.0], ["surprise", 0.5], "neutral", ...]}

  A left-out ``jaw_pose``, ``neck_pose`` or ``expression`` is zero; ``fps`` defaults to
  :data:`DEFAULT_FPS`. Named facial actions are the head model's ``expression_names`` (anny's ARKit
  names); the ``sequence`` names are :data:`recon.data.heads_synth.EXPRESSIONS`' (and ``neutral``), each
  with a strength. The flame model's expressions are PCA coefficients without names: lists only, and
  fewer than its ``E`` columns are zero-padded (as FLAME trackers that keep 50 of 100 do).
* a **video** (:data:`VIDEO_SUFFIXES`) with a sidecar ``<video stem>.landmarks.json`` next to it: per frame,
  the 68 iBUG points of any 68-point face landmark detector (face-alignment, dlib, MediaPipe mapped to
  iBUG) or their 51 inner points, in the video's pixels — ``[T, 68 or 51, 2]``, ``null`` for a frame with
  no face (it takes its nearest detected frame's parameters); a ``{"landmarks": [...]}`` object works too.
  The video itself is only read (PyAV) for its frame count, size and frame rate. Each frame's head is
  fitted with :func:`recon.parametric.head_fit.fit_head` on its landmarks (no mask): the first detected
  frame with every yaw guess and the focal length fitted, the others with that focal length and the
  previous frame's yaw as their one guess (``fit_head`` takes no initial parameters, so this is the warm
  start it allows). The fitted expression and jaw are kept; the head's rotation relative to the first
  detected frame (global orientation and neck together) becomes ``neck_pose``, so the avatar's head
  turns as the actor's does while it starts facing front. Landmarks alone under-measure a head turn
  (shape and expression absorb part of it; see :data:`DRIVE_FIT`): the jaw and expressions are the
  reliable part of a video drive, the neck a damped copy of the actor's.

Making the sidecar with face-alignment (``pip install face-alignment``)::

    import json, av, face_alignment
    fa = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device="cpu")  # _2D before 1.4
    marks = []
    with av.open("clip.mp4") as video:
        for frame in video.decode(video=0):
            faces = fa.get_landmarks_from_image(frame.to_ndarray(format="rgb24"))
            marks.append(faces[0].tolist() if faces else None)
    json.dump(marks, open("clip.landmarks.json", "w"))

:func:`expression_sequence_preset` gives built-in sequences (``talk`` and each named expression ramping
in and out) for when the user passes no drive; :func:`write_driven_video` renders a sequence to an H.264
mp4 (:func:`head_gaussians_renderer` renders the avatar's Gaussians) and :func:`render_fps` times a renderer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.data.heads_synth import EXPRESSIONS
from recon.errors import UserError, check_range
from recon.parametric.head_fit import NUM_LANDMARKS, HeadFitConfig, check_portrait_inputs
from recon.parametric.head_gaussians import HeadGaussians
from recon.parametric.heads import HeadModel

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
"""Frame rate of a JSON drive that names none."""
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
SIDECAR_SUFFIX = ".landmarks.json"
NAMED = tuple(name for name, _ in EXPRESSIONS)
PRESETS = ("talk", *NAMED)
"""Built-in sequences of :func:`expression_sequence_preset`."""
DRIVE_FIT = HeadFitConfig(steps=200, rigid_steps=60)
"""The per-frame fit of a video drive: fewer steps than a portrait's, ~1.4 s a frame on one CPU core (100
steps fit the jaw as well but keep only ~15 % of a head turn, 200 ~45 %, 300 ~60 %)."""
FRAME_KEYS = ("expression", "jaw_pose", "neck_pose")


@dataclass
class DriveSequence:
    """Per-frame head parameters that drive an avatar (the :class:`~recon.parametric.heads.HeadModel`'s)."""

    expression: Tensor  # [T, E]
    """Expression coefficients (anny: facial actions, 0 neutral, 1 full)."""
    jaw_pose: Tensor  # [T, 3]
    """Jaw axis-angle relative to the neck (x opens the mouth)."""
    neck_pose: Tensor  # [T, 3]
    """Neck axis-angle relative to the root (the head's turn)."""
    fps: float
    """Frames per second."""
    source: str
    """Where the sequence came from (``json:<path>``, ``video:<path>``, ``preset:<name>``)."""

    def __len__(self) -> int:
        return self.expression.shape[0]


def drive_params(drive: DriveSequence, i: int) -> dict[str, Tensor]:
    """Frame ``i``'s ``expression [1, E]``, ``jaw_pose [1, 3]`` and ``neck_pose [1, 3]`` (``HeadModel``'s)."""
    if not 0 <= i < len(drive):
        raise IndexError(f"frame {i} of a {len(drive)}-frame drive")
    return {k: getattr(drive, k)[i : i + 1] for k in FRAME_KEYS}


# ---------------------------------------------------------------------------------------------- load
def load_drive(path: str | Path, model: HeadModel, fit_config: HeadFitConfig | None = None) -> DriveSequence:
    """Reads a driving sequence from a JSON file or a video with a landmarks sidecar (module docstring).

    Args:
        path: A ``.json`` drive or a video (:data:`VIDEO_SUFFIXES`) with ``<stem>.landmarks.json`` beside it.
        model: The head model the sequence drives (its expression width and names).
        fit_config: The per-frame fit of a video drive (default :data:`DRIVE_FIT`).

    Returns:
        The sequence, ``expression [T, E]`` with the model's ``E``.

    Raises:
        UserError: a missing file, an unknown extension, malformed JSON, values of the wrong shape, type or
            name, non-finite values, no frames, a video without its sidecar or that PyAV cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"the drive file {path} does not exist or is not a file; pass a .json drive or a video with a "
            f"<stem>{SIDECAR_SUFFIX} landmarks sidecar"
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"the drive file {path} is not readable JSON ({err}); fix the file") from None
        return parse_drive_json(data, model, source=f"json:{path}")
    if suffix in VIDEO_SUFFIXES:
        return drive_from_video(path, model, fit_config)
    raise UserError(
        f"unknown drive file type {path.suffix or '(none)'} for {path}; pass a .json drive or a video "
        f"({', '.join(VIDEO_SUFFIXES)}) with a <stem>{SIDECAR_SUFFIX} landmarks sidecar"
    )


def parse_drive_json(data: Any, model: HeadModel, source: str = "json") -> DriveSequence:
    """A :class:`DriveSequence` from parsed JSON in one of the module docstring's three layouts.

    Raises:
        UserError: see :func:`load_drive`; messages name ``source``.
    """
    where = source.removeprefix("json:")
    if not isinstance(data, dict):
        raise UserError(
            f"the drive {where} must be a JSON object with 'frames', 'expression' or 'sequence', got a "
            f"{type(data).__name__}"
        )
    layouts = [k for k in ("frames", "sequence") if k in data] + (
        ["arrays"] if set(FRAME_KEYS) & set(data) else []
    )
    allowed = {"fps", "frames", "sequence", *FRAME_KEYS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(f"the drive {where} has unknown keys {unknown}; use {sorted(allowed)}")
    if len(layouts) != 1:
        raise UserError(
            f"the drive {where} must hold exactly one of 'frames' (a list of per-frame objects), "
            f"'expression'/'jaw_pose'/'neck_pose' arrays, or 'sequence' (named expressions), found "
            f"{layouts or 'none'}"
        )
    fps = check_range(
        f"fps of the drive {where}", data.get("fps", DEFAULT_FPS), low=1e-3, high=1000, integer=False
    )
    if layouts[0] == "frames":
        rows = _list(data["frames"], "frames", where)
        T = _count(len(rows), where)
        columns: dict[str, list] = {k: [] for k in FRAME_KEYS}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise UserError(f"frame {i} of the drive {where} must be an object with {list(FRAME_KEYS)}")
            extra = sorted(set(row) - set(FRAME_KEYS))
            if extra:
                raise UserError(
                    f"frame {i} of the drive {where} has unknown keys {extra}; use {list(FRAME_KEYS)}"
                )
            for k in FRAME_KEYS:
                columns[k].append(row.get(k))
    elif layouts[0] == "arrays":
        columns = {}
        for k in FRAME_KEYS:
            if k in data:
                columns[k] = _list(data[k], k, where)
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) != 1:
            raise UserError(
                f"the drive {where}'s arrays differ in length {lengths}; give one row per frame to each"
            )
        T = _count(next(iter(lengths.values())), where)
    else:
        return _named_sequence(_list(data["sequence"], "sequence", where), model, float(fps), source)
    expression = torch.stack(
        [_expression_row(r, model, f"expression of frame {i} of the drive {where}")
         for i, r in enumerate(columns.get("expression") or [None] * T)]
    )  # fmt: skip
    poses = {
        k: torch.stack([_pose_row(r, f"{k} of frame {i} of the drive {where}")
                        for i, r in enumerate(columns.get(k) or [None] * T)])
        for k in ("jaw_pose", "neck_pose")
    }  # fmt: skip
    return DriveSequence(expression, poses["jaw_pose"], poses["neck_pose"], float(fps), source)


def _list(value: Any, key: str, where: str) -> list:
    if not isinstance(value, list):
        raise UserError(
            f"'{key}' of the drive {where} must be a list (one entry per frame), got {type(value).__name__}"
        )
    return value


def _count(T: int, where: str) -> int:
    if T == 0:
        raise UserError(f"the drive {where} has no frames; give at least one")
    return T


def _numbers(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what} must hold numbers, got {str(value)[:60]}") from None
    if not np.isfinite(arr).all():
        raise UserError(f"{what} contains NaN or infinite values; give finite numbers")
    return arr


def _pose_row(value: Any, what: str) -> Tensor:
    if value is None:
        return torch.zeros(3)
    arr = _numbers(value, what)
    if arr.shape != (3,):
        raise UserError(
            f"{what} must be 3 numbers (an axis-angle in radians; x opens the jaw, y turns the head), "
            f"got shape {arr.shape}"
        )
    return torch.as_tensor(arr, dtype=torch.float32)


def _named_help(model: HeadModel) -> str:
    if not model.expression_names:
        return f"the {model.source} model's expressions are unnamed PCA coefficients: pass lists of numbers"
    return "or an object {name: amount} with names from " + ", ".join(model.expression_names)


def _expression_row(value: Any, model: HeadModel, what: str) -> Tensor:
    E = model.num_expressions
    row = torch.zeros(E)
    if value is None:
        return row
    if isinstance(value, dict):
        if not model.expression_names:
            raise UserError(f"{what}: {_named_help(model)}")
        unknown = sorted(set(value) - set(model.expression_names))
        if unknown:
            raise UserError(
                f"{what} names unknown facial actions {unknown}; the {model.source} model knows "
                + ", ".join(model.expression_names)
            )
        for name, amount in value.items():
            arr = _numbers(amount, f"{what}'s {name}")
            if arr.shape != ():
                raise UserError(f"{what}'s {name} must be one number (0 neutral, 1 full), got {amount!r}")
            row[model.expression_names.index(name)] = float(arr)
        return row
    arr = _numbers(value, what)
    k = arr.shape[0] if arr.ndim == 1 else -1
    pads = model.source == "flame" and 0 < k <= E  # PCA coefficients: the left-out ones are zero
    if arr.ndim != 1 or not (k == E or pads):
        got = f"{k} values" if arr.ndim == 1 else f"shape {arr.shape}"
        raise UserError(
            f"{what} has {got}, expected {E} (the {model.source} model's expressions, in its order); "
            f"pass {E} numbers per frame, {_named_help(model)}"
        )
    row[:k] = torch.as_tensor(arr, dtype=torch.float32)
    return row


def _named_sequence(entries: list, model: HeadModel, fps: float, source: str) -> DriveSequence:
    from recon.data.head_clips import named_expression

    where = source.removeprefix("json:")
    _count(len(entries), where)
    known = ("neutral", *NAMED)
    if not model.expression_names:
        raise UserError(f"a 'sequence' of named expressions needs the anny head model; {_named_help(model)}")
    expressions, jaws = [], []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            name, strength = entry, 1.0
        elif isinstance(entry, list) and len(entry) == 2:
            name, strength = entry
        else:
            name, strength = None, None
        if not isinstance(name, str):
            raise UserError(
                f"entry {i} of the drive {where}'s 'sequence' must be [name, strength] or a name, "
                f"got {entry!r}"
            )
        if name not in known:
            raise UserError(
                f"entry {i} of the drive {where}'s 'sequence' names an unknown expression {name!r}; known: "
                + ", ".join(known)
            )
        amount = float(_numbers(strength, f"the strength of entry {i} of the drive {where}'s 'sequence'"))
        if name == "neutral":
            expr, jaw = torch.zeros(model.num_expressions), torch.zeros(3)
        else:
            expr, jaw = named_expression(model, name, amount)
        expressions.append(expr)
        jaws.append(jaw)
    expression, jaw_pose = torch.stack(expressions), torch.stack(jaws)
    return DriveSequence(expression, jaw_pose, torch.zeros_like(jaw_pose), fps, source)


# --------------------------------------------------------------------------------------------- video
def sidecar_path(video: str | Path) -> Path:
    """``<folder>/<stem>.landmarks.json`` of a video."""
    video = Path(video)
    return video.with_name(video.stem + SIDECAR_SUFFIX)


def video_info(path: str | Path) -> tuple[int, int, int, float]:
    """``(frames, width, height, fps)`` of a video (PyAV; frames counted by decoding).

    Raises:
        UserError: a file PyAV cannot read, one without a video stream or without frames.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path} has no video stream; pass a video file (mp4, mov, ...)")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or DEFAULT_FPS)
            width, height = stream.codec_context.width, stream.codec_context.height
            count = sum(1 for _ in container.decode(stream))
    except UserError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise UserError(
            f"cannot read video {path} ({err}); re-encode it (e.g. ffmpeg -i in.mov out.mp4)"
        ) from None
    if count == 0:
        raise UserError(f"video {path} has no decodable frames; re-encode it")
    return count, width, height, fps


def load_landmark_sidecar(path: Path, frames: int, width: int, height: int) -> list[Tensor | None]:
    """Per frame the 51 inner iBUG landmarks ``[51, 2]`` in pixels, or None where no face was detected.

    Raises:
        UserError: malformed JSON, a frame count other than the video's, a frame of the wrong shape or with
            landmarks outside the image.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(
            f"the landmarks sidecar {path} is not valid JSON ({err}); fix or re-make it"
        ) from None
    if isinstance(data, dict):
        data = data.get("landmarks", data.get("landmarks_2d"))
    if not isinstance(data, list):
        raise UserError(
            f"the landmarks sidecar {path} must be a list with one [68, 2] or [51, 2] array (or null) per "
            "frame, or an object with such a 'landmarks' list"
        )
    if len(data) != frames:
        raise UserError(
            f"the landmarks sidecar {path} has {len(data)} frames, the video {frames}; detect landmarks on "
            "every frame (null where there is no face)"
        )
    marks: list[Tensor | None] = []
    for i, frame in enumerate(data):
        if frame is None:
            marks.append(None)
            continue
        arr = _numbers(frame, f"frame {i} of the landmarks sidecar {path}")
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] not in (NUM_LANDMARKS, 68):
            raise UserError(
                f"frame {i} of the landmarks sidecar {path} has shape {arr.shape}; each frame must be one "
                "face's [68, 2] (or [51, 2]) iBUG points in pixels, or null"
            )
        try:
            lm, _ = check_portrait_inputs(arr, None, width, height)
        except UserError as err:
            raise UserError(f"frame {i} of the landmarks sidecar {path}: {err}") from None
        marks.append(lm)
    if all(m is None for m in marks):
        raise UserError(f"the landmarks sidecar {path} has no face in any frame; film the face in view")
    return marks


def drive_from_video(path: Path, model: HeadModel, fit_config: HeadFitConfig | None = None) -> DriveSequence:
    """Fits the head to each frame's sidecar landmarks (see the module docstring).

    Raises:
        UserError: no sidecar, an unreadable video, a bad sidecar (:func:`load_landmark_sidecar`), a model
            without landmarks.
    """
    from tqdm.auto import tqdm

    from recon.parametric.head_fit import fit_head
    from recon.parametric.lbs import axis_angle_to_matrix, matrix_to_axis_angle

    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise UserError(
            f"the video drive {path} needs its face landmarks in {sidecar}: a JSON list with one iBUG-68 "
            "[68, 2] pixel array (or null) per frame: run a 68-point face landmark detector on every frame, "
            "e.g. pip install face-alignment and save get_landmarks_from_image(frame)[0] (the script is in "
            "recon.parametric.head_drive's docstring)"
        )
    T, width, height, fps = video_info(path)
    marks = load_landmark_sidecar(sidecar, T, width, height)
    config = fit_config or DRIVE_FIT
    fits: list[dict[str, Tensor] | None] = [None] * T
    focal, yaw = None, None
    with _quiet(logging.getLogger("recon.parametric.head_fit")):
        for i in tqdm(range(T), desc="fitting the drive video's frames", leave=False):
            if marks[i] is None:
                continue
            cfg = config if yaw is None else replace(config, yaw_guesses_deg=(yaw,))
            fit = fit_head(model, marks[i], width, height, focal=focal, config=cfg)
            focal = float(fit.camera.fx[0]) if focal is None else focal
            forward = axis_angle_to_matrix(fit.params["global_orient"][0])[:, 2]  # where the face looks
            yaw = math.degrees(math.atan2(float(forward[0]), float(forward[2])))
            fits[i] = fit.params
    detected = [i for i in range(T) if fits[i] is not None]
    nearest = [min(detected, key=lambda j: (abs(j - i), j)) for i in range(T)]
    p = {
        k: torch.cat([fits[j][k] for j in nearest])
        for k in ("expression", "jaw_pose", "neck_pose", "global_orient")
    }
    head = axis_angle_to_matrix(p["global_orient"]) @ axis_angle_to_matrix(p["neck_pose"])  # [T, 3, 3]
    neck = matrix_to_axis_angle(head[detected[0]].T @ head)  # the turn since the first detected frame
    log.info(
        "drive %s: %d frames fitted, %d without a face, %.1f fps", path, len(detected), T - len(detected), fps
    )
    return DriveSequence(p["expression"], p["jaw_pose"], neck, fps, f"video:{path}")


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """The per-frame fits' two log lines each, held back (the drive logs one line for them all)."""
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


# -------------------------------------------------------------------------------------------- presets
def expression_sequence_preset(
    model: HeadModel, name: str = "talk", frames: int = 48, fps: float = 24
) -> DriveSequence:
    """A built-in driving sequence, for when the user gives none.

    * ``talk``: the jaw opening and closing in syllables of varying size, small mouth actions (funnel,
      pucker, stretch, lower lip down; anny only) and a slight nod;
    * each of :data:`recon.data.heads_synth.EXPRESSIONS` (``smile``, ``surprise``, ...): the expression
      ramping from neutral to full and back (``sin`` of half a period).

    Args:
        model: The head model (its expression width and names).
        name: One of :data:`PRESETS`.
        frames: Number of frames.
        fps: Frame rate.

    Raises:
        UserError: an unknown name, a bad frame count or rate, a named expression on the flame model.
    """
    from recon.data.head_clips import named_expression

    T = int(check_range("frames", frames, low=1, high=100_000))
    fps = float(check_range("fps", fps, low=1e-3, high=1000, integer=False))
    if name not in PRESETS:
        raise UserError(f"unknown drive preset {name!r}; choose one of {', '.join(PRESETS)}")
    t = torch.linspace(0.0, 1.0, T)
    E = model.num_expressions
    expression, jaw, neck = torch.zeros(T, E), torch.zeros(T, 3), torch.zeros(T, 3)
    if name == "talk":
        syllables = 2.0 * T / fps  # two a second
        phase = 2 * math.pi * syllables * t
        size = 0.6 + 0.4 * torch.sin(0.37 * phase + 1.0).abs()  # syllables of varying size
        jaw[:, 0] = 0.16 * size * (0.5 - 0.5 * torch.cos(phase))
        stretch, lower = 0.15 * torch.sin(0.29 * phase).clamp_min(0), 0.3 * jaw[:, 0] / 0.16
        mouth = {
            "mouthFunnel": 0.3 * torch.sin(0.5 * phase).clamp_min(0),
            "mouthPucker": 0.25 * torch.sin(0.5 * phase + math.pi).clamp_min(0),
            "mouthStretchLeft": stretch,
            "mouthStretchRight": stretch,
            "mouthLowerDownLeft": lower,
            "mouthLowerDownRight": lower,
        }
        for action, amount in mouth.items():
            if action in model.expression_names:
                expression[:, model.expression_names.index(action)] = amount
        neck[:, 0] = 0.04 * torch.sin(2 * math.pi * t)  # a slight nod
        neck[:, 1] = 0.06 * torch.sin(math.pi * t) * torch.sin(2 * math.pi * t)  # and turn
    else:
        if not model.expression_names:
            raise UserError(
                f"the drive preset {name!r} needs the anny head model's named facial actions; use 'talk' "
                f"with the {model.source} model or pass --drive"
            )
        full, full_jaw = named_expression(model, name, 1.0)
        ramp = torch.sin(math.pi * t)[:, None]
        expression, jaw = ramp * full, ramp * full_jaw
    return DriveSequence(expression, jaw, neck, fps, f"preset:{name}")


# ----------------------------------------------------------------------------------------------- video out
RenderFrame = Callable[[int, dict[str, Tensor]], Any]
"""``render_frame(i, drive_params(drive, i)) -> [H, W, 3]`` floats in ``[0, 1]`` (Tensor or array)."""


def head_gaussians_renderer(
    model: HeadModel,
    gaussians: HeadGaussians,
    camera: Cameras,
    betas: Tensor | None = None,  # [1, K]
    transl: Tensor | None = None,  # [1, 3]
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> RenderFrame:
    """A ``render_frame`` for :func:`write_driven_video`: the avatar's Gaussians on the driven head mesh.

    Args:
        model: The head model the Gaussians are bound to (on the Gaussians' device).
        gaussians: The avatar (:class:`~recon.parametric.head_gaussians.HeadGaussians`).
        camera: The camera (its first one renders every frame).
        betas: The avatar's shape (the mean shape by default).
        transl: The head's translation (e.g. :func:`recon.data.head_clips.head_params`' centring).
        background: RGB behind the head.

    Returns:
        ``render_frame(i, params) -> [H, W, 3]`` in ``[0, 1]`` (on the Gaussians' device).
    """
    from recon.render import rasterization

    device = gaussians.opacities.device
    viewmats, Ks = camera.viewmats()[:1].to(device), camera.Ks()[:1].to(device)
    bg = torch.tensor(background, dtype=torch.float32, device=device)
    fixed = {k: v.to(device) for k, v in (("betas", betas), ("transl", transl)) if v is not None}

    @torch.no_grad()
    def render_frame(i: int, params: dict[str, Tensor]) -> Tensor:
        vertices = model(**fixed, **{k: v.to(device) for k, v in params.items()}).vertices
        means, quats, scales = (x[0] for x in gaussians.deform(vertices))
        rgb, _, _ = rasterization(
            means, quats, scales, torch.sigmoid(gaussians.opacities), gaussians.colors,
            viewmats, Ks, camera.width, camera.height, backgrounds=bg, near_plane=0.01,
        )  # fmt: skip
        return rgb[0].clamp(0, 1)

    return render_frame


def _to_uint8(image: Any) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_driven_video(
    path: str | Path,
    render_frame: RenderFrame,
    drive: DriveSequence,
    camera: Cameras,
    fps: float | None = None,
) -> Path:
    """Renders every frame of ``drive`` and encodes them as an H.264 mp4, atomically.

    Args:
        path: The video to write (its folder is created).
        render_frame: ``render_frame(i, drive_params(drive, i))`` -> ``[H, W, 3]`` in ``[0, 1]``.
        drive: The driving sequence.
        camera: The camera the frames are rendered from; every frame must be its ``height x width``
            (an odd side is padded by one edge row or column: H.264's 4:2:0 needs even sides).
        fps: Frame rate (default ``drive.fps``).

    Returns:
        ``path``. Nothing is left at ``path`` (nor a temp file) when ``render_frame`` raises.
    """
    from tqdm.auto import tqdm

    from recon.data.video import write_video

    H, W = camera.height, camera.width
    frames = np.empty((len(drive), H + H % 2, W + W % 2, 3), dtype=np.uint8)
    for i in tqdm(range(len(drive)), desc="rendering the driven video", leave=False):
        image = _to_uint8(render_frame(i, drive_params(drive, i)))
        if image.shape != (H, W, 3):
            raise ValueError(f"render_frame returned {image.shape} for frame {i}; the camera is {H}x{W}x3")
        frames[i] = np.pad(image, ((0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    rate = Fraction(fps or drive.fps).limit_denominator(1001)
    out = write_video(path, frames, fps=rate)  # type: ignore[arg-type]  # PyAV takes a Fraction rate
    log.info("driven video %s: %d frames, %dx%d, %.2f fps", out, len(drive), W, H, float(rate))
    return out


def render_fps(
    render_frame: RenderFrame, drive: DriveSequence | None = None, n: int = 20, warmup: int = 3
) -> float:
    """Frames per second of ``render_frame`` over ``n`` frames after ``warmup`` untimed ones.

    Frames cycle through ``drive`` (the neutral head's empty parameters without one); a CUDA result is
    synchronised before the clock stops.
    """
    n = int(check_range("n", n, low=1, high=1_000_000))

    def call(i: int) -> None:
        params = drive_params(drive, i % len(drive)) if drive is not None else {}
        out = render_frame(i, params)
        if isinstance(out, Tensor) and out.is_cuda:
            torch.cuda.synchronize(out.device)

    for i in range(warmup):
        call(i)
    start = time.perf_counter()
    for i in range(n):
        call(warmup + i)
    return n / (time.perf_counter() - start)
