"""priors.view: Zero123-family folders of tiny random components, pose conventions, the embedded miniature.

The folders copy the layout of the published diffusers conversions (component classes and subfolders of
``model_index.json``): bennyguo/zero123-diffusers and ashawkey/stable-zero123-diffusers (``Zero123Pipeline``
written by threestudio's ``scripts/convert_zero123_to_diffusers.py``: ``clip_camera_projection`` with
``proj.*`` and an ``embedding_dim`` config), and kxic/zero123-165000 (the diffusers community pipeline
``Zero1to3StableDiffusionPipeline``: ``cc_projection`` with ``projection.*`` in a torch bin and a config
that names only its class).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from priors.view import CLIPCameraProjection, ViewConditionedPrior, relative_pose
from recon.errors import UserError

LATENT_CHANNELS = 4
EMBEDDING_DIM = 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is as fast idle and much faster when other jobs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_zero123_unet(in_channels: int = 2 * LATENT_CHANNELS):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=EMBEDDING_DIM,
        norm_num_groups=2,
        attention_head_dim=2,
    )


def save_tiny_zero123(folder: Path, seed: int = 0, bin_weights: bool = False) -> Path:
    """A Zero123-layout folder (as the community conversions write it) of tiny random components.

    ``bin_weights`` stores the diffusers components as torch bins (the converter's default without
    ``--to_safetensors``) instead of safetensors.
    """
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=2,
    )
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=16,
            patch_size=4,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=EMBEDDING_DIM,
        )
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )  # CLIP's mean/std by default, as lambdalabs/sd-image-variations-diffusers' feature_extractor
    unet = _tiny_zero123_unet()
    projection = CLIPCameraProjection(embedding_dim=EMBEDDING_DIM, additional_embeddings=4)
    with torch.no_grad():  # a trained projection: the camera columns matter
        projection.proj.weight.normal_(0.0, 0.3)
        projection.proj.bias.normal_(0.0, 0.1)
    scheduler = DDIMScheduler(  # as convert_zero123_to_diffusers.py writes it
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in (("vae", vae), ("unet", unet), ("clip_camera_projection", projection)):
        module.save_pretrained(folder / name, safe_serialization=not bin_weights)
    encoder.save_pretrained(folder / "image_encoder")
    processor.save_pretrained(folder / "feature_extractor")
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "Zero123Pipeline",
        "_diffusers_version": "0.24.0",
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def to_community_layout(source: Path, folder: Path, config: dict | None = None) -> Path:
    """The same weights in the diffusers community pipeline's layout (kxic/zero123-*)."""
    shutil.copytree(source, folder)
    shutil.rmtree(folder / "clip_camera_projection")
    projection = CLIPCameraProjection.load(source / "clip_camera_projection")
    (folder / "cc_projection").mkdir()
    state = {k.replace("proj.", "projection.", 1): v for k, v in projection.state_dict().items()}
    torch.save(state, folder / "cc_projection" / "diffusion_pytorch_model.bin")
    config = config or {"_class_name": "CCProjection", "_diffusers_version": "0.18.2"}
    (folder / "cc_projection" / "config.json").write_text(json.dumps(config))
    index = json.loads((source / "model_index.json").read_text())
    index.pop("clip_camera_projection")
    index.update(_class_name="Zero1to3StableDiffusionPipeline", _diffusers_version="0.18.2")
    index["cc_projection"] = ["pipeline_zero1to3", "CCProjection"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("view")
    return {
        "zero123": save_tiny_zero123(root / "zero123-tiny", seed=0, bin_weights=True),
        "stable-zero123": save_tiny_zero123(root / "stable-zero123-tiny", seed=1),
    }


def _reference_picture() -> torch.Tensor:  # [1, 3, 24, 24] a red disc on white
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 24), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.4).float()
    image = torch.ones(1, 3, 24, 24)
    image[0, 1] -= 0.8 * disc
    image[0, 2] -= 0.8 * disc
    return image


def _loaded(folder: Path, **kwargs) -> ViewConditionedPrior:
    prior = ViewConditionedPrior.from_pretrained(str(folder), **kwargs)
    prior.set_reference(_reference_picture(), elevation_deg=0.0, azimuth_deg=0.0, distance=3.0)
    return prior


