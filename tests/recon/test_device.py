"""``--device`` / ``--dtype``: the rules, CPU runs unchanged by them, one clear error without CUDA, and
(``-m cuda``, on a machine with a GPU) short runs of every pipeline on CUDA."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from recon.device import resolve_device, resolve_dtype
from recon.errors import UserError
from recon.train import Stage, TrainConfig, Trainer, read_checkpoint

NO_CUDA = "--device cuda: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); use --device cpu or install a CUDA build of torch"  # noqa: E501

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA path needs a CUDA GPU; none is visible to torch here"
)


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine whose torch sees no GPU (this one, or a GPU machine pretending)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine whose torch sees one GPU (only resolved, never used)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# ------------------------------------------------------------------------------------------ the rules
def test_auto_is_the_cpu_in_float32_without_cuda(no_cuda):
    device = resolve_device("auto")
    assert device == torch.device("cpu")
    assert resolve_device("cpu") == device and resolve_device(" CPU ") == device
    assert resolve_dtype("auto", device) is torch.float32
    assert resolve_dtype("float16", device) is torch.float16  # asked for: allowed (with a warning)
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16


def test_auto_is_the_current_gpu_in_float16_with_cuda(one_gpu):
    assert resolve_device("auto") == torch.device("cuda", 0)  # with its index, as tensors report it
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_dtype("auto", resolve_device("auto")) is torch.float16
    assert resolve_dtype("float32", "cuda:0") is torch.float32
    with pytest.raises(UserError, match=r"--device cuda:3: torch sees 1 CUDA GPU\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_one_clear_error_naming_the_flag(no_cuda, name):
    with pytest.raises(UserError) as err:
        resolve_device(name)
    assert str(err.value) == NO_CUDA.replace("--device cuda:", f"--device {name}:")


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:", "cuda:x", "cuda0", "cpu:0", "", 0, None])
def test_bad_device_names_are_refused(name):
    with pytest.raises(UserError, match="--device") as err:
        resolve_device(name)
    assert "auto, cpu, cuda" in str(err.value)


@pytest.mark.parametrize("name", ["fp16", "half", "float64", "int8", "", None])
def test_bad_dtype_names_are_refused(name):
    with pytest.raises(UserError, match="--dtype") as err:
        resolve_dtype(name, "cpu")
    assert "float32, float16, bfloat16" in str(err.value)


def _pipeline_configs(tmp_path: Path, **settings):
    from recon.pipelines.dreamcraft3d import DreamCraft3DConfig
    from recon.pipelines.dreamcraft3d import validate as validate_dc
    from recon.pipelines.stabledreamer import StableDreamerConfig
    from recon.pipelines.stabledreamer import validate as validate_sd
    from recon.pipelines.video_recon import VideoReconConfig
    from recon.pipelines.video_recon import validate as validate_vr

    return [
        (StableDreamerConfig(**settings), validate_sd),
        (DreamCraft3DConfig(image=str(tmp_path / "ref.png"), **settings), validate_dc),
        (VideoReconConfig(**settings), validate_vr),
    ]


def test_every_pipeline_validates_its_device_and_dtype(tmp_path, no_cuda):
    for config, validate in _pipeline_configs(tmp_path):
        assert (config.device, config.dtype) == ("auto", "auto")
        validate(config)
    for config, validate in _pipeline_configs(tmp_path, device="cuda"):
        with pytest.raises(UserError) as err:
            validate(config)
        assert str(err.value) == NO_CUDA, type(config).__name__
    for config, validate in _pipeline_configs(tmp_path, dtype="fp16"):
        with pytest.raises(UserError, match="--dtype 'fp16'"):
            validate(config)
    for config, validate in _pipeline_configs(tmp_path, device=""):
        with pytest.raises(UserError, match="device is empty; use auto, cpu, cuda or cuda:N"):
            validate(config)


def test_the_trainer_refuses_cuda_without_cuda_and_otherwise_stays_where_asked(tmp_path, no_cuda):
    def stage() -> Stage:
        return Stage("fit", 1, lambda step, gen: None, lambda m, b: m.weight.sum(), [])

    module = torch.nn.Linear(2, 1)
    with pytest.raises(UserError, match="device cuda: no CUDA GPU is visible to torch"):
        Trainer(module, [stage()], tmp_path, TrainConfig(device="cuda"))
    for device in (None, "cpu", "auto"):
        trainer = Trainer(module, [stage()], tmp_path, TrainConfig(device=device))
        assert trainer.device == torch.device("cpu") and module.weight.device.type == "cpu"
        assert trainer.generator.device.type == "cpu"


# ------------------------------------------------------------------------------ CPU runs: unchanged
def _checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint by its path in the payload (modules, optimizers, RNG states, ...)."""
    out: dict[str, torch.Tensor] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, torch.Tensor):
            out[key] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}/{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}/{i}")

    walk(read_checkpoint(path), "")
    return out


