"""The compiled CPU backend: ``rasterize_to_pixels`` as an autograd function over the C++ kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from recon.render._cpu_ext import load_cpu_extension


class _RasterizeToPixelsCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, radii, order, width, height, tile_size):
        ext = load_cpu_extension()
        out_colors, out_alphas, tile_offsets, flat_ids, last_ids = ext.rasterize_forward(
            means2d, conics, colors, opacities, radii, order, width, height, tile_size
        )
        ctx.save_for_backward(
            means2d, conics, colors, opacities, radii, tile_offsets, flat_ids, out_alphas, last_ids
        )
        ctx.size = (width, height, tile_size)
        return out_colors, out_alphas

    @staticmethod
    def backward(ctx, v_colors_out, v_alphas_out):
        means2d, conics, colors, opacities, radii, tile_offsets, flat_ids, out_alphas, last_ids = (
            ctx.saved_tensors
        )
        width, height, tile_size = ctx.size
        ext = load_cpu_extension()
        v_means2d, v_conics, v_colors, v_opacities = ext.rasterize_backward(
            means2d,
            conics,
            colors,
            opacities,
            radii,
            tile_offsets,
            flat_ids,
            out_alphas,
            last_ids,
            v_colors_out.float().contiguous(),
            v_alphas_out.float().contiguous(),
            width,
            height,
            tile_size,
        )
        return v_means2d, v_conics, v_colors, v_opacities, None, None, None, None, None


def rasterize_to_pixels_cpu(
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
    """Front-to-back compositing of projected Gaussians with the compiled C++/OpenMP kernels."""
    order = torch.argsort(depths.detach(), dim=-1, stable=True).contiguous()

    def f32(t: Tensor) -> Tensor:
        return t.float().contiguous()

    return _RasterizeToPixelsCPU.apply(
        f32(means2d),
        f32(conics),
        f32(colors),
        f32(opacities),
        radii.int().contiguous(),
        order,
        width,
        height,
        tile_size,
    )