# -- loading and one SDS step ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["zero123", "stable-zero123"])
def test_layout_loads_and_one_sds_step_gives_a_finite_gradient(folders, layout):
    from priors.sds import SDSConfig, SDSLoss

    prior = _loaded(folders[layout])
    assert prior.pose_convention == layout  # read from the folder's name
    assert prior.is_latent and prior.resolution == 16 and prior.latent_channels == LATENT_CHANNELS
    assert prior.clip_size == 16 and prior.info()["image_embedding"] == EMBEDDING_DIM
    assert prior.reference.concat.shape == (1, LATENT_CHANNELS, 8, 8)
    assert prior.reference.image_embedding.shape == (1, EMBEDDING_DIM)

    cond = prior.encode_prompt(
        None, elevation_deg=torch.tensor([20.0, 10.0]), azimuth_deg=torch.tensor([90.0, -45.0])
    )
    logits = (
        torch.zeros(2, 3, 32, 32).normal_(generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    )
    render = torch.sigmoid(logits)  # a rendered image, differentiable in the scene's parameters
    sds = SDSLoss(prior, SDSConfig(guidance_scale=5.0, t_min=0.2, t_max=0.98))
    loss, info = sds(render, cond, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0 and info["grad_norm"] > 0
    assert (logits.grad[0] != 0).any() and (logits.grad[1] != 0).any()


def test_pose_convention_argument_and_index_override_the_name(folders, tmp_path):
    assert _loaded(folders["zero123"], pose_convention="stable-zero123").pose_convention == "stable-zero123"
    assert _loaded(folders["stable-zero123"], pose_convention="zero123").pose_convention == "zero123"
    marked = shutil.copytree(folders["zero123"], tmp_path / "zero123-marked")
    index = json.loads((marked / "model_index.json").read_text())
    (marked / "model_index.json").write_text(
        json.dumps({**index, "_sds3d_pose_convention": "stable-zero123"})
    )
    assert _loaded(marked).pose_convention == "stable-zero123"


# -- classifier-free guidance --------------------------------------------------------------------------


def test_unconditional_branch_zeroes_token_and_concat(folders):
    prior = _loaded(folders["stable-zero123"])
    calls = []

    def record(module, args, kwargs, output):
        calls.append((args[0].clone(), kwargs["encoder_hidden_states"].clone(), output[0].clone()))

    handle = prior.unet.register_forward_hook(record, with_kwargs=True)
    try:
        cond = prior.encode_prompt(
            None, elevation_deg=torch.tensor([15.0, 40.0]), azimuth_deg=torch.tensor([30.0, 200.0])
        )
        x_t = torch.randn(2, LATENT_CHANNELS, 8, 8, generator=torch.Generator().manual_seed(1))
        t = torch.tensor([500, 700])
        eps = prior.predict_noise(x_t, t, cond, guidance_scale=3.0)
        eps_cond_only = prior.predict_noise(x_t, t, cond, guidance_scale=1.0)
    finally:
        handle.remove()

    (x_in, h_in, out), (x_one, h_one, out_one) = calls
    token = prior.camera_tokens(cond.image_embedding.expand(2, -1), cond.pose)  # [2, 1, D]
    concat = cond.concat.expand(2, -1, -1, -1)
    assert x_in.shape == (4, 2 * LATENT_CHANNELS, 8, 8) and h_in.shape == (4, 1, EMBEDDING_DIM)
    assert torch.equal(x_in[:2, :LATENT_CHANNELS], x_t) and torch.equal(x_in[2:, :LATENT_CHANNELS], x_t)
    assert torch.count_nonzero(x_in[:2, LATENT_CHANNELS:]) == 0  # unconditional: no reference latent
    assert torch.count_nonzero(h_in[:2]) == 0  # ... and no camera token
    assert torch.allclose(x_in[2:, LATENT_CHANNELS:], concat) and torch.allclose(h_in[2:], token)
    assert torch.count_nonzero(concat) > 0 and torch.count_nonzero(token) > 0
    # The output is the guided combination of the two branches (epsilon prediction).
    assert torch.allclose(eps, out[:2] + 3.0 * (out[2:] - out[:2]), atol=1e-6)
    # Guidance 1 runs the conditional branch alone, identical to the conditional half.
    assert (
        x_one.shape[0] == 2
        and torch.allclose(h_one, token)
        and torch.allclose(eps_cond_only, out[2:], atol=1e-6)
    )
    assert torch.allclose(out_one, out[2:], atol=1e-5)


# -- pose conventions ----------------------------------------------------------------------------------


def test_relative_pose_matches_hand_computed_vectors():
    el, az = torch.tensor([30.0]), torch.tensor([90.0])
    zero123 = relative_pose(0.0, 0.0, 3.0, el, az, 3.5, "zero123")
    stable = relative_pose(0.0, 0.0, 3.0, el, az, 3.5, "stable-zero123")
    assert torch.allclose(zero123, torch.tensor([[-math.pi / 6, 1.0, 0.0, 0.5]]), atol=1e-6)
    assert torch.allclose(stable, torch.tensor([[-math.pi / 6, 1.0, 0.0, math.pi / 2]]), atol=1e-6)

    # Target below a raised reference, azimuth across the ±180 / 0-360 seam: Δpolar > 0, Δaz = +20°.
    s20, c20 = math.sin(math.radians(20)), math.cos(math.radians(20))
    lower = relative_pose(20.0, 350.0, 3.0, torch.tensor([-10.0]), torch.tensor([10.0]), 2.5, "zero123")
    assert torch.allclose(lower, torch.tensor([[math.pi / 6, s20, c20, -0.5]]), atol=1e-6)
    lower_s = relative_pose(
        20.0, 350.0, 3.0, torch.tensor([-10.0]), torch.tensor([10.0]), 2.5, "stable-zero123"
    )
    assert torch.allclose(lower_s, torch.tensor([[math.pi / 6, s20, c20, math.radians(70)]]), atol=1e-6)

    # A batch, per-view distances, and the identity (same camera).
    batch = relative_pose(
        10.0,
        45.0,
        3.0,
        torch.tensor([10.0, 10.0, 55.0]),
        torch.tensor([45.0, -135.0, 45.0]),
        torch.tensor([3.0, 3.0, 4.0]),
        "zero123",
    )
    expected = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, -1.0, 0.0], [-math.pi / 4, 0.0, 1.0, 1.0]])
    assert torch.allclose(batch, expected, atol=1e-6)
    with pytest.raises(ValueError, match="pose convention"):
        relative_pose(0.0, 0.0, 3.0, el, az, 3.0, "zero1234")  # type: ignore[arg-type]


