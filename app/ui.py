"""The Gradio UI of sds3d: prompt in, live progress and previews, 3D viewers, downloads, earlier runs.

Thin by design: every result comes from :func:`recon.pipelines.generate`; this module only builds
configs from form values, runs the library in a worker thread (so that previews can be shown while it
trains) and lays files out for Gradio. Gradio is imported inside :func:`build_app`, after the
environment (temp folder, analytics) is set, so importing this module stays cheap.
"""

from __future__ import annotations

import contextvars
import ctypes
import logging
import os
import threading
import time
import typing
import zipfile
from collections.abc import Iterator
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


class RunCancelled(BaseException):
    """Raised inside the worker thread when the user cancels a run."""


class GenerateJob:
    """One :func:`recon.pipelines.generate` call in a worker thread that can be cancelled.

    The worker inherits the caller's context variables, so Gradio's ``track_tqdm`` sees its bars.
    """

    def __init__(self, config: Any, pipeline: str, outputs: Path, export_options: dict[str, Any]):
        self.config = config
        self.pipeline = pipeline
        self.outputs = Path(outputs)
        self.export_options = export_options
        self.result: Path | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._before = set(self._candidates())
        self._run_dir: Path | None = None
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._work,), daemon=True, name="sds3d-run")

    def _candidates(self) -> list[Path]:
        from recon.runs import slugify

        root = self.outputs / self.pipeline
        return list(root.glob(f"{slugify(self.config.prompt)}-*")) if root.is_dir() else []

    @property
    def run_dir(self) -> Path | None:
        """The run folder once ``generate`` has created it (the UI runs one generation at a time)."""
        if self._run_dir is None:
            new = [p for p in self._candidates() if p not in self._before and (p / "config.yaml").exists()]
            self._run_dir = max(new, key=lambda p: p.stat().st_mtime) if new else None
        return self._run_dir

    def start(self) -> GenerateJob:
        self.thread.start()
        return self

    def _work(self) -> None:
        from recon.pipelines import generate

        try:
            self.result = generate(
                self.config, self.pipeline, self.outputs, export=True, export_options=self.export_options
            )
        except RunCancelled:
            pass
        except Exception as err:  # noqa: BLE001 - handed to the UI thread, which reports it
            self.error = err
        finally:
            self.done.set()

    def cancel(self, timeout: float = 30.0) -> None:
        """Stops the worker at its next Python instruction and removes a run that has no checkpoint.

        ``recon`` has no stop hook yet, so the stop is an asynchronous exception in the worker thread.
        """
        if self.thread.ident is not None and not self.done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread.ident), ctypes.py_object(RunCancelled)
            )
            self.done.wait(timeout)
        if self.run_dir is not None:
            from recon.runs import remove_incomplete_run

            remove_incomplete_run(self.run_dir)


# ---------------------------------------------------------------- the Blocks app
def configure_environment(outputs: str | Path) -> None:
    """Before Gradio is imported: no analytics, Gradio's temp files inside the outputs folder."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(outputs).resolve() / ".gradio"))


def build_app(
    outputs: str | Path = "outputs",
    max_queue_size: int = 8,
    export_extra: dict[str, Any] | None = None,
):
    """Builds the Gradio Blocks app.

    Args:
        outputs: Root of the output tree: runs are written there, and the gallery lists it.
        max_queue_size: Requests that may wait for the generator at once (more get "queue full").
        export_extra: Extra ``recon.runs.export_run`` options (e.g. ``image_size``, ``n_views``; tests
            use smaller ones).

    Returns:
        The ``gr.Blocks`` app (not launched; see :func:`launch_app`).
    """
    outputs = Path(outputs).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    configure_environment(outputs)
    import gradio as gr

    def user_error(err: Exception) -> Exception:
        return gr.Error(str(err), title="Invalid input", print_exception=False)

    def validated_config(prompt, prior, allow_download, steps, seed, guidance, views, preview_every) -> Any:
        from recon.errors import UserError

        try:
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
        return message, as_str["turntable"], as_str["glb"], as_str["splat"], downloads, gallery, runs

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
        export_options = {"faces": int(faces), "texture_size": int(texture_size), **(export_extra or {})}
        job = GenerateJob(config, pipeline, outputs, export_options)
        skip = gr.skip()
        progress(0.0, desc="loading the prior")
        job.start()
        seen_ckpt = 0.0
        try:
            # Yield often: Gradio can only close (cancel) a generator that is paused at a yield.
            yield f"Started: {config.prompt!r}, {config.steps} steps.", skip, skip, skip, skip, skip, skip
            while not job.done.wait(POLL_SECONDS):
                run_dir = job.run_dir
                ckpt = run_dir / "ckpt" / "last.pt" if run_dir else None
                if ckpt is not None and ckpt.is_file() and ckpt.stat().st_mtime > seen_ckpt:
                    seen_ckpt = ckpt.stat().st_mtime
                    preview = render_preview(run_dir)
                    if preview is not None:
                        msg = f"Training `{run_dir.name}`: preview from the last checkpoint."
                        yield msg, str(preview), skip, skip, skip, skip, skip
                        continue
                yield skip, skip, skip, skip, skip, skip, skip
        finally:
            if not job.done.is_set():  # the user cancelled or left: stop the worker
                log.info("generation cancelled; stopping the run")
                job.cancel()
        if isinstance(job.error, UserError):
            raise user_error(job.error)
        if job.error is not None:
            raise gr.Error(f"the run failed: {job.error}")
        yield result_outputs(job.result, f"Done: `{job.result}`")

    def validate_fn(prompt, pipeline, prior, allow_download, steps, seed, guidance, views, faces, tex, every):
        """Runs before a request is queued; a failure shows next to the inputs and queues nothing."""
        from recon.errors import UserError

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
        outputs_ = [status, preview, glb_view, splat_view, downloads, gallery, runs_state]
        gen_event = generate_btn.click(
            generate_fn, inputs, outputs_, api_name="generate", concurrency_limit=1,
            concurrency_id="generate", validator=validate_fn, show_progress="full",
        )  # fmt: skip
        cancel_btn.click(None, None, None, cancels=[gen_event])
        gallery.select(open_run, [runs_state], outputs_, api_visibility="private")
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
    max_file_size: str = "20mb",
    warm: bool = True,
) -> str:
    """Serves the app; files are served only from ``outputs`` (and Gradio's temp folder inside it).

    Args:
        demo: The app from :func:`build_app`.
        outputs: Its outputs folder.
        host: Interface to listen on.
        port: Port to listen on.
        prevent_thread_lock: Return once the server runs (it serves from a background thread).
        max_file_size: Largest upload accepted.
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
