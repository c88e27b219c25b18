"""The Gradio UI of sds3d: prompt in, live progress and previews, 3D viewers, downloads, earlier runs.

Thin by design: every result comes from :func:`recon.pipelines.generate`; this module only builds
configs from form values, runs the library in a worker thread (so that previews can be shown while it
trains) and lays files out for Gradio. Gradio is imported inside :func:`build_app`, after the
environment (temp folder, analytics) is set, so importing this module stays cheap.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import typing
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("sds3d.app")

EXAMPLE_PROMPTS = ("a red cube", "a blue sphere", "a green cone", "a yellow torus", "a purple cylinder")
"""Prompts the embedded prior knows (five shapes in eight colors)."""
PRIOR_CHOICES = ("embedded", "embedded-exemplar", "embedded-unet")
"""Offered in the prior box; a hub id or a local diffusers folder can be typed instead."""
EMBEDDED_PRIORS = frozenset(PRIOR_CHOICES)
MAX_GALLERY_RUNS = 60
"""Earlier runs shown in the gallery (newest first)."""
POLL_SECONDS = 0.5
"""How often the UI looks for a new checkpoint (preview) while a run trains."""


def pipeline_choices() -> tuple[str, ...]:
    """The pipeline presets, as the ``sds3d generate`` command declares them (no torch import)."""
    from app.commands.generate import GenerateCommand

    return typing.get_args(typing.get_type_hints(GenerateCommand)["pipeline"])


# ---------------------------------------------------------------- form values -> library calls
def make_config(
    prompt: str,
    prior: str = "embedded",
    allow_download: bool = False,
    steps: int = 300,
    seed: int = 0,
    guidance: float = 15.0,
    views_per_step: int = 4,
    preview_every: int = 100,
) -> Any:
    """A validated ``StableDreamerConfig`` from the form values.

    Raises:
        UserError: when a run could not start with these values (the message says the fix).
    """
    from dataclasses import replace

    from recon.errors import UserError
    from recon.pipelines.stabledreamer import StableDreamerConfig, validate

    if steps is None or int(steps) != steps:
        raise UserError(f"steps must be a whole number, got {steps!r}")
    if preview_every is None or int(preview_every) <= 0:
        raise UserError(f"'preview every' must be a positive number of steps, got {preview_every!r}")
    base = StableDreamerConfig()
    config = StableDreamerConfig(
        prompt=(prompt or "").strip(), prior=(prior or "embedded").strip(),
        allow_download=bool(allow_download),
        steps=int(steps), seed=int(seed or 0), views_per_step=int(views_per_step),
        sds=replace(base.sds, guidance_scale=float(guidance)), checkpoint_every=int(preview_every),
        progress_bar=True,
    )  # fmt: skip
    validate(config)
    if config.sds.guidance_scale <= 0:
        raise UserError(f"guidance must be positive, got {guidance}")
    return config


def check_prior_source(prior: str, allowed_dirs: list[Path] | None) -> None:
    """Refuses a local prior folder outside ``allowed_dirs`` (``None``: no restriction).

    A server that listens beyond this machine must not let a visitor make it read (and unpickle)
    any folder on disk: hub ids and embedded names pass, local paths must lie in an allowed folder.

    Raises:
        UserError: naming the allowed folders and the option that adds one.
    """
    from recon.errors import UserError

    prior = (prior or "").strip()
    if allowed_dirs is None or prior in EMBEDDED_PRIORS:
        return
    path = Path(prior).expanduser()
    looks_local = path.is_absolute() or prior.startswith((".", "~")) or path.exists()
    if not looks_local:
        return  # a hub id such as "stabilityai/stable-diffusion-2-1-base"
    resolved = path.resolve()
    if not any(resolved == d or d in resolved.parents for d in allowed_dirs):
        allowed = ", ".join(str(d) for d in allowed_dirs)
        raise UserError(
            f"local prior folder {prior!r} is outside the folders this server may read ({allowed}); "
            "move it under one of them, or restart with `sds3d app --allow-prior-dir DIR`"
        )


def make_video_config(
    video: str | None,
    steps: int = 1500,
    max_frames: int = 60,
    resolution: int = 0,
    seed: int = 0,
    faces: int = 20_000,
    texture_size: int = 512,
) -> Any:
    """A validated ``VideoReconConfig`` for an uploaded video from the form values.

    Raises:
        UserError: when a run could not start with these values (the message says the fix).
    """
    from recon.data.video import VIDEO_SUFFIXES
    from recon.errors import UserError
    from recon.pipelines.video_recon import reconstruct_config, validate

    if not video or not Path(video).is_file():
        raise UserError("upload a video first (drop a file on the video box)")
    if Path(video).suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"{Path(video).name!r} is not a video; upload one of {', '.join(VIDEO_SUFFIXES)}")
    checks = (("steps", steps, 1), ("keyframes", max_frames, 3), ("resolution", resolution, 0))
    for name, value, low in checks:
        if value is None or int(value) != value or int(value) < low:
            raise UserError(f"{name} must be a whole number >= {low}, got {value!r}")
    config = reconstruct_config(max_frames=int(max_frames), steps=int(steps), resolution=int(resolution),
                                seed=int(seed or 0))  # fmt: skip
    config.faces, config.texture_size = int(faces), int(texture_size)
    validate(config)
    return config


_READY_PRIORS: dict[str, Any] = {}
"""Embedded priors loaded and used once (their text encoder is loaded too)."""
_PRIOR_LOCK = threading.Lock()


def check_prompt(config: Any, wait: bool = True) -> None:
    """Checks the prompt against an embedded prior's vocabulary (cheap once the prior is loaded).

    Args:
        config: The run's config.
        wait: Load the prior if it is not loaded yet (seconds); otherwise skip the check then.

    Other priors (hub ids, folders) are checked by :func:`recon.pipelines.generate` itself, before it
    creates a run folder; loading them here would double a large load.

    Raises:
        UserError: for a prompt the embedded prior does not know.
    """
    if config.prior not in EMBEDDED_PRIORS or config.color_prior != "same":
        return
    from recon.errors import UserError
    from recon.pipelines import get_pipeline

    spec = get_pipeline("stabledreamer")
    priors = _READY_PRIORS.get(config.prior)
    if priors is not None:
        spec.check_prompt(config, priors)
        return
    if not wait:
        return
    with _PRIOR_LOCK:  # the first check also loads the text encoder (seconds)
        priors = _READY_PRIORS.get(config.prior) or spec.load_priors(config)
        try:
            spec.check_prompt(config, priors)
        except UserError:
            _READY_PRIORS[config.prior] = priors
            raise
        _READY_PRIORS[config.prior] = priors


WARM = threading.Event()
"""Set once :func:`warm_up` has finished (successfully or not)."""


def warm_up() -> None:
    """Loads the embedded prior and its text encoder once, so that the first check is quick."""
    try:
        from recon.errors import UserError
        from recon.pipelines.stabledreamer import StableDreamerConfig

        check_prompt(StableDreamerConfig(prompt=EXAMPLE_PROMPTS[0]))
        try:  # a prompt outside the vocabulary loads the sentence encoder used for near matches
            check_prompt(StableDreamerConfig(prompt="a small thing"))
        except UserError:
            pass
    finally:
        WARM.set()


# ---------------------------------------------------------------- runs on disk
def list_runs(outputs: str | Path) -> list[Path]:
    """Run folders under ``outputs/<pipeline>/`` that have a turntable image, newest first."""
    root = Path(outputs)
    if not root.is_dir():
        return []
    runs = [p.parent.parent for p in root.glob("*/*/renders/turntable.png")]
    runs.sort(key=lambda p: (p / "renders" / "turntable.png").stat().st_mtime, reverse=True)
    return runs[:MAX_GALLERY_RUNS]


def run_caption(run_dir: Path) -> str:
    """The prompt of a run (from its config.yaml), or its folder name."""
    try:
        from recon.runs import load_config

        prompt = load_config(run_dir)[1].get("prompt")
    except Exception:  # noqa: BLE001 - a broken config still gets a caption
        prompt = None
    return f"{prompt} ({run_dir.name[-15:]})" if prompt else run_dir.name


def obj_zip(run_dir: Path) -> Path | None:
    """``export/model-obj.zip`` with model.obj + model.mtl + texture.png (written once, atomically)."""
    export = Path(run_dir) / "export"
    parts = [export / n for n in ("model.obj", "model.mtl", "texture.png")]
    if not all(p.is_file() for p in parts):
        return None
    target = export / "model-obj.zip"
    if target.is_file() and target.stat().st_mtime >= max(p.stat().st_mtime for p in parts):
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in parts:
            zf.write(p, arcname=p.name)
    os.replace(tmp, target)
    return target


def run_files(run_dir: Path) -> dict[str, Path | None]:
    """What the result panel shows for a run: GLB, splats, turntable and the downloads."""
    export = Path(run_dir) / "export"

    def existing(p: Path) -> Path | None:
        return p if p.is_file() else None

    return {
        "glb": existing(export / "model.glb"),
        "splat": existing(export / "model.splat") or existing(export / "splats.ply"),
        "ply": existing(export / "splats.ply"),
        "zip": obj_zip(run_dir),
        "turntable": existing(Path(run_dir) / "renders" / "turntable.png"),
    }


def render_preview(run_dir: Path) -> Path | None:
    """A turntable strip of the run's last checkpoint (``renders/preview.png``)."""
    from recon.pipelines import save_turntable
    from recon.runs import load_model

    try:
        model = load_model(run_dir)
    except Exception:  # noqa: BLE001 - a checkpoint mid-write or gone: no preview this time
        return None
    return save_turntable(model, Path(run_dir) / "renders" / "preview.png")