def test_encode_prompt_uses_the_reference_camera_and_the_prior_convention(folders):
    for layout in ("zero123", "stable-zero123"):
        prior = ViewConditionedPrior.from_pretrained(str(folders[layout]))
        prior.set_reference(_reference_picture(), elevation_deg=0.0, azimuth_deg=0.0, distance=3.0)
        cond = prior.encode_prompt(
            None, elevation_deg=torch.tensor([30.0]), azimuth_deg=torch.tensor([90.0]), distance=3.5
        )
        fourth = 0.5 if layout == "zero123" else math.pi / 2
        assert torch.allclose(cond.pose, torch.tensor([[-math.pi / 6, 1.0, 0.0, fourth]]), atol=1e-6)
        same = prior.encode_prompt(None, elevation_deg=torch.tensor([0.0]), azimuth_deg=torch.tensor([0.0]))
        assert same.pose[0, 0] == 0 and same.pose[0, 1] == 0 and same.pose[0, 2] == 1  # default: ref distance
    with pytest.raises(ValueError, match="elevation and azimuth"):
        prior.encode_prompt(["a red cube"])


# -- the community projection layout ------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"_class_name": "CCProjection", "_diffusers_version": "0.18.2"},  # as published (no sizes)
        {"_class_name": "CCProjection", "in_channel": EMBEDDING_DIM + 4, "out_channel": EMBEDDING_DIM},
    ],
    ids=["published-config", "sized-config"],
)
def test_community_projection_layout_gives_the_same_outputs(folders, tmp_path, config):
    source = folders["zero123"]
    community = to_community_layout(source, tmp_path / "zero123-165000-tiny", config)
    reference = CLIPCameraProjection.load(source / "clip_camera_projection")
    loaded = CLIPCameraProjection.load(community / "cc_projection")
    x = torch.randn(3, 1, EMBEDDING_DIM + 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded(x), reference(x))

    a, b = _loaded(source), _loaded(community)
    assert a.pose_convention == b.pose_convention == "zero123"
    cond_a = a.encode_prompt(None, elevation_deg=torch.tensor([25.0]), azimuth_deg=torch.tensor([120.0]))
    cond_b = b.encode_prompt(None, elevation_deg=torch.tensor([25.0]), azimuth_deg=torch.tensor([120.0]))
    x_t = torch.randn(1, LATENT_CHANNELS, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([600])
    assert torch.equal(a.predict_noise(x_t, t, cond_a, 5.0), b.predict_noise(x_t, t, cond_b, 5.0))


# -- damaged folders ------------------------------------------------------------------------------------


def _drop_projection(folder: Path) -> None:
    shutil.rmtree(folder / "clip_camera_projection")


def _index_is_a_list(folder: Path) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(list(index.items())))


