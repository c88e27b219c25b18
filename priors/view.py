"""The view-conditioned prior: the Zero123 family, reference image + relative camera -> noise.

Zero-1-to-3 (Liu et al. 2023, https://arxiv.org/abs/2303.11328) fine-tunes a latent diffusion UNet
to draw an object from a new viewpoint given one picture of it: the UNet sees the noisy latent
concatenated with the **unscaled** VAE latent of the reference (8 input channels), and cross-attends
to one token, the reference's CLIP image embedding joined with the relative camera ``T`` through a
linear *camera projection* (768 + 4 -> 768). The unconditional branch of classifier-free guidance
zeroes both the token and the concatenated latent.

Checkpoints are read in the diffusers layout of the community conversions (threestudio's
``convert_zero123_to_diffusers.py``, dreamgaussian's ``*-diffusers`` repositories): subfolders
``vae``, ``image_encoder`` (``CLIPVisionModelWithProjection``), ``feature_extractor``
(``CLIPImageProcessor``), ``unet`` (``UNet2DConditionModel``), ``clip_camera_projection`` and
``scheduler``. diffusers has no core Zero123 pipeline, so this module composes one from those
classes; the camera projection is :class:`CLIPCameraProjection`, which reads both published
weight layouts (``proj.*`` and the community pipeline's ``projection.*``).

Two pose conventions (:func:`relative_pose`), with polar = 90° − elevation:

* ``"zero123"`` (zero123, zero123-xl): ``T = [Δpolar (rad), sin Δaz, cos Δaz, Δradius]``;
* ``"stable-zero123"``: ``T = [Δpolar (rad), sin Δaz, cos Δaz, polar of the reference (rad)]``.

The embedded prior (``assets/embedded-view``) is the same architecture in miniature, trained by the
project on pairs of procedural renders (:mod:`priors.embedded.train_view`): pixel space (no VAE, so
the "unscaled latent" of the reference is the image itself in ``[-1, 1]``), a small
``CLIPVisionModelWithProjection`` trained from scratch, and the stable-zero123 pose convention.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from priors.model import (
    CfgConvention,
    PredictionType,
    add_noise,
    classifier_free_guidance,
    guidance_is_trivial,
    prediction_to_epsilon,
    resolve_model_folder,
)
from recon.errors import UserError

PoseConvention = Literal["zero123", "stable-zero123"]
POSE_CONVENTIONS: tuple[str, ...] = ("zero123", "stable-zero123")

EMBEDDED_VIEW_DIR = Path(__file__).resolve().parent.parent / "assets" / "embedded-view"
"""Where the embedded view-conditioned prior is shipped."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def relative_pose(
    ref_elevation_deg: Tensor | float,
    ref_azimuth_deg: Tensor | float,
    ref_distance: Tensor | float,
    elevation_deg: Tensor,  # [B]
    azimuth_deg: Tensor,  # [B]
    distance: Tensor | float,
    convention: PoseConvention = "zero123",
) -> Tensor:  # [B, 4]
    """The relative camera ``T`` of target views with respect to the reference view.

    Angles in degrees, elevation above the horizon (polar = 90° − elevation), azimuth counter-clockwise
    seen from above (sds3d's and threestudio's convention agree on the sense of rotation).

    Args:
        ref_elevation_deg: Elevation of the reference view.
        ref_azimuth_deg: Azimuth of the reference view.
        ref_distance: Distance of the reference camera.
        elevation_deg: Target elevations ``[B]``.
        azimuth_deg: Target azimuths ``[B]``.
        distance: Target distances (``[B]`` or a number).
        convention: ``"zero123"`` or ``"stable-zero123"`` (see the module docstring).

    Returns:
        ``[B, 4]``: ``[Δpolar, sin Δaz, cos Δaz, Δradius or reference polar]`` (radians).
    """
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1)
    azimuth = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1).to(elevation)
    ref_el = torch.as_tensor(ref_elevation_deg, dtype=torch.float32).to(elevation)
    ref_az = torch.as_tensor(ref_azimuth_deg, dtype=torch.float32).to(elevation)
    d_polar = torch.deg2rad(ref_el - elevation)  # (90 - el) - (90 - el_ref)
    d_az = torch.deg2rad(azimuth - ref_az)
    if convention == "zero123":
        dist = torch.as_tensor(distance, dtype=torch.float32).to(elevation)
        fourth = (dist - torch.as_tensor(ref_distance, dtype=torch.float32).to(elevation)).expand_as(d_polar)
    elif convention == "stable-zero123":
        fourth = torch.deg2rad(90.0 - ref_el).expand_as(d_polar)
    else:
        raise ValueError(f"unknown pose convention {convention!r}; expected one of {POSE_CONVENTIONS}")
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), fourth], dim=-1)


