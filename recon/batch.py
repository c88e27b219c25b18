"""Many reconstructions: one pure, idempotent job per input, a JSONL manifest, local or Ray executors.

* A job is keyed by its input and its settings (:func:`settings_key`, a hash of every setting that
  shapes the result), so a rerun with a changed setting redoes the job; ``force`` redoes every job.
* :func:`run_job` ``(input, config, out_root) -> record`` reconstructs one input into its own folder
  ``out_root/<stem>-<hash of the absolute path>`` (the same input always maps to the same folder).
  It works in a hidden temp folder and renames it into place on success, so a folder that exists is
  complete; a folder that exists and holds the same settings is not redone. Errors become a failed
  record — nothing raises (an interrupt, ``KeyboardInterrupt``, removes the temp folder and propagates).
* The manifest ``out_root/manifest.jsonl`` gets one line per finished job (``input``, ``settings``,
  ``status`` ``ok|failed``, ``error``, ``metrics``, ``seconds``, ``output``), each appended with a single
  ``write`` under an exclusive lock, so concurrent writers never interleave lines.
* :func:`run_batch` skips inputs whose last manifest entry with the same settings is ``ok`` (and whose
  folder exists), runs the rest on the ``local`` executor (in this process, one after another) or on
  ``ray`` (one task per input, ``num_gpus=1`` on CUDA machines, CPUs otherwise, with retries), and
  returns the records; :func:`summary_table` formats them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recon.errors import UserError

log = logging.getLogger("sds3d.batch")

MANIFEST = "manifest.jsonl"


@dataclass
class BatchOptions:
    """How a batch runs."""

    executor: Literal["local", "ray"] = "local"
    """``local``: in this process, one job after another; ``ray``: one Ray task per input."""
    address: str | None = None
    """Ray cluster address (``auto``, ``ray://host:10001``); ``None`` starts a local Ray."""
    retries: int = 1
    """Extra attempts of a job after an unexpected error (bad input is never retried)."""
    num_cpus: int = 2
    """CPUs reserved per Ray task on machines without CUDA."""
    local_ray_cpus: int = 2
    """CPUs of the local Ray started when ``address`` is ``None``."""
    force: bool = False
    """Redo every job, also those done with the same settings."""


SETTINGS_IGNORED = frozenset({"progress_bar"})
"""Config fields that don't change a job's result (left out of :func:`settings_key`)."""


def settings_key(config: Any) -> str:
    """12 hex digits naming a job's settings: a hash of the config as plain data (a dataclass or the
    mapping of a run's ``config.yaml``), less :data:`SETTINGS_IGNORED`."""
    from recon.runs import config_to_dict

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items() if k not in SETTINGS_IGNORED}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    data = plain(config if isinstance(config, dict) else config_to_dict(config))
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def folder_settings(run_dir: Path) -> str | None:
    """The :func:`settings_key` of a finished job folder (from its ``config.yaml``), None when unreadable."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
        return settings_key(data["config"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None


def job_dir(out_root: str | Path, source: str | Path) -> Path:
    """The output folder of one input: ``<stem>-<8 hex of the absolute path>``."""
    from recon.runs import slugify

    path = Path(source).expanduser().resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return Path(out_root) / f"{slugify(path.stem)}-{digest}"


def run_job(source: str, config: Any, out_root: str, retries: int = 0, force: bool = False) -> dict[str, Any]:
    """Reconstructs one input into :func:`job_dir`; returns its manifest record (never raises).

    Args:
        source: A video, image folder, transforms.json or COLMAP folder.
        config: A :class:`~recon.pipelines.video_recon.VideoReconConfig`.
        out_root: The batch's output root.
        retries: Extra attempts after an unexpected (non-user) error.
        force: Redo the job even when its folder holds a result with the same settings.
    """
    from recon.pipelines import video_recon

    started = time.perf_counter()
    final = job_dir(out_root, source)
    key = settings_key(config)
    record: dict[str, Any] = {
        "input": str(source), "output": str(final), "settings": key, "status": "ok", "error": None,
    }  # fmt: skip
    if not force and (final / "metrics.json").is_file() and folder_settings(final) == key:
        record.update(status="skipped", metrics=_metrics(final), seconds=0.0)
        return record
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    for attempt in range(retries + 1):
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            video_recon.reconstruct(source, config, run_dir=tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            record["metrics"] = _metrics(final)
            break
        except UserError as err:
            record.update(status="failed", error=str(err))
            break
        except Exception as err:  # noqa: BLE001 - one bad job must not stop the batch
            record.update(status="failed", error=f"{type(err).__name__}: {err}")
            log.warning("job %s attempt %d failed: %s", source, attempt + 1, err)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if record["status"] == "failed":
        record["metrics"] = None
    record["seconds"] = time.perf_counter() - started
    return record


def _metrics(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return {
        "test": data.get("test"),
        "num_gaussians": data.get("num_gaussians"),
        "seconds": data.get("seconds"),
    }


# ------------------------------------------------------------------------------------- manifest
def append_record(manifest: Path, record: dict[str, Any]) -> None:
    """Appends one JSON line with a single ``write`` under an exclusive lock."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_manifest(manifest: Path, by_settings: bool = False) -> dict[Any, dict[str, Any]]:
    """The last record of each input, or of each ``(input, settings)`` with ``by_settings``.

    A torn last line (from a killed writer) and lines that are not records are ignored.
    """
    latest: dict[Any, dict[str, Any]] = {}
    if not manifest.is_file():
        return latest
    for line in manifest.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("input"), str):
            continue
        latest[(record["input"], record.get("settings")) if by_settings else record["input"]] = record
    return latest


