"""The pure-PyTorch reference rasterizer (autograd does the backward).

A fair baseline, not a toy: it enumerates only the Gaussian–pixel pairs inside each Gaussian's
bounding box (never a dense N×pixels tensor), sorts the pairs by (pixel, depth), and composites
each pixel's segment with a cumulative sum of ``log(1 − alpha)``. Semantics are identical to the
compiled backend (see ``csrc/rasterize.cpp``): same support, same 1/255 threshold, same 0.999
clamp, same exclusive early termination at transmittance 1e-4.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.render.projection import ALPHA_THRESHOLD

_TRANSMITTANCE_EPS = 1e-4


def _pairs_in_boxes(means2d: Tensor, radii: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
    """(gaussian id, pixel x, pixel y) for every pixel center inside each Gaussian's box."""
    mx, my = means2d.detach().unbind(-1)
    rx, ry = radii[:, 0].float(), radii[:, 1].float()
    x0 = torch.ceil(mx - rx - 0.5).clamp_min(0).long()
    x1 = torch.floor(mx + rx - 0.5).clamp_max(width - 1).long()
    y0 = torch.ceil(my - ry - 0.5).clamp_min(0).long()
    y1 = torch.floor(my + ry - 0.5).clamp_max(height - 1).long()
    nx = (x1 - x0 + 1).clamp_min(0)
    ny = (y1 - y0 + 1).clamp_min(0)
    nx = torch.where((radii > 0).all(-1), nx, torch.zeros_like(nx))
    count = nx * ny
    gid = torch.repeat_interleave(torch.arange(len(count)), count)
    first = torch.cumsum(count, 0) - count
    local = torch.arange(int(count.sum())) - first[gid]
    px = x0[gid] + local % nx[gid]
    py = y0[gid] + torch.div(local, nx[gid], rounding_mode="floor")
    return gid, px, py


def _rasterize_one_camera(means2d, conics, colors, opacities, radii, depths, width, height):
    N, D = colors.shape
    gid, px, py = _pairs_in_boxes(means2d, radii, width, height)
    dx = means2d[gid, 0] - (px + 0.5)
    dy = means2d[gid, 1] - (py + 0.5)
    a, b, c = conics[gid].unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[gid] * torch.exp(-sigma), 0.999)
    keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    gid, alpha = gid[keep], alpha[keep]
    pix = (py * width + px)[keep]

    depth_rank = torch.empty(N, dtype=torch.long)
    depth_rank[torch.argsort(depths.detach(), stable=True)] = torch.arange(N)
    order = torch.argsort(pix * N + depth_rank[gid])
    gid, alpha, pix = gid[order], alpha[order], pix[order]

    log_t = torch.log1p(-alpha.double())  # per-pair log(1 - alpha)
    incl = torch.cumsum(log_t, 0)
    is_start = torch.ones_like(pix, dtype=torch.bool)
    is_start[1:] = pix[1:] != pix[:-1]
    seg = torch.cumsum(is_start.long(), 0) - 1
    base = (incl - log_t)[is_start][seg]  # cumulative sum before each pixel's first pair
    t_before = torch.exp(incl - log_t - base)
    t_after = torch.exp(incl - base)
    taken = t_after > _TRANSMITTANCE_EPS

    weights = (alpha * t_before * taken).float()  # [P]
    image = torch.zeros(height * width, D, dtype=colors.dtype)
    image = image.index_add(0, pix, weights[:, None] * colors[gid])
    log_transmittance = torch.zeros(height * width, dtype=torch.float64).index_add(0, pix, log_t * taken)
    alphas = (1.0 - torch.exp(log_transmittance)).to(colors.dtype)
    return image.view(height, width, D), alphas.view(height, width, 1)


def rasterize_to_pixels_torch(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int32
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor]:  # [C, H, W, D], [C, H, W, 1]
    """Reference compositing; ``tile_size`` is accepted for signature parity and unused."""
    del tile_size
    images, alphas = [], []
    for c in range(means2d.shape[0]):
        image, alpha = _rasterize_one_camera(
            means2d[c], conics[c], colors[c], opacities[c], radii[c], depths[c], width, height
        )
        images.append(image)
        alphas.append(alpha)
    return torch.stack(images), torch.stack(alphas)
