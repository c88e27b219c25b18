"""Visibility grid and visibility-weighted SDS weights (priors.visibility, DP-Recon)."""

from __future__ import annotations

import math

import pytest
import torch

from priors.visibility import (
    VisibilityGrid,
    VisibilityWeightsConfig,
    color_weights,
    fit_visibility_grid,
    free_space_visibility,
    geometry_weights,
    sample_points,
    transmittance_from_weights,
    visibility_map,
)
from recon.cameras import cameras_from_spherical
from recon.data.procedural import camera_rays
from recon.fields.sdf import laplace_density

SPHERE_C, SPHERE_R = torch.tensor([0.0, 0.0, -0.5]), 0.3
WALL_LO, WALL_HI = torch.tensor([-1.0, -1.0, -0.05]), torch.tensor([1.0, -0.05, 0.05])


def _scene_sdf(p: torch.Tensor) -> torch.Tensor:
    """A sphere behind a low wall: the wall hides the sphere's lower half, the sphere its own back."""
    sphere = (p - SPHERE_C).norm(dim=-1) - SPHERE_R
    q = (p - (WALL_LO + WALL_HI) / 2).abs() - (WALL_HI - WALL_LO) / 2
    wall = q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)
    return torch.minimum(sphere, wall)


def _weights_along(origins, dirs, n_samples=160, beta=0.01):
    """Dense quadrature through [-1, 1]^3: sample points [R, S, 3] and compositing weights [R, S]."""
    t = torch.linspace(0.0, 4.5, n_samples + 1)
    t0, t1 = t[:-1].expand(len(origins), -1), t[1:].expand(len(origins), -1)
    pts = sample_points(origins, dirs, t0, t1)
    inside = (pts.abs() <= 1.0).all(-1)
    sigma = laplace_density(_scene_sdf(pts), beta) * inside
    alpha = 1.0 - torch.exp(-sigma * (t1 - t0))
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], -1), -1)
    return pts, trans * alpha, inside


def _front_cameras(size=40):
    el = torch.tensor([2.0, 2.0, 2.0, 6.0, 6.0, 6.0])
    az = torch.tensor([-9.0, 0.0, 9.0, -9.0, 0.0, 9.0])
    ones = torch.ones(6)
    return cameras_from_spherical(
        el, az, ones * 2.6, ones * 40.0, size, size, target=torch.tensor([0, 0, -0.3])
    )


def _exact_envelope(points: torch.Tensor, cams) -> torch.Tensor:
    """max over views of the transmittance in front of each point (0 outside every view)."""
    best = torch.zeros(len(points))
    for c in range(len(cams)):
        eye = cams.camera_centers[c]
        d = torch.nn.functional.normalize(points - eye, dim=-1)
        dist = (points - eye).norm(dim=-1)
        n = 200
        s = torch.linspace(0, 1, n + 1)[:-1] + 0.5 / n
        pts = eye + d[:, None] * (dist[:, None, None] * s[None, :, None])
        inside = (pts.abs() <= 1.0).all(-1)
        sigma = laplace_density(_scene_sdf(pts), 0.01) * inside
        trans = torch.exp(-(sigma * dist[:, None] / n).sum(-1))
        cam = (points - eye) @ cams.camera_to_worlds[c, :3, :3]  # OpenGL camera coordinates
        u = cams.fx[c] * cam[:, 0] / -cam[:, 2] + cams.cx[c]
        v = -cams.fy[c] * cam[:, 1] / -cam[:, 2] + cams.cy[c]
        in_view = (cam[:, 2] < 0) & (u >= 0) & (u < cams.width) & (v >= 0) & (v < cams.height)
        best = torch.maximum(best, trans * in_view)
    return best


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    cams = _front_cameras()
    o, d, _ = camera_rays(cams)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    pts, w, inside = _weights_along(o, d)
    trans = transmittance_from_weights(w) * inside  # the renderer samples inside the box only
    grid = VisibilityGrid([-1, -1, -1, 1, 1, 1], 32)
    g = torch.Generator().manual_seed(0)

    def batch(step):
        idx = torch.randint(0, len(o), (1024,), generator=g)
        return pts[idx], trans[idx]

    losses = fit_visibility_grid(grid, batch, 150, learning_rate=0.05)
    return grid, cams, losses


def test_transmittance_from_weights_is_exact_for_alphas():
    alpha = torch.tensor([[0.2, 0.5, 0.0, 0.9, 0.3]])
    trans = torch.cumprod(torch.cat([torch.ones(1, 1), 1 - alpha[:, :-1]], -1), -1)
    assert torch.allclose(transmittance_from_weights(trans * alpha), trans, atol=1e-6)


def test_grid_learns_the_visibility_of_a_scene_with_a_known_occluder(fitted):
    grid, cams, losses = fitted
    assert sum(losses[-20:]) / 20 < 0.05 * sum(losses[:5]) / 5
    probe = torch.tensor(
        [
            [0.0, 0.0, 1.0],  # free space in front: seen by every camera
            [0.0, 0.2, -0.26],  # in front of the sphere's upper half (above the wall): seen
            [0.0, 0.0, -0.84],  # behind the sphere: its own back hides it
            [0.0, -0.25, -0.31],  # in front of the sphere's lower half, behind the wall: hidden
            [0.0, -0.5, -0.3],  # behind the wall
        ]
    )
    g = grid(probe).detach()
    assert g[0] > 0.95 and g[1] > 0.8, g
    assert g[2] < 0.05 and g[3] < 0.1 and g[4] < 0.05, g


