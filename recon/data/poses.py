"""Camera poses from images with COLMAP (pycolmap): SIFT features, matching, incremental mapping.

Schönberger & Frahm, "Structure-from-Motion Revisited", CVPR 2016, https://colmap.github.io/.
For a video the frames share one camera (``CameraMode.SINGLE``) and are matched sequentially
(each frame with its next ``overlap`` frames, plus loop detection off); for an unordered image set
every pair is matched. The largest reconstructed model is kept and its images are undistorted to a
pinhole camera (COLMAP's undistorter), so the rest of sds3d sees plain pinhole cameras.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recon.errors import FRACTION, SEED, UserError, checked

log = logging.getLogger("sds3d.poses")


@dataclass
class SfMConfig:
    """Structure-from-motion settings."""

    matching: Literal["auto", "sequential", "exhaustive"] = "auto"
    """``sequential`` for video frames, ``exhaustive`` for unordered photos; ``auto`` picks exhaustive
    up to ``exhaustive_max_images`` images, sequential above."""
    exhaustive_max_images: int = checked(40, low=0, high=100_000)
    """Largest image set ``auto`` matches exhaustively."""
    sequential_overlap: int = checked(10, low=1, high=10_000)
    """Sequential matching: each image is matched with this many following images."""
    max_features: int = checked(4096, low=1, high=1_000_000)
    """SIFT features per image at most."""
    peak_threshold: float = checked(0.002, FRACTION)
    """SIFT peak threshold (COLMAP's default 0.0067 finds few features in small, low-contrast frames)."""
    camera_model: str = checked("SIMPLE_RADIAL", nonempty=True)
    """COLMAP camera model (``SIMPLE_RADIAL``: one focal length and one radial distortion term;
    ``SIMPLE_PINHOLE`` for distortion-free input; ``OPENCV`` for wide lenses)."""
    min_inliers: int = checked(15, low=1, high=100_000)
    """Inlier matches needed to register an image (twice this to start a model; COLMAP's defaults,
    30 and 100, suit megapixel photos, not 160-pixel frames)."""
    min_registered_fraction: float = checked(0.5, FRACTION)
    """Fail when SfM registers fewer than this fraction of the images."""
    min_registered: int = checked(6, low=0, high=100_000)
    """Fail when SfM registers fewer images than this."""
    single_camera: bool = True
    """All images share one camera (true for a video; false for photos from several cameras)."""
    num_threads: int = checked(2, low=-1, high=1024)
    """Threads for extraction, matching and mapping (-1: all cores)."""
    seed: int = checked(0, SEED)
    """Seed of COLMAP's RANSAC and mapper (reproducible poses)."""


def import_pycolmap():
    """Imports pycolmap after PyAV and Pillow: loaded first, its bundled libraries make a later
    PyAV decode + Pillow PNG save abort the process (double free; pycolmap 4.2.1, av 18)."""
    import av  # noqa: F401
    import PIL.Image  # noqa: F401
    import pycolmap

    return pycolmap


def run_sfm(image_dir: Path, work_dir: Path, config: SfMConfig) -> Path:
    """Runs COLMAP on the images in ``image_dir``; returns an undistorted COLMAP folder.

    The folder holds ``images/`` (undistorted) and ``sparse/`` (a pinhole model), the layout
    :func:`recon.data.datasets.load_colmap` reads.

    Raises:
        UserError: Too few images registered (no model, or a small part of the images).
    """
    pycolmap = import_pycolmap()
    names = sorted(p.name for p in image_dir.iterdir() if p.is_file())
    if len(names) < 2:
        raise UserError(f"{image_dir} holds {len(names)} images; give at least {config.min_registered}")
    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "database.db"
    database.unlink(missing_ok=True)
    pycolmap.set_random_seed(config.seed)

    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = config.num_threads
    extraction.sift.max_num_features = config.max_features
    extraction.sift.peak_threshold = config.peak_threshold
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = config.camera_model
    mode = pycolmap.CameraMode.SINGLE if config.single_camera else pycolmap.CameraMode.AUTO
    pycolmap.extract_features(
        database, image_dir, image_names=names, camera_mode=mode, reader_options=reader,
        extraction_options=extraction, device=pycolmap.Device.cpu,
    )  # fmt: skip

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = config.num_threads
    kind = config.matching
    if kind == "auto":
        kind = "exhaustive" if len(names) <= config.exhaustive_max_images else "sequential"
    if kind == "sequential":
        pairing = pycolmap.SequentialPairingOptions(overlap=config.sequential_overlap, loop_detection=False)
        pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                                  device=pycolmap.Device.cpu)  # fmt: skip
    else:
        pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = config.num_threads
    options.random_seed = config.seed
    options.mapper.random_seed = config.seed
    options.min_model_size = 3
    options.mapper.init_min_num_inliers = config.min_inliers * 2
    options.mapper.abs_pose_min_num_inliers = config.min_inliers
    options.mapper.init_min_tri_angle = 8.0
    sparse = work_dir / "sparse"
    shutil.rmtree(sparse, ignore_errors=True)
    sparse.mkdir()
    models = pycolmap.incremental_mapping(database, image_dir, sparse, options)
    best = max(models.values(), key=lambda r: r.num_reg_images(), default=None)
    registered = 0 if best is None else best.num_reg_images()
    needed = max(config.min_registered, int(round(config.min_registered_fraction * len(names))))
    log.info("SfM (%s matching): %d of %d images registered", kind, registered, len(names))
    if registered < needed:
        raise UserError(
            f"structure-from-motion registered {registered} of {len(names)} frames (need {needed}); the "
            "views overlap too little or show too little texture: film more slowly with more overlap "
            "between frames, keep textured surfaces in view, move the camera around the object "
            "(not only rotate it), or pass more frames (--max-frames)"
        )
    model_dir = work_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir()
    best.write(model_dir)
    undistorted = work_dir / "undistorted"
    shutil.rmtree(undistorted, ignore_errors=True)
    pycolmap.undistort_images(undistorted, model_dir, image_dir, num_threads=config.num_threads)
    return undistorted
