"""Diffusion priors and the distillation losses built on them.

``embedded`` names the default embedded prior. Both embedded priors stay selectable by name:
``embedded-exemplar`` (the closed-form exemplar denoiser) and ``embedded-unet`` (the small UNet
trained by this project, shipped in ``assets/``). Which one ``embedded`` means is decided by
measurement with ``bench/generate_quality.py`` (see ``bench/README.md``).
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DEFAULT = "embedded-exemplar"
"""What ``--prior embedded`` resolves to."""

EMBEDDED_LATENT_DIR = Path(__file__).resolve().parent.parent / "assets" / "embedded-unet-latent"
"""The latent variant of the embedded UNet prior (StableDreamer's color stage), when shipped."""


def resolve_prior_name(source: str) -> str:
    """``embedded`` -> the default embedded prior; anything else unchanged."""
    return EMBEDDED_DEFAULT if source == "embedded" else source


def embedded_latent_source() -> str | None:
    """The latent embedded prior's folder, if it is shipped and the default embedded prior is the UNet."""
    if EMBEDDED_DEFAULT == "embedded-unet" and (EMBEDDED_LATENT_DIR / "model_index.json").is_file():
        return str(EMBEDDED_LATENT_DIR)
    return None
