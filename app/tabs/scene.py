"""The "Scene" tab: a zipped scene folder (posed views, instance masks, prompts) to one mesh per object.

DP-Recon (Ni et al. 2025, https://arxiv.org/abs/2503.14830) through
:func:`recon.pipelines.dprecon.reconstruct`, in a :class:`app.jobs.RunJob` worker so that Cancel stops it
after its current step (with a checkpoint). The form values become a checked
:class:`~recon.pipelines.dprecon.DPReconConfig` (:func:`make_scene_inputs`: plain values in,
:class:`recon.errors.UserError` naming the form field out). The upload is a ``.zip`` of a scene folder in
either layout of :mod:`recon.data.scene` (the folder itself or its contents at the top level); it is read
only through :func:`app.scene_zip.scene_members` (no absolute paths, no ``..``, no links, at most
:data:`~app.scene_zip.MAX_UNPACKED_BYTES` in :data:`~app.scene_zip.MAX_MEMBERS` files) and loaded with
:func:`~recon.data.scene.load_instance_scene` before anything is queued, so a bad scene is a field error.

A run lives in ``outputs/dprecon/<zip name>-<time>``: the scene unpacked into ``scene/``, then what the
pipeline writes there (its ``config.yaml``, checkpoints, ``metrics.json``, ``export/``) and this tab's
``preview.png``. The folder appears whole (a temporary folder beside it, renamed) and a run that stops
before its first checkpoint is removed. A cancelled run continues from its checkpoint when its folder
name is typed in the "Continue run" field (:func:`recon.pipelines.dprecon.reconstruct` with ``resume``,
as ``sds3d reconstruct --resume RUN`` does). The tab has its own result panel (status, a preview
grid, the scene GLB, downloads): a scene is several meshes, not the shared panel's one.

Gradio is imported inside :func:`build_scene_tab` only (the app sets its environment first).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.jobs import RunJob
from app.scene_zip import scene_members, unpack_scene
from app.tabs.common import bounded, field_error, field_validator, stream_job
from app.tabs.common import new_run_folder as common_run_folder

log = logging.getLogger("sds3d.app")

FIELDS = ("scene", "prompts", "recon_steps", "refine_steps", "sds", "seed", "resume")
"""The endpoint's inputs, in order (also the names ``err.field`` uses)."""
LIMITS: dict[str, tuple[int, int]] = {
    "reconstruction steps": (1, 20_000),
    "refine steps": (0, 20_000),
    "seed": (0, 2**32 - 1),
}
"""Server-side bounds of the tab's numeric fields."""
SDS_MODES = ("visibility", "uniform", "none")
MAX_PROMPT_CHARS = 300
RUN_FOLDER = "dprecon"
"""Runs go to ``outputs/dprecon/<zip name>-<time>``."""
PREVIEW_SIZE = 160
"""Side of one tile of the preview grid."""
PREVIEW_COLUMNS = 4
PROMPTS_INFO = (
    'Optional JSON, instance id -> prompt, e.g. {"1": "a red chair", "2": "a blue table"}; it replaces the '
    "scene's prompts.json (an object without a prompt gets no SDS). Empty: the scene's own prompts."
)
RESUME_INFO = (
    "Optional: the folder name of a cancelled run (outputs/dprecon/<name>, as the status line showed it) to "
    "continue from its checkpoint with the settings it was started with; the other fields are then ignored."
)


@dataclass
class SceneInputs:
    """A checked form: the run's settings and where its scene comes from."""

    config: Any  # DPReconConfig; scene set when the run folder is made
    archive: Path | None  # the uploaded zip (None when continuing a run)
    root: str  # the scene folder's path inside the zip ("" or "room/")
    prompts: dict[int, str] | None  # the prompts override (None: the scene's own)
    name: str  # the zip's file stem, or the continued run's folder name
    resume: Path | None = None  # the run folder to continue


def _bounded(field: str, name: str, value: Any) -> int:
    return bounded(field, name, value, LIMITS)


