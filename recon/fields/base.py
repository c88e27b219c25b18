"""What every field (NeRF density, SDF, multi-object SDF) gives the volume renderer.

A field is an ``nn.Module`` with an axis-aligned box it lives in and a ``forward`` that maps points
(and view directions) to a :class:`FieldSample`. The renderer (:mod:`recon.render.volume`) never asks
which kind of field it holds: it composites ``density`` (NeRF, VolSDF) or, when the field gives it,
per-sample ``alpha`` directly (NeuS, which needs the step sizes to form its discrete opacity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@dataclass
class FieldSample:
    """A field evaluated at points ``[..., 3]``."""

    rgb: Tensor  # [..., 3] in [0, 1]
    density: Tensor | None = None  # [...] volume density sigma >= 0 (NeRF, VolSDF)
    alpha: Tensor | None = None  # [...] per-sample opacity in [0, 1] (NeuS); overrides density
    normals: Tensor | None = None  # [..., 3] unit world-space normals (SDF fields)
    sdf: Tensor | None = None  # [...] signed distance of the scene (SDF fields)
    extras: dict[str, Tensor] = field(default_factory=dict)
    """Per-sample values a renderer accumulates on request, e.g. ``object_opacity`` ``[..., K]``."""


@runtime_checkable
class Field(Protocol):
    """The protocol :mod:`recon.render.volume` renders."""

    aabb: Tensor  # [6] (xmin, ymin, zmin, xmax, ymax, zmax); the field is empty outside

    def forward(
        self,
        points: Tensor,  # [..., 3]
        directions: Tensor | None = None,  # [..., 3] unit view directions
        step_sizes: Tensor | None = None,  # [...] sample interval lengths (NeuS alpha needs them)
    ) -> FieldSample: ...

    def density(self, points: Tensor) -> Tensor:  # [..., 3] -> [...] (occupancy grids, marching cubes)
        ...


def plain_config(config: Any) -> dict[str, Any]:
    """A (nested) config dataclass as plain data, for checkpoints."""
    import dataclasses

    return dataclasses.asdict(config)


__all__ = ["Field", "FieldSample", "plain_config"]
