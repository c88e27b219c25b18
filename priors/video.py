"""The video prior: a reference portrait + a driving signal -> a denoised clip (Zero-1-to-A's teacher).

Zero-1-to-A (Zhou et al., CVPR 2025, https://arxiv.org/abs/2503.15851) distils a head avatar from a
*portrait video diffusion model*: given the user's portrait (identity) and a driving signal (a camera path
or an expression sequence, seen by the model as per-frame facial landmarks), it denoises a whole clip at
once, so its frames agree with each other. The avatar pipeline uses it two ways:

* :meth:`VideoPrior.refine` — SDEdit / partial inversion (SymGEN): noise the avatar's rendered clip to a
  strength and denoise it back with the reference and the landmarks; the result is a pseudo-ground-truth
  clip (:class:`recon.data.avatar_dataset.PseudoGTClips`).
* :meth:`VideoPrior.sds_loss` — direct video score distillation, the paper's ablation.

Architecture: diffusers' image-to-video UNet, ``UNetSpatioTemporalConditionModel`` (Stable Video
Diffusion's; spatial and temporal ResNet/attention blocks). Its input per frame is the noisy frame ⊕ the
reference's *unscaled* latent (SVD's image conditioning, repeated over frames) ⊕, when the UNet has one
more input channel, a landmark heatmap of that frame (the driving signal, as AniPortrait's pose guider
sees landmark images); it cross-attends to the reference's CLIP image embedding and takes SVD's three
``added_time_ids`` (fps, motion bucket, noise augmentation). The unconditional branch of classifier-free
guidance zeroes the embedding and the reference latent (SVD's) and keeps the landmarks.

Sources:

* ``"embedded"`` — ``assets/embedded-video``: that architecture in miniature, pixel space (no VAE), trained
  by the project on procedural head clips (:mod:`priors.embedded.train_video`, data
  :mod:`recon.data.head_clips`); framing of :data:`recon.data.head_clips.CLIP_DISTANCE` /
  :data:`~recon.data.head_clips.CLIP_FOV_DEG`.
* a folder or hub id in diffusers' Stable Video Diffusion layout (``unet`` =
  ``UNetSpatioTemporalConditionModel``, ``vae`` = ``AutoencoderKLTemporalDecoder`` or ``AutoencoderKL``,
  ``image_encoder`` = ``CLIPVisionModelWithProjection``, ``feature_extractor``, ``scheduler``). SVD's
  UNet has no landmark channel: the driving signal then reaches the model only through the partially
  noised renders (the motion is kept by the inversion, not steered). SVD's EDM parameterisation
  (``EulerDiscreteScheduler`` with ``timestep_type="continuous"``) is mapped onto the variance-preserving
  ``alphas_cumprod`` form every sds3d prior uses: ``x_VP = x_EDM / sqrt(σ² + 1)`` (SVD's ``c_in``) and the
  model's timestep ``0.25 ln σ``. The landmark-guided portrait models the paper reportedly uses
  (AniPortrait-class: a ReferenceNet and a pose guider) have no diffusers classes; they are not loaded.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from priors.model import (
    PredictionType,
    classifier_free_guidance,
    guidance_is_trivial,
    prediction_to_epsilon,
    resolve_model_folder,
)
from recon.errors import UserError

EMBEDDED_VIDEO_DIR = Path(__file__).resolve().parent.parent / "assets" / "embedded-video"
"""Where the embedded video prior is shipped."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LANDMARK_SIGMA = 0.6
"""Width (pixels of the prior's resolution) of each landmark's Gaussian blob in the driving maps."""
SVD_ADDED_TIME_IDS = (6.0, 127.0, 0.02)
"""SVD's defaults: fps - 1, motion bucket id, noise augmentation strength."""


