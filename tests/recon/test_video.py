"""Video decoding, keyframe selection and the clear errors of bad video input (no partial output)."""

from __future__ import annotations

import numpy as np
import pytest

from recon.data.datasets import SceneConfig
from recon.data.video import KeyframeConfig, laplacian_variance, read_video, select_keyframes, write_video
from recon.errors import UserError
from recon.pipelines.video_recon import VideoReconConfig, reconstruct


def _noise_frames(n: int, seed: int = 0, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, h, w, 3)) * 255).astype(np.uint8)


def _smooth_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Vertical stripes sliding right: frames differ, but a 1D pattern has no points for SIFT to match."""
    x = np.arange(w)[None, :] + 4 * np.arange(n)[:, None]  # [n, w]
    row = 128 + 100 * np.sin(2 * np.pi * x / 32)
    return np.repeat(np.repeat(row[:, None, :, None], h, axis=1), 3, axis=3).round().astype(np.uint8)


def test_video_round_trip_and_subsampling(tmp_path):
    frames = _smooth_frames(10)
    write_video(tmp_path / "v.mp4", frames, fps=10, crf=0)
    decoded, fps = read_video(tmp_path / "v.mp4")
    assert decoded.shape == frames.shape and fps == pytest.approx(10.0)
    assert np.abs(decoded.astype(float) - frames).mean() < 1.5  # yuv420p rounding only
    fewer, _ = read_video(tmp_path / "v.mp4", max_frames=4)
    assert len(fewer) == 4


def test_keyframes_cover_the_clip_and_prefer_sharp_frames():
    frames = _noise_frames(12)
    blurred = frames.copy()
    blurred[1] = (frames[1].astype(float) * 0 + frames[1].mean()).astype(np.uint8)  # flat = blurry
    assert laplacian_variance(blurred[1]) < 1e-6 < laplacian_variance(frames[0])
    keep = select_keyframes(blurred, KeyframeConfig(max_keyframes=6))
    assert len(keep) == 6
    assert [k // 2 for k in keep] == list(range(6))  # one per 2-frame segment
    assert keep[0] == 0  # frame 1 (blurred) passed over for frame 0


def _assert_error_and_no_output(source, tmp_path, match: str, **scene_kwargs) -> None:
    out = tmp_path / "out"
    config = VideoReconConfig(steps=5, scene=SceneConfig(**scene_kwargs), progress_bar=False)
    with pytest.raises(UserError, match=match):
        reconstruct(source, config, out)
    assert not out.exists() or not any(out.rglob("*")), "a failed run left files behind"


def test_unreadable_video_names_the_fix(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    _assert_error_and_no_output(bad, tmp_path, "re-encode")


def test_too_few_frames_names_the_fix(tmp_path):
    write_video(tmp_path / "short.mp4", _noise_frames(3))
    _assert_error_and_no_output(tmp_path / "short.mp4", tmp_path, "longer clip")


def test_static_camera_names_the_fix(tmp_path):
    frames = np.repeat(_noise_frames(1), 12, axis=0)
    write_video(tmp_path / "static.mp4", frames)
    _assert_error_and_no_output(tmp_path / "static.mp4", tmp_path, "walk around")


def test_sfm_registering_too_few_frames_names_the_fix(tmp_path):
    write_video(tmp_path / "smooth.mp4", _smooth_frames(12))
    _assert_error_and_no_output(tmp_path / "smooth.mp4", tmp_path, "more overlap")
