"""``DiffusionPrior``: one wrapper over a diffusers text-to-image model used as a 2D prior.

It answers what score distillation and sampling need: encode a prompt (with the unconditional
embedding for classifier-free guidance), encode images to the model's space, add noise at timestep
``t``, predict the noise with guidance in one batched forward, and decode.

Kinds served: latent priors with a VAE and a CLIP text encoder (Stable Diffusion 1.x/2.x,
https://arxiv.org/abs/2112.10752) and pixel priors with any text encoder (DeepFloyd IF stage I,
T5). The model is read from a ``save_pretrained`` folder or a hub id (offline unless
``allow_download``), or built from the embedded defaults (``"embedded-exemplar"``,
``"embedded-unet"``, ``"embedded-unet-latent"``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from recon.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

CfgConvention = Literal["diffusers", "dreamfusion"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]

EMBEDDED_UNET_DIR = Path(__file__).resolve().parent.parent / "assets" / "embedded-unet"
"""Where the embedded trained UNet prior is looked for (``save_pretrained`` pipeline layout)."""

_COMPONENTS = ("unet", "scheduler", "text_encoder", "tokenizer", "vae")
_MAX_TOKENS = 77


def classifier_free_guidance(
    eps_uncond: Tensor,  # [B, C, H, W]
    eps_cond: Tensor,  # [B, C, H, W]
    guidance_scale: float,
    convention: CfgConvention = "diffusers",
) -> Tensor:  # [B, C, H, W]
    """Combines unconditional and conditional noise predictions (https://arxiv.org/abs/2207.12598).

    * ``"diffusers"``: ``ε_u + s (ε_c − ε_u)``; ``s = 1`` is the conditional prediction alone.
    * ``"dreamfusion"``: ``(1 + ω) ε_c − ω ε_u``; ``ω = 0`` is the conditional prediction alone.
      It equals the diffusers form with ``s = 1 + ω`` (DreamFusion's "ω = 100" is diffusers' 101).
    """
    if convention == "diffusers":
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    if convention == "dreamfusion":
        return (1.0 + guidance_scale) * eps_cond - guidance_scale * eps_uncond
    raise ValueError(f"unknown CFG convention {convention!r}; use 'diffusers' or 'dreamfusion'")


def guidance_is_trivial(guidance_scale: float, convention: CfgConvention) -> bool:
    """True when guidance reduces to the conditional prediction (no unconditional forward needed)."""
    return guidance_scale == (1.0 if convention == "diffusers" else 0.0)


def prediction_to_epsilon(
    output: Tensor,  # [B, C, H, W]
    x_t: Tensor,  # [B, C, H, W]
    alpha_bar: Tensor,  # [B, 1, 1, 1]
    prediction_type: PredictionType,
) -> Tensor:  # [B, C, H, W]
    """Converts a model's ε / v / x₀ output at ``x_t`` to an ε prediction."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x₀  ⇒  ε = √ᾱ v + √(1−ᾱ) x_t
        return alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - alpha_bar.sqrt() * output) / (1 - alpha_bar).sqrt()
    raise ValueError(f"unknown prediction type {prediction_type!r}")


@dataclass
class PromptConditioning:
    """Text conditioning of a batch of prompts and its unconditional (negative) counterpart."""

    prompts: list[str]
    """The prompts, one per image (or one for the whole batch)."""
    cond: Tensor  # [B, L, D]
    """Text-encoder hidden states of the prompts."""
    uncond: Tensor  # [B, L, D]
    """Hidden states of the negative prompts (empty strings by default)."""
    cond_mask: Tensor | None = None  # [B, L]
    """Attention mask of the prompt tokens (passed to the denoiser only if it uses one)."""
    uncond_mask: Tensor | None = None  # [B, L]
    """Attention mask of the negative prompt tokens."""

    def __len__(self) -> int:
        return self.cond.shape[0]