def parse_prompts(text: str | None) -> dict[int, str] | None:
    """The prompts override: ``{"1": "a red chair", ...}`` -> ``{1: "a red chair"}``; None when empty.

    Raises:
        UserError: (``err.field == "prompts"``) not JSON of that shape.
    """
    text = (text or "").strip()
    if not text:
        return None
    example = 'write {"1": "a red chair", "2": "a blue table"} (instance id -> prompt)'
    try:
        data = json.loads(text)
    except ValueError as err:
        raise field_error("prompts", f"the prompts are not JSON ({err}); {example}") from None
    if not isinstance(data, dict) or not data:
        raise field_error("prompts", f"the prompts must map instance ids to prompts; {example}")
    out = {}
    for key, value in data.items():
        try:
            iid = int(key)
        except (TypeError, ValueError):
            raise field_error(
                "prompts", f"{key!r} is not an instance id (the mask value, 1, 2, ...); {example}"
            ) from None
        if iid <= 0:
            raise field_error(
                "prompts", f"instance id {iid} is not positive (0 is the background); {example}"
            )
        if not isinstance(value, str) or not value.strip():
            raise field_error("prompts", f"the prompt of instance {iid} is empty; describe the object")
        if len(value.strip()) > MAX_PROMPT_CHARS:
            raise field_error(
                "prompts",
                f"the prompt of instance {iid} has {len(value.strip())} characters; "
                f"keep it to {MAX_PROMPT_CHARS}",
            )
        out[iid] = value.strip()
    return out


def _write_prompts(folder: Path, prompts: dict[int, str], instance_ids: list[int]) -> None:
    """Writes the override as the scene's geometry prompts, in the folder's own layout."""
    from recon.data.scene import scene_layout

    if scene_layout(folder) == "documented":
        text = json.dumps({str(k): v for k, v in sorted(prompts.items())}, indent=1)
        (folder / "prompts.json").write_text(text)
        return
    ids = instance_ids  # DP-Recon's keys are label indices: the instances in instance_id.json's order
    if (folder / "instance_id.json").is_file():
        table = json.loads((folder / "instance_id.json").read_text())
        ids = [int(v) for v in table.values() if int(v) not in (0, 255)] or instance_ids
    labels = {str(ids.index(i) + 1): text for i, text in sorted(prompts.items())}
    (folder / "scene_prompt_geometry.json").write_text(json.dumps(labels, indent=1))


def check_scene(folder: Path, prompts: dict[int, str] | None = None) -> Any:
    """Loads an unpacked scene as the pipeline will (:func:`~recon.data.scene.load_instance_scene`), with
    the prompts override written into it first; returns the :class:`~recon.data.scene.InstanceScene`.

    Raises:
        UserError: fewer than 3 views, masks of another size than the images, a prompt for an id no mask
            has, an instance no view sees, ... (``err.field`` is ``"scene"``, or ``"prompts"`` for the
            override's ids).
    """
    from recon.data.scene import load_instance_scene, scene_layout
    from recon.errors import UserError

    def load() -> Any:
        try:
            return load_instance_scene(folder)
        except UserError as err:
            message = str(err).replace(str(folder), "the scene")  # the user's view: no temporary paths
            raise field_error("scene", message) from None

    if prompts is None:
        return load()
    try:
        layout = scene_layout(folder)
    except UserError as err:
        raise field_error("scene", str(err).replace(str(folder), "the scene")) from None
    own = [folder / "prompts.json"] if layout == "documented" else list(folder.glob("*_prompt_geometry.json"))
    for path in own:  # the override replaces them
        path.unlink(missing_ok=True)
    scene = load()
    unknown = sorted(set(prompts) - set(scene.instance_ids))
    if unknown:
        raise field_error(
            "prompts",
            f"the prompts name instance {unknown[0]}, which no mask has (ids in the masks: "
            f"{', '.join(map(str, scene.instance_ids))}); fix the id or remove that prompt",
        )
    _write_prompts(folder, prompts, scene.instance_ids)
    return replace(scene, prompts=dict(prompts))


