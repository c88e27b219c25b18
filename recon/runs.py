"""Runs on disk: the output tree, typed configs in YAML, and exporting a run's result.

``outputs/<pipeline>/<slug>-<YYYYmmdd-HHMMSS>/`` holds ``config.yaml``, ``ckpt/last.pt``,
``metrics.json``, ``renders/`` and ``export/`` (``model.glb``, ``model.obj``, ``model.mtl``,
``texture.png``, ``splats.ply``, ``model.splat``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
import types
import typing
from pathlib import Path
from typing import Any

import torch
import yaml

from recon.atomic import atomic_write_text
from recon.errors import UserError
from recon.gaussians import GaussianModel

log = logging.getLogger("sds3d.runs")

EXPORT_FORMATS = ("glb", "obj", "ply", "splat")


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug[:max_len].rstrip("-")) or "run"


def new_run_dir(out_root: str | Path, pipeline: str, prompt: str) -> Path:
    """A fresh, not yet existing run folder name (nothing is created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out_root) / pipeline / f"{slugify(prompt)}-{stamp}"
    path, i = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{i}")
        i += 1
    return path


# ---------------------------------------------------------------- typed configs <-> YAML
def config_to_dict(config: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(config)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuilds a (nested) config dataclass from plain data, checking field names."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(tp):
            if arg is not type(None):
                return _coerce(arg, value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value))
    return value


def save_config(config: Any, run_dir: Path, pipeline: str) -> None:
    data = {"pipeline": pipeline, "config": config_to_dict(config)}
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))


def load_config(run_dir: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not an sds3d run folder (no config.yaml); pass the folder `generate` printed"
        )
    data = yaml.safe_load(path.read_text())
    return data["pipeline"], data["config"]


# ---------------------------------------------------------------- results
def load_model(run_dir: str | Path) -> torch.nn.Module:
    """The representation of a run's last checkpoint (3D Gaussians, a field, ...)."""
    from recon.train import load_representations

    ckpt = Path(run_dir) / "ckpt" / "last.pt"
    if not ckpt.is_file():
        raise UserError(f"{run_dir} has no checkpoint (ckpt/last.pt); run or resume `sds3d generate` first")
    modules = load_representations(ckpt)
    if len(modules) != 1:
        raise UserError(
            f"{run_dir} holds several representations ({sorted(modules)}); load them with "
            "recon.train.load_representations"
        )
    return next(iter(modules.values()))


def export_run(
    run_dir: str | Path,
    formats: tuple[str, ...] = EXPORT_FORMATS,
    faces: int = 20_000,
    texture_size: int = 512,
    image_size: int = 256,
    n_views: int = 24,
    radius: float = 1.1,
    method: str | None = None,
) -> dict[str, Path]:
    """Writes the run's mesh (GLB / OBJ+MTL+PNG with a baked UV texture) and splats into ``export/``.

    ``method``: ``marching_cubes`` on the Gaussians' opacity field (the default for text-to-3D runs:
    SDS Gaussians have soft edges, and TSDF fusion of their expected depth lands inside them, ≈10%
    small), or ``tsdf`` fusion of rendered depth (the default for reconstructed scenes).
    Every file is written atomically; a killed export leaves no partial files.
    """
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad:
        raise UserError(f"unknown export format(s) {bad}; choose from {list(EXPORT_FORMATS)}")
    model = load_model(run_dir)
    out = Path(run_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "ply" in formats:
        model.save_ply(out / "splats.ply")
        paths["ply"] = out / "splats.ply"
    if "splat" in formats:
        model.save_splat(out / "model.splat")
        paths["splat"] = out / "model.splat"
    mesh_formats = tuple(f for f in formats if f in ("glb", "obj"))
    if mesh_formats:
        from recon.mesh import MeshExportConfig, export_mesh
        from recon.mesh.gaussian_field import GaussianDensityField

        if method is None:
            method = "marching_cubes" if _pipeline_of(run_dir) == "stabledreamer" else "tsdf"
        resolution = 96 if method == "marching_cubes" else 128
        cfg = MeshExportConfig(
            method=method, radius=radius, resolution=resolution, max_faces=faces, texture_size=texture_size,
            image_size=image_size, n_views=n_views, formats=mesh_formats,
        )  # fmt: skip
        field = None
        if method == "marching_cubes":
            with torch.no_grad():
                field = GaussianDensityField(model.means, model.quats, model.scales, model.opacities)
        paths.update(export_mesh(gaussian_render_fn(model), out, cfg, density_fn=field))
    log.info("exported %s", ", ".join(str(p) for p in paths.values()))
    return paths


def _pipeline_of(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / "config.yaml"
    return yaml.safe_load(path.read_text()).get("pipeline") if path.is_file() else None


def gaussian_render_fn(model: GaussianModel):
    """The export chain's render function for a Gaussian scene (black background, expected depth)."""
    from recon.render import render_gaussians

    @torch.no_grad()
    def render(cameras):
        out = render_gaussians(model, cameras, background=0.0, with_depth=True)
        rgb = out.rgb / out.alpha.clamp_min(1e-6)  # un-premultiply: surface color, not blended
        return rgb.clamp(0, 1), out.depth, out.alpha

    return render


def remove_incomplete_run(run_dir: Path) -> None:
    """Removes a run folder that never got a checkpoint (nothing worth keeping in it)."""
    if run_dir.is_dir() and not (run_dir / "ckpt" / "last.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
