"""DreamCraft3D on the embedded priors: stage plan, captioning, a short image-to-3D run, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from recon.cameras import cameras_from_spherical
from recon.data.procedural import render_primitive
from recon.pipelines import generate
from recon.pipelines.dreamcraft3d import (
    DreamCraft3DConfig,
    caption_reference,
    reference_camera,
    stage_steps,
)


def _reference_png(path, shape="cone", color="red", size=96):
    one = torch.ones(1)
    cam = cameras_from_spherical(one * 0, one * 0, one * 3.0, one * 40, size, size)
    rgb, alpha, _ = render_primitive(shape, color, cam)
    img = np.concatenate([rgb[0].numpy(), alpha[0].reshape(size, size, 1).numpy()], -1)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path


def test_steps_are_shared_out_in_the_stage_proportions():
    cfg = DreamCraft3DConfig()
    assert stage_steps(cfg) == {
        "coarse_steps": 300,
        "sdf_init_steps": 100,
        "sculpt_steps": 200,
        "texture_steps": 200,
    }
    cfg = DreamCraft3DConfig(steps=80)
    assert stage_steps(cfg) == {
        "coarse_steps": 30,
        "sdf_init_steps": 10,
        "sculpt_steps": 20,
        "texture_steps": 20,
    }
    cfg = DreamCraft3DConfig(steps=8, sculpt_steps=0)
    counts = stage_steps(cfg)
    assert counts["sculpt_steps"] == 0 and counts["coarse_steps"] >= 2


@pytest.mark.parametrize(
    "shape, color",
    [("cone", "red"), ("torus", "blue"), ("cube", "green"), ("sphere", "yellow"), ("cylinder", "purple")],
)
def test_embedded_caption_of_a_primitive_reference(tmp_path, shape, color):
    from recon.data.reference import ReferenceConfig, load_reference

    ref = load_reference(_reference_png(tmp_path / "r.png", shape, color), ReferenceConfig(size=64))
    assert caption_reference(ref) == f"a {color} {shape}"


@pytest.mark.parametrize("kind, color", [("mug", "green"), ("duck", "yellow"), ("chair", "red")])
def test_embedded_caption_of_an_object_of_the_world(tmp_path, kind, color):
    """A mug was captioned "a green cube" when only primitives were judged."""
    from recon.data.objects import ProceduralObject, render_object
    from recon.data.reference import ReferenceConfig, load_reference

    one = torch.ones(1)
    cam = cameras_from_spherical(one * 0, one * 0, one * 3.0, one * 40, 128, 128)
    out = render_object(ProceduralObject(kind, color), cam)
    img = np.concatenate([out.rgb[0].numpy(), out.alpha[0].reshape(128, 128, 1).numpy()], -1)
    path = tmp_path / "r.png"
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    assert caption_reference(load_reference(path, ReferenceConfig(size=64))) == f"a {color} {kind}"


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp_min(1))


def test_short_image_to_3d_run_fits_the_reference_and_exports_a_uv_mesh(tmp_path):
    """Coarse NeRF → SDF → textured mesh on a red cone picture; the mesh matches the reference view."""
    import trimesh

    from recon.data.reference import ReferenceConfig, load_reference

    image = _reference_png(tmp_path / "cone.png")
    cfg = DreamCraft3DConfig(
        image=str(image), view_prior="none", texture_guidance="sds", reference_size=48, resolution=48,
        coarse_steps=120, sdf_init_steps=150, sculpt_steps=0, texture_steps=40, mesh_resolution=64,
        max_faces=4000, texture_size=128, nerf_samples=48, progress_bar=False, checkpoint_every=50,
    )  # fmt: skip
    run = generate(cfg, "dreamcraft3d", tmp_path / "out")
    assert (run / "export" / "model.glb").is_file() and (run / "export" / "model.obj").is_file()
    mesh = trimesh.load(run / "export" / "model.glb", force="mesh")
    assert mesh.visual.uv is not None and len(mesh.visual.uv) == len(mesh.vertices)
    # The caption the embedded judges gave the picture names the run.
    assert "a-red-cone" in run.name
    metrics = json.loads((run / "texture" / "metrics.json").read_text())
    assert metrics["stages"]["texture"]["steps"] == 40
    # The textured mesh seen from the reference camera covers the reference's mask and its colour.
    from recon.render.mesh import TexturedMesh
    from recon.train import read_checkpoint

    state = read_checkpoint(run / "texture" / "ckpt" / "last.pt")["modules"]["texture"]["state"]
    textured = TexturedMesh.from_checkpoint_state(state)
    ref = load_reference(image, ReferenceConfig(size=48))
    with torch.no_grad():
        out = textured(reference_camera(cfg, 48), background=1.0)
    rendered, truth = out.alpha[0, ..., 0] > 0.5, ref.mask > 0.5
    assert _iou(rendered, truth) > 0.8
    inside = rendered & truth
    mean = out.rgb[0][inside].mean(0)
    assert mean[0] > 0.5 and mean[1] < 0.35 and mean[2] < 0.35  # red
    # The run keeps its own copy of the picture: it resumes after the original is gone.
    from recon.runs import load_config

    assert load_config(run)[1]["image"] == "inputs/reference.png"
    assert (run / "inputs" / "reference.png").read_bytes() == image.read_bytes()
    image.unlink()
    # Resuming a finished run trains nothing more and exports again.
    again = generate(resume=run)
    assert again == run
    assert json.loads((run / "texture" / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--pipeline", "dreamcraft3d"], "give it with --image"),
        (["--pipeline", "dreamcraft3d", "--image", "MISSING.png"], "does not exist"),
        (["--pipeline", "dreamcraft3d", "--image", "NOTIMAGE.png"], "not an image"),
        (["--pipeline", "dreamcraft3d", "--image", "REF.png", "--mask", "EMPTY.png"], "empty"),
        (["--pipeline", "dreamcraft3d", "--image", "BORDER.png"], "all four borders"),
        (["a red cube", "--image", "REF.png"], "does not apply to --pipeline stabledreamer"),
        (["--pipeline", "dreamcraft3d", "--image", "REF.png", "--representation", "nerf"], "does not apply"),
    ],
)
def test_bad_input_one_clear_error_and_nothing_written(tmp_path, capsys, args, needle):
    from app.cli import main

    ref = _reference_png(tmp_path / "REF.png", size=32)
    (tmp_path / "NOTIMAGE.png").write_text("not a picture")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "EMPTY.png")
    border = np.zeros((32, 32, 4), np.uint8)
    border[..., 0] = 200
    border[14:18, :, 3] = 255
    border[:, 14:18, 3] = 255
    Image.fromarray(border).save(tmp_path / "BORDER.png")
    argv = ["generate", *[str(tmp_path / a) if a.endswith(".png") and a[:-4].isupper() else a for a in args]]
    argv += ["--view-prior", "none", "--out", str(tmp_path / "out")]
    assert ref.is_file()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert needle in err, err
    assert not (tmp_path / "out").exists()
