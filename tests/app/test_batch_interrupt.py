"""Issue #18 (item 7, 4d): batch jobs are keyed by their settings (a changed setting reruns, ``--force``
reruns all), and a batch interrupted with SIGINT resumes: done jobs are skipped, the interrupted one is
redone, the manifest stays valid JSONL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import recon.pipelines.video_recon
from app.cli import main
from recon.batch import job_dir, read_manifest, run_batch, settings_key
from recon.data.datasets import SceneData, write_transforms
from recon.data.synthetic import TexturedBlocks, orbit_path
from recon.pipelines.video_recon import VideoReconConfig
from recon.runs import save_config


def _posed_set(folder: Path, seed: int) -> Path:
    cams = orbit_path(8, sweep_deg=180.0, distance=3.0, width=32, height=24)
    rgb, _ = TexturedBlocks(seed=seed).render(cams, supersample=1)
    write_transforms(folder / "transforms.json", SceneData(rgb, cams, [f"f{i}.png" for i in range(8)]))
    return folder / "transforms.json"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("batch-inputs")
    return [str(_posed_set(root / name, seed)) for seed, name in enumerate("abc")]


@pytest.fixture
def fake_reconstruct(monkeypatch) -> list[tuple[str, int]]:
    """A reconstruction that only writes what a finished run holds (config.yaml, metrics.json)."""
    calls: list[tuple[str, int]] = []

    def reconstruct(source, config, out_root="outputs", run_dir=None, export=True, hooks=None):
        calls.append((str(source), config.steps))
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True)
        save_config(config, run_dir, "video_recon")
        (run_dir / "metrics.json").write_text(json.dumps({"test": {"psnr": 20.0}, "seconds": 0.1}))
        return run_dir

    monkeypatch.setattr(recon.pipelines.video_recon, "reconstruct", reconstruct)
    return calls


def _statuses(records) -> list[str]:
    return [r["status"] for r in records]


def test_settings_key_ignores_the_progress_bar_and_reads_config_yaml(tmp_path):
    a, b = VideoReconConfig(progress_bar=True), VideoReconConfig(progress_bar=False)
    assert settings_key(a) == settings_key(b) != settings_key(VideoReconConfig(steps=7))
    save_config(a, tmp_path, "video_recon")
    from recon.batch import folder_settings

    assert folder_settings(tmp_path) == settings_key(a)


def test_a_changed_setting_reruns_and_force_reruns_everything(inputs, tmp_path, fake_reconstruct):
    out = tmp_path / "out"
    config = VideoReconConfig(steps=5, progress_bar=False)
    assert _statuses(run_batch(inputs, config, out)) == ["ok", "ok", "ok"]
    assert _statuses(run_batch(inputs, config, out)) == ["skipped"] * 3
    changed = VideoReconConfig(steps=6, progress_bar=False)
    assert _statuses(run_batch(inputs[:2], changed, out)) == ["ok", "ok"]  # a new setting: redone
    assert [steps for _, steps in fake_reconstruct[-2:]] == [6, 6]
    # Back to the first settings: the two folders now hold steps=6, so they are redone; c is done.
    assert _statuses(run_batch(inputs, config, out)) == ["ok", "ok", "skipped"]
    assert len(fake_reconstruct) == 7
    # The CLI: the same settings skip, --force redoes every job.
    argv = ["batch", *inputs, "--out", str(out), "--steps", "5", "--no-export"]
    assert main(argv) == 0
    assert len(fake_reconstruct) == 10  # --no-export is a setting of its own: all three ran
    assert main(argv) == 0 and len(fake_reconstruct) == 10
    assert main([*argv, "--force"]) == 0 and len(fake_reconstruct) == 13
    lines = (out / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 13 and all(r["status"] == "ok" and len(r["settings"]) == 12 for r in records)


def _tmp_folders(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(".")] if out.is_dir() else []


def test_sigint_stops_a_batch_and_a_rerun_redoes_only_the_interrupted_job(inputs, tmp_path):
    out = tmp_path / "out"
    argv = ["batch", *inputs, "--out", str(out), "--steps", "60", "--no-export"]
    script = Path(sys.executable).parent / "sds3d"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "app.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*command, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    second = job_dir(out, inputs[1])
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            running = [p for p in _tmp_folders(out) if p.name.startswith(f".{second.name}.tmp-")]
            if running and (out / "manifest.jsonl").is_file():
                time.sleep(0.2)  # inside the second job's fit
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.01)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "sds3d: interrupted" and "Traceback" not in err
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["input"] for line in lines] == [inputs[0]]  # valid JSONL, the first job only
    assert not _tmp_folders(out) and not second.exists()  # the interrupted job left nothing

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1): a busy 2-core machine
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    manifest = read_manifest(out / "manifest.jsonl")
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["input"] for line in lines] == inputs  # the first job was not redone
    assert all(manifest[i]["status"] == "ok" for i in inputs)
    assert all((job_dir(out, i) / "metrics.json").is_file() for i in inputs)
    assert not _tmp_folders(out)
