from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from priors.embedded.dataset import BatchConfig, ViewBankConfig
from priors.embedded.models import TINY_UNET, TINY_VAE
from priors.embedded.train import TrainConfig, Trainer
from priors.text import encode_tokens

ASSETS = Path(__file__).resolve().parents[2] / "assets"


@pytest.mark.parametrize("name", ["embedded-unet", "embedded-unet-latent"])
def test_shipped_weights_load_and_predict(name: str):
    folder = ASSETS / name
    assert (folder / "model_index.json").is_file(), f"{folder} is not shipped"
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert sched.config.prediction_type == "v_prediction" and sched.config.num_train_timesteps == 1000
    hidden, mask = encode_tokens(["a red cube, front view", "a blue sphere"], max_length=16)
    size, ch = unet.config.sample_size, unet.config.in_channels
    x = torch.randn(2, ch, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = unet(
            x, torch.tensor([999, 500]), encoder_hidden_states=hidden, encoder_attention_mask=mask
        ).sample
        # padding is masked: 16 and 40 padded tokens give the same prediction
        hidden40, mask40 = encode_tokens(["a red cube, front view", "a blue sphere"], max_length=40)
        out40 = unet(
            x, torch.tensor([999, 500]), encoder_hidden_states=hidden40, encoder_attention_mask=mask40
        )
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out40.sample, out, atol=1e-4, rtol=1e-4)
    if name.endswith("latent"):
        vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        with torch.no_grad():
            img = vae.decode(x / vae.config.scaling_factor).sample
        assert img.shape == (2, 3, 32, 32)
        assert ch == vae.config.latent_channels and size * 4 == 32
    else:
        assert (size, ch) == (32, 3)
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < 35e6


def _tiny_cfg(out: Path, cache: Path, variant: str = "pixel", **kw) -> TrainConfig:
    unet = TINY_UNET if variant == "pixel" else replace(TINY_UNET, sample_size=8, channels=4)
    return TrainConfig(
        out=out,
        variant=variant,
        minutes=10.0,
        lr=3e-3,
        warmup_steps=1,
        bank=ViewBankConfig(views_per_shape=6, resolution=16),
        bank_cache=cache,
        batch=BatchConfig(batch_size=8),
        unet=unet,
        vae=TINY_VAE,
        progress=False,
        **kw,
    )


def test_tiny_training_loss_falls_and_resumes_exactly(tmp_path: Path):
    cache = tmp_path / "bank.pt"
    full = Trainer(_tiny_cfg(tmp_path / "a", cache, max_steps=60))
    full.run()
    first, last = sum(full.losses[:8]) / 8, sum(full.losses[-8:]) / 8
    assert last < 0.7 * first, (first, last)
    # 4 steps, stop, resume to 8: identical to 8 uninterrupted steps
    straight = Trainer(_tiny_cfg(tmp_path / "b", cache, max_steps=8))
    straight.run()
    Trainer(_tiny_cfg(tmp_path / "c", cache, max_steps=4)).run()
    resumed = Trainer(_tiny_cfg(tmp_path / "c", cache, max_steps=8))
    assert resumed.step == 4
    resumed.run()
    for p, q in zip(straight.models.unet.parameters(), resumed.models.unet.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    for p, q in zip(straight.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    assert straight.losses == resumed.losses
    # the export loads back as the EMA weights
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "c" / "unet")
    for p, q in zip(unet.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_tiny_latent_variant_trains_vae_then_unet(tmp_path: Path):
    trainer = Trainer(_tiny_cfg(tmp_path / "lat", tmp_path / "bank.pt", variant="latent", max_steps=6))
    trainer.run()
    assert trainer.vae_done and trainer.vae_step == 2 and trainer.step == 6
    vae = AutoencoderKL.from_pretrained(tmp_path / "lat" / "vae")
    assert vae.config.scaling_factor == pytest.approx(trainer.latent_scale)
    assert 0.1 < trainer.latent_scale < 100


@pytest.mark.parametrize(
    ("name", "kind", "shape"),
    [("embedded-unet", "pixel", (1, 3, 32, 32)), ("embedded-unet-latent", "latent", (1, 4, 8, 8))],
)
def test_embedded_unets_load_through_diffusion_prior(name: str, kind: str, shape: tuple[int, ...]):
    from priors.model import DiffusionPrior

    prior = DiffusionPrior.from_pretrained(name)
    assert (prior.kind, prior.resolution, prior.prediction_type) == (kind, 32, "v_prediction")
    assert prior.pass_attention_mask
    cond = prior.encode_prompt(["a green cone, front view"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    eps = prior.predict_noise(x, torch.tensor([500]), cond, guidance_scale=7.5)
    assert eps.shape == shape and torch.isfinite(eps).all()