class RunJob:
    """One library run (:func:`recon.pipelines.generate`, :func:`recon.pipelines.video_recon.reconstruct`)
    in a worker thread, followed and stopped through :class:`recon.train.Hooks`.

    The worker inherits the caller's context variables, so Gradio's ``track_tqdm`` sees its bars.
    A cancel asks the trainer to stop after its current step; it writes a checkpoint first, so a
    cancelled text-to-3D run can be resumed (``sds3d generate --resume RUN_DIR``).
    """

    def __init__(self, target: Callable[[Any], Path]):
        """``target(hooks)`` runs the library call with these hooks and returns the run folder."""
        self.target = target
        self.result: Path | None = None
        self.error: BaseException | None = None
        self.stopped: Any = None  # the recon.train.Stopped of a cancelled run
        self.run_dir: Path | None = None
        self.checkpoints = 0
        self.step = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._work,), daemon=True, name="sds3d-run")

    def _on_run_dir(self, path: Path) -> None:
        self.run_dir = Path(path)

    def _on_checkpoint(self, path: Path, step: int) -> None:
        self.checkpoints += 1
        self.step = step

    def start(self) -> RunJob:
        self.thread.start()
        return self

    def _work(self) -> None:
        from recon.train import Hooks, Stopped

        hooks = Hooks(self._on_run_dir, self._on_checkpoint, should_stop=self._stop.is_set)
        try:
            self.result = self.target(hooks)
        except Stopped as stop:
            self.stopped = stop
        except Exception as err:  # noqa: BLE001 - handed to the UI thread, which reports it
            self.error = err
        finally:
            self.done.set()

    def cancel(self, timeout: float = 120.0) -> bool:
        """Asks the run to stop after its current step and waits for the worker; True when it ended.

        A run still loading its prior stops at its first step; one already exporting finishes.
        """
        self._stop.set()
        return self.done.wait(timeout)


