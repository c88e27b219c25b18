"""``sds3d avatar``: a portrait from ``heads synth`` to a loadable avatar with a tiny video prior; an
interrupted run continues from its checkpoint; every bad input is one message, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from app.cli import main
from recon.pipelines.zero1toa import Zero1toATrainer, load_avatar
from tests.app.tiny_video_prior import write_tiny_video_prior

torch.set_num_threads(1)

TINY_RUN = dict(
    portrait_steps=2, steps=4, size=32, num_frames=4, frames_per_step=1, spatial_clips=2, temporal_clips=2,
    prior_steps=2, fit_steps=40, portrait_size=64, checkpoint_every=2,
)  # fmt: skip
"""Zero1toAConfig settings of a run that takes seconds (6 training steps, checkpoints every 2)."""


@pytest.fixture(scope="module")
def portraits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("avatar") / "portraits"
    assert main(["heads", "synth", str(out), "--count", "1", "--size", "96", "--seed", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory) -> Path:
    """A preset YAML naming the tiny prior folder (the embedded prior is not needed)."""
    folder = tmp_path_factory.mktemp("prior")
    prior = write_tiny_video_prior(folder / "tiny-video-prior")
    preset = folder / "tiny.yaml"
    preset.write_text(
        yaml.safe_dump({"pipeline": "zero1toa", "config": {**TINY_RUN, "video_prior": str(prior)}})
    )
    return preset


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_a_portrait_becomes_an_avatar_that_loads_and_renders(portraits, tiny_preset, tmp_path, capsys):
    drive = tmp_path / "smile.json"
    drive.write_text(json.dumps({"fps": 10, "sequence": [["smile", a] for a in (0.0, 0.3, 0.6, 1.0, 0.5)]}))
    out = tmp_path / "avatar"
    started = time.perf_counter()
    code = main(["avatar", str(portraits / "portrait_000000.png"), str(out), "--config", str(tiny_preset),
                 "--drive", str(drive)])  # fmt: skip
    printed = capsys.readouterr()
    print(f"sds3d avatar (6 steps, tiny prior): {time.perf_counter() - started:.1f} s")
    assert code == 0, printed.err
    names = {"avatar.pt", "head.glb", "driven.mp4", "preview.png", "reference.png", "metrics.json"}
    assert names <= {p.name for p in out.iterdir()}
    for name in names:  # the output files are listed, then the metrics line
        assert str(out / name) in printed.out
    assert "metrics: mode symgen, 6 steps" in printed.out
    # The sidecars were found: landmarks and mask from heads synth, the focal length from its camera.
    assert "portrait_000000.json" in printed.out and "mask_000000.png" in printed.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["clip_refreshes"] > 0
    assert metrics["landmark_error_px"] < 3.0 and metrics["silhouette_iou"] > 0.7
    # avatar.pt loads into an avatar that renders the head where the portrait's mask is.
    avatar, state = load_avatar(out / "avatar.pt")
    assert state["config"]["steps"] == 4 and len(avatar.gaussians) == metrics["gaussians"]
    cam = state["portrait_camera"]
    from recon.cameras import Cameras

    intrinsics = (torch.tensor([cam[k]]) for k in ("fx", "fy", "cx", "cy"))
    camera = Cameras(cam["camera_to_world"][None], *intrinsics, cam["width"], cam["height"])
    with torch.no_grad():
        _, alpha = avatar.render(state["portrait_params"], camera)
    mask = np.asarray(Image.open(portraits / "mask_000000.png")) > 127
    covered = alpha.numpy() > 0.5
    iou = (covered & mask).sum() / (covered | mask).sum()
    assert iou > 0.7, iou
    # The drive file drove the video: one frame per drive frame, decodable.
    import av

    with av.open(str(out / "driven.mp4")) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (256, 256, 3)
    assert (out / "head.glb").read_bytes()[:4] == b"glTF"


def test_an_interrupted_run_continues_from_its_checkpoint(
    portraits, tiny_preset, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "avatar"
    argv = ["avatar", str(portraits / "portrait_000000.png"), str(out)]
    original = Zero1toATrainer.train_step
    ran: list[int] = []

    def interrupted_at_5(self):
        if self.step == 5:
            raise KeyboardInterrupt
        ran.append(self.step)
        return original(self)

    monkeypatch.setattr(Zero1toATrainer, "train_step", interrupted_at_5)
    assert main([*argv, "--config", str(tiny_preset)]) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to resume" in err
    assert ran == [0, 1, 2, 3, 4]
    state = torch.load(out / "ckpt" / "state.pt", weights_only=False)
    assert state["step"] == 4  # the last checkpoint (every 2 steps)
    assert not (out / "avatar.pt").exists()

    def counted(self):
        ran.append(self.step)
        return original(self)

    ran.clear()
    monkeypatch.setattr(Zero1toATrainer, "train_step", counted)
    assert main([*argv, "--steps", "8"]) == 0  # the run's own settings; more steps
    printed = capsys.readouterr()
    assert f"resuming {out} from step 4 of 10" in printed.out
    assert ran == list(range(4, 10))  # continued, not restarted
    assert json.loads((out / "metrics.json").read_text())["steps"] == 10
    _, saved = load_avatar(out / "avatar.pt")
    assert saved["config"]["steps"] == 8 and saved["config"]["size"] == TINY_RUN["size"]  # the checkpoint's
    # A finished run holds its final state: rerunning it trains nothing and rewrites the outputs.
    ran.clear()
    assert main(argv) == 0 and ran == []
    capsys.readouterr()
    # A resumed run keeps its mode and refuses another preset.
    assert main([*argv, "--mode", "sds"]) == 2
    assert "--mode sds conflicts with the run's mode 'symgen'" in capsys.readouterr().err
    assert main([*argv, "--config", str(tiny_preset)]) == 2
    assert "--config cannot be combined with resuming" in capsys.readouterr().err


def _bad_case(case: str, portraits: Path, tmp_path: Path) -> tuple[list[str], str]:
    """The argv (after ``avatar``) and the expected message of one bad input."""
    portrait = portraits / "portrait_000000.png"
    landmarks = portraits / "portrait_000000.json"
    own = tmp_path / "inputs"
    own.mkdir()
    if case == "not an image":
        fake = own / "portrait_000000.png"
        fake.write_text("not a png")
        shutil.copy(landmarks, own / "portrait_000000.json")
        return [str(fake)], "is not a readable image"
    if case == "no landmarks":
        lonely = own / "me.png"
        shutil.copy(portrait, lonely)
        return [str(lonely)], "pass --landmarks L.json"
    if case == "landmarks of the wrong shape":
        bad = own / "lm.json"
        bad.write_text(json.dumps([[1.0, 2.0]] * 10))
        return [str(portrait), "--landmarks", str(bad)], "[51, 2]"
    if case == "landmarks off the image":
        data = json.loads(landmarks.read_text())
        off = own / "off.json"
        off.write_text(json.dumps([[x + 500.0, y] for x, y in data["landmarks_2d"]]))
        return [str(portrait), "--landmarks", str(off)], "no face in the portrait"
    if case == "an empty mask":
        mask = own / "mask.png"
        Image.fromarray(np.zeros((96, 96), np.uint8)).save(mask)
        return [str(portrait), "--mask", str(mask)], "no face-like region"
    if case == "a drive of the wrong shape":
        drive = own / "drive.json"
        drive.write_text(json.dumps({"expression": [[0.1, 0.2, 0.3]]}))
        return [str(portrait), "--drive", str(drive)], "has 3 values, expected 40"
    if case == "a drive that is not a drive":
        drive = own / "drive.txt"
        drive.write_text("hello")
        return [str(portrait), "--drive", str(drive)], "unknown drive file type .txt"
    if case == "a missing flame dir":
        return [str(portrait), "--head-model", "flame", "--flame-dir", str(own / "nope")], "--flame-dir"
    if case == "an empty flame dir":
        (own / "flame").mkdir()
        return [
            str(portrait),
            "--head-model",
            "flame",
            "--flame-dir",
            str(own / "flame"),
        ], "FLAME_GENERIC.pkl"
    if case == "a flame dir without the flame model":
        (own / "flame").mkdir()
        return [str(portrait), "--flame-dir", str(own / "flame")], "add --head-model flame"
    if case == "a missing video prior":
        return [str(portrait), "--video-prior", str(own / "no-prior")], "no-prior"
    raise AssertionError(case)


BAD_CASES = [
    "not an image", "no landmarks", "landmarks of the wrong shape", "landmarks off the image",
    "an empty mask", "a drive of the wrong shape", "a drive that is not a drive", "a missing flame dir",
    "an empty flame dir", "a flame dir without the flame model", "a missing video prior",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_message_and_writes_nothing(case, portraits, tiny_preset, tmp_path, capsys):
    args, message = _bad_case(case, portraits, tmp_path)
    out = tmp_path / "avatar"
    before = _files(tmp_path) | _files(portraits)
    code = main(["avatar", args[0], str(out), "--config", str(tiny_preset), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("sds3d: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not out.exists()
    assert _files(tmp_path) | _files(portraits) == before  # no default OUT_DIR next to the portrait either


def test_a_folder_with_other_files_is_refused_and_left_alone(portraits, tiny_preset, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["avatar", str(portraits / "portrait_000000.png"), str(out), "--config", str(tiny_preset)])
    err = capsys.readouterr().err
    assert code == 2 and "holds no avatar run to resume; pass a new folder" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
