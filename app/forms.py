"""Form values of the sds3d UI turned into validated library configs, and the checks run before queuing.

No Gradio here: every function takes plain values and raises :class:`recon.errors.UserError` with the
fix, which the UI shows as a ``gr.Error`` / validation message.
"""

from __future__ import annotations

import threading
import typing
from pathlib import Path
from typing import Any

EXAMPLE_PROMPTS = ("a red cube", "a blue sphere", "a green cone", "a yellow torus", "a purple cylinder")
"""Prompts the embedded prior knows (five shapes in eight colors)."""
PRIOR_CHOICES = ("embedded", "embedded-exemplar", "embedded-unet", "embedded-unet-latent")
"""Offered in the prior box; a hub id or a local diffusers folder can be typed instead."""
EMBEDDED_PRIORS = frozenset(PRIOR_CHOICES)
LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, 10_000),
    "seed": (0, 2**32 - 1),
    "guidance": (0, 100),
    "views per step": (1, 16),
    "preview every": (1, 10_000),
    "faces": (500, 200_000),
    "texture size": (64, 4096),
    "video steps": (1, 20_000),
    "keyframes": (3, 300),
    "resolution": (0, 2048),
}
"""Server-side bounds of every numeric form field (a visitor's request can't hold the worker for days)."""


def _bounded(name: str, value: Any, integer: bool = True) -> Any:
    """``value`` inside :data:`LIMITS`; a ``UserError`` naming the field and its bounds otherwise."""
    from recon.errors import check_range

    low, high = LIMITS[name]
    return check_range(name.removeprefix("video "), value, low, high, integer=integer)


def check_export_form(faces: Any, texture_size: Any) -> tuple[int, int]:
    """The form's mesh faces and texture size as ints inside :data:`LIMITS`.

    Raises:
        UserError: naming the field and its bounds.
    """
    return _bounded("faces", faces), _bounded("texture size", texture_size)


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
    faces: int | None = None,
    texture_size: int | None = None,
) -> Any:
    """A validated ``StableDreamerConfig`` from the form values (every number inside :data:`LIMITS`).

    Args:
        faces: The mesh faces field, checked when given (the export options are not part of the config).
        texture_size: The texture size field, checked when given.

    Raises:
        UserError: when a run could not start with these values (the message says the fix).
    """
    from dataclasses import replace

    from recon.errors import UserError
    from recon.pipelines.stabledreamer import StableDreamerConfig, validate

    if steps is None or isinstance(steps, bool) or not isinstance(steps, (int, float)) or int(steps) != steps:
        raise UserError(f"steps must be a whole number, got {steps!r}")
    if steps > 0:  # zero and below: the library's own message (validate)
        _bounded("steps", steps)
    if preview_every is None or int(preview_every) <= 0:
        raise UserError(f"'preview every' must be a positive number of steps, got {preview_every!r}")
    _bounded("preview every", preview_every)
    _bounded("seed", seed or 0)
    _bounded("views per step", views_per_step)
    _bounded("guidance", guidance, integer=False)
    if faces is not None or texture_size is not None:
        check_export_form(20_000 if faces is None else faces, 512 if texture_size is None else texture_size)
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
    _bounded("video steps", steps)
    _bounded("keyframes", max_frames)
    _bounded("resolution", resolution)
    _bounded("seed", seed or 0)
    faces, texture_size = check_export_form(faces, texture_size)
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
