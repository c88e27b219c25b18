"""``sds3d reconstruct``: a video, image folder, transforms.json or COLMAP folder to 3D Gaussians + mesh."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro


@dataclass
class ReconstructCommand:
    """Reconstruct a scene from a video or posed images (3D Gaussians, held-out metrics, GLB/OBJ/splats)."""

    input: Annotated[Path, tyro.conf.Positional]
    """A video (mp4, mov, ...), an image folder, a transforms.json or a COLMAP folder (sparse/0 + images)."""
    out: Path = Path("outputs")
    """Root of the output tree (the run goes to OUT/video_recon/<name>-<time>)."""
    max_frames: int = 60
    """Keyframes taken from a video at most."""
    steps: int = 1500
    """Optimization steps."""
    resolution: int = 0
    """Longer image side used for fitting, in pixels (0: the input's)."""
    seed: int = 0
    """Random seed."""
    holdout_every: int = 8
    """Hold out every k-th view for evaluation (0: none)."""
    no_export: bool = False
    """Skip the mesh / splat export."""

    def config(self):
        from recon.pipelines.video_recon import reconstruct_config

        return reconstruct_config(self.max_frames, self.steps, self.resolution, self.seed, self.holdout_every)

    def run(self) -> int:
        import logging

        from recon.pipelines.video_recon import reconstruct

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        run_dir = reconstruct(self.input, self.config(), self.out, export=not self.no_export)
        print(f"run folder: {run_dir}")
        if not self.no_export:
            print(f"mesh: {run_dir / 'export' / 'model.glb'}")
        return 0