# ------------------------------------------------------------------------------------- executors
def run_batch(
    inputs: list[str], config: Any, out_root: str | Path, options: BatchOptions | None = None
) -> list[dict[str, Any]]:
    """Runs every input not yet done with these settings (every input with ``options.force``); returns
    one record per input (``skipped`` for done ones)."""
    options = options or BatchOptions()
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    manifest = out_root / MANIFEST
    done = {} if options.force else read_manifest(manifest, by_settings=True)
    key = settings_key(config)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for source in dict.fromkeys(str(s) for s in inputs):
        prev = done.get((source, key))
        folder = job_dir(out_root, source)
        if (
            prev
            and prev["status"] == "ok"
            and (folder / "metrics.json").is_file()
            and (folder_settings(folder) == key)
        ):
            records[source] = {**prev, "status": "skipped", "seconds": 0.0}
        else:
            todo.append(source)
    log.info("batch: %d inputs, %d done before, %d to run (%s)", len(records) + len(todo), len(records),
             len(todo), options.executor)  # fmt: skip
    if options.executor == "local":
        for source in todo:
            record = run_job(source, config, str(out_root), options.retries, force=options.force)
            append_record(manifest, record)
            records[source] = record
    elif options.executor == "ray":
        for record in _run_ray(todo, config, str(out_root), options):
            append_record(manifest, record)
            records[record["input"]] = record
    else:
        raise UserError(f"unknown executor {options.executor!r}; choose local or ray")
    return [records[s] for s in dict.fromkeys(str(s) for s in inputs)]


def _run_ray(todo: list[str], config: Any, out_root: str, options: BatchOptions):
    """Yields records as Ray tasks finish (one task per input)."""
    try:
        import ray
    except ImportError as err:
        raise UserError(
            'the ray executor needs Ray: pip install "sds3d[cluster]" (or "ray[default]")'
        ) from err
    if not todo:
        return
    started_here = not ray.is_initialized()
    if started_here:
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
        else:
            ray.init(num_cpus=options.local_ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        import torch

        resources = {"num_gpus": 1} if torch.cuda.is_available() else {"num_cpus": options.num_cpus}
        task = ray.remote(max_retries=options.retries, **resources)(run_job)
        pending = {task.remote(s, config, out_root, 0, options.force): s for s in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            source = pending.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except Exception as err:  # noqa: BLE001 - a crashed worker is this job's failure only
                yield {"input": source, "output": str(job_dir(out_root, source)), "status": "failed",
                       "settings": settings_key(config), "error": f"{type(err).__name__}: {err}",
                       "metrics": None, "seconds": 0.0}  # fmt: skip
    finally:
        if started_here:
            ray.shutdown()


def summary_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table: input, status, held-out PSNR, seconds, error."""
    rows = [("input", "status", "psnr", "seconds", "error")]
    for r in records:
        test = ((r.get("metrics") or {}).get("test")) or {}
        psnr = f"{test['psnr']:.2f}" if "psnr" in test else "-"
        error = (r.get("error") or "")[:70]
        rows.append((Path(r["input"]).name, r["status"], psnr, f"{r.get('seconds') or 0:.1f}", error))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    ok = sum(r["status"] in ("ok", "skipped") for r in records)
    return "\n".join([*lines, f"{ok} of {len(records)} done, {len(records) - ok} failed"])
