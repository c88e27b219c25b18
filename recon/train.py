"""The one optimization loop every pipeline configures.

A pipeline describes its run as a list of :class:`Stage` s — each a camera/batch sampler, a render
function, named weighted loss terms, the parameter groups it trains and optional auxiliary
trainables — and :class:`Trainer` does the rest over **any representation**: one ``nn.Module``
(3D Gaussians, a density or SDF field, a textured mesh, ...) or several named ones in one run
(hand Gaussians + object Gaussians + per-frame poses).

A representation exposes named parameter groups with default learning rates
(``parameter_groups()`` / ``default_learning_rates()``; a plain module is one group ``params``)
and, when its parameters can change shape (densification), ``checkpoint_state()`` /
``load_checkpoint_state()``. The loop keeps one Adam per group — for Gaussians one per tensor, the
layout gsplat's strategies expect — with per-group learning-rate schedules, densification hooks
bound to one Gaussian module, a NaN/Inf guard (skip the step, log it, never checkpoint broken
values), periodic atomic checkpoints (``ckpt/last.pt``) of every module and optimizer with exact
resume (RNG states included), a tqdm bar and per-stage metrics in ``metrics.json``.
Deterministic on CPU for a given seed.

Devices: :attr:`TrainConfig.device` says where the run computes; the loop moves every module, state
module and auxiliary there before it builds its optimizers. Its generator stays a CPU generator on every
device — every draw (cameras, pixels, timesteps, noise) is made on the CPU and moved, as the samplers and
losses do — so a seed draws the same numbers on a CPU and a GPU, and a checkpoint (written with CPU
tensors) resumes on either.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from recon.atomic import atomic_torch_save, atomic_write_text
from recon.errors import CHECKPOINT_EVERY, SEED, UserError, checked
from recon.gaussians import DensifyConfig, GaussianModel, make_strategy
from recon.metrics import psnr  # noqa: F401 - re-exported: recon.train.psnr predates recon.metrics

log = logging.getLogger("sds3d.train")

CHECKPOINT_VERSION = 2


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
    return _as_learning_rates(GaussianModel.default_learning_rates(scene_scale))


def _as_learning_rates(values: Mapping[str, Any]) -> dict[str, LearningRate]:
    out = {}
    for name, v in values.items():
        if isinstance(v, LearningRate):
            out[name] = v
        elif isinstance(v, tuple):
            out[name] = LearningRate(*v)
        else:
            out[name] = LearningRate(float(v))
    return out


# ---------------------------------------------------------------------------- representations
def parameter_groups(module: torch.nn.Module) -> dict[str, list[Tensor]]:
    """A representation's named parameter groups (a plain module: one group ``params``)."""
    if hasattr(module, "parameter_groups"):
        return dict(module.parameter_groups())
    params = [p for p in module.parameters() if p.requires_grad]
    return {"params": params} if params else {}


def module_learning_rates(module: torch.nn.Module, scene_scale: float = 1.0) -> dict[str, LearningRate]:
    """A representation's default learning rates by group (a plain module: 1e-3)."""
    if isinstance(module, GaussianModel):
        return _as_learning_rates(module.default_learning_rates(scene_scale))
    if hasattr(module, "default_learning_rates"):
        return _as_learning_rates(module.default_learning_rates())
    return {name: LearningRate(1e-3) for name in parameter_groups(module)}


