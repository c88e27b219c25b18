"""The Gradio app driven over HTTP by gradio_client: generate, bad input, queueing, cancel, `sds3d app`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

gradio = pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed")

from app import ui  # noqa: E402
from app.ui import build_app, launch_app, pipeline_choices  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL_EXPORT = {"faces": 2000, "texture_size": 128, "image_size": 128, "n_views": 12}
"""Export settings small enough for a test (the app's export_extra override the form's faces/texture)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def form(prompt: str, steps: int = 6, **kw) -> dict:
    args = dict(
        prompt=prompt, pipeline="stabledreamer", prior="embedded", allow_download=False, steps=steps, seed=0,
        guidance=15, views=4, faces=2000, texture_size=128, preview_every=3,
    )  # fmt: skip
    return {**args, **kw}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("app-outputs")
    demo = build_app(outputs, max_queue_size=4, export_extra=SMALL_EXPORT)
    url = launch_app(demo, outputs, port=free_port(), prevent_thread_lock=True)
    assert ui.WARM.wait(120), "the embedded prior did not load"  # what a user waits for once, at start
    client = gradio_client.Client(url, verbose=False, download_files=str(outputs.parent / "client-files"))
    yield client, outputs, url
    demo.close()


def run_dirs(outputs: Path) -> list[Path]:
    return sorted(p for p in (outputs / "stabledreamer").glob("*") if p.is_dir())


def test_pipeline_choices_match_the_library():
    from recon.pipelines import PIPELINES

    assert sorted(pipeline_choices()) == sorted(PIPELINES)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "a purple elephant"}, "does not know"),
        ({"prompt": "a red cube", "steps": 0}, "steps must be positive"),
    ],
)
def test_bad_input_reaches_the_client_and_queues_nothing(app, bad, message):
    client, outputs, _ = app
    before = run_dirs(outputs) if (outputs / "stabledreamer").exists() else []
    with pytest.raises(Exception) as info:  # noqa: B017 - gradio_client raises ValidationError or AppError
        client.predict(**form(**{"prompt": "", **bad}), api_name="/generate")
    assert message in str(info.value), str(info.value)
    after = run_dirs(outputs) if (outputs / "stabledreamer").exists() else []
    assert after == before  # no run folder for bad input


def test_two_requests_are_served_one_after_the_other(app):
    """Two clients at once: both get a GLB, the second run starts only after the first has finished."""
    import trimesh

    client, outputs, _ = app
    prompts = ["a red cube", "a blue sphere"]
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client.predict, **form(p), api_name="/generate") for p in prompts]
        results = [f.result(timeout=400) for f in futures]
    elapsed = time.perf_counter() - started
    runs = {}
    for prompt, result in zip(prompts, results):
        status, turntable, glb, splat, downloads, gallery = result  # (gr.State is not sent)
        assert status.startswith("Done"), status
        run_dir = Path(re.search(r"`(.+)`", status).group(1))
        assert run_dir.parent.parent == outputs and prompt.replace(" ", "-") in run_dir.name
        runs[prompt] = run_dir
        # The GLB as the client downloaded it: a textured mesh with UVs in [0, 1].
        mesh = trimesh.load(glb, force="mesh")
        uv = np.asarray(mesh.visual.uv)
        assert len(mesh.faces) > 100 and uv.shape == (len(mesh.vertices), 2)
        assert uv.min() >= 0.0 and uv.max() <= 1.0
        assert Path(splat).suffix in (".splat", ".ply") and Path(splat).stat().st_size > 1000
        assert {Path(d).name for d in downloads} == {
            "model.glb",
            "model-obj.zip",
            "splats.ply",
            "model.splat",
        }
        zipped = next(d for d in downloads if d.endswith(".zip"))
        assert sorted(zipfile.ZipFile(zipped).namelist()) == ["model.mtl", "model.obj", "texture.png"]
        assert Path(turntable).is_file()
        # A preview was rendered from a checkpoint while it trained.
        assert (run_dir / "renders" / "preview.png").is_file()
    # One at a time: whichever run started second was created after the other had exported.
    first, second = sorted(runs.values(), key=lambda p: (p / "config.yaml").stat().st_mtime)
    assert (first / "export" / "model.glb").stat().st_mtime <= (second / "config.yaml").stat().st_mtime
    # The gallery lists both runs (newest first) in the last result.
    assert len(results[-1][5]) >= 2 or len(results[0][5]) >= 2
    print(f"two queued generations served in {elapsed:.1f} s")


