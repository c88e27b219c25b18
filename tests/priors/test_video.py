"""priors.video: landmark maps, the embedded miniature (refine / sample / SDS / guidance / export) and
a Stable Video Diffusion-layout folder of tiny random components.

The SVD folder copies the layout of stabilityai/stable-video-diffusion-img2vid(-xt): ``unet`` =
``UNetSpatioTemporalConditionModel`` (8 input channels, 4 output), ``vae`` =
``AutoencoderKLTemporalDecoder``, ``image_encoder`` = ``CLIPVisionModelWithProjection``,
``feature_extractor`` = ``CLIPImageProcessor`` and its ``EulerDiscreteScheduler`` config (v-prediction,
continuous timesteps, scaled-linear betas).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from priors.embedded.models import SchedulerConfig, build_scheduler
from priors.video import SVD_ADDED_TIME_IDS, TINY_VIDEO, VideoPrior, build_video_components, landmark_maps
from recon.errors import UserError

FRAMES = 4
"""Frames of every test clip (TINY_VIDEO's)."""
SIZE = 24
"""Side of the test clips: not the tiny prior's 16, so every path resizes."""


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is as fast idle and much faster when other jobs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_prior(seed: int = 0, landmark_channel: bool = True) -> VideoPrior:
    torch.manual_seed(seed)
    parts = build_video_components(replace(TINY_VIDEO, landmark_channel=landmark_channel))
    return VideoPrior(
        parts["unet"],
        build_scheduler(SchedulerConfig()),
        parts["image_encoder"],
        feature_extractor=parts["feature_extractor"],
    )


def _reference(size: int = SIZE) -> torch.Tensor:  # [size, size, 3]: a skin-coloured disc on white
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.5).float()[..., None]
    return disc * torch.tensor([0.9, 0.7, 0.56]) + (1 - disc)


def _clip(seed: int = 0, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frames [T, size, size, 3] in [0, 1], landmarks [T, 51, 2] pixels)``, random."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(FRAMES, size, size, 3, generator=g)
    landmarks = 0.2 * size + 0.6 * size * torch.rand(FRAMES, 51, 2, generator=g)
    return frames, landmarks


def _ready_prior(**kwargs) -> VideoPrior:
    prior = _tiny_prior(**kwargs)
    prior.set_reference(_reference())
    return prior


