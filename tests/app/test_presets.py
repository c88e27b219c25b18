"""configs/ presets: every one loads into its pipeline's dataclass, every CPU-capable one runs for 2 steps
(nerfstudio's method smoke test), flags override a preset, and bad presets are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.cli import main
from recon.pipelines import generate
from recon.pipelines.bigs import BigsConfig
from recon.pipelines.dprecon import DPReconConfig
from recon.pipelines.dreamcraft3d import DreamCraft3DConfig
from recon.pipelines.stabledreamer import StableDreamerConfig
from recon.pipelines.video_recon import VideoReconConfig, reconstruct
from recon.pipelines.zero1toa import Zero1toAConfig
from recon.presets import PRESET_DIR, list_presets, load_preset
from recon.runs import load_config

EMBEDDED = ("embedded", "embedded-exemplar", "embedded-unet", "embedded-unet-latent", "same", "none")


def test_the_product_presets_exist_and_load():
    assert {
        "stabledreamer",
        "stabledreamer-nerf",
        "stabledreamer-if-sd",
        "video-recon",
        "dprecon",
        "bigs",
    } <= set(list_presets())
    for name in list_presets():
        pipeline, config = load_preset(name)
        expected = {
            "stabledreamer": StableDreamerConfig,
            "dreamcraft3d": DreamCraft3DConfig,
            "video_recon": VideoReconConfig,
            "dprecon": DPReconConfig,
            "bigs": BigsConfig,
            "zero1toa": Zero1toAConfig,
        }[pipeline]
        assert isinstance(config, expected), name
    _, nerf = load_preset("stabledreamer-nerf")
    assert nerf.representation == "nerf" and nerf.nerf.grid_resolution == 48
    _, if_sd = load_preset(PRESET_DIR / "stabledreamer-if-sd.yaml")
    assert if_sd.prior.startswith("DeepFloyd/") and "stable-diffusion" in if_sd.color_prior
    _, avatar = load_preset("zero1toa")
    assert avatar == Zero1toAConfig()  # the embedded CPU defaults, written out
    _, avatar_gpu = load_preset("zero1toa-gpu")
    assert avatar_gpu.video_prior == "stabilityai/stable-video-diffusion-img2vid"
    assert avatar_gpu.allow_download
    assert avatar_gpu.size == 256 and avatar_gpu.per_face == 4 and avatar_gpu.steps > avatar.steps


def _cpu_capable(config) -> bool:
    priors = [getattr(config, "prior", "embedded"), getattr(config, "color_prior", "same")]
    priors.append(getattr(config, "view_prior", "none"))
    priors.append(getattr(config, "video_prior", "embedded"))  # Zero-1-to-A
    if hasattr(config, "sds_prior") and config.sds_weight > 0:  # BIGS: the object's SDS prior
        priors.append(config.sds_prior)
    return all(p in EMBEDDED for p in priors)


@pytest.fixture(scope="module")
def posed_scene(tmp_path_factory) -> Path:
    """12 posed views of the textured blocks as a transforms.json (no structure-from-motion: a 2-step
    smoke test should not depend on SfM registering a tiny video)."""
    from recon.data.datasets import SceneData, write_transforms
    from recon.data.synthetic import TexturedBlocks, orbit_path

    cams = orbit_path(12, sweep_deg=330.0, elevation_deg=25.0, width=48, height=36)
    rgb, _ = TexturedBlocks().render(cams)
    path = tmp_path_factory.mktemp("posed") / "transforms.json"
    write_transforms(path, SceneData(rgb, cams, [f"frame_{i:03d}.png" for i in range(12)]))
    return path


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    from recon.data.scene_synth import SceneSynthConfig, synth_scene

    config = SceneSynthConfig(num_objects=3, num_views=4, eval_views=1, seed=5, width=32, height=24)
    return synth_scene(tmp_path_factory.mktemp("room") / "room", config)


@pytest.fixture(scope="module")
def hands_sequence(tmp_path_factory) -> Path:
    from recon.data.hands_synth import HandsSynthConfig, write_synth_sequence

    return write_synth_sequence(tmp_path_factory.mktemp("hands") / "seq", HandsSynthConfig(frames=4, size=32))


def _reference_picture(path: Path) -> Path:
    import numpy as np
    import torch
    from PIL import Image

    from recon.cameras import cameras_from_spherical
    from recon.data.procedural import render_primitive

    one = torch.ones(1)
    rgb, alpha, _ = render_primitive(
        "cone", "red", cameras_from_spherical(one * 0, one * 0, one * 3, one * 40, 48, 48)
    )
    img = np.concatenate([rgb[0].numpy(), alpha[0].reshape(48, 48, 1).numpy()], -1)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def portrait(tmp_path_factory) -> Path:
    from app.commands.heads import write_portraits

    return write_portraits(tmp_path_factory.mktemp("portrait") / "portraits", 1, 96, 1)


def _zero1toa_two_steps(config, portrait: Path, tmp_path: Path) -> None:
    """Zero-1-to-A: one portrait step, two video steps (a spatial and a temporal one)."""
    from priors.video import EMBEDDED_VIDEO_DIR
    from recon.parametric.head_fit import load_portrait
    from recon.pipelines.zero1toa import load_avatar, run_avatar

    if config.video_prior == "embedded" and not (EMBEDDED_VIDEO_DIR / "model_index.json").is_file():
        from tests.app.tiny_video_prior import write_tiny_video_prior

        print(f"{EMBEDDED_VIDEO_DIR} is not shipped yet: the preset runs with a tiny random video prior")
        config.video_prior = str(write_tiny_video_prior(tmp_path / "tiny-video-prior"))
    config.portrait_steps, config.steps, config.fit_steps = 1, 2, 20
    names = ("portrait_000000.png", "portrait_000000.json", "mask_000000.png")
    image, landmarks, mask = load_portrait(*(portrait / n for n in names))
    result = run_avatar(config, image, landmarks, tmp_path / "avatar", mask=mask, write_video=False)
    assert result.metrics["steps"] == 3 and result.metrics["clip_refreshes"] >= 1
    _, state = load_avatar(result.files["avatar"])
    assert state["config"]["size"] == config.size and state["config"]["steps"] == 2


@pytest.mark.parametrize("name", list_presets())
def test_every_cpu_capable_preset_runs_two_steps(name, tmp_path, posed_scene, room, hands_sequence, portrait):
    pipeline, config = load_preset(name)
    if not _cpu_capable(config):
        keys = ("prior", "color_prior", "view_prior", "texture_prior", "sds_prior", "video_prior")
        priors = [getattr(config, k) for k in keys if hasattr(config, k)]
        pytest.skip(f"{name} needs real checkpoints on a GPU ({', '.join(priors)}); loaded only")
    if pipeline == "zero1toa":
        _zero1toa_two_steps(config, portrait, tmp_path)
        return
    config.progress_bar = False
    if pipeline == "bigs":  # a step in each stage: hands, object, joint, refit
        from recon.pipelines.bigs import reconstruct_hands

        config.hand_steps, config.object_steps, config.joint_steps, config.refit_steps = 1, 1, 1, 1
        config.object_gaussians, config.export_mesh, config.video = 100, False, False
        run_dir = reconstruct_hands(hands_sequence, config, tmp_path, export_results=False)
        saved_pipeline, _ = load_config(run_dir)
        history = yaml.safe_load((run_dir / "metrics.json").read_text())["stages"]
        assert saved_pipeline == "bigs" and sum(stage["steps"] for stage in history.values()) == 4
        return
    config.steps = 2
    if pipeline == "dprecon":
        from recon.pipelines.dprecon import reconstruct as reconstruct_scene

        config.visibility_steps, config.mesh_resolution = 2, 16
        run_dir = reconstruct_scene(room, config, tmp_path, export_result=False)
        saved_pipeline, saved = load_config(run_dir)
        assert saved_pipeline == "dprecon" and saved["steps"] == 2
        return
    if pipeline == "video_recon":
        run_dir = reconstruct(posed_scene, config, tmp_path, export=False)
    elif pipeline == "dreamcraft3d":  # four stages: at least one step each (2 for the coarse one)
        config.image = str(_reference_picture(tmp_path / "ref.png"))
        run_dir = generate(config, pipeline, tmp_path, export=False)
        saved_pipeline, saved = load_config(run_dir)
        assert saved_pipeline == pipeline and saved["steps"] == 2
        history = yaml.safe_load((run_dir / "metrics.json").read_text())["stages"]
        history.update(yaml.safe_load((run_dir / "texture" / "metrics.json").read_text())["stages"])
        assert [h["steps"] for h in history.values()] == [2, 1, 1, 1]
        assert all(stage["skipped_steps"] == 0 for stage in history.values())
        return
    else:
        config.num_gaussians = 256
        run_dir = generate(config, pipeline, tmp_path, export=False)
    saved_pipeline, saved = load_config(run_dir)
    assert saved_pipeline == pipeline and saved["steps"] == 2
    history = yaml.safe_load((run_dir / "metrics.json").read_text())["stages"]
    assert sum(stage["steps"] for stage in history.values()) == 2
    assert all(stage["skipped_steps"] == 0 for stage in history.values())


def test_flags_override_the_preset_and_the_rest_comes_from_it(tmp_path, capsys):
    preset = tmp_path / "mine.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "pipeline": "stabledreamer",
                "config": {
                    "prompt": "a red cube",
                    "steps": 7,
                    "seed": 3,
                    "num_gaussians": 300,
                    "opacity_reg": 0.5,
                },
            }
        )
    )
    out = tmp_path / "out"
    code = main(["generate", "--config", str(preset), "--steps", "2", "--no-export", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = (out / "stabledreamer").iterdir()
    _, saved = load_config(run_dir)
    assert saved["steps"] == 2  # the flag
    assert saved["seed"] == 3 and saved["num_gaussians"] == 300 and saved["opacity_reg"] == 0.5  # the preset
    assert saved["prompt"] == "a red cube"


@pytest.mark.parametrize(
    "content,message",
    [
        ({"pipeline": "stabledreamer", "config": {"stpes": 5}}, "stpes"),
        ({"pipeline": "stabledreamer", "config": {"stpes": 5}}, "did you mean steps"),
        ({"pipeline": "stabledreamer", "config": {"steps": "many"}}, "steps must be an integer"),
        ({"pipeline": "stabledreamer", "config": {"steps": 2.5}}, "steps must be an integer"),
        (
            {"pipeline": "stabledreamer", "config": {"representation": "voxels"}},
            "representation must be one of",
        ),
        ({"pipeline": "stabledreamer", "config": {"sds": {"guidance_scale": "x"}}}, "sds.guidance_scale"),
        ({"pipeline": "stabledreamer", "config": {"nerf": {"grid_res": 3}}}, "nerf.grid_res"),
        ({"pipeline": "stabledreamer", "config": {"distance_range": [1.0]}}, "distance_range must be"),
        ({"pipeline": "stabledreamer", "config": {"view_dependent_prompt": 1}}, "true/false"),
        ({"pipeline": "nope", "config": {}}, "unknown pipeline 'nope'"),
        ({"pipeline": "video_recon", "config": {}}, "this command runs stabledreamer"),
        ({"config": {}}, "pipeline: NAME"),
        (["a", "list"], "pipeline: NAME"),
    ],
)
def test_bad_presets_are_refused_naming_the_key_and_write_nothing(tmp_path, capsys, content, message):
    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml.safe_dump(content))
    out = tmp_path / "out"
    code = main(["generate", "a red cube", "--config", str(preset), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.strip().startswith("sds3d: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_preset_and_bad_yaml_and_bad_representation_flag(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "a red cube", "--config", "no-such-preset", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no preset 'no-such-preset'" in err and "stabledreamer-nerf" in err  # lists the shipped ones
    bad = tmp_path / "broken.yaml"
    bad.write_text("pipeline: [unclosed\n")
    assert main(["generate", "a red cube", "--config", str(bad), "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # tyro refuses a value outside the Literal
        main(["generate", "a red cube", "--representation", "voxels", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "voxels" in capsys.readouterr().err
    assert not out.exists()
