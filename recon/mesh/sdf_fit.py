"""The mesh of an SDF fitted to a picture: its floaters and its iso-level.

Used by DreamCraft3D's geometry stages (:mod:`recon.pipelines.dreamcraft3d`): the sculpt stage pushes
out the small pieces of the SDF's inside (:func:`floater_points`, kept in the checkpoint by
:class:`FloaterCache`), and the texture stage meshes the level whose cleaned mesh best matches the
reference picture's outline (:func:`fit_mesh_level`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from recon.cameras import Cameras
from recon.errors import UserError
from recon.fields import SDFField
from recon.fields.sdf import extract_sdf_mesh

log = logging.getLogger("sds3d.dreamcraft3d")


@torch.no_grad()
def floater_points(field: SDFField, resolution: int = 64, min_fraction: float = 0.05) -> torch.Tensor:
    """``[N, 3]`` grid points inside the SDF (``s < 0``) that lie in small pieces (floaters).

    The inside of the SDF sampled on a ``resolution³`` grid over its box is split into 26-connected
    pieces; those with fewer than ``min_fraction`` of the largest piece's cells are floaters. The
    reference view grows them near the camera to fill the picture's outline where the body falls
    short (a mug: 20 pieces of ≤ 0.1 % beside the body; the body alone then missed 35 of the
    reference mask's pixels, with them 12).
    """
    from scipy import ndimage

    aabb = field.aabb.detach()
    lin = [
        torch.linspace(float(aabb[i]), float(aabb[i + 3]), resolution, device=aabb.device) for i in range(3)
    ]
    grid = torch.stack(torch.meshgrid(*lin, indexing="ij"), -1).reshape(-1, 3)
    values = torch.cat([field.sdf(chunk).reshape(-1) for chunk in grid.split(65536)])
    inside = (values < 0).reshape(resolution, resolution, resolution).cpu().numpy()
    labels, count = ndimage.label(inside, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return grid[:0]
    sizes = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(sizes < min_fraction * sizes.max()) + 1
    chosen = torch.from_numpy(np.isin(labels, small).reshape(-1)).to(grid.device)
    return grid[chosen]


class FloaterCache(torch.nn.Module):
    """The floaters the sculpt stage pushes out (:func:`floater_points`), kept in the checkpoint so a
    resumed run pushes the very points the uninterrupted run did until their next search. A checkpoint
    without it (an older version's) still resumes: the floaters are then searched again at once."""

    optional_in_checkpoint = True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("points", torch.zeros(0, 3))
        self.register_buffer("found", torch.zeros((), dtype=torch.bool))

    def set(self, points: torch.Tensor) -> None:
        self.points = points.to(self.points.device)
        self.found = torch.ones((), dtype=torch.bool, device=self.points.device)

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False):
        self.points = state["points"].to(self.points.device)  # any number of points
        self.found = state["found"].to(self.points.device)


LEVEL_CANDIDATES = tuple(round(0.01 * k, 2) for k in range(-5, 6))
"""Offsets from ``mesh_level`` that :func:`fit_mesh_level` tries (SDF units; the box is ±1)."""


def fit_mesh_level(
    field: SDFField, resolution: int, mask: torch.Tensor, camera: Cameras, center: float = 0.0
) -> tuple[float, Any]:
    """The iso-level whose mesh best matches the reference picture's outline (silhouette IoU), and that
    cleaned mesh (``None`` when no candidate level has a surface).

    The volume render that the reference loss trains turns opaque a little off the SDF's zero level
    (NeuS' logistic density has width), so the zero level's mesh can overhang the outline (a mug's
    handle hole: 12 of 64² pixels too many at level 0, none at −0.02). Each candidate level
    ``center + LEVEL_CANDIDATES`` is meshed and cleaned as the texture stage will have it
    (:func:`recon.mesh.cleanup.clean_mesh`: the raw mesh's stray pieces can cover the outline that the
    kept piece misses) and rasterized from the reference camera; the best IoU wins, the level nearest
    ``center`` on a tie.
    """
    from recon.mesh.cleanup import clean_mesh
    from recon.render.mesh_raster import rasterize_mesh

    target = (mask > 0.5).to(field.aabb.device)
    best, best_iou, best_mesh = center, -1.0, None
    for offset in sorted(LEVEL_CANDIDATES, key=abs):
        level = center + offset
        try:
            mesh = clean_mesh(extract_sdf_mesh(field, resolution, level=level))
        except UserError:  # no surface at this level
            continue
        vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=target.device)
        faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=target.device)
        covered = rasterize_mesh(vertices, faces, camera)
        covered = covered.mask[0].to(target.device)
        iou = float((covered & target).sum()) / max(float((covered | target).sum()), 1.0)
        if iou > best_iou + 1e-6:
            best, best_iou, best_mesh = level, iou, mesh
    log.info("mesh level %.2f: silhouette IoU %.4f with the reference", best, best_iou)
    return best, best_mesh
