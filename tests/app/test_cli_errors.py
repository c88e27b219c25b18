"""Issue #18: every listed bad input gives one `sds3d: error:` line, exit 2 and no files; an unexpected
exception gives one line, a traceback log and exit 1; run folders never collide; splats.ply has the
reference 3DGS layout."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from app.cli import main
from recon.errors import UserError

TINY = ["--prior", "embedded-exemplar", "--steps", "1", "--no-export"]
"""A one-step run on the closed-form prior (seconds on CPU)."""


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A one-step run, a copy with a truncated checkpoint, one whose config.yaml lacks `pipeline`, and
    prior folders with a broken model_index.json."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["generate", "a red cube", *TINY, "--out", str(root / "outputs")]) == 0
    good = next((root / "outputs").glob("stabledreamer/*"))
    truncated = root / "truncated"
    shutil.copytree(good, truncated)
    ckpt = truncated / "ckpt" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    no_pipeline = root / "no-pipeline"
    shutil.copytree(good, no_pipeline)
    data = yaml.safe_load((no_pipeline / "config.yaml").read_text())
    (no_pipeline / "config.yaml").write_text(yaml.safe_dump({"config": data["config"]}))
    priors = {}
    for name, text in {
        "prior-not-json": "{not json",
        "prior-list": json.dumps(["diffusers", "UNet2DConditionModel"]),
        "prior-bad-entry": json.dumps({"unet": "UNet2DConditionModel"}),
    }.items():
        (root / name).mkdir()
        (root / name / "model_index.json").write_text(text)
        priors[name] = root / name
    (root / "a-file").write_text("not a folder")
    return {
        "good": good,
        "truncated": truncated,
        "no-pipeline": no_pipeline,
        "file": root / "a-file",
        **priors,
    }


# (argv with {placeholders}, what the one error line must name)
CASES = [
    (["generate", "a red cube", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["generate", "a red cube", "--checkpoint-every", "-3"], "--checkpoint-every"),
    (["generate", "a red cube", "--faces", "-5"], "--faces"),
    (["generate", "a red cube", "--faces", "0"], "--faces"),
    (["generate", "a red cube", "--faces", "6000000"], "5000000"),
    (["generate", "a red cube", "--texture-size", "0"], "--texture-size"),
    (["generate", "a red cube", "--texture-size", "-1"], "--texture-size"),
    (["generate", "a red cube", "--texture-size", "16384"], "8192"),
    (["export", "{good}", "--faces", "-5"], "--faces"),
    (["export", "{good}", "--faces", "0"], "--faces"),
    (["export", "{good}", "--texture-size", "0"], "--texture-size"),
    (["export", "{good}", "--texture-size", "-1"], "--texture-size"),
    (["export", "{good}", "--format"], "--format"),
    (["export", "{truncated}"], "last.pt"),
    (["generate", "a red cube", "--prior", "{prior-not-json}"], "model_index.json"),
    (["generate", "a red cube", "--prior", "{prior-list}"], "model_index.json"),
    (["generate", "a red cube", "--prior", "{prior-bad-entry}"], "model_index.json"),
    (["generate", "a red cube", "--out", "{file}"], "--out"),
    (["generate", "a red cube", "--out", "{file}/below"], "--out"),
    (["generate", "--resume", "{no-pipeline}"], "config.yaml"),
    (["generate", "a blue sphere", "--resume", "{good}"], "the prompt"),
    (["generate", "--resume", "{good}", "--steps", "5"], "--steps"),
    (["generate", "--resume", "{good}", "--seed", "3"], "--seed"),
    (["generate", "--resume", "{good}", "--prior", "embedded"], "--prior"),
    (["generate", "--resume", "{good}", "--config", "stabledreamer"], "--config"),
]


@pytest.mark.parametrize("args,names", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys, args, names):
    argv = [a.format(**{k: str(v) for k, v in runs.items()}) for a in args]
    out = tmp_path / "outputs"
    if argv[0] == "generate" and "--out" not in argv:
        argv += ["--out", str(out)]
    before = {name: _files(runs[name]) for name in ("good", "truncated", "no-pipeline")}
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("sds3d:")]
    assert len(lines) == 1 and lines[0].startswith("sds3d: error:"), err
    assert names in lines[0], lines[0]
    assert "Traceback" not in err
    assert not _files(out)
    assert {name: _files(runs[name]) for name in before} == before  # no export/, no log, nothing


def test_resume_with_the_run_own_values_is_not_a_conflict(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["good"], run)
    assert main(["generate", "a red cube", "--resume", str(run), *TINY]) == 0


def test_two_runs_of_one_prompt_in_one_second_get_two_folders(tmp_path, monkeypatch):
    import recon.runs

    monkeypatch.setattr(recon.runs.time, "strftime", lambda fmt, *a: "20250101-000000")
    out = tmp_path / "outputs"
    for _ in range(2):
        assert main(["generate", "a red cube", *TINY, "--out", str(out)]) == 0
    names = sorted(p.name for p in (out / "stabledreamer").iterdir())
    assert names == ["a-red-cube-20250101-000000", "a-red-cube-20250101-000000-1"]
    # Sixteen creators racing for one name: sixteen distinct folders, none shared.
    made: list[Path] = []
    threads = [
        threading.Thread(target=lambda: made.append(recon.runs.create_run_dir(out, "race", "a red cube")))
        for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 16 and all(p.is_dir() for p in made)


def test_exported_splats_have_the_reference_layout_and_read_back(runs, tmp_path, capsys):
    from plyfile import PlyData

    from recon.gaussians import GaussianModel
    from recon.runs import load_model

    run = tmp_path / "run"
    shutil.copytree(runs["good"], run)
    assert main(["export", str(run), "--format", "ply"]) == 0
    model = load_model(run)
    assert model.sh_degree == 0
    vertex = PlyData.read(str(run / "export" / "splats.ply"))["vertex"]
    names = vertex.data.dtype.names
    # The reference 3DGS loader asserts 3 * (3 + 1) ** 2 - 3 f_rest fields; SIBR reads 62 floats a splat.
    assert [n for n in names if n.startswith("f_rest_")] == [f"f_rest_{i}" for i in range(45)]
    assert len(names) == 62
    assert not any(np.asarray(vertex[f"f_rest_{i}"]).any() for i in range(45))
    loaded = GaussianModel.load_ply(run / "export" / "splats.ply")
    assert loaded.sh_degree == 0
    for key, value in model.splats.items():
        assert torch.equal(loaded.splats[key], value.detach()), key


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_padded_ply_round_trip_keeps_the_degree(tmp_path, sh_degree):
    from recon.gaussians import GaussianModel

    g = torch.Generator().manual_seed(sh_degree)
    model = GaussianModel.random_in_sphere(20, sh_degree=sh_degree, generator=g)
    with torch.no_grad():
        model.splats["shN"].add_(torch.randn(model.splats["shN"].shape, generator=g))
    model.save_ply(tmp_path / "s.ply", layout_degree=3)
    loaded = GaussianModel.load_ply(tmp_path / "s.ply")
    assert loaded.sh_degree == sh_degree
    for key, value in model.splats.items():
        assert torch.equal(loaded.splats[key], value.detach()), key


def test_padding_with_data_in_it_reads_as_the_full_degree(tmp_path):
    """An edited file whose upper bands are no longer zero keeps them (the comment is only a hint)."""
    from plyfile import PlyData, PlyElement

    from recon.gaussians import GaussianModel

    model = GaussianModel.random_in_sphere(10, sh_degree=0, generator=torch.Generator().manual_seed(0))
    model.save_ply(tmp_path / "s.ply", layout_degree=3)
    ply = PlyData.read(str(tmp_path / "s.ply"))
    data = ply["vertex"].data.copy()
    data["f_rest_7"] = 0.5
    PlyData([PlyElement.describe(data, "vertex", comments=ply["vertex"].comments)]).write(
        str(tmp_path / "e.ply")
    )
    loaded = GaussianModel.load_ply(tmp_path / "e.ply")
    assert loaded.sh_degree == 3 and float(loaded.splats["shN"].detach()[0, 7, 0]) == 0.5


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sds3d:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unexpected_error_is_one_line_a_log_and_exit_1(tmp_path, capsys, monkeypatch):
    import recon.train

    def boom(self):
        raise RuntimeError("boom in fit")

    monkeypatch.setattr(recon.train.Trainer, "fit", boom)
    monkeypatch.setenv("SDS3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SDS3D_DEBUG", raising=False)
    out = tmp_path / "outputs"
    code = main(["generate", "a red cube", *TINY, "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith("sds3d: error: internal error: generate failed with RuntimeError: boom in fit")
    assert "this is a bug; the full traceback is in " in line
    log = Path(line.rsplit("the full traceback is in ", 1)[1])
    assert log.parent == tmp_path / "cache" / "logs" and log.is_file()
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: boom in fit" in text and "def boom" not in line
    assert not [p for p in _files(out) if p.is_file()]  # the run never checkpointed: it is gone

    monkeypatch.setenv("SDS3D_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom in fit"):
        main(["generate", "a red cube", *TINY, "--out", str(out)])
    assert not [p for p in _files(out) if p.is_file()]


def test_unexpected_error_after_a_checkpoint_logs_into_the_kept_run(tmp_path, capsys, monkeypatch):
    import recon.pipelines

    def boom(*args, **kwargs):
        raise RuntimeError("turntable failed")

    monkeypatch.setattr(recon.pipelines, "save_turntable", boom)
    monkeypatch.setenv("SDS3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SDS3D_DEBUG", raising=False)
    out = tmp_path / "outputs"
    assert main(["generate", "a red cube", *TINY, "--out", str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    run = next(out.glob("stabledreamer/*"))
    assert (run / "ckpt" / "last.pt").is_file()  # resumable: kept
    log = Path(line.rsplit("the full traceback is in ", 1)[1])
    assert log.parent == run / "logs" and "turntable failed" in log.read_text()


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("steps", 1e9, "steps must be a whole number between 1 and 10000"),
        ("views_per_step", 64, "views per step must be a whole number between 1 and 16"),
        ("preview_every", 1e7, "preview every must be a whole number between 1 and 10000"),
        ("seed", -1, "seed must be a whole number between 0 and 4294967295"),
        ("guidance", 1e6, "guidance must be a number between 0 and 100"),
        ("faces", 10**7, "faces must be a whole number between 500 and 200000"),
        ("texture_size", 0, "texture size must be a whole number between 64 and 4096"),
    ],
)
def test_app_form_bounds(field, value, message):
    from app.forms import make_config

    with pytest.raises(UserError, match=message):
        make_config("a red cube", **{field: value})


def test_app_video_form_bounds(tmp_path):
    from app.forms import make_video_config

    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0" * 100)
    for kwargs, message in [
        ({"steps": 1e9}, "steps must be a whole number between 1 and 20000"),
        ({"max_frames": 10**6}, "keyframes must be a whole number between 3 and 300"),
        ({"faces": 1}, "faces must be a whole number between 500 and 200000"),
        ({"texture_size": 10**5}, "texture size must be a whole number between 64 and 4096"),
    ]:
        with pytest.raises(UserError, match=message):
            make_video_config(str(video), **kwargs)
