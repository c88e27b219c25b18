from __future__ import annotations

import math
import time

import pytest
import torch

from recon.cameras import orbit_cameras, sample_hemisphere_cameras
from recon.data.procedural import (
    COLORS,
    DEFAULT_AMBIENT,
    DEFAULT_LIGHT_DIR,
    SHAPES,
    SPHERE_RADIUS,
    caption,
    primitive_sdf,
    projected_sphere_area,
    render_primitive,
)


def test_every_primitive_fits_in_the_unit_sphere():
    g = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(20000, 3, generator=g), dim=-1) * 1.0
    for shape in SHAPES:
        assert (primitive_sdf(shape, pts) > 0).all(), shape
        assert primitive_sdf(shape, torch.zeros(1, 3)).item() < 0 or shape == "torus"
    # torus: the hole at the centre is empty, the tube centre is inside
    assert primitive_sdf("torus", torch.zeros(1, 3)).item() > 0
    assert primitive_sdf("torus", torch.tensor([[0.6, 0.0, 0.0]])).item() == pytest.approx(-0.25, abs=1e-6)


def test_sdfs_are_exact_on_known_points():
    assert primitive_sdf("cube", torch.tensor([[1.55, 0.0, 0.0]])).item() == pytest.approx(1.0, abs=1e-6)
    assert primitive_sdf("cylinder", torch.tensor([[0.0, 1.7, 0.0]])).item() == pytest.approx(1.0, abs=1e-6)
    assert primitive_sdf("cone", torch.tensor([[0.0, 1.7, 0.0]])).item() == pytest.approx(1.0, abs=1e-6)
    assert primitive_sdf("cone", torch.tensor([[0.0, -1.7, 0.0]])).item() == pytest.approx(1.0, abs=1e-6)
    # SDF is 1-Lipschitz (conservative for sphere tracing)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(5000, 3, generator=g) * 2.4 - 1.2
    b = a + torch.randn(5000, 3, generator=g) * 0.05
    for shape in SHAPES:
        lip = (primitive_sdf(shape, a) - primitive_sdf(shape, b)).abs() / (a - b).norm(dim=-1)
        assert lip.max().item() <= 1.0 + 1e-3, shape


def test_sphere_silhouette_area_and_center_depth():
    cams = orbit_cameras(1, elevation_deg=10.0, distance=3.0, fov_deg=40.0, width=129, height=129)
    rgb, alpha, depth = render_primitive("sphere", "blue", cams)
    expected = projected_sphere_area(SPHERE_RADIUS, 3.0, cams.fx.item())
    assert alpha.sum().item() == pytest.approx(expected, rel=0.02)
    assert depth[0, 64, 64, 0].item() == pytest.approx(3.0 - SPHERE_RADIUS, abs=5e-3)
    assert depth[0, 0, 0, 0].item() == 0.0 and alpha[0, 0, 0, 0].item() == 0.0
    torch.testing.assert_close(rgb[0, 0, 0], torch.ones(3))  # white background


def test_lit_colors_follow_the_shading_model():
    cams = orbit_cameras(1, elevation_deg=0.0, distance=3.0, width=65, height=65)
    for name, rgb_ref in COLORS.items():
        rgb, alpha, _ = render_primitive("sphere", name, cams)
        # The centre pixel sees the point (0, 0, 0.8) with normal +Z.
        light = torch.nn.functional.normalize(torch.tensor(DEFAULT_LIGHT_DIR), dim=0)
        shade = DEFAULT_AMBIENT + (1 - DEFAULT_AMBIENT) * light[2].item()
        torch.testing.assert_close(rgb[0, 32, 32], torch.tensor(rgb_ref) * shade, atol=0.02, rtol=0)
        # every fully covered pixel is a scaled copy of the albedo: same chromaticity
        inner = rgb[alpha[..., 0] > 0.999]
        chroma = inner / inner.sum(-1, keepdim=True)
        ref = torch.tensor(rgb_ref) / sum(rgb_ref)
        assert (chroma - ref).abs().max().item() < 0.01, name
    # white-free palette: every color is clearly darker than the background in some channel
    assert all(min(c) < 0.7 for c in COLORS.values())


def test_shapes_have_distinct_silhouettes_and_axis_up():
    cams = orbit_cameras(2, elevation_deg=20.0, width=48, height=48)
    masks = {s: render_primitive(s, "red", cams)[1][..., 0] > 0.5 for s in SHAPES}
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1 :]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou.item() < 0.9, (a, b, iou.item())
    # cone: wide at the bottom, narrow at the top (apex up, +Y)
    cone = masks["cone"][0].float()
    rows = cone.sum(-1).nonzero().squeeze(-1)
    top, bottom = rows.min().item(), rows.max().item()
    assert cone[top + 3].sum() < cone[bottom - 3].sum()


def test_checker_texture_and_batch_speed():
    g = torch.Generator().manual_seed(0)
    cams = sample_hemisphere_cameras(32, width=32, height=32, generator=g)
    render_primitive("cube", "green", cams[:2])  # warm-up
    t0 = time.perf_counter()
    rgb, alpha, depth = render_primitive("cube", "green", cams, texture="checker")
    elapsed = time.perf_counter() - t0
    assert rgb.shape == (32, 32, 32, 3) and alpha.shape == depth.shape == (32, 32, 32, 1)
    assert elapsed < 3.0  # ~0.2 s when the machine is idle
    plain = render_primitive("cube", "green", cams)[0]
    inner = alpha[..., 0] > 0.999
    ratio = (rgb[inner] / plain[inner].clamp_min(1e-4))[:, 1]
    assert ratio.min().item() == pytest.approx(0.55, abs=0.02)
    assert ratio.max().item() == pytest.approx(1.0, abs=0.02)
    assert 0.0 < alpha.mean().item() < 0.7 and 0.0 <= rgb.min() and rgb.max() <= 1.0
    # depth lies between the near and far bounds of the unit sphere
    d = cams.camera_centers.norm(dim=-1)[:, None, None, None]
    covered = alpha > 0.999
    assert (depth[covered] > (d - 1.0).expand_as(depth)[covered] * math.cos(math.radians(25)) - 1e-3).all()


def test_caption():
    assert caption("cube", "red") == "a red cube"
    assert caption("cone", "orange") == "an orange cone"
    assert caption("cube", "red", "front view") == "a red cube, front view"
    with pytest.raises(ValueError):
        caption("pyramid", "red")
