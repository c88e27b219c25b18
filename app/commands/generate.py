"""``sds3d generate``: text to a textured mesh and splats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro

from app.presets import PresetCommand
from recon.errors import CHECKPOINT_EVERY, FACES, SEED, STEPS, TEXTURE_SIZE, checked


@dataclass
class GenerateCommand(PresetCommand):
    """Make a 3D asset from a text prompt (optimization + export of GLB, OBJ, splats)."""

    PRESET_PIPELINES: ClassVar[tuple[str, ...]] = ("stabledreamer", "dreamcraft3d")
    PRESET_FIELDS: ClassVar[dict[str, str]] = {
        name: name
        for name in (
            "prompt", "representation", "prior", "color_prior", "allow_download", "steps", "seed",
            "checkpoint_every", "device", "dtype",
        )
    }  # fmt: skip
    IMAGE_FIELDS: ClassVar[dict[str, str]] = {
        name: name
        for name in (
            "prompt", "image", "mask", "prior", "view_prior", "texture_guidance", "allow_download", "steps",
            "seed", "checkpoint_every", "device", "dtype",
        )
    }  # fmt: skip
    """The flags of ``--pipeline dreamcraft3d`` (image to 3D)."""

    prompt: Annotated[str, tyro.conf.Positional] = ""
    """What to make, e.g. "a red cube"."""
    config: Path | None = None
    """A preset: a YAML file or the name of one in configs/ (stabledreamer, stabledreamer-nerf,
    stabledreamer-if-sd); the flags you give override it."""
    pipeline: Literal["stabledreamer", "dreamcraft3d"] = "stabledreamer"
    """The method: stabledreamer (text to 3D) or dreamcraft3d (image to 3D: needs --image)."""
    image: str = checked("", path="file", suffixes=(".png", ".jpg", ".jpeg", ".webp", ".bmp"))
    """dreamcraft3d: the reference picture (RGBA keeps its alpha as the mask; RGB on a plain
    background is segmented)."""
    mask: str = checked("", path="file")
    """dreamcraft3d: a mask image (white = object) that overrides the picture's segmentation."""
    view_prior: str = "embedded"
    """dreamcraft3d: view-conditioned prior: embedded (assets/embedded-view, a miniature Zero123), none
    (the ablation), a Zero123 diffusers folder or hub id."""
    texture_guidance: Literal["bsd", "sds"] = "bsd"
    """dreamcraft3d: texture-stage guidance, bootstrapped score distillation or plain SDS."""
    representation: Literal["gaussians", "nerf"] = "gaussians"
    """stabledreamer: what is optimized, 3D Gaussians or a NeRF density field."""
    prior: str = "embedded"
    """Diffusion prior: embedded (no download, CPU-friendly), embedded-exemplar, embedded-unet,
    embedded-unet-latent, a hub id (e.g. stabilityai/stable-diffusion-2-1-base) or a local diffusers
    folder."""
    color_prior: str = "same"
    """Prior of the color stage: same, a hub id or a local folder."""
    allow_download: bool = False
    """Allow downloading hub checkpoints (off: only what is cached locally)."""
    steps: int | None = checked(None, STEPS)
    """Optimization steps (default: the pipeline's; stabledreamer 1500; dreamcraft3d splits them over
    its four stages in the proportions of its defaults, 300/100/200/200)."""
    seed: int = checked(0, SEED)
    """Random seed."""
    checkpoint_every: int = checked(100, CHECKPOINT_EVERY)
    """Steps between checkpoints (a killed run loses at most this many)."""
    device: str = checked("auto", nonempty=True, fix="use auto, cpu, cuda or cuda:N")
    """Where the run computes: auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N."""
    dtype: str = checked("auto", nonempty=True, fix="use auto, float32, float16 or bfloat16")
    """Weights dtype of the priors: auto (float16 on CUDA, float32 on the CPU), float32, float16, bfloat16."""
    out: Path = checked(Path("outputs"), path="out_folder")
    """Root of the output tree."""
    resume: Path | None = checked(None, path="folder", fix="pass the run folder `sds3d generate` printed")
    """Resume the run in this folder from its last checkpoint. Its settings are read from its config.yaml:
    a prompt, --steps, --seed (or another setting of the run) that differs from it is refused; only
    --faces, --texture-size and --no-export (the export) may change."""
    faces: int = checked(20_000, FACES)
    """Face budget of the exported mesh."""
    texture_size: int = checked(512, TEXTURE_SIZE)
    """Side of the baked texture."""
    no_export: bool = False
    """Skip the export step."""

    def check_argv(self, argv: list[str]) -> None:
        """Refuses a ``--resume`` whose flags on the command line conflict with the run's config.yaml.

        Raises:
            UserError: naming the flag, its value and the run's.
        """
        from recon.errors import UserError

        if self.resume is None:
            given = {a.split("=", 1)[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
            own = set(self.preset_fields(self.pipeline))
            for flag in sorted(given & (set(self.PRESET_FIELDS) | set(self.IMAGE_FIELDS)) - own):
                raise UserError(
                    f"--{flag.replace('_', '-')} does not apply to --pipeline {self.pipeline}; drop it"
                    + (" or add --pipeline dreamcraft3d" if flag in self.IMAGE_FIELDS else "")
                )
            if self.pipeline == "dreamcraft3d" and not self.image and self.config is None:
                raise UserError(
                    "--pipeline dreamcraft3d makes 3D from a picture: give it with --image PICTURE.png"
                )
            return
        self.resumed_pipeline(argv)

    def resume_command(self, run_dir: Path) -> str:
        """The command that continues ``run_dir`` (shown when a run is interrupted)."""
        return f"sds3d generate --resume {run_dir}"

    @classmethod
    def preset_fields(cls, pipeline: str | None = None) -> dict[str, str]:
        return cls.IMAGE_FIELDS if pipeline == "dreamcraft3d" else cls.PRESET_FIELDS

    def run(self) -> int:
        import logging

        from recon.pipelines import generate
        from recon.pipelines.dreamcraft3d import DreamCraft3DConfig
        from recon.pipelines.stabledreamer import StableDreamerConfig

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        config = None
        if self.resume is None:
            default = DreamCraft3DConfig() if self.pipeline == "dreamcraft3d" else StableDreamerConfig()
            config = self.pipeline_config(default)
        run_dir = generate(
            config, self.pipeline, self.out, resume=self.resume, export=not self.no_export,
            export_options={"faces": self.faces, "texture_size": self.texture_size},
        )  # fmt: skip
        print(f"run folder: {run_dir}")
        if not self.no_export:
            print(f"mesh: {run_dir / 'export' / 'model.glb'}")
        return 0
