"""Pipelines: one file per method, each a typed config plus a short stage plan for :mod:`recon.train`.

:func:`generate` is the one entry point the CLI and the UI call: validate, load the priors, create
the run folder (only once the input is known to be good), optimize with checkpoints, export.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.atomic import atomic_write
from recon.errors import UserError
from recon.pipelines import dreamcraft3d, stabledreamer
from recon.runs import (
    check_out_root,
    config_from_dict,
    create_run_dir,
    export_run,
    load_config,
    remove_incomplete_run,
    save_config,
    validate_export_options,
)
from recon.train import Hooks

log = logging.getLogger("sds3d.generate")


@dataclass(frozen=True)
class Pipeline:
    config_cls: type
    validate: Callable[[Any], None]
    load_priors: Callable[[Any], Any]
    build_trainer: Callable[[Any, Any, Path], Any]
    check_prompt: Callable[[Any, Any], None]
    export: Callable[[Any, Path], dict[str, Path]] | None = None
    """Writes the run's own result into ``export/`` (default: :func:`recon.runs.export_run`)."""
    run_name: Callable[[Any, Any], str] | None = None
    """``(config, priors) -> name`` of the run folder (default: the prompt)."""
    keep_inputs: Callable[[Any, Path], Any] | None = None
    """``(config, run_dir) -> config``: copies the run's input files (a reference picture, a mask) into
    ``run_dir/inputs/`` and returns the config naming them relative to the run, so a run resumes and
    re-exports after its inputs are gone (an upload's temporary file, a moved picture)."""
    resolve_inputs: Callable[[Any, Path], Any] | None = None
    """``(config, run_dir) -> config``: the inverse on resume (run-relative input paths made absolute)."""


def _check_prompt_stabledreamer(config: Any, priors: Any) -> None:
    """Encodes the prompt once: unknown words for an embedded prior fail here, before any folder exists."""
    priors.geometry.encode_prompt([config.prompt], [config.negative_prompt])
    if priors.color is not priors.geometry:
        priors.color.encode_prompt([config.prompt], [config.negative_prompt])


PIPELINES: dict[str, Pipeline] = {
    "stabledreamer": Pipeline(
        stabledreamer.StableDreamerConfig,
        stabledreamer.validate,
        stabledreamer.load_priors,
        stabledreamer.build_trainer,
        _check_prompt_stabledreamer,
    ),
    "dreamcraft3d": Pipeline(
        dreamcraft3d.DreamCraft3DConfig,
        dreamcraft3d.validate,
        dreamcraft3d.load_priors,
        dreamcraft3d.build_trainer,
        dreamcraft3d.check_prompt,
        export=dreamcraft3d.export,
        run_name=dreamcraft3d.run_name,
        keep_inputs=dreamcraft3d.keep_inputs,
        resolve_inputs=dreamcraft3d.resolve_inputs,
    ),
}


def get_pipeline(name: str) -> Pipeline:
    if name not in PIPELINES:
        raise UserError(f"unknown pipeline {name!r}; choose one of {sorted(PIPELINES)}")
    return PIPELINES[name]


def generate(
    config: Any | None = None,
    pipeline: str = "stabledreamer",
    out_root: str | Path = "outputs",
    resume: str | Path | None = None,
    export: bool = True,
    export_options: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
) -> Path:
    """Runs (or resumes) a text-to-3D pipeline and exports its result; returns the run folder.

    ``hooks`` (:class:`recon.train.Hooks`) let a caller learn the run folder, follow checkpoints and
    stop the run: a stop raises :class:`recon.train.Stopped` after a checkpoint, and
    ``generate(resume=run_dir)`` continues it.
    """
    if export:  # checked before any work: a bad --faces must not fail after the whole run trained
        validate_export_options(**(export_options or {}))
    if resume is not None:
        run_dir = Path(resume)
        pipeline, data = load_config(run_dir)
        spec = get_pipeline(pipeline)
        config = config_from_dict(spec.config_cls, data)
        if spec.resolve_inputs is not None:
            config = spec.resolve_inputs(config, run_dir)
        spec.validate(config)
        priors = spec.load_priors(config)
        trainer = spec.build_trainer(config, priors, run_dir)
        if trainer.checkpoint_path.is_file():
            trainer.load_checkpoint()
    else:
        spec = get_pipeline(pipeline)
        config = config or spec.config_cls()
        spec.validate(config)
        check_out_root(out_root)
        priors = spec.load_priors(config)
        spec.check_prompt(config, priors)
        name = spec.run_name(config, priors) if spec.run_name else getattr(config, "prompt", pipeline)
        run_dir = create_run_dir(out_root, pipeline, name)
        try:
            if spec.keep_inputs is not None:
                config = spec.keep_inputs(config, run_dir)
            trainer = spec.build_trainer(config, priors, run_dir)
            save_config(config, run_dir, pipeline)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
    log.info("run folder: %s", run_dir)
    if hooks is not None:
        trainer.hooks = hooks
    try:
        trainer.fit()
        save_turntable(trainer.model, run_dir / "renders" / "turntable.png")
        if export and spec.export is not None:
            spec.export(trainer, run_dir / "export")
        elif export:
            export_run(run_dir, **(export_options or {}))
    except BaseException:
        if resume is None:  # a new run that never checkpointed holds nothing worth keeping
            remove_incomplete_run(run_dir)
        raise
    return run_dir


def save_turntable(model, path: Path, n: int = 8, size: int = 128) -> Path:
    """A row of ``n`` views around the object (a preview image for galleries)."""
    from PIL import Image

    from recon.cameras import orbit_cameras
    from recon.render import render_scene

    with torch.no_grad():
        rgb = render_scene(
            model, orbit_cameras(n, elevation_deg=20.0, distance=3.0, width=size, height=size)
        ).rgb
    strip = (
        (rgb.clamp(0, 1).cpu().permute(1, 0, 2, 3).reshape(size, n * size, 3).numpy() * 255)
        .round()
        .astype(np.uint8)
    )
    return atomic_write(path, lambda tmp: Image.fromarray(strip).save(tmp, format="PNG"))
