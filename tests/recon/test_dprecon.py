"""DP-Recon (recon.pipelines.dprecon): per-object geometry, losses, the normal-map prior, the scene GLB
writer, and a small procedural scene end to end (every object its own textured mesh, in place)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.fields import SDFField, SDFFieldConfig
from recon.fields.object_channel import ObjectField, channel_geometry
from recon.pipelines.dprecon import (
    DPReconConfig,
    NormalLatentPrior,
    reconstruct,
    scale_shift_invariant_depth,
    sds_timestep_range,
)


def _two_object_field(perturb: bool = True) -> SDFField:
    torch.manual_seed(0)
    cfg = SDFFieldConfig(
        num_objects=2, object_centers=((0.4, 0.0, 0.0), (-0.4, 0.0, 0.0)), sphere_radius=0.25,
        grid_resolutions=(8, 16), hidden_layers=1, density="volsdf", beta_init=0.01, grid_init_std=0.05,
    )  # fmt: skip
    field = SDFField(cfg)
    if perturb:  # a little non-zero MLP output, so the channels are not just the bias spheres
        with torch.no_grad():
            field.geometry_head.weight[:3].normal_(0, 0.05)
    return field


def test_channel_geometry_matches_autograd_of_each_channel():
    field = _two_object_field()
    pts = torch.rand(200, 3) * 1.6 - 0.8
    for k in range(3):
        for clip in (False, True):  # clipped: max(s_k, -s_0), nothing inside the background's solid
            sdf, grad, feat = channel_geometry(field, pts, k, clip_background=clip)
            x = pts.clone().requires_grad_(True)
            sdfs = field.object_sdfs(x)
            ref = torch.maximum(sdfs[:, k], -sdfs[:, 0]) if clip and k > 0 else sdfs[:, k]
            (ref_grad,) = torch.autograd.grad(ref.sum(), x)
            assert torch.allclose(sdf, ref.detach(), atol=1e-5)
            assert torch.allclose(grad, ref_grad, atol=1e-4)
            assert torch.allclose(feat, field.geometry(pts).features, atol=1e-5)


def test_object_field_renders_one_object_alone():
    """An object rendered alone shows all of its silhouette, even where another object hides it."""
    from recon.cameras import cameras_from_spherical
    from recon.data.procedural import projected_sphere_area
    from recon.mesh.scene import render_field_views

    field = _two_object_field(perturb=False)  # two spheres of radius 0.25 at x = +-0.4
    one = torch.ones(1)
    side = cameras_from_spherical(one * 0, one * 90, one * 3.0, one * 40, 48, 48)  # on +x: 1 hides 2
    _, _, alpha_scene = render_field_views(field, side, 96)
    _, _, alpha_1 = render_field_views(ObjectField(field, 1, field.aabb), side, 96)
    _, _, alpha_2 = render_field_views(ObjectField(field, 2, field.aabb), side, 96)
    focal = float(side.fy[0])
    for alpha, distance in ((alpha_1, 2.6), (alpha_2, 3.4)):
        # a VolSDF silhouette lies about 2.3 beta outside the zero level set
        expected = projected_sphere_area(0.25 + 2.3 * 0.01, distance, focal)
        assert abs(float(alpha.sum()) - expected) < 0.1 * expected, (float(alpha.sum()), expected)
    assert (alpha_scene - alpha_1).abs().max() < 0.05  # in the scene, object 2 is hidden behind 1
    front = cameras_from_spherical(one * 0, one * 0, one * 3.0, one * 40, 32, 32)
    _, _, a1 = render_field_views(ObjectField(field, 1, field.aabb), front, 96)
    cols = a1[0, :, :, 0].sum(0)
    assert cols[16:].sum() > 20 * cols[:16].sum()  # object 1 (+x) sits right of the centre


def test_scale_and_shift_invariant_depth():
    torch.manual_seed(0)
    target = torch.rand(300) * 2 + 1
    cam = torch.arange(300) % 3
    scale, shift = torch.tensor([0.5, 2.0, 3.0]), torch.tensor([0.1, -1.0, 0.7])
    pred = (target - shift[cam]) / scale[cam]  # each view off by its own scale and shift
    valid = torch.ones(300, dtype=torch.bool)
    assert scale_shift_invariant_depth(pred, target, cam, valid) < 1e-8
    noisy = pred + 0.1 * torch.randn(300)
    assert scale_shift_invariant_depth(noisy, target, cam, valid) > 1e-3
    valid[::2] = False  # masked rays do not count
    bad = pred.clone()
    bad[::2] = 100.0
    assert scale_shift_invariant_depth(bad, target, cam, valid) < 1e-8


def test_sds_timestep_schedule_is_the_released_one():
    assert sds_timestep_range(0.0) == (0.2, 0.98) and sds_timestep_range(0.5) == (0.2, 0.98)
    lo, hi = sds_timestep_range(1.0)
    assert abs(lo - 0.02) < 1e-9 and abs(hi - 0.40) < 1e-9
    lo, hi = sds_timestep_range(0.75)
    assert abs(lo - 0.11) < 1e-9 and abs(hi - 0.69) < 1e-9


def test_normal_and_opacity_map_is_fed_as_the_latent(tmp_path):
    """The released geometry SDS: cat(normal, opacity) * 2 - 1 at the latent size, no VAE, CFG."""
    from priors.model import DiffusionPrior
    from priors.sds import SDSConfig, SDSLoss
    from tests.priors.test_model import save_tiny_sd

    prior = DiffusionPrior.from_pretrained(str(save_tiny_sd(tmp_path / "sd")))
    wrapped = NormalLatentPrior(prior)
    assert wrapped.resolution == prior.latent_size and wrapped.latent_channels == 4
    x = torch.rand(1, 4, 40, 40, requires_grad=True)
    sds = SDSLoss(wrapped, SDSConfig(guidance_scale=50.0, weighting="sqrt_alpha_1-alpha"))
    weight = torch.zeros(1, 1, 40, 40)
    weight[..., 20:] = 1.0  # the visible half gets no gradient
    cond = wrapped.encode_prompt(["a chair"], [""])
    loss, _ = sds(x, cond, 0.3, weight_map=weight, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad[..., 24:].abs().sum() > 0
    assert x.grad[..., :16].abs().max() == 0
    assert torch.equal(wrapped.encode_images(torch.full((1, 4, 2, 2), 0.75)), torch.full((1, 4, 2, 2), 0.5))


def test_scene_glb_has_a_named_node_per_object_in_place(tmp_path):
    import trimesh

    from recon.mesh.scene import SceneNode, read_scene_nodes, write_scene_glb
    from recon.mesh.uv import unwrap_uv

    nodes = []
    for name, center in (("a red cube", (0.5, 0.0, -0.3)), ("a blue cone", (-0.4, 0.2, 0.1))):
        box = trimesh.creation.box((0.2, 0.3, 0.1))
        box.apply_translation(center)
        nodes.append(SceneNode(name, unwrap_uv(box, 64), np.full((64, 64, 3), 0.5, np.float32)))
    path = write_scene_glb(tmp_path / "scene.glb", nodes)
    read = read_scene_nodes(path)
    assert sorted(read) == ["a blue cone", "a red cube"]
    for node in nodes:
        mesh = read[node.name]
        assert np.allclose(mesh.bounds, node.mesh.to_trimesh().bounds, atol=1e-5)
        assert mesh.visual.uv is not None and len(mesh.visual.uv) == len(mesh.vertices)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


# ---------------------------------------------------------------------------------------- end to end
TINY = {
    "recon_steps": 120, "refine_steps": 4, "rays_per_step": 384, "num_samples": 48, "visibility_steps": 8,
    "visibility_rays": 512, "mesh_resolution": 40, "texture_size": 64, "max_faces": 3000, "bake_views": 6,
    "bake_size": 32, "progress_bar": False, "checkpoint_every": 50,
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    from recon.data.scene_synth import SceneSynthConfig, synth_scene

    cfg = SceneSynthConfig(
        num_objects=3, num_views=6, eval_views=2, seed=21, width=64, height=48, mesh_resolution=40
    )
    return synth_scene(tmp_path_factory.mktemp("dprecon") / "room", cfg)


def _config(scene: Path, **change) -> DPReconConfig:
    sdf = SDFFieldConfig(
        radius=1.0, grid_resolutions=(16, 32, 48), features=4, hidden=32, density="volsdf", beta_init=0.05,
        beta_min=0.004, sphere_radius=0.1, background_radius=0.95, eikonal_extra=True,
    )  # fmt: skip
    return DPReconConfig(scene=str(scene), sdf=sdf, **{**TINY, **change})


def test_every_object_comes_out_as_its_own_textured_mesh_in_place(tmp_path, tiny_scene):
    from recon.data.scene_synth import load_ground_truth
    from recon.mesh.io import read_mesh
    from recon.mesh.scene import read_scene_nodes

    run = reconstruct(config=_config(tiny_scene), out_root=tmp_path / "out")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"recon", "refine"} and metrics["stages"]["refine"]["skipped_steps"] == 0
    assert "sds" in metrics["stages"]["refine"]["loss"] and len(metrics["psnr_eval"]["views"]) == 2
    assert metrics["psnr_eval"]["mean"] > 14
    gt = load_ground_truth(tiny_scene)
    assert sorted(metrics["objects"]) == ["1", "2", "3"]
    assert (run / "visibility.pt").is_file() and (run / "refine" / "ckpt" / "last.pt").is_file()
    nodes = read_scene_nodes(run / "export" / "scene.glb")
    names = {int(i): o["caption"].replace(" ", "-") for i, o in gt.description["objects"].items()}
    assert set(nodes) == set(names.values()) | {"background"}
    boxes = {
        int(i): (np.array(o["bbox_min"]), np.array(o["bbox_max"]))
        for i, o in gt.description["objects"].items()
    }

    def overlap(a, b) -> float:  # the share of box b inside box a
        inter = np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0, None).prod()
        return float(inter / np.prod(b[1] - b[0]))

    for iid, name in names.items():
        glb = read_mesh(run / "export" / "objects" / f"{name}.glb")  # one file per object, by its prompt
        assert (run / "export" / "objects" / f"{name}.obj").is_file()
        assert glb.visual.uv is not None and len(glb.visual.uv) == len(glb.vertices)
        node = nodes[name].bounds  # in scene coordinates: where the true object stands
        g_lo, g_hi = boxes[iid]
        # its true centre inside its box, within a third of its size: after 120 steps from 6 views an
        # object against the back wall can come out pushed into the wall (the yellow chair: its box ends
        # 0.25 of its size short of its true centre, z, with 1 thread; in place with 2) - a known flaw
        margin = 0.35 * float((g_hi - g_lo).max())
        assert ((node[0] - margin <= (g_lo + g_hi) / 2) & ((g_lo + g_hi) / 2 <= node[1] + margin)).all(), name
        # it holds more of its own object than of any other. After 120 steps from 6 views the hidden
        # backs are loose and the share of the own box varies with the float summation order (the
        # thread count): measured 0.09-1.0 with 1 thread, 0.2-1.0 with 2, <= 0.1 of the others.
        own = overlap(node, boxes[iid])
        assert own > 0.05 and all(own > 2 * overlap(node, b) for j, b in boxes.items() if j != iid), (
            name,
            own,
        )
    room = nodes["background"].bounds
    assert room[0][1] < gt.description["room"]["floor"] + 0.1 and room[1][1] > 0.5  # floor and walls


def test_bad_scene_through_the_cli_is_one_error_and_writes_nothing(tmp_path, tiny_scene, capsys):
    import shutil

    from app.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(tiny_scene, bad)
    (bad / "prompts.json").write_text(json.dumps({"1": "a red cube", "8": "a ghost"}))
    out = tmp_path / "out"
    code = main(["reconstruct", str(bad), "--pipeline", "dprecon", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "names instance 8, which no mask has" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    few = tmp_path / "few"
    shutil.copytree(tiny_scene, few)
    meta = json.loads((few / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:2]
    (few / "transforms.json").write_text(json.dumps(meta))
    assert main(["reconstruct", str(few), "--pipeline", "dprecon", "--out", str(out)]) == 2
    assert "at least 3 posed views" in capsys.readouterr().err and not out.exists()


def test_ctrl_c_keeps_the_run_and_reconstruct_resume_finishes_it(tmp_path, tiny_scene, capsys, monkeypatch):
    """Ctrl-C in the middle of the SDF stage: the step is finished and checkpointed, the CLI names the
    command that continues it, and ``sds3d reconstruct --resume RUN`` finishes the run from there."""
    import dataclasses
    import os
    import signal

    import torch
    import yaml

    from app.cli import main
    from recon.pipelines.video_recon import VideoReconConfig
    from recon.runs import save_config
    from recon.train import Trainer

    preset = tmp_path / "tiny.yaml"
    config = _config(tiny_scene, empty_visibility="free-space")  # the option's path through a whole run
    preset.write_text(yaml.safe_dump({"pipeline": "dprecon", "config": dataclasses.asdict(config)}))
    step = Trainer._step

    def ctrl_c_at_step_60(self, stage, i, progress):
        if self.global_step == 60:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, stage, i, progress)

    monkeypatch.setattr(Trainer, "_step", ctrl_c_at_step_60)
    out = tmp_path / "out"
    args = [
        "reconstruct",
        str(tiny_scene),
        "--pipeline",
        "dprecon",
        "--config",
        str(preset),
        "--out",
        str(out),
    ]
    assert main(args) == 130
    [run] = list((out / "dprecon").iterdir())
    err = capsys.readouterr().err
    assert f"continue it with `sds3d reconstruct --resume {run}`" in err, err
    assert torch.load(run / "ckpt" / "last.pt", weights_only=False)["stage_step"] == 61  # not the last 50
    monkeypatch.setattr(Trainer, "_step", step)

    assert main(["reconstruct", "--resume", str(run), "--steps", "7"]) == 2
    assert "--steps 7 conflicts with the run's steps" in capsys.readouterr().err
    assert main(["reconstruct", str(tiny_scene), "--resume", str(run)]) == 2
    assert "drop INPUT" in capsys.readouterr().err
    video = tmp_path / "video-run"  # a video_recon run that lacks its posed frames
    video.mkdir()
    save_config(VideoReconConfig(), video, "video_recon")
    assert main(["reconstruct", "--resume", str(video)]) == 2
    assert "has no scene.pt or transforms.json to resume from" in capsys.readouterr().err
    assert main(["reconstruct"]) == 2 and "or --resume RUN_DIR" in capsys.readouterr().err

    assert main(["reconstruct", "--resume", str(run), "--no-export"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stages"]["recon"]["steps"] == TINY["recon_steps"] and metrics["psnr_eval"]["mean"] > 14
    assert "sds" in metrics["stages"]["refine"]["loss"]
    assert yaml.safe_load((run / "config.yaml").read_text())["config"]["empty_visibility"] == "free-space"
    assert (run / "refine" / "ckpt" / "last.pt").is_file() and sorted(os.listdir(out / "dprecon")) == [
        run.name
    ]
