"""The "Avatar" tab: one portrait (its face landmarks, optionally its mask) to an animatable head avatar.

Zero-1-to-A (Zhou et al. 2025, https://arxiv.org/abs/2503.15851) through
:func:`recon.pipelines.zero1toa.run_avatar`, as ``sds3d avatar`` runs it
(:func:`app.commands.avatar.run_with_progress`, in a :class:`app.jobs.RunJob` worker so that Cancel stops it
after its current step). The form values become a checked
:class:`~recon.pipelines.zero1toa.Zero1toAConfig` and the portrait's arrays here
(:func:`make_avatar_inputs`: plain values in, :class:`recon.errors.UserError` naming the form field out),
before anything is queued. The tab has its own result panel (status, the preview grid, the driven video,
downloads): an avatar is not a mesh-and-splats run of the shared panel.

Gradio is imported inside :func:`build_avatar_tab` only (the app sets its environment first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.commands.avatar import CHECKPOINT
from app.jobs import RunJob
from app.tabs.common import bounded, field_error, field_validator, stream_job
from app.tabs.common import new_run_folder as common_run_folder
from app.tabs.image import IMAGE_SUFFIXES, _check_source

FIELDS = ("portrait", "landmarks", "mask", "mode", "steps", "portrait_steps", "seed", "video_prior",
          "allow_download")  # fmt: skip
"""The endpoint's inputs, in order (also the names ``err.field`` uses)."""
LIMITS: dict[str, tuple[int, int]] = {
    "steps": (1, 20_000),
    "portrait steps": (0, 5_000),
    "seed": (0, 2**32 - 1),
}
"""Server-side bounds of the tab's numeric fields."""
MODES = ("symgen", "sds")
VIDEO_PRIOR_CHOICES = ("embedded",)
"""Offered in the video prior box; a Stable Video Diffusion hub id or local diffusers folder can be typed."""
RUN_FOLDER = "zero1toa"
"""Runs go to ``outputs/zero1toa/<portrait name>-<time>``."""
LANDMARKS_INFO = (
    "JSON: a list of 51 or 68 iBUG [x, y] pixel points (any face landmark detector: face-alignment, dlib, "
    "MediaPipe mapped to iBUG-68), or `sds3d heads synth`'s portrait_N.json"
)


@dataclass
class AvatarInputs:
    """A checked form: the run's config and the portrait's arrays."""

    config: Any  # Zero1toAConfig
    image: Any  # [H, W, 3] float in [0, 1]
    landmarks: Any  # [51 or 68, 2] pixels
    mask: Any  # [H, W] bool or None
    focal: float | None
    name: str  # the portrait's file stem


def embedded_video_dir() -> Path:
    """``priors.video.EMBEDDED_VIDEO_DIR``, found without importing ``priors.video`` (diffusers: seconds)."""
    import importlib.util

    video_module = Path(importlib.util.find_spec("priors.video").origin).resolve()
    return video_module.parent.parent / "assets" / "embedded-video"


def _bounded(field: str, name: str, value: Any) -> int:
    return bounded(field, name, value, LIMITS)


def _suffix(field: str, path: str, suffixes: tuple[str, ...], what: str) -> None:
    if Path(path).suffix.lower() not in suffixes:
        raise field_error(
            field, f"{what} {Path(path).name!r} is not a {' or '.join(suffixes)} file; upload one"
        )


