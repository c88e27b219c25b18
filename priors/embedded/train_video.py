"""Trains the embedded video prior (a miniature, pixel-space Stable Video Diffusion) on procedural head clips.

``python -m priors.embedded.train_video --out DIR --minutes 120``

Each example is one clip of :mod:`recon.data.head_clips`: an anny head with random shape and colours
seen along a camera path (spatial) or an expression ramp (temporal), with its reference portrait and
the per-frame landmarks. The UNet (:func:`priors.video.build_video_components`) sees each noisy frame ⊕
the reference ⊕ the frame's landmark heatmap and cross-attends to the reference's image embedding; both
reference conditions are zeroed together with probability ``uncond_prob`` (classifier-free guidance).
A clip, its reference and its landmarks are mirrored left-right together with probability 1/2.
v-prediction on a cosine schedule, AdamW, EMA, as the other embedded priors.

Seeded and resumable: ``DIR/ckpt/state.pt`` is written atomically every ``checkpoint_minutes`` with the
export (EMA weights, the diffusers layout :meth:`priors.video.VideoPrior.from_pretrained` reads); a run
started on a folder with a checkpoint continues from it; SIGTERM stops it cleanly. The clip bank is
rendered once and cached (``bank_cache``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from priors.embedded.models import SchedulerConfig, build_scheduler
from priors.embedded.train import _ema_update
from priors.video import SVD_ADDED_TIME_IDS, VideoModelConfig, build_video_components, landmark_maps
from recon.atomic import atomic_torch_save
from recon.data.head_clips import CLIP_DISTANCE, CLIP_FOV_DEG, render_clip_bank


@dataclass
class VideoTrainConfig:
    """One training run of the embedded video prior."""

    out: Path = Path("outputs/embedded-video")
    """Output folder (export + ``ckpt/``); a checkpoint there is resumed."""
    minutes: float = 120.0
    """Wall-clock budget (resumed runs count the time already spent)."""
    max_steps: int = 1_000_000
    seed: int = 0
    lr: float = 3e-4
    warmup_steps: int = 200
    ema_decay: float = 0.998
    checkpoint_minutes: float = 5.0
    threads: int = 2
    batch_size: int = 4
    """Clips per step."""
    uncond_prob: float = 0.1
    """Probability that the reference embedding and latent are both zeroed."""
    bank_clips: int = 4000
    """Clips rendered for training (cached in ``bank_cache``)."""
    bank_seed: int = 0
    bank_cache: Path | None = Path("outputs/cache/head_clip_bank.pt")
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    progress: bool = True
    log_every: int = 100


def load_or_render_clip_bank(cfg: VideoTrainConfig) -> dict:
    path = cfg.bank_cache
    size, frames = cfg.model.resolution, cfg.model.num_frames
    if path is not None and path.is_file():
        bank = torch.load(path, weights_only=False)
        meta = bank.get("meta", {})
        if (meta.get("size"), meta.get("num_frames"), meta.get("seed")) == (
            size,
            frames,
            cfg.bank_seed,
        ) and meta.get("count", 0) >= cfg.bank_clips:
            return bank
        print(f"[embedded-video] {path} holds another bank ({meta}); rendering a new one", flush=True)
    bank = render_clip_bank(cfg.bank_clips, size, frames, cfg.bank_seed)
    if path is not None:
        atomic_torch_save(bank, path)
    return bank


class VideoTrainer:
    """Holds the state of one run; :meth:`run` trains until the budget is spent."""

    def __init__(self, cfg: VideoTrainConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        parts = build_video_components(cfg.model)
        self.unet, self.encoder, self.processor = (
            parts["unet"],
            parts["image_encoder"],
            parts["feature_extractor"],
        )
        self.scheduler = build_scheduler(cfg.scheduler)
        self.modules = torch.nn.ModuleDict({"unet": self.unet, "encoder": self.encoder})
        self.ema = copy.deepcopy(self.modules).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.modules.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step, self.elapsed, self.losses = 0, 0.0, []
        self._stop = False
        self.bank = load_or_render_clip_bank(cfg)
        self.count = min(cfg.bank_clips, int(self.bank["frames"].shape[0]))
        alphas = torch.as_tensor(self.scheduler.alphas_cumprod, dtype=torch.float32)
        self.sqrt_a, self.sqrt_1ma = alphas.sqrt(), (1 - alphas).sqrt()
        self.ckpt_path = cfg.out / "ckpt" / "state.pt"
        if self.ckpt_path.is_file():
            self._load(self.ckpt_path)

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stop = True

    def state_dict(self) -> dict:
        return {
            "modules": self.modules.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "elapsed": self.elapsed,
            "losses": self.losses,
        }

    def _load(self, path: Path) -> None:
        s = torch.load(path, weights_only=False)
        self.modules.load_state_dict(s["modules"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        self.generator.set_state(s["generator"])
        self.step, self.elapsed, self.losses = s["step"], s["elapsed"], s["losses"]

    def checkpoint(self) -> None:
        atomic_torch_save(self.state_dict(), self.ckpt_path)
        self.export(self.cfg.out)

    def export(self, folder: Path) -> None:
        """The EMA weights in the Stable Video Diffusion diffusers layout (each component atomically)."""
        folder.mkdir(parents=True, exist_ok=True)
        parts = {
            "unet": self.ema["unet"],
            "image_encoder": self.ema["encoder"],
            "feature_extractor": self.processor,
            "scheduler": self.scheduler,
        }
        for name, module in parts.items():
            tmp = folder / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if name == "scheduler":
                module.save_config(tmp)
            elif name == "feature_extractor":
                module.save_pretrained(tmp)
            else:
                module.save_pretrained(tmp, safe_serialization=True)
            shutil.rmtree(folder / name, ignore_errors=True)
            os.replace(tmp, folder / name)
        index = {
            "_class_name": "StableVideoDiffusionPipeline",
            "_diffusers_version": __import__("diffusers").__version__,
            "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "scheduler": ["diffusers", "DDPMScheduler"],
            "vae": [None, None],
            "_sds3d_added_time_ids": list(SVD_ADDED_TIME_IDS),
        }
        meta = {
            "kind": "video (miniature Stable Video Diffusion, pixel space, landmark-driven)",
            "resolution": self.cfg.model.resolution,
            "num_frames": self.cfg.model.num_frames,
            "camera": {"distance": CLIP_DISTANCE, "fov_deg": CLIP_FOV_DEG},
            "bank": {"clips": self.count, "seed": self.cfg.bank_seed},
            "steps": self.step,
            "train_minutes": round(self.elapsed / 60.0, 2),
            "batch_size": self.cfg.batch_size,
            "last_loss": float(sum(self.losses[-50:]) / max(1, len(self.losses[-50:]))),
            "seed": self.cfg.seed,
        }
        for name, obj in (("model_index.json", index), ("embedded.json", meta)):
            tmp = folder / f".{name}.tmp"
            tmp.write_text(json.dumps(obj, indent=2) + "\n")
            os.replace(tmp, folder / name)

    def sample_clips(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(frames [B, T, 3, S, S], reference [B, 3, S, S], landmark maps [B, T, 1, S, S])`` in [0, 1]."""
        g, S = self.generator, self.cfg.model.resolution
        idx = torch.randint(self.count, (b,), generator=g)
        frames = self.bank["frames"][idx].float().div(255).permute(0, 1, 4, 2, 3)
        ref = self.bank["reference"][idx].float().div(255).permute(0, 3, 1, 2)
        marks = self.bank["landmarks"][idx].float().clone()  # [B, T, L, 2]
        flip = torch.rand(b, generator=g) < 0.5
        frames[flip] = frames[flip].flip(-1)
        ref[flip] = ref[flip].flip(-1)
        marks[flip, ..., 0] = S - marks[flip, ..., 0]
        T = frames.shape[1]
        maps = landmark_maps(marks.flatten(0, 1), S, S).view(b, T, 1, S, S)
        return frames, ref, maps

    def _lr(self) -> float:
        return self.cfg.lr * min(1.0, (self.step + 1) / self.cfg.warmup_steps)

    def train_step(self) -> float:
        cfg, g = self.cfg, self.generator
        frames, ref, maps = self.sample_clips(cfg.batch_size)
        b, T = frames.shape[:2]
        x0 = frames * 2 - 1
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, len(self.sqrt_a), (b,), generator=g)
        sa, s1 = self.sqrt_a[t].view(-1, 1, 1, 1, 1), self.sqrt_1ma[t].view(-1, 1, 1, 1, 1)
        x_t = sa * x0 + s1 * noise
        target = sa * noise - s1 * x0 if cfg.scheduler.prediction_type == "v_prediction" else noise
        keep = (torch.rand(b, generator=g) >= cfg.uncond_prob).float()
        emb = self.encoder(pixel_values=(ref - 0.5) / 0.5).image_embeds * keep[:, None]  # processor mean/std
        concat = ((ref * 2 - 1) * keep.view(-1, 1, 1, 1))[:, None].expand(-1, T, -1, -1, -1)
        ids = torch.tensor([SVD_ADDED_TIME_IDS]).expand(b, -1)
        pred = self.unet(torch.cat([x_t, concat, maps], 2), t, emb[:, None], ids).sample
        loss = F.mse_loss(pred, target)
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.modules.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        _ema_update(self.ema, self.modules, self.step, cfg.ema_decay)
        return float(loss.detach())

    def run(self) -> Path:
        cfg = self.cfg
        budget = cfg.minutes * 60.0
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._request_stop)
        start, last_ckpt = time.monotonic() - self.elapsed, time.monotonic()
        print(f"[embedded-video] resuming at step {self.step}, {self.elapsed / 60:.1f} min", flush=True)
        bar = tqdm(desc="video", disable=not cfg.progress, initial=self.step)
        while self.step < cfg.max_steps and (time.monotonic() - start) < budget and not self._stop:
            self.losses.append(self.train_step())
            bar.update(1)
            self.elapsed = time.monotonic() - start
            if cfg.log_every and self.step % cfg.log_every == 0:
                mean = sum(self.losses[-cfg.log_every :]) / len(self.losses[-cfg.log_every :])
                print(
                    f"[embedded-video] step {self.step} loss {mean:.4f} {self.elapsed / 60:.1f} min",
                    flush=True,
                )
            if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                self.checkpoint()
                last_ckpt = time.monotonic()
        bar.close()
        self.elapsed = time.monotonic() - start
        self.checkpoint()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        print(f"[embedded-video] {self.step} steps in {self.elapsed / 60:.1f} min -> {cfg.out}", flush=True)
        return cfg.out


def main(cfg: VideoTrainConfig) -> Path:
    """Runs (or resumes) one training run."""
    return VideoTrainer(cfg).run()


if __name__ == "__main__":
    import tyro

    main(tyro.cli(VideoTrainConfig))
