"""Zero-1-to-A's updatable dataset of pseudo-ground-truth clips, and its progressive curricula.

Zero-1-to-A (Zhou et al., CVPR 2025, https://arxiv.org/abs/2503.15851) does not distil the video prior's
score directly (that over-smooths the avatar: the prior's clips disagree with each other). It keeps a
dataset of clips the video prior made from the avatar's own renders — render along a camera path or an
expression sequence, partially noise, denoise conditioned on the reference portrait — fits the avatar
to them with photometric losses, and regenerates them as the avatar improves (every 30 iterations in
the paper, per a secondary summary; see /work/shared/research/zero1toa-bigs.md §1.3). Learning is
progressive: a spatial stage (fixed neutral expression, cameras widening from the front to the side),
then a temporal stage (fixed near-frontal camera, expressions from relaxed to exaggerated).

:class:`PseudoGTClips` is the store. A clip is keyed by its driving signal's id (a spatial stage's camera
path, a temporal stage's expression sequence); it holds its frames, cameras, expressions and the step
it was made at. The schedule: a clip's age is ``step - made_at``; :meth:`PseudoGTClips.get` regenerates a
clip whose age has reached its ``refresh_every`` (or that is missing, or was made "after" ``step``,
as after resuming an older checkpoint) through the ``make_clip`` callback *before* serving it, so a
served clip is always younger than its refresh interval. Regeneration is deterministic: the callback
gets a generator seeded from the store's seed, the key and the clip's generation count.
:meth:`state_dict` / :meth:`load_state_dict` keep the clips, their ages and generations across a resume.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.errors import UserError


@dataclass
class ClipSpec:
    """A clip's driving signal: ``T`` cameras and ``T`` expression vectors (and jaw poses)."""

    cameras: Cameras  # T cameras
    expressions: Tensor  # [T, E]
    jaw_poses: Tensor | None = None  # [T, 3]
    refresh_every: int | None = None  # None: the store's
    stage: str = ""  # "spatial" | "temporal" | ...

    def __post_init__(self) -> None:
        if self.expressions.ndim != 2 or self.expressions.shape[0] != len(self.cameras):
            raise UserError(
                f"a clip needs one expression row per camera: {len(self.cameras)} cameras, expressions "
                f"{tuple(self.expressions.shape)}; pass expressions as [frames, expressions]"
            )
        if self.jaw_poses is not None and tuple(self.jaw_poses.shape) != (len(self.cameras), 3):
            raise UserError(f"jaw poses must be [{len(self.cameras)}, 3], got {tuple(self.jaw_poses.shape)}")

    @property
    def num_frames(self) -> int:
        return len(self.cameras)


@dataclass
class Clip:
    """A pseudo-ground-truth clip as served."""

    key: str
    frames: Tensor  # [T, H, W, 3] in [0, 1]
    spec: ClipSpec
    made_at: int  # the step it was (re)generated at
    generation: int  # 0 for the first, +1 per refresh

    def age(self, step: int) -> int:
        return step - self.made_at


MakeClip = Callable[[str, ClipSpec, "Clip | None", torch.Generator], Tensor]
"""``(key, spec, previous clip or None, generator) -> frames [T, H, W, 3]``: render the current avatar
along ``spec``, partially noise, denoise with the video prior (see :func:`partial_denoise_clip`)."""


