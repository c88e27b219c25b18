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
    order = load_cpu_extension().depth_order(depths.detach().float().contiguous())  # = stable argsort

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


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, radius_clip
    ):
        ext = load_cpu_extension()
        means2d, conics, depths, radii = ext.project_forward(
            means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, radius_clip
        )
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii)
        ctx.settings = (width, height, near, far, eps2d)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_radii):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        width, height, near, far, eps2d = ctx.settings

        def grad(t, like):
            return torch.zeros_like(like) if t is None else t.float().contiguous()

        v_means, v_quats, v_scales, v_viewmats = load_cpu_extension().project_backward(
            means, quats, scales, viewmats, Ks, radii, width, height, near, far, eps2d,
            grad(v_means2d, radii.float()), grad(v_conics, torch.empty(*radii.shape[:2], 3)),
            grad(v_depths, radii[..., 0].float()), ctx.needs_input_grad[4],
        )  # fmt: skip
        v_viewmats = v_viewmats if ctx.needs_input_grad[4] else None  # zeros, not computed
        return v_means, v_quats, v_scales, None, v_viewmats, None, None, None, None, None, None, None


def project_gaussians_cpu(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
):
    """The compiled twin of :func:`recon.render.projection.project_gaussians` (same outputs)."""
    from recon.render.projection import Projection

    def f32(t: Tensor) -> Tensor:
        return t.float().contiguous()

    means2d, conics, depths, radii = _ProjectCPU.apply(
        f32(means), f32(quats), f32(scales), f32(opacities.detach()), f32(viewmats), f32(Ks), width, height,
        near_plane, far_plane, eps2d, radius_clip,
    )  # fmt: skip
    return Projection(means2d, conics, depths, radii, opacities.expand(len(viewmats), -1))