# ------------------------------------------------------------------------------------- the model
@dataclass
class VideoModelConfig:
    """Size of the embedded video prior (pixel space, this module's architecture in miniature)."""

    resolution: int = 32
    """Frame size (pixel space: also the reference's)."""
    num_frames: int = 8
    """Frames per clip the model is trained on (it runs on other lengths; temporal attention is global)."""
    block_out_channels: tuple[int, ...] = (32, 64, 96)
    """UNet channels per level."""
    num_attention_heads: tuple[int, ...] = (1, 2, 3)
    """Attention heads per level (32 channels each)."""
    layers_per_block: int = 1
    embedding_dim: int = 96
    """Width of the reference's image embedding and of the UNet's cross-attention."""
    addition_time_embed_dim: int = 32
    """Width of each of SVD's three added time ids' embedding."""
    encoder_hidden: int = 96
    """Hidden width of the image encoder (a small CLIP vision transformer trained from scratch)."""
    encoder_layers: int = 3
    encoder_patch: int = 4
    landmark_channel: bool = True
    """Give the UNet one more input channel: the frame's landmark heatmap."""


TINY_VIDEO = VideoModelConfig(
    resolution=16,
    num_frames=4,
    block_out_channels=(32, 32),
    num_attention_heads=(1, 1),
    embedding_dim=16,
    addition_time_embed_dim=8,
    encoder_hidden=16,
    encoder_layers=1,
)
"""A tiny video model for tests (SVD's UNet normalises in 32 groups: 32 channels at least)."""


