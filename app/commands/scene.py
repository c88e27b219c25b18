"""``sds3d scene synth``: write a procedural scene (the input of ``sds3d reconstruct --pipeline dprecon``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from recon.errors import SEED, UserError, checked

DPRECON_FIELDS: dict[str, str] = {"steps": "steps", "seed": "seed", "resolution": "resolution"}
"""The ``sds3d reconstruct --pipeline dprecon`` flags that set ``DPReconConfig`` (flag -> setting)."""


@dataclass
class SceneCommand:
    """Write a procedural scene for the scene pipelines (``synth``): a room with objects of the embedded
    world, its posed views, instance masks, depth, normals and prompts (sds3d's scene layout), held-out
    views in eval/ and ground-truth meshes in gt/."""

    action: Annotated[Literal["synth"], tyro.conf.Positional]
    """What to do: synth (write a procedural scene)."""
    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")] = checked(
        path="out_folder", fix="pass a new (or empty) folder for the scene"
    )
    """The scene folder to write (new or empty)."""
    objects: int = checked(4, low=3, high=6)
    """Objects in the room (3-6)."""
    views: int = checked(10, low=3, high=500)
    """Training views along the camera path (DP-Recon's sparse setting: 10)."""
    eval_views: int = checked(4, low=0, high=500)
    """Held-out views between them, written to eval/ (0: none)."""
    seed: int = checked(0, SEED)
    """Seed of the objects, their colours and their places."""
    width: int = checked(160, low=16, high=4096)
    """Image width in pixels."""
    height: int = checked(120, low=16, high=4096)
    """Image height in pixels."""

    def run(self) -> int:
        from recon.data.scene_synth import SceneSynthConfig, load_ground_truth, synth_scene

        config = SceneSynthConfig(
            num_objects=self.objects, num_views=self.views, eval_views=self.eval_views, seed=self.seed,
            width=self.width, height=self.height,
        )  # fmt: skip
        folder = synth_scene(self.out, config)
        gt = load_ground_truth(folder)
        print(f"scene: {folder} ({self.views} views, {self.eval_views} held out, {self.width}x{self.height})")
        for iid, obj in gt.description["objects"].items():
            print(f"  {iid}: {obj['caption']}")
        print(f"reconstruct it: sds3d reconstruct {folder} --pipeline dprecon")
        return 0


def run_dprecon(command) -> int:
    """``sds3d reconstruct SCENE_DIR --pipeline dprecon`` (``command`` is the ReconstructCommand): a scene
    folder with instance masks and prompts -> one textured mesh per object, the background, scene.glb."""
    import logging

    from recon.pipelines.dprecon import DPReconConfig, reconstruct

    video_only = {"max_frames": 60, "holdout_every": 8, "representation": "gaussians"}
    for flag, default in video_only.items():
        if getattr(command, flag) != default:
            raise UserError(f"--{flag.replace('_', '-')} does not apply to --pipeline dprecon; drop it")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = command.pipeline_config(DPReconConfig())
    run_dir = reconstruct(command.input, config, command.out, export_result=not command.no_export)
    print(f"run folder: {run_dir}")
    if not command.no_export:
        export = run_dir / "export"
        print(f"scene: {export / 'scene.glb'} (one node per object); objects: {export / 'objects'}")
    return 0
