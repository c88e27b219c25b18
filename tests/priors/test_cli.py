"""``sds3d prior sample`` / ``sds3d prior info`` through ``app.cli.main``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main


@pytest.fixture(autouse=True)
def _exemplar_cache(monkeypatch, tmp_path_factory) -> None:
    monkeypatch.setenv("SDS3D_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sds3d-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: see tests/priors/test_exemplar.py::_one_thread
    yield
    torch.set_num_threads(threads)


def test_sample_writes_a_grid_of_the_prompted_object(tmp_path: Path, capsys) -> None:
    out = tmp_path / "samples" / "grid.png"
    args = ["prior", "sample", "a blue sphere", "--prior", "embedded-exemplar", "--n", "4", "--steps", "10"]
    assert main([*args, "--out", str(out), "--seed", "1"]) == 0
    grid = np.asarray(Image.open(out).convert("RGB")).astype(np.float32) / 255.0
    assert grid.shape == (64, 64, 3)  # 2 x 2 tiles of 32 px
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temporary file left
    object_pixels = grid[grid.min(-1) < 0.8]
    assert len(object_pixels) > 200
    r, g, b = object_pixels.mean(0)
    assert b > r + 0.3 and b > g + 0.3  # blue
    assert "a blue sphere" in capsys.readouterr().out


def test_sample_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    common = ["prior", "sample", "a red cube", "--n", "2", "--steps", "5", "--seed", "3"]
    assert main([*common, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_info_lists_the_embedded_vocabulary(capsys) -> None:
    assert main(["prior", "info", "--prior", "embedded-exemplar"]) == 0
    out = capsys.readouterr().out
    assert "pixel-exemplar" in out and "epsilon" in out and "32" in out
    assert "sphere, cube, cone, cylinder, torus, chair" in out and "purple" in out
    assert "2464 objects" in out and "striped, checkered, dotted, two-tone" in out and "duck (beak)" in out


def test_sample_of_an_unknown_prompt_says_what_is_known(tmp_path: Path, capsys) -> None:
    out = tmp_path / "g.png"
    assert main(["prior", "sample", "a red cat", "--prior", "embedded-exemplar", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sds3d: error:") and "Traceback" not in err
    assert "chair" in err and "two-tone" in err and "--prior HUB_ID" in err
    assert not out.exists()


def test_unknown_prior_is_a_user_error_without_traceback(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["prior", "info", "--prior", "sds3d-tests/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sds3d: error:") and "--allow-download" in err and "Traceback" not in err


def test_bad_sample_options_are_user_errors(tmp_path: Path, capsys) -> None:
    assert main(["prior", "sample", "a red cube", "--n", "0", "--out", str(tmp_path / "g.png")]) == 2
    assert main(["prior", "sample", "a red cube", "--out", str(tmp_path / "g.jpg")]) == 2
    assert main(["prior", "sample", "a red cube", "--device", "cuda", "--out", str(tmp_path / "g.png")]) in (
        0,
        2,
    )
    assert not (tmp_path / "g.jpg").exists()