class Prior(Protocol):
    """What :class:`priors.sds.SDSLoss` and :func:`ddim_sample` use of a prior."""

    alphas_cumprod: Tensor
    num_train_timesteps: int
    resolution: int
    latent_channels: int
    latent_size: int
    is_latent: bool
    device: torch.device

    def encode_prompt(self, prompts: list[str], negative: list[str] | None = None, **kwargs: Any) -> Any: ...

    def encode_images(self, x: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor: ...

    def predict_noise(
        self, x_t: Tensor, t: Tensor, cond: Any, guidance_scale: float, cfg_convention: CfgConvention
    ) -> Tensor: ...


def add_noise(
    alphas_cumprod: Tensor,  # [T]
    x0: Tensor,  # [B, C, H, W]
    noise: Tensor,  # [B, C, H, W]
    t: Tensor,  # [B] integer timesteps
) -> Tensor:  # [B, C, H, W]
    """``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`` (the DDPM forward process, https://arxiv.org/abs/2006.11239)."""
    a = alphas_cumprod.to(x0.device)[t.to(x0.device).long()].to(x0.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _source_error(source: str, tried: Path, why: str) -> UserError:
    return UserError(
        f"no diffusion prior found for {source!r}: {why} (tried the local folder {tried} and the hub id "
        f"{source!r} in the Hugging Face cache). Fix: download it with allow_download=True / "
        "`--allow-download`, pass a local save_pretrained folder, or use --prior embedded-exemplar."
    )


def _looks_like_hub_id(source: str) -> bool:
    if source.startswith((".", "/", "~")) or "\\" in source:
        return False
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(parts)


def resolve_model_folder(
    source: str, allow_download: bool = False, revision: str | None = None
) -> Path | str:
    """Finds the folder (or confirms the hub id) that holds a pipeline's ``model_index.json``.

    Returns:
        A local folder path, or the hub id when the components should be read through the hub cache.

    Raises:
        UserError: if neither a local folder nor a (cached or downloadable) hub repo exists.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise UserError(
                f"{local.resolve()} is not a diffusers pipeline folder (no model_index.json); "
                "pass a folder written by `pipeline.save_pretrained(...)`"
            )
        return local
    if not _looks_like_hub_id(source):
        raise _source_error(source, local.resolve(), "the local folder does not exist")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        hf_hub_download(source, "model_index.json", revision=revision, local_files_only=not allow_download)
    except LocalEntryNotFoundError as err:
        why = "it is not in the local cache" if not allow_download else f"it could not be downloaded ({err})"
        raise _source_error(source, local.resolve(), why) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise _source_error(source, local.resolve(), f"the hub lookup failed ({type(err).__name__})") from err
    return source


def _read_model_index(folder: Path | str, allow_download: bool, revision: str | None) -> dict[str, Any]:
    if isinstance(folder, Path):
        path = folder / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        offline = not allow_download
        path = Path(hf_hub_download(folder, "model_index.json", revision=revision, local_files_only=offline))
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(
            f"cannot read {path} ({type(err).__name__}: {str(err)[:200]}); it must be the JSON a diffusers "
            "`pipeline.save_pretrained(...)` writes: re-save or re-download the prior"
        ) from err
    if not isinstance(index, dict):
        raise UserError(
            f"{path} must hold a JSON object mapping component names to [library, class], got a "
            f"{type(index).__name__}; re-save or re-download the prior"
        )
    for name in _COMPONENTS:
        entry = index.get(name)
        if entry is None or (
            isinstance(entry, list)
            and len(entry) == 2
            and all(e is None or isinstance(e, str) for e in entry)
        ):
            continue
        raise UserError(
            f'{path}: {name!r} must be [library, class] (e.g. ["diffusers", "UNet2DConditionModel"]), '
            f"got {entry!r}; re-save or re-download the prior"
        )
    return index


class DiffusionPrior:
    """A diffusers text-to-image model (UNet, scheduler, text encoder, optional VAE) used as a prior.

    Build it with :meth:`from_pretrained`. Pixel priors (no VAE) work on images mapped to ``[-1, 1]``;
    latent priors encode through the VAE with its scaling factor.
    """

    embedded_meta: dict[str, Any] | None = None
    """The ``embedded.json`` of an embedded prior's folder (what it was trained on), else ``None``."""
    prompt_vocabulary: Literal["world", "primitives"] | None = None
    """``"world"``: an embedded prior trained on :mod:`recon.data.objects`, whose prompts are
    canonicalised through :func:`priors.vocabulary.canonical_prompt` before encoding; ``"primitives"``:
    an embedded prior of the five primitives (prompts as given); ``None``: any other model."""

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        text_encoder: Any,
        tokenizer: Any,
        vae: Any | None = None,
        source: str = "",
        pass_attention_mask: bool = False,
    ) -> None:
        """Wraps already-built components (see :meth:`from_pretrained` for the usual way in).

        Args:
            unet: A ``UNet2DConditionModel`` (or any module with its call signature).
            scheduler: A diffusers noise scheduler (its ``alphas_cumprod`` and ``prediction_type``
                are used).
            text_encoder: A ``transformers`` encoder whose first output is the hidden states.
            tokenizer: Its tokenizer.
            vae: An ``AutoencoderKL`` for latent priors, or ``None`` for pixel priors.
            source: Where it came from (for messages and ``info``).
            pass_attention_mask: Pass the prompt's attention mask to the denoiser as
                ``encoder_attention_mask`` (off for SD and IF, as in their pipelines).
        """
        import torch

        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.source = source
        self.pass_attention_mask = pass_attention_mask
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).to(self.device)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type: PredictionType = scheduler.config.get("prediction_type", "epsilon")
        if vae is not None:
            self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.scaling_factor = float(vae.config.get("scaling_factor", 0.18215))
            self.shift_factor = float(vae.config.get("shift_factor", None) or 0.0)
        else:
            self.vae_scale_factor, self.scaling_factor, self.shift_factor = 1, 1.0, 0.0
        sample_size = unet.config.sample_size
        self.latent_size = int(sample_size if isinstance(sample_size, int) else sample_size[0])
        self.latent_channels = int(unet.config.in_channels)
        self.resolution = self.latent_size * self.vae_scale_factor

    @property
    def is_latent(self) -> bool:
        """True for latent priors (a VAE maps images to the denoiser's space)."""
        return self.vae is not None

    @property
    def kind(self) -> str:
        """``"latent"`` or ``"pixel"``."""
        return "latent" if self.is_latent else "pixel"

    def info(self) -> dict[str, Any]:
        """A summary for ``sds3d prior info``."""
        return {
            "source": self.source,
            "kind": self.kind,
            "resolution": self.resolution,
            "latent": f"{self.latent_channels}x{self.latent_size}x{self.latent_size}",
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "text_encoder": type(self.text_encoder).__name__,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        allow_download: bool = False,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        attention_slicing: bool = False,
        revision: str | None = None,
        variant: str | None = None,
    ) -> DiffusionPrior | Any:
        """Builds a prior from a hub id, a local ``save_pretrained`` folder or an embedded name.

        Args:
            source: ``"embedded"`` (the default embedded prior, see :mod:`priors`),
                ``"embedded-exemplar"`` (the closed-form exemplar prior), ``"embedded-unet"`` (the
                trained prior in ``assets/embedded-unet/``), ``"embedded-unet-latent"`` (its latent
                variant in ``assets/embedded-unet-latent/``), a local folder (Stable Diffusion or
                DeepFloyd IF pipeline layout with ``model_index.json``) or a hub id.
            allow_download: Let the hub be reached; otherwise only the local cache is read.
            device: Device for the components.
            dtype: Weights dtype (``"float16"``, ``"bfloat16"``, ``torch.float16``...; CUDA use).
            attention_slicing: Compute attention in slices to save memory (CUDA use).
            revision: Hub revision (branch, tag or commit).
            variant: Weights variant (e.g. ``"fp16"``) for hub checkpoints that ship one.

        Returns:
            A :class:`DiffusionPrior`, or an :class:`priors.exemplar.ExemplarPrior` for
            ``"embedded-exemplar"``.

        Raises:
            UserError: when the checkpoint cannot be found; the message names what was tried and the fix.
        """
        import torch

        from priors import resolve_prior_name

        source = resolve_prior_name(source)
        if source == "embedded-exemplar":
            from priors.exemplar import ExemplarPrior

            return ExemplarPrior.from_procedural(device=device)
        if source in ("embedded-unet", "embedded-unet-latent"):
            from priors import EMBEDDED_LATENT_DIR

            folder = EMBEDDED_UNET_DIR if source == "embedded-unet" else EMBEDDED_LATENT_DIR
            if not (folder / "model_index.json").is_file():
                raise UserError(
                    f"the {source} prior's weights are not shipped (looked in {folder}); use --prior "
                    "embedded-exemplar, a hub id with --allow-download, or a local folder"
                )
            source = str(folder)

        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        folder = resolve_model_folder(source, allow_download=allow_download, revision=revision)
        index = _read_model_index(folder, allow_download, revision)
        common: dict[str, Any] = {"local_files_only": not allow_download}
        if isinstance(folder, str):
            common["revision"] = revision
        components: dict[str, Any] = {}
        for name in _COMPONENTS:
            entry = index.get(name)
            if not entry or entry[0] is None or entry[1] is None:
                continue
            library, class_name = entry
            try:
                component_cls = getattr(importlib.import_module(library), class_name)
            except (ImportError, AttributeError) as err:
                raise UserError(
                    f"the prior {source!r} names {library}.{class_name} for its {name} in model_index.json, "
                    f"which this install cannot import ({err}); install that library or fix the file"
                ) from err
            kwargs = dict(common)
            if name in ("unet", "vae", "text_encoder"):
                if torch_dtype is not None:
                    kwargs["torch_dtype"] = torch_dtype
                if variant is not None:
                    kwargs["variant"] = variant
            try:
                components[name] = component_cls.from_pretrained(folder, subfolder=name, **kwargs)
            except (OSError, ValueError) as err:
                raise UserError(
                    f"could not load the {name} ({class_name}) of the prior {source!r}: {err}. Fix: check "
                    "the folder is complete, or download it with allow_download=True / `--allow-download`"
                ) from err
        if "unet" not in components or "scheduler" not in components:
            raise UserError(f"the prior {source!r} has no unet/scheduler in its model_index.json")
        if "text_encoder" not in components and index.get("_sds3d_text_encoder") == "minilm":
            from priors.text import load_sentence_encoder

            components["tokenizer"], components["text_encoder"] = load_sentence_encoder()
        if "text_encoder" not in components or "tokenizer" not in components:
            raise UserError(f"the prior {source!r} has no text encoder / tokenizer; text priors need both")
        prior = cls(
            **components,
            source=source,
            pass_attention_mask=bool(index.get("_sds3d_encoder_attention_mask", False)),
        )
        prior.embedded_meta, prior.prompt_vocabulary = _embedded_vocabulary(folder)
        prior.to(device)
        if prior.device.type == "cpu":
            # oneDNN's convolutions skip a layout reorder per call in channels-last: the small
            # embedded UNet's guided step took 24% less time (bench/sds_step.py's case, 2 threads).
            prior.unet.to(memory_format=torch.channels_last)
        if attention_slicing:
            prior.unet.set_attention_slice("auto")
        return prior

    def to(self, device: str | torch.device) -> DiffusionPrior:
        """Moves every component to ``device``."""
        import torch

        self.device = torch.device(device)
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.to(self.device)
        self.alphas_cumprod = self.alphas_cumprod.to(self.device)
        return self

    def _encode_text(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        import torch

        # SD: the tokenizer's 77; IF: 77 T5 tokens (its pipeline's choice, not T5's 512).
        max_length = min(
            int(getattr(self.tokenizer, "model_max_length", _MAX_TOKENS) or _MAX_TOKENS), _MAX_TOKENS
        )
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        # The SD pipeline gives CLIP no attention mask (its causal encoder was trained without one);
        # other encoders (T5 for IF, BERT) get it, as in their pipelines.
        is_clip = "clip" in getattr(self.text_encoder.config, "model_type", "")
        use_mask = not is_clip or getattr(self.text_encoder.config, "use_attention_mask", False)
        with torch.no_grad():
            out = self.text_encoder(ids, attention_mask=mask if use_mask else None)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return hidden.to(self.dtype), mask

    def encode_prompt(
        self,
        prompts: list[str],
        negative: list[str] | None = None,
        elevation_deg: Tensor | None = None,
        azimuth_deg: Tensor | None = None,
    ) -> PromptConditioning:
        """Encodes prompts and their negatives (empty by default) for classifier-free guidance.

        A prior trained on the embedded world (``prompt_vocabulary == "world"``) encodes the canonical
        caption of each prompt, view suffix kept (``"a chair, red, side view"`` -> ``"a red chair, side
        view"``); a negative prompt outside its vocabulary is encoded as given.

        Args:
            prompts: One prompt per image (view-dependent suffixes already appended by the caller).
            negative: Negative prompts, one per prompt (or one for all); ``None`` means ``""``.
            elevation_deg: Ignored (text priors take views through prompt suffixes); accepted so that
                every prior shares one signature.
            azimuth_deg: Ignored, as ``elevation_deg``.

        Returns:
            The conditioning, ``[B, L, D]`` hidden states for prompts and negatives.

        Raises:
            UserError: for a prompt outside an embedded world prior's vocabulary (the message lists it).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        negative = [""] * len(prompts) if negative is None else list(negative)
        if len(negative) == 1 and len(prompts) > 1:
            negative = negative * len(prompts)
        if len(negative) != len(prompts):
            raise UserError(f"got {len(negative)} negative prompts for {len(prompts)} prompts")
        if self.prompt_vocabulary == "world":
            from priors.vocabulary import canonical_prompt

            prompts = [canonical_prompt(p) for p in prompts]
            negative = [_canonical_or_given(n) for n in negative]
        hidden, mask = self._encode_text(list(prompts) + negative)
        b = len(prompts)
        return PromptConditioning(list(prompts), hidden[:b], hidden[b:], mask[:b], mask[b:])

    def encode_images(self, x: Tensor) -> Tensor:  # x: [B, 3, H, W] in [0, 1] -> [B, C, h, w]
        """Maps images to the denoiser's space (gradients flow through the VAE encoder)."""
        x = x.to(self.dtype) * 2.0 - 1.0
        if self.vae is None:
            return x
        posterior = self.vae.encode(x).latent_dist
        return (posterior.mean - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:  # [B, C, h, w] -> [B, 3, H, W] in [0, 1]
        """Maps denoiser-space samples back to images in ``[0, 1]``."""
        x = latents.to(self.dtype)
        if self.vae is not None:
            x = self.vae.decode(x / self.scaling_factor + self.shift_factor).sample
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:  # [B, C, h, w], [B]
        """``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε``."""
        return add_noise(self.alphas_cumprod, x0, noise, t)

    def predict_noise(
        self,
        x_t: Tensor,  # [B, C, h, w]
        t: Tensor,  # [B] integer timesteps
        cond: PromptConditioning,
        guidance_scale: float = 7.5,
        cfg_convention: CfgConvention = "diffusers",
    ) -> Tensor:  # [B, C, h, w]
        """ε prediction with classifier-free guidance, unconditional and conditional in one forward.

        The denoiser's v / x₀ outputs are converted to ε; a learned-variance output (IF: 2C channels)
        keeps its first C channels. ``cond`` of batch 1 is broadcast to ``B``.
        """
        import torch

        b = x_t.shape[0]
        t = t.to(self.device).long().reshape(-1).expand(b) if t.numel() == 1 else t.to(self.device).long()

        def fit(h: Tensor | None) -> Tensor | None:
            if h is None or h.shape[0] == b:
                return h
            if h.shape[0] == 1:
                return h.expand(b, *h.shape[1:])
            raise ValueError(f"conditioning has batch {h.shape[0]}, images have {b}")

        cond_h, cond_m = fit(cond.cond), fit(cond.cond_mask)
        if guidance_is_trivial(guidance_scale, cfg_convention):
            x_in, t_in, h_in, m_in = x_t, t, cond_h, cond_m
        else:
            uncond_h, uncond_m = fit(cond.uncond), fit(cond.uncond_mask)
            x_in, t_in = torch.cat([x_t, x_t]), torch.cat([t, t])
            h_in = torch.cat([uncond_h, cond_h])
            m_in = None if cond_m is None else torch.cat([uncond_m, cond_m])
        kwargs = {"encoder_attention_mask": m_in} if self.pass_attention_mask and m_in is not None else {}
        out = self.unet(x_in.to(self.dtype), t_in, encoder_hidden_states=h_in, return_dict=False, **kwargs)[0]
        out = out.float()
        if out.shape[1] == 2 * x_t.shape[1]:  # learned variance (IF): [ε, v_var]
            out = out[:, : x_t.shape[1]]
        a = self.alphas_cumprod[t_in].view(-1, 1, 1, 1)
        eps = prediction_to_epsilon(out, x_in.float(), a, self.prediction_type)
        if x_in is x_t:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale, cfg_convention)


def _embedded_vocabulary(folder: Path | str) -> tuple[dict[str, Any] | None, str | None]:
    """``(embedded.json, prompt vocabulary)`` of a local prior folder: ``"world"`` when it was trained on
    the embedded world (``"data": "world"`` or a list of kinds), ``"primitives"`` for an older embedded
    prior, ``(None, None)`` for anything else (hub ids, diffusers folders)."""
    if not isinstance(folder, Path) or not (folder / "embedded.json").is_file():
        return None, None
    try:
        meta = json.loads((folder / "embedded.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, None  # a model card, not needed to run the prior
    if not isinstance(meta, dict):
        return None, None
    return meta, "world" if meta.get("data") == "world" or "kinds" in meta else "primitives"


def _canonical_or_given(text: str) -> str:
    """A negative prompt's canonical caption when it names an object of the world, else the text."""
    if not text.strip():
        return text
    from priors.vocabulary import canonical_prompt

    try:
        return canonical_prompt(text)
    except UserError:
        return text


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending DDIM timesteps, evenly spaced with "trailing" spacing (ends at ``T − 1``)."""
    import numpy as np

    if not 1 <= steps <= num_train_timesteps:
        raise UserError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    ts = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(int) - 1
    return [int(t) for t in ts]


def ddim_sample(
    prior: Prior,
    cond: Any,
    n: int,
    steps: int = 50,
    guidance_scale: float = 7.5,
    cfg_convention: CfgConvention = "diffusers",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:  # [n, 3, H, W] in [0, 1]
    """Deterministic DDIM sampling (η = 0, https://arxiv.org/abs/2010.02502) through any prior.

    Args:
        prior: A prior (:class:`DiffusionPrior` or the exemplar prior).
        cond: Its conditioning for one prompt (broadcast) or ``n`` prompts.
        n: Number of images.
        steps: Denoising steps.
        guidance_scale: Classifier-free guidance scale, in ``cfg_convention``.
        cfg_convention: ``"diffusers"`` or ``"dreamfusion"`` (see :func:`classifier_free_guidance`).
        generator: Random generator for the initial noise (CPU).
        progress: Show a tqdm bar.

    Returns:
        Decoded images in ``[0, 1]``.
    """
    import torch
    from tqdm.auto import tqdm

    shape = (n, prior.latent_channels, prior.latent_size, prior.latent_size)
    x = torch.randn(shape, generator=generator).to(prior.device)
    alphas = prior.alphas_cumprod.to(prior.device)
    ts = ddim_timesteps(prior.num_train_timesteps, steps)
    with torch.no_grad():
        for i, t in enumerate(tqdm(ts, desc="DDIM", disable=not progress)):
            a_t = alphas[t]
            a_prev = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=alphas.device)
            eps = prior.predict_noise(x, torch.full((n,), t), cond, guidance_scale, cfg_convention)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if not prior.is_latent:  # pixel priors: keep x₀ in the image range
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return prior.decode(x)
