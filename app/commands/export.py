"""``sds3d export``: (re)export a run's result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from recon.errors import FACES, TEXTURE_SIZE, checked


@dataclass
class ExportCommand:
    """Export a run as a textured mesh (GLB, OBJ+MTL+PNG) and/or Gaussian splats (PLY, .splat)."""

    run_dir: Annotated[Path, tyro.conf.Positional] = checked(
        path="folder", fix="it has no checkpoint to export: pass the run folder `sds3d generate` printed"
    )
    """The run folder printed by `sds3d generate`."""
    format: tuple[Literal["glb", "obj", "ply", "splat"], ...] = checked(
        ("glb", "obj", "ply", "splat"), nonempty=True, fix="choose from glb obj ply splat"
    )
    """What to write into RUN_DIR/export."""
    faces: int = checked(20_000, FACES)
    """Face budget of the mesh."""
    texture_size: int = checked(512, TEXTURE_SIZE)
    """Side of the baked texture in texels."""
    method: Literal["auto", "marching_cubes", "tsdf", "carve"] = "auto"
    """Surface extraction: auto = space carving of the rendered silhouettes with a depth tolerance
    (carve) for text-to-3D Gaussians, TSDF fusion of rendered depth for other Gaussian runs (video
    reconstructions), marching cubes for fields (NeRF/SDF runs)."""

    def run(self) -> int:
        import logging

        from recon.runs import export_run

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        method = None if self.method == "auto" else self.method
        paths = export_run(
            self.run_dir, tuple(self.format), faces=self.faces, texture_size=self.texture_size, method=method
        )
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        return 0