# ---------------------------------------------------------------- the Blocks app
def configure_environment(outputs: str | Path) -> None:
    """Before Gradio is imported: no analytics, Gradio's temp files inside the outputs folder."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(outputs).resolve() / ".gradio"))


def build_app(
    outputs: str | Path = "outputs",
    max_queue_size: int = 8,
    export_extra: dict[str, Any] | None = None,
    allowed_prior_dirs: list[str | Path] | None = None,
):
    """Builds the Gradio Blocks app.

    Args:
        outputs: Root of the output tree: runs are written there, and the gallery lists it.
        max_queue_size: Requests that may wait for the generator at once (more get "queue full").
        export_extra: Extra ``recon.runs.export_run`` options (e.g. ``image_size``, ``n_views``; tests
            use smaller ones).
        allowed_prior_dirs: Folders a local prior may be loaded from (``None``: anywhere, for a server
            only this machine reaches; ``sds3d app`` restricts it when ``--host`` is not local).

    Returns:
        The ``gr.Blocks`` app (not launched; see :func:`launch_app`).
    """
    outputs = Path(outputs).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    if allowed_prior_dirs is not None:
        allowed_prior_dirs = [Path(d).expanduser().resolve() for d in allowed_prior_dirs]
    configure_environment(outputs)
    import gradio as gr

    def user_error(err: Exception) -> Exception:
        return gr.Error(str(err), title="Invalid input", print_exception=False)

    def validated_config(prompt, prior, allow_download, steps, seed, guidance, views, preview_every) -> Any:
        from recon.errors import UserError

        try:
            check_prior_source(prior, allowed_prior_dirs)
            config = make_config(prompt, prior, allow_download, steps, seed, guidance, views, preview_every)
            check_prompt(config)
        except UserError as err:
            raise user_error(err) from None
        return config

    def gallery_value() -> tuple[list[tuple[str, str]], list[str]]:
        runs = list_runs(outputs)
        return [(str(r / "renders" / "turntable.png"), run_caption(r)) for r in runs], [str(r) for r in runs]

    def result_outputs(run_dir: Path, message: str) -> tuple:
        files = run_files(run_dir)
        downloads = [str(p) for p in (files["glb"], files["zip"], files["ply"], files["splat"]) if p]
        as_str = {k: (str(v) if v else None) for k, v in files.items()}
        gallery, runs = gallery_value()
        shown = as_str["turntable"], as_str["glb"], as_str["splat"]
        return message, *shown, downloads, gallery, runs, str(run_dir)

    def generate_fn(
        prompt: str, pipeline: str, prior: str, allow_download: bool, steps: float, seed: float,
        guidance: float, views: float, faces: float, texture_size: float, preview_every: float,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's injection idiom
    ) -> Iterator[tuple]:  # fmt: skip
        """Runs a generation and streams (status, preview, glb, splats, downloads, gallery, runs)."""
        config = validated_config(prompt, prior, allow_download, steps, seed, guidance, views, preview_every)
        if pipeline not in pipeline_choices():
            raise gr.Error(f"unknown pipeline {pipeline!r}; choose one of {list(pipeline_choices())}")
        export_options = {"faces": int(faces), "texture_size": int(texture_size), **(export_extra or {})}

        def target(hooks: Any) -> Path:
            from recon.pipelines import generate

            return generate(
                config, pipeline, outputs, export=True, export_options=export_options, hooks=hooks
            )

        progress(0.0, desc="loading the prior")
        start = f"Started: {config.prompt!r}, {config.steps} steps."
        yield from follow(RunJob(target).start(), start, preview=True)

    def follow(job: RunJob, started: str, preview: bool) -> Iterator[tuple]:
        """Streams a running job's status (and checkpoint previews) to the result panel, then its result."""
        from recon.errors import UserError

        skip = gr.skip()
        seen = 0
        try:
            # Yield often: Gradio can only close (cancel) a generator that is paused at a yield.
            yield started, skip, skip, skip, skip, skip, skip, skip
            while not job.done.wait(POLL_SECONDS):
                if preview and job.checkpoints > seen and job.run_dir is not None:
                    seen = job.checkpoints
                    image = render_preview(job.run_dir)
                    if image is not None:
                        msg = f"Training `{job.run_dir.name}`: step {job.step} (last checkpoint)."
                        yield msg, str(image), skip, skip, skip, skip, skip, skip
                        continue
                yield skip, skip, skip, skip, skip, skip, skip, skip
        finally:
            if not job.done.is_set():  # the user cancelled or left: stop the worker
                log.info("run cancelled; stopping it after its current step")
                job.cancel()
        if isinstance(job.error, UserError):
            raise user_error(job.error)
        if job.error is not None:
            raise gr.Error(f"the run failed: {job.error}")
        yield result_outputs(job.result, f"Done: `{job.result}`")

    def reconstruct_fn(
        video: str | None, steps: float, max_frames: float, resolution: float, seed: float, faces: float,
        texture_size: float, progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's injection idiom
    ) -> Iterator[tuple]:  # fmt: skip
        """Reconstructs Gaussians (and a mesh) from an uploaded video; streams like :func:`generate_fn`."""
        from recon.errors import UserError

        try:
            config = make_video_config(video, steps, max_frames, resolution, seed, faces, texture_size)
        except UserError as err:
            raise user_error(err) from None
        extra = export_extra or {}
        config.faces = int(extra.get("faces", config.faces))
        config.texture_size = int(extra.get("texture_size", config.texture_size))
        config.export_image_size = int(extra.get("image_size", config.export_image_size))
        config.export_views = int(extra.get("n_views", config.export_views))

        def target(hooks: Any) -> Path:
            from recon.pipelines import save_turntable
            from recon.pipelines.video_recon import reconstruct
            from recon.runs import load_model

            run_dir = reconstruct(video, config, outputs, hooks=hooks)
            save_turntable(load_model(run_dir), run_dir / "renders" / "turntable.png")  # the gallery's image
            return run_dir

        progress(0.0, desc="reading the video and posing its frames")
        start = f"Started: `{Path(video).name}`, {config.steps} steps."
        yield from follow(RunJob(target).start(), start, preview=False)

    def validate_fn(prompt, pipeline, prior, allow_download, steps, seed, guidance, views, faces, tex, every):
        """Runs before a request is queued; a failure shows next to the inputs and queues nothing."""
        from recon.errors import UserError

        try:
            check_prior_source(prior, allowed_prior_dirs)
        except UserError as err:
            return [gr.validate(i != 2, str(err)) for i in range(11)]
        try:
            config = make_config(prompt, prior, allow_download, steps, seed, guidance, views, every)
        except UserError as err:
            bad_steps = "steps" in str(err) and "prompt" not in str(err)
            return [gr.validate(not (i == 0 and not bad_steps or i == 4 and bad_steps), str(err))
                    for i in range(11)]  # fmt: skip
        try:
            check_prompt(config, wait=False)  # quick or skipped: generate_fn checks again
        except UserError as err:
            return [gr.validate(i != 0, str(err)) for i in range(11)]
        return [gr.validate(True, "") for _ in range(11)]

    def validate_video_fn(video, steps, max_frames, resolution, seed, faces, texture_size):
        """Runs before a video request is queued (the upload itself is size-limited by Gradio)."""
        from recon.errors import UserError

        try:
            make_video_config(video, steps, max_frames, resolution, seed, faces, texture_size)
        except UserError as err:
            bad = {"steps": 1, "keyframes": 2, "resolution": 3}
            culprit = next((i for name, i in bad.items() if str(err).startswith(name)), 0)
            return [gr.validate(i != culprit, str(err)) for i in range(7)]
        return [gr.validate(True, "") for _ in range(7)]

    def redraw_viewers(run: str | None) -> tuple:
        """The 3D viewers' values for the run just shown."""
        if not run:
            return gr.skip(), gr.skip()
        files = run_files(Path(run))
        return tuple(str(files[k]) if files[k] else None for k in ("glb", "splat"))

    def open_run(runs: list[str], evt: gr.SelectData) -> tuple:
        if not runs or evt.index is None or not 0 <= int(evt.index) < len(runs):
            raise gr.Error("that run is gone; refresh the gallery")
        run_dir = Path(runs[int(evt.index)])
        return result_outputs(run_dir, f"Opened `{run_dir}`")

    open_run.__annotations__["evt"] = gr.SelectData  # Gradio finds the event argument by its type

    with gr.Blocks(title="sds3d", analytics_enabled=False) as demo:
        gr.Markdown(
            "# sds3d — text to 3D\nScore distillation into 3D Gaussians, exported as a textured mesh."
        )
        runs_state = gr.State([])
        shown_run = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Generate"):
                    prompt = gr.Textbox(label="Prompt", placeholder="a red cube", elem_id="prompt")
                    pipeline = gr.Dropdown(list(pipeline_choices()), value="stabledreamer", label="Pipeline")
                    prior = gr.Dropdown(
                        list(PRIOR_CHOICES), value="embedded", allow_custom_value=True, label="Prior",
                        info="embedded (offline), or type a Hugging Face hub id or a local diffusers folder",
                    )  # fmt: skip
                    allow_download = gr.Checkbox(False, label="Allow downloading a hub prior")
                    with gr.Row():
                        steps = gr.Number(300, label="Steps", precision=0)
                        seed = gr.Number(0, label="Seed", precision=0)
                    with gr.Accordion("Advanced settings", open=False):
                        guidance = gr.Slider(1, 100, 15, step=0.5, label="Guidance scale")
                        views = gr.Slider(1, 16, 4, step=1, label="Views per step")
                        faces = gr.Slider(500, 200_000, 20_000, step=500, label="Mesh faces")
                        texture_size = gr.Dropdown(
                            [128, 256, 512, 1024, 2048], value=512, label="Texture size"
                        )
                        preview_every = gr.Number(100, label="Preview every (steps)", precision=0)
                    with gr.Row():
                        generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=[prompt], label="Examples")
                with gr.Tab("Video"):
                    from recon.data.video import VIDEO_SUFFIXES

                    video = gr.File(label="Video (a camera moving around an object)", type="filepath",
                                    file_types=list(VIDEO_SUFFIXES), elem_id="video")  # fmt: skip
                    with gr.Row():
                        video_steps = gr.Number(600, label="Steps", precision=0)
                        max_frames = gr.Number(40, label="Keyframes", precision=0)
                    with gr.Accordion("Advanced settings", open=False):
                        resolution = gr.Number(0, label="Longest image side (0: 512 px or less)", precision=0)
                        video_seed = gr.Number(0, label="Seed", precision=0)
                        video_faces = gr.Slider(500, 200_000, 20_000, step=500, label="Mesh faces")
                        video_texture = gr.Dropdown(
                            [128, 256, 512, 1024, 2048], value=512, label="Texture size"
                        )
                    with gr.Row():
                        reconstruct_btn = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
                        video_cancel_btn = gr.Button("Cancel", variant="stop", elem_id="video-cancel")
                status = gr.Markdown("", elem_id="status")
                preview = gr.Image(label="Preview (turntable)", type="filepath", interactive=False)
            with gr.Column(scale=1):
                glb_view = gr.Model3D(label="Mesh (GLB)", elem_id="glb-view", interactive=False, height=360)
                splat_view = gr.Model3D(
                    label="Gaussian splats", elem_id="splat-view", interactive=False, height=360
                )
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False)
        with gr.Row():
            gallery = gr.Gallery(
                label="Earlier runs", columns=2, height=320, object_fit="contain", allow_preview=False
            )
        refresh_btn = gr.Button("Refresh gallery", size="sm")

        inputs = [prompt, pipeline, prior, allow_download, steps, seed, guidance, views, faces, texture_size,
                  preview_every]  # fmt: skip
        # Runs stream into hidden file slots (the API's glb / splat outputs); the 3D viewers are set from
        # them afterwards by a plain event: a Model3D updated by a streaming event never creates its
        # canvas in Gradio's frontend (opening a run from the gallery, a plain event, does).
        glb_file = gr.File(visible=False)
        splat_file = gr.File(visible=False)
        outputs_ = [status, preview, glb_file, splat_file, downloads, gallery, runs_state, shown_run]
        gen_event = generate_btn.click(
            generate_fn, inputs, outputs_, api_name="generate", concurrency_limit=1,
            concurrency_id="generate", validator=validate_fn, show_progress="full",
        )  # fmt: skip
        cancel_btn.click(None, None, None, cancels=[gen_event])
        video_inputs = [video, video_steps, max_frames, resolution, video_seed, video_faces, video_texture]
        video_event = reconstruct_btn.click(
            reconstruct_fn, video_inputs, outputs_, api_name="reconstruct", concurrency_limit=1,
            concurrency_id="generate", validator=validate_video_fn, show_progress="full",
        )  # fmt: skip
        video_cancel_btn.click(None, None, None, cancels=[video_event])
        opened = gallery.select(open_run, [runs_state], outputs_, api_visibility="private")
        for event in (gen_event, video_event, opened):
            event.then(redraw_viewers, [shown_run], [glb_view, splat_view], api_visibility="private",
                       show_progress="hidden")  # fmt: skip
        refresh_btn.click(gallery_value, None, [gallery, runs_state], api_visibility="private")
        demo.load(gallery_value, None, [gallery, runs_state], api_visibility="private")
    demo.queue(max_size=max_queue_size, default_concurrency_limit=4)
    return demo


