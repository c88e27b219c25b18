"""Presets: one YAML file per pipeline variant in ``configs/``, loaded into the pipelines' typed dataclasses.

A preset has the layout of a run's ``config.yaml``, so a run folder's settings are a preset too::

    pipeline: stabledreamer
    description: one line that ``sds3d generate --help`` can show
    config:
      representation: nerf
      steps: 300

Only the settings that differ from the dataclass defaults need to be written. Every key is checked:
an unknown or misspelt key, or a value of the wrong type, is refused naming the key
(:func:`recon.runs.config_from_dict`).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from recon.errors import UserError, check_fields
from recon.runs import config_from_dict, read_pipeline_yaml

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The presets shipped with sds3d (the repository's ``configs/``)."""


def config_classes() -> dict[str, type]:
    """The typed config of each pipeline, by the name presets and run folders use."""
    from recon.pipelines.bigs import BigsConfig
    from recon.pipelines.dprecon import DPReconConfig
    from recon.pipelines.dreamcraft3d import DreamCraft3DConfig
    from recon.pipelines.stabledreamer import StableDreamerConfig
    from recon.pipelines.video_recon import VideoReconConfig
    from recon.pipelines.zero1toa import Zero1toAConfig

    return {
        "stabledreamer": StableDreamerConfig,
        "dreamcraft3d": DreamCraft3DConfig,
        "video_recon": VideoReconConfig,
        "dprecon": DPReconConfig,
        "bigs": BigsConfig,
        "zero1toa": Zero1toAConfig,
    }


def list_presets() -> list[str]:
    """Names of the shipped presets (file stems in ``configs/``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path) -> Path:
    """A preset file: a path to a YAML file, or the name of a shipped preset (``stabledreamer-nerf``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = PRESET_DIR / f"{path.name}.yaml" if path.suffix == "" else PRESET_DIR / path.name
    if len(path.parts) == 1 and shipped.is_file():
        return shipped
    if path.exists():
        raise UserError(f"--config {name_or_path} is a folder; pass a preset YAML file")
    raise UserError(
        f"--config: no preset {str(name_or_path)!r}; pass a YAML file or one of: {', '.join(list_presets())} "
        f"(in {PRESET_DIR})"
    )


def load_preset(name_or_path: str | Path, pipelines: tuple[str, ...] | None = None) -> tuple[str, Any]:
    """The pipeline name and its typed config from a preset.

    Args:
        name_or_path: A YAML path or a shipped preset's name.
        pipelines: The pipelines the caller can run (``generate`` runs text-to-3D ones); others are refused.

    Raises:
        UserError: a missing file, bad YAML, an unknown pipeline, key, wrongly typed or out-of-range value.
    """
    path = preset_path(name_or_path)
    pipeline, data = read_pipeline_yaml(path)
    classes = config_classes()
    if pipeline not in classes:
        raise UserError(f"{path}: unknown pipeline {pipeline!r}; choose one of {sorted(classes)}")
    if pipelines is not None and pipeline not in pipelines:
        raise UserError(f"{path} is a {pipeline!r} preset; this command runs {', '.join(pipelines)}")
    try:
        config = config_from_dict(classes[pipeline], data)
        check_fields(config)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    return pipeline, config


def get_setting(config: Any, dotted: str) -> Any:
    """``config.a.b`` for ``"a.b"``."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def with_setting(config: Any, dotted: str, value: Any) -> Any:
    """A copy of ``config`` with the (nested) setting ``dotted`` replaced."""
    head, _, rest = dotted.partition(".")
    if not is_dataclass(config) or head not in {f.name for f in fields(config)}:
        raise KeyError(dotted)
    if rest:
        value = with_setting(getattr(config, head), rest, value)
    return replace(config, **{head: value})