# ---------------------------------------------------------------- the form
def resumable_run(outputs: Path, name: str) -> Path:
    """The run folder ``outputs/dprecon/<name>`` of a stopped DP-Recon run (checked), to continue.

    Raises:
        UserError: (``err.field == "resume"``) not a plain folder name, no such run, not a DP-Recon run,
            no checkpoint, or already finished.
    """
    from recon.errors import UserError
    from recon.runs import load_config

    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise field_error(
            "resume",
            f"{name!r} is not a run folder name; type the name only (e.g. "
            "room-20260101-120000), as the status line showed it",
        )
    run_dir = Path(outputs) / RUN_FOLDER / name
    if not run_dir.is_dir():
        raise field_error(
            "resume",
            f"there is no run {name!r} in {RUN_FOLDER}/; check the name, or clear the "
            "field to start a new run",
        )
    try:
        pipeline, _ = load_config(run_dir)
    except UserError as err:
        raise field_error("resume", str(err)) from None
    if pipeline != "dprecon":
        raise field_error("resume", f"{name} is a {pipeline} run; continue it with its own command")
    if (run_dir / "export" / "scene.glb").is_file():
        raise field_error(
            "resume",
            f"{name} is finished (its meshes are in {RUN_FOLDER}/{name}/export); "
            "clear the field to start a new run",
        )
    if not (run_dir / "ckpt" / "last.pt").is_file():
        raise field_error("resume", f"{name} has no checkpoint to continue from; start a new run")
    return run_dir


def make_scene_inputs(
    scene: str | None,
    prompts: str | None = "",
    recon_steps: Any = 1000,
    refine_steps: Any = 300,
    sds: str = "visibility",
    seed: Any = 0,
    resume: str | None = "",
    *,
    outputs: str | Path = "outputs",
    scene_config: dict[str, Any] | None = None,
    read_files: bool = True,
) -> SceneInputs:
    """The checked run of the tab's form values.

    Args:
        scene: Path of the uploaded scene zip.
        prompts: The prompts override (JSON text; empty: the scene's prompts).
        recon_steps: Reconstruction steps.
        refine_steps: Steps with the prior (0: none).
        sds: SDS weighting: visibility (DP-Recon), uniform, none.
        seed: Random seed.
        resume: Folder name of a stopped run in ``outputs/dprecon`` to continue (the rest is then ignored).
        outputs: Root of the output tree.
        scene_config: Further :class:`DPReconConfig` settings (the app's; tests make runs small).
        read_files: Also unpack the zip into a temporary folder and load the scene (then removed).

    Raises:
        UserError: naming the fix and, in ``err.field``, the form field at fault.
    """
    from recon.errors import UserError, check_fields

    numbers = {
        "recon_steps": _bounded("recon_steps", "reconstruction steps", recon_steps),
        "refine_steps": _bounded("refine_steps", "refine steps", refine_steps),
        "seed": _bounded("seed", "seed", 0 if seed is None else seed),
    }
    if sds not in SDS_MODES:
        raise field_error("sds", f"sds is one of {', '.join(SDS_MODES)}, got {sds!r}")
    from recon.pipelines.dprecon import DPReconConfig  # after the cheap checks
    from recon.runs import config_from_dict, load_config

    if (resume or "").strip():
        run_dir = resumable_run(Path(outputs), resume)
        config = config_from_dict(DPReconConfig, load_config(run_dir)[1])
        return SceneInputs(config, None, "", None, run_dir.name, run_dir)
    if not scene:
        raise field_error(
            "scene",
            "upload a scene first: a .zip of a scene folder (transforms.json or "
            "cameras.npz; `sds3d scene synth OUT_DIR` makes one)",
        )
    if Path(scene).suffix.lower() != ".zip":
        raise field_error(
            "scene", f"{Path(scene).name!r} is not a .zip file; zip the scene folder and upload that"
        )
    override = parse_prompts(prompts)
    try:
        config = DPReconConfig(**{**(scene_config or {}), **numbers, "sds": sds, "steps": None})
        check_fields(config)
    except UserError as err:
        raise field_error("recon_steps", str(err)) from None
    members, root = scene_members(scene)
    if read_files:
        with tempfile.TemporaryDirectory(prefix=".scene-check-", dir=Path(scene).parent) as tmp:
            check_scene(unpack_scene(scene, members, root, Path(tmp) / "scene"), override)
    return SceneInputs(config, Path(scene), root, override, Path(scene).stem)


