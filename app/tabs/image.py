"""The "Image to 3D" tab: one picture (and an optional mask) to a textured mesh with DreamCraft3D.

The form values become a :class:`recon.pipelines.dreamcraft3d.DreamCraft3DConfig` here
(:func:`make_image_config`, plain values in, :class:`recon.errors.UserError` out, every number checked
against :data:`LIMITS` before anything is queued); the run itself is
``recon.pipelines.generate(config, "dreamcraft3d", ...)`` in a :class:`app.jobs.RunJob`, streamed to the
app's shared result panel by :func:`app.ui.build_app`'s ``follow``. The mask preview shows the reference
exactly as the pipeline prepares it (:func:`recon.data.reference.load_reference`), at a small size.

Gradio is imported inside :func:`build_image_tab` only (the app sets its environment first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.jobs import RunJob
from app.tabs.common import bounded, field_error, field_validator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""Pictures (and masks) the tab accepts; Gradio refuses other uploads before they are queued."""
LIMITS: dict[str, tuple[int, int]] = {
    "steps": (2, 20_000),
    "seed": (0, 2**32 - 1),
    "reference size": (16, 512),
    "render resolution": (16, 256),
    "faces": (500, 200_000),
    "texture size": (64, 4096),
}
"""Server-side bounds of the tab's numeric fields (steps: the coarse stage needs two)."""
MAX_PROMPT_CHARS = 300
VIEW_PRIOR_CHOICES = ("embedded", "none")
"""Offered in the view prior box; a Zero123 hub id or a local diffusers folder can be typed instead."""
TEXT_PRIOR_CHOICES = ("embedded-unet",)
"""Offered in the text prior box (BSD fine-tunes a denoiser: the embedded pixel UNet); or a source."""
PREVIEW_SIZE = 160
"""Side of the mask preview (the reference is prepared at this size for it)."""
CHECK_SIZE = 32
"""Side the reference is prepared at when the form is checked (errors only; cheap)."""
EXPORT_SETTINGS = {"faces": "max_faces", "texture_size": "texture_size", "n_views": "bake_views",
                   "image_size": "bake_size"}  # fmt: skip
"""The app's ``export_extra`` options and the DreamCraft3D settings that play their role: DreamCraft3D
writes its own mesh (its texture is baked from ``bake_views`` renders of ``bake_size`` px)."""
FIELDS = ("image", "mask", "prompt", "steps", "seed", "view_prior", "texture_guidance", "prior",
          "allow_download", "reference_size", "resolution", "faces", "texture_size")  # fmt: skip
"""The endpoint's inputs, in order (also the names :class:`FieldError` uses)."""
PROMPT_INFO = (
    "Optional. Without one, the embedded prior's judges caption the picture (e.g. 'a red cone') and that "
    "caption is the prompt; with a hub or folder text prior and no prompt, the text SDS is off and the "
    "shape comes from the picture and the view prior alone."
)
MASK_SOURCES = {
    "alpha": "the picture's alpha",
    "background": "background segmentation (plain background)",
    "mask-file": "the mask file",
    "rembg": "rembg",
}
TINT = (0.25, 0.45, 0.95)
"""Color the background is tinted toward in the mask preview."""
OUTLINE = (1.0, 0.0, 1.0)
"""Color of the mask's outline in the preview."""


def _bounded(field: str, name: str, value: Any) -> int:
    return bounded(field, name, value, LIMITS)


def _check_suffix(field: str, path: str, what: str) -> None:
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        raise field_error(field, f"{what} {Path(path).name!r} is not a picture; upload one of "
                                 f"{', '.join(IMAGE_SUFFIXES)}")  # fmt: skip


def _check_source(
    field: str, what: str, source: str, allowed_dirs: list[Path] | None, embedded: tuple[str, ...]
) -> str:
    """A prior source from the form: embedded names pass, local folders only from ``allowed_dirs``."""
    from app.forms import check_prior_source
    from recon.errors import UserError

    source = (source or "").strip()
    if not source:
        raise field_error(field, f"the {what} is empty; choose {' or '.join(embedded)} or type a source")
    if source in embedded:
        return source
    try:
        check_prior_source(source, allowed_dirs)
    except UserError as err:
        raise field_error(field, f"{what}: {err}") from None
    return source