def _text_to_image_unet(folder: Path) -> None:
    shutil.rmtree(folder / "unet")
    torch.manual_seed(0)
    _tiny_zero123_unet(in_channels=LATENT_CHANNELS).save_pretrained(folder / "unet")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_projection, r"no clip_camera_projection/.*download the whole repository again, or re-convert"),
        (_index_is_a_list, r"model_index\.json is not a JSON object; re-convert"),
        (_text_to_image_unet, r"takes 4 input channels.*2 x 4.*Pass a Zero123-family checkpoint"),
    ],
    ids=["no-camera-projection", "index-is-a-list", "4-channel-unet"],
)
def test_damaged_folder_gives_a_user_error_naming_the_fix(folders, tmp_path, damage, message):
    folder = shutil.copytree(folders["zero123"], tmp_path / "zero123-damaged")
    damage(folder)
    with pytest.raises(UserError, match=message):
        ViewConditionedPrior.from_pretrained(str(folder))


def test_missing_folder_gives_a_user_error(tmp_path):
    with pytest.raises(UserError):
        ViewConditionedPrior.from_pretrained(str(tmp_path / "no-such-zero123"))


# -- the embedded miniature ---------------------------------------------------------------------------


def _tiny_trainer(out: Path, seed: int = 0, **overrides):
    from priors.embedded.models import TINY_VIEW
    from priors.embedded.train_view import ViewTrainConfig, ViewTrainer
    from priors.embedded.world import WorldBankConfig

    cfg = ViewTrainConfig(
        out=out,
        seed=seed,
        batch_size=4,
        bank=WorldBankConfig(
            views_per_entry=8, resolution=16, entries=(("sphere", "solid"), ("cube", "solid"))
        ),
        model=TINY_VIEW,
        bank_cache=None,
        progress=False,
        **overrides,
    )
    return ViewTrainer(cfg)


