"""Runs on disk (gallery, downloads, previews) and the worker thread that runs one library call for the UI."""

from __future__ import annotations

import contextvars
import os
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_GALLERY_RUNS = 60
"""Earlier runs shown in the gallery (newest first)."""


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