def new_run_folder(outputs: Path, name: str) -> Path:
    """``outputs/dprecon/<name>-<time>`` (``-1``, ``-2``, ... when taken); not created."""
    return common_run_folder(outputs, RUN_FOLDER, name, "scene")


def prepare_run(inputs: SceneInputs, outputs: str | Path) -> Path:
    """The run folder: the continued one, or a new one holding the unpacked, checked scene and the run's
    ``config.yaml`` (made whole in a temporary folder beside it, then renamed; nothing left on failure).

    Raises:
        UserError: the scene cannot be unpacked or loaded (``err.field`` names the form field).
    """
    from recon.runs import save_config

    if inputs.resume is not None:
        return inputs.resume
    parent = Path(outputs) / RUN_FOLDER
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".new-run-", dir=parent))
    try:
        members, root = scene_members(inputs.archive)
        check_scene(unpack_scene(inputs.archive, members, root, tmp / "scene"), inputs.prompts)
        run_dir = new_run_folder(Path(outputs), inputs.name)
        save_config(replace(inputs.config, scene=str(run_dir.resolve() / "scene")), tmp, "dprecon")
        os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


# ---------------------------------------------------------------- the run
@dataclass
class SceneProgress:
    """Steps done of a run's ``total`` (reconstruction, then refine), followed through its hooks."""

    run_dir: Path
    recon_steps: int
    total: int
    done: int = 0

    @classmethod
    def of_run(cls, run_dir: Path) -> SceneProgress:
        """The progress of a run folder: its steps from ``config.yaml``, those done from its checkpoints."""
        from recon.pipelines.dprecon import DPReconConfig, stage_steps
        from recon.runs import config_from_dict, load_config
        from recon.train import read_checkpoint

        recon, refine = stage_steps(config_from_dict(DPReconConfig, load_config(run_dir)[1]))
        progress = cls(Path(run_dir), recon, recon + refine)
        for path, offset, steps in (
            (run_dir / "ckpt", 0, recon),
            (run_dir / "refine" / "ckpt", recon, refine),
        ):
            if (path / "last.pt").is_file():
                state = read_checkpoint(path / "last.pt")
                progress.done = offset + (steps if state["stage_index"] >= 1 else int(state["stage_step"]))
        return progress

    def hooks(self, hooks: Any = None) -> Any:
        """``hooks`` (a :class:`recon.train.Hooks`) that also count the steps."""
        from recon.train import Hooks

        hooks = hooks or Hooks()
        refine = self.run_dir / "refine" / "ckpt" / "last.pt"

        def should_stop() -> bool:  # polled once after every step
            self.done += 1
            return bool(hooks.should_stop and hooks.should_stop())

        def on_checkpoint(path: Path, step: int) -> None:
            self.done = step + (self.recon_steps if Path(path) == refine else 0)
            if hooks.on_checkpoint is not None:
                hooks.on_checkpoint(path, step)

        return Hooks(hooks.on_run_dir, on_checkpoint, should_stop)


