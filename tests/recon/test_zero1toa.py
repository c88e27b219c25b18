"""The Zero-1-to-A pipeline: the portrait's camera in the avatar's world, the prior's reference crop, the
avatar learning from pseudo-ground-truth clips, and checkpoint/resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recon.data.head_clips import clip_cameras, head_params, named_expression, render_frames
from recon.data.heads_synth import draw_identity, head_albedo, project
from recon.metrics import psnr
from recon.parametric.heads import create_head_model
from recon.pipelines.zero1toa import (
    Zero1toAConfig,
    Zero1toATrainer,
    crop_to_clip_framing,
    params_of,
    prepare_portrait,
)


@pytest.fixture(scope="module")
def model():
    return create_head_model("anny")


@pytest.fixture(scope="module")
def truth(model):
    """A head, its albedo and a 96 px portrait from 2 m with a long lens (not the clips' framing)."""
    rng = np.random.default_rng(3)
    identity = draw_identity(model, rng)
    betas, transl = head_params(model, identity)
    albedo = head_albedo(model, identity, betas)
    expr, jaw = named_expression(model, "smile", 0.3)
    from recon.cameras import cameras_from_spherical

    cam = cameras_from_spherical(
        torch.tensor([5.0]), torch.tensor([8.0]), torch.tensor([2.0]), torch.tensor([7.5]), 96, 96
    )
    img, mask, marks = render_frames(model, betas, transl, albedo, cam, expr[None], jaw[None])
    return {"betas": betas, "transl": transl, "albedo": albedo, "camera": cam, "image": img[0],
            "mask": mask[0] > 0.5, "landmarks": marks[0], "expr": expr, "jaw": jaw}  # fmt: skip


@pytest.fixture(scope="module")
def portrait(model, truth):
    return prepare_portrait(
        model, truth["image"], truth["landmarks"], truth["mask"], float(truth["camera"].fx[0]), None, 32
    )


def test_portrait_camera_sees_the_world_head_where_the_portrait_shows_it(model, truth, portrait):
    with torch.no_grad():
        out = model(betas=portrait.betas, transl=portrait.transl, **portrait.params)
    seen = project(out.landmarks[0], portrait.camera)
    assert float((seen - truth["landmarks"]).norm(dim=-1).mean()) < 1.0  # pixels (the fit's own error)
    # the world is head-centred: the fitted neutral head's box centre is at the origin
    with torch.no_grad():
        neutral = model(betas=portrait.betas, transl=portrait.transl).vertices[0]
    centre = 0.5 * (neutral.min(0).values + neutral.max(0).values)
    assert float(centre.norm()) < 1e-5
    # the camera is where the truth's was, relative to the head: 2 m away, 8 degrees to the side
    eye = portrait.camera.camera_to_worlds[0, :3, 3]
    assert abs(float(eye.norm()) - 2.0) < 0.1
    yaw = float(torch.rad2deg(torch.atan2(eye[0], eye[2])))
    assert abs(yaw - 8.0) < 1.5, yaw  # the whole turn, also what the fit gave the neck joint
    assert "neck_pose" not in portrait.params  # the avatar rests with its neck straight


def test_reference_crop_matches_a_render_in_the_clips_framing(model, truth, portrait):
    direct = clip_cameras(torch.tensor([8.0]), torch.tensor([5.0]), 32)
    want, _, _ = render_frames(
        model,
        truth["betas"],
        truth["transl"],
        truth["albedo"],
        direct,
        truth["expr"][None],
        truth["jaw"][None],
    )
    assert portrait.reference.shape == (32, 32, 3)
    assert psnr(portrait.reference, want[0]) > 20.0
    # and a plain shift of the portrait would not
    shifted = crop_to_clip_framing(truth["image"].roll(6, dims=1), portrait.camera, 32)
    assert psnr(shifted, want[0]) < psnr(portrait.reference, want[0]) - 3.0


def _config(**kw) -> Zero1toAConfig:
    base = dict(portrait_steps=30, steps=60, size=32, num_frames=4, spatial_clips=2, temporal_clips=2,
                refresh_every=10, portrait_size=64, checkpoint_every=20, fit_steps=60)  # fmt: skip
    base.update(kw)
    return Zero1toAConfig(**base)


def _novel_view_psnr(trainer, model, truth) -> float:
    """PSNR at 70 degrees to the side; the avatar's camera scaled by the portrait camera's distance ratio
    (a single portrait fixes the head only up to scale)."""
    from recon.cameras import cameras_from_spherical

    az, el = torch.tensor([-70.0]), torch.tensor([5.0])
    cam = clip_cameras(az, el, 32)
    scale = float(trainer.portrait.camera.camera_to_worlds[0, :3, 3].norm()) / 2.0
    ours = cameras_from_spherical(el, az, torch.tensor([0.6 * scale]), torch.tensor([25.0]), 32, 32)
    zero = torch.zeros(1, model.num_expressions)
    want, _, _ = render_frames(
        model, truth["betas"], truth["transl"], truth["albedo"], cam, zero, torch.zeros(1, 3)
    )
    with torch.no_grad():
        got, _ = trainer.avatar.render(params_of(zero, torch.zeros(1, 3), trainer.portrait.params), ours)
    return psnr(got, want[0])


def test_the_avatar_learns_unseen_sides_from_the_clip_dataset(model, truth, portrait):
    """With an oracle in place of the video prior (clips = true renders along each clip's cameras), the
    side the portrait never showed improves; without clips it does not."""

    scale = float(portrait.camera.camera_to_worlds[0, :3, 3].norm()) / 2.0

    def oracle(key, spec, previous, generator):  # the true head as the avatar's camera frames it
        cams = copy.deepcopy(spec.cameras)
        cams.camera_to_worlds[:, :3, 3] /= scale
        frames, _, _ = render_frames(
            model, truth["betas"], truth["transl"], truth["albedo"], cams, spec.expressions, spec.jaw_poses
        )
        return frames

    plain = Zero1toATrainer(_config(steps=1), portrait, model, prior=None)
    plain.run()
    taught = Zero1toATrainer(
        _config(steps=150, spatial_fraction=1.0, side_deg=90.0), portrait, model, prior=None
    )
    taught.clips.make_clip = oracle
    taught.run()
    before, after = _novel_view_psnr(plain, model, truth), _novel_view_psnr(taught, model, truth)
    print("novel view psnr", before, after)
    assert after > before + 1.0, (before, after)
    assert taught.clips.refreshes >= 6  # the widening path re-registered and refreshed the clips


def test_an_interrupted_run_resumes_to_the_same_avatar(tmp_path, model, portrait):
    cfg = _config(steps=30, portrait_steps=10, checkpoint_every=20)
    whole = Zero1toATrainer(cfg, portrait, model, prior=None)
    whole.run()

    class StopError(Exception):
        pass

    def stop_at_25(step, total, stats):
        if step == 25:
            raise StopError

    first = Zero1toATrainer(cfg, portrait, model, prior=None, out_dir=tmp_path)
    with pytest.raises(StopError):
        first.run(stop_at_25)
    assert (tmp_path / "ckpt" / "state.pt").is_file()
    second = Zero1toATrainer(cfg, portrait, model, prior=None, out_dir=tmp_path)
    seen = []
    second.run(lambda step, total, stats: seen.append(step))
    assert seen[0] == 21  # continued after the checkpoint at step 20
    for a, b in zip(whole.avatar.gaussians.parameters(), second.avatar.gaussians.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_resuming_with_another_mode_is_refused(tmp_path, model, portrait):
    from recon.errors import UserError

    cfg = _config(steps=5, portrait_steps=0, checkpoint_every=2)
    Zero1toATrainer(cfg, portrait, model, prior=None, out_dir=tmp_path).run()
    from recon.atomic import atomic_torch_save

    t = Zero1toATrainer(cfg, portrait, model, prior=None, out_dir=tmp_path)
    atomic_torch_save(t.state_dict(), tmp_path / "ckpt" / "state.pt")
    other = Zero1toATrainer(
        _config(steps=5, portrait_steps=0, mode="sds"), portrait, model, prior=None, out_dir=tmp_path
    )
    with pytest.raises(UserError, match="mode"):
        other.run()


def test_resuming_from_another_portraits_checkpoint_is_refused(tmp_path, model, portrait):
    import dataclasses

    from recon.errors import UserError

    cfg = _config(steps=3, portrait_steps=0, checkpoint_every=1)
    Zero1toATrainer(cfg, portrait, model, prior=None, out_dir=tmp_path).run()
    other = dataclasses.replace(portrait, image=portrait.image.flip(1))
    with pytest.raises(UserError, match="another portrait"):
        Zero1toATrainer(_config(steps=5, portrait_steps=0), other, model, prior=None, out_dir=tmp_path).run()


def test_the_correction_blur_is_a_normalised_gaussian():
    from recon.pipelines.zero1toa import gaussian_blur

    x = torch.zeros(1, 3, 21, 21)
    x[:, :, 10, 10] = 1.0
    y = gaussian_blur(x, 1.5)
    torch.testing.assert_close(y.sum((-1, -2)), torch.ones(1, 3))
    coords = torch.arange(21.0) - 10
    var = (y[0, 0].sum(0) * coords**2).sum()
    assert abs(float(var.sqrt()) - 1.5) < 0.05
    flat = torch.full((1, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    assert gaussian_blur(x, 0.0) is x