def make_avatar_inputs(
    portrait: str | None,
    landmarks: str | None,
    mask: str | None = None,
    mode: str = "symgen",
    steps: Any = 600,
    portrait_steps: Any = 150,
    seed: Any = 0,
    video_prior: str = "embedded",
    allow_download: bool = False,
    *,
    allowed_prior_dirs: list[Path] | None = None,
    avatar_config: dict[str, Any] | None = None,
    read_files: bool = True,
) -> AvatarInputs:
    """The checked run of the tab's form values.

    Args:
        portrait: Path of the uploaded portrait.
        landmarks: Path of the uploaded landmarks JSON.
        mask: Path of the uploaded mask, if any.
        allowed_prior_dirs: Folders a local video prior may be read from (``None``: anywhere).
        avatar_config: Further :class:`Zero1toAConfig` settings (the app's; tests make runs small).
        read_files: Also read the files and check the face (landmarks in the image, a non-empty mask).

    Raises:
        UserError: naming the fix and, in ``err.field``, the form field at fault.
    """
    from recon.errors import UserError, check_fields

    if not portrait:
        raise field_error("portrait", "upload a portrait first (a PNG, JPEG or WebP picture of one face)")
    _suffix("portrait", portrait, IMAGE_SUFFIXES, "the portrait")
    if not landmarks:
        raise field_error("landmarks", f"upload the portrait's face landmarks: {LANDMARKS_INFO}")
    _suffix("landmarks", landmarks, (".json",), "the landmarks file")
    if mask:
        _suffix("mask", mask, IMAGE_SUFFIXES, "the mask")
    if mode not in MODES:
        raise field_error("mode", f"mode is symgen or sds, got {mode!r}")
    numbers = {
        "steps": _bounded("steps", "steps", steps),
        "portrait_steps": _bounded("portrait_steps", "portrait steps", portrait_steps),
        "seed": _bounded("seed", "seed", 0 if seed is None else seed),
    }
    video_prior = _check_source(
        "video_prior", "video prior", video_prior, allowed_prior_dirs, VIDEO_PRIOR_CHOICES
    )
    if video_prior == "embedded" and not (embedded_video_dir() / "model_index.json").is_file():
        raise field_error(
            "video_prior",
            f"the embedded video prior is not shipped (looked in {embedded_video_dir()}); type a Stable "
            "Video Diffusion folder or hub id",
        )
    from recon.pipelines.zero1toa import Zero1toAConfig  # after the cheap checks

    try:
        settings = {**(avatar_config or {}), **numbers, "mode": mode, "video_prior": video_prior,
                    "allow_download": bool(allow_download)}  # fmt: skip
        config = Zero1toAConfig(**settings)
        check_fields(config)
    except UserError as err:
        raise field_error("steps", str(err)) from None
    image = marks = mask_array = focal = None
    if read_files:
        image, marks, mask_array, focal = read_portrait(portrait, landmarks, mask)
    return AvatarInputs(config, image, marks, mask_array, focal, Path(portrait).stem)


def read_portrait(portrait: str, landmarks: str, mask: str | None) -> tuple[Any, Any, Any, float | None]:
    """``(image, landmarks, mask, focal)`` of the uploads, the face checked as the pipeline checks it.

    Raises:
        UserError: an unreadable picture, landmarks or mask, or no usable face (``err.field`` names which).
    """
    from app.commands.heads import _json_focal
    from recon.errors import UserError
    from recon.parametric.head_fit import check_portrait_inputs, load_portrait

    try:
        image, marks, mask_array = load_portrait(portrait, landmarks, mask or None)
    except UserError as err:
        message = str(err)
        starts = {"the mask": "mask", "the portrait": "portrait"}
        field = next((f for prefix, f in starts.items() if message.startswith(prefix)), "landmarks")
        raise field_error(field, message) from None
    try:
        check_portrait_inputs(marks, mask_array, image.shape[1], image.shape[0])
    except UserError as err:
        raise field_error("mask" if "mask" in str(err) else "landmarks", str(err)) from None
    return image, marks, mask_array, _json_focal(Path(landmarks))


def new_run_folder(outputs: Path, name: str) -> Path:
    """``outputs/zero1toa/<name>-<time>`` (``-1``, ``-2``, ... when taken); not created."""
    return common_run_folder(outputs, RUN_FOLDER, name, "portrait")


def result_files(run_dir: Path) -> dict[str, Path | None]:
    """The run's preview, driven video and downloads (None where missing)."""
    names = {"preview": "preview.png", "video": "driven.mp4", "avatar": "avatar.pt", "glb": "head.glb",
             "metrics": "metrics.json"}  # fmt: skip
    return {k: (run_dir / n if (run_dir / n).is_file() else None) for k, n in names.items()}


