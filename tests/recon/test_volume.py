"""Volume renderer: CPU path with occupancy skipping vs the dense reference, camera alignment, no CUDA JIT."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from recon.cameras import orbit_cameras
from recon.data.procedural import SPHERE_RADIUS, camera_rays, render_primitive
from recon.fields import DensityField, DensityFieldConfig
from recon.render.volume import (
    OccupancyGrid,
    ray_aabb_intersect,
    render_field,
    render_rays,
    render_rays_reference,
)

REPO = Path(__file__).resolve().parents[2]


def _sharp_field(seed: int = 0) -> DensityField:
    """A random field whose density falls off fast outside |x| ~ 0.7: exp(-40 * 0.7) ~ 1e-12 at |x| = 0.85."""
    torch.manual_seed(seed)
    cfg = DensityFieldConfig(grid_resolution=20, features=8, hidden=32, blob_density=40.0, grid_init_std=0.5)
    return DensityField(cfg)


def _rays(n_random: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    cams = orbit_cameras(2, elevation_deg=20.0, distance=2.6, fov_deg=50.0, width=20, height=20)
    o, d, _ = camera_rays(cams)
    g = torch.Generator().manual_seed(seed)
    ro = torch.randn(n_random, 3, generator=g) * 2.5  # some inside the box, many missing it
    rd = torch.nn.functional.normalize(torch.randn(n_random, 3, generator=g), dim=-1)
    return torch.cat([o.reshape(-1, 3), ro]), torch.cat([d.reshape(-1, 3), rd])


def _params(field: DensityField) -> list[torch.nn.Parameter]:
    return [p for group in field.parameter_groups().values() for p in group]


def test_ray_aabb_intersect_known_rays():
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0], [0.0, 0.0, 0.0], [0.5, 0.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    t0, t1, hit = ray_aabb_intersect(o, d, aabb)
    assert hit.tolist() == [True, False, True, True]
    torch.testing.assert_close(t0[hit], torch.tensor([2.0, 0.0, 4.0]))
    torch.testing.assert_close(t1[hit], torch.tensor([4.0, 1.0, 6.0]))


def test_cpu_path_without_occupancy_equals_reference():
    field = _sharp_field(1)
    o, d = _rays()
    a = render_rays(field, o, d, num_samples=48)
    b = render_rays_reference(field, o, d, num_samples=48)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.alpha, b.alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.weights, b.weights, atol=1e-5, rtol=0)
    assert a.meta["n_rays_sampled"] < o.shape[0]  # rays that miss the box were not sampled


def test_occupancy_skipping_matches_dense_reference_images_and_gradients():
    """Skipped cells are near-empty by construction: the blob bias makes density < 1e-9 beyond |x| ~ 0.8,
    the grid keeps cells whose max opacity over 8 samples exceeds 1e-9, dilated by one cell."""
    field = _sharp_field(2)
    o, d = _rays()
    occ = OccupancyGrid(field.aabb, resolution=24)
    occ.rebuild(
        field, threshold=1e-9, samples_per_cell=8, dilate=1, generator=torch.Generator().manual_seed(0)
    )
    assert 0.1 < occ.occupied_fraction < 0.6

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = render_rays(field, o, d, num_samples=64, stratified=True, generator=g1, occupancy=occ)
    b = render_rays_reference(field, o, d, num_samples=64, stratified=True, generator=g2)
    assert a.meta["n_samples_evaluated"] < 0.4 * b.meta["n_samples_evaluated"]  # skipping is really active
    assert (b.alpha > 0.5).float().mean() > 0.05  # and the images are not empty
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.alpha, b.alpha, atol=1e-4, rtol=0)
    solid = b.alpha[:, 0] > 0.5
    torch.testing.assert_close(a.depth[solid], b.depth[solid], atol=1e-4, rtol=0)

    w = torch.rand(o.shape[0], 3, generator=torch.Generator().manual_seed(3))
    params = _params(field)
    ga = torch.autograd.grad((a.rgb * w).sum() + a.alpha.sum() + 0.1 * (a.depth * a.alpha).sum(), params)
    gb = torch.autograd.grad((b.rgb * w).sum() + b.alpha.sum() + 0.1 * (b.depth * b.alpha).sum(), params)
    for x, y in zip(ga, gb):
        assert y.norm() > 0
        assert float((x - y).norm() / y.norm()) < 1e-3


def test_occupancy_update_warmup_then_marks_the_blob():
    torch.manual_seed(0)
    field = DensityField(DensityFieldConfig(grid_resolution=16, features=4, hidden=16, blob_density=20.0))
    occ = OccupancyGrid(field.aabb, resolution=16)
    g = torch.Generator().manual_seed(0)
    assert not occ.update(field, step=3, generator=g)  # not a multiple of every_n
    assert occ.update(field, step=0, warmup_steps=32, generator=g)
    assert occ.occupied_fraction == 1.0  # warm-up: nothing skipped yet
    for step in range(32, 32 + 16 * 8, 16):
        occ.update(field, step=step, warmup_steps=32, generator=g)
    centres = (torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij"), -1) + 0.5) / 16 * 2 - 1
    r = centres.norm(dim=-1)
    assert occ.binary[r < 0.45].all()  # density ~ softplus(20 * (1 - 0.9)) * step > 0.01
    assert not occ.binary[r > 0.85].any()  # softplus(20 * (1 - 1.7)) ~ 1e-6
    assert 0.02 < occ.occupied_fraction < 0.4
    # a point query agrees with the cell table
    assert occ.query(torch.tensor([[0.0, 0.0, 0.0], [0.95, 0.95, 0.95], [2.0, 0.0, 0.0]])).tolist() == [
        True,
        False,
        False,
    ]


def _blob_sphere_field(radius: float) -> DensityField:
    """Raw MLP output zeroed: density = softplus(1e5 * (1 - |x| / radius)), a sphere of that radius."""
    field = DensityField(
        DensityFieldConfig(grid_resolution=8, features=4, hidden=8, blob_density=1e5, blob_radius=radius)
    )
    with torch.no_grad():
        field.head.weight.zero_()
        field.head.bias.zero_()
        field.head.bias[1:] = 2.0  # rgb = sigmoid(2) everywhere
    return field


def test_render_field_lines_up_with_render_primitive_sphere():
    field = _blob_sphere_field(SPHERE_RADIUS)
    cams = orbit_cameras(3, elevation_deg=25.0, distance=2.8, fov_deg=45.0, width=40, height=32)
    cams.cx = cams.cx + 3.0  # off-centre principal point: a flipped axis would move the sphere
    cams.cy = cams.cy - 2.0
    with torch.no_grad():
        out = render_field(field, cams, num_samples=256, with_depth=True)
    _, alpha_ref, depth_ref = render_primitive("sphere", "red", cams, supersample=1)
    a, b = out.alpha[..., 0] > 0.5, alpha_ref[..., 0] > 0.5
    iou = float((a & b).sum() / (a | b).sum())
    assert iou > 0.98  # measured 1.0
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(40.0), indexing="ij")
    for c in range(3):
        centre = torch.stack([xs[a[c]].mean(), ys[a[c]].mean()])
        centre_ref = torch.stack([xs[b[c]].mean(), ys[b[c]].mean()])
        assert float((centre - centre_ref).abs().max()) < 0.1
    both = a & b & (out.alpha[..., 0] > 0.99)
    depth_err = (out.depth[..., 0][both] - depth_ref[..., 0][both]).abs()
    assert float(depth_err.median()) < 0.01  # about half a sample step (0.008): measured 0.006
    assert out.rgb.shape == (3, 32, 40, 3) and out.depth.shape == (3, 32, 40, 1)
    # white where empty, the field's color where opaque
    torch.testing.assert_close(out.rgb[~a & ~b], torch.ones_like(out.rgb[~a & ~b]), atol=1e-3, rtol=0)
    expect = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(
        out.rgb[both], torch.full_like(out.rgb[both], float(expect)), atol=1e-3, rtol=0
    )


_NO_JIT_SCRIPT = textwrap.dedent(
    """
    import torch
    from recon.fields import DensityField, DensityFieldConfig
    from recon.render.volume import OccupancyGrid, render_field, render_rays, render_rays_reference
    from recon.cameras import orbit_cameras

    torch.manual_seed(0)
    field = DensityField(DensityFieldConfig(grid_resolution=12, features=4, hidden=8))
    occ = OccupancyGrid(field.aabb, resolution=8)
    for step in (0, 16, 32):
        occ.update(field, step, warmup_steps=16)
    occ.rebuild(field, threshold=1e-3)
    cams = orbit_cameras(1, width=8, height=8)
    out = render_field(field, cams, num_samples=16, occupancy=occ, stratified=True)
    (out.rgb.sum() + out.depth.sum()).backward()
    ref = render_rays_reference(field, torch.zeros(4, 3) + 2, -torch.ones(4, 3) / 3**0.5, 16)
    assert field.encoding.grid.grad.abs().sum() > 0
    print("OK", float(out.alpha.mean()))
    """
)


def test_cpu_paths_never_start_nerfacc_cuda_jit(tmp_path):
    ext_dir = tmp_path / "torch_extensions"
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(ext_dir), PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-c", _NO_JIT_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "OK" in res.stdout
    assert not list(ext_dir.rglob("nerfacc_cuda")), "a CPU render started nerfacc's CUDA JIT build"


@pytest.mark.cuda
def test_cuda_packed_path_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: the packed nerfacc OccGridEstimator path runs on CUDA tensors only")
    field = _sharp_field(3).cuda()
    o, d = _rays()
    o, d = o.cuda(), d.cuda()
    occ = OccupancyGrid(field.aabb, resolution=32).cuda()
    occ.rebuild(field, threshold=1e-9, dilate=1)
    a = render_rays(field, o, d, num_samples=512, occupancy=occ)
    b = render_rays_reference(field, o, d, num_samples=512)
    assert a.meta["path"] == "cuda"
    # different sample placement (constant step vs per-chord), both fine: compare to a few 1e-3
    torch.testing.assert_close(a.rgb, b.rgb, atol=2e-2, rtol=0)
    torch.testing.assert_close(a.alpha, b.alpha, atol=2e-2, rtol=0)
    loss = a.rgb.sum()
    loss.backward()
    assert field.encoding.grid.grad.abs().sum() > 0
