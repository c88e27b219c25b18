"""``sds3d scene synth``: write a procedural scene (the input of ``sds3d reconstruct --pipeline dprecon``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from recon.errors import SEED, UserError, check_out_root, checked

DPRECON_FIELDS: dict[str, str] = {"steps": "steps", "seed": "seed", "resolution": "resolution"}
"""The ``sds3d reconstruct --pipeline dprecon`` flags that set ``DPReconConfig`` (flag -> setting)."""


@dataclass
class SceneSynth:
    """Write a procedural room with objects of the embedded world: posed views, instance masks, depth,
    normals and prompts (sds3d's scene layout), held-out views in eval/ and ground-truth meshes in gt/."""

    out: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")]
    """The scene folder to write (new or empty). A string, checked when the command starts
    (:func:`recon.errors.check_out_root`): the CLI matrix has no valid value for a required output folder."""
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

        check_out_root(self.out, "OUT_DIR")
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


@dataclass
class SceneInfo:
    """Read a scene folder (sds3d's layout or DP-Recon's) and say what it holds, or what is wrong with it."""

    scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE_DIR")] = checked(
        path="folder", fix="pass a scene folder (transforms.json or cameras.npz)"
    )
    """The scene folder."""

    def run(self) -> int:
        from recon.data.scene import load_instance_scene, scene_layout

        layout = scene_layout(self.scene)
        scene = load_instance_scene(self.scene)
        h, w = scene.images.shape[1:3]
        cues = [name for name, x in (("depth", scene.depths), ("normals", scene.normals)) if x is not None]
        cues_text = ", ".join(cues) or "none"
        print(f"scene {self.scene}: {layout} layout, {len(scene)} views of {w}x{h}, cues: {cues_text}")
        for iid in scene.instance_ids:
            seen = int(((scene.masks == iid).flatten(1).sum(-1) > 0).sum())
            pixels = int((scene.masks == iid).sum())
            prompt = scene.prompts.get(iid, "(no prompt: no SDS on it)")
            print(f"  {iid}: {prompt} - {pixels} mask pixels in {seen} of {len(scene)} views")
        return 0


@dataclass
class SceneCommand:
    """Make or check scene folders for the scene pipelines (DP-Recon)."""

    action: tyro.conf.OmitSubcommandPrefixes[
        Annotated[SceneSynth, tyro.conf.subcommand("synth", prefix_name=False)]
        | Annotated[SceneInfo, tyro.conf.subcommand("info", prefix_name=False)]
    ]

    def run(self) -> int:
        return self.action.run()


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
    if command.resume is not None:
        run_dir = reconstruct(resume=command.resume, export_result=not command.no_export)
    else:
        config = command.pipeline_config(DPReconConfig())
        run_dir = reconstruct(command.input, config, command.out, export_result=not command.no_export)
    print(f"run folder: {run_dir}")
    if not command.no_export:
        export = run_dir / "export"
        print(f"scene: {export / 'scene.glb'} (one node per object); objects: {export / 'objects'}")
    return 0
