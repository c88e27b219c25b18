"""The one optimization loop every pipeline configures.

A pipeline describes its run as a list of :class:`Stage` s — each a camera/batch sampler, a render
function and named, weighted loss terms — and :class:`Trainer` does the rest: one Adam per
parameter tensor (the layout gsplat's strategies expect) with per-group learning-rate schedules,
densification hooks, a NaN/Inf guard (skip the step, log it, never checkpoint broken values),
periodic atomic checkpoints (``ckpt/last.pt``) with exact resume (RNG states included), a tqdm bar
and per-stage metrics in ``metrics.json``. Deterministic on CPU for a given seed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from recon.atomic import atomic_torch_save, atomic_write_text
from recon.errors import UserError
from recon.gaussians import DensifyConfig, GaussianModel, make_strategy

log = logging.getLogger("sds3d.train")


@dataclass
class LearningRate:
    """A learning rate, constant or decaying exponentially over a stage."""

    initial: float
    """Learning rate at the start of the stage."""
    final: float | None = None
    """Learning rate at the end of the stage (``None``: constant)."""

    def at(self, progress: float) -> float:
        if self.final is None:
            return self.initial
        return self.initial * (self.final / self.initial) ** min(max(progress, 0.0), 1.0)


def default_learning_rates(scene_scale: float = 1.0) -> dict[str, LearningRate]:
    """The 3DGS paper's learning rates (Kerbl et al. 2023)."""
    return {
        "means": LearningRate(1.6e-4 * scene_scale, 1.6e-6 * scene_scale),
        "scales": LearningRate(5e-3),
        "quats": LearningRate(1e-3),
        "opacities": LearningRate(5e-2),
        "sh0": LearningRate(2.5e-3),
        "shN": LearningRate(2.5e-3 / 20),
    }


@dataclass
class StepContext:
    """What a loss term sees at one step."""

    model: GaussianModel
    batch: Any
    render: Any  # whatever the stage's render function returned (usually a RenderOutput)
    stage: str
    step: int  # step inside the stage
    progress: float  # step / steps inside the stage, in [0, 1]
    generator: torch.Generator


@dataclass
class LossTerm:
    """A named, weighted loss. ``fn`` returns a scalar, or ``(scalar, info dict)``."""

    name: str
    fn: Callable[[StepContext], Tensor | tuple[Tensor, dict[str, Any]]]
    weight: float = 1.0
    weight_end: float | None = None
    """Weight at the end of the stage, linear in progress (``None``: constant)."""

    def weight_at(self, progress: float) -> float:
        if self.weight_end is None:
            return self.weight
        return self.weight + (self.weight_end - self.weight) * progress


@dataclass
class Stage:
    """One stage of a run."""

    name: str
    steps: int
    sample: Callable[[int, torch.Generator], Any]
    """``(step, generator) -> batch`` (cameras, targets, ...)."""
    render: Callable[[GaussianModel, Any], Any]
    """``(model, batch) -> render output`` (must expose ``.meta`` when densifying)."""
    losses: list[LossTerm]
    learning_rates: dict[str, LearningRate] | None = None
    """Per parameter group; ``None`` keeps the previous stage's (or the defaults)."""
    densify: DensifyConfig | None = None
    """Densification for this stage (``None``: off)."""
    on_step_end: Callable[[GaussianModel, int], None] | None = None
    """A hook after each optimizer step (e.g. clamping)."""


@dataclass
class TrainConfig:
    """Loop settings shared by every pipeline."""

    seed: int = 0
    """Seed of every random choice (cameras, noise, timesteps)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (``ckpt/last.pt``); a killed run loses at most this many."""
    max_bad_steps: int = 20
    """Abort (with a clear error) after this many consecutive non-finite steps."""
    progress_bar: bool = True
    """Show a tqdm bar (Gradio's ``track_tqdm`` picks it up)."""
    scene_scale: float = 1.0
    """Scale of the scene (learning rate of means, densification thresholds)."""


@dataclass
class Hooks:
    """Callbacks an embedding application (the UI, a job runner) passes to a run; all optional."""

    on_run_dir: Callable[[Path], None] | None = None
    """Called once the run folder exists (before the first step)."""
    on_checkpoint: Callable[[Path, int], None] | None = None
    """Called after each checkpoint is written, with its path and the run's global step."""
    should_stop: Callable[[], bool] | None = None
    """Polled after every step; when it returns True the run checkpoints and raises :class:`Stopped`."""