def test_grid_converges_to_the_max_transmittance_envelope(fitted):
    """G(x) ~= max over views of T(x), away from shadow edges (a grid cell blurs them)."""
    grid, cams, _ = fitted
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(3000, 3, generator=g) * 1.8 - 0.9
    env = _exact_envelope(pts, cams)
    # points whose whole neighbourhood (one grid cell) shares the envelope's side of 0.5
    cell = 2.0 / 31
    offsets = torch.tensor(
        [[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=torch.float32
    )
    neigh = torch.stack([_exact_envelope(pts + cell * o, cams) for o in offsets], -1)
    clear = ((neigh > 0.5) == (env > 0.5)[:, None]).all(-1) & ((env < 0.05) | (env > 0.95))
    assert clear.sum() > 1000
    err = (grid(pts[clear]) - env[clear]).abs()
    assert float((err < 0.15).float().mean()) > 0.95, float((err < 0.15).float().mean())
    # the envelope is a max over views: a point one camera sees and another does not counts as seen
    one_view = _exact_envelope(pts, cams[:1]) < 0.05
    seen_by_others = one_view & clear & (env > 0.95)
    assert seen_by_others.sum() > 10 and float(grid(pts[seen_by_others]).detach().min()) > 0.6


def test_visibility_map_sums_weighted_grid_values_and_saturates_at_one():
    grid = VisibilityGrid([-1, -1, -1, 1, 1, 1], 4)
    with torch.no_grad():
        grid.grid.fill_(0.6)
    pts = torch.zeros(3, 2, 3)
    w = torch.tensor([[0.5, 0.25], [1.0, 1.0], [0.0, 0.0]])
    assert torch.allclose(visibility_map(grid, w, pts), torch.tensor([0.45, 1.0, 0.0]))
    packed = visibility_map(grid, w.reshape(-1), pts.reshape(-1, 3), torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    assert torch.allclose(packed, torch.tensor([0.45, 1.0, 0.0]))


def test_empty_pixels_take_the_free_space_visibility_by_their_remaining_transmittance():
    grid = VisibilityGrid([-1, -1, -1, 1, 1, 1], 4)
    with torch.no_grad():
        grid.grid.fill_(0.6)
    pts = torch.zeros(3, 2, 3)
    w = torch.tensor([[0.5, 0.25], [1.0, 0.0], [0.0, 0.0]])
    free = torch.tensor([1.0, 0.0, 0.9])
    # 0.45 drawn + 0.25 empty x 1.0; fully drawn: free space ignored; empty: the free-space value
    expected = torch.tensor([0.70, 0.6, 0.9])
    assert torch.allclose(visibility_map(grid, w, pts, free_space=free), expected)
    packed = visibility_map(
        grid, w.reshape(-1), pts.reshape(-1, 3), torch.tensor([0, 0, 1, 1, 2, 2]), 3, free_space=free
    )
    assert torch.allclose(packed, expected)


def test_free_space_visibility_is_the_lowest_visibility_along_the_chord():
    # seen (1) up to x = 1/3, then falling linearly to 0 at x = 1 (vertices at x = -1, -1/3, 1/3, 1)
    grid = VisibilityGrid([-1, -1, -1, 1, 1, 1], 4)
    with torch.no_grad():
        grid.grid.fill_(1.0)
        grid.grid[..., 3] = 0.0
    box = torch.tensor([-0.9, -0.5, -0.5, 0.9, 0.5, 0.5])
    origins = torch.tensor([[-3.0, 0.0, 0.0], [-0.2, -3.0, 0.0], [0.0, 3.0, 3.0], [0.8, -3.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    vis = free_space_visibility(grid, origins, dirs, box, num_samples=16)
    # along x: the last of 16 samples is at x = 0.84375; along y at x = -0.2: all seen; misses the box: 1;
    # along y at x = 0.8: G = 0.3 everywhere
    assert torch.allclose(vis, torch.tensor([(1 - 0.84375) * 1.5, 1.0, 1.0, 0.3]), atol=1e-5)
    # points inside other geometry are left out: the half x > 0 is occupied here
    vis = free_space_visibility(grid, origins, dirs, box, 16, occupied=lambda p: p[:, 0] > 0.0)
    assert torch.allclose(vis, torch.tensor([1.0, 1.0, 1.0, 1.0]), atol=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        free_space_visibility(grid, origins, dirs, box, 0)


def test_weight_maps_match_the_released_thresholds_exactly():
    vis = torch.tensor([0.0, 0.1, 0.25, 0.4999, 0.5, 0.75, 1.0, 0.29999, 0.3, 0.8])
    geo = geometry_weights(vis)
    expected = [20.0, 16.2, 10.5, 20 - 38 * 0.4999, 0.1, 0.05, 0.0, 20 - 38 * 0.29999, 20 - 38 * 0.3, 0.04]
    assert torch.allclose(geo, torch.tensor(expected), atol=1e-5), geo
    assert torch.equal(color_weights(vis), torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 1, 0, 0]))
    # configurable: a split at 0.4, seen pixels at a constant 0.2, colours thresholded at 0.5
    cfg = VisibilityWeightsConfig(geometry_split=0.4, geometry_seen_at_one=0.1, color_threshold=0.5)
    assert math.isclose(float(geometry_weights(torch.tensor(0.7), cfg)), 0.1 + 0.0 * 0.5, abs_tol=1e-6)
    assert math.isclose(float(geometry_weights(torch.tensor(0.2), cfg)), 20 - 19 * 0.5, abs_tol=1e-5)
    assert torch.equal(color_weights(torch.tensor([0.45, 0.5]), cfg), torch.tensor([1.0, 0.0]))