@pytest.mark.parametrize("tokens", ["embeds", "patches"])
def test_embedded_export_round_trips_and_predicts_the_ema_noise(tmp_path, tokens):
    trainer = _tiny_trainer(tmp_path / "run", image_tokens=tokens)
    for _ in range(3):
        trainer.train_step()
    trainer.export(tmp_path / "export")
    prior = ViewConditionedPrior.from_pretrained(str(tmp_path / "export"))
    assert prior.image_tokens == tokens and prior.info()["image_tokens"] == tokens
    assert prior.pose_convention == "stable-zero123" and not prior.is_latent
    assert prior.resolution == 16 and prior.clip_size == 16 and prior.prediction_type == "v_prediction"

    ref, tgt, _ = trainer.sample_pairs(2)
    bank = trainer.bank
    ref_el, ref_az = float(bank.elevation_deg[0, 1]), float(bank.azimuth_deg[0, 1])
    el, az = bank.elevation_deg[0, 2:4], bank.azimuth_deg[0, 2:4]
    prior.set_reference(ref[:1], elevation_deg=ref_el, azimuth_deg=ref_az, distance=3.0)
    cond = prior.encode_prompt(None, elevation_deg=el, azimuth_deg=az)
    x_t = tgt * 2 - 1 + 0.5 * torch.randn(tgt.shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([300, 800])
    with torch.no_grad():
        eps = prior.predict_noise(x_t, t, cond, guidance_scale=1.0)
        guided = prior.predict_noise(x_t, t, cond, guidance_scale=4.0)

        # The same computation by hand with the in-memory EMA modules, as train_step feeds them.
        ema = trainer.ema
        pose = relative_pose(ref_el, ref_az, 3.0, el, az, 3.0, "stable-zero123")
        enc = ema["encoder"]
        out = enc(pixel_values=(ref[:1] - 0.5) / 0.5)
        emb = out.image_embeds[:, None]  # [1, 1, D]
        if tokens == "patches":  # and the 4x4 patches of the 16 px reference, projected alike
            patches = enc.visual_projection(enc.vision_model.post_layernorm(out.last_hidden_state[:, 1:]))
            assert patches.shape[1] == 16
            emb = torch.cat([emb, patches], 1)
        emb = emb.expand(2, -1, -1)
        token = ema["proj"](torch.cat([emb, pose[:, None].expand(-1, emb.shape[1], -1)], -1))
        assert token.shape[1] == (17 if tokens == "patches" else 1)
        concat = (ref[:1] * 2 - 1).expand(2, -1, -1, -1)
        v = ema["unet"](torch.cat([x_t, concat], 1), t, encoder_hidden_states=token).sample
        v0 = ema["unet"](
            torch.cat([x_t, torch.zeros_like(concat)], 1), t, encoder_hidden_states=0 * token
        ).sample
        a = torch.as_tensor(trainer.scheduler.alphas_cumprod, dtype=torch.float32)[t].view(-1, 1, 1, 1)
        expected = a.sqrt() * v + (1 - a).sqrt() * x_t  # epsilon from v
        expected0 = a.sqrt() * v0 + (1 - a).sqrt() * x_t
    assert torch.allclose(eps, expected, atol=1e-5)
    assert torch.allclose(guided, expected0 + 4.0 * (expected - expected0), atol=1e-4)


def test_embedded_training_is_seeded_and_resumes_bit_identically(tmp_path):
    a = _tiny_trainer(tmp_path / "a")
    b = _tiny_trainer(tmp_path / "b")
    losses_a = [a.train_step() for _ in range(4)]
    losses_b = [b.train_step() for _ in range(2)]
    assert losses_b == losses_a[:2]
    b.losses = losses_b
    b.checkpoint()  # ckpt/state.pt and the export, as the run loop writes them
    assert (tmp_path / "b" / "ckpt" / "state.pt").is_file() and (
        tmp_path / "b" / "model_index.json"
    ).is_file()
    resumed = _tiny_trainer(tmp_path / "b")
    assert resumed.step == 2
    assert [resumed.train_step() for _ in range(2)] == losses_a[2:]
    for (name, p), q in zip(a.modules.state_dict().items(), resumed.modules.state_dict().values()):
        assert torch.equal(p, q), name
    other_seed = _tiny_trainer(tmp_path / "c", seed=1)
    assert other_seed.train_step() != losses_a[0]


def test_embedded_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    trainer = _tiny_trainer(tmp_path / "fixed", lr=2e-3, warmup_steps=1, uncond_prob=0.0, zoom_prob=0.0)
    state = trainer.generator.get_state()
    losses = []
    for _ in range(25):
        trainer.generator.set_state(state)  # the same pairs, noise and timesteps every step
        losses.append(trainer.train_step())
    assert losses[-1] < 0.5 * losses[0], losses  # measured 0.92 -> 0.20


def test_embedded_fine_tune_starts_from_an_export_and_decays_its_rate(tmp_path):
    source = _tiny_trainer(tmp_path / "source")
    for _ in range(2):
        source.train_step()
    source.export(tmp_path / "export")
    tuned = _tiny_trainer(tmp_path / "tuned", init=tmp_path / "export", lr=1e-3, warmup_steps=2,
                          lr_schedule="cosine", max_steps=10)  # fmt: skip
    for (name, p), q in zip(source.ema.state_dict().items(), tuned.modules.state_dict().values()):
        assert torch.equal(p, q), name  # the export's (EMA) weights, in the live and the EMA copy
    assert tuned.phases[0]["init"] == str(tmp_path / "export") and tuned.phases[0]["init_steps"] == 2
    rates = []
    for step in (0, 1, 2, 6, 10):
        tuned.step = step
        rates.append(tuned._lr())
    assert rates == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4, 0.0], abs=1e-9)  # warm-up, then cosine to 0
    tuned.step = 0
    tuned.train_step()
    tuned.checkpoint()
    resumed = _tiny_trainer(tmp_path / "tuned", init=tmp_path / "nowhere")  # a checkpoint wins over init
    assert resumed.step == 1
    with pytest.raises(UserError, match="not a view-prior export"):
        _tiny_trainer(tmp_path / "other", init=tmp_path / "nowhere")


# -- the GPU preset ------------------------------------------------------------------------------------


def test_gpu_preset_loads_offline(monkeypatch):
    import socket

    from recon.pipelines.dreamcraft3d import DreamCraft3DConfig
    from recon.presets import load_preset

    def no_network(*args, **kwargs):
        raise AssertionError("loading a preset must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    pipeline, config = load_preset("dreamcraft3d-gpu")
    assert pipeline == "dreamcraft3d" and isinstance(config, DreamCraft3DConfig)
    assert config.prior == "DeepFloyd/IF-I-XL-v1.0"
    assert config.view_prior == "ashawkey/stable-zero123-diffusers"
    assert config.texture_prior == "stabilityai/stable-diffusion-2-1-base"
    assert config.allow_download and config.texture_guidance == "bsd"
    assert (config.camera_distance, config.fov_deg) == (3.8, 20.0)
    assert (config.text_guidance_scale, config.view_guidance_scale, config.texture_guidance_scale) == (
        20.0,
        5.0,
        7.5,
    )