ImageTokens = Literal["embeds", "patches"]
IMAGE_TOKENS: tuple[str, ...] = ("embeds", "patches")


def image_tokens(encoder: Any, output: Any, kind: ImageTokens = "embeds") -> Tensor:
    """The reference's image tokens from a CLIP vision encoder's output.

    ``embeds``: CLIP's ``image_embeds`` ``[B, D]`` (Zero123: one token). ``patches``: that embedding
    followed by every patch of the last hidden state through the same ``post_layernorm`` and
    ``visual_projection`` ``[B, 1 + P, D]``, so the UNet's cross-attention can look up *where* on the
    reference a colour or pattern is (the embedded prior's option, ``_sds3d_image_tokens`` in
    ``model_index.json``).
    """
    embeds = output.image_embeds if hasattr(output, "image_embeds") else output[0]
    if kind == "embeds":
        return embeds
    if kind != "patches":
        raise ValueError(f"unknown image tokens {kind!r}; expected one of {IMAGE_TOKENS}")
    vision = encoder.vision_model
    patches = encoder.visual_projection(vision.post_layernorm(output.last_hidden_state[:, 1:]))
    return torch.cat([embeds[:, None], patches], dim=1)


def join_camera(projection: nn.Module, tokens: Tensor, pose: Tensor) -> Tensor:
    """``projection(token ⊕ T)`` per token ``[B, D]`` or ``[B, L, D]``, ``T [B, 4]``: ``[B, L, D]``."""
    tokens = tokens[:, None] if tokens.dim() == 2 else tokens
    return projection(torch.cat([tokens, pose[:, None].expand(-1, tokens.shape[1], -1)], dim=-1))


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """``Linear(embedding_dim + additional_embeddings -> embedding_dim)``: image embedding ⊕ ``T`` -> token.

    Zero123's ``cc_projection``; initialised as identity on the embedding columns and zero on the
    camera columns, as the original (``ddpm.py``) does before fine-tuning.
    """

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.weight[:, :embedding_dim].copy_(torch.eye(embedding_dim))
            self.proj.bias.zero_()

    def forward(self, embedding: Tensor) -> Tensor:  # [B, L, D + 4] -> [B, L, D]
        return self.proj(embedding)

    @classmethod
    def load(cls, folder: Path) -> CLIPCameraProjection:
        """Reads ``folder`` (a ``clip_camera_projection`` or ``cc_projection`` subfolder) in either layout.

        Accepts ``config.json`` with ``embedding_dim`` / ``additional_embeddings`` (threestudio,
        dreamgaussian), ``in_channel`` / ``out_channel``, or neither (the diffusers community pipeline's
        ``CCProjection`` registers no config: its published ``config.json`` holds only the class name, so
        the sizes are read off the weights), and weights ``proj.*`` or ``projection.*`` in safetensors or a
        torch bin.
        """
        folder = Path(folder)
        config_path = folder / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the camera projection's config {config_path}: {err}") from err
        if not isinstance(config, dict):
            raise UserError(f"{config_path} is not a JSON object; re-convert the checkpoint")
        state = _read_weights(folder)
        state = {
            k.replace("projection.", "proj.", 1) if k.startswith("projection.") else k: v
            for k, v in state.items()
        }
        if "embedding_dim" in config:
            dim, extra = int(config["embedding_dim"]), int(config.get("additional_embeddings", 4))
        elif "out_channel" in config:
            dim = int(config["out_channel"])
            extra = int(config.get("in_channel", dim + 4)) - dim
        elif isinstance(weight := state.get("proj.weight"), Tensor) and weight.dim() == 2:
            dim, extra = weight.shape[0], weight.shape[1] - weight.shape[0]
        else:
            raise UserError(
                f"{config_path} names neither embedding_dim nor out_channel and {folder} has no "
                "proj.weight / projection.weight to read the sizes from; re-convert the checkpoint"
            )
        module = cls(embedding_dim=dim, additional_embeddings=extra)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise UserError(
                f"the camera projection weights in {folder} do not fit its config: {err}"
            ) from err
        return module


