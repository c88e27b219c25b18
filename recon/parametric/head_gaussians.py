"""Gaussians bound to the head mesh's triangles, so expressions, the jaw and the neck carry them.

GaussianAvatars (Qian et al. 2024, https://arxiv.org/abs/2312.02069) and HeadStudio (Zhou et al. 2024,
https://arxiv.org/abs/2402.06149; Zero-1-to-A builds on it, https://arxiv.org/abs/2503.15851) attach each
Gaussian to a FLAME triangle's local frame and scale it with the triangle. The binding math is the hand
avatar's (:class:`recon.parametric.hand_gaussians.HandGaussians`: centroid, ``sqrt(area)`` and the frame
``[X, Y, Z]`` of each triangle), reused here unchanged; a head has one side, so nothing is mirrored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.parametric.hand_gaussians import HandGaussians
from recon.parametric.heads import HeadModel

SKIN = (0.78, 0.6, 0.5)


class HeadGaussians(HandGaussians):
    """Gaussians on the triangles of a head mesh; :meth:`deform` places them on any posed, expressive mesh.

    Args:
        faces: The head's triangles ``[F, 3]``.
        rest_vertices: The neutral mesh ``[V, 3]`` (sizes the initial Gaussians).
        per_face: Gaussians per triangle.
        color: Initial RGB.
        generator: For the initial positions inside each triangle.
    """

    def __init__(
        self,
        faces: Tensor,
        rest_vertices: Tensor,
        per_face: int = 1,
        color: tuple[float, float, float] = SKIN,
        generator: torch.Generator | None = None,
        thickness: float = 1.0,
    ) -> None:
        super().__init__(
            faces, rest_vertices, per_face=per_face, color=color, generator=generator, thickness=thickness
        )

    @classmethod
    def on_model(
        cls,
        model: HeadModel,
        betas: Tensor | None = None,  # [1, K]
        per_face: int = 1,
        color: tuple[float, float, float] = SKIN,
        generator: torch.Generator | None = None,
        thickness: float = 1.0,
    ) -> HeadGaussians:
        """Gaussians on ``model``'s neutral head of shape ``betas`` (the mean shape by default)."""
        with torch.no_grad():
            rest = model(betas=betas).vertices[0]
        return cls(
            model.faces, rest, per_face=per_face, color=color, generator=generator, thickness=thickness
        )

    def deform(self, vertices: Tensor, side: str = "right") -> tuple[Tensor, Tensor, Tensor]:
        """Means ``[B, N, 3]``, unit quaternions ``[B, N, 4]`` and scales ``[B, N, 3]`` on posed head meshes
        ``[B, V, 3]`` (``side`` is the hand's argument; a head has none)."""
        return super().deform(vertices, "right")
