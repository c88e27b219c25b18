"""The app's Avatar tab over HTTP through gradio_client: its API, bad input refused before queueing, and a
short run from a `heads synth` portrait with a tiny video prior (preview, driven video, downloads)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio = pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed")

from app.tabs.avatar import FIELDS, embedded_video_dir  # noqa: E402
from app.ui import build_app, launch_app  # noqa: E402
from tests.app.test_avatar_cli import TINY_RUN  # noqa: E402
from tests.app.test_ui import MAX_UPLOAD, free_port  # noqa: E402
from tests.app.tiny_video_prior import write_tiny_video_prior  # noqa: E402

TAB_CONFIG = {k: v for k, v in TINY_RUN.items() if k not in ("steps", "portrait_steps")}
"""The app's avatar_config: the tiny run's sizes (steps come from the form)."""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import recon.pipelines.zero1toa  # noqa: F401 - imported at start, as the warm-up does (request timeouts)

    outputs = tmp_path_factory.mktemp("avatar-app-outputs")
    prior = write_tiny_video_prior(
        outputs / "priors" / "tiny-video"
    )  # inside the folders the server may read
    # As `sds3d app --host 0.0.0.0` serves it: local priors only from the outputs folder; small uploads.
    demo = build_app(outputs, max_queue_size=4, allowed_prior_dirs=[outputs], avatar_config=TAB_CONFIG)
    url = launch_app(
        demo, outputs, port=free_port(), prevent_thread_lock=True, max_file_size=MAX_UPLOAD, warm=False
    )
    client = gradio_client.Client(url, verbose=False, download_files=str(outputs.parent / "client-files"))
    yield client, outputs, prior
    demo.close()


@pytest.fixture(scope="module")
def portraits(tmp_path_factory) -> Path:
    from app.commands.heads import write_portraits

    folder = write_portraits(tmp_path_factory.mktemp("avatar-portraits") / "portraits", 1, 96, 4)
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(folder / "empty-mask.png")
    (folder / "ten-points.json").write_text(json.dumps([[1.0, 2.0]] * 10))
    return folder


def form(portraits: Path, prior: Path, **changes) -> dict:
    """The tab's endpoint arguments: the heads synth portrait with its landmarks and mask, 2 + 4 steps."""
    args = dict(
        portrait="portrait_000000.png", landmarks="portrait_000000.json", mask="mask_000000.png",
        mode="symgen", steps=4, portrait_steps=2, seed=0, video_prior=str(prior), allow_download=False,
    )  # fmt: skip
    args.update(changes)
    for key in ("portrait", "landmarks", "mask"):
        if args[key]:
            args[key] = gradio_client.handle_file(str(portraits / args[key]))
    return args


def runs(outputs: Path) -> list[Path]:
    return sorted(p for p in (outputs / "zero1toa").glob("*") if p.is_dir())


def test_the_avatar_endpoint_is_in_the_api_with_its_types(app):
    client, _, _ = app
    run = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/avatar"]
    params = {p["parameter_name"]: p for p in run["parameters"]}
    assert list(params) == list(FIELDS)
    assert params["portrait"]["component"] == params["landmarks"]["component"] == "File"
    assert params["mode"]["python_type"]["type"] == "Literal['symgen', 'sds']"
    assert (
        params["steps"]["parameter_default"] == 600 and params["portrait_steps"]["parameter_default"] == 150
    )
    assert [r["component"] for r in run["returns"]] == ["Markdown", "Image", "Video", "File"]


BAD = [
    ({"landmarks": None}, "upload the portrait's face landmarks"),
    ({"landmarks": "ten-points.json"}, "[51, 2]"),
    ({"mask": "empty-mask.png"}, "no face-like region"),
    (
        {"landmarks": "portrait_000000.png"},
        "Invalid file type. Please upload a file that is one of these formats",
    ),
    ({"steps": 0}, "steps must be positive"),
    ({"portrait_steps": 10_000}, "portrait steps must be a whole number between 0 and 5000"),
    ({"video_prior": "/etc"}, "outside the folders this server may read"),
]
if not (embedded_video_dir() / "model_index.json").is_file():
    BAD.append(({"video_prior": "embedded"}, "the embedded video prior is not shipped"))


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_refused_before_queueing_and_writes_no_run(app, portraits, changes, message):
    client, outputs, prior = app
    before = runs(outputs)
    with pytest.raises(Exception) as info:  # noqa: B017 - gradio_client raises ValidationError or AppError
        client.predict(**form(portraits, prior, **changes), api_name="/avatar")
    response = getattr(info.value, "response", None)  # Gradio's own refusals: HTTP 400 with the reason
    text = str(info.value) + (response.text if response is not None else "")
    assert message in text, text
    assert runs(outputs) == before


