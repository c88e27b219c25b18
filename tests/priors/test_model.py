"""DiffusionPrior over tiny random diffusers models (SD-class latent, IF-class pixel), saved and reloaded."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

from priors.model import (
    DiffusionPrior,
    PromptConditioning,
    classifier_free_guidance,
    ddim_sample,
    prediction_to_epsilon,
)
from priors.sds import SDSConfig, SDSLoss
from recon.errors import UserError


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is as fast idle and ~10x faster when other jobs share the 2 cores
    (measured: SDS + render step at 32², 31 ms with 1 thread vs 344 ms with 2 under load 8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single characters, built offline (no merges)."""
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase) + [",", "."]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) + i for i, c in enumerate(chars)})
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(chars)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_unet(in_channels: int, out_channels: int, sample_size: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
        attention_head_dim=2,
    )


def save_tiny_sd(folder: Path, with_vae: bool = True, prediction_type: str = "epsilon") -> Path:
    """A Stable-Diffusion-layout pipeline: CLIP text encoder, latent UNet 8² and a ×2 VAE (16² images)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=100,
        )
    )
    vae = (
        AutoencoderKL(
            block_out_channels=[4, 8],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            norm_num_groups=2,
        )
        if with_vae
        else None
    )
    channels = 4 if with_vae else 3
    unet = tiny_unet(channels, channels, 8, 32)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(folder / "_vocab"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_tiny_if(folder: Path) -> Path:
    """A DeepFloyd-IF-layout pipeline: T5 encoder, pixel UNet 16² with learned variance (6 outputs)."""
    from diffusers import DDPMScheduler, IFPipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, pad_token_id=1)
    )
    unet = tiny_unet(3, 6, 16, 32)
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True
    )
    pipe = IFPipeline(
        tokenizer=tiny_clip_tokenizer(folder / "_vocab"),
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def if_folder(tmp_path_factory) -> Path:
    return save_tiny_if(tmp_path_factory.mktemp("tiny-if"))


def test_sd_layout_loads_as_latent_prior(sd_folder: Path) -> None:
    prior = DiffusionPrior.from_pretrained(str(sd_folder))
    assert prior.is_latent and prior.kind == "latent"
    assert (prior.vae_scale_factor, prior.latent_size, prior.resolution, prior.latent_channels) == (
        2,
        8,
        16,
        4,
    )
    assert prior.num_train_timesteps == 1000 and prior.prediction_type == "epsilon"
    assert prior.alphas_cumprod.shape == (1000,)
    assert torch.all(prior.alphas_cumprod[1:] < prior.alphas_cumprod[:-1])

    cond = prior.encode_prompt(["a red cube, front view", "a red cube, side view"])
    assert cond.cond.shape == (2, 77, 32) and cond.uncond.shape == (2, 77, 32)
    assert not torch.allclose(cond.cond, cond.uncond)
    x = torch.rand(2, 3, 16, 16)
    z = prior.encode_images(x)
    assert z.shape == (2, 4, 8, 8)
    assert prior.decode(z).shape == (2, 3, 16, 16)
    eps = prior.predict_noise(z, torch.tensor([10, 900]), cond, guidance_scale=7.5)
    assert eps.shape == z.shape and torch.isfinite(eps).all()


def test_if_layout_loads_as_pixel_prior(if_folder: Path) -> None:
    prior = DiffusionPrior.from_pretrained(str(if_folder))
    assert not prior.is_latent and prior.kind == "pixel"
    assert (prior.vae_scale_factor, prior.resolution, prior.latent_channels) == (1, 16, 3)
    assert type(prior.text_encoder).__name__ == "T5EncoderModel"
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(prior.encode_images(x), 2 * x - 1)
    assert torch.allclose(prior.decode(prior.encode_images(x)), x, atol=1e-6)
    cond = prior.encode_prompt(["a blue sphere"])
    eps = prior.predict_noise(prior.encode_images(x), torch.tensor([500, 500]), cond, guidance_scale=3.0)
    assert eps.shape == (2, 3, 16, 16)  # the learned-variance half is dropped


def test_pipeline_saved_without_vae_is_a_pixel_prior(tmp_path: Path) -> None:
    prior = DiffusionPrior.from_pretrained(str(save_tiny_sd(tmp_path / "novae", with_vae=False)))
    assert prior.vae is None and prior.vae_scale_factor == 1 and prior.resolution == 8


@pytest.mark.parametrize("convention", ["diffusers", "dreamfusion"])
def test_cfg_conventions_match_their_formulas(sd_folder: Path, convention: str) -> None:
    prior = DiffusionPrior.from_pretrained(str(sd_folder))
    cond = prior.encode_prompt(["a red cube"], negative=["a blue cube"])
    torch.manual_seed(1)
    x_t = torch.randn(2, 4, 8, 8)
    t = torch.tensor([300, 700])
    cond_only = 1.0 if convention == "diffusers" else 0.0
    eps_c = prior.predict_noise(x_t, t, cond, cond_only, convention)
    swapped = PromptConditioning(cond.prompts, cond.uncond, cond.cond, cond.uncond_mask, cond.cond_mask)
    eps_u = prior.predict_noise(x_t, t, swapped, cond_only, convention)
    assert not torch.allclose(eps_c, eps_u)
    scale = 7.5
    eps = prior.predict_noise(x_t, t, cond, scale, convention)
    if convention == "diffusers":
        expected = eps_u + scale * (eps_c - eps_u)
    else:
        expected = (1 + scale) * eps_c - scale * eps_u
    torch.testing.assert_close(eps, expected, atol=1e-5, rtol=1e-4)
    # DreamFusion's ω is diffusers' s = 1 + ω.
    torch.testing.assert_close(
        classifier_free_guidance(eps_u, eps_c, 4.0, "dreamfusion"),
        classifier_free_guidance(eps_u, eps_c, 5.0, "diffusers"),
    )


def test_v_and_sample_predictions_convert_to_epsilon() -> None:
    torch.manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    a = torch.tensor([0.9, 0.5, 0.1]).view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(prediction_to_epsilon(v, x_t, a, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prediction_to_epsilon(x0, x_t, a, "sample"), eps, atol=1e-5, rtol=1e-5)
    assert prediction_to_epsilon(eps, x_t, a, "epsilon") is eps


def test_v_prediction_prior_reports_its_type(tmp_path: Path) -> None:
    prior = DiffusionPrior.from_pretrained(str(save_tiny_sd(tmp_path / "v", prediction_type="v_prediction")))
    assert prior.prediction_type == "v_prediction"


@pytest.mark.parametrize("which", ["sd", "if"])
def test_one_sds_step_gives_finite_nonzero_image_gradients(
    which: str, sd_folder: Path, if_folder: Path
) -> None:
    prior = DiffusionPrior.from_pretrained(str(sd_folder if which == "sd" else if_folder))
    cond = prior.encode_prompt(["a red cube, front view", "a red cube, back view"])
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    loss_fn = SDSLoss(prior, SDSConfig(guidance_scale=7.5))
    loss, info = loss_fn(images, cond, progress=0.0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert info["t"].shape == (2,) and info["grad_norm"] > 0
    assert not any(p.grad is not None for p in prior.unet.parameters())  # no backward through the denoiser


def test_ddim_sampling_through_a_tiny_prior(sd_folder: Path) -> None:
    prior = DiffusionPrior.from_pretrained(str(sd_folder))
    cond = prior.encode_prompt(["a red cube"])
    a = ddim_sample(prior, cond, n=2, steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    b = ddim_sample(prior, cond, n=2, steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)


def test_unknown_hub_id_is_one_clear_user_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        DiffusionPrior.from_pretrained("sds3d-tests/no-such-model")
    message = str(err.value)
    assert "sds3d-tests/no-such-model" in message
    assert str(tmp_path / "sds3d-tests" / "no-such-model") in message
    assert "--allow-download" in message and "local" in message


def test_missing_local_folder_is_a_user_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "my-prior"
    with pytest.raises(UserError, match="does not exist") as err:
        DiffusionPrior.from_pretrained(str(missing))
    assert str(missing) in str(err.value)


def test_folder_without_model_index_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model_index.json"):
        DiffusionPrior.from_pretrained(str(tmp_path))


def test_embedded_unet_without_weights_says_so(monkeypatch, tmp_path: Path) -> None:
    import priors
    import priors.model

    monkeypatch.setattr(priors.model, "EMBEDDED_UNET_DIR", tmp_path / "embedded-unet")
    monkeypatch.setattr(priors, "EMBEDDED_LATENT_DIR", tmp_path / "embedded-unet-latent")
    for name in ("embedded-unet", "embedded-unet-latent"):
        with pytest.raises(UserError, match=f"the {name} prior's weights are not shipped"):
            DiffusionPrior.from_pretrained(name)


def test_dtype_and_attention_slicing_options(sd_folder: Path) -> None:
    prior = DiffusionPrior.from_pretrained(str(sd_folder), dtype="bfloat16", attention_slicing=True)
    assert prior.dtype == torch.bfloat16 and prior.unet.dtype == torch.bfloat16
    assert prior.vae.dtype == torch.bfloat16 and prior.text_encoder.dtype == torch.bfloat16
    reference = DiffusionPrior.from_pretrained(str(sd_folder))
    cond, cond_ref = prior.encode_prompt(["a red cube"]), reference.encode_prompt(["a red cube"])
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    eps = prior.predict_noise(x_t, t, cond, 7.5)
    assert eps.dtype == torch.float32
    torch.testing.assert_close(eps, reference.predict_noise(x_t, t, cond_ref, 7.5), atol=0.1, rtol=0.05)
    images = torch.rand(1, 3, 16, 16).requires_grad_(True)
    loss, _ = SDSLoss(prior)(images, cond, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
