"""Differentiable rendering of 3D Gaussians behind one function modelled on ``gsplat.rasterization``.

Backends (``backend=``):

* ``"gsplat"`` — gsplat's CUDA kernels; used automatically for CUDA tensors.
* ``"cpu"`` — the compiled C++/OpenMP rasterizer (``csrc/rasterize.cpp``) with a hand-written
  backward; used automatically for CPU tensors. Built on first use and cached.
* ``"torch"`` — the pure-PyTorch reference that the tests compare against.
* ``"auto"`` (default) — ``gsplat`` on CUDA, else ``cpu`` (``torch`` if the extension can't be
  built, after one warning). ``SDS3D_RENDER_BACKEND`` overrides the automatic choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from recon.render.projection import Projection, project_gaussians, sh_to_colors

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RasterizeMode = Literal["classic", "antialiased"]
Backend = Literal["auto", "gsplat", "cpu", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "gsplat", "cpu", "torch")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for ``backend`` on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        backend = os.environ.get("SDS3D_RENDER_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"SDS3D_RENDER_BACKEND={backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        backend = "gsplat" if device.type == "cuda" else "cpu"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError(
            "the gsplat backend needs CUDA tensors; use backend='cpu' on a machine without a GPU"
        )
    if backend in ("cpu", "torch") and device.type != "cpu":
        raise ValueError(f"the {backend} backend renders CPU tensors; move them with .cpu() or use 'gsplat'")
    if backend == "cpu":
        from recon.render._cpu_ext import load_cpu_extension

        if load_cpu_extension() is None:
            backend = "torch"
    return backend


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] linear
    opacities: Tensor,  # [N] in [0, 1]
    colors: Tensor,  # [N, D] / [C, N, D], or SH coefficients [N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D] or [D] for the color channels
    render_mode: RenderMode = "RGB",
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    tile_size: int = 16,
    backend: Backend = "auto",
    rasterize_mode: RasterizeMode = "classic",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Renders 3D Gaussians from ``C`` cameras, with gsplat's conventions.

    Args:
        means: Gaussian centers.
        quats: Rotations as quaternions (w, x, y, z); normalized internally.
        scales: Per-axis standard deviations (already exponentiated).
        opacities: Opacities (already through the sigmoid).
        colors: Per-Gaussian features, or SH coefficients ``[N, K, 3]`` when ``sh_degree`` is set
            (colors = ``max(SH(dir) + 0.5, 0)`` as in gsplat / the 3DGS paper's code).
        viewmats: World-to-camera matrices (OpenCV: +Z forward, +Y down).
        Ks: Pinhole intrinsics in pixels.
        width: Image width.
        height: Image height.
        near_plane: Gaussians with camera-space depth below this are culled.
        far_plane: Gaussians with depth above this are culled.
        sh_degree: SH degree to evaluate (``None``: ``colors`` are plain features).
        backgrounds: Background added where the image is not opaque, for the color channels only.
        render_mode: ``RGB``, ``D`` (accumulated z), ``ED`` (expected z = D / alpha), ``RGB+D``,
            ``RGB+ED``. Depth is appended as the last channel.
        rasterize_mode: ``classic``, or ``antialiased`` (gsplat's, from Mip-Splatting,
            https://arxiv.org/abs/2311.16493): the ``eps2d`` low-pass widens every 2D Gaussian, so
            each opacity is scaled by ``sqrt(det Σ₂ / det(Σ₂ + eps2d·I))`` and a Gaussian smaller than
            a pixel keeps its integrated weight instead of bleeding over its neighbours.
        eps2d: Low-pass filter added to the 2D covariances (pixels²).
        radius_clip: Gaussians whose bounding-box radius is at most this (pixels) are skipped.
        tile_size: Tile size of the compiled backend.
        backend: See the module docstring.

    Returns:
        ``(render_colors [C, H, W, D'], render_alphas [C, H, W, 1], meta)``; ``meta`` carries
        ``means2d`` (its ``.grad`` drives densification), ``radii`` ``[C, N, 2]``, ``depths``,
        ``conics``, ``width``, ``height``, ``n_cameras`` and ``backend`` — the keys gsplat's
        strategies read.
    """
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"unknown rasterize_mode {rasterize_mode!r}; use 'classic' or 'antialiased'")
    if means.ndim != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    backend = resolve_backend(backend, means.device)
    if backend == "gsplat":
        return _rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
            sh_degree, backgrounds, render_mode, eps2d, radius_clip, tile_size, rasterize_mode,
        )  # fmt: skip

    if backend == "cpu":
        from recon.render.rasterize_cpu import project_gaussians_cpu as project
    else:
        project = project_gaussians
    proj: Projection = project(
        means,
        quats,
        scales,
        opacities,
        viewmats,
        Ks,
        width,
        height,
        near_plane,
        far_plane,
        eps2d,
        radius_clip,
    )
    opacities_2d = proj.opacities
    if rasterize_mode == "antialiased":
        opacities_2d = opacities_2d * antialias_compensation(proj.conics, eps2d)
    C = viewmats.shape[0]
    if sh_degree is not None:
        feats = sh_to_colors(colors, sh_degree, means, viewmats)  # [C, N, 3]
    elif colors.dim() == 2:
        feats = colors[None].expand(C, -1, -1)
    else:
        feats = colors
    if render_mode == "RGB":
        channels = feats
    elif render_mode in ("D", "ED"):
        channels = proj.depths[..., None]
    else:
        channels = torch.cat([feats, proj.depths[..., None]], dim=-1)

    if backend == "cpu":
        from recon.render.rasterize_cpu import rasterize_to_pixels_cpu as rasterize_to_pixels
    else:
        from recon.render.rasterize_torch import rasterize_to_pixels_torch as rasterize_to_pixels
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    render, alphas = rasterize_to_pixels(
        proj.means2d, proj.conics, channels, opacities_2d, proj.radii, proj.depths, width, height, tile_size
    )
    render = _finish(render, alphas, backgrounds, render_mode)
    meta = {
        "means2d": proj.means2d,
        "radii": proj.radii,
        "gaussian_ids": None,  # not packed
        "depths": proj.depths,
        "conics": proj.conics,
        "width": width,
        "height": height,
        "n_cameras": C,
        "tile_size": tile_size,
        "backend": backend,
    }
    return render, alphas, meta


