"""Video → frames → keyframes, with PyAV (any container and codec FFmpeg decodes).

Keyframes are chosen for **coverage** and **sharpness**: the sampled frames are split into
``max_keyframes`` consecutive segments of equal length and the sharpest frame of each segment
(variance of the Laplacian, Pertuzza et al.'s focus measure) is kept, so keyframes spread over the
whole clip while motion-blurred frames are passed over. Near-duplicate keyframes (a camera that
stopped) are dropped, and a clip whose frames barely differ is refused as a static camera.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.atomic import atomic_write
from recon.errors import FRACTION, IMAGE_SIDE, KEYFRAMES, UserError, checked

log = logging.getLogger("sds3d.video")

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".gif")


@dataclass
class KeyframeConfig:
    """How frames are sampled and keyframes selected."""

    max_frames: int = checked(400, low=2, high=100_000)
    """Frames decoded at most (evenly spaced over the clip when it has more)."""
    max_keyframes: int = checked(60, KEYFRAMES)
    """Keyframes kept at most (one per segment of the clip)."""
    min_keyframes: int = checked(8, low=1, high=10_000)
    """Fewer usable frames than this is an error: SfM and the fit need views from many places."""
    max_side: int = checked(0, IMAGE_SIDE)
    """Resize frames so that their longer side is at most this many pixels (0: keep)."""
    min_difference: float = checked(0.01, FRACTION)
    """Mean absolute difference (0-1 scale) below which a frame duplicates the previous keyframe."""


def read_video(path: str | Path, max_frames: int = 400) -> tuple[np.ndarray, float]:
    """Decodes a video to ``uint8 [N, H, W, 3]`` RGB frames, evenly subsampled to ``max_frames``.

    Args:
        path: A video file.
        max_frames: Frames kept at most.

    Returns:
        ``(frames, fps)``.

    Raises:
        UserError: The file is missing, not a video, or has no decodable frames.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise UserError(f"video {path} does not exist; check the path")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path} has no video stream; pass a video file (mp4, mov, ...)")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 30)
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
    except UserError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        if not frames:
            raise UserError(
                f"cannot read video {path} ({err}); re-encode it (e.g. ffmpeg -i in.mov out.mp4) or pass the "
                "frames as an image folder"
            ) from err
        log.warning("video %s is truncated after %d frames (%s); using those", path, len(frames), err)
    if not frames:
        raise UserError(f"video {path} has no decodable frames; re-encode it or record a new clip")
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    return np.stack(frames), fps


def write_video(
    path: str | Path, frames: np.ndarray, fps: int = 24, codec: str = "libx264", crf: int = 12
) -> Path:
    """Encodes ``uint8 [N, H, W, 3]`` frames (atomically) — H.264 in yuv420p, even sizes required."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format=Path(path).suffix.lstrip(".") or "mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "fast"}
            for image in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return atomic_write(path, write)


def laplacian_variance(image: np.ndarray) -> float:
    """Sharpness of an RGB or grey image: variance of its 4-neighbour Laplacian (grey, 0-1 scale)."""
    grey = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if grey.ndim == 3:
        grey = grey @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    step = max(1, min(a.shape[:2]) // 64)  # compare thumbnails: cheap and robust to noise
    return float(np.abs(a[::step, ::step].astype(np.float32) - b[::step, ::step]).mean() / 255.0)


def check_camera_moves(frames: np.ndarray, min_difference: float = 0.01) -> None:
    """Raises a UserError when the clip's frames barely differ from its first (a tripod shot)."""
    diffs = [_difference(frames[0], f) for f in frames[1:]]
    if not diffs or max(diffs) < min_difference:
        raise UserError(
            "the camera does not move in this video (all frames look the same); reconstruction needs "
            "views from different places: walk around the object while filming"
        )


def select_keyframes(frames: np.ndarray, config: KeyframeConfig) -> list[int]:
    """Indices of keyframes: the sharpest frame of each of ``max_keyframes`` equal segments.

    Frames that differ from the previous keyframe by less than ``config.min_difference`` are
    skipped (the camera paused).
    """
    n = len(frames)
    bounds = np.linspace(0, n, min(config.max_keyframes, n) + 1).round().astype(int)
    chosen: list[int] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        best = max(range(lo, hi), key=lambda i: laplacian_variance(frames[i]))
        if chosen and _difference(frames[chosen[-1]], frames[best]) < config.min_difference:
            continue
        chosen.append(best)
    return chosen


def resize_frames(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Downscales frames (area filter) so that the longer side is at most ``max_side``."""
    from PIL import Image

    h, w = frames.shape[1:3]
    if max_side <= 0 or max(h, w) <= max_side:
        return frames
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BOX)) for f in frames])


def video_keyframes(path: str | Path, config: KeyframeConfig) -> tuple[np.ndarray, list[int]]:
    """Reads a video and returns ``(keyframes uint8 [K, H, W, 3], their indices among the samples)``.

    Raises:
        UserError: Unreadable video, too few frames, or a static camera — each with the fix.
    """
    frames, _ = read_video(path, config.max_frames)
    if len(frames) < config.min_keyframes:
        raise UserError(
            f"video {path} has {len(frames)} frames; reconstruction needs at least {config.min_keyframes}: "
            "record a longer clip (a few seconds, moving around the object)"
        )
    check_camera_moves(frames, config.min_difference)
    keep = select_keyframes(frames, config)
    if len(keep) < config.min_keyframes:
        raise UserError(
            f"only {len(keep)} distinct keyframes in {path} (need {config.min_keyframes}); the camera "
            "moves too little: record a longer clip with more motion around the object, or raise --max-frames"
        )
    log.info("video %s: %d frames sampled, %d keyframes", path, len(frames), len(keep))
    return resize_frames(frames[keep], config.max_side), keep