def run_scene(run_dir: Path, hooks: Any = None, progress: SceneProgress | None = None) -> Path:
    """Runs (or continues) the DP-Recon run in ``run_dir`` to its export, then writes ``preview.png``.

    The job function of the tab's worker. A run that stops or fails before its first checkpoint is
    removed; one stopped later (:class:`recon.train.Stopped`, raised on) continues on the next call. A
    preview that cannot be drawn is logged, not raised (the export is the result).

    Args:
        run_dir: From :func:`prepare_run`.
        hooks: :class:`recon.train.Hooks` (the worker's: Cancel).
        progress: Counts the steps (default: a new :meth:`SceneProgress.of_run`).

    Returns:
        ``run_dir``.
    """
    from recon.pipelines.dprecon import reconstruct
    from recon.runs import remove_incomplete_run

    progress = progress or SceneProgress.of_run(run_dir)
    try:
        reconstruct(resume=run_dir, hooks=progress.hooks(hooks))
    except BaseException:
        remove_incomplete_run(run_dir)
        raise
    try:
        render_preview(run_dir)
    except Exception as err:  # noqa: BLE001 - the export is the result; the preview is a courtesy
        log.warning("no preview for %s: %s", run_dir, err)
    return run_dir


# ---------------------------------------------------------------- results
def _textured_mesh(path: Path) -> tuple[Any, Any, Any, Any]:
    """``(vertices [V, 3], faces [F, 3], uvs [V, 2], texture [S, S, 3])`` of an exported GLB."""
    import numpy as np
    import torch
    import trimesh

    mesh = trimesh.load(path, force="mesh")
    image = mesh.visual.material.baseColorTexture.convert("RGB")
    texture = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    as_tensor = lambda a, dtype: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
    return (as_tensor(mesh.vertices, torch.float32), as_tensor(mesh.faces, torch.int64),
            as_tensor(mesh.visual.uv, torch.float32), texture)  # fmt: skip


