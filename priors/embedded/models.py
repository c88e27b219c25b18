"""Architectures of the embedded priors (diffusers ``UNet2DConditionModel`` / ``AutoencoderKL``).

The text condition is the frozen MiniLM token states (384-d, :mod:`priors.text`). A learned linear
projection inside the UNet (``encoder_hid_dim_type="text_proj"``) maps them to the cross-attention
width, so color and shape words get their own trainable path while the saved UNet still takes the
plain encoder states (any loader that feeds MiniLM hidden states, e.g. :class:`priors.model.DiffusionPrior`,
works). Padding is masked in cross-attention (``encoder_attention_mask``), so states computed at any
padded length give the same prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

TEXT_DIM = 384
"""Width of the MiniLM token states."""


@dataclass
class UNetConfig:
    """Size of a text-conditional UNet."""

    sample_size: int = 32
    """Spatial size of its input (32 for pixels, the latent size for the latent variant)."""
    channels: int = 3
    """Input / output channels (3 for RGB, the VAE's latent channels otherwise)."""
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    """Channels per resolution level."""
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    """diffusers down-block types, one per level (the up blocks mirror them). Text cross-attention
    sits at the 8x8 level and in the mid block only: attention over the 256 tokens of the 16x16
    level doubled the guided forward pass (64-110 ms vs 32-40 ms, batch 2, 2 CPU threads)."""
    layers_per_block: int = 1
    """ResNet layers per block."""
    cross_attention_dim: int = 128
    """Width of the projected text states."""
    attention_head_dim: int = 32
    """Channels per attention head."""
    norm_num_groups: int = 16
    """GroupNorm groups."""


@dataclass
class VAEConfig:
    """Size of the latent variant's autoencoder (32x32x3 <-> 8x8x4 with three levels)."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """Channels per level; the spatial factor is ``2 ** (levels - 1)``."""
    latent_channels: int = 4
    """Latent channels."""
    layers_per_block: int = 1
    """ResNet layers per block."""
    norm_num_groups: int = 16
    """GroupNorm groups."""


@dataclass
class SchedulerConfig:
    """The DDPM noise schedule (https://arxiv.org/abs/2102.09672 cosine schedule)."""

    num_train_timesteps: int = 1000
    """Diffusion steps."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers beta schedule name."""
    prediction_type: str = "v_prediction"
    """What the UNet predicts (v-prediction, https://arxiv.org/abs/2202.00512)."""


PIXEL_UNET = UNetConfig()
"""The pixel-space prior (32x32 RGB, ~7M parameters)."""
LATENT_UNET = UNetConfig(
    sample_size=8,
    channels=4,
    block_out_channels=(64, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    layers_per_block=1,
)
"""The latent-space prior (8x8x4 latents of :data:`LATENT_VAE`)."""
LATENT_VAE = VAEConfig()
"""The latent variant's autoencoder."""
TINY_UNET = UNetConfig(
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=8,
    norm_num_groups=4,
    sample_size=16,
)
"""A tiny model for tests."""
TINY_VAE = VAEConfig(block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4)
"""A tiny autoencoder for tests (2x down-sampling)."""


@dataclass
class ModelBundle:
    """What one training run builds: the denoiser, its scheduler and, for latents, the VAE."""

    unet: UNet2DConditionModel
    """The text-conditional denoiser."""
    scheduler: DDPMScheduler
    """The noise schedule."""
    vae: AutoencoderKL | None = field(default=None)
    """The autoencoder (latent variant only)."""


def build_unet(cfg: UNetConfig) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` with a learned text projection (384 -> ``cross_attention_dim``)."""
    up = tuple(
        t.replace("Down", "Up").replace("CrossAttnUp", "CrossAttnUp") for t in reversed(cfg.down_block_types)
    )
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        down_block_types=cfg.down_block_types,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        encoder_hid_dim=TEXT_DIM,
        encoder_hid_dim_type="text_proj",
    )


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """An ``AutoencoderKL`` for 3-channel images."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        latent_channels=cfg.latent_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=32,
    )


def build_scheduler(cfg: SchedulerConfig) -> DDPMScheduler:
    """The training noise scheduler (also saved with the weights)."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
    )


# -- the embedded view-conditioned prior (a miniature Zero123) -----------------------------------


@dataclass
class ViewModelConfig:
    """Size of the embedded view-conditioned prior (pixel space, :mod:`priors.view`'s architecture)."""

    resolution: int = 32
    """Image size (the UNet's sample size; pixel space, so also the reference's size)."""
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    """UNet channels per level."""
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    """UNet down blocks (the up blocks mirror them); the camera token is attended at 16x16 and 8x8."""
    layers_per_block: int = 1
    """ResNet layers per block."""
    embedding_dim: int = 128
    """Width of the image embedding, the camera token and the UNet's cross-attention."""
    attention_head_dim: int = 32
    """Channels per attention head (UNet)."""
    norm_num_groups: int = 16
    """GroupNorm groups (UNet)."""
    encoder_hidden: int = 128
    """Hidden width of the image encoder (a small CLIP vision transformer trained from scratch)."""
    encoder_layers: int = 4
    """Transformer layers of the image encoder."""
    encoder_patch: int = 4
    """Patch size of the image encoder."""


TINY_VIEW = ViewModelConfig(
    resolution=16,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    embedding_dim=16,
    attention_head_dim=8,
    norm_num_groups=4,
    encoder_hidden=16,
    encoder_layers=1,
)
"""A tiny view model for tests."""


def build_view_components(cfg: ViewModelConfig) -> dict:
    """``unet``, ``image_encoder``, ``feature_extractor``, ``clip_camera_projection`` of a miniature Zero123.

    The UNet takes the noisy image ⊕ the reference (6 channels) and cross-attends to one token, the
    image embedding joined with the relative camera through :class:`priors.view.CLIPCameraProjection`.
    """
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from priors.view import CLIPCameraProjection

    up = tuple(t.replace("Down", "Up") for t in reversed(cfg.down_block_types))
    unet = UNet2DConditionModel(
        sample_size=cfg.resolution,
        in_channels=6,
        out_channels=3,
        down_block_types=cfg.down_block_types,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.embedding_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )
    vision = CLIPVisionConfig(
        image_size=cfg.resolution,
        patch_size=cfg.encoder_patch,
        hidden_size=cfg.encoder_hidden,
        intermediate_size=2 * cfg.encoder_hidden,
        num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=max(1, cfg.encoder_hidden // 32),
        projection_dim=cfg.embedding_dim,
        num_channels=3,
    )
    encoder = CLIPVisionModelWithProjection(vision)
    processor = CLIPImageProcessor(
        size={"shortest_edge": cfg.resolution},
        crop_size={"height": cfg.resolution, "width": cfg.resolution},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    projection = CLIPCameraProjection(embedding_dim=cfg.embedding_dim, additional_embeddings=4)
    return {
        "unet": unet,
        "image_encoder": encoder,
        "feature_extractor": processor,
        "clip_camera_projection": projection,
    }
