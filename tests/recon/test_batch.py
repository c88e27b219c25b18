"""Batch reconstruction: per-input folders, a JSONL manifest, failure isolation, resume, local and Ray."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from recon.batch import BatchOptions, append_record, job_dir, read_manifest, run_batch, summary_table
from recon.data.datasets import SceneConfig, SceneData, write_transforms
from recon.data.synthetic import TexturedBlocks, orbit_path
from recon.gaussians import DensifyConfig
from recon.pipelines.video_recon import VideoReconConfig


def _posed_set(folder: Path, seed: int) -> Path:
    cams = orbit_path(8, sweep_deg=180.0, distance=3.0, width=32, height=24)
    rgb, _ = TexturedBlocks(seed=seed).render(cams, supersample=1)
    write_transforms(folder / "transforms.json", SceneData(rgb, cams, [f"f{i}.png" for i in range(8)]))
    return folder / "transforms.json"


def _tiny_config() -> VideoReconConfig:
    return VideoReconConfig(
        steps=8, holdout_every=4, random_init_points=300, densify=DensifyConfig(kind="none"),
        export_formats=("ply",), progress_bar=False, scene=SceneConfig(normalize=True),
    )  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("batch-inputs")
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video " * 64)
    return [str(_posed_set(root / "a", 0)), str(corrupt), str(_posed_set(root / "b", 1))]


def _statuses(records) -> list[str]:
    return [r["status"] for r in records]


def test_batch_isolates_failures_and_skips_done_jobs_on_rerun(inputs, tmp_path):
    out = tmp_path / "out"
    records = run_batch(inputs, _tiny_config(), out)
    assert _statuses(records) == ["ok", "failed", "ok"]
    assert "re-encode" in records[1]["error"]
    for r in (records[0], records[2]):
        assert (Path(r["output"]) / "export" / "splats.ply").is_file()
        assert r["metrics"]["test"]["n_views"] == 2 and r["metrics"]["test"]["psnr"] > 5
    assert not job_dir(out, inputs[1]).exists(), "the failed job left a folder"
    manifest = read_manifest(out / "manifest.jsonl")
    assert {k: v["status"] for k, v in manifest.items()} == dict(zip(inputs, ["ok", "failed", "ok"]))
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3

    again = run_batch(inputs, _tiny_config(), out)
    assert _statuses(again) == ["skipped", "failed", "skipped"]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4  # only the failed job reran
    table = summary_table(again)
    assert "corrupt.mp4" in table and "2 of 3 done, 1 failed" in table


def test_manifest_ignores_a_torn_last_line(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    append_record(manifest, {"input": "a", "status": "ok"})
    with open(manifest, "a") as f:
        f.write('{"input": "b", "sta')  # a writer killed mid-line
    assert list(read_manifest(manifest)) == ["a"]
    assert json.loads(manifest.read_text().splitlines()[0])["status"] == "ok"


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'sds3d[cluster]')"
)
def test_ray_executor_gives_the_same_statuses(inputs, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "ray-out"
    records = run_batch(inputs, _tiny_config(), out, BatchOptions(executor="ray", retries=1, num_cpus=1))
    assert _statuses(records) == ["ok", "failed", "ok"]
    manifest = read_manifest(out / "manifest.jsonl")
    assert {k: v["status"] for k, v in manifest.items()} == dict(zip(inputs, ["ok", "failed", "ok"]))
    assert (job_dir(out, inputs[0]) / "export" / "splats.ply").is_file()
