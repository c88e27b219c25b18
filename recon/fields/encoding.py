"""Point encodings for fields: a dense trilinear feature grid (CPU and CUDA) and a hash grid (CUDA only).

* :class:`DenseGridEncoding` — a feature volume ``[1, F, R, R, R]`` over the field's box, read
  trilinearly with ``F.grid_sample``, as DVGO (https://arxiv.org/abs/2111.11215) and TensoRF
  (https://arxiv.org/abs/2203.09517) do in plain PyTorch. Fast enough on a CPU.
* :class:`HashGridEncoding` — Instant-NGP's multiresolution hash grid
  (https://arxiv.org/abs/2201.05989) through tiny-cuda-nn, which has no CPU support. It is chosen by
  :func:`select_encoding` only for CUDA tensors, never because the import happens to work.

:func:`total_variation` is the grid smoothness regulariser of Plenoxels / DVGO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.errors import UserError

EncodingKind = Literal["dense", "hash"]

TCNN_INSTALL_HINT = (
    "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch "
    "(needs a CUDA GPU and toolkit); or use encoding='dense', which runs everywhere"
)


def _aabb_tensor(aabb: Tensor | Sequence[float]) -> Tensor:
    box = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
    if box.shape != (6,) or not bool((box[3:] > box[:3]).all()):
        raise ValueError(
            f"aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with max > min, got {box.tolist()}"
        )
    return box


class DenseGridEncoding(nn.Module):
    """A dense feature grid over an axis-aligned box, sampled trilinearly.

    Voxel ``(i, j, k)`` (along x, y, z) holds ``grid[0, :, k, j, i]`` and sits at the world point
    ``lo + (i, j, k) * (hi - lo) / (R - 1)``: the corner voxels lie on the box faces
    (``align_corners=True``), the layout of :func:`recon.mesh.extract.grid_points`. Points outside
    the box read the border value.

    Args:
        aabb: ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        resolution: Voxels per axis ``R``.
        features: Channels ``F``.
        init_std: Standard deviation of the normal initialisation (0 for zeros).
    """

    def __init__(
        self, aabb: Tensor | Sequence[float], resolution: int = 64, features: int = 12, init_std: float = 1e-2
    ) -> None:
        super().__init__()
        if resolution < 2:
            raise ValueError(f"resolution must be at least 2, got {resolution}")
        self.resolution = int(resolution)
        self.features = int(features)
        self.register_buffer("aabb", _aabb_tensor(aabb))
        grid = torch.randn(1, features, resolution, resolution, resolution) * init_std
        self.grid = nn.Parameter(grid)  # [1, F, Rz, Ry, Rx]

    @property
    def n_output_dims(self) -> int:
        return self.features

    def normalize(self, points: Tensor) -> Tensor:
        """World points ``[..., 3]`` to grid_sample coordinates in ``[-1, 1]``."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        return (points - lo) * (2.0 / (hi - lo)) - 1.0

    def forward(self, points: Tensor) -> Tensor:
        """Features ``[..., F]`` at world points ``[..., 3]``."""
        lead = points.shape[:-1]
        coords = self.normalize(points.reshape(1, 1, 1, -1, 3).to(self.grid.dtype))  # [1, 1, 1, N, 3] (x,y,z)
        out = F.grid_sample(self.grid, coords, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(self.features, -1).t().reshape(*lead, self.features)  # [..., F]

    def voxel_points(self) -> Tensor:
        """World positions ``[R, R, R, 3]`` of the voxels, indexed ``[i, j, k]`` along x, y, z."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        axes = [
            torch.linspace(float(lo[a]), float(hi[a]), self.resolution, device=lo.device) for a in range(3)
        ]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def tv_loss(self) -> Tensor:
        """:func:`total_variation` of the grid."""
        return total_variation(self.grid)


def total_variation(grid: Tensor) -> Tensor:
    """Mean squared difference of neighbouring voxels of a grid ``[B, F, D, H, W]``, summed over axes."""
    if grid.dim() != 5:
        raise ValueError(f"grid must be [B, F, D, H, W], got {tuple(grid.shape)}")
    dz = (grid[:, :, 1:] - grid[:, :, :-1]).square().mean()
    dy = (grid[:, :, :, 1:] - grid[:, :, :, :-1]).square().mean()
    dx = (grid[..., 1:] - grid[..., :-1]).square().mean()
    return dx + dy + dz


class HashGridEncoding(nn.Module):
    """Instant-NGP hash grid through tiny-cuda-nn (CUDA only), threestudio's defaults.

    Importable everywhere; building it without tinycudann, or calling it on CPU tensors, raises
    :class:`~recon.errors.UserError` with the fix.

    Args:
        aabb: ``(xmin, ymin, zmin, xmax, ymax, zmax)``; points are mapped to ``[0, 1]^3`` inside it.
        n_levels: Resolution levels.
        features_per_level: Features per level.
        log2_hashmap_size: ``log2`` of the table size per level.
        base_resolution: Coarsest resolution.
        per_level_scale: Growth factor between levels.
    """

    def __init__(
        self,
        aabb: Tensor | Sequence[float],
        n_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
    ) -> None:
        super().__init__()
        try:
            import tinycudann as tcnn
        except ImportError as err:
            raise UserError(
                f"the hash-grid encoding needs tinycudann, which is not installed: {TCNN_INSTALL_HINT}"
            ) from err
        self.register_buffer("aabb", _aabb_tensor(aabb))
        self.features = n_levels * features_per_level
        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": n_levels,
                "n_features_per_level": features_per_level,
                "log2_hashmap_size": log2_hashmap_size,
                "base_resolution": base_resolution,
                "per_level_scale": per_level_scale,
            },
        )

    @property
    def n_output_dims(self) -> int:
        return self.features

    def forward(self, points: Tensor) -> Tensor:
        """Features ``[..., F]`` at world points ``[..., 3]`` (CUDA tensors only)."""
        if points.device.type != "cuda":
            raise UserError("the hash-grid encoding runs on CUDA tensors only; use encoding='dense' on a CPU")
        lead = points.shape[:-1]
        lo, hi = self.aabb[:3], self.aabb[3:]
        x = ((points.reshape(-1, 3) - lo) / (hi - lo)).clamp(0.0, 1.0)
        return self.encoding(x).float().reshape(*lead, self.features)

    def tv_loss(self) -> Tensor:
        """Hash tables have no grid neighbourhood: zero."""
        return self.aabb.new_zeros(())


def select_encoding(device: torch.device | str) -> EncodingKind:
    """``"hash"`` when ``device`` is CUDA and tinycudann imports, else ``"dense"``.

    The import is only attempted for a CUDA device, so a CPU machine never touches tinycudann.
    """
    if torch.device(device).type != "cuda":
        return "dense"
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return "dense"
    return "hash"


__all__ = ["DenseGridEncoding", "HashGridEncoding", "EncodingKind", "select_encoding", "total_variation"]