def antialias_compensation(conics: Tensor, eps2d: float) -> Tensor:  # [..., 3] -> [...]
    """``sqrt(det Σ₂ / det(Σ₂ + eps2d·I))`` from a projection's conics (inverse blurred covariances)."""
    a, b, c = conics.unbind(-1)
    det_blurred = 1.0 / (a * c - b * b).clamp_min(1e-30)
    # the blurred covariance is (c, -b, a) * det_blurred; removing eps2d from its diagonal:
    det = det_blurred - eps2d * (a + c) * det_blurred + eps2d * eps2d
    return (det / det_blurred).clamp_min(1e-12).sqrt()  # finite gradients at degenerate Gaussians


def _finish(
    render: Tensor,
    alphas: Tensor,
    backgrounds: Tensor | None,
    render_mode: str,
    depth_is_expected: bool = False,
) -> Tensor:
    """Expected depth and background, applied identically for every backend."""
    has_depth = render_mode != "RGB"
    if render_mode in ("ED", "RGB+ED") and not depth_is_expected:
        render = torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp_min(1e-10)], dim=-1)
    if backgrounds is not None and render_mode not in ("D", "ED"):
        n_color = render.shape[-1] - int(has_depth)
        bg = backgrounds.to(render).reshape(-1, n_color)[:, None, None, :]  # [C or 1, 1, 1, D]
        color = render[..., :n_color] + (1.0 - alphas) * bg
        render = torch.cat([color, render[..., n_color:]], dim=-1) if has_depth else color
    return render


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
    sh_degree, backgrounds, render_mode, eps2d, radius_clip, tile_size, rasterize_mode="classic",
):  # fmt: skip
    import gsplat

    render, alphas, info = gsplat.rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        sh_degree=sh_degree,
        backgrounds=None,
        render_mode=render_mode,
        eps2d=eps2d,
        radius_clip=radius_clip,
        tile_size=tile_size,
        packed=False,
        rasterize_mode=rasterize_mode,
    )
    render = _finish(render, alphas, backgrounds, render_mode, depth_is_expected=True)  # gsplat divides ED
    meta = dict(info)
    meta.update(n_cameras=viewmats.shape[0], backend="gsplat")
    return render, alphas, meta