def _losses(history: dict) -> dict:
    return {stage: values["loss"] for stage, values in history.items()}


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    ta, tb = _checkpoint_tensors(a), _checkpoint_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 10
    for key in ta:
        assert ta[key].device.type == "cpu", key  # written with CPU tensors
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key
    assert _losses(read_checkpoint(a)["history"]) == _losses(read_checkpoint(b)["history"])


def _run(tmp_path: Path, config, pipeline: str) -> Path:
    from recon.pipelines import generate

    return generate(config, pipeline, tmp_path / f"out-{config.device}", export=False)


def test_stabledreamer_on_an_explicit_cpu_is_bit_identical_to_auto(tmp_path, no_cuda):
    from recon.pipelines.stabledreamer import StableDreamerConfig

    runs = {}
    for device in ("cpu", "auto"):
        config = StableDreamerConfig(
            prompt="a red cube", steps=4, num_gaussians=300, views_per_step=2, checkpoint_every=2,
            progress_bar=False, device=device,
        )  # fmt: skip
        runs[device] = _run(tmp_path, config, "stabledreamer")
    _assert_same_checkpoint(runs["cpu"] / "ckpt" / "last.pt", runs["auto"] / "ckpt" / "last.pt")
    history = read_checkpoint(runs["cpu"] / "ckpt" / "last.pt")["history"]
    assert all(math.isfinite(v) for stage in history.values() for v in stage["loss"].values())


def test_dreamcraft3d_on_an_explicit_cpu_is_bit_identical_to_auto(tmp_path, no_cuda):
    from recon.pipelines.dreamcraft3d import DreamCraft3DConfig
    from tests.recon.test_dreamcraft3d import _reference_png

    image = _reference_png(tmp_path / "cone.png", size=48)
    runs = {}
    for device in ("cpu", "auto"):
        config = DreamCraft3DConfig(
            image=str(image), view_prior="none", texture_guidance="bsd", reference_size=32, resolution=32,
            coarse_steps=2, sdf_init_steps=1, sculpt_steps=1, texture_steps=2, mesh_resolution=24,
            max_faces=1000, texture_size=32, bake_views=6, bake_size=32, nerf_samples=16, sdf_samples=16,
            checkpoint_every=1, progress_bar=False, device=device,
        )  # fmt: skip
        runs[device] = _run(tmp_path, config, "dreamcraft3d")
    for part in ("ckpt/last.pt", "texture/ckpt/last.pt"):
        _assert_same_checkpoint(runs["cpu"] / part, runs["auto"] / part)
    texture = read_checkpoint(runs["cpu"] / "texture" / "ckpt" / "last.pt")
    assert set(texture["auxiliaries"]) == {"bsd_finetuned", "bsd_estimator"}


# ------------------------------------------------------------------------------------------ the CLI
def _one_line_exit_2(argv: list[str], out: Path, capsys) -> str:
    from app.cli import main

    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing written
    return err.strip()


