"""EWA projection of 3D Gaussians to the image plane and view-dependent colors, in PyTorch.

Shared by every CPU backend (the compiled one and the reference), differentiable through autograd.
The math and thresholds are gsplat's (``fully_fused_projection``, pinhole): world→camera, the
perspective Jacobian with gsplat's 1.3×FOV clamp, a 0.3 px² low-pass (``eps2d``), and gsplat's
opacity-aware bounding box ``extend = min(3.33, sqrt(2 ln(255 o)))``, which holds every pixel with
``alpha >= 1/255``. Covariances and SH reuse gsplat's reference functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from gsplat.cuda._torch_impl import _quat_to_rotmat, _spherical_harmonics
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0


@dataclass
class Projection:
    """Per-camera 2D Gaussians."""

    means2d: Tensor  # [C, N, 2] pixel coordinates (pixel centers at i + 0.5)
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c): sigma = 0.5(a dx² + c dy²) + b dx dy
    depths: Tensor  # [C, N] z in camera space
    radii: Tensor  # [C, N, 2] int32 half-extent of the bounding box in pixels; 0 = culled
    opacities: Tensor  # [C, N]


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, need not be normalized
    scales: Tensor,  # [N, 3] linear scales
    opacities: Tensor,  # [N] in [0, 1]
    viewmats: Tensor,  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> Projection:
    """Projects Gaussians into ``C`` pinhole cameras (gsplat semantics, see module docstring)."""
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]

    x, y, z = means_c.unbind(-1)
    in_depth = (z > near_plane) & (z < far_plane)
    # Culled Gaussians get a harmless depth so that no inf/nan enters autograd.
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = torch.maximum(torch.minimum(x / z, lim_x_pos), -lim_x_neg)  # clamped x/z
    ty = torch.maximum(torch.minimum(y / z, lim_y_pos), -lim_y_neg)
    # cov2d = J W Σ Wᵀ Jᵀ with Σ = (R_q S)(R_q S)ᵀ, written as A Aᵀ for the 2×3 matrix A = J W R_q S,
    # whose rows are M0 R_q S and M1 R_q S with M = J W (rows of the perspective Jacobian J:
    # (fx/z, 0, -fx·tx/z) and (0, fy/z, -fy·ty/z)).
    inv_z = 1.0 / z
    M0 = (fx * inv_z)[..., None] * (R[:, None, 0, :] - tx[..., None] * R[:, None, 2, :])  # [C, N, 3]
    M1 = (fy * inv_z)[..., None] * (R[:, None, 1, :] - ty[..., None] * R[:, None, 2, :])
    RS = _quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] columns scaled
    A0 = torch.einsum("cnj,njk->cnk", M0, RS)
    A1 = torch.einsum("cnj,njk->cnk", M1, RS)
    a = (A0 * A0).sum(-1) + eps2d
    b = (A0 * A1).sum(-1)
    c = (A1 * A1).sum(-1) + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    inv_det = 1.0 / det
    conics = torch.stack([c * inv_det, -b * inv_det, a * inv_det], dim=-1)
    means2d = torch.stack([fx * x * inv_z + cx, fy * y * inv_z + cy], dim=-1)

    with torch.no_grad():
        op = opacities.detach().expand_as(z)
        valid = valid & (op >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(3.33)
        radius_x = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        radius_y = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        valid = valid & ~((radius_x <= radius_clip) & (radius_y <= radius_clip))
        mx, my = means2d.detach().unbind(-1)
        on_screen = (
            (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
        )
        valid = valid & on_screen
        radii = torch.where(valid[..., None], torch.stack([radius_x, radius_y], -1), 0.0).to(torch.int32)

    return Projection(
        means2d=means2d,
        conics=conics,
        depths=means_c[..., 2],
        radii=radii,
        opacities=opacities.expand_as(z),
    )


def sh_to_colors(
    sh_coeffs: Tensor,  # [N, K, 3] or [C, N, K, 3]
    sh_degree: int,
    means: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
) -> Tensor:  # [C, N, 3]
    """View-dependent RGB from SH coefficients, gsplat/Inria convention: ``max(SH(d) + 0.5, 0)``."""
    K = sh_coeffs.shape[-2]
    if (sh_degree + 1) ** 2 > K:
        raise ValueError(f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} coefficients, got {K}")
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
    coeffs = sh_coeffs if sh_coeffs.dim() == 4 else sh_coeffs[None].expand(len(viewmats), -1, -1, -1)
    colors = _spherical_harmonics(sh_degree, dirs, coeffs)
    return torch.clamp_min(colors + 0.5, 0.0)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    degree = int(math.isqrt(k)) - 1
    if num_sh_bases(degree) != k:
        raise ValueError(f"{k} SH coefficients is not a square number")
    return degree
