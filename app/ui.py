"""The Gradio UI of sds3d: prompt or video in, live progress and previews, 3D viewers, downloads, old runs.

Thin by design: every result comes from :func:`recon.pipelines.generate` or
:func:`recon.pipelines.video_recon.reconstruct`; :mod:`app.forms` turns form values into configs,
:mod:`app.jobs` runs the library in a worker thread (so that previews can be shown while it trains) and
lays files out, and this module only builds the Blocks. Gradio is imported inside :func:`build_app`, after
the environment (temp folder, analytics) is set, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.forms import (
    EMBEDDED_PRIORS,
    EXAMPLE_PROMPTS,
    PRIOR_CHOICES,
    WARM,
    check_export_form,
    check_prior_source,
    check_prompt,
    make_config,
    make_video_config,
    pipeline_choices,
    warm_up,
)
from app.jobs import RunJob, list_runs, obj_zip, render_preview, run_caption, run_files
from app.tabs.avatar import build_avatar_tab
from app.tabs.image import build_image_tab
from app.tabs.scene import build_scene_tab

__all__ = [
    "EMBEDDED_PRIORS", "EXAMPLE_PROMPTS", "PRIOR_CHOICES", "WARM", "build_app", "check_prior_source",
    "check_prompt", "configure_environment", "launch_app", "list_runs", "make_config", "make_video_config",
    "obj_zip", "pipeline_choices", "render_preview", "run_caption", "run_files", "wait_forever", "warm_up",
]  # fmt: skip

log = logging.getLogger("sds3d.app")

POLL_SECONDS = 0.5
"""How often the UI looks for a new checkpoint (preview) while a run trains."""


# ---------------------------------------------------------------- the Blocks app
_USER_GRADIO_TEMP_DIR = os.environ.get("GRADIO_TEMP_DIR")
"""A ``GRADIO_TEMP_DIR`` the user set before sds3d started wins over the outputs folder's."""


def configure_environment(outputs: str | Path) -> None:
    """Before Gradio builds an app: no analytics, Gradio's temp files inside this app's outputs folder.

    Set again for every app (Gradio reads the variable when it builds components and routes), so a
    second app in the same process keeps its files in its own outputs folder.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = _USER_GRADIO_TEMP_DIR or str(Path(outputs).resolve() / ".gradio")


def build_app(
    outputs: str | Path = "outputs",
    max_queue_size: int = 8,
    export_extra: dict[str, Any] | None = None,
    allowed_prior_dirs: list[str | Path] | None = None,
    avatar_config: dict[str, Any] | None = None,
    scene_config: dict[str, Any] | None = None,
):
    """Builds the Gradio Blocks app.

    Args:
        outputs: Root of the output tree: runs are written there, and the gallery lists it.
        max_queue_size: Requests that may wait for the generator at once (more get "queue full").
        export_extra: Extra ``recon.runs.export_run`` options (e.g. ``image_size``, ``n_views``; tests
            use smaller ones).
        allowed_prior_dirs: Folders a local prior may be loaded from (``None``: anywhere, for a server
            only this machine reaches; ``sds3d app`` restricts it when ``--host`` is not local).
        avatar_config: Further ``Zero1toAConfig`` settings of the Avatar tab's runs (tests use small ones).
        scene_config: Further ``DPReconConfig`` settings of the Scene tab's runs (tests use small ones).

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
        from recon.errors import UserError

        config = validated_config(prompt, prior, allow_download, steps, seed, guidance, views, preview_every)
        if pipeline not in pipeline_choices():
            raise gr.Error(f"unknown pipeline {pipeline!r}; choose one of {list(pipeline_choices())}")
        try:
            faces, texture_size = check_export_form(faces, texture_size)
        except UserError as err:
            raise user_error(err) from None
        export_options = {"faces": faces, "texture_size": texture_size, **(export_extra or {})}

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
            check_export_form(faces, tex)
        except UserError as err:
            field = 8 if "faces" in str(err) else 9
            return [gr.validate(i != field, str(err)) for i in range(11)]
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
                        steps = gr.Number(1500, label="Steps", precision=0)
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
                with gr.Tab("Image to 3D"):
                    image_tab = build_image_tab(outputs, follow, user_error, export_extra, allowed_prior_dirs)
                with gr.Tab("Avatar"):
                    build_avatar_tab(outputs, user_error, allowed_prior_dirs, avatar_config)
                with gr.Tab("Scene"):
                    build_scene_tab(outputs, user_error, scene_config)
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
        image_event = image_tab.connect(outputs_)
        opened = gallery.select(open_run, [runs_state], outputs_, api_visibility="private")
        for event in (gen_event, video_event, image_event, opened):
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