def test_generate_with_device_cuda_without_cuda_exits_2_with_one_line(tmp_path, capsys, no_cuda):
    err = _one_line_exit_2(["generate", "a red cube", "--device", "cuda"], tmp_path / "out", capsys)
    assert err == f"sds3d: error: {NO_CUDA}"


@pytest.mark.parametrize("command", ["generate", "reconstruct"])
def test_a_preset_asking_for_cuda_without_cuda_exits_2_with_one_line(tmp_path, capsys, no_cuda, command):
    pipeline = "stabledreamer" if command == "generate" else "video_recon"
    preset = tmp_path / "gpu.yaml"
    preset.write_text(f"pipeline: {pipeline}\nconfig:\n  device: cuda\n")
    source = "a red cube" if command == "generate" else str(tmp_path)  # checked before the input is read
    err = _one_line_exit_2([command, source, "--config", str(preset)], tmp_path / "out", capsys)
    assert err == f"sds3d: error: {NO_CUDA}"


# ------------------------------------------------------------------------ CUDA (run with -m cuda)
def _on_cuda(module: torch.nn.Module) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return bool(tensors) and all(t.device.type == "cuda" for t in tensors)


def _finite_losses(history: dict) -> bool:
    values = [v for stage in history.values() for v in stage["loss"].values()]
    return bool(values) and all(math.isfinite(v) for v in values)


@pytest.mark.cuda
@needs_cuda
def test_stabledreamer_gaussians_on_cuda(tmp_path):
    """4 steps on gsplat; a run stopped on one device resumes on the other (CUDA -> CPU mid-geometry
    stage, with the densification state; CPU -> CUDA); the checkpoint holds CPU tensors and exports."""
    from recon.pipelines import generate
    from recon.pipelines.stabledreamer import StableDreamerConfig, build_trainer, load_priors
    from recon.runs import export_run, load_model
    from recon.train import Hooks, Stopped

    config = StableDreamerConfig(
        prompt="a red cube", steps=4, num_gaussians=300, views_per_step=2, checkpoint_every=2,
        progress_bar=False, device="cuda",
    )  # fmt: skip
    on_cpu = dataclasses.replace(config, device="cpu")
    priors = {"cuda": load_priors(config), "cpu": load_priors(on_cpu)}
    assert priors["cuda"].geometry.device.type == "cuda"

    def trainer_on(device: str, run_dir: Path, stop_at: int | None = None) -> Trainer:
        trainer = build_trainer(dataclasses.replace(config, device=device), priors[device], run_dir)
        if stop_at is not None:
            trainer.hooks = Hooks(should_stop=lambda: trainer.global_step >= stop_at)
        return trainer

    first = trainer_on("cuda", tmp_path / "a", stop_at=1)
    assert first.device.type == "cuda" and _on_cuda(first.model)
    with pytest.raises(Stopped):
        first.fit()
    assert _on_cuda(first.model) and _finite_losses(first.state.history)
    assert first.strategy_state is not None  # the densification statistics travel too
    assert all(t.device.type == "cpu" for t in _checkpoint_tensors(first.checkpoint_path).values())
    resumed = trainer_on("cpu", tmp_path / "a")
    resumed.load_checkpoint()
    assert resumed.global_step == 1 and resumed.model.means.device.type == "cpu"
    assert len(resumed.model) == len(first.model)
    assert _finite_losses(resumed.fit())
    assert load_model(tmp_path / "a").means.device.type == "cpu"
    paths = export_run(
        tmp_path / "a",
        formats=("glb", "ply"),
        faces=2000,
        texture_size=64,
        n_views=8,
        method="marching_cubes",
    )
    assert paths["glb"].is_file() and paths["ply"].is_file()

    second = trainer_on("cpu", tmp_path / "b", stop_at=3)
    with pytest.raises(Stopped):
        second.fit()
    resumed = trainer_on("cuda", tmp_path / "b")
    resumed.load_checkpoint()
    assert resumed.global_step == 3 and _on_cuda(resumed.model)
    history = resumed.fit()
    assert _on_cuda(resumed.model) and _finite_losses(history)
    assert all(torch.isfinite(p).all() for p in resumed.model.splats.values())
    # The whole command path: run folder, turntable, export.
    run = generate(config, out_root=tmp_path / "out")
    assert (run / "renders" / "turntable.png").is_file() and (run / "export" / "model.glb").is_file()


