"""Occupancy grids: which cells of a field's box hold anything, for empty-space skipping.

The grid follows nerfacc's ``OccGridEstimator`` (https://arxiv.org/abs/2305.04966): an EMA of the
opacity a sample would take in each cell, refreshed every few training steps; the volume renderer
(:mod:`recon.render.volume`) evaluates the field only at samples in occupied cells.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def uniform_random(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device (a CPU generator for CUDA tensors too)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


class OccupancyGrid(nn.Module):
    """A binary grid of occupied cells over a field's box, updated from the field's density.

    A cell is occupied when ``density * step_size`` (the opacity a sample there would take) has
    exceeded a threshold recently: the estimate is an EMA (``occs = max(occs * ema, new)``) of the
    density at one random point per cell, as nerfacc's ``OccGridEstimator``. An un-updated grid is
    fully occupied (nothing is skipped).

    Args:
        aabb: ``(xmin, ymin, zmin, xmax, ymax, zmax)``, usually ``field.aabb``.
        resolution: Cells per axis.
    """

    def __init__(self, aabb: Tensor, resolution: int = 64) -> None:
        super().__init__()
        self.resolution = int(resolution)
        R = self.resolution
        aabb = torch.as_tensor(aabb, dtype=torch.float32)
        self.register_buffer("aabb", aabb.reshape(6).clone())
        self.register_buffer("occs", torch.zeros(R**3, device=aabb.device))  # on the box's device
        self.register_buffer("binary", torch.ones(R, R, R, dtype=torch.bool, device=aabb.device))  # [x, y, z]
        self._nerfacc: dict[str, Any] = {}

    @property
    def occupied_fraction(self) -> float:
        return float(self.binary.float().mean())

    def default_step_size(self) -> float:
        """The box diagonal over 128 (the sample spacing of ``num_samples=128`` across the box)."""
        return float((self.aabb[3:] - self.aabb[:3]).norm()) / 128.0

    def _cell_points(self, cells: Tensor, generator: torch.Generator | None) -> Tensor:  # [M] -> [M, 3]
        R = self.resolution
        ijk = torch.stack([cells // (R * R), (cells // R) % R, cells % R], dim=-1).float()
        jitter = uniform_random(ijk.shape, generator, ijk.device)
        lo, hi = self.aabb[:3], self.aabb[3:]
        return lo + (ijk + jitter) / R * (hi - lo)

    def _evaluate(self, field: nn.Module, cells: Tensor, step_size: float, generator, chunk: int) -> Tensor:
        out = []
        for s in range(0, cells.numel(), chunk):
            pts = self._cell_points(cells[s : s + chunk], generator).to(self.aabb.device)
            out.append(field.density(pts).float() * step_size)
        return torch.cat(out) if out else self.occs.new_zeros(0)

    @torch.no_grad()
    def update(
        self,
        field: nn.Module,
        step: int,
        threshold: float = 0.01,
        ema: float = 0.95,
        every_n: int = 16,
        warmup_steps: int = 256,
        step_size: float | None = None,
        generator: torch.Generator | None = None,
        chunk: int = 1 << 18,
    ) -> bool:
        """Refreshes the grid every ``every_n`` training steps (threestudio's defaults).

        During warm-up (``step < warmup_steps``) every cell is re-evaluated and all cells stay
        occupied; afterwards a random quarter of the cells plus the occupied ones are re-evaluated
        and a cell is occupied when its EMA exceeds ``min(threshold, mean EMA)`` (nerfacc's rule).

        Args:
            field: The field (``field.density(points)``).
            step: The training step.
            threshold: Opacity ``density * step_size`` above which a cell is occupied.
            ema: Decay of the running estimate.
            every_n: Update period in steps.
            warmup_steps: Steps during which nothing is skipped.
            step_size: Sample spacing the opacity refers to (default :meth:`default_step_size`).
            generator: Random generator for the cell samples.
            chunk: Points per density call.

        Returns:
            Whether the grid was updated at this step.
        """
        if step % every_n:
            return False
        step_size = self.default_step_size() if step_size is None else float(step_size)
        n = self.occs.numel()
        device = self.occs.device
        if step < warmup_steps:
            cells = torch.arange(n, device=device)
        else:
            rand = torch.randint(n, (n // 4,), generator=generator, device="cpu").to(device)
            cells = torch.cat([rand, self.binary.view(-1).nonzero().squeeze(-1)]).unique()
        occ = self._evaluate(field, cells, step_size, generator, chunk)
        self.occs[cells] = torch.maximum(self.occs[cells] * ema, occ)
        if step < warmup_steps:
            self.binary.fill_(True)
        else:
            thre = torch.clamp(self.occs.mean(), max=threshold)
            self.binary.copy_((self.occs > thre).view_as(self.binary))
        return True

    @torch.no_grad()
    def rebuild(
        self,
        field: nn.Module,
        threshold: float = 0.01,
        step_size: float | None = None,
        samples_per_cell: int = 8,
        dilate: int = 0,
        generator: torch.Generator | None = None,
        chunk: int = 1 << 18,
    ) -> None:
        """Rebuilds the grid at once: the max opacity over ``samples_per_cell`` random points per cell.

        A cell is occupied when that max exceeds ``threshold`` (no mean rule), then the occupied set
        is grown by ``dilate`` cells. For a field that is not being trained (rendering, tests).
        """
        step_size = self.default_step_size() if step_size is None else float(step_size)
        cells = torch.arange(self.occs.numel(), device=self.occs.device)
        occ = torch.stack(
            [self._evaluate(field, cells, step_size, generator, chunk) for _ in range(samples_per_cell)]
        )
        self.occs.copy_(occ.amax(dim=0))
        binary = (self.occs > threshold).view_as(self.binary)
        if dilate > 0:
            k = 2 * dilate + 1
            binary = F.max_pool3d(binary[None, None].float(), k, stride=1, padding=dilate)[0, 0] > 0
        self.binary.copy_(binary)

    def query(self, points: Tensor, inside_box: bool = False) -> Tensor:
        """Whether each point ``[..., 3]`` lies in an occupied cell ``[...]``.

        Args:
            points: World points.
            inside_box: The caller guarantees the points lie in the box (ray samples clipped to it):
                skip the outside test (points on the faces count in the border cells).

        Returns:
            Occupancy per point (false outside the box).
        """
        R = self.resolution
        lo, hi = self.aabb[:3], self.aabb[3:]
        u = (points - lo) * (R / (hi - lo))  # [..., 3] in cell units
        if inside_box:
            ijk = u.clamp(0.0, R - 1).long()
            flat = (ijk[..., 0] * R + ijk[..., 1]) * R + ijk[..., 2]
            return self.binary.view(-1)[flat]
        ijk = torch.floor(u).long()
        inside = ((ijk >= 0) & (ijk < R)).all(dim=-1)
        ijk = ijk.clamp(0, R - 1)
        flat = (ijk[..., 0] * R + ijk[..., 1]) * R + ijk[..., 2]
        return self.binary.view(-1)[flat] & inside

    def nerfacc_estimator(self):
        """A nerfacc ``OccGridEstimator`` (one level) holding this grid's cells, for the CUDA path."""
        from nerfacc import OccGridEstimator

        key = str(self.binary.device)
        est = self._nerfacc.get(key)
        if est is None:
            est = OccGridEstimator(roi_aabb=self.aabb.detach().cpu(), resolution=self.resolution, levels=1)
            est = est.to(self.binary.device)
            self._nerfacc[key] = est
        est.binaries.copy_(self.binary[None])
        return est
