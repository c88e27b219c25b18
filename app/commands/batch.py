"""``sds3d batch``: reconstruct many inputs, locally or on a Ray cluster, with a resumable manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from recon.errors import IMAGE_SIDE, KEYFRAMES, SEED, STEPS, checked


@dataclass
class BatchCommand:
    """Reconstruct many inputs; each gets its own folder, OUT/manifest.jsonl records every job, jobs done
    with the same settings are skipped on a rerun (--force redoes them) and a failing input never stops
    the others."""

    inputs: Annotated[tuple[Path, ...], tyro.conf.Positional] = checked(
        (), path="exists", fix="pass videos, image folders, transforms.json files or COLMAP folders"
    )
    """Videos, image folders, transforms.json files or COLMAP folders."""
    list: Path | None = checked(None, path="file", fix="pass a text file with one input per line")
    """A text file with one input per line (blank lines and # comments ignored)."""
    executor: Literal["local", "ray"] = "local"
    """local: one job after another in this process; ray: one Ray task per input."""
    address: str | None = None
    """Ray cluster address (e.g. auto or ray://head:10001); default: start a local Ray."""
    retries: int = checked(1, low=0, high=100)
    """Extra attempts of a job after an unexpected error (bad input is not retried)."""
    out: Path = checked(Path("outputs/batch"), path="out_folder")
    """Output root: one folder per input plus manifest.jsonl."""
    max_frames: int = checked(60, KEYFRAMES)
    """Keyframes taken from a video at most."""
    steps: int = checked(1500, STEPS)
    """Optimization steps per job."""
    resolution: int = checked(0, IMAGE_SIDE)
    """Longer image side used for fitting (0: the input's)."""
    seed: int = checked(0, SEED)
    """Random seed."""
    no_export: bool = False
    """Skip the mesh / splat export of each job."""
    force: bool = False
    """Redo every job, also those already done with the same settings."""

    def all_inputs(self) -> list[str]:
        from recon.errors import UserError

        items = [str(p) for p in self.inputs]
        if self.list is not None:
            if not self.list.is_file():
                raise UserError(
                    f"--list {self.list} does not exist; pass a text file with one input per line"
                )
            try:
                text = self.list.read_text()
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"cannot read --list {self.list} ({err}); pass a text file") from None
            lines = (ln.strip() for ln in text.splitlines())
            items += [ln for ln in lines if ln and not ln.startswith("#")]
        if not items:
            raise UserError("no inputs; pass paths (sds3d batch a.mp4 b.mp4) or --list FILE")
        from recon.data.datasets import input_kind

        for item in items:  # every input is checked before the first job starts
            try:
                input_kind(item)
            except UserError as err:
                where = (
                    f" (listed in --list {self.list})"
                    if self.list is not None and item not in map(str, self.inputs)
                    else ""
                )
                raise UserError(f"{err}{where}") from None
        return items

    def run(self) -> int:
        import logging

        from recon.batch import BatchOptions, run_batch, summary_table
        from recon.pipelines.video_recon import reconstruct_config

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        config = reconstruct_config(self.max_frames, self.steps, self.resolution, self.seed)
        config.progress_bar = False
        if self.no_export:
            config.export_formats = ()
        options = BatchOptions(
            executor=self.executor, address=self.address, retries=self.retries, force=self.force
        )
        records = run_batch(self.all_inputs(), config, self.out, options)
        print(summary_table(records))
        print(f"manifest: {self.out / 'manifest.jsonl'}")
        return 0 if all(r["status"] != "failed" for r in records) else 1