@dataclass
class RenderOutput:
    """Images of a scene (Gaussians, a field, a mesh) from a batch of cameras; every renderer returns it."""

    rgb: Tensor  # [C, H, W, 3]
    alpha: Tensor  # [C, H, W, 1]
    depth: Tensor | None  # [C, H, W, 1] expected z-depth, when asked for
    meta: dict[str, Any]
    normals: Tensor | None = None  # [C, H, W, 3] expected world-space normals, where defined


def render_gaussians(
    model,  # recon.gaussians.GaussianModel
    cameras,  # recon.cameras.Cameras
    background: Tensor | float | None = 1.0,
    with_depth: bool = False,
    backend: Backend = "auto",
    sh_degree: int | None = None,
) -> RenderOutput:
    """Renders a :class:`~recon.gaussians.GaussianModel` from :class:`~recon.cameras.Cameras`.

    Args:
        model: The Gaussians.
        cameras: The cameras (one image size).
        background: RGB background (a float for gray levels, ``[3]`` or ``[C, 3]``), ``None`` for black.
        with_depth: Also return expected z-depth (``RGB+ED``).
        backend: Render backend (see the module docstring).
        sh_degree: SH degree to evaluate (default: all the model has).

    Returns:
        The images, alpha, optional depth and the rasterizer's ``meta``.
    """
    device = model.means.device
    if background is not None and not isinstance(background, Tensor):
        background = torch.full((3,), float(background), device=device)
    render, alpha, meta = rasterization(
        means=model.means,
        quats=model.quats,
        scales=model.scales,
        opacities=model.opacities,
        colors=model.sh_coeffs,
        viewmats=cameras.viewmats().to(device),
        Ks=cameras.Ks().to(device),
        width=cameras.width,
        height=cameras.height,
        sh_degree=model.sh_degree if sh_degree is None else sh_degree,
        backgrounds=background,
        render_mode="RGB+ED" if with_depth else "RGB",
        backend=backend,
    )
    depth = render[..., 3:4] if with_depth else None
    return RenderOutput(rgb=render[..., :3], alpha=alpha, depth=depth, meta=meta)


def render_scene(
    model: Any,  # GaussianModel, a field (recon.fields), or a TexturedMesh
    cameras,  # recon.cameras.Cameras
    background: Tensor | float | None = 1.0,
    with_depth: bool = False,
    **options: Any,
) -> RenderOutput:
    """Renders any representation with its renderer (Gaussians, volume rendering, mesh rasterization).

    ``options`` go to that renderer (e.g. ``num_samples`` for a field).
    """
    if hasattr(model, "splats"):
        return render_gaussians(model, cameras, background=background, with_depth=with_depth, **options)
    if hasattr(model, "aabb"):
        from recon.render.volume import render_field

        return render_field(model, cameras, background=background, with_depth=with_depth, **options)
    if hasattr(model, "texture"):  # recon.render.mesh.TexturedMesh (depth and normals always)
        return model(cameras, background=background, **options)
    raise TypeError(f"no renderer for a {type(model).__name__}")


__all__ = [
    "rasterization",
    "render_gaussians",
    "render_scene",
    "resolve_backend",
    "RenderOutput",
    "RenderMode",
    "Backend",
]
