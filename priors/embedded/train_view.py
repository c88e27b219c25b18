"""Trains the embedded view-conditioned prior (a miniature Zero123) on pairs of procedural renders.

``python -m priors.embedded.train_view --out DIR --minutes 120``

Each example is one procedural object (kind, pattern, colours) seen from two random cameras of the
world bank (:mod:`priors.embedded.world`): the first view is the reference, the second the target,
and ``T`` their relative camera in the stable-zero123 convention (:func:`priors.view.relative_pose`).
The UNet sees the noisy target ⊕ the reference and cross-attends to ``proj(CLIP(reference) ⊕ T)``;
both conditions are zeroed together with probability ``uncond_prob`` (classifier-free guidance, as
Zero123's sampling does). The same zoom is applied to both views with probability ``zoom_prob``, so
the prior also knows objects filling more of the frame (reference pictures are recentred to 0.9 of
it). v-prediction on a cosine schedule, AdamW, EMA, as the text priors (:mod:`priors.embedded.train`).

Seeded and resumable: ``DIR/ckpt/state.pt`` is written atomically every ``checkpoint_minutes``
together with the export (EMA weights, diffusers layout read by
:meth:`priors.view.ViewConditionedPrior.from_pretrained`); a run started on a folder with a
checkpoint continues from it; SIGTERM stops it cleanly.
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

from priors.embedded.models import SchedulerConfig, ViewModelConfig, build_scheduler, build_view_components
from priors.embedded.train import _ema_update
from priors.embedded.world import WorldBank, WorldBankConfig, load_or_render_world_bank, sample_colors
from priors.view import ImageTokens, image_tokens, join_camera, relative_pose
from recon.atomic import atomic_torch_save

POSE_CONVENTION = "stable-zero123"


@dataclass
class ViewTrainConfig:
    """One training run of the embedded view-conditioned prior."""

    out: Path = Path("outputs/embedded-view")
    """Output folder (export + ``ckpt/``); a checkpoint there is resumed."""
    minutes: float = 120.0
    """Wall-clock budget (resumed runs count the time already spent)."""
    max_steps: int = 1_000_000
    """Step budget."""
    seed: int = 0
    lr: float = 4e-4
    warmup_steps: int = 200
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """``cosine``: after the warm-up the rate decays to 0 at ``max_steps`` (set ``max_steps``)."""
    init: Path | None = None
    """An exported folder (this trainer's layout) whose weights start a new run: a fine-tune. Ignored
    when ``out`` holds a checkpoint (the run resumes instead)."""
    ema_decay: float = 0.998
    checkpoint_minutes: float = 5.0
    threads: int = 1
    batch_size: int = 24
    image_tokens: ImageTokens = "embeds"
    """What the UNet cross-attends to: ``embeds`` (one token, Zero123) or ``patches`` (the embedding and
    the reference's 8x8 patch tokens, each joined with the camera: colour and pattern where they are on
    the reference; :func:`priors.view.image_tokens`). Same weights either way, so ``--init`` works across."""
    uncond_prob: float = 0.1
    """Probability that reference token and concat are both zeroed."""
    zoom_prob: float = 0.4
    """Probability of a shared zoom of reference and target."""
    zoom_range: tuple[float, float] = (1.0, 1.3)
    """Zoom factors (1.3: an object filling 0.82 of the frame fills it entirely)."""
    model: ViewModelConfig = field(
        default_factory=lambda: ViewModelConfig(
            block_out_channels=(32, 64, 128),
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            layers_per_block=2,
        )
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    bank: WorldBankConfig = field(default_factory=WorldBankConfig)
    bank_cache: Path | None = Path("outputs/cache/world_bank.pt")
    progress: bool = True
    log_every: int = 100
    """Print one line (step, mean loss, minutes) every this many steps (0: never)."""


def _zoom(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Zooms images ``[B, 3, H, W]`` about their centre by ``factor [B]`` (>= 1), white outside."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1.0 / factor
    theta[:, 1, 1] = 1.0 / factor
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1.0


class ViewTrainer:
    """Holds the state of one run; :meth:`run` trains until the budget is spent."""

    def __init__(self, cfg: ViewTrainConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        parts = build_view_components(cfg.model)
        self.unet, self.encoder = parts["unet"], parts["image_encoder"]
        self.projection, self.processor = parts["clip_camera_projection"], parts["feature_extractor"]
        self.scheduler = build_scheduler(cfg.scheduler)
        self.modules = torch.nn.ModuleDict(
            {"unet": self.unet, "encoder": self.encoder, "proj": self.projection}
        )
        self.ema = copy.deepcopy(self.modules).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.modules.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step, self.elapsed, self.losses = 0, 0.0, []
        self.phases: list[dict] = []
        self._stop = False
        self.bank: WorldBank = load_or_render_world_bank(cfg.bank, cfg.bank_cache, progress=cfg.progress)
        alphas = torch.as_tensor(self.scheduler.alphas_cumprod, dtype=torch.float32)
        self.sqrt_a, self.sqrt_1ma = alphas.sqrt(), (1 - alphas).sqrt()
        self.ckpt_path = cfg.out / "ckpt" / "state.pt"
        if self.ckpt_path.is_file():
            self._load(self.ckpt_path)
        elif cfg.init is not None:
            self._init_from(Path(cfg.init))
        entries = [list(e) for e in self.bank.entries]
        if not self.phases or self.phases[-1].get("entries") != entries:
            self.phases.append({"from_step": self.step, "entries": entries})

    def _init_from(self, folder: Path) -> None:
        """Starts from the weights of an export (a fine-tune); the record goes into ``phases``."""
        from priors.view import ViewConditionedPrior
        from recon.errors import UserError

        try:
            prior = ViewConditionedPrior.from_pretrained(str(folder))
        except UserError as err:
            raise UserError(
                f"--init {folder}: not a view-prior export ({err}); give a folder written by "
                "priors.embedded.train_view (e.g. assets/embedded-view)"
            ) from err
        for name, module in (
            ("unet", prior.unet), ("encoder", prior.image_encoder), ("proj", prior.camera_projection)
        ):  # fmt: skip
            self.modules[name].load_state_dict(module.state_dict())
        self.ema.load_state_dict(self.modules.state_dict())
        meta_path = folder / "embedded.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.phases.append({"init": str(folder), "init_steps": meta.get("steps"), "from_step": 0})

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
            "phases": self.phases,
        }

    def _load(self, path: Path) -> None:
        s = torch.load(path, weights_only=False)
        self.modules.load_state_dict(s["modules"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        self.generator.set_state(s["generator"])
        self.step, self.elapsed, self.losses = s["step"], s["elapsed"], s["losses"]
        self.phases = s.get("phases", [])

    def checkpoint(self) -> None:
        atomic_torch_save(self.state_dict(), self.ckpt_path)
        self.export(self.cfg.out)

    def export(self, folder: Path) -> None:
        """The EMA weights in the Zero123 diffusers layout (each component written atomically)."""
        folder.mkdir(parents=True, exist_ok=True)
        parts = {
            "unet": self.ema["unet"],
            "image_encoder": self.ema["encoder"],
            "clip_camera_projection": self.ema["proj"],
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
            "_class_name": "Zero123Pipeline",
            "_diffusers_version": __import__("diffusers").__version__,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "clip_camera_projection": ["priors.view", "CLIPCameraProjection"],
            "scheduler": ["diffusers", "DDPMScheduler"],
            "vae": [None, None],
            "_sds3d_pose_convention": POSE_CONVENTION,
            "_sds3d_image_tokens": self.cfg.image_tokens,
        }
        meta = {
            "kind": "view-conditioned (miniature Zero123, pixel space)",
            "pose_convention": POSE_CONVENTION,
            "resolution": self.cfg.model.resolution,
            "camera": {"distance": self.cfg.bank.distance, "fov_deg": self.cfg.bank.fov_deg},
            "phases": self.phases,
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

    def sample_pairs(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reference [B,3,H,W], target [B,3,H,W], T [B,4])`` in ``[0, 1]``."""
        g = self.generator
        n_entries, n_views = self.bank.alpha.shape[:2]
        entry = torch.randint(n_entries, (b,), generator=g)
        i = torch.randint(n_views, (b,), generator=g)
        j = torch.randint(n_views, (b,), generator=g)
        _, _, primary, secondary = sample_colors(self.bank, entry, g)
        ref = self.bank.images(entry, i, primary, secondary)
        tgt = self.bank.images(entry, j, primary, secondary)
        zoom = torch.rand(b, generator=g) < self.cfg.zoom_prob
        lo, hi = self.cfg.zoom_range
        factor = torch.where(zoom, lo + (hi - lo) * torch.rand(b, generator=g), torch.ones(b))
        if zoom.any():
            ref, tgt = _zoom(ref, factor), _zoom(tgt, factor)
        el, az = self.bank.elevation_deg, self.bank.azimuth_deg
        pose = relative_pose(
            el[entry, i], az[entry, i], 3.0, el[entry, j], az[entry, j], 3.0, POSE_CONVENTION
        )
        return ref, tgt, pose

    def _lr(self) -> float:
        cfg = self.cfg
        rate = cfg.lr * min(1.0, (self.step + 1) / cfg.warmup_steps)
        if cfg.lr_schedule == "cosine" and self.step >= cfg.warmup_steps:
            span = max(1, cfg.max_steps - cfg.warmup_steps)
            rate *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, (self.step - cfg.warmup_steps) / span)))
        return rate

    def train_step(self) -> float:
        cfg, g = self.cfg, self.generator
        ref, tgt, pose = self.sample_pairs(cfg.batch_size)
        b = ref.shape[0]
        x0 = tgt * 2 - 1
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, len(self.sqrt_a), (b,), generator=g)
        sa, s1 = self.sqrt_a[t].view(-1, 1, 1, 1), self.sqrt_1ma[t].view(-1, 1, 1, 1)
        x_t = sa * x0 + s1 * noise
        target = sa * noise - s1 * x0 if cfg.scheduler.prediction_type == "v_prediction" else noise
        keep = (torch.rand(b, generator=g) >= cfg.uncond_prob).float().view(-1, 1, 1, 1)
        out = self.encoder(pixel_values=(ref - 0.5) / 0.5)  # the embedded processor's mean/std
        tokens = image_tokens(self.encoder, out, cfg.image_tokens)
        token = join_camera(self.projection, tokens, pose) * keep.view(-1, 1, 1)
        concat = (ref * 2 - 1) * keep
        pred = self.unet(torch.cat([x_t, concat], 1), t, encoder_hidden_states=token).sample
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
        print(f"[embedded-view] resuming at step {self.step}, {self.elapsed / 60:.1f} min", flush=True)
        bar = tqdm(desc="view", disable=not cfg.progress, initial=self.step)
        while self.step < cfg.max_steps and (time.monotonic() - start) < budget and not self._stop:
            loss = self.train_step()
            self.losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{sum(self.losses[-50:]) / len(self.losses[-50:]):.4f}")
            self.elapsed = time.monotonic() - start
            if cfg.log_every and self.step % cfg.log_every == 0:
                mean = sum(self.losses[-cfg.log_every :]) / len(self.losses[-cfg.log_every :])
                print(
                    f"[embedded-view] step {self.step} loss {mean:.4f} {self.elapsed / 60:.1f} min",
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
        print(f"[embedded-view] {self.step} steps in {self.elapsed / 60:.1f} min -> {cfg.out}", flush=True)
        return cfg.out


def main(cfg: ViewTrainConfig) -> Path:
    """Runs (or resumes) one training run."""
    return ViewTrainer(cfg).run()


if __name__ == "__main__":
    import tyro

    main(tyro.cli(ViewTrainConfig))
