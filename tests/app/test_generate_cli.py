"""`sds3d generate` / `sds3d export` from the command line: bad input, kill and resume."""

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

from app.cli import main


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "   "], "prompt is empty"),
        (["generate", "a red cube", "--steps", "0"], "--steps must be positive"),
        (["generate", "a purple elephant", "--prior", "embedded-exemplar"], "cube"),  # lists what it knows
        (["generate", "a red cube", "--prior", "some-org/no-such-model"], "some-org/no-such-model"),
        (["generate", "a red cube", "--prior", "/no/such/folder"], "/no/such/folder"),
        (["export", "/no/such/run"], "has no checkpoint"),
    ],
)
def test_bad_input_gives_one_clear_message_and_no_folder(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "outputs"
    code, err = _run_cli([*args, "--out", str(out)] if args[0] == "generate" else args, capsys)
    assert code == 2
    assert message in err
    assert [line for line in err.splitlines() if "error" in line.lower()] == [err.strip().splitlines()[-1]]
    assert err.strip().splitlines()[-1].startswith("sds3d: error:") and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*"))


def test_bad_input_exit_code_without_traceback_in_a_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", "", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "prompt is empty" in proc.stderr and "Traceback" not in proc.stderr


def test_killed_generate_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL mid-run, then --resume: the run finishes and loses at most one checkpoint interval."""
    out = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "app.cli", "generate", "a red cube", "--prior", "embedded-exemplar",
           "--steps", "60", "--checkpoint-every", "10", "--no-export", "--out", str(out)]  # fmt: skip
    log = (tmp_path / "run.log").open("w")  # a file, not a pipe: tqdm output must never block the run
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 600
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob("stabledreamer/*/ckpt/last.pt"))
        if found:
            state = torch.load(found[0], weights_only=False)
            if state["stage_index"] == 0 and state["stage_step"] >= 10:
                ckpt = found[0]
                break
        time.sleep(0.2)
    assert ckpt is not None, (
        f"no checkpoint within the deadline; log: {(tmp_path / 'run.log').read_text()[-2000:]}"
    )
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    killed_at = torch.load(ckpt, weights_only=False)
    run_dir = ckpt.parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", "--resume", str(run_dir), "--no-export"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {ckpt}" in done.stderr or "resumed from" in done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stages"]["geometry"]["steps"] == 36 and metrics["stages"]["color"]["steps"] == 24
    final = torch.load(ckpt, weights_only=False)
    assert final["stage_index"] == 2  # both stages complete
    assert killed_at["stage_step"] % 10 == 0  # a checkpoint boundary: at most 10 steps were lost
    # no temp files left behind by the kill
    assert not [p for p in run_dir.rglob("*.tmp")]


def test_export_of_a_run_writes_every_format(tmp_path, capsys):
    """A short run on the embedded prior, then `sds3d export`: GLB with UVs + texture, OBJ+MTL+PNG, splats."""
    import trimesh

    out = tmp_path / "outputs"
    args = ["generate", "a blue sphere", "--prior", "embedded-exemplar", "--steps", "40"]
    code = main([*args, "--faces", "3000", "--texture-size", "128", "--out", str(out)])
    assert code == 0
    run_dir = next(out.glob("stabledreamer/*"))
    export = run_dir / "export"
    assert {p.name for p in export.iterdir()} >= {
        "model.glb",
        "model.obj",
        "model.mtl",
        "texture.png",
        "splats.ply",
        "model.splat",
    }
    mesh = trimesh.load(export / "model.glb", force="mesh")
    uv = mesh.visual.uv
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    texture = mesh.visual.material.baseColorTexture.convert("RGB")
    import numpy as np

    assert np.asarray(texture).reshape(-1, 3).std(0).max() > 2.0  # not a single flat color
    assert not [p for p in export.iterdir() if p.name.startswith(".")]  # no temp files
    code = main(["export", str(run_dir), "--format", "ply", "splat"])
    assert code == 0
    assert Path(run_dir / "export" / "splats.ply").stat().st_size > 0