def test_cancel_stops_the_run_at_a_resumable_checkpoint(app):
    import torch

    from recon.runs import load_config

    client, outputs, _ = app
    job = client.submit(**form("a green cone", steps=5000, preview_every=1000), api_name="/generate")
    deadline = time.time() + 120
    while not any("a-green-cone" in p.name for p in run_dirs(outputs)):  # the trainer has started
        assert time.time() < deadline, "the generation never started"
        time.sleep(0.2)
    time.sleep(3.0)
    job.cancel()
    cancelled = time.time()
    while any(t.name == "sds3d-run" for t in threading.enumerate()):
        assert time.time() < cancelled + 60, "the worker thread is still running after cancel"
        time.sleep(0.2)
    print(f"the worker stopped {time.time() - cancelled:.1f} s after the cancel")
    # The trainer stopped at a step boundary and checkpointed there: the run can be resumed.
    (run_dir,) = [p for p in run_dirs(outputs) if "a-green-cone" in p.name]
    ckpt = torch.load(run_dir / "ckpt" / "last.pt", weights_only=False)
    assert ckpt["stage_index"] == 0 and 0 < ckpt["stage_step"] < 1000
    assert load_config(run_dir)[1]["prompt"] == "a green cone"
    assert not (run_dir / "export").exists()


@pytest.mark.parametrize(
    ("prior", "allowed"),
    [("embedded", True), ("stabilityai/stable-diffusion-2-1-base", True), ("/etc", False), ("..", False),
     ("~", False), ("{outputs}/my-prior", True), ("{outputs}/../elsewhere", False)],
)  # fmt: skip
def test_remote_server_reads_local_priors_only_from_allowed_folders(tmp_path, prior, allowed):
    from recon.errors import UserError

    outputs = tmp_path / "outputs"
    (outputs / "my-prior").mkdir(parents=True)
    prior = prior.format(outputs=outputs)
    ui.check_prior_source(prior, None)  # a server only this machine reaches: anything goes
    if allowed:
        ui.check_prior_source(prior, [outputs.resolve()])
    else:
        with pytest.raises(UserError, match="--allow-prior-dir"):
            ui.check_prior_source(prior, [outputs.resolve()])


def test_video_tab_reconstructs_an_uploaded_video(app, tmp_path):
    import trimesh

    from recon.data.synthetic import write_synthetic_video

    client, outputs, _ = app
    video = tmp_path / "blocks.mp4"
    write_synthetic_video(video, n_frames=24, sweep_deg=150.0)
    with pytest.raises(Exception, match="upload a video first"):  # noqa: B017 - gradio_client's error type
        client.predict(None, 100, 16, 96, 0, 2000, 128, api_name="/reconstruct")
    started = time.perf_counter()
    status, turntable, glb, splat, downloads, gallery = client.predict(
        gradio_client.handle_file(str(video)), 150, 16, 96, 0, 2000, 128, api_name="/reconstruct"
    )
    print(f"video reconstruction through the app: {time.perf_counter() - started:.1f} s")
    assert status.startswith("Done"), status
    run_dir = Path(re.search(r"`(.+)`", status).group(1))
    assert run_dir.parent == outputs / "video_recon"
    mesh = trimesh.load(glb, force="mesh")
    uv = np.asarray(mesh.visual.uv)
    assert len(mesh.faces) > 100 and uv.shape == (len(mesh.vertices), 2) and 0 <= uv.min() <= uv.max() <= 1
    assert Path(splat).stat().st_size > 1000 and Path(turntable).is_file()
    assert {Path(d).name for d in downloads} >= {"model.glb", "model-obj.zip", "splats.ply"}


def test_sds3d_app_starts_within_15_s_and_prints_its_url(tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "app.cli", "app", "--port", str(port), "--outputs", str(tmp_path / "out")]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url, lines = None, []
        while url is None and time.perf_counter() - started < 60:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"running on (http://\S+)", line)
            url = match.group(1) if match else None
        took = time.perf_counter() - started
        assert url == f"http://127.0.0.1:{port}/", "".join(lines)
        import httpx

        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        print(f"sds3d app printed its URL after {took:.1f} s")
        assert took <= 15.0, f"sds3d app took {took:.1f} s to start"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