def _read_weights(folder: Path) -> dict[str, Tensor]:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            from safetensors.torch import load_file

            try:
                return load_file(str(folder / name))
            except Exception as err:  # safetensors raises its own error types
                raise UserError(f"cannot read {folder / name}: {err}; the file is damaged") from err
    for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            try:
                return torch.load(folder / name, map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises several types for damaged files
                raise UserError(f"cannot read {folder / name}: {err}; the file is damaged") from err
    raise UserError(f"no weights (safetensors or bin) in {folder}; the checkpoint is incomplete")


@dataclass
class ViewConditioning:
    """Conditioning of a batch of target views on one reference picture."""

    image_embedding: Tensor  # [1, D] or [B, D]; [.., 1 + P, D] with patch tokens
    """The reference's image embedding (CLIP ``image_embeds``; with ``image_tokens="patches"`` also its
    patches, :func:`image_tokens`)."""
    concat: Tensor  # [1, C, h, w] or [B, C, h, w]
    """The reference in the denoiser's space, unscaled (concatenated to the noisy input)."""
    pose: Tensor  # [B, 4]
    """Relative cameras ``T`` of the targets."""
    prompts: list[str] | None = None
    """Unused text (kept so that loggers can print something)."""

    def __len__(self) -> int:
        return self.pose.shape[0]


@dataclass
class ReferenceView:
    """The reference picture and where it was seen from."""

    image_embedding: Tensor  # [1, D] or [1, 1 + P, D]
    concat: Tensor  # [1, C, h, w]
    elevation_deg: float
    azimuth_deg: float
    distance: float


class ViewConditionedPrior:
    """A Zero123-family denoiser used as a prior (same protocol as :class:`priors.model.DiffusionPrior`).

    Build it with :meth:`from_pretrained`, set the picture with :meth:`set_reference`, then
    ``encode_prompt(None, elevation_deg=..., azimuth_deg=...)`` gives the conditioning of target views
    that :class:`priors.sds.SDSLoss` and :func:`priors.model.ddim_sample` take.
    """

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        image_encoder: Any,
        camera_projection: CLIPCameraProjection,
        vae: Any | None = None,
        feature_extractor: Any | None = None,
        pose_convention: PoseConvention = "zero123",
        source: str = "",
        image_tokens: ImageTokens = "embeds",
    ) -> None:
        """Wraps built components.

        Args:
            unet: ``UNet2DConditionModel`` with ``2 C`` input channels and ``C`` output channels.
            scheduler: A diffusers scheduler (its ``alphas_cumprod`` and ``prediction_type`` are used).
            image_encoder: ``CLIPVisionModelWithProjection``.
            camera_projection: :class:`CLIPCameraProjection`.
            vae: ``AutoencoderKL`` (latent checkpoints) or ``None`` (pixel space, the embedded prior).
            feature_extractor: ``CLIPImageProcessor`` giving the encoder's input size and normalisation.
            pose_convention: ``"zero123"`` or ``"stable-zero123"``.
            source: Where it came from (for messages and ``info``).
            image_tokens: What the UNet cross-attends to: ``embeds`` (Zero123: the image embedding, one
                token) or ``patches`` (also the reference's patches; :func:`image_tokens`).
        """
        if pose_convention not in POSE_CONVENTIONS:
            raise UserError(f"unknown pose convention {pose_convention!r}; use one of {POSE_CONVENTIONS}")
        if image_tokens not in IMAGE_TOKENS:
            raise UserError(f"unknown image tokens {image_tokens!r}; use one of {IMAGE_TOKENS}")
        self.image_tokens: ImageTokens = image_tokens
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.image_encoder = image_encoder.eval().requires_grad_(False)
        self.camera_projection = camera_projection.eval().requires_grad_(False)
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor
        self.pose_convention: PoseConvention = pose_convention
        self.source = source
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).to(self.device)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type: PredictionType = scheduler.config.get("prediction_type", "epsilon")
        if vae is not None:
            self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.scaling_factor = float(vae.config.get("scaling_factor", 0.18215))
        else:
            self.vae_scale_factor, self.scaling_factor = 1, 1.0
        sample_size = unet.config.sample_size
        self.latent_size = int(sample_size if isinstance(sample_size, int) else sample_size[0])
        self.latent_channels = int(unet.config.out_channels)
        if int(unet.config.in_channels) != 2 * self.latent_channels:
            raise UserError(
                f"the view prior's UNet takes {unet.config.in_channels} input channels; a Zero123 UNet "
                f"takes 2 x {self.latent_channels} (noisy input + reference). Is this a text-to-image UNet? "
                "Pass a Zero123-family checkpoint (e.g. ashawkey/stable-zero123-diffusers) as the view prior"
            )
        self.resolution = self.latent_size * self.vae_scale_factor
        self.is_latent = vae is not None
        self.reference: ReferenceView | None = None
        size, mean, std = 224, CLIP_MEAN, CLIP_STD
        if feature_extractor is not None:
            crop = getattr(feature_extractor, "crop_size", None)
            if isinstance(crop, int):
                size = crop
            elif crop is not None:  # a dict or transformers' SizeDict
                height = crop.get("height") if hasattr(crop, "get") else getattr(crop, "height", None)
                size = int(height or size)
            mean = tuple(getattr(feature_extractor, "image_mean", None) or mean)
            std = tuple(getattr(feature_extractor, "image_std", None) or std)
        self.clip_size = size
        self._clip_mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._clip_std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def kind(self) -> str:
        return "view-latent" if self.is_latent else "view-pixel"

    def info(self) -> dict[str, Any]:
        """A summary for ``sds3d prior info``."""
        return {
            "source": self.source,
            "kind": self.kind,
            "resolution": self.resolution,
            "latent": f"{self.latent_channels}x{self.latent_size}x{self.latent_size}",
            "pose_convention": self.pose_convention,
            "prediction_type": self.prediction_type,
            "image_embedding": int(self.camera_projection.config.embedding_dim),
            "image_tokens": self.image_tokens,
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
        pose_convention: PoseConvention | None = None,
        revision: str | None = None,
    ) -> ViewConditionedPrior:
        """Loads a Zero123-family checkpoint (diffusers layout) or the embedded one.

        Args:
            source: ``"embedded"`` (``assets/embedded-view``), a local folder or a hub id.
            allow_download: Let hub ids download (otherwise only local folders / the cache).
            device: Device of the components.
            dtype: Weights dtype (``"float16"`` on CUDA).
            pose_convention: ``"zero123"`` or ``"stable-zero123"``; ``None`` reads
                ``_sds3d_pose_convention`` from ``model_index.json``, else guesses ``stable-zero123``
                when the source's name says "stable", ``zero123`` otherwise.
            revision: Hub revision.

        Raises:
            UserError: a missing or incomplete checkpoint, naming what was tried and the fix.
        """
        import importlib

        if source == "embedded":
            if not (EMBEDDED_VIEW_DIR / "model_index.json").is_file():
                raise UserError(
                    f"the embedded view-conditioned prior is not shipped (looked in {EMBEDDED_VIEW_DIR}); "
                    "use --view-prior none, or a Zero123 diffusers folder / hub id"
                )
            source = str(EMBEDDED_VIEW_DIR)
        folder = resolve_model_folder(source, allow_download=allow_download, revision=revision)
        if not isinstance(folder, Path):
            try:
                from huggingface_hub import snapshot_download

                folder = Path(
                    snapshot_download(folder, revision=revision, local_files_only=not allow_download)
                )
            except Exception as err:  # hub errors vary by version
                raise UserError(
                    f"cannot get the view prior {source!r} ({err}); pass a local folder, or allow downloads "
                    "with --allow-download"
                ) from err
        index_path = folder / "model_index.json"
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(
                f"cannot read {index_path}: {err}; is {folder} a Zero123 diffusers folder?"
            ) from err
        if not isinstance(index, dict):
            raise UserError(f"{index_path} is not a JSON object; re-convert the checkpoint")
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
                raise UserError(f"could not load the {name} of the view prior {source!r}: {err}") from err
        for required in ("unet", "image_encoder", "scheduler"):
            if required not in parts:
                raise UserError(f"the view prior {source!r} has no {required} in {index_path}")
        projection_dir = next(
            (folder / n for n in ("clip_camera_projection", "cc_projection") if (folder / n).is_dir()), None
        )
        if projection_dir is None:
            raise UserError(
                f"the view prior {source!r} has no clip_camera_projection/ (or cc_projection/) folder, the "
                "camera projection every Zero123 checkpoint needs; download the whole repository again, or "
                "re-convert the original checkpoint (threestudio's scripts/convert_zero123_to_diffusers.py)"
            )
        projection = CLIPCameraProjection.load(projection_dir)
        if torch_dtype is not None:
            projection.to(torch_dtype)
        convention = pose_convention or index.get("_sds3d_pose_convention")
        if convention is None:
            convention = "stable-zero123" if "stable" in str(source).lower() else "zero123"
        prior = cls(
            unet=parts["unet"],
            scheduler=parts["scheduler"],
            image_encoder=parts["image_encoder"],
            camera_projection=projection,
            vae=parts.get("vae"),
            feature_extractor=parts.get("feature_extractor"),
            pose_convention=convention,
            source=source,
            image_tokens=index.get("_sds3d_image_tokens", "embeds"),
        )
        return prior.to(device)

    def to(self, device: str | torch.device) -> ViewConditionedPrior:
        """Moves every component (and a set reference) to ``device``."""
        self.device = torch.device(device)
        for module in (self.unet, self.image_encoder, self.camera_projection, self.vae):
            if module is not None:
                module.to(self.device)
        self.alphas_cumprod = self.alphas_cumprod.to(self.device)
        if self.reference is not None:
            self.reference.image_embedding = self.reference.image_embedding.to(self.device)
            self.reference.concat = self.reference.concat.to(self.device)
        return self

    # -- conditioning ----------------------------------------------------------------------------
    def embed_image(self, image: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, D] or [B, 1 + P, D]
        """The CLIP image embedding (bicubic resize to the encoder's size, its mean/std); with patch tokens
        also the patches (:func:`image_tokens`)."""
        x = F.interpolate(
            image.float(),
            size=(self.clip_size, self.clip_size),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).clamp(0.0, 1.0)
        x = (x - self._clip_mean.to(x.device)) / self._clip_std.to(x.device)
        out = self.image_encoder(pixel_values=x.to(self.device, self.dtype))
        return image_tokens(self.image_encoder, out, self.image_tokens)

    def concat_latent(self, image: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, C, h, w]
        """The reference in the denoiser's space, unscaled: the VAE posterior's mode, or the pixels."""
        x = F.interpolate(
            image.float(), size=(self.resolution, self.resolution), mode="bilinear", align_corners=False
        )
        x = x.to(self.device, self.dtype) * 2.0 - 1.0
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mode()

    @torch.no_grad()
    def set_reference(
        self,
        image: Tensor,  # [1, 3, H, W] in [0, 1], composited on white
        elevation_deg: float = 0.0,
        azimuth_deg: float = 0.0,
        distance: float = 3.0,
    ) -> ReferenceView:
        """Encodes the reference picture once (image embedding and concatenated latent)."""
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"the reference must be [1, 3, H, W], got {tuple(image.shape)}")
        self.reference = ReferenceView(
            self.embed_image(image),
            self.concat_latent(image),
            float(elevation_deg),
            float(azimuth_deg),
            float(distance),
        )
        return self.reference

    def encode_prompt(
        self,
        prompts: list[str] | None = None,
        negative: list[str] | None = None,
        elevation_deg: Tensor | None = None,
        azimuth_deg: Tensor | None = None,
        distance: Tensor | float | None = None,
    ) -> ViewConditioning:
        """The conditioning of target views on the reference (text is ignored; views are required).

        Args:
            prompts: Ignored (accepted so every prior shares one signature).
            negative: Ignored.
            elevation_deg: Target elevations ``[B]``.
            azimuth_deg: Target azimuths ``[B]``.
            distance: Target camera distance(s); default the reference's.
        """
        if self.reference is None:
            raise RuntimeError("set_reference() must be called before encoding target views")
        if elevation_deg is None or azimuth_deg is None:
            raise ValueError("the view-conditioned prior needs the target views' elevation and azimuth")
        ref = self.reference
        dist = ref.distance if distance is None else distance
        pose = relative_pose(
            ref.elevation_deg,
            ref.azimuth_deg,
            ref.distance,
            elevation_deg,
            azimuth_deg,
            dist,
            self.pose_convention,
        ).to(self.device)
        return ViewConditioning(
            ref.image_embedding, ref.concat, pose, None if prompts is None else list(prompts)
        )

    def camera_tokens(self, image_embedding: Tensor, pose: Tensor) -> Tensor:  # [B,(L,)D], [B,4] -> [B,L,D]
        """The cross-attention tokens: ``proj(token ⊕ T)`` for each image token (Zero123: one)."""
        return join_camera(self.camera_projection, image_embedding.to(self.dtype), pose.to(self.dtype))

    # -- the prior protocol ----------------------------------------------------------------------
    def encode_images(self, x: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, C, h, w]
        """Images to the denoiser's space (scaled VAE latents, or pixels in [-1, 1]); differentiable."""
        x = x.to(self.dtype) * 2.0 - 1.0
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:  # [B, C, h, w] -> [B, 3, H, W] in [0, 1]
        x = latents.to(self.dtype)
        if self.vae is not None:
            x = self.vae.decode(x / self.scaling_factor).sample
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return add_noise(self.alphas_cumprod, x0, noise, t)

    def predict_noise(
        self,
        x_t: Tensor,  # [B, C, h, w]
        t: Tensor,  # [B]
        cond: ViewConditioning,
        guidance_scale: float = 5.0,
        cfg_convention: CfgConvention = "diffusers",
    ) -> Tensor:  # [B, C, h, w]
        """ε with classifier-free guidance; the unconditional branch zeroes the token and the concat."""
        b = x_t.shape[0]
        t = t.to(self.device).long().reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t

        def fit(v: Tensor) -> Tensor:
            if v.shape[0] == b:
                return v
            if v.shape[0] == 1:
                return v.expand(b, *v.shape[1:])
            raise ValueError(f"conditioning has batch {v.shape[0]}, images have {b}")

        token = self.camera_tokens(fit(cond.image_embedding), fit(cond.pose))
        concat = fit(cond.concat).to(self.dtype)
        if guidance_is_trivial(guidance_scale, cfg_convention):
            x_in, t_in, h_in = torch.cat([x_t.to(self.dtype), concat], 1), t, token
        else:
            x_in = torch.cat(
                [torch.cat([x_t, x_t]).to(self.dtype), torch.cat([torch.zeros_like(concat), concat])], 1
            )
            t_in, h_in = torch.cat([t, t]), torch.cat([torch.zeros_like(token), token])
        out = self.unet(x_in, t_in, encoder_hidden_states=h_in, return_dict=False)[0].float()
        a = self.alphas_cumprod[t_in].view(-1, 1, 1, 1)
        x_noisy = x_in[:, : self.latent_channels].float()
        eps = prediction_to_epsilon(out, x_noisy, a, self.prediction_type)
        if h_in is token:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale, cfg_convention)


def polar_deg(elevation_deg: float) -> float:
    """Polar angle (degrees from +up) of an elevation."""
    return 90.0 - elevation_deg
