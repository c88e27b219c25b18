"""``sds3d generate``: text to a textured mesh and splats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro

from app.presets import PresetCommand


@dataclass
class GenerateCommand(PresetCommand):
    """Make a 3D asset from a text prompt (optimization + export of GLB, OBJ, splats)."""

    PRESET_PIPELINES: ClassVar[tuple[str, ...]] = ("stabledreamer",)
    PRESET_FIELDS: ClassVar[dict[str, str]] = {
        name: name
        for name in (
            "prompt", "representation", "prior", "color_prior", "allow_download", "steps", "seed",
            "checkpoint_every",
        )
    }  # fmt: skip

    prompt: Annotated[str, tyro.conf.Positional] = ""
    """What to make, e.g. "a red cube"."""
    config: Path | None = None
    """A preset: a YAML file or the name of one in configs/ (stabledreamer, stabledreamer-nerf,
    stabledreamer-if-sd); the flags you give override it."""
    pipeline: Literal["stabledreamer"] = "stabledreamer"
    """The method."""
    representation: Literal["gaussians", "nerf"] = "gaussians"
    """What is optimized: 3D Gaussians or a NeRF density field."""
    prior: str = "embedded"
    """Diffusion prior: embedded (no download, CPU-friendly), embedded-exemplar, embedded-unet,
    embedded-unet-latent, a hub id (e.g. stabilityai/stable-diffusion-2-1-base) or a local diffusers
    folder."""
    color_prior: str = "same"
    """Prior of the color stage: same, a hub id or a local folder."""
    allow_download: bool = False
    """Allow downloading hub checkpoints (off: only what is cached locally)."""
    steps: int = 300
    """Optimization steps."""
    seed: int = 0
    """Random seed."""
    checkpoint_every: int = 100
    """Steps between checkpoints (a killed run loses at most this many)."""
    out: Path = Path("outputs")
    """Root of the output tree."""
    resume: Path | None = None
    """Resume the run in this folder from its last checkpoint (other options are read from it)."""
    faces: int = 20_000
    """Face budget of the exported mesh."""
    texture_size: int = 512
    """Side of the baked texture."""
    no_export: bool = False
    """Skip the export step."""

    def run(self) -> int:
        import logging

        from recon.pipelines import generate
        from recon.pipelines.stabledreamer import StableDreamerConfig

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        config = None
        if self.resume is None:
            config = self.pipeline_config(StableDreamerConfig())
        run_dir = generate(
            config, self.pipeline, self.out, resume=self.resume, export=not self.no_export,
            export_options={"faces": self.faces, "texture_size": self.texture_size},
        )  # fmt: skip
        print(f"run folder: {run_dir}")
        if not self.no_export:
            print(f"mesh: {run_dir / 'export' / 'model.glb'}")
        return 0
