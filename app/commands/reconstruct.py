"""``sds3d reconstruct``: a video, image folder, transforms.json or COLMAP folder to 3D Gaussians + mesh."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro

from app.presets import PresetCommand
from recon.errors import HOLDOUT_EVERY, IMAGE_SIDE, KEYFRAMES, SEED, STEPS, checked


@dataclass
class ReconstructCommand(PresetCommand):
    """Reconstruct a scene from a video or posed images (3D Gaussians, held-out metrics, GLB/OBJ/splats)."""

    PRESET_PIPELINES: ClassVar[tuple[str, ...]] = ("video_recon", "dprecon")
    PRESET_FIELDS: ClassVar[dict[str, str]] = {
        "max_frames": "scene.keyframes.max_keyframes",
        "steps": "steps",
        "resolution": "scene.resolution",
        "seed": "seed",
        "holdout_every": "holdout_every",
        "representation": "representation",
    }

    input: Annotated[Path | None, tyro.conf.Positional] = checked(
        None, path="exists", fix="pass a video, an image folder, a transforms.json or a COLMAP folder"
    )
    """A video (mp4, mov, ...), an image folder, a transforms.json or a COLMAP folder (sparse/0 + images);
    with --pipeline dprecon, a scene folder. Left out with --resume."""
    resume: Path | None = checked(None, path="folder", fix="pass the run folder `sds3d reconstruct` printed")
    """Continue a run in this folder from its last checkpoint, on its own scene (a video_recon run keeps
    its posed frames) and settings (its config.yaml): --steps, --seed or --resolution that differ from
    it are refused."""
    config: Path | None = None
    """A preset: a YAML file or the name of one in configs/ (video-recon, dprecon); the flags you give
    override it."""
    pipeline: Literal["video_recon", "dprecon"] = "video_recon"
    """The method: video_recon (a video or posed images -> 3D Gaussians or a NeRF) or dprecon (a scene
    folder with instance masks and prompts -> one textured mesh per object; `sds3d scene synth` makes one)."""
    out: Path = checked(Path("outputs"), path="out_folder")
    """Root of the output tree (the run goes to OUT/video_recon/<name>-<time>)."""
    max_frames: int = checked(60, KEYFRAMES)
    """Keyframes taken from a video at most."""
    steps: int | None = checked(None, STEPS)
    """Optimization steps (default: the pipeline's; video_recon 1500, dprecon 1000 + 300 over its two
    stages)."""
    resolution: int = checked(0, IMAGE_SIDE)
    """Longer image side used for fitting, in pixels (0: the input's)."""
    seed: int = checked(0, SEED)
    """Random seed."""
    holdout_every: int = checked(8, HOLDOUT_EVERY)
    """Hold out every k-th view for evaluation (0: none)."""
    representation: Literal["gaussians", "nerf"] = "gaussians"
    """What is fitted: 3D Gaussians (mesh + splats) or a NeRF field (mesh; preset video-recon-nerf)."""
    no_export: bool = False
    """Skip the mesh / splat export."""

    @classmethod
    def preset_fields(cls, pipeline: str | None = None) -> dict[str, str]:
        from app.commands.scene import DPRECON_FIELDS

        return DPRECON_FIELDS if pipeline == "dprecon" else cls.PRESET_FIELDS

    def check_argv(self, argv: list[str]) -> None:
        """Exactly one of INPUT and --resume; a resumed run's flags must agree with its config.yaml.

        Raises:
            UserError: naming what to drop or add.
        """
        from recon.errors import UserError

        if self.resume is None:
            if self.input is None:
                raise UserError(
                    "give the INPUT: a video, an image folder, a transforms.json, a COLMAP folder or (with "
                    "--pipeline dprecon) a scene folder; or --resume RUN_DIR to continue a run"
                )
            return
        if self.input is not None:
            raise UserError(
                f"--resume continues the run on its own scene; drop INPUT {self.input} (or start a new "
                "run without --resume)"
            )
        self.pipeline = self.resumed_pipeline(argv, ("dprecon", "video_recon"))

    def resume_command(self, run_dir: Path) -> str | None:
        """The command that continues ``run_dir``."""
        return f"sds3d reconstruct --resume {run_dir}"

    def video_config(self):
        from recon.pipelines.video_recon import VideoReconConfig

        return self.pipeline_config(VideoReconConfig())

    def run(self) -> int:
        import logging

        if self.pipeline == "dprecon":
            from app.commands.scene import run_dprecon

            return run_dprecon(self)
        from recon.pipelines.video_recon import reconstruct

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        if self.resume is not None:
            run_dir = reconstruct(resume=self.resume, export=not self.no_export)
        else:
            run_dir = reconstruct(self.input, self.video_config(), self.out, export=not self.no_export)
        print(f"run folder: {run_dir}")
        if not self.no_export:
            print(f"mesh: {run_dir / 'export' / 'model.glb'}")
        return 0