def test_a_short_avatar_run_shows_its_preview_video_and_downloads(app, portraits):
    import av

    from recon.pipelines.zero1toa import load_avatar

    client, outputs, prior = app
    started = time.perf_counter()
    status, preview, video, downloads = client.predict(**form(portraits, prior), api_name="/avatar")
    print(f"avatar through the app: {time.perf_counter() - started:.1f} s")
    assert status.startswith("Done"), status
    assert "mode symgen, 6 steps" in status
    run_dir = Path(re.search(r"`(.+)`", status).group(1))
    assert run_dir.parent == outputs / "zero1toa" and runs(outputs) == [run_dir]
    assert run_dir.name.startswith("portrait_000000-")
    # The preview grid: the head turning, then five expressions, 128 px tiles.
    assert Image.open(preview).size == (5 * 128, 2 * 128)
    grid = np.asarray(Image.open(preview).convert("RGB")).astype(int)
    tiles = grid.reshape(2, 128, 5, 128, 3).transpose(0, 2, 1, 3, 4).reshape(10, 128, 128, 3)
    assert ((tiles.sum(-1) < 3 * 245).mean(axis=(1, 2)) > 0.02).all()  # the head is in every tile
    # The driven video (the built-in "talk" drive): decodable H.264, 48 frames of 256 px.
    path = video["video"] if isinstance(video, dict) else video
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 48 and frames[0].shape == (256, 256, 3)
    assert np.abs(frames[0].astype(int) - frames[24].astype(int)).mean() > 0.05  # the face moves
    # Downloads: the avatar (loads) and the head GLB (its magic), as the client downloaded them.
    assert sorted(Path(d).name for d in downloads) == ["avatar.pt", "head.glb"]
    glb = next(Path(d) for d in downloads if d.endswith(".glb"))
    assert glb.read_bytes()[:4] == b"glTF"
    avatar, state = load_avatar(next(d for d in downloads if d.endswith(".pt")))
    assert state["config"]["steps"] == 4 and len(avatar.gaussians) > 1000


def test_cancel_stops_the_run_at_a_checkpoint_the_cli_resumes(app, portraits, capsys):
    import threading

    import torch

    from app.cli import main

    client, outputs, prior = app
    before = runs(outputs)
    job = client.submit(**form(portraits, prior, steps=5000), api_name="/avatar")
    deadline = time.time() + 120
    while not [p for p in runs(outputs) if p not in before and (p / "ckpt" / "state.pt").is_file()]:
        assert time.time() < deadline, "the run never checkpointed"
        time.sleep(0.2)
    job.cancel()
    cancelled = time.time()
    while any(t.name == "sds3d-run" for t in threading.enumerate()):
        assert time.time() < cancelled + 60, "the worker thread is still running after cancel"
        time.sleep(0.2)
    print(f"the worker stopped {time.time() - cancelled:.1f} s after the cancel")
    (run_dir,) = [p for p in runs(outputs) if p not in before]
    step = torch.load(run_dir / "ckpt" / "state.pt", weights_only=False)["step"]
    assert 0 < step < 100 and not (run_dir / "avatar.pt").exists()
    # The folder is a resumable run: `sds3d avatar PORTRAIT RUN_DIR` continues it; 2 portrait steps +
    # `step` video steps end 2 steps after the checkpoint.
    capsys.readouterr()
    argv = ["avatar", str(portraits / "portrait_000000.png"), str(run_dir), "--steps", str(step)]
    assert main(argv) == 0, capsys.readouterr().err
    assert f"resuming {run_dir} from step {step} of {step + 2}" in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == step + 2
