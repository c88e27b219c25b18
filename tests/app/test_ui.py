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
MAX_UPLOAD = "1mb"
"""The test app's upload limit (`sds3d app --max-upload-mb`)."""


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
    # As `sds3d app --host 0.0.0.0` serves it: local priors only from the outputs folder; small uploads.
    demo = build_app(outputs, max_queue_size=4, export_extra=SMALL_EXPORT, allowed_prior_dirs=[outputs])
    url = launch_app(demo, outputs, port=free_port(), prevent_thread_lock=True, max_file_size=MAX_UPLOAD)
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


def test_remote_server_refuses_a_prior_folder_outside_the_allowed_ones(app, tmp_path):
    client, outputs, _ = app
    before = run_dirs(outputs) if (outputs / "stabledreamer").exists() else []
    outside = tmp_path / "my-prior"
    outside.mkdir()
    for prior in ("/etc", str(outside), str(outputs / ".." / "elsewhere")):
        with pytest.raises(Exception) as info:  # noqa: B017 - gradio_client raises ValidationError or AppError
            client.predict(**form("a red cube", prior=prior), api_name="/generate")
        assert "outside the folders this server may read" in str(info.value), str(info.value)
        assert "--allow-prior-dir" in str(info.value)
    # A folder under the outputs folder passes this check and fails later for what it is: not a prior.
    inside = outputs / "priors" / "mine"
    inside.mkdir(parents=True)
    with pytest.raises(Exception) as info:  # noqa: B017
        client.predict(**form("a red cube", prior=str(inside)), api_name="/generate")
    assert "--allow-prior-dir" not in str(info.value), str(info.value)
    after = run_dirs(outputs) if (outputs / "stabledreamer").exists() else []
    assert after == before


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", None), ("localhost", None), ("::1", None), ("0.0.0.0", ["out", "extra"]),
     ("192.168.1.20", ["out", "extra"])],
)  # fmt: skip
def test_sds3d_app_restricts_prior_folders_unless_only_this_machine_connects(host, expected):
    from app.commands.app import AppCommand

    command = AppCommand(host=host, outputs=Path("out"), allow_prior_dir=(Path("extra"),))
    dirs = command.prior_dirs()
    assert (None if dirs is None else [str(d) for d in dirs]) == expected


def test_video_upload_is_size_limited_and_checked_before_queuing(app, tmp_path):
    import httpx

    from recon.errors import UserError

    client, outputs, url = app
    big = tmp_path / "big.mp4"
    big.write_bytes(np.random.default_rng(0).bytes(1_200_000))  # over the 1 MB limit
    args = (100, 16, 160, 0, 2000, 128)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        client.predict(gradio_client.handle_file(str(big)), *args, api_name="/reconstruct")
    # The server refuses it too (a client that ignores the published limit).
    files = {"files": ("big.mp4", big.read_bytes())}
    refused = httpx.post(f"{url}gradio_api/upload", files=files, timeout=30)
    assert refused.status_code == 413, refused.text
    # Not a video: Gradio's file-type check refuses it before queuing (HTTP 400), and so would the app's.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    with pytest.raises(Exception, match="400 Bad Request"):  # noqa: B017 - httpx's HTTPStatusError
        client.predict(gradio_client.handle_file(str(notes)), *args, api_name="/reconstruct")
    with pytest.raises(UserError, match="'notes.txt' is not a video; upload one of .mp4, .mov"):
        ui.make_video_config(str(notes))
    small = tmp_path / "small.mp4"
    small.write_bytes(b"\0" * 1000)
    bad = [((None, 100, 16), "upload a video first"), ((small, 0, 16), "steps must be a whole number >= 1"),
           ((small, 100, 2), "keyframes must be a whole number >= 3")]  # fmt: skip
    for (path, steps, frames), message in bad:
        upload = gradio_client.handle_file(str(path)) if path else None
        with pytest.raises(Exception, match=message):  # noqa: B017 - gradio_client's ValidationError
            client.predict(upload, steps, frames, *args[2:], api_name="/reconstruct")
    # An unreadable "video" passes the form checks and fails in the library, with its message.
    with pytest.raises(Exception, match="video") as info:  # noqa: B017 - gradio_client's AppError
        client.predict(gradio_client.handle_file(str(small)), *args, api_name="/reconstruct")
    print(f"unreadable upload: {info.value}")
    assert not (outputs / "video_recon").exists() or not any((outputs / "video_recon").iterdir())


def test_video_tab_reconstructs_an_uploaded_video(app, tmp_path):
    import trimesh

    from recon.data.synthetic import write_synthetic_video

    client, outputs, _ = app
    video = tmp_path / "blocks.mp4"
    write_synthetic_video(video, n_frames=36, sweep_deg=150.0)  # as tests/recon/test_video_recon.py
    with pytest.raises(Exception, match="upload a video first"):  # noqa: B017 - gradio_client's error type
        client.predict(None, 100, 16, 96, 0, 2000, 128, api_name="/reconstruct")
    started = time.perf_counter()
    status, turntable, glb, splat, downloads, gallery = client.predict(
        gradio_client.handle_file(str(video)), 150, 24, 160, 0, 2000, 128, api_name="/reconstruct"
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