@dataclass
class PseudoGTClips:
    """The updatable clip store (see the module docstring).

    Args:
        make_clip: Makes a clip's frames from the current avatar.
        refresh_every: Steps after which a clip is regenerated before it is served (the paper: 30).
        seed: Seed of the regenerations' generators and of :meth:`sample`.
    """

    make_clip: MakeClip
    refresh_every: int = 30
    seed: int = 0
    specs: dict[str, ClipSpec] = field(default_factory=dict)
    clips: dict[str, Clip] = field(default_factory=dict)
    refreshes: int = 0  # clips made so far (first generations included)

    def __post_init__(self) -> None:
        if int(self.refresh_every) < 1:
            raise UserError(f"refresh_every must be a whole number >= 1, got {self.refresh_every}")

    # ------------------------------------------------------------------------------ registration
    def add(self, key: str, spec: ClipSpec, keep: bool = False) -> None:
        """Registers (or replaces) the driving signal ``key``. A replaced signal's clip is dropped, or with
        ``keep`` served (with the signal it was made from) until it is stale, then made from ``spec``."""
        if spec.refresh_every is not None and int(spec.refresh_every) < 1:
            raise UserError(f"clip {key!r}: refresh_every must be >= 1, got {spec.refresh_every}")
        self.specs[key] = spec
        if not keep:
            self.clips.pop(key, None)

    def keys(self, stage: str | None = None) -> list[str]:
        return sorted(k for k, s in self.specs.items() if stage is None or s.stage == stage)

    def interval(self, key: str) -> int:
        spec = self.specs[key]
        return int(spec.refresh_every if spec.refresh_every is not None else self.refresh_every)

    def is_stale(self, key: str, step: int) -> bool:
        """Missing, as old as its refresh interval or older, or made after ``step``."""
        clip = self.clips.get(key)
        return clip is None or not 0 <= clip.age(step) < self.interval(key)

    # ----------------------------------------------------------------------------------- serving
    def generator(self, key: str, generation: int) -> torch.Generator:
        """The generator of ``key``'s ``generation``-th clip (the same in every run with the seed)."""
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + zlib.crc32(key.encode()) * 7919 + generation) % (2**63))
        return g

    def get(self, key: str, step: int) -> Clip:
        """``key``'s clip at ``step``, regenerated first when it is stale."""
        if key not in self.specs:
            raise KeyError(f"no clip {key!r}; add its camera path / expression sequence first")
        if self.is_stale(key, step):
            previous = self.clips.get(key)
            generation = previous.generation + 1 if previous is not None else 0
            frames = self.make_clip(key, self.specs[key], previous, self.generator(key, generation))
            T = self.specs[key].num_frames
            if frames.ndim != 4 or frames.shape[0] != T or frames.shape[-1] != 3:
                raise ValueError(
                    f"make_clip returned {tuple(frames.shape)} for {key!r}, expected [{T}, H, W, 3]"
                )
            self.clips[key] = Clip(key, frames.detach(), self.specs[key], int(step), generation)
            self.refreshes += 1
        clip = self.clips[key]
        assert 0 <= clip.age(step) < self.interval(key)
        return clip

    def sample(self, step: int, stage: str | None = None) -> Clip:
        """A clip of ``stage`` (all stages: None) drawn from the seed and ``step`` alone (resume-safe)."""
        keys = self.keys(stage)
        if not keys:
            raise KeyError(f"no clips registered for stage {stage!r}")
        rng = np.random.default_rng([self.seed, int(step)])
        return self.get(keys[int(rng.integers(len(keys)))], step)

    # ---------------------------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume: driving signals, clips (frames, step made, generation), counters."""
        return {
            "refresh_every": self.refresh_every,
            "seed": self.seed,
            "refreshes": self.refreshes,
            "specs": {k: _spec_state(s) for k, s in self.specs.items()},
            "clips": {
                k: {
                    "frames": c.frames,
                    "made_at": c.made_at,
                    "generation": c.generation,
                    "spec": _spec_state(c.spec),
                }
                for k, c in self.clips.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.refresh_every = int(state["refresh_every"])
        self.seed = int(state["seed"])
        self.refreshes = int(state["refreshes"])
        self.specs = {k: _spec_from_state(s) for k, s in state["specs"].items()}
        self.clips = {
            k: Clip(
                k,
                c["frames"],
                _spec_from_state(c["spec"]) if "spec" in c else self.specs[k],  # a kept clip's own signal
                int(c["made_at"]),
                int(c["generation"]),
            )
            for k, c in state["clips"].items()
        }


def _spec_state(spec: ClipSpec) -> dict[str, Any]:
    cam = spec.cameras
    return {
        "camera_to_worlds": cam.camera_to_worlds, "fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy,
        "width": cam.width, "height": cam.height, "expressions": spec.expressions,
        "jaw_poses": spec.jaw_poses, "refresh_every": spec.refresh_every, "stage": spec.stage,
    }  # fmt: skip


def _spec_from_state(s: dict[str, Any]) -> ClipSpec:
    cams = Cameras(
        s["camera_to_worlds"], s["fx"], s["fy"], s["cx"], s["cy"], int(s["width"]), int(s["height"])
    )
    return ClipSpec(cams, s["expressions"], s["jaw_poses"], s["refresh_every"], s["stage"])


def partial_denoise_clip(
    render: Callable[[ClipSpec], Tensor],
    denoise: Callable[[Tensor, float, torch.Generator], Tensor],
    strength: float = 0.5,
) -> MakeClip:
    """The ``make_clip`` of SymGEN: ``frames = denoise(render(spec), strength, generator)``.

    Args:
        render: The current avatar's frames ``[T, H, W, 3]`` along a clip's cameras and expressions.
        denoise: The video prior's img2img: noise the clip to ``strength`` (0: none, 1: pure noise) and
            denoise it, conditioned on the reference portrait.
        strength: How far the renders are noised.
    """
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"strength must be between 0 and 1, got {strength}")

    def make_clip(key: str, spec: ClipSpec, previous: Clip | None, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return denoise(render(spec), strength, generator).clamp(0.0, 1.0)

    return make_clip


# ---------------------------------------------------------------------------------------- curricula
def spatial_azimuths(
    step: int, num_frames: int, side_deg: float = 90.0, steps_per_frame: int = 100
) -> np.ndarray:  # [num_frames] degrees
    """The spatial stage's camera path at ``step``: front (0°) towards ``side_deg``, widening with steps.

    Zero-1-to-A's ``p_i = p̂_{min(i, j)}``, ``j = min(⌊k / d_s⌋ + 1, n_f)``: the full path ``p̂`` runs
    from the front to the side in ``num_frames`` even steps; at step ``k`` only its first ``j`` views are
    used and the later frames repeat the ``j``-th, so the path's extent grows by one view every
    ``steps_per_frame`` steps until the whole path is in use. Step 0: every frame frontal.
    """
    if num_frames < 1 or steps_per_frame < 1:
        raise UserError(f"num_frames and steps_per_frame must be >= 1, got {num_frames}, {steps_per_frame}")
    full = np.linspace(0.0, side_deg, num_frames)
    j = min(max(int(step), 0) // steps_per_frame + 1, num_frames)
    return full[np.minimum(np.arange(num_frames), j - 1)]


def spatial_extent_deg(
    step: int, num_frames: int, side_deg: float = 90.0, steps_per_frame: int = 100
) -> float:
    """How far to the side the spatial stage's path reaches at ``step`` (its last frame's azimuth)."""
    return float(spatial_azimuths(step, num_frames, side_deg, steps_per_frame)[-1])


def expression_intensity(progress: float, relaxed: float = 0.3, exaggerated: float = 1.5) -> float:
    """The temporal stage's expression scale at ``progress`` in [0, 1]: ``relaxed`` → ``exaggerated``.

    A smooth (cosine) ramp: the paper first adds relaxed synthetic expression clips, then exaggerated
    ones from talk-show videos; one scale on the driving sequences plays that role here.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return relaxed + (exaggerated - relaxed) * 0.5 * (1.0 - math.cos(math.pi * p))


def temporal_expressions(
    sequence: Tensor,  # [T, E]
    progress: float,
    relaxed: float = 0.3,
    exaggerated: float = 1.5,
) -> Tensor:  # [T, E]
    """A driving expression sequence scaled for ``progress`` (see :func:`expression_intensity`)."""
    return sequence * expression_intensity(progress, relaxed, exaggerated)


def curriculum_stage(step: int, spatial_steps: int) -> str:
    """``"spatial"`` before ``spatial_steps``, ``"temporal"`` after (the paper: 5000 spatial steps)."""
    return "spatial" if step < spatial_steps else "temporal"