def build_video_components(cfg: VideoModelConfig) -> dict[str, Any]:
    """``unet``, ``image_encoder``, ``feature_extractor`` of a miniature (pixel-space) SVD."""
    from diffusers import UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    levels = len(cfg.block_out_channels)
    down = ("DownBlockSpatioTemporal",) + ("CrossAttnDownBlockSpatioTemporal",) * (levels - 1)
    up = ("CrossAttnUpBlockSpatioTemporal",) * (levels - 1) + ("UpBlockSpatioTemporal",)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=cfg.resolution,
        in_channels=6 + int(cfg.landmark_channel),
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.block_out_channels,
        addition_time_embed_dim=cfg.addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * cfg.addition_time_embed_dim,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.embedding_dim,
        num_attention_heads=cfg.num_attention_heads,
        num_frames=cfg.num_frames,
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
    processor = CLIPImageProcessor(
        size={"shortest_edge": cfg.resolution},
        crop_size={"height": cfg.resolution, "width": cfg.resolution},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return {
        "unet": unet,
        "image_encoder": CLIPVisionModelWithProjection(vision),
        "feature_extractor": processor,
    }


def landmark_maps(landmarks: Tensor, source_size: int, size: int, sigma: float = LANDMARK_SIGMA) -> Tensor:
    """Heatmaps ``[T, 1, size, size]`` in [0, 1] of landmarks ``[T, L, 2]`` given in pixels of a
    ``source_size`` square frame (pixel centres at i + 0.5); non-finite landmarks draw nothing."""
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise UserError(f"landmarks must be [frames, points, 2] pixels, got {tuple(landmarks.shape)}")
    xy = landmarks.float() * (size / float(source_size))
    ok = torch.isfinite(xy).all(-1)
    xy = torch.where(ok[..., None], xy, torch.full_like(xy, -1e4))
    centres = torch.arange(size, dtype=torch.float32, device=xy.device) + 0.5
    gx = torch.exp(-((centres[None, None, :] - xy[..., 0:1]) ** 2) / (2 * sigma**2))  # [T, L, W]
    gy = torch.exp(-((centres[None, None, :] - xy[..., 1:2]) ** 2) / (2 * sigma**2))  # [T, L, H]
    maps = torch.einsum("tlh,tlw->thw", gy, gx).clamp(max=1.0)
    return maps[:, None]


@dataclass
class VideoReference:
    """The encoded reference portrait: CLIP image embedding ``[1, D]``, unscaled latent ``[1, C, h, w]``."""

    image_embedding: Tensor
    concat: Tensor


def _as_frames(frames: Tensor) -> Tensor:  # [T, H, W, 3] -> [T, 3, H, W]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"a clip must be [frames, H, W, 3] in [0, 1], got {tuple(frames.shape)}")
    return frames.permute(0, 3, 1, 2)


class VideoPrior:
    """An image-to-video denoiser used as Zero-1-to-A's teacher (see the module docstring).

    Build it with :meth:`from_pretrained`, set the portrait with :meth:`set_reference`, then
    :meth:`refine` clips (pseudo ground truth) or take :meth:`sds_loss` on them.
    """

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        image_encoder: Any,
        vae: Any | None = None,
        feature_extractor: Any | None = None,
        source: str = "",
        added_time_ids: tuple[float, float, float] = SVD_ADDED_TIME_IDS,
    ) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.image_encoder = image_encoder.eval().requires_grad_(False)
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor
        self.source = source
        self.added_time_ids = tuple(float(v) for v in added_time_ids)
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type: PredictionType = scheduler.config.get("prediction_type", "epsilon")
        self.continuous_timesteps = scheduler.config.get("timestep_type", "discrete") == "continuous"
        if vae is not None:
            self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.scaling_factor = float(vae.config.get("scaling_factor", 0.18215))
        else:
            self.vae_scale_factor, self.scaling_factor = 1, 1.0
        sample_size = unet.config.sample_size
        self.latent_size = int(sample_size if isinstance(sample_size, int) else sample_size[0])
        self.latent_channels = int(unet.config.out_channels)
        extra = int(unet.config.in_channels) - 2 * self.latent_channels
        if extra not in (0, 1):
            raise UserError(
                f"the video prior's UNet takes {unet.config.in_channels} input channels; an image-to-video "
                f"UNet takes 2 x {self.latent_channels} (noisy frame + reference), or one more for landmark "
                "maps. Pass a Stable Video Diffusion-layout checkpoint as the video prior"
            )
        self.uses_landmarks = extra == 1
        self.resolution = self.latent_size * self.vae_scale_factor
        self.is_latent = vae is not None
        self.reference: VideoReference | None = None
        size, mean, std = 224, CLIP_MEAN, CLIP_STD
        if feature_extractor is not None:
            crop = getattr(feature_extractor, "crop_size", None)
            if isinstance(crop, int):
                size = crop
            elif crop is not None:
                height = crop.get("height") if hasattr(crop, "get") else getattr(crop, "height", None)
                size = int(height or size)
            mean = tuple(getattr(feature_extractor, "image_mean", None) or mean)
            std = tuple(getattr(feature_extractor, "image_std", None) or std)
        self.clip_size = size
        self._clip_mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._clip_std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def kind(self) -> str:
        return "video-latent" if self.is_latent else "video-pixel"

    def info(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "resolution": self.resolution,
            "latent": f"{self.latent_channels}x{self.latent_size}x{self.latent_size}",
            "landmarks": self.uses_landmarks,
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "device": str(self.device),
        }

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: str = "embedded",
        allow_download: bool = False,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
    ) -> VideoPrior:
        """Loads ``"embedded"`` (``assets/embedded-video``), a diffusers SVD-layout folder or a hub id."""
        if source == "embedded":
            if not (EMBEDDED_VIDEO_DIR / "model_index.json").is_file():
                raise UserError(
                    f"the embedded video prior is not shipped (looked in {EMBEDDED_VIDEO_DIR}); pass a "
                    "Stable Video Diffusion folder / hub id as --video-prior, or train it: python -m "
                    "priors.embedded.train_video"
                )
            source = str(EMBEDDED_VIDEO_DIR)
        folder = resolve_model_folder(source, allow_download=allow_download, revision=revision)
        if not isinstance(folder, Path):
            try:
                from huggingface_hub import snapshot_download

                folder = Path(
                    snapshot_download(folder, revision=revision, local_files_only=not allow_download)
                )
            except Exception as err:  # hub errors vary by version
                raise UserError(
                    f"cannot get the video prior {source!r} ({err}); pass a local folder, or allow downloads "
                    "with --allow-download"
                ) from err
        index_path = folder / "model_index.json"
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(
                f"cannot read {index_path}: {err}; is {folder} a video diffusion folder?"
            ) from err
        if not isinstance(index, dict):
            raise UserError(f"{index_path} is not a JSON object; re-download the checkpoint")
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        parts: dict[str, Any] = {}
        for name in ("unet", "vae", "image_encoder", "feature_extractor", "scheduler"):
            entry = index.get(name)
            if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None or entry[1] is None:
                continue
            library, class_name = entry
            try:
                component_cls = getattr(importlib.import_module(library), class_name)
            except (ImportError, AttributeError) as err:
                raise UserError(
                    f"{index_path} names {library}.{class_name} for its {name}, which this install cannot "
                    f"import ({err})"
                ) from err
            kwargs: dict[str, Any] = {}
            if name in ("unet", "vae", "image_encoder") and torch_dtype is not None:
                kwargs["torch_dtype"] = torch_dtype
            try:
                parts[name] = component_cls.from_pretrained(folder / name, **kwargs)
            except (OSError, ValueError, TypeError) as err:
                raise UserError(f"could not load the {name} of the video prior {source!r}: {err}") from err
        for required in ("unet", "image_encoder", "scheduler"):
            if required not in parts:
                raise UserError(f"the video prior {source!r} has no {required} in {index_path}")
        from diffusers import UNetSpatioTemporalConditionModel

        # Not a config-key test: UNet2DConditionModel's config has addition_time_embed_dim too (SDXL's).
        if not isinstance(parts["unet"], UNetSpatioTemporalConditionModel):
            raise UserError(
                f"the video prior {source!r}'s unet is a {type(parts['unet']).__name__}, not an "
                "image-to-video UNet (UNetSpatioTemporalConditionModel); pass a Stable Video "
                "Diffusion-layout checkpoint"
            )
        ids = index.get("_sds3d_added_time_ids", SVD_ADDED_TIME_IDS)
        prior = cls(
            unet=parts["unet"],
            scheduler=parts["scheduler"],
            image_encoder=parts["image_encoder"],
            vae=parts.get("vae"),
            feature_extractor=parts.get("feature_extractor"),
            source=source,
            added_time_ids=tuple(ids),
        )
        return prior.to(device)

    def to(self, device: str | torch.device) -> VideoPrior:
        self.device = torch.device(device)
        for module in (self.unet, self.image_encoder, self.vae):
            if module is not None:
                module.to(self.device)
        if self.reference is not None:
            self.reference = VideoReference(
                self.reference.image_embedding.to(self.device), self.reference.concat.to(self.device)
            )
        return self

    # -- conditioning ----------------------------------------------------------------------------
    def embed_image(self, image: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, D]
        x = F.interpolate(
            image.float(),
            size=(self.clip_size, self.clip_size),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).clamp(0.0, 1.0)
        x = (x - self._clip_mean.to(x.device)) / self._clip_std.to(x.device)
        out = self.image_encoder(pixel_values=x.to(self.device, self.dtype))
        return out.image_embeds if hasattr(out, "image_embeds") else out[0]

    def concat_latent(self, image: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, C, h, w]
        """The reference in the denoiser's space, unscaled (SVD's conditioning latent), or the pixels."""
        x = F.interpolate(image.float(), size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
        x = x.to(self.device, self.dtype) * 2.0 - 1.0
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mode()

    @torch.no_grad()
    def set_reference(self, image: Tensor) -> VideoReference:
        """Encodes the reference portrait ``[1, 3, H, W]`` (or ``[H, W, 3]``) in [0, 1], on white."""
        if image.ndim == 3 and image.shape[-1] == 3:
            image = image.permute(2, 0, 1)[None]
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise UserError(
                f"the reference portrait must be [1, 3, H, W] or [H, W, 3], got {tuple(image.shape)}"
            )
        self.reference = VideoReference(self.embed_image(image), self.concat_latent(image))
        return self.reference

    def driving_maps(self, landmarks: Tensor | None, source_size: int, frames: int) -> Tensor | None:
        """The UNet's landmark channel ``[T, 1, h, w]`` (``None`` when the UNet has none)."""
        if not self.uses_landmarks:
            return None
        if landmarks is None:
            raise UserError(
                "this video prior is driven by facial landmarks: pass the clip's landmarks [T, L, 2]"
            )
        if landmarks.shape[0] != frames:
            raise UserError(f"{landmarks.shape[0]} landmark rows for {frames} frames; pass one row per frame")
        return landmark_maps(landmarks.cpu(), source_size, self.latent_size).to(self.device, self.dtype)

    # -- the denoiser ----------------------------------------------------------------------------
    def encode_frames(self, x: Tensor) -> Tensor:  # [T, 3, H, W] in [0, 1] -> [T, C, h, w]; differentiable
        x = F.interpolate(
            x.float(), size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True
        )
        x = x.to(self.device, self.dtype) * 2.0 - 1.0
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def decode_frames(self, z: Tensor) -> Tensor:  # [T, C, h, w] -> [T, 3, R, R] in [0, 1]
        x = z.to(self.dtype)
        if self.vae is not None:
            x = x / self.scaling_factor
            try:
                x = self.vae.decode(x, num_frames=x.shape[0]).sample  # AutoencoderKLTemporalDecoder
            except TypeError:
                x = self.vae.decode(x).sample
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def model_timestep(self, t: Tensor) -> Tensor:
        """What the UNet is given for integer steps ``t``: ``t``, or SVD's ``0.25 ln σ`` (continuous)."""
        if not self.continuous_timesteps:
            return t.float()
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return 0.25 * torch.log(((1 - a) / a).sqrt())

    def predict_noise(
        self,
        x_t: Tensor,  # [T, C, h, w]
        t: int,
        driving: Tensor | None,  # [T, 1, h, w]
        guidance_scale: float = 2.0,
    ) -> Tensor:  # [T, C, h, w]
        """ε of one clip with classifier-free guidance (the unconditional branch drops the reference)."""
        if self.reference is None:
            raise RuntimeError("set_reference() must be called before denoising")
        T = x_t.shape[0]
        ref = self.reference
        concat = ref.concat.to(self.dtype).expand(T, -1, -1, -1)
        extra = [] if driving is None else [driving.to(self.dtype)]
        cond = torch.cat([x_t.to(self.dtype), concat, *extra], 1)[None]
        embed = ref.image_embedding.to(self.dtype)[:, None]
        if guidance_is_trivial(guidance_scale, "diffusers"):
            x_in, h_in = cond, embed
        else:
            uncond = torch.cat([x_t.to(self.dtype), torch.zeros_like(concat), *extra], 1)[None]
            x_in, h_in = torch.cat([uncond, cond]), torch.cat([torch.zeros_like(embed), embed])
        B = x_in.shape[0]
        tt = torch.full((B,), int(t), device=self.device)
        ids = torch.tensor([self.added_time_ids], device=self.device, dtype=self.dtype).expand(B, -1)
        out = self.unet(x_in, self.model_timestep(tt), h_in, ids, return_dict=False)[0].float()
        out = out.flatten(0, 1)  # [B T, C, h, w]
        a = self.alphas_cumprod.to(self.device)[int(t)].view(1, 1, 1, 1)
        eps = prediction_to_epsilon(out, torch.cat([x_t.float()] * B), a, self.prediction_type)
        if B == 1:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale, "diffusers")

    @torch.no_grad()
    def _ddim(
        self, x: Tensor, timesteps: list[int], driving: Tensor | None, guidance_scale: float, clamp: bool
    ) -> Tensor:
        alphas = self.alphas_cumprod.to(self.device)
        for i, t in enumerate(timesteps):
            a_t = alphas[t]
            a_prev = (
                alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones((), device=self.device)
            )
            eps = self.predict_noise(x, t, driving, guidance_scale)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if clamp:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x

    def _timesteps(self, steps: int, strength: float) -> list[int]:
        """The DDIM steps below ``strength · num_train_timesteps`` (descending)."""
        n = self.num_train_timesteps
        t_start = min(int(round(strength * n)), n) - 1
        if t_start < 0:
            return []
        count = max(1, int(round(steps * strength)))
        return sorted({int(round(v)) for v in torch.linspace(t_start, 0, count).tolist()}, reverse=True)

    @torch.no_grad()
    def refine(
        self,
        frames: Tensor,  # [T, H, W, 3] in [0, 1]
        landmarks: Tensor | None,  # [T, L, 2] pixels of the frames
        strength: float = 0.5,
        generator: torch.Generator | None = None,
        steps: int = 20,
        guidance_scale: float = 2.0,
    ) -> Tensor:  # [T, H, W, 3]
        """SDEdit a clip: noise it to ``strength`` (0: unchanged, 1: pure noise), denoise it (DDIM, η = 0)
        conditioned on the reference and the landmarks; returned at the input's size."""
        if not 0.0 <= strength <= 1.0:
            raise UserError(f"strength must be between 0 and 1, got {strength}")
        x = _as_frames(frames)
        T, _, H, W = x.shape
        ts = self._timesteps(steps, strength)
        if not ts:  # strength 0, or under one training step
            return frames.clone()
        driving = self.driving_maps(landmarks, W, T)
        z0 = self.encode_frames(x)
        noise = torch.randn(z0.shape, generator=generator).to(z0)
        a = self.alphas_cumprod.to(self.device)[ts[0]]
        z = a.sqrt() * z0 + (1 - a).sqrt() * noise
        z = self._ddim(z, ts, driving, guidance_scale, clamp=not self.is_latent)
        out = self.decode_frames(z)
        out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
        return out.clamp(0.0, 1.0).permute(0, 2, 3, 1).to(frames)

    @torch.no_grad()
    def sample(
        self,
        num_frames: int,
        landmarks: Tensor | None,  # [T, L, 2] pixels of a ``source_size`` frame
        source_size: int | None = None,
        generator: torch.Generator | None = None,
        steps: int = 50,
        guidance_scale: float = 2.0,
    ) -> Tensor:  # [T, R, R, 3]
        """A clip from pure noise (the prior's own imagination of the driven portrait)."""
        driving = self.driving_maps(landmarks, source_size or self.resolution, num_frames)
        shape = (num_frames, self.latent_channels, self.latent_size, self.latent_size)
        z = torch.randn(shape, generator=generator).to(self.device, torch.float32)
        z = self._ddim(z, self._timesteps(steps, 1.0), driving, guidance_scale, clamp=not self.is_latent)
        return self.decode_frames(z).permute(0, 2, 3, 1)

    def sds_loss(
        self,
        frames: Tensor,  # [T, H, W, 3] in [0, 1], differentiable
        landmarks: Tensor | None,
        generator: torch.Generator | None = None,
        t_range: tuple[float, float] = (0.02, 0.98),
        guidance_scale: float = 5.0,
    ) -> Tensor:
        """Video score distillation: one timestep for the whole clip, ``grad = w(t) (ε̂ − ε)`` with
        ``w = 1 − ᾱ`` (DreamFusion's), as a loss ``0.5 ‖z − sg(z − grad)‖² / T``."""
        x = _as_frames(frames)
        T, _, _, W = x.shape
        driving = self.driving_maps(landmarks.detach() if landmarks is not None else None, W, T)
        z0 = self.encode_frames(x)
        n = self.num_train_timesteps
        lo, hi = int(t_range[0] * n), max(int(t_range[1] * n), int(t_range[0] * n) + 1)
        t = int(torch.randint(lo, hi, (1,), generator=generator))
        noise = torch.randn(z0.shape, generator=generator).to(z0)
        a = self.alphas_cumprod.to(self.device)[t]
        with torch.no_grad():
            eps = self.predict_noise(
                a.sqrt() * z0.detach() + (1 - a).sqrt() * noise, t, driving, guidance_scale
            )
            grad = torch.nan_to_num((1 - a) * (eps - noise))
            target = (z0 - grad).detach()
        return 0.5 * F.mse_loss(z0.float(), target.float(), reduction="sum") / T