@pytest.mark.cuda
@needs_cuda
def test_dreamcraft3d_embedded_priors_on_cuda(tmp_path):
    """4 steps over the four stages with the embedded priors in float16, BSD's copies in float32."""
    from priors.view import EMBEDDED_VIEW_DIR
    from recon.pipelines import generate
    from recon.pipelines.dreamcraft3d import DreamCraft3DConfig, build_trainer, load_priors
    from tests.recon.test_dreamcraft3d import _reference_png

    view = "embedded" if (EMBEDDED_VIEW_DIR / "model_index.json").is_file() else "none"
    config = DreamCraft3DConfig(
        image=str(_reference_png(tmp_path / "cone.png", size=64)), view_prior=view, steps=4,
        texture_guidance="bsd", reference_size=48, resolution=48, mesh_resolution=48, max_faces=2000,
        texture_size=64, bake_views=6, bake_size=48, checkpoint_every=2, progress_bar=False, device="cuda",
    )  # fmt: skip
    priors = load_priors(config)
    assert priors.texture.device.type == "cuda" and priors.texture.dtype is torch.float16
    run = build_trainer(config, priors, tmp_path / "run")
    assert _on_cuda(run.geometry.model)
    history = run.fit()
    assert _finite_losses({k: v for k, v in history.items() if v.get("loss")})
    assert _on_cuda(run.geometry.model) and _on_cuda(run.texture.model)
    for aux in run.texture.auxiliaries.values():
        assert all(p.device.type == "cuda" and p.dtype is torch.float32 for p in aux.module.parameters())
    out = generate(config, "dreamcraft3d", tmp_path / "out")
    assert (out / "export" / "model.glb").is_file() and (out / "renders" / "turntable.png").is_file()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("representation", ["gaussians", "nerf"])
def test_video_recon_on_cuda(tmp_path, representation):
    """20 steps on a posed synthetic scene (gsplat / nerfacc), evaluation and export from the run."""
    from recon.data.datasets import SceneConfig, SceneData, load_scene, write_transforms
    from recon.data.synthetic import TexturedBlocks, orbit_path
    from recon.pipelines.video_recon import (
        VideoReconConfig,
        build_trainer,
        evaluate,
        reconstruct,
        split_views,
    )

    cams = orbit_path(16, sweep_deg=345.0, elevation_deg=25.0, width=64, height=48)
    rgb, _ = TexturedBlocks().render(cams)
    source = tmp_path / "posed" / "transforms.json"
    write_transforms(source, SceneData(rgb, cams, [f"frame_{i:03d}.png" for i in range(16)]))
    config = VideoReconConfig(
        representation=representation, steps=20, progress_bar=False, device="cuda", export_views=8,
        export_image_size=64, faces=2000, texture_size=64,
    )  # fmt: skip
    scene = load_scene(source, SceneConfig(), tmp_path / "work")
    train_idx, test_idx = split_views(len(scene), config.holdout_every)
    trainer = build_trainer(scene, train_idx, config, tmp_path / "run")
    assert _on_cuda(trainer.model)
    history = trainer.fit()
    assert _on_cuda(trainer.model) and _finite_losses(history)
    assert all(_on_cuda(m) for m in trainer.extra_state.values())
    assert math.isfinite(evaluate(trainer.model, scene, test_idx or train_idx[:2], config.background)["psnr"])
    run = reconstruct(source, config, tmp_path / "out")
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["test"].get("psnr", metrics["train"]["psnr"]))
    assert (run / "export" / "model.glb").is_file()