# -- landmark maps -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "size", "pixel", "expected", "peak"),
    [
        (32, 16, (5, 9), (2, 4), math.exp(-(0.25**2) / (2 * 0.6**2)) ** 2),  # (5.5, 9.5) -> (2.75, 4.75)
        (16, 48, (5, 9), (16, 28), 1.0),  # (5.5, 9.5) -> (16.5, 28.5): a pixel centre
        (24, 24, (3, 20), (3, 20), 1.0),
    ],
)
def test_landmark_maps_put_a_landmark_at_its_pixel_at_another_size(source, size, pixel, expected, peak):
    x, y = pixel
    maps = landmark_maps(torch.tensor([[[x + 0.5, y + 0.5]]]), source, size)  # pixel centre of (x, y)
    assert maps.shape == (1, 1, size, size)
    flat = int(maps.flatten().argmax())
    assert (flat % size, flat // size) == expected
    assert float(maps.max()) == pytest.approx(peak, abs=1e-6)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    # The blob is local: nothing beyond 4 pixels (sigma 0.6) from its centre.
    ex, ey = expected
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    far = ((xx - ex).abs() > 4) | ((yy - ey).abs() > 4)
    assert float(maps[0, 0][far].max()) < 1e-6


def test_landmark_maps_clamp_overlaps_and_skip_non_finite_points():
    two_same = landmark_maps(torch.tensor([[[4.5, 4.5], [4.5, 4.5]]]), 16, 16)
    assert float(two_same.max()) == 1.0  # two blobs on one pixel: clamped, still in [0, 1]
    finite = torch.tensor([[[6.5, 3.5]]])
    mixed = torch.tensor([[[6.5, 3.5], [float("nan"), 2.0], [float("inf"), 5.0], [3.0, -float("inf")]]])
    assert torch.equal(landmark_maps(mixed, 16, 16), landmark_maps(finite, 16, 16))
    nothing = landmark_maps(torch.full((2, 5, 2), float("nan")), 16, 8)
    assert nothing.shape == (2, 1, 8, 8) and torch.count_nonzero(nothing) == 0


@pytest.mark.parametrize("shape", [(51, 2), (4, 51, 3), (4, 51)])
def test_landmark_maps_reject_a_wrong_shape(shape):
    with pytest.raises(UserError, match=r"\[frames, points, 2\]"):
        landmark_maps(torch.zeros(shape), 16, 16)


# -- refine / sample on the tiny embedded miniature ----------------------------------------------------


def test_refine_at_strength_zero_returns_the_input():
    prior = _ready_prior()
    frames, landmarks = _clip()
    assert torch.equal(prior.refine(frames, landmarks, strength=0.0), frames)
    assert torch.equal(prior.refine(frames, landmarks, strength=1e-4), frames)  # under one of 1000 steps


def test_refine_keeps_shape_and_range_at_another_size_and_is_seeded():
    prior = _ready_prior()
    frames, landmarks = _clip()
    assert prior.resolution == 16 != SIZE

    def run(seed: int) -> torch.Tensor:
        return prior.refine(frames, landmarks, 0.5, torch.Generator().manual_seed(seed), steps=6)

    out = run(3)
    assert out.shape == (FRAMES, SIZE, SIZE, 3) and out.dtype == frames.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert (out - frames).abs().mean() > 0.05  # it changed the clip
    assert torch.equal(run(3), out)
    assert not torch.allclose(run(4), out)


def test_sample_returns_a_clip_at_the_prior_resolution():
    prior = _ready_prior()
    _, landmarks = _clip()
    g = torch.Generator().manual_seed(0)
    out = prior.sample(FRAMES, landmarks, source_size=SIZE, generator=g, steps=4)
    assert out.shape == (FRAMES, 16, 16, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = prior.sample(
        FRAMES, landmarks, source_size=SIZE, generator=torch.Generator().manual_seed(0), steps=4
    )
    assert torch.equal(out, again)


def test_denoising_before_set_reference_raises():
    prior = _tiny_prior()
    frames, landmarks = _clip()
    with pytest.raises(RuntimeError, match="set_reference"):
        prior.refine(frames, landmarks, 0.5, steps=2)
    with pytest.raises(RuntimeError, match="set_reference"):
        prior.sample(FRAMES, landmarks, source_size=SIZE, steps=2)


def test_unet_with_unexpected_input_channels_is_a_user_error():
    parts = build_video_components(TINY_VIDEO)
    unet = _tiny_svd_unet(in_channels=8, out_channels=3, cross_attention_dim=TINY_VIDEO.embedding_dim)
    with pytest.raises(UserError, match="Stable Video Diffusion"):
        VideoPrior(unet, build_scheduler(SchedulerConfig()), parts["image_encoder"])


def test_landmark_driven_prior_needs_one_landmark_row_per_frame():
    prior = _ready_prior()
    frames, landmarks = _clip()
    assert prior.uses_landmarks
    with pytest.raises(UserError, match="landmarks"):
        prior.refine(frames, None, 0.5, steps=2)
    with pytest.raises(UserError, match="landmarks"):
        prior.sample(FRAMES, None, steps=2)
    with pytest.raises(UserError, match="one row per frame"):
        prior.refine(frames, landmarks[:3], 0.5, steps=2)
    with pytest.raises(UserError, match="one row per frame"):
        prior.sds_loss(frames, landmarks[:1])
    with pytest.raises(UserError, match="strength"):
        prior.refine(frames, landmarks, 1.5)


def test_prior_without_landmark_channel_ignores_landmarks():
    prior = _ready_prior(landmark_channel=False)
    frames, _ = _clip()
    assert not prior.uses_landmarks and prior.driving_maps(None, SIZE, FRAMES) is None
    out = prior.refine(frames, None, 0.5, torch.Generator().manual_seed(0), steps=3)
    assert out.shape == frames.shape


# -- classifier-free guidance ----------------------------------------------------------------------------


def _epsilon_from_v(v: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return a.sqrt() * v + (1 - a).sqrt() * x_t  # v = sqrt(a) eps - sqrt(1 - a) x0


def test_guidance_combines_a_conditional_and_a_reference_free_branch():
    prior = _tiny_prior()
    prior.set_reference(_reference(16))
    frames, landmarks = _clip()
    driving = prior.driving_maps(landmarks, SIZE, FRAMES)  # [T, 1, 16, 16]
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(FRAMES, 3, 16, 16, generator=g)
    t = 600
    with torch.no_grad():
        eps_cond = prior.predict_noise(x_t, t, driving, guidance_scale=1.0)
        eps_guided = prior.predict_noise(x_t, t, driving, guidance_scale=3.0)

        # By hand, with the inputs train_video feeds the UNet: the reference (16 px, the prior's size) in
        # [-1, 1], and the encoder's embedding of it normalised with the processor's mean / std (0.5).
        ref = _reference(16).permute(2, 0, 1)[None]
        emb = prior.image_encoder(pixel_values=(ref - 0.5) / 0.5).image_embeds[:, None]  # [1, 1, D]
        concat = (ref * 2 - 1).expand(FRAMES, -1, -1, -1)
        ids = torch.tensor([SVD_ADDED_TIME_IDS])
        tt = torch.tensor([t])
        v_c = prior.unet(torch.cat([x_t, concat, driving], 1)[None], tt, emb, ids).sample[0]
        v_u = prior.unet(torch.cat([x_t, 0 * concat, driving], 1)[None], tt, 0 * emb, ids).sample[0]
        a = torch.as_tensor(prior.scheduler.alphas_cumprod, dtype=torch.float32)[t]
        expected_c, expected_u = _epsilon_from_v(v_c, x_t, a), _epsilon_from_v(v_u, x_t, a)
    assert torch.allclose(prior.reference.image_embedding, emb[0], atol=1e-5)
    assert torch.allclose(eps_cond, expected_c, atol=1e-5)
    assert torch.allclose(eps_guided, expected_u + 3.0 * (expected_c - expected_u), atol=1e-4)
    assert (expected_c - expected_u).abs().mean() > 1e-3  # the reference matters: the check can fail


# -- score distillation ----------------------------------------------------------------------------------


def test_sds_gradient_is_the_weighted_noise_residual_pulled_back_through_the_encoder():
    prior = _ready_prior()
    frames, landmarks = _clip(seed=2)
    frames.requires_grad_(True)
    guidance, seed, t_range = 3.0, 11, (0.02, 0.98)
    loss = prior.sds_loss(frames, landmarks, torch.Generator().manual_seed(seed), t_range, guidance)
    loss.backward()

    # The same draw by hand: t first, then the noise, from the re-seeded generator.
    g = torch.Generator().manual_seed(seed)
    n = prior.num_train_timesteps
    t = int(torch.randint(int(t_range[0] * n), int(t_range[1] * n), (1,), generator=g))
    x = frames.detach().clone().requires_grad_(True)
    z0 = prior.encode_frames(x.permute(0, 3, 1, 2))  # [T, 3, 16, 16]
    noise = torch.randn(z0.shape, generator=g)
    a = prior.alphas_cumprod[t]
    driving = prior.driving_maps(landmarks, SIZE, FRAMES)
    with torch.no_grad():
        eps_hat = prior.predict_noise(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, driving, guidance)
    grad_z = (1 - a) * (eps_hat - noise) / FRAMES  # w(t) (eps_hat - eps), the loss's 1/T included
    (expected,) = torch.autograd.grad(z0, x, grad_z)

    assert float(expected.abs().max()) > 1e-4
    assert torch.allclose(frames.grad, expected, atol=1e-6, rtol=1e-4)
    # The loss value is 0.5 |w (eps_hat - eps)|^2 / T.
    expected_loss = 0.5 * ((1 - a) * (eps_hat - noise)).pow(2).sum() / FRAMES
    assert float(loss.detach()) == pytest.approx(float(expected_loss), rel=1e-5)


# -- training export -> from_pretrained -----------------------------------------------------------------


def _tiny_trainer(tmp_path: Path, **overrides):
    from priors.embedded.train_video import VideoTrainConfig, VideoTrainer

    cfg = VideoTrainConfig(
        model=TINY_VIDEO,
        bank_clips=2,
        bank_cache=tmp_path / "bank.pt",
        out=tmp_path / "run",
        progress=False,
        threads=1,
        **overrides,
    )
    return VideoTrainer(cfg)


def test_export_round_trips_and_matches_the_ema_modules_as_trained(tmp_path):
    trainer = _tiny_trainer(tmp_path)
    for _ in range(2):
        trainer.train_step()
    trainer.export(tmp_path / "export")
    loaded = VideoPrior.from_pretrained(str(tmp_path / "export"))
    in_memory = VideoPrior(
        trainer.ema["unet"], trainer.scheduler, trainer.ema["encoder"], feature_extractor=trainer.processor
    )
    assert not loaded.is_latent and loaded.uses_landmarks and loaded.prediction_type == "v_prediction"
    assert loaded.resolution == 16 and loaded.clip_size == 16 and not loaded.continuous_timesteps

    frames = trainer.bank["frames"][0].float() / 255  # [T, 16, 16, 3]
    reference = trainer.bank["reference"][0].float() / 255
    landmarks = trainer.bank["landmarks"][0]
    driving = landmark_maps(landmarks, 16, 16)
    x_t = frames.permute(0, 3, 1, 2) * 2 - 1 + 0.7 * torch.randn(FRAMES, 3, 16, 16)
    outputs = []
    for prior in (loaded, in_memory):
        prior.set_reference(reference)
        outputs.append([prior.predict_noise(x_t, t, driving, s) for t, s in ((250, 1.0), (700, 2.5))])
    for a, b in zip(*outputs):
        assert torch.allclose(a, b, atol=1e-5)
    # The conditional branch is the EMA UNet fed as train_step feeds it (v-prediction -> epsilon).
    with torch.no_grad():
        ref = reference.permute(2, 0, 1)[None]
        emb = trainer.ema["encoder"](pixel_values=(ref - 0.5) / 0.5).image_embeds[:, None]
        concat = (ref * 2 - 1).expand(FRAMES, -1, -1, -1)
        v = trainer.ema["unet"](
            torch.cat([x_t, concat, driving], 1)[None],
            torch.tensor([250]),
            emb,
            torch.tensor([SVD_ADDED_TIME_IDS]),
        ).sample[0]
    a = torch.as_tensor(trainer.scheduler.alphas_cumprod, dtype=torch.float32)[250]
    assert torch.allclose(outputs[0][0], _epsilon_from_v(v, x_t, a), atol=1e-5)


def test_training_overfits_a_fixed_batch(tmp_path):
    trainer = _tiny_trainer(tmp_path, lr=2e-3, warmup_steps=1, uncond_prob=0.0, batch_size=2)
    state = trainer.generator.get_state()
    losses = []
    for _ in range(30):
        trainer.generator.set_state(state)  # the same clips, flips, noise and timesteps every step
        losses.append(trainer.train_step())
    assert losses[-1] < 0.1 * losses[0], losses  # measured 0.93 -> 0.020


# -- the Stable Video Diffusion layout --------------------------------------------------------------------

SVD_LATENT = 4
SVD_EMBEDDING = 16


def _tiny_svd_unet(
    in_channels: int = 2 * SVD_LATENT,
    out_channels: int = SVD_LATENT,
    cross_attention_dim: int = SVD_EMBEDDING,
):
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(  # GroupNorm in 32 groups: 32 channels a level at least
        sample_size=8,
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 32),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        num_attention_heads=(1, 1),
        num_frames=FRAMES,
    )


def save_tiny_svd(folder: Path, seed: int = 0) -> Path:
    """An SVD-layout folder (as StableVideoDiffusionPipeline.save_pretrained writes it), tiny and random."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    vae = AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        block_out_channels=(32, 32),
        latent_channels=SVD_LATENT,
        sample_size=16,
    )
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=16,
            patch_size=4,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=SVD_EMBEDDING,
        )
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    scheduler = EulerDiscreteScheduler(  # stable-video-diffusion-img2vid's scheduler_config.json
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        interpolation_type="linear",
        use_karras_sigmas=True,
        sigma_min=0.002,
        sigma_max=700.0,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
    )
    folder.mkdir(parents=True, exist_ok=True)
    _tiny_svd_unet().save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    encoder.save_pretrained(folder / "image_encoder")
    processor.save_pretrained(folder / "feature_extractor")
    scheduler.save_config(folder / "scheduler")
    index = {
        "_class_name": "StableVideoDiffusionPipeline",
        "_diffusers_version": "0.24.0.dev0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory) -> Path:
    return save_tiny_svd(tmp_path_factory.mktemp("svd") / "svd-tiny")


def test_svd_layout_loads_as_a_latent_prior_with_edm_timesteps(svd_folder):
    prior = VideoPrior.from_pretrained(str(svd_folder))
    assert prior.is_latent and not prior.uses_landmarks and prior.continuous_timesteps
    assert prior.resolution == 16 and prior.latent_size == 8 and prior.latent_channels == SVD_LATENT
    assert prior.vae_scale_factor == 2 and prior.prediction_type == "v_prediction"
    t = torch.tensor([0, 10, 500, 999])
    a = prior.alphas_cumprod[t]
    sigma = ((1 - a) / a).sqrt()
    assert torch.allclose(prior.model_timestep(t), 0.25 * torch.log(sigma), atol=1e-6)


def test_svd_layout_predicts_the_edm_denoiser_noise(svd_folder):
    """predict_noise on x_VP = x_EDM / sqrt(sigma^2 + 1) is the epsilon of SVD's EDM denoiser at x_EDM."""
    prior = VideoPrior.from_pretrained(str(svd_folder))
    prior.set_reference(_reference(16))
    t = 400
    a = prior.alphas_cumprod[t]
    sigma = float(((1 - a) / a).sqrt())
    x_vp = torch.randn(FRAMES, SVD_LATENT, 8, 8, generator=torch.Generator().manual_seed(5))
    x_edm = x_vp * math.sqrt(sigma**2 + 1)
    with torch.no_grad():
        eps = prior.predict_noise(x_vp, t, None, guidance_scale=1.0)
        ref = prior.reference
        c_in_x = x_edm / math.sqrt(sigma**2 + 1)  # EulerDiscreteScheduler.scale_model_input
        unet_in = torch.cat([c_in_x, ref.concat.expand(FRAMES, -1, -1, -1)], 1)[None]
        out = prior.unet(
            unet_in,
            torch.tensor([0.25 * math.log(sigma)]),
            ref.image_embedding[:, None],
            torch.tensor([SVD_ADDED_TIME_IDS]),
        ).sample[0]
        # EulerDiscreteScheduler.step (v_prediction): x0 = -sigma / sqrt(sigma^2 + 1) out + x / (sigma^2 + 1)
        denoised = out * (-sigma / math.sqrt(sigma**2 + 1)) + x_edm / (sigma**2 + 1)
    assert torch.allclose(eps, (x_edm - denoised) / sigma, atol=1e-4)


def test_svd_layout_refines_a_clip_at_the_vae_resolution(svd_folder):
    prior = VideoPrior.from_pretrained(str(svd_folder))
    prior.set_reference(_reference(16))
    frames, _ = _clip(size=16)
    out = prior.refine(frames, None, 0.5, torch.Generator().manual_seed(0), steps=4)
    assert out.shape == (FRAMES, 16, 16, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and torch.isfinite(out).all()
    assert (out - frames).abs().mean() > 0.05


def test_image_unet_in_an_svd_folder_is_a_user_error_naming_the_fix(svd_folder, tmp_path):
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "zero123-like"
    shutil.copytree(svd_folder, folder)
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel(  # a Zero123-style image UNet: 8 in, 4 out, as an image-to-video UNet would be
        sample_size=8,
        in_channels=2 * SVD_LATENT,
        out_channels=SVD_LATENT,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=SVD_EMBEDDING,
        norm_num_groups=2,
        attention_head_dim=2,
    ).save_pretrained(folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="UNetSpatioTemporalConditionModel.*Stable Video Diffusion"):
        VideoPrior.from_pretrained(str(folder))


# -- the shipped embedded prior ----------------------------------------------------------------------------


def test_shipped_prior_pulls_a_colour_shifted_clip_of_a_new_head_back_to_its_reference():
    """The prior the avatar pipeline ships: a held-out head's clip with its foreground colour-shifted (the
    avatar's render with the wrong skin and hair) comes back closer to the truth after the pipeline's
    refinement (SDEdit 0.6, 10 steps): its mean foreground colour moves towards the truth's, and the
    correction the pipeline adds (the refined minus the input, blurred at σ 1 px) raises the PSNR. The raw
    refined pixels do not (grain: −0.8 and −2.5 dB here). Two clips, one per curriculum."""
    import numpy as np

    from priors.video import EMBEDDED_VIDEO_DIR
    from recon.data.head_clips import KINDS, render_clip
    from recon.parametric.heads import create_head_model
    from recon.pipelines.zero1toa import gaussian_blur

    assert (EMBEDDED_VIDEO_DIR / "model_index.json").is_file(), f"{EMBEDDED_VIDEO_DIR} is not shipped"
    total = sum(f.stat().st_size for f in EMBEDDED_VIDEO_DIR.rglob("*") if f.is_file())
    assert total < 60e6
    prior = VideoPrior.from_pretrained("embedded")
    size, frames = prior.resolution, int(prior.unet.config.num_frames)
    assert (size, frames) == (32, 8)
    model = create_head_model("anny")
    shift = torch.tensor([0.1, -0.06, 0.05])
    gains, before, after = [], [], []
    for i, kind in enumerate(KINDS):
        clip = render_clip(model, np.random.default_rng(2000 + i), size, frames, kind)
        truth, fg = clip["frames"], clip["masks"][..., None] > 0.99
        bad = (truth + clip["masks"][..., None] * shift).clamp(0, 1)
        prior.set_reference(clip["reference"])
        g = torch.Generator().manual_seed(i)
        fixed = prior.refine(bad, clip["landmarks"], 0.6, g, 10, 2.0).float()
        delta = gaussian_blur((fixed - bad).permute(0, 3, 1, 2), 1.0).permute(0, 2, 3, 1)
        corrected = (bad + delta).clamp(0, 1)
        mse = [((x - truth) ** 2).mean() for x in (bad, corrected)]
        gains.append(float(10 * torch.log10(mse[0] / mse[1])))
        # the foreground's mean colour: how far from the truth's before and after
        m = fg.expand_as(truth)
        before.append(float((bad[m] - truth[m]).view(-1, 3).mean(0).norm()))
        after.append(float((fixed[m] - truth[m]).view(-1, 3).mean(0).norm()))
    print(f"psnr gains {gains}, colour offset {before} -> {after}")
    assert min(gains) > 0.8  # measured 1.8 and 4.1 dB
    assert max(a / b for a, b in zip(after, before)) < 0.7  # measured 0.53 and 0.29
