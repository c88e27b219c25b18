"""Fitting 3D Gaussians to views of a procedurally textured scene (the renderer's end-to-end check)."""

from __future__ import annotations

import math

import pytest
import torch

from recon.cameras import Cameras, cameras_from_spherical
from recon.gaussians import GaussianModel
from recon.render import render_gaussians
from recon.render._cpu_ext import load_cpu_extension

RADIUS = 0.8


def texture(points: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [..., 3]
    """Smooth colored stripes on the sphere."""
    phase = torch.tensor([0.0, 2.1, 4.2])
    return 0.5 + 0.35 * torch.sin(4.0 * points[..., [0, 1, 2]] + 3.0 * points[..., [1, 2, 0]] + phase)


def render_textured_sphere(cams: Cameras, supersample: int = 2) -> torch.Tensor:
    """Exact ray-cast of the textured sphere on a white background: [C, H, W, 3]."""
    hi = cams.scaled(supersample)
    ys, xs = torch.meshgrid(torch.arange(hi.height) + 0.5, torch.arange(hi.width) + 0.5, indexing="ij")
    images = []
    for i in range(len(hi)):
        d_cam = torch.stack(
            [(xs - hi.cx[i]) / hi.fx[i], -(ys - hi.cy[i]) / hi.fy[i], -torch.ones_like(xs)], -1
        )
        c2w = hi.camera_to_worlds[i]
        d = torch.nn.functional.normalize(d_cam @ c2w[:3, :3].T, dim=-1)
        o = c2w[:3, 3].expand_as(d)
        b = (o * d).sum(-1)
        disc = b**2 - ((o * o).sum(-1) - RADIUS**2)
        hit = disc > 0
        t = -b - torch.sqrt(disc.clamp_min(0))
        rgb = torch.where(hit[..., None], texture(o + t[..., None] * d), torch.ones(3))
        images.append(rgb)
    img = torch.stack(images).permute(0, 3, 1, 2)
    return torch.nn.functional.avg_pool2d(img, supersample).permute(0, 2, 3, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@pytest.mark.skipif(load_cpu_extension() is None, reason="the C++ CPU rasterizer could not be compiled")
def test_gaussians_fit_textured_sphere_to_25db_on_held_out_views():
    torch.manual_seed(0)
    elev = torch.tensor([-15.0, 30.0]).repeat_interleave(8)
    azim = torch.arange(8.0).repeat(2) * 45.0 + torch.tensor([0.0, 22.5]).repeat_interleave(8)
    ones = torch.ones(16)
    cams = cameras_from_spherical(elev, azim, 3.0 * ones, 40.0 * ones, 48, 48)
    images = render_textured_sphere(cams)
    test_idx = torch.arange(16)[3::4]
    train_idx = torch.tensor([i for i in range(16) if i not in set(test_idx.tolist())])

    # Start from a rough shell of gray Gaussians; optimization does the rest.
    n = 3000
    k = torch.arange(n) + 0.5
    phi, theta = torch.acos(1 - 2 * k / n), math.pi * (1 + 5**0.5) * k
    pts = RADIUS * torch.stack(
        [torch.sin(phi) * torch.cos(theta), torch.cos(phi), torch.sin(phi) * torch.sin(theta)], -1
    )
    model = GaussianModel.from_points(pts * 0.9, torch.full((n, 3), 0.5), sh_degree=0, init_opacity=0.5)
    lrs = {"means": 2e-3, "scales": 1e-2, "quats": 1e-2, "opacities": 5e-2, "sh0": 2e-2, "shN": 1e-3}
    opt = torch.optim.Adam([{"params": [p], "lr": lrs[k]} for k, p in model.splats.items()], eps=1e-15)
    gen = torch.Generator().manual_seed(0)
    for _ in range(250):
        batch = train_idx[torch.randperm(len(train_idx), generator=gen)[:4]]
        out = render_gaussians(model, cams[batch], background=1.0)
        loss = (out.rgb - images[batch]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        held_out = render_gaussians(model, cams[test_idx], background=1.0).rgb
        train = render_gaussians(model, cams[train_idx], background=1.0).rgb
    print(
        f"train {psnr(train, images[train_idx]):.2f} dB, held-out {psnr(held_out, images[test_idx]):.2f} dB"
    )
    initial = psnr(torch.full_like(images[test_idx], 0.5), images[test_idx])
    assert psnr(train, images[train_idx]) >= 25.0
    assert psnr(held_out, images[test_idx]) >= 25.0, (
        f"held-out PSNR {psnr(held_out, images[test_idx]):.2f} dB"
    )
    assert psnr(held_out, images[test_idx]) > initial + 10
