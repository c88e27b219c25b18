"""DreamCraft3D on the embedded priors: stage plan, captioning, a short image-to-3D run, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from recon.cameras import cameras_from_spherical
from recon.data.procedural import render_primitive
from recon.data.reference import caption_reference
from recon.mesh.sdf_fit import fit_mesh_level, floater_points
from recon.pipelines import generate
from recon.pipelines.dreamcraft3d import DreamCraft3DConfig, reference_albedo, reference_camera, stage_steps


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


def test_reference_albedo_unblends_the_outline():
    """Edge pixels blended with white give back the object's colour; the rest of the frame is white."""
    from recon.data.reference import ReferenceImage

    color = torch.tensor([0.1, 0.6, 0.2])
    alpha = torch.tensor([[0.0, 0.3, 0.55], [0.8, 1.0, 0.45]])
    rgb = alpha[..., None] * color + (1 - alpha[..., None])
    target, mask = reference_albedo(ReferenceImage(rgb=rgb, mask=alpha, source="alpha"))
    inside = alpha > 0.5
    assert torch.equal(mask[0, ..., 0] > 0.5, inside)
    assert torch.allclose(target[0][inside], color.expand(int(inside.sum()), 3), atol=1e-6)
    assert torch.equal(target[0][~inside], torch.ones(int((~inside).sum()), 3))


class _TwoSpheres(torch.nn.Module):
    """An analytic SDF: a body (radius ``radius`` at the origin) and, optionally, a small sphere beside it."""

    def __init__(self, floater: bool, radius: float = 0.5):
        super().__init__()
        self.register_buffer("aabb", torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
        self.floater, self.radius = floater, radius

    def sdf(self, points, object_index=None):
        body = points.norm(dim=-1) - self.radius
        if not self.floater:
            return body
        small = (points - torch.tensor([0.8, 0.0, 0.0])).norm(dim=-1) - 0.1
        return torch.minimum(body, small)


def test_fit_mesh_level_finds_the_level_of_the_pictures_outline():
    """The picture shows a sphere of radius 0.47; the field's zero level is one of 0.5: level −0.03."""
    cfg = DreamCraft3DConfig(image="unused.png")
    camera = reference_camera(cfg, 64)
    picture = _TwoSpheres(False, radius=0.47)
    from recon.fields.sdf import extract_sdf_mesh
    from recon.render.mesh_raster import rasterize_mesh

    mesh = extract_sdf_mesh(picture, 96)
    mask = (
        rasterize_mesh(
            torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces), camera
        )
        .mask[0]
        .float()
    )
    level, mesh = fit_mesh_level(_TwoSpheres(False), 96, mask, camera)
    assert level == pytest.approx(-0.03, abs=0.011)
    assert len(mesh.faces) > 0
    assert fit_mesh_level(picture, 96, mask, camera)[0] == 0.0  # already right: the zero level stays


def test_floater_points_are_the_small_pieces_only():
    points = floater_points(_TwoSpheres(True), resolution=48)
    assert len(points) > 0
    assert (points - torch.tensor([0.8, 0.0, 0.0])).norm(dim=-1).max() < 0.1 + 2 / 47
    assert len(floater_points(_TwoSpheres(False), resolution=48)) == 0


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
    assert mean[0] > 0.5 and mean[0] > mean[1] + 0.2 and mean[0] > mean[2] + 0.2  # red
    # The texture stage took the colours towards the picture's (from the field's baked start).
    albedo = reference_albedo(ref)[0][0]
    initial = TexturedMesh.from_checkpoint_state(
        torch.load(run / "texture" / "initial_mesh.pt", weights_only=False)
    )
    with torch.no_grad():
        start = initial(reference_camera(cfg, 48), background=1.0).rgb[0]
    error_start = (start[inside] - albedo[inside]).abs().mean()
    error_end = (out.rgb[0][inside] - albedo[inside]).abs().mean()
    print(f"reference L1 inside: baked {float(error_start):.4f} -> trained {float(error_end):.4f}")
    assert error_end < 0.8 * error_start
    # The run keeps its own copy of the picture: it resumes after the original is gone.
    from recon.runs import load_config

    assert load_config(run)[1]["image"] == "inputs/reference.png"
    assert (run / "inputs" / "reference.png").read_bytes() == image.read_bytes()
    image.unlink()
    # Resuming a finished run trains nothing more and exports again.
    again = generate(resume=run)
    assert again == run
    assert json.loads((run / "texture" / "metrics.json").read_text()) == metrics


def test_sculpt_with_floaters_resumes_exactly(tmp_path, monkeypatch):
    """Stopped in the sculpt stage between two floater searches, resumed: the SDF of an uninterrupted run
    (the floaters found before the stop are in the checkpoint, not searched again on the changed field)."""
    from recon.pipelines import dreamcraft3d
    from recon.pipelines.dreamcraft3d import build_trainer, load_priors
    from recon.train import Hooks, Stopped

    def found(field, resolution=64, min_fraction=0.05):  # a short run has no floaters: points that
        with torch.no_grad():  # depend on the field's current state stand in for them
            points = torch.linspace(-0.3, 0.3, 15).reshape(5, 3)
            return points * (1 + field.sdf(points).mean())

    monkeypatch.setattr(dreamcraft3d, "floater_points", found)

    image = _reference_png(tmp_path / "cone.png")
    cfg = DreamCraft3DConfig(
        image=str(image), view_prior="none", reference_size=32, resolution=32, coarse_steps=10,
        sdf_init_steps=4, sculpt_steps=20, texture_steps=0, nerf_samples=24, sdf_samples=24,
        floater_every=7, progress_bar=False, checkpoint_every=1000,
    )  # fmt: skip
    priors = load_priors(cfg)
    straight = build_trainer(cfg, priors, tmp_path / "a").geometry
    straight.fit()
    first = build_trainer(cfg, priors, tmp_path / "b").geometry
    # After sculpt step 11: floaters were searched at sculpt steps 0 and 7, the next search is at 14.
    first.hooks = Hooks(should_stop=lambda: first.state.stage_index == 2 and first.state.stage_step == 11)
    with pytest.raises(Stopped):
        first.fit()
    resumed = build_trainer(cfg, priors, tmp_path / "b").geometry
    resumed.load_checkpoint()
    resumed.fit()
    for name in ("coarse", "sdf"):
        a, b = straight.modules[name].state_dict(), resumed.modules[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    fa, fb = straight.extra_state["floaters"], resumed.extra_state["floaters"]
    assert bool(fa.found) and torch.equal(fa.points, fb.points)
    # A checkpoint of an older version, without the floaters, still resumes (searching them again).
    path = resumed.checkpoint_path
    payload = torch.load(path, weights_only=False)
    del payload["extra_state"]["floaters"]
    torch.save(payload, path)
    older = build_trainer(cfg, priors, tmp_path / "b").geometry
    older.load_checkpoint()
    assert not bool(older.extra_state["floaters"].found)


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
