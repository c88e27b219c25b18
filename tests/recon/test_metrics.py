"""recon.metrics: known answers for PSNR, SSIM parity, Chamfer / F-score / normal consistency, MPJPE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from recon.metrics import (
    mesh_metrics,
    mpjpe,
    point_cloud_metrics,
    procrustes_align,
    psnr,
    sample_surface_points,
    ssim,
)


def reference_ssim(a: Tensor, b: Tensor, window: int = 11) -> Tensor:
    """sds3d's own SSIM before recon.metrics (recon/pipelines/video_recon.py at ad314a0), kept as the twin."""
    x = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    g = (g / g.sum()).to(a)
    a = a.reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2)
    b = b.reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2)
    c = a.shape[1]
    kx, ky = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


# ------------------------------------------------------------------------------------------ images
def test_psnr_of_known_mse():
    a = torch.zeros(2, 8, 8, 3, dtype=torch.float64)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    assert psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-9)
    assert psnr(a, a + 25.5, data_range=255.0) == pytest.approx(20.0, abs=1e-9)
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError):
        psnr(a, a[0])


@pytest.mark.parametrize("shape", [(1, 32, 32, 3), (4, 40, 56, 3), (2, 3, 24, 20, 1)])
def test_ssim_matches_the_previous_implementation(shape):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(shape, generator=gen)
    b = (a + 0.15 * torch.randn(shape, generator=gen)).clamp(0, 1)
    a.requires_grad_(True)
    ours, ref = ssim(a, b), reference_ssim(a, b)
    assert abs(ours.item() - ref.item()) <= 1e-4
    (g_ours,) = torch.autograd.grad(ours, a)
    (g_ref,) = torch.autograd.grad(ref, a)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
    assert float(ssim(b, b)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(torch.rand(shape, generator=gen), b)) < 0.1


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3))


# ------------------------------------------------------------------------------------------ surfaces
def test_concentric_spheres_chamfer_is_the_radius_gap():
    r1, r2 = 1.0, 1.1
    inner = trimesh.creation.icosphere(subdivisions=5, radius=r1)
    outer = trimesh.creation.icosphere(subdivisions=5, radius=r2)
    m = mesh_metrics(inner, outer, n_points=50_000, thresholds=(0.05, 0.15))
    assert m.chamfer_l1 == pytest.approx(r2 - r1, abs=2e-3)
    assert m.accuracy == pytest.approx(r2 - r1, abs=2e-3)
    assert m.completeness == pytest.approx(r2 - r1, abs=2e-3)
    assert m.chamfer_l2 == pytest.approx((r2 - r1) ** 2, rel=0.05)
    assert m.fscore[0.05] == 0.0 and m.fscore[0.15] == 1.0
    assert m.normal_consistency == pytest.approx(1.0, abs=1e-3)


def test_identical_meshes_score_zero_and_fscore_one():
    mesh = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    p, n = sample_surface_points(mesh, 20_000, seed=3)
    p2, n2 = sample_surface_points(mesh, 20_000, seed=3)
    assert np.array_equal(p, p2)  # seeded
    m = point_cloud_metrics(p, p2, (0.001,), n, -n2)  # flipped normals: |cos| is orientation-agnostic
    assert m.chamfer_l1 == 0.0 and m.fscore[0.001] == 1.0 and m.normal_consistency == pytest.approx(1.0)
    # Independent samples of the same surface: only sampling noise remains.
    m = mesh_metrics(mesh, mesh, n_points=20_000, thresholds=(0.05,))
    # (pairs across the box's edges have orthogonal normals, hence NC a little below 1)
    assert m.chamfer_l1 < 0.015 and m.fscore[0.05] == 1.0 and m.normal_consistency > 0.97


def test_shifted_point_sets():
    grid = np.stack(np.meshgrid(*[np.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3)  # spacing 1
    shifted = grid + np.array([0.1, 0.0, 0.0])
    m = point_cloud_metrics(torch.from_numpy(shifted), grid, thresholds=(0.05, 0.15))
    assert m.chamfer_l1 == pytest.approx(0.1, abs=1e-12) and m.chamfer_l2 == pytest.approx(0.01, abs=1e-12)
    assert m.fscore[0.05] == 0.0 and m.fscore[0.15] == 1.0
    # A prediction covering only half the ground truth: precision 1, recall 1/2, F = 2/3.
    half = grid[grid[:, 0] < 2.5]
    m = point_cloud_metrics(half, grid, thresholds=(0.5,))
    assert m.precision[0.5] == 1.0 and m.recall[0.5] == pytest.approx(len(half) / len(grid))
    assert m.fscore[0.5] == pytest.approx(2 * 0.6 / 1.6)


def test_normal_consistency_of_random_normals_is_one_half():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(20_000, 3))
    n = rng.normal(size=(20_000, 3))
    m = point_cloud_metrics(pts, pts, (0.1,), n, rng.normal(size=(20_000, 3)))
    assert m.normal_consistency == pytest.approx(0.5, abs=0.01)  # E|cos| of random directions in 3D
    with pytest.raises(ValueError):
        point_cloud_metrics(pts, pts, (0.1,), n, None)


# ------------------------------------------------------------------------------------------ poses
def _skeleton(gen: torch.Generator) -> Tensor:  # [2, 21, 3], two hands of 21 joints
    return torch.randn(2, 21, 3, generator=gen, dtype=torch.float64) * 0.05


def test_mpjpe_of_a_translated_skeleton():
    gen = torch.Generator().manual_seed(0)
    gt = _skeleton(gen)
    t = torch.tensor([0.03, -0.04, 0.0], dtype=torch.float64)  # |t| = 0.05
    pred = gt + t
    assert float(mpjpe(pred, gt)) == pytest.approx(0.05, abs=1e-12)
    assert float(mpjpe(pred, gt, align="root")) == pytest.approx(0.0, abs=1e-12)
    assert float(mpjpe(pred, gt, align="procrustes")) == pytest.approx(0.0, abs=1e-9)


def test_pa_mpjpe_removes_rotation_and_scale_but_not_shape_error():
    gen = torch.Generator().manual_seed(1)
    gt = _skeleton(gen)
    angle = 0.7
    R = torch.tensor(
        [[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]],
        dtype=torch.float64,
    )
    pred = 1.3 * gt @ R.T + torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    assert float(mpjpe(pred, gt, align="procrustes")) == pytest.approx(0.0, abs=1e-9)
    assert float(mpjpe(pred, gt, align="root")) > 0.01
    torch.testing.assert_close(procrustes_align(pred, gt), gt)
    # A mirrored skeleton is not a rotation: Procrustes (reflections excluded) cannot undo it.
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(mpjpe(mirrored, gt, align="procrustes")) > 1e-3
    with pytest.raises(ValueError):
        mpjpe(pred, gt, align="scale")  # type: ignore[arg-type]