def embedded_view_dir() -> Path:
    """``priors.view.EMBEDDED_VIEW_DIR``, found without importing ``priors.view`` (diffusers: seconds)."""
    import importlib.util

    view_module = Path(importlib.util.find_spec("priors.view").origin).resolve()
    return view_module.parent.parent / "assets" / "embedded-view"


def check_reference(image: str, mask: str | None = None, size: int = CHECK_SIZE) -> Any:
    """The reference prepared as the pipeline prepares it, at ``size`` px (errors name the field).

    Raises:
        UserError: a missing or unreadable picture or mask, an empty mask, an object touching every
            border, a busy background (``err.field`` is ``"image"`` or ``"mask"``).
    """
    from recon.data.reference import ReferenceConfig, load_reference
    from recon.errors import UserError

    try:
        return load_reference(image, ReferenceConfig(size=size), mask=mask or None)
    except UserError as err:
        message = str(err)
        about_mask = bool(mask) and ("the mask" in message or "(mask-file" in message)
        raise field_error("mask" if about_mask else "image", message) from None


def make_image_config(
    image: str | None,
    mask: str | None = None,
    prompt: str = "",
    steps: Any = 800,
    seed: Any = 0,
    view_prior: str = "embedded",
    texture_guidance: str = "bsd",
    prior: str = "embedded-unet",
    allow_download: bool = False,
    reference_size: Any = 64,
    resolution: Any = 64,
    faces: Any = 20_000,
    texture_size: Any = 256,
    *,
    allowed_prior_dirs: list[Path] | None = None,
    export_extra: dict[str, Any] | None = None,
    check_image: bool = True,
) -> Any:
    """A validated ``DreamCraft3DConfig`` from the tab's form values.

    Args:
        image: Path of the uploaded picture.
        mask: Path of the uploaded mask, if any.
        allowed_prior_dirs: Folders a local prior may be read from (``None``: anywhere).
        export_extra: The app's ``export_extra``; see :data:`EXPORT_SETTINGS`.
        check_image: Also prepare the reference once (catches an unreadable picture, an empty mask, ...).

    Returns:
        The config (``steps`` shared over the four stages by the pipeline).

    Raises:
        UserError: naming the fix and, in ``err.field``, the form field at fault.
    """
    if not image:
        raise field_error("image", "upload a picture first (drop a PNG, JPEG or WebP file on its box)")
    _check_suffix("image", image, "the picture")
    if mask:
        _check_suffix("mask", mask, "the mask")
    prompt = (prompt or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise field_error("prompt", f"the prompt has {len(prompt)} characters; keep it to {MAX_PROMPT_CHARS}")
    numbers = {
        "steps": _bounded("steps", "steps", steps),
        "seed": _bounded("seed", "seed", 0 if seed is None else seed),
        "reference_size": _bounded("reference_size", "reference size", reference_size),
        "resolution": _bounded("resolution", "render resolution", resolution),
        "max_faces": _bounded("faces", "faces", faces),
        "texture_size": _bounded("texture_size", "texture size", texture_size),
    }
    view_prior = _check_source("view_prior", "view prior", view_prior, allowed_prior_dirs, VIEW_PRIOR_CHOICES)
    if view_prior == "embedded" and not (embedded_view_dir() / "model_index.json").is_file():
        raise field_error(
            "view_prior",
            f"the embedded view-conditioned prior is not shipped (looked in {embedded_view_dir()}); "
            "choose none, or type a Zero123 diffusers folder / hub id",
        )
    prior = _check_source("prior", "text prior", prior, allowed_prior_dirs, TEXT_PRIOR_CHOICES)
    if texture_guidance not in ("bsd", "sds"):
        raise field_error("texture_guidance", f"texture guidance is bsd or sds, got {texture_guidance!r}")
    if check_image:
        check_reference(image, mask)
    from recon.errors import UserError
    from recon.pipelines.dreamcraft3d import DreamCraft3DConfig, validate  # after the cheap checks

    config = DreamCraft3DConfig(
        image=str(image), mask=str(mask or ""), prompt=prompt, prior=prior, view_prior=view_prior,
        texture_guidance=texture_guidance, allow_download=bool(allow_download), progress_bar=True, **numbers,
    )  # fmt: skip
    for option, setting in EXPORT_SETTINGS.items():
        if option in (export_extra or {}):
            setattr(config, setting, int(export_extra[option]))
    try:
        validate(config)
    except UserError as err:
        raise field_error("image", str(err)) from None
    return config


def mask_overlay(reference: Any) -> Any:
    """The prepared reference with its background tinted and the mask's outline drawn.

    Args:
        reference: A :class:`recon.data.reference.ReferenceImage`.

    Returns:
        ``[S, S, 3]`` uint8 array.
    """
    import numpy as np
    from scipy import ndimage

    rgb = reference.rgb.numpy().astype(np.float32)
    inside = reference.mask.numpy() > 0.5
    outline = ndimage.binary_dilation(inside) & ~ndimage.binary_erosion(inside, border_value=0)
    out = rgb.copy()
    out[~inside] = 0.55 * out[~inside] + 0.45 * np.asarray(TINT, np.float32)
    out[outline] = OUTLINE
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def mask_preview(image: str | None, mask: str | None = None) -> tuple[Any, str]:
    """The mask preview (``[S, S, 3]`` uint8) and its caption, or ``None`` and why the input can't be used."""
    import numpy as np

    from recon.errors import UserError

    if not image:
        return None, ""
    try:
        _check_suffix("image", image, "the picture")
        if mask:
            _check_suffix("mask", mask, "the mask")
        reference = check_reference(image, mask, size=PREVIEW_SIZE)
    except UserError as err:
        what = "mask" if getattr(err, "field", "image") == "mask" else "picture"
        return None, f"**Can't use this {what}:** {err}"
    inside = reference.mask.numpy() > 0.5
    rows, cols = np.nonzero(inside)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    caption = (
        f"Mask from {MASK_SOURCES.get(reference.source, reference.source)}: the object ({w}×{h} px of "
        f"{PREVIEW_SIZE}×{PREVIEW_SIZE}) recentred with its long side at 90% of the frame; the tinted part "
        "is background."
    )
    return mask_overlay(reference), caption


# ---------------------------------------------------------------- the Gradio tab
@dataclass
class ImageTab:
    """The tab's components and functions; :meth:`connect` wires its run to the shared result panel."""

    inputs: list[Any]
    generate_button: Any
    cancel_button: Any
    run: Callable[..., Iterator[tuple]]
    validate: Callable[..., list[Any]]

    def connect(self, result_outputs: list[Any]) -> Any:
        """Wires Generate (queued with the other tabs' runs: one training at a time) and Cancel.

        The result panel is built after the tabs, so this is a second call from ``build_app``.

        Args:
            result_outputs: The panel's components, in the order ``follow`` streams them.

        Returns:
            The Generate event (``build_app`` redraws the 3D viewers after it).
        """
        event = self.generate_button.click(
            self.run, self.inputs, result_outputs, api_name="image_to_3d", concurrency_limit=1,
            concurrency_id="generate", validator=self.validate, show_progress="full",
        )  # fmt: skip
        self.cancel_button.click(None, None, None, cancels=[event])
        return event


def build_image_tab(
    outputs: Path,
    follow: Callable[[RunJob, str, bool], Iterator[tuple]],
    user_error: Callable[[Exception], Exception],
    export_extra: dict[str, Any] | None = None,
    allowed_prior_dirs: list[Path] | None = None,
) -> ImageTab:
    """Builds the Image to 3D tab's inputs (inside the caller's ``gr.Tab``) and its mask preview.

    Args:
        outputs: Root of the output tree (runs go to ``outputs/dreamcraft3d/``).
        follow: ``follow(job, started_message, preview)`` of :func:`app.ui.build_app`: streams a
            :class:`RunJob` to the result panel.
        user_error: Turns a :class:`recon.errors.UserError` into the app's ``gr.Error``.
        export_extra: The app's ``export_extra`` (see :data:`EXPORT_SETTINGS`).
        allowed_prior_dirs: Folders a local prior may be read from (``None``: anywhere).

    Returns:
        The tab; call :meth:`ImageTab.connect` once the result panel exists.
    """
    import gradio as gr

    def form_config(*values: Any, check_image: bool = True) -> Any:
        return make_image_config(*values, allowed_prior_dirs=allowed_prior_dirs, export_extra=export_extra,
                                 check_image=check_image)  # fmt: skip

    validate_fn = field_validator(form_config, FIELDS, "image")

    def image_to_3d(
        image: str | None, mask: str | None, prompt: str, steps: float, seed: float, view_prior: str,
        texture_guidance: str, prior: str, allow_download: bool, reference_size: float, resolution: float,
        faces: float, texture_size: float,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's injection idiom
    ) -> Iterator[tuple]:  # fmt: skip
        """Runs DreamCraft3D on the picture and streams the result panel (status, preview, GLB, ...)."""
        from recon.errors import UserError

        values = (image, mask, prompt, steps, seed, view_prior, texture_guidance, prior, allow_download,
                  reference_size, resolution, faces, texture_size)  # fmt: skip
        try:
            config = form_config(*values, check_image=False)  # the picture: generate prepares it
        except UserError as err:
            raise user_error(err) from None

        def target(hooks: Any) -> Path:
            from recon.pipelines import generate

            return generate(config, "dreamcraft3d", outputs, export=True, hooks=hooks)

        progress(0.0, desc="preparing the picture and loading the priors")
        about = f"{config.prompt!r}" if config.prompt else "no prompt"
        started = f"Started: `{Path(config.image).name}` ({about}), {config.steps} steps over four stages."
        yield from follow(RunJob(target).start(), started, True)

    gr.Markdown(
        "DreamCraft3D ([Sun et al. 2023](https://arxiv.org/abs/2310.16818)): a coarse NeRF fitted to the "
        "picture, an SDF sculpted from it, then its texture with bootstrapped score distillation."
    )
    suffixes = list(IMAGE_SUFFIXES)
    image = gr.File(label="Picture (PNG, JPEG or WebP; RGBA keeps its alpha as the mask)", type="filepath",
                    file_types=suffixes, elem_id="image-upload")  # fmt: skip
    mask = gr.File(label="Mask (optional; white = object, the picture's size)", type="filepath",
                   file_types=suffixes, elem_id="mask-upload")  # fmt: skip
    mask_view = gr.Image(label="Mask preview", type="numpy", format="png", interactive=False, height=200,
                         elem_id="mask-preview")  # fmt: skip
    mask_info = gr.Markdown("", elem_id="mask-info")
    prompt = gr.Textbox(label="Prompt (optional)", placeholder="a red cone", info=PROMPT_INFO)
    with gr.Row():
        steps = gr.Number(800, label="Steps", precision=0, info="shared over the four stages (3:1:2:2)")
        seed = gr.Number(0, label="Seed", precision=0)
    view_prior = gr.Dropdown(
        list(VIEW_PRIOR_CHOICES), value="embedded", allow_custom_value=True, label="View prior",
        info="embedded (an offline miniature Zero123), none (the ablation), or type a Zero123 hub id or "
        "a local diffusers folder",
    )  # fmt: skip
    texture_guidance = gr.Radio(["bsd", "sds"], value="bsd", label="Texture guidance",
                                info="bsd: bootstrapped score distillation; sds: plain SDS")  # fmt: skip
    with gr.Accordion("Advanced settings", open=False):
        prior = gr.Dropdown(
            list(TEXT_PRIOR_CHOICES), value="embedded-unet", allow_custom_value=True, label="Text prior",
            info="embedded-unet (offline), or type a Hugging Face hub id or a local diffusers folder",
        )  # fmt: skip
        allow_download = gr.Checkbox(False, label="Allow downloading hub priors")
        with gr.Row():
            reference_size = gr.Number(64, label="Reference size (px)", precision=0)
            resolution = gr.Number(64, label="Render resolution (px)", precision=0)
        faces = gr.Slider(500, 200_000, 20_000, step=500, label="Mesh faces")
        texture_size = gr.Dropdown([128, 256, 512, 1024, 2048], value=256, label="Texture size")
    with gr.Row():
        generate_button = gr.Button("Generate", variant="primary", elem_id="image-generate")
        cancel_button = gr.Button("Cancel", variant="stop", elem_id="image-cancel")

    gr.on(
        [image.change, mask.change], mask_preview, [image, mask], [mask_view, mask_info],
        api_name="mask_preview", show_progress="minimal",
    )  # fmt: skip
    inputs = [image, mask, prompt, steps, seed, view_prior, texture_guidance, prior, allow_download,
              reference_size, resolution, faces, texture_size]  # fmt: skip
    return ImageTab(inputs, generate_button, cancel_button, image_to_3d, validate_fn)