def module_state(module: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint keeps of a representation."""
    if hasattr(module, "checkpoint_state"):
        return module.checkpoint_state()
    return {"state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()}}


def load_module_state(module: torch.nn.Module, state: dict[str, Any]) -> None:
    """Restores :func:`module_state` into ``module`` in place."""
    if hasattr(module, "load_checkpoint_state"):
        module.load_checkpoint_state(state)
    else:
        module.load_state_dict(state["state_dict"])


def representation_classes() -> dict[str, type]:
    """Representations a checkpoint can be rebuilt into without the pipeline that made it."""
    classes: dict[str, type] = {"GaussianModel": GaussianModel}
    try:  # fields and meshes are optional parts of the core; import only what exists
        from recon import fields

        for name in ("DensityField", "SDFField"):
            if hasattr(fields, name):
                classes[name] = getattr(fields, name)
    except ImportError:  # pragma: no cover - recon.fields always ships with sds3d
        pass
    try:
        from recon.render.mesh import TexturedMesh

        classes["TexturedMesh"] = TexturedMesh
    except ImportError:  # pragma: no cover
        pass
    return classes


def load_representations(path: str | Path, names: list[str] | None = None) -> dict[str, torch.nn.Module]:
    """The representations of a checkpoint by module name (``""`` for a single-module run).

    Args:
        path: A ``ckpt/last.pt``.
        names: Load only these modules (default: all; a plain module needs its pipeline to be rebuilt).

    Raises:
        UserError: when the file is missing, unreadable or holds an unknown representation.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    if "modules" not in payload:  # version 1: Gaussians only
        return {"": GaussianModel(payload["splats"], payload["sh_degree"])}
    classes = representation_classes()
    out = {}
    for name, entry in payload["modules"].items():
        if names is not None and name not in names:
            continue
        cls = classes.get(entry["kind"])
        if cls is None or not hasattr(cls, "from_checkpoint_state"):
            raise UserError(
                f"checkpoint {path} holds a {entry['kind']} that this sds3d cannot load; update sds3d"
            )
        out[name] = cls.from_checkpoint_state(entry["state"])
    return out


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; start a new run instead of resuming")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise UserError(f"cannot read checkpoint {path} ({err}); start a new run") from err
    if not isinstance(payload, dict) or "stage_index" not in payload:
        raise UserError(f"{path} is not an sds3d checkpoint; start a new run")
    return payload


@dataclass
class StepContext:
    """What a loss term sees at one step."""

    model: Any  # the representation (a module, or a ModuleDict of the named modules of the run)
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
class Auxiliary:
    """A trainable beside the scene with its own optimizer and loss (e.g. a prior being fine-tuned).

    The scene's gradient never reaches it: its parameters are frozen while the scene's losses are
    computed and back-propagated, and only its own ``loss`` trains it, every ``every`` steps, after the
    scene's update (bootstrapped score distillation fine-tunes a copy of the prior this way).
    """

    name: str
    module: torch.nn.Module
    loss: Callable[[StepContext], Tensor]
    """``ctx -> scalar``; ``ctx.render`` is the scene's render of this step (detach what you use)."""
    learning_rate: float = 1e-5
    every: int = 1
    """Steps between two updates (1: every step)."""
    parameters: Callable[[torch.nn.Module], list[Tensor]] | None = None
    """Which of the module's parameters train (default: all that require grad), e.g. LoRA weights."""
    weight_decay: float = 0.0
    """AdamW weight decay (0: plain Adam behaviour)."""

    def trainable(self) -> list[Tensor]:
        if self.parameters is not None:
            return list(self.parameters(self.module))
        return [p for p in self.module.parameters() if p.requires_grad]


@dataclass
class Stage:
    """One stage of a run."""

    name: str
    steps: int
    sample: Callable[[int, torch.Generator], Any]
    """``(step, generator) -> batch`` (cameras, targets, ...)."""
    render: Callable[[Any, Any], Any]
    """``(model, batch) -> render output`` (must expose ``.meta`` when densifying)."""
    losses: list[LossTerm]
    learning_rates: dict[str, LearningRate] | None = None
    """Per parameter group; ``None`` keeps the previous stage's (or the defaults)."""
    densify: DensifyConfig | None = None
    """Densification for this stage (``None``: off)."""
    on_step_end: Callable[[Any, int], None] | None = None
    """A hook after each optimizer step (e.g. clamping)."""
    train: tuple[str, ...] | None = None
    """Parameter groups (or whole modules, by name) this stage trains; the rest stay frozen.
    ``None``: all of them."""
    densify_module: str = ""
    """Which module of a multi-module run the densification strategy is bound to."""
    auxiliaries: list[Auxiliary] = field(default_factory=list)
    """Trainables with their own optimizer and loss (see :class:`Auxiliary`)."""


@dataclass
class TrainConfig:
    """Loop settings shared by every pipeline."""

    seed: int = checked(0, SEED)
    """Seed of every random choice (cameras, noise, timesteps)."""
    checkpoint_every: int = checked(100, CHECKPOINT_EVERY)
    """Steps between checkpoints (``ckpt/last.pt``); a killed run loses at most this many."""
    max_bad_steps: int = checked(20, low=1, high=1_000_000_000)
    """Abort (with a clear error) after this many consecutive non-finite steps."""
    progress_bar: bool = True
    """Show a tqdm bar (Gradio's ``track_tqdm`` picks it up)."""
    scene_scale: float = checked(1.0, low=1e-9, high=1e9)
    """Scale of the scene (learning rate of means, densification thresholds)."""
    device: str | None = None
    """Where the run computes: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (see
    :func:`recon.device.resolve_device`); ``None``: where the first module's parameters already are (the
    CPU for a new module)."""


@dataclass
class Hooks:
    """Callbacks an embedding application (the UI, a job runner) passes to a run; all optional."""

    on_run_dir: Callable[[Path], None] | None = None
    """Called once the run folder exists (before the first step)."""
    on_checkpoint: Callable[[Path, int], None] | None = None
    """Called after each checkpoint is written, with its path and the run's global step."""
    should_stop: Callable[[], bool] | None = None
    """Polled after every step; when it returns True the run checkpoints and raises :class:`Stopped`."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the step under way was finished and checkpointed first (``run_dir``)."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"run interrupted at step {step}; its checkpoint is in {run_dir}")
        self.run_dir = run_dir
        self.step = step


class _InterruptAtStepEnd:
    """While active (main thread only), the first SIGINT only sets :attr:`requested`; the loop finishes
    the step, checkpoints and raises :class:`Interrupted`. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C is not delayed
        log.warning("interrupt: finishing the step and writing a checkpoint (Ctrl-C again to abort now)")

    def __enter__(self) -> _InterruptAtStepEnd:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None


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
    """Runs stages over one representation or several named ones, with checkpoints in ``run_dir/ckpt``.

    Args:
        model: An ``nn.Module`` (parameter groups keep their own names), or a mapping of names to
            modules (groups are named ``"<module>.<group>"``; ``ctx.model`` is then a ``ModuleDict``).
        stages: The run's plan.
        run_dir: Where ``ckpt/last.pt`` and ``metrics.json`` go.
        config: Loop settings.
        state: Modules without trained parameters whose buffers a resumed run needs (an occupancy
            grid, running statistics); checkpointed with the run.
    """

    def __init__(
        self,
        model: torch.nn.Module | Mapping[str, torch.nn.Module],
        stages: list[Stage],
        run_dir: str | Path,
        config: TrainConfig,
        state: Mapping[str, torch.nn.Module] | None = None,
    ):
        if not stages:
            raise ValueError("a run needs at least one stage")
        for stage in stages:
            if stage.steps <= 0:
                raise UserError(
                    f"stage {stage.name!r} has {stage.steps} steps; give a positive number of steps"
                )
        if isinstance(model, Mapping):
            if not model or any(not name or "." in name for name in model):
                raise ValueError("modules of a run need non-empty names without dots")
            self.modules: dict[str, torch.nn.Module] = dict(model)
            self.model: Any = torch.nn.ModuleDict(self.modules)
        else:
            self.modules = {"": model}
            self.model = model
        self.stages = stages
        self.extra_state = dict(state or {})
        self.run_dir = Path(run_dir)
        self.config = config
        self.device = run_device(config.device, self.modules)
        for module in (*self.modules.values(), *self.extra_state.values()):
            module.to(self.device)  # in place: the pipeline's references to its modules stay valid
        # A CPU generator on every device (see the module docstring); torch.manual_seed seeds CUDA too.
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.learning_rates: dict[str, LearningRate] = {}
        for mod_name, module in self.modules.items():
            for group, lr in module_learning_rates(module, config.scene_scale).items():
                self.learning_rates[_key(mod_name, group)] = lr
        self.optimizers = self._make_optimizers()
        self.auxiliaries: dict[str, Auxiliary] = {}
        for stage in stages:
            for aux in stage.auxiliaries:
                if self.auxiliaries.get(aux.name, aux) is not aux:
                    raise ValueError(f"two different auxiliary trainables are named {aux.name!r}")
                self.auxiliaries[aux.name] = aux
        for aux in self.auxiliaries.values():
            aux.module.to(self.device)
        self.aux_optimizers = {
            name: torch.optim.AdamW(aux.trainable(), lr=aux.learning_rate, weight_decay=aux.weight_decay)
            for name, aux in self.auxiliaries.items()
        }
        for stage in stages:
            self._check_stage(stage)
        self.state = TrainState()
        self.strategy = None
        self.strategy_state: dict[str, Any] | None = None
        self.bad_steps = 0
        self.hooks = Hooks()

    def _check_stage(self, stage: Stage) -> None:
        known = set(self.optimizers) | set(self.modules)
        unknown = sorted(set(stage.train or ()) - known)
        unknown += sorted(set(stage.learning_rates or {}) - set(self.optimizers))
        if unknown:
            raise ValueError(
                f"stage {stage.name!r} names unknown parameter groups {unknown}; have {sorted(known)}"
            )
        if stage.densify is not None and not isinstance(
            self.modules.get(stage.densify_module), GaussianModel
        ):
            raise ValueError(
                f"stage {stage.name!r} densifies {stage.densify_module!r}, which is not 3D Gaussians"
            )

    # ------------------------------------------------------------------ optimizers
    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = {}
        for mod_name, module in self.modules.items():
            for group, params in parameter_groups(module).items():
                key = _key(mod_name, group)
                if key not in self.learning_rates:
                    raise ValueError(f"parameter group {key!r} has no default learning rate")
                optimizers[key] = torch.optim.Adam(
                    [{"params": list(params), "lr": self.learning_rates[key].initial, "name": group}],
                    eps=1e-15,
                )
        return optimizers

    def _set_learning_rates(self, progress: float) -> None:
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.learning_rates[name].at(progress)

    def _trained(self, stage: Stage) -> list[str]:
        """The optimizer keys a stage steps."""
        if stage.train is None:
            return list(self.optimizers)
        wanted = set(stage.train)
        return [k for k in self.optimizers if k in wanted or k.split(".", 1)[0] in wanted]

    def _module_optimizers(self, mod_name: str) -> dict[str, torch.optim.Optimizer]:
        """The optimizers of one module, by its own group names (what a gsplat strategy indexes)."""
        prefix = f"{mod_name}." if mod_name else ""
        return {k[len(prefix) :]: o for k, o in self.optimizers.items() if k.startswith(prefix)}

    def _params(self) -> dict[str, list[Tensor]]:
        """Current parameters by optimizer key (densification replaces tensors in the optimizers)."""
        return {k: [p for g in o.param_groups for p in g["params"]] for k, o in self.optimizers.items()}

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
        for name, params in self._params().items():
            if not all(torch.isfinite(p).all() for p in params):
                log.warning("not checkpointing: parameter %s holds NaN/Inf", name)
                return False
        payload = {
            "version": CHECKPOINT_VERSION,
            "stage_index": self.state.stage_index,
            "stage_step": self.state.stage_step,
            "history": self.state.history,
            "modules": {
                name: {"kind": type(m).__name__, "state": module_state(m)} for name, m in self.modules.items()
            },
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "auxiliaries": {
                name: {"state": module_state(aux.module), "optimizer": self.aux_optimizers[name].state_dict()}
                for name, aux in self.auxiliaries.items()
            },
            "extra_state": {name: m.state_dict() for name, m in self.extra_state.items()},
            "strategy_state": self.strategy_state,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            payload["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.device.type != "cpu":  # CPU tensors: the file loads anywhere, with or without map_location
            payload = _to_device(payload, torch.device("cpu"))
        if set(self.modules) == {""} and isinstance(self.model, GaussianModel):
            # Version 1's top-level keys, for readers of the Gaussians-only layout; the same objects, so
            # pickling stores the tensors once.
            state = payload["modules"][""]["state"]
            payload["splats"], payload["sh_degree"] = state["splats"], state["sh_degree"]
        atomic_torch_save(payload, self.checkpoint_path)
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint(self.checkpoint_path, self.global_step)
        return True

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Restores every module, optimizer, auxiliary trainable, the strategy and RNG state."""
        path = Path(path) if path is not None else self.checkpoint_path
        payload = read_checkpoint(path)
        if "modules" not in payload:  # version 1: one Gaussian model
            payload["modules"] = {"": {"kind": "GaussianModel", "state": payload}}
        if set(payload["modules"]) != set(self.modules):
            raise UserError(
                f"checkpoint {path} holds modules {sorted(payload['modules'])}, this run has "
                f"{sorted(self.modules)}; resume it with the settings it was made with"
            )
        try:
            for name, module in self.modules.items():
                load_module_state(module, payload["modules"][name]["state"])
                module.to(self.device)  # a densified module is rebuilt from the file's CPU tensors
            self.optimizers = self._make_optimizers()
            for name, opt in self.optimizers.items():
                opt.load_state_dict(payload["optimizers"][name])
            for name, aux in self.auxiliaries.items():
                load_module_state(aux.module, payload["auxiliaries"][name]["state"])
                aux.module.to(self.device)
                self.aux_optimizers[name] = torch.optim.AdamW(
                    aux.trainable(), lr=aux.learning_rate, weight_decay=aux.weight_decay
                )
                self.aux_optimizers[name].load_state_dict(payload["auxiliaries"][name]["optimizer"])
            for name, module in self.extra_state.items():
                if name not in payload["extra_state"] and getattr(module, "optional_in_checkpoint", False):
                    continue  # a state the run can do without (a checkpoint of an older version)
                module.load_state_dict(payload["extra_state"][name])
                module.to(self.device)
        except (KeyError, RuntimeError, ValueError) as err:
            raise UserError(
                f"checkpoint {path} does not fit this run ({type(err).__name__}: {err}); "
                "resume it with the settings it was made with, or start a new run"
            ) from err
        self.strategy_state = _to_device(payload["strategy_state"], self.device)
        self.generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in payload:  # a run resumed from a CPU one has none
            torch.cuda.set_rng_state(payload["cuda_rng"], self.device)
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
            Interrupted: on Ctrl-C (SIGINT in the main thread), once the step under way is finished and
                checkpointed; ``load_checkpoint`` + ``fit`` continue from there.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.hooks.on_run_dir is not None:
            self.hooks.on_run_dir(self.run_dir)
        while self.state.stage_index < len(self.stages):
            stage = self.stages[self.state.stage_index]
            with _InterruptAtStepEnd() as interrupt:
                self._run_stage(stage, interrupt)
            self.state.stage_index += 1
            self.state.stage_step = 0
            self.strategy_state = None
            self.save_checkpoint()
        self.write_metrics()
        return self.state.history

    def _run_stage(self, stage: Stage, interrupt: _InterruptAtStepEnd | None = None) -> None:
        if stage.learning_rates is not None:
            self.learning_rates.update(stage.learning_rates)
        self.strategy = make_strategy(stage.densify, self.device) if stage.densify is not None else None
        if self.strategy is not None:
            gaussians = self.modules[stage.densify_module]
            self.strategy.check_sanity(gaussians.splats, self._module_optimizers(stage.densify_module))
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
            asked = self.hooks.should_stop is not None and self.hooks.should_stop()
            if asked or (interrupt is not None and interrupt.requested):
                bar.close()
                stats["seconds"] += time.perf_counter() - started
                self._summarise(stats, recent)
                self.save_checkpoint()
                self.write_metrics()
                if not asked:
                    log.info("interrupted at stage %s step %d", stage.name, self.state.stage_step)
                    raise Interrupted(self.run_dir, self.global_step)
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
        gaussians = [m for m in self.modules.values() if isinstance(m, GaussianModel)]
        if gaussians:
            stats["num_gaussians"] = sum(len(m) for m in gaussians)
        stats["loss"] = {k: sum(v[-50:]) / len(v[-50:]) for k, v in recent.items() if v}

    def _step(self, stage: Stage, step: int, progress: float) -> dict[str, float] | None:
        self._set_learning_rates(progress)
        aux_params = [
            p for aux in stage.auxiliaries for p in self.aux_optimizers[aux.name].param_groups[0]["params"]
        ]
        for p in aux_params:  # the scene's gradient never reaches an auxiliary trainable
            p.requires_grad_(False)
        batch = stage.sample(step, self.generator)
        output = stage.render(self.model, batch)
        ctx = StepContext(self.model, batch, output, stage.name, step, progress, self.generator)
        total = torch.zeros((), device=self.device)
        values: dict[str, float] = {}
        for term in stage.losses:
            result = term.fn(ctx)
            loss = result[0] if isinstance(result, tuple) else result
            weighted = term.weight_at(progress) * loss
            total = total + weighted
            values[term.name] = float(loss.detach())
        if self.strategy is not None:
            self.strategy.step_pre_backward(
                self.modules[stage.densify_module].splats,
                self._module_optimizers(stage.densify_module),
                self.strategy_state,
                step,
                output.meta,
            )
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        if not torch.isfinite(total):
            return self._skip(stage, step, "loss is not finite")
        if total.requires_grad:  # a step whose losses have no graph (e.g. BSD's pretrain) leaves grads None
            total.backward()
        trained = self._trained(stage)
        params = self._params()
        for name in trained:
            for p in params[name]:
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    return self._skip(stage, step, f"gradient of {name} is not finite")
        for name in trained:
            self.optimizers[name].step()
        if self.strategy is not None:
            self.strategy.step_post_backward(
                self.modules[stage.densify_module].splats,
                self._module_optimizers(stage.densify_module),
                self.strategy_state,
                step,
                output.meta,
                packed=False,
            )
        if stage.on_step_end is not None:
            stage.on_step_end(self.model, step)
        self.bad_steps = 0
        values["total"] = float(total.detach())
        for aux in stage.auxiliaries:
            if step % aux.every == 0:
                aux_loss = self._auxiliary_step(aux, ctx)
                if aux_loss is not None:
                    values[aux.name] = aux_loss
        return values

    def _auxiliary_step(self, aux: Auxiliary, ctx: StepContext) -> float | None:
        opt = self.aux_optimizers[aux.name]
        params = opt.param_groups[0]["params"]
        for p in params:
            p.requires_grad_(True)
        try:
            opt.zero_grad(set_to_none=True)
            loss = aux.loss(ctx)
            if not torch.isfinite(loss):
                log.warning(
                    "stage %s step %d: auxiliary %s loss not finite; skipped", ctx.stage, ctx.step, aux.name
                )
                return None
            loss.backward()
            if any(p.grad is not None and not torch.isfinite(p.grad).all() for p in params):
                log.warning(
                    "stage %s step %d: auxiliary %s gradient not finite; skipped",
                    ctx.stage,
                    ctx.step,
                    aux.name,
                )
                opt.zero_grad(set_to_none=True)
                return None
            opt.step()
            return float(loss.detach())
        finally:
            for p in params:
                p.requires_grad_(False)
            for opt_scene in self.optimizers.values():  # what the auxiliary loss left on the scene
                opt_scene.zero_grad(set_to_none=True)

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


def _key(module: str, group: str) -> str:
    return f"{module}.{group}" if module else group


def run_device(name: str | None, modules: Mapping[str, torch.nn.Module]) -> torch.device:
    """The device of a run: :attr:`TrainConfig.device` resolved, or (``None``) the first module's.

    Raises:
        UserError: a device name :func:`recon.device.resolve_device` refuses (CUDA where there is none).
    """
    if name is not None:
        from recon.device import resolve_device

        return resolve_device(name, "device")
    for module in modules.values():
        tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (nested dicts, lists, tuples) on ``device``; others as they are."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value