def _warm_quietly() -> None:
    try:
        warm_up()
    except Exception:  # noqa: BLE001 - warming is an optimisation; the real check reports errors
        pass


def launch_app(
    demo: Any,
    outputs: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    prevent_thread_lock: bool = False,
    max_file_size: str = "200mb",
    warm: bool = True,
) -> str:
    """Serves the app; files are served only from ``outputs`` (and Gradio's temp folder inside it).

    Args:
        demo: The app from :func:`build_app`.
        outputs: Its outputs folder.
        host: Interface to listen on.
        port: Port to listen on.
        prevent_thread_lock: Return once the server runs (it serves from a background thread).
        max_file_size: Largest upload accepted (Gradio refuses bigger ones before they are stored).
        warm: Once serving, load the embedded prior in a background thread (quick first prompt check).

    Returns:
        The local URL (when ``prevent_thread_lock`` is true; otherwise this blocks until stopped).
    """
    _, url, _ = demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock, quiet=True,
        allowed_paths=[str(Path(outputs).resolve())], max_file_size=max_file_size, ssr_mode=False,
        show_error=True, mcp_server=False, inbrowser=False, share=False,
    )  # fmt: skip
    if warm:
        threading.Thread(target=_warm_quietly, daemon=True, name="sds3d-warm-up").start()
    return url


def wait_forever() -> None:
    """Keeps the process alive while the server thread serves (Ctrl-C stops it)."""
    while True:
        time.sleep(3600)