class Stopped(Exception):  # noqa: N818 - a requested stop, not an error
    """A run stopped on request (:attr:`Hooks.should_stop`); resume it from ``run_dir``."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"run stopped at step {step}; resume with --resume {run_dir}")
        self.run_dir = run_dir
        self.step = step


@dataclass
class TrainState:
    stage_index: int = 0
    stage_step: int = 0
    history: dict[str, dict[str, Any]] = field(default_factory=dict)


class Trainer:
    """Runs stages over a :class:`GaussianModel`, with checkpoints in ``run_dir/ckpt``."""

    def __init__(self, model: GaussianModel, stages: list[Stage], run_dir: str | Path, config: TrainConfig):
        if not stages:
            raise ValueError("a run needs at least one stage")
        for stage in stages:
            if stage.steps <= 0:
                raise UserError(
                    f"stage {stage.name!r} has {stage.steps} steps; give a positive number of steps"
                )
        self.model = model
        self.stages = stages
        self.run_dir = Path(run_dir)
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.learning_rates = default_learning_rates(config.scene_scale)
        self.optimizers = self._make_optimizers()
        self.state = TrainState()
        self.strategy = None
        self.strategy_state: dict[str, Any] | None = None
        self.bad_steps = 0
        self.hooks = Hooks()

    # ------------------------------------------------------------------ optimizers
    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            name: torch.optim.Adam(
                [{"params": [p], "lr": self.learning_rates[name].initial, "name": name}], eps=1e-15
            )
            for name, p in self.model.splats.items()
        }

    def _set_learning_rates(self, progress: float) -> None:
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.learning_rates[name].at(progress)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "ckpt" / "last.pt"

    @property
    def global_step(self) -> int:
        """Steps done over all stages."""
        done = sum(stage.steps for stage in self.stages[: self.state.stage_index])
        return done + self.state.stage_step

    def save_checkpoint(self) -> bool:
        """Writes ``ckpt/last.pt`` atomically; refuses non-finite parameters. True when written."""
        for name, p in self.model.splats.items():
            if not torch.isfinite(p).all():
                log.warning("not checkpointing: parameter %s holds NaN/Inf", name)
                return False
        payload = {
            "version": 1,
            "stage_index": self.state.stage_index,
            "stage_step": self.state.stage_step,
            "history": self.state.history,
            "sh_degree": self.model.sh_degree,
            "splats": {k: v.detach().clone() for k, v in self.model.splats.items()},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "strategy_state": self.strategy_state,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        atomic_torch_save(payload, self.checkpoint_path)
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint(self.checkpoint_path, self.global_step)
        return True

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Restores model, optimizers, strategy and RNG state from a checkpoint."""
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.is_file():
            raise UserError(f"no checkpoint at {path}; start a new run instead of resuming")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise UserError(f"cannot read checkpoint {path} ({err}); start a new run") from err
        restored = GaussianModel(payload["splats"], payload["sh_degree"])
        self.model.sh_degree = restored.sh_degree
        self.model.splats = restored.splats
        self.optimizers = self._make_optimizers()
        for name, opt in self.optimizers.items():
            opt.load_state_dict(payload["optimizers"][name])
        self.strategy_state = payload["strategy_state"]
        self.generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        self.state = TrainState(payload["stage_index"], payload["stage_step"], payload["history"])
        log.info("resumed from %s at stage %d step %d", path, self.state.stage_index, self.state.stage_step)

    def write_metrics(self, extra: dict[str, Any] | None = None) -> None:
        data = {"stages": self.state.history, **(extra or {})}
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(data, indent=2))

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Runs the remaining stages; returns the per-stage metrics.

        Raises:
            Stopped: when :attr:`hooks` ``.should_stop`` asked for a stop (a checkpoint was written first).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.hooks.on_run_dir is not None:
            self.hooks.on_run_dir(self.run_dir)
        while self.state.stage_index < len(self.stages):
            stage = self.stages[self.state.stage_index]
            self._run_stage(stage)
            self.state.stage_index += 1
            self.state.stage_step = 0
            self.strategy_state = None
            self.save_checkpoint()
        self.write_metrics()
        return self.state.history

    def _run_stage(self, stage: Stage) -> None:
        if stage.learning_rates is not None:
            self.learning_rates.update(stage.learning_rates)
        self.strategy = make_strategy(stage.densify) if stage.densify is not None else None
        if self.strategy is not None:
            self.strategy.check_sanity(self.model.splats, self.optimizers)
            if self.strategy_state is None:
                self.strategy_state = self.strategy.initialize_state(scene_scale=self.config.scene_scale)
        stats = self.state.history.setdefault(
            stage.name, {"steps": stage.steps, "seconds": 0.0, "skipped_steps": 0}
        )
        log.info("stage %s: %d steps from step %d", stage.name, stage.steps, self.state.stage_step)
        bar = tqdm(
            total=stage.steps,
            initial=self.state.stage_step,
            desc=stage.name,
            disable=not self.config.progress_bar,
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        recent: dict[str, list[float]] = {}
        while self.state.stage_step < stage.steps:
            step = self.state.stage_step
            progress = step / max(stage.steps - 1, 1)
            losses = self._step(stage, step, progress)
            if losses is None:
                stats["skipped_steps"] += 1
            else:
                for k, v in losses.items():
                    recent.setdefault(k, []).append(v)
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            self.state.stage_step += 1
            bar.update(1)
            if self.hooks.should_stop is not None and self.hooks.should_stop():
                bar.close()
                stats["seconds"] += time.perf_counter() - started
                self._summarise(stats, recent)
                self.save_checkpoint()
                self.write_metrics()
                log.info("stopped on request at stage %s step %d", stage.name, self.state.stage_step)
                raise Stopped(self.run_dir, self.global_step)
            if (
                self.state.stage_step % self.config.checkpoint_every == 0
                and self.state.stage_step < stage.steps
            ):
                stats["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                self._summarise(stats, recent)
                self.save_checkpoint()
                self.write_metrics()
        bar.close()
        stats["seconds"] += time.perf_counter() - started
        self._summarise(stats, recent)
        log.info("stage %s done: %s", stage.name, {k: v for k, v in stats.items() if k != "loss"})

    def _summarise(self, stats: dict[str, Any], recent: dict[str, list[float]]) -> None:
        stats["num_gaussians"] = len(self.model)
        stats["loss"] = {k: sum(v[-50:]) / len(v[-50:]) for k, v in recent.items() if v}

    def _step(self, stage: Stage, step: int, progress: float) -> dict[str, float] | None:
        self._set_learning_rates(progress)
        batch = stage.sample(step, self.generator)
        output = stage.render(self.model, batch)
        ctx = StepContext(self.model, batch, output, stage.name, step, progress, self.generator)
        total = torch.zeros(())
        values: dict[str, float] = {}
        for term in stage.losses:
            result = term.fn(ctx)
            loss = result[0] if isinstance(result, tuple) else result
            weighted = term.weight_at(progress) * loss
            total = total + weighted
            values[term.name] = float(loss.detach())
        if self.strategy is not None:
            self.strategy.step_pre_backward(
                self.model.splats, self.optimizers, self.strategy_state, step, output.meta
            )
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        if not torch.isfinite(total):
            return self._skip(stage, step, "loss is not finite")
        total.backward()
        for name, p in self.model.splats.items():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                return self._skip(stage, step, f"gradient of {name} is not finite")
        for opt in self.optimizers.values():
            opt.step()
        if self.strategy is not None:
            self.strategy.step_post_backward(
                self.model.splats, self.optimizers, self.strategy_state, step, output.meta, packed=False
            )
        if stage.on_step_end is not None:
            stage.on_step_end(self.model, step)
        self.bad_steps = 0
        values["total"] = float(total.detach())
        return values

    def _skip(self, stage: Stage, step: int, why: str) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.bad_steps += 1
        log.warning("stage %s step %d skipped: %s", stage.name, step, why)
        if self.bad_steps >= self.config.max_bad_steps:
            raise UserError(
                f"{self.bad_steps} consecutive steps had non-finite losses or gradients (last: {why}); "
                "lower the learning rates or the guidance scale and resume from the last checkpoint"
            )
        return None


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)