def _render_meshes(meshes: list[tuple], cameras: Any) -> Any:
    """The nearest surface of several textured meshes from one camera: ``[H, W, 3]`` uint8 on white."""
    import numpy as np
    import torch

    from recon.render.mesh import render_textured_mesh

    rgb = torch.ones(cameras.height, cameras.width, 3)
    depth = torch.full((cameras.height, cameras.width), float("inf"))
    for vertices, faces, uvs, texture in meshes:
        out = render_textured_mesh(vertices, faces, uvs, texture, cameras)
        closer = (out.alpha[0, ..., 0] > 0) & (out.depth[0, ..., 0] < depth)
        rgb[closer], depth[closer] = out.rgb[0][closer], out.depth[0, ..., 0][closer]
    return (rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def render_preview(run_dir: Path, size: int = PREVIEW_SIZE) -> Path | None:
    """``preview.png``: the exported scene from the first input view, then each object alone (from the
    side the photos saw it), ``size`` px tiles, :data:`PREVIEW_COLUMNS` a row; None without an export.

    Rendered from the exported GLBs (textured, unlit) with :func:`recon.render.mesh.render_textured_mesh`.
    """
    import io

    import numpy as np
    import torch
    from PIL import Image

    from recon.atomic import atomic_write_bytes
    from recon.cameras import Cameras, focal_from_fov, look_at
    from recon.data.scene import load_instance_scene

    export = Path(run_dir) / "export"
    objects = sorted((export / "objects").glob("*.glb"))
    if not objects:
        return None
    views = load_instance_scene(Path(run_dir) / "scene", check=False).cameras
    meshes = [_textured_mesh(p) for p in objects]
    background = [_textured_mesh(export / "background.glb")] if (export / "background.glb").is_file() else []
    one = torch.ones(1)
    s = size / views.height
    first = Cameras(views.camera_to_worlds[:1], views.fx[:1] * s, views.fy[:1] * s, one * size / 2,
                    views.cy[:1] * s, size, size)  # fmt: skip
    tiles = [_render_meshes(background + meshes, first)]
    seen_from = views.camera_to_worlds[:, :3, 3].mean(0)
    fov = 40.0
    for vertices, *rest in meshes:
        lo, hi = vertices.min(0).values, vertices.max(0).values
        center, radius = (lo + hi) / 2, float((hi - lo).norm()) / 2
        direction = torch.nn.functional.normalize(seen_from - center, dim=0) + torch.tensor([0.0, 0.4, 0.0])
        eye = center + torch.nn.functional.normalize(direction, dim=0) * radius / np.sin(np.radians(fov / 2))
        focal = focal_from_fov(fov, size).reshape(1)
        cams = Cameras(look_at(eye[None], center[None]), focal, focal.clone(), one * size / 2, one * size / 2,
                       size, size)  # fmt: skip
        tiles.append(_render_meshes([(vertices, *rest)], cams))
    cols = min(PREVIEW_COLUMNS, len(tiles))
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * size, cols * size, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
    data = io.BytesIO()
    Image.fromarray(grid).save(data, format="PNG")
    return atomic_write_bytes(Path(run_dir) / "preview.png", data.getvalue())


def result_files(run_dir: Path) -> dict[str, Any]:
    """The run's preview and scene GLB (None where missing) and its downloads: every object's GLB and
    OBJ (+ MTL, PNG), the background's, the scene GLB and metrics.json."""
    run_dir, export = Path(run_dir), Path(run_dir) / "export"
    existing = lambda p: p if p.is_file() else None  # noqa: E731
    mesh_files = (".glb", ".obj", ".mtl", ".png")
    downloads = sorted(p for p in (export / "objects").glob("*") if p.suffix in mesh_files)
    downloads += sorted(p for p in export.glob("background.*") if p.suffix in mesh_files)
    downloads += [p for p in (export / "scene.glb", run_dir / "metrics.json") if p.is_file()]
    return {"preview": existing(run_dir / "preview.png"), "scene": existing(export / "scene.glb"),
            "downloads": downloads}  # fmt: skip


def metrics_line(metrics: dict[str, Any]) -> str:
    """One line of a run's metrics.json: objects, held-out PSNR and mean F-score where known, time."""
    parts = [f"{metrics.get('n_objects', '?')} objects from {metrics.get('n_views', '?')} views"]
    if "psnr_eval" in metrics:
        parts.append(f"held-out PSNR {metrics['psnr_eval']['mean']:.1f} dB")
    scores = [o["fscore"] for o in metrics.get("objects", {}).values() if o.get("fscore") is not None]
    if scores:
        parts.append(f"mean F-score {sum(scores) / len(scores):.2f}")
    if "seconds" in metrics:
        parts.append(f"{metrics['seconds']:.0f} s")
    return ", ".join(parts)


# ---------------------------------------------------------------- the Gradio tab
def build_scene_tab(
    outputs: Path,
    user_error: Callable[[Exception], Exception],
    scene_config: dict[str, Any] | None = None,
) -> Any:
    """Builds the Scene tab (inside the caller's ``gr.Tab``) with its own result panel, and wires it.

    Args:
        outputs: Root of the output tree (runs go to ``outputs/dprecon/``).
        user_error: Turns a :class:`recon.errors.UserError` into the app's ``gr.Error``.
        scene_config: Further :class:`DPReconConfig` settings of every run (tests make runs small).

    Returns:
        The Reconstruct event.
    """
    import gradio as gr

    def form(*values: Any, read_files: bool = True) -> SceneInputs:
        return make_scene_inputs(*values, outputs=outputs, scene_config=scene_config, read_files=read_files)

    validate_fn = field_validator(form, FIELDS, "scene")

    def scene_fn(
        scene: str | None, prompts: str, recon_steps: float, refine_steps: float, sds: str, seed: float,
        resume: str, progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's injection idiom
    ) -> Iterator[tuple]:  # fmt: skip
        """Runs DP-Recon on the scene; streams (status, preview, scene GLB, downloads)."""
        from recon.errors import UserError

        try:
            inputs = form(scene, prompts, recon_steps, refine_steps, sds, seed, resume, read_files=False)
            run_dir = prepare_run(inputs, outputs)  # unpacks and loads the scene again
            counter = SceneProgress.of_run(run_dir)
        except UserError as err:
            raise user_error(err) from None

        progress(0.0, desc="loading the scene and the prior")
        verb = f"Continuing from step {counter.done}" if inputs.resume else "Started"
        started = f"{verb}: `{run_dir.name}`, {inputs.config.sds} SDS, {counter.total} steps."
        job = RunJob(lambda hooks: run_scene(run_dir, hooks, counter)).start()

        def status() -> str:
            done, total = counter.done, counter.total
            stage = "exporting" if done >= total else f"step {done} of {total}"
            return f"Training `{run_dir.name}`: {stage}."

        yield from stream_job(job, started, status, user_error)
        yield done_outputs(run_dir)

    def done_outputs(run_dir: Path) -> tuple:
        files = result_files(run_dir)
        metrics_path = run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        message = f"Done: `{run_dir}`" + (f" — {metrics_line(metrics)}" if metrics else "")
        as_str = {k: str(files[k]) if files[k] else None for k in ("preview", "scene")}
        return message, as_str["preview"], as_str["scene"], [str(p) for p in files["downloads"]]

    gr.Markdown(
        "DP-Recon ([Ni et al. 2025](https://arxiv.org/abs/2503.14830)): a few posed photos of a room with "
        "instance masks become one textured mesh per object; score distillation on each object, weighted by "
        "how visible it was in the photos, fills what no photo saw. Upload a .zip of a scene folder "
        "(transforms.json + images/ + masks/ + prompts.json, or DP-Recon's cameras.npz layout); "
        "`sds3d scene synth scenes/room` makes one."
    )
    scene = gr.File(label="Scene (.zip of a scene folder)", type="filepath", file_types=[".zip"],
                    elem_id="scene-upload")  # fmt: skip
    prompts = gr.Textbox(label="Prompts (optional)", placeholder='{"1": "a red chair"}', info=PROMPTS_INFO,
                         lines=2, elem_id="scene-prompts")  # fmt: skip
    with gr.Row():
        recon_steps = gr.Number(1000, label="Reconstruction steps", precision=0)
        refine_steps = gr.Number(300, label="Refine steps", precision=0, info="with the prior; 0: none")
    sds = gr.Radio(list(SDS_MODES), value="visibility", label="SDS",
                   info="visibility: weighted by what the photos saw (DP-Recon); uniform: weight 1; "
                   "none: no prior (the ablation)")  # fmt: skip
    with gr.Accordion("Advanced settings", open=False):
        seed = gr.Number(0, label="Seed", precision=0)
        resume = gr.Textbox(label="Continue run", placeholder="room-20260101-120000", info=RESUME_INFO,
                            elem_id="scene-resume")  # fmt: skip
    with gr.Row():
        run_button = gr.Button("Reconstruct scene", variant="primary", elem_id="scene-run")
        cancel_button = gr.Button("Cancel", variant="stop", elem_id="scene-cancel")
    status = gr.Markdown("", elem_id="scene-status")
    preview = gr.Image(label="Preview (the scene from the first photo, then each object alone)",
                       type="filepath", interactive=False)  # fmt: skip
    scene_view = gr.Model3D(label="Scene (GLB, a node per object)", elem_id="scene-view", interactive=False,
                            height=360)  # fmt: skip
    scene_file = gr.File(visible=False)
    downloads = gr.File(label="Downloads (per object GLB / OBJ, scene.glb, metrics.json)",
                        file_count="multiple", interactive=False)  # fmt: skip

    inputs = [scene, prompts, recon_steps, refine_steps, sds, seed, resume]
    event = run_button.click(
        scene_fn, inputs, [status, preview, scene_file, downloads], api_name="scene", concurrency_limit=1,
        concurrency_id="generate", validator=validate_fn, show_progress="full",
    )  # fmt: skip
    # A Model3D updated by a streaming event never creates its canvas (see app.ui): set it afterwards.
    event.then(
        lambda path: path, [scene_file], [scene_view], api_visibility="private", show_progress="hidden"
    )
    cancel_button.click(None, None, None, cancels=[event])
    return event
