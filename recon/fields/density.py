"""A NeRF density field: a feature grid and a small MLP giving volume density and color.

The layout of threestudio's ``implicit-volume`` geometry (features -> MLP -> density + color, with
the ``blob_magic3d`` density bias of Magic3D, https://arxiv.org/abs/2211.10440, so that a text-to-3D
run starts from a ball rather than from empty space), with a dense grid in place of the hash grid
so that it runs on a CPU (DVGO, https://arxiv.org/abs/2111.11215). NeRF: https://arxiv.org/abs/2003.08934.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.errors import checked
from recon.fields.base import FieldSample, plain_config
from recon.fields.encoding import DenseGridEncoding, HashGridEncoding, total_variation


@dataclass
class DensityFieldConfig:
    """Configuration of :class:`DensityField`."""

    radius: float = checked(1.0, low=0, high=1000)
    """Half size of the cube ``[-radius, radius]^3`` the field lives in (empty outside)."""
    grid_resolution: int = checked(64, low=2, high=1024)
    """Voxels per axis of the dense feature grid."""
    features: int = checked(12, low=1, high=1024)
    """Feature channels of the grid."""
    hidden: int = checked(64, low=1, high=4096)
    """Width of the MLP's hidden layers."""
    hidden_layers: int = checked(1, low=0, high=64)
    """Hidden layers of the MLP."""
    encoding: Literal["dense", "hash"] = "dense"
    """Point encoding: ``"dense"`` (runs everywhere) or ``"hash"`` (tinycudann, CUDA only); see
    :func:`recon.fields.encoding.select_encoding`."""
    grid_init_std: float = checked(1e-2, low=0, high=100)
    """Standard deviation of the grid's normal initialisation."""
    density_bias: Literal["blob", "none"] = "blob"
    """``"blob"``: add ``blob_density * (1 - |x| / blob_radius)`` to the raw density (threestudio's
    ``blob_magic3d``), a ball at the origin to start from; ``"none"``: no bias."""
    blob_density: float = checked(10.0, low=0, high=1e4)
    """Raw density added at the origin by the blob bias."""
    blob_radius: float = checked(0.5, low=0.001, high=100)
    """Radius where the blob bias crosses zero."""
    density_shift: float = checked(0.0, low=-100, high=100)
    """Added to the raw density before the softplus (negative values start the field emptier,
    like DVGO's ``alpha_init``)."""
    view_dependent: bool = False
    """Feed an encoding of the view direction to the color head (off: color depends on position only)."""
    direction_frequencies: int = checked(2, low=0, high=16)
    """Sinusoid frequencies per axis of the direction encoding (when view dependent)."""