# ---------------------------------------------------------------- the Gradio tab
def build_avatar_tab(
    outputs: Path,
    user_error: Callable[[Exception], Exception],
    allowed_prior_dirs: list[Path] | None = None,
    avatar_config: dict[str, Any] | None = None,
) -> Any:
    """Builds the Avatar tab (inside the caller's ``gr.Tab``) with its own result panel, and wires it.

    Args:
        outputs: Root of the output tree (runs go to ``outputs/zero1toa/``).
        user_error: Turns a :class:`recon.errors.UserError` into the app's ``gr.Error``.
        allowed_prior_dirs: Folders a local video prior may be read from (``None``: anywhere).
        avatar_config: Further :class:`Zero1toAConfig` settings of every run (tests make runs small).

    Returns:
        The Create event.
    """
    import gradio as gr

    def form(*values: Any, read_files: bool = True) -> AvatarInputs:
        return make_avatar_inputs(*values, allowed_prior_dirs=allowed_prior_dirs, avatar_config=avatar_config,
                                  read_files=read_files)  # fmt: skip

    validate_fn = field_validator(form, FIELDS, "portrait")

    def avatar_fn(
        portrait: str | None, landmarks: str | None, mask: str | None, mode: str, steps: float,
        portrait_steps: float, seed: float, video_prior: str, allow_download: bool,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's injection idiom
    ) -> Iterator[tuple]:  # fmt: skip
        """Runs Zero-1-to-A on the portrait; streams (status, preview, driven video, downloads)."""
        from recon.errors import UserError

        values = (portrait, landmarks, mask, mode, steps, portrait_steps, seed, video_prior, allow_download)
        try:
            inputs = form(*values)
        except UserError as err:
            raise user_error(err) from None
        config = inputs.config
        run_dir = new_run_folder(outputs, inputs.name)
        state = {"step": 0}

        def target(hooks: Any) -> Path:
            import shutil

            from app.commands.avatar import run_with_progress

            def should_stop() -> bool:  # polled once after every step
                state["step"] += 1
                return bool(hooks.should_stop and hooks.should_stop())

            try:
                run_with_progress(config, inputs.image, inputs.landmarks, run_dir, inputs.mask, inputs.focal,
                                  should_stop=should_stop)  # fmt: skip
            except BaseException:  # cancelled or failed: kept only when resumable (`sds3d avatar P RUN_DIR`)
                if not (run_dir / CHECKPOINT).is_file():
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
            return run_dir

        progress(0.0, desc="loading the video prior and fitting the head")
        total = config.portrait_steps + config.steps
        started = f"Started: `{inputs.name}`, {config.mode}, {total} steps."
        job = RunJob(target).start()

        def status() -> str:
            return f"Training `{run_dir.name}`: step {state['step']} of {total}."

        yield from stream_job(job, started, status, user_error)
        yield done_outputs(run_dir)

    def done_outputs(run_dir: Path) -> tuple:
        import json

        from app.commands.avatar import metrics_line

        files = result_files(run_dir)
        metrics = json.loads(files["metrics"].read_text()) if files["metrics"] else None
        message = f"Done: `{run_dir}`" + (f" — {metrics_line(metrics)}" if metrics else "")
        downloads = [str(files[k]) for k in ("avatar", "glb") if files[k]]
        as_str = {k: str(v) if v else None for k, v in files.items()}
        return message, as_str["preview"], as_str["video"], downloads

    gr.Markdown(
        "Zero-1-to-A ([Zhou et al. 2025](https://arxiv.org/abs/2503.15851)): the head model fitted to the "
        "portrait, Gaussians bound to it, then distilled from a video prior through pseudo-ground-truth "
        "clips (SymGEN), cameras first, then expressions. `sds3d heads synth portraits/ --count 1` makes a "
        "portrait with its landmarks and mask."
    )
    suffixes = list(IMAGE_SUFFIXES)
    portrait = gr.File(label="Portrait (PNG, JPEG or WebP; one face)", type="filepath", file_types=suffixes,
                       elem_id="avatar-portrait")  # fmt: skip
    landmarks = gr.File(label="Face landmarks (JSON)", type="filepath", file_types=[".json"],
                        elem_id="avatar-landmarks")  # fmt: skip
    gr.Markdown(LANDMARKS_INFO)
    mask = gr.File(label="Head mask (optional; white = head, the portrait's size)", type="filepath",
                   file_types=suffixes, elem_id="avatar-mask")  # fmt: skip
    mode = gr.Radio(list(MODES), value="symgen", label="Mode",
                    info="symgen: pseudo-ground-truth clips (the method); sds: video score distillation "
                    "(the ablation)")  # fmt: skip
    with gr.Row():
        steps = gr.Number(600, label="Steps", precision=0, info="video stages: spatial, then temporal")
        portrait_steps = gr.Number(
            150, label="Portrait steps", precision=0, info="fitting the portrait first"
        )
    with gr.Accordion("Advanced settings", open=False):
        seed = gr.Number(0, label="Seed", precision=0)
        video_prior = gr.Dropdown(
            list(VIDEO_PRIOR_CHOICES), value="embedded", allow_custom_value=True, label="Video prior",
            info="embedded (offline), or type a Stable Video Diffusion hub id or a local diffusers folder",
        )  # fmt: skip
        allow_download = gr.Checkbox(False, label="Allow downloading a hub video prior")
    with gr.Row():
        create_button = gr.Button("Create avatar", variant="primary", elem_id="avatar-create")
        cancel_button = gr.Button("Cancel", variant="stop", elem_id="avatar-cancel")
    status = gr.Markdown("", elem_id="avatar-status")
    preview = gr.Image(label="Preview (turning, then expressions)", type="filepath", interactive=False)
    video = gr.Video(label="Driven video", interactive=False, elem_id="avatar-video")
    downloads = gr.File(label="Downloads (avatar.pt, head.glb)", file_count="multiple", interactive=False)

    inputs = [portrait, landmarks, mask, mode, steps, portrait_steps, seed, video_prior, allow_download]
    event = create_button.click(
        avatar_fn, inputs, [status, preview, video, downloads], api_name="avatar", concurrency_limit=1,
        concurrency_id="generate", validator=validate_fn, show_progress="full",
    )  # fmt: skip
    cancel_button.click(None, None, None, cancels=[event])
    return event