class DensityField(nn.Module):
    """Volume density and color at points (the :class:`~recon.fields.base.Field` protocol).

    ``density = softplus(raw + bias + shift)`` and ``rgb = sigmoid(raw_rgb)``, both from one MLP on
    the grid features. Build it with ``DensityField(config)``; move it with ``.to(device)``.

    Args:
        config: The configuration.
    """

    def __init__(self, config: DensityFieldConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DensityFieldConfig()
        r = float(config.radius)
        self.register_buffer("aabb", torch.tensor([-r, -r, -r, r, r, r], dtype=torch.float32))
        if config.density_bias not in ("blob", "none"):
            raise ValueError(f"density_bias must be 'blob' or 'none', got {config.density_bias!r}")
        if config.encoding == "dense":
            self.encoding: nn.Module = DenseGridEncoding(
                self.aabb, config.grid_resolution, config.features, config.grid_init_std
            )
        elif config.encoding == "hash":
            self.encoding = HashGridEncoding(self.aabb)
        else:
            raise ValueError(f"encoding must be 'dense' or 'hash', got {config.encoding!r}")
        n_in = self.encoding.n_output_dims
        layers: list[nn.Module] = []
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(n_in, config.hidden), nn.ReLU(inplace=True)]
            n_in = config.hidden
        self.trunk = nn.Sequential(*layers)
        if config.view_dependent:
            self.density_head = nn.Linear(n_in, 1)
            n_dir = 3 + 6 * config.direction_frequencies
            self.color_head = nn.Sequential(
                nn.Linear(n_in + n_dir, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 3)
            )
        else:
            self.head = nn.Linear(n_in, 4)

    # ------------------------------------------------------------------ evaluation
    def _density_bias(self, points: Tensor) -> Tensor:  # [...]
        c = self.config
        bias = torch.full_like(points[..., 0], c.density_shift)
        if c.density_bias == "blob":
            bias = bias + c.blob_density * (1.0 - points.norm(dim=-1) / c.blob_radius)
        return bias

    def _encode_directions(self, directions: Tensor) -> Tensor:  # [..., 3 + 6L]
        freqs = 2.0 ** torch.arange(self.config.direction_frequencies, device=directions.device)
        x = directions[..., None, :] * freqs[:, None]  # [..., L, 3]
        return torch.cat([directions, x.sin().flatten(-2), x.cos().flatten(-2)], dim=-1)

    def forward(
        self,
        points: Tensor,  # [..., 3]
        directions: Tensor | None = None,  # [..., 3]
        step_sizes: Tensor | None = None,  # [...] (unused: density fields don't need them)
    ) -> FieldSample:
        """Density and color at world points.

        Args:
            points: World points.
            directions: Unit view directions (used when the config is view dependent).
            step_sizes: Unused.

        Returns:
            ``FieldSample(rgb [..., 3], density [...])``.
        """
        h = self.trunk(self.encoding(points))  # [..., H]
        bias = self._density_bias(points)
        if self.config.view_dependent:
            raw_density = self.density_head(h)[..., 0]
            if directions is None:
                directions = torch.zeros_like(points)
            raw_rgb = self.color_head(torch.cat([h, self._encode_directions(directions)], dim=-1))
        else:
            out = self.head(h)  # [..., 4]
            raw_density, raw_rgb = out[..., 0], out[..., 1:]
        return FieldSample(rgb=torch.sigmoid(raw_rgb), density=F.softplus(raw_density + bias))

    def density(self, points: Tensor) -> Tensor:
        """Volume density ``[...]`` at world points ``[..., 3]``."""
        h = self.trunk(self.encoding(points))
        raw = self.density_head(h)[..., 0] if self.config.view_dependent else self.head(h)[..., 0]
        return F.softplus(raw + self._density_bias(points))

    def density_fn(self):
        """``points [M, 3] -> density [M]`` without gradients, for marching cubes and occupancy grids."""

        @torch.no_grad()
        def fn(points: Tensor) -> Tensor:
            return self.density(points.to(self.aabb.device)).float()

        return fn

    # ------------------------------------------------------------------ regularisers
    def tv_loss(self) -> Tensor:
        """Total variation of the feature grid (zero for the hash encoding)."""
        if isinstance(self.encoding, DenseGridEncoding):
            return total_variation(self.encoding.grid)
        return self.encoding.tv_loss()

    # ------------------------------------------------------------------ trainer protocol
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: ``encoding`` (the grid) and ``mlp``."""
        enc = list(self.encoding.parameters())
        ids = {id(p) for p in enc}
        return {"encoding": enc, "mlp": [p for p in self.parameters() if id(p) not in ids]}

    def default_learning_rates(self) -> dict[str, float]:
        """Adam learning rates per group of :meth:`parameter_groups` (DVGO-like: grid high, MLP low)."""
        return {"encoding": 3e-2 if self.config.encoding == "dense" else 1e-2, "mlp": 3e-3}

    def checkpoint_state(self) -> dict[str, Any]:
        """``{"config": plain dict, "state_dict": ...}``, for :meth:`from_checkpoint_state`."""
        return {"config": plain_config(self.config), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint_state(cls, state: dict[str, Any]) -> DensityField:
        """Rebuilds a field saved by :meth:`checkpoint_state` (on the device of its tensors)."""
        field = cls(DensityFieldConfig(**state["config"]))
        field.load_state_dict(state["state_dict"])
        device = state["state_dict"]["aabb"].device
        return field.to(device)


def extract_field_mesh(field: nn.Module, resolution: int = 128, level: float = 10.0, chunk_size: int = 65536):
    """Marching cubes on a field's density inside its box.

    Args:
        field: Any :class:`~recon.fields.base.Field` (``field.density`` and ``field.aabb``).
        resolution: Samples per axis.
        level: Density iso level (threestudio's default isosurface threshold for NeRFs is 25; the
            right level depends on how sharp the fitted surface is).
        chunk_size: Points per density call.

    Returns:
        A ``trimesh.Trimesh`` with outward normals.
    """
    from recon.mesh.extract import extract_density_mesh

    aabb = field.aabb.detach().cpu()

    @torch.no_grad()
    def fn(points: Tensor) -> Tensor:
        return field.density(points.to(field.aabb.device)).float()

    return extract_density_mesh(fn, aabb[:3].tolist(), aabb[3:].tolist(), resolution, level, chunk_size)


__all__ = ["DensityField", "DensityFieldConfig", "extract_field_mesh"]
