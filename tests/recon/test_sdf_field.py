"""SDF fields: sphere start, normals, eikonal, VolSDF / NeuS opacity, object composition, fitting, meshes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.fields.encoding import DenseGridEncoding
from recon.fields.sdf import (
    SDFField,
    SDFFieldConfig,
    collision_loss,
    cos_anneal_ratio_at,
    dense_grid_features_and_jacobian,
    extract_sdf_mesh,
    laplace_density,
    logistic_density,
    neus_alpha,
    object_centers_from_masks,
    object_mask_loss,
    sdf_density_fn,
    uniform_box_points,
    update_sdf_occupancy,
)
from recon.render.volume import render_rays, render_rays_reference


@pytest.fixture(autouse=True)
def _one_thread():
    """Small batches: one thread is about as fast idle and far faster when other jobs share the cores
    (measured: the cube fit took 40 s with 1 thread and 248 s with 2 at load ~3.5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomized(field: SDFField, seed: int = 0) -> SDFField:
    """Gives the grid and the SDF rows of the head non-trivial values (a field away from its start)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for level in field.encoding.levels:
            level.grid.copy_(torch.randn(level.grid.shape, generator=g) * 0.2)
        field.geometry_head.weight.copy_(torch.randn(field.geometry_head.weight.shape, generator=g) * 0.3)
    return field


# ---------------------------------------------------------------------------------------------- start
@pytest.mark.parametrize("density", ["volsdf", "neus"])
def test_sphere_start_sdf_normals_and_eikonal(density):
    torch.manual_seed(0)
    field = SDFField(SDFFieldConfig(sphere_radius=0.6, density=density))
    x = uniform_box_points(field.aabb, 4000, torch.Generator().manual_seed(1))
    sdf = field.sdf(x)
    assert (sdf - (x.norm(dim=-1) - 0.6)).abs().max() < 1e-6
    normals = field.normals(x)
    cos = (normals * F.normalize(x, dim=-1)).sum(-1)
    assert cos.min() > 1 - 1e-5
    assert field.eikonal_loss(x) < 1e-8


def test_multi_object_start_is_union_of_spheres_inside_empty_background():
    centers = ((0.5, 0.0, 0.0), (-0.5, 0.0, 0.0), (0.0, 0.5, 0.3))
    field = SDFField(SDFFieldConfig(num_objects=3, object_centers=centers, sphere_radius=0.2))
    x = uniform_box_points(field.aabb, 3000, torch.Generator().manual_seed(2))
    sdfs = field.object_sdfs(x)
    assert sdfs.shape == (3000, 4)
    c = torch.tensor(centers)
    want = torch.cat([(2.0 - x.norm(dim=-1))[:, None], (x[:, None] - c).norm(dim=-1) - 0.2], dim=-1)
    assert (sdfs - want).abs().max() < 1e-6
    assert (field.sdf(x) - want.min(dim=-1).values).abs().max() < 1e-6
    assert (field.sdf(x, object_index=2) - want[:, 2]).abs().max() < 1e-6
    assert sdfs[:, 0].min() > 0  # the background (radius 2 > sqrt(3)) has no surface in the box
    with pytest.raises(ValueError):
        field.sdf(x, object_index=4)


# ---------------------------------------------------------------------------------------------- gradient
def test_dense_grid_features_and_jacobian_match_grid_sample_and_autograd():
    enc = DenseGridEncoding([-1, -1, -1, 1, 1, 1], resolution=9, features=5, init_std=0.5)
    x = (torch.rand(500, 3, generator=torch.Generator().manual_seed(3)) * 2.4 - 1.2).requires_grad_()
    rows = dense_grid_features_and_jacobian(enc, x)  # [N, 4, F]
    ref = enc(x)
    assert (rows[:, 0] - ref).abs().max() < 1e-5
    jac = torch.stack([torch.autograd.grad(ref[:, k].sum(), x, retain_graph=True)[0] for k in range(5)], 1)
    assert (rows[:, 1:].transpose(1, 2) - jac).abs().max() < 1e-4  # [N, F, 3]
    outside = x.detach().abs() > 1  # [N, 3] per axis
    assert (
        outside.any() and rows[:, 1:].transpose(1, 2)[outside[:, None, :].expand(-1, 5, -1)].abs().max() == 0
    )
    # border padding: flat along an axis where the point lies outside the box


def test_analytic_gradient_equals_autograd_gradient_and_its_parameter_gradients():
    cfg = dict(
        num_objects=2, hidden_layers=2, grid_resolutions=(8, 16), object_centers=((0.4, 0, 0), (-0.4, 0, 0))
    )
    fa = _randomized(SDFField(SDFFieldConfig(**cfg, gradient="analytic")))
    fb = SDFField(SDFFieldConfig(**cfg, gradient="autograd"))
    fb.load_state_dict(fa.state_dict())
    x = uniform_box_points(fa.aabb, 2000, torch.Generator().manual_seed(4))
    ga, gb = fa.gradient(x), fb.gradient(x)
    assert gb.abs().max() > 1.0  # far from a unit gradient: a real test
    assert (ga - gb).abs().max() < 1e-4
    la, lb = fa.eikonal_loss(x), fb.eikonal_loss(x)
    assert la.item() > 0.05 and abs(la.item() - lb.item()) < 1e-5
    la.backward()
    lb.backward()
    for (name, pa), pb in zip(fa.named_parameters(), fb.parameters()):
        if pa.grad is not None or pb.grad is not None:
            assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), name


def test_normals_backpropagate_in_training_and_are_plain_under_no_grad():
    field = _randomized(SDFField(SDFFieldConfig(grid_resolutions=(8,), density="volsdf")))
    x = uniform_box_points(field.aabb, 100)
    out = field(x, F.normalize(torch.randn(100, 3), dim=-1), torch.full((100,), 0.05))
    out.normals.sum().backward()
    assert field.encoding.levels[0].grid.grad.abs().sum() > 0
    with torch.no_grad():
        out = field(x)
    assert not out.normals.requires_grad and not out.density.requires_grad


# ---------------------------------------------------------------------------------------------- opacity
def test_laplace_density_hand_values():
    sdf = torch.tensor([0.0, 0.1, -0.1, 1.0, -1.0])
    got = laplace_density(sdf, 0.1)
    e = math.exp(-1.0)
    want = torch.tensor(
        [5.0, 5.0 * e, 10.0 * (1 - 0.5 * e), 5.0 * math.exp(-10.0), 10.0 * (1 - 0.5 * math.exp(-10))]
    )
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    field = SDFField(SDFFieldConfig(sphere_radius=0.5, beta_init=0.1, density="volsdf"))
    assert abs(field.beta.item() - 0.1001) < 1e-7  # |beta| + beta_min
    pts = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.6, 0.0]])  # sdf 0 and 0.1
    beta = 0.1001
    want = torch.tensor([0.5 / beta, 0.5 / beta * math.exp(-0.1 / beta)])
    assert torch.allclose(field.density(pts), want, rtol=1e-5)
    assert torch.allclose(field(pts).density, want, rtol=1e-5)


def test_neus_alpha_hand_values_and_cos_annealing():
    inv_s = math.exp(10 * 0.3)

    def sig(v):
        return 1.0 / (1.0 + math.exp(-v))

    def alpha(sdf, iter_cos, step):
        prev, nxt = sig((sdf - iter_cos * step / 2) * inv_s), sig((sdf + iter_cos * step / 2) * inv_s)
        return min(1.0, max(0.0, (prev - nxt + 1e-5) / (prev + 1e-5)))

    sdf = torch.tensor([0.0, 0.05, -0.03, 0.2, 0.0])
    cos = torch.tensor([-1.0, -0.5, -1.0, -1.0, 0.0])
    step = torch.tensor([0.1, 0.1, 0.05, 0.1, 0.1])
    got = neus_alpha(sdf, cos, step, inv_s, cos_anneal_ratio=1.0)
    want = [alpha(s, -max(-c, 0.0), d) for s, c, d in zip(sdf.tolist(), cos.tolist(), step.tolist())]
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    assert got[0] > 0.6 and got[3] < 0.05 and got[4] < 1e-4  # on the surface, outside, grazing
    # ratio 0: the slope is -relu(0.5 - 0.5 cos), so the grazing sample (cos 0) still takes half a slope
    got0 = neus_alpha(sdf, cos, step, inv_s, cos_anneal_ratio=0.0)
    assert abs(got0[4].item() - alpha(0.0, -0.5, 0.1)) < 1e-6 and got0[4] > 0.35
    assert cos_anneal_ratio_at(50, 200) == 0.25 and cos_anneal_ratio_at(500, 200) == 1.0
    assert cos_anneal_ratio_at(3, 0) == 1.0

    field = SDFField(SDFFieldConfig(density="neus", sphere_radius=0.5, cos_anneal_steps=100))
    assert abs(field.inv_s.item() - inv_s) < 1e-3 and field.cos_anneal_ratio == 0.0
    field.update_step(25)
    assert field.cos_anneal_ratio == 0.25
    field.set_cos_anneal_ratio(1.0)
    pts = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.7]])  # sdf 0, 0.2
    dirs = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # head on: cos = -1
    out = field(pts, dirs, torch.tensor([0.1, 0.1]))
    assert out.density is None
    assert torch.allclose(out.alpha, torch.tensor([alpha(0.0, -1.0, 0.1), alpha(0.2, -1.0, 0.1)]), atol=1e-5)
    assert torch.allclose(field.density(pts), logistic_density(torch.tensor([0.0, 0.2]), inv_s), rtol=1e-4)


@pytest.mark.parametrize("density", ["volsdf", "neus"])
def test_rendered_sphere_start_has_the_right_silhouette_and_depth(density):
    field = SDFField(SDFFieldConfig(density=density, sphere_radius=0.5, beta_init=0.01, variance_init=0.5))
    field.eval()
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.3, 0.0, 3.0], [0.7, 0.0, 3.0], [0.0, 0.9, 3.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand(4, 3)
    out = render_rays(field, origins, dirs, num_samples=256, background=1.0)
    assert out.alpha[:2].min() > 0.98 and out.alpha[2:].max() < 0.02
    want = 3.0 - torch.sqrt(0.25 - origins[:2, 0] ** 2)
    assert (out.depth[:2, 0] - want).abs().max() < 0.02
    n = out.normals[:2] / out.alpha[:2]
    assert n[0, 2] > 0.99  # facing the camera


def test_object_opacity_accumulates_to_occlusion_aware_opacity():
    """O_k = sum_i T_i(scene) * alpha_k,i, checked against a hand-written composite of the channels."""
    centers = ((0.0, 0.0, 0.4), (0.0, 0.0, -0.4))  # object 1 in front of object 2 for a camera on +z
    field = SDFField(
        SDFFieldConfig(
            num_objects=2, object_centers=centers, sphere_radius=0.3, beta_init=0.02, density="volsdf"
        )
    )
    field.eval()
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, -3.0], [0.9, 0.9, 3.0], [0.2, 0.0, 3.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    out = render_rays_reference(field, origins, dirs, num_samples=256)
    opacity = out.extras["object_opacity"]  # [R, 3]
    assert torch.allclose(opacity[:, 1:].sum(-1), out.alpha[:, 0], atol=1e-3)  # objects partition the alpha
    assert opacity[0, 1] > 0.98 and opacity[0, 2] < 0.02  # from +z object 1 hides object 2
    assert opacity[1, 2] > 0.98 and opacity[1, 1] < 0.02  # and from -z the other way round
    assert opacity[2].max() < 0.01 and opacity[:, 0].max() < 1e-3  # a miss; the background is empty

    # hand-written: scene transmittance times each channel's own alpha
    t_mid = (out.t_starts + out.t_ends) / 2
    pts = origins[:, None] + t_mid[..., None] * dirs[:, None]
    with torch.no_grad():
        sdfs = field.object_sdfs(pts)  # [R, S, 3]
    delta = (out.t_ends - out.t_starts)[..., None]
    alpha_k = 1 - torch.exp(-laplace_density(sdfs, field.beta.detach()) * delta)
    alpha = 1 - torch.exp(-laplace_density(sdfs.min(-1).values, field.beta.detach()) * delta[..., 0])
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=-1), dim=-1)
    want = (trans[..., None] * alpha_k).sum(1)
    assert torch.allclose(opacity, want, atol=1e-4)

    fast = render_rays(field, origins, dirs, num_samples=256)  # the CPU path accumulates the same
    assert torch.allclose(fast.extras["object_opacity"], opacity, atol=1e-5)


def test_neus_object_opacity_is_in_unit_range_and_follows_the_front_object():
    centers = ((0.0, 0.0, 0.4), (0.0, 0.0, -0.4))
    field = SDFField(
        SDFFieldConfig(
            num_objects=2, object_centers=centers, sphere_radius=0.3, density="neus", variance_init=0.5
        )
    )
    field.eval()
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    out = render_rays(field, origins, dirs, num_samples=256)
    o = out.extras["object_opacity"]
    assert o[0, 1] > 0.95 and o[0, 2] < 0.05 and o[1, 2] > 0.95 and o[1, 1] < 0.05


def test_surface_band_occupancy_and_visible_surface_eikonal_extra():
    from recon.render.volume import OccupancyGrid

    field = SDFField(SDFFieldConfig(sphere_radius=0.5, eikonal_extra=True, density="volsdf", beta_init=0.02))
    occ = OccupancyGrid(field.aabb, 16)
    frac = update_sdf_occupancy(occ, field, band=0.1)
    cells = (torch.arange(16.0) + 0.5) / 16 * 2 - 1
    r = torch.stack(torch.meshgrid(cells, cells, cells, indexing="ij"), -1).norm(dim=-1)  # [x, y, z]
    want = (r - 0.5).abs() < 0.1 + 0.5 * math.sqrt(3) * 2 / 16
    assert torch.equal(occ.binary, want) and abs(frac - want.float().mean().item()) < 1e-6
    assert 0.1 < frac < 0.4  # the shell only: not the empty corners, not the core
    # a ray through the centre keeps only the two shells and still renders opaque at the right depth
    o, d = torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    full = render_rays(field, o, d, num_samples=256)
    skip = render_rays(field, o, d, num_samples=256, occupancy=occ)
    assert skip.meta["n_samples_evaluated"] <= 0.55 * full.meta["n_samples_evaluated"]  # 128 of 256
    assert (
        abs(skip.alpha.item() - full.alpha.item()) < 1e-3
        and abs(skip.depth.item() - full.depth.item()) < 1e-3
    )
    assert full.extras["eikonal"].item() < 1e-8  # a sphere: |grad s| = 1 on the visible surface

    _randomized(field)
    x = uniform_box_points(field.aabb, 50)
    out = field(x)
    grad = field.gradient(x)
    assert torch.allclose(out.extras["eikonal"][:, 0], (grad.norm(dim=-1) - 1).square(), atol=1e-5)


# ---------------------------------------------------------------------------------------------- losses
def test_object_mask_loss_and_collision_loss_values():
    opacity = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.2, 0.7], [0.3, 0.0, 0.0]])
    labels = torch.tensor([1, 2, 0])
    l1 = object_mask_loss(opacity, labels, kind="l1")
    assert abs(l1.item() - (0.1 + 0.1 + 0.2 + 0.3 + 0 + 0) / 6) < 1e-6
    bce = object_mask_loss(opacity, labels)
    want = -(math.log(0.9) + math.log(0.9) + math.log(0.8) + math.log(0.7) + 2 * math.log(1 - 1e-4)) / 6
    assert abs(bce.item() - want) < 1e-5
    with_bg = object_mask_loss(opacity, labels, include_background=True, kind="l1")
    assert abs(with_bg.item() - (0.1 + 0.1 + 0.2 + 0.3 + 0.7) / 9) < 1e-6

    # point inside object 1 at depth 0.2; object 2 at -0.05 (overlap) pays 0.25, object 3 at 0.5 nothing
    sdfs = torch.tensor([[1.0, -0.2, -0.05, 0.5], [1.0, 0.3, 0.4, 0.6]])
    assert abs(collision_loss(sdfs).item() - 0.25 / 2) < 1e-6
    assert collision_loss(torch.tensor([[0.5, -0.2, 0.3]])).item() == 0.0


# ------------------------------------------------------------------------------------- trainer protocol
@pytest.mark.parametrize("density", ["volsdf", "neus"])
def test_parameter_groups_and_checkpoint_round_trip(density):
    cfg = SDFFieldConfig(
        num_objects=2, object_centers=((0.3, 0, 0), (-0.3, 0, 0)), density=density, grid_resolutions=(8,)
    )
    field = _randomized(SDFField(cfg))
    groups = field.parameter_groups()
    assert set(groups) == set(field.default_learning_rates()) == {"encoding", "mlp", "density"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(field.parameters()))
    assert groups["density"][0] is (field.beta_param if density == "volsdf" else field.variance)

    state = field.checkpoint_state()
    assert isinstance(state["config"], dict) and state["config"]["num_objects"] == 2
    rebuilt = SDFField.from_checkpoint_state(state)
    assert rebuilt.config == cfg
    x = uniform_box_points(field.aabb, 200)
    d = F.normalize(torch.randn(200, 3), dim=-1)
    a, b = field(x, d, torch.full((200,), 0.05)), rebuilt(x, d, torch.full((200,), 0.05))
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.sdf, b.sdf)
    assert torch.equal(a.extras["object_opacity"], b.extras["object_opacity"])


# ---------------------------------------------------------------------------------------------- meshes
def test_extract_sdf_mesh_of_the_start_and_per_object_goes_through_clean_and_unwrap():
    from recon.mesh.cleanup import clean_mesh
    from recon.mesh.uv import unwrap_uv

    field = SDFField(SDFFieldConfig(sphere_radius=0.6))
    mesh = extract_sdf_mesh(field, resolution=48)
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(r.mean() - 0.6) < 0.005 and np.abs(r - 0.6).max() < 0.01
    assert mesh.is_watertight and abs(mesh.volume - 4 / 3 * math.pi * 0.6**3) < 0.02
    cleaned = clean_mesh(mesh)
    uv = unwrap_uv(cleaned, texture_size=256, max_faces=2000)
    assert len(uv.faces) <= 2000 and uv.uvs.min() >= 0 and uv.uvs.max() <= 1

    multi = SDFField(
        SDFFieldConfig(num_objects=2, object_centers=((0.5, 0, 0), (-0.5, 0, 0)), sphere_radius=0.3)
    )
    scene = extract_sdf_mesh(multi, resolution=48)
    assert len(scene.split()) == 2
    one = extract_sdf_mesh(multi, resolution=48, object_index=2)
    assert (
        abs(one.vertices[:, 0].mean() + 0.5) < 0.01
        and abs(np.linalg.norm(one.vertices - [-0.5, 0, 0], axis=1).mean() - 0.3) < 0.01
    )


# ---------------------------------------------------------------------------------------------- fitting
def _adam(field: SDFField, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    groups, lrs = field.parameter_groups(), field.default_learning_rates()
    opt = torch.optim.Adam(
        [{"params": groups[k], "lr": lrs[k]} for k in groups], betas=(0.9, 0.99), eps=1e-15
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.1 ** (i / steps))  # x0.1 over the run


def _surface_points(sdf_fn, n: int, generator: torch.Generator) -> np.ndarray:
    """Points on an exact SDF's zero set: samples near it projected along the gradient (p - s * n)."""
    x = torch.rand(40 * n, 3, generator=generator) * 2 - 1
    x = x[sdf_fn(x).abs() < 0.03][:n].requires_grad_()
    s = sdf_fn(x)
    (grad,) = torch.autograd.grad(s.sum(), x)
    return (x - s[:, None] * F.normalize(grad, dim=-1)).detach().numpy()


def test_fit_cube_from_views_gives_mesh_within_two_percent_chamfer():
    """RGB + mask + eikonal through the volume renderer; marching cubes; Chamfer-L1 to the exact cube."""
    import time

    import trimesh
    from scipy.spatial import cKDTree

    from recon.cameras import sample_hemisphere_cameras
    from recon.data.procedural import CUBE_HALF_SIZE, camera_rays, primitive_sdf, render_primitive
    from recon.render.volume import OccupancyGrid

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cams = sample_hemisphere_cameras(
        24,
        (-45.0, 60.0),
        distance_range=(2.8, 3.2),
        fov_range_deg=(40.0, 40.0),
        width=48,
        height=48,
        generator=g,
    )
    rgb, alpha, _ = render_primitive("cube", "orange", cams)
    o, d, _ = camera_rays(cams)
    o, d, rgb, alpha = o.reshape(-1, 3), d.reshape(-1, 3), rgb.reshape(-1, 3), alpha.reshape(-1, 1)

    field = SDFField(SDFFieldConfig(density="neus", sphere_radius=0.7, eikonal_extra=True))
    steps = 400
    opt, sched = _adam(field, steps)
    occ = OccupancyGrid(field.aabb, 32)
    started = time.perf_counter()
    losses = []
    for step in range(steps):
        if step % 10 == 0:
            update_sdf_occupancy(occ, field)
        idx = torch.randint(0, o.shape[0], (256,), generator=g)
        out = render_rays(field, o[idx], d[idx], num_samples=64, stratified=True, generator=g, occupancy=occ)
        loss = (
            F.mse_loss(out.rgb, rgb[idx])
            + F.binary_cross_entropy(out.alpha.clamp(1e-4, 1 - 1e-4), alpha[idx])
            + 0.3 * field.eikonal_loss(uniform_box_points(field.aabb, 256, g))
            + out.extras["eikonal"].mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    fit_s = time.perf_counter() - started
    assert np.mean(losses[-30:]) < 0.4 * np.mean(losses[:30])  # measured 0.29 (BCE of soft edges has a floor)

    mesh = extract_sdf_mesh(field, resolution=96)
    pred = np.asarray(trimesh.sample.sample_surface(mesh, 30000, seed=0)[0], dtype=np.float32)
    gt = _surface_points(lambda x: primitive_sdf("cube", x), 30000, g)
    assert np.isfinite(gt).all() and np.abs(primitive_sdf("cube", torch.from_numpy(gt)).numpy()).max() < 1e-4
    accuracy = primitive_sdf("cube", torch.from_numpy(pred)).abs().mean().item()  # exact distance to the cube
    completeness = float(cKDTree(pred).query(gt)[0].mean())
    chamfer = (accuracy + completeness) / 2
    size = 2 * CUBE_HALF_SIZE  # the cube's side, its smallest "size" (the diagonal is 1.73x larger)
    print(f"cube fit: {fit_s:.1f} s, chamfer-L1 {chamfer:.4f} ({100 * chamfer / size:.2f}% of the side)")
    assert chamfer <= 0.02 * size, chamfer  # measured 1.34% (seeds 1-2: 1.42%, 1.48%), fit 25-35 s
    assert mesh.is_watertight and len(mesh.split()) == 1


def _scene_sdfs(points: Tensor) -> Tensor:  # [..., 3] -> [..., K]
    from recon.data.procedural import primitive_sdf

    return torch.stack(
        [scale * primitive_sdf(shape, (points - torch.tensor(c)) / scale) for shape, c, scale, _ in SCENE],
        dim=-1,
    )


SCENE = (  # (shape, centre, scale, color): three primitives apart in the box
    ("sphere", (-0.5, -0.1, -0.3), 0.45, "red"),
    ("cube", (0.5, -0.1, -0.3), 0.45, "green"),
    ("cylinder", (0.0, 0.05, 0.5), 0.45, "blue"),
)


def _render_scene(cameras, max_steps: int = 96) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sphere-traces the union of :data:`SCENE`: rays, Lambertian RGB on white, instance labels (0 = none)."""
    from recon.data.procedural import COLORS, DEFAULT_AMBIENT, DEFAULT_LIGHT_DIR, camera_rays

    o, d, _ = camera_rays(cameras)  # [C, H, W, 3]
    t = torch.ones(o.shape[:-1])
    for _ in range(max_steps):
        s = _scene_sdfs(o + t[..., None] * d).min(-1).values
        t = torch.where(s > 1e-4, t + s, t).clamp_max(6.0)
    p = o + t[..., None] * d
    sdfs = _scene_sdfs(p)
    hit = sdfs.min(-1).values < 1e-3
    labels = torch.where(hit, sdfs.argmin(-1) + 1, torch.zeros_like(hit, dtype=torch.long))
    # central differences (autograd through the exact SDFs is NaN where a sqrt meets 0, e.g. a cylinder rim)
    offsets = torch.eye(3) * 1e-3
    grad = torch.stack(
        [_scene_sdfs(p + e).min(-1).values - _scene_sdfs(p - e).min(-1).values for e in offsets], dim=-1
    )
    light = F.normalize(torch.tensor(DEFAULT_LIGHT_DIR), dim=0)
    shade = DEFAULT_AMBIENT + (1 - DEFAULT_AMBIENT) * (F.normalize(grad, dim=-1) * light).sum(-1).clamp_min(0)
    albedo = torch.tensor([COLORS[c] for *_, c in SCENE])[(labels - 1).clamp_min(0)]
    rgb = torch.where(hit[..., None], albedo * shade[..., None], torch.ones_like(albedo))
    return o, d, rgb, labels


@pytest.mark.parametrize("density", ["neus", pytest.param("volsdf", marks=pytest.mark.slow)])
def test_fit_three_objects_with_masks_gives_each_object_its_own_mesh(density):
    """ObjectSDF++-style composition: object opacity vs instance masks; per-channel meshes vs the truth."""
    import time

    from recon.cameras import sample_hemisphere_cameras
    from recon.render.volume import OccupancyGrid

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cams = sample_hemisphere_cameras(
        24,
        (-30.0, 70.0),
        distance_range=(2.8, 3.2),
        fov_range_deg=(45.0, 45.0),
        width=48,
        height=48,
        generator=g,
    )
    o, d, rgb, labels = _render_scene(cams)
    assert torch.isfinite(rgb).all()
    centers = object_centers_from_masks(o, d, labels, 3)  # a rough start, from the masks alone
    assert (centers - torch.tensor([c for _, c, _, _ in SCENE])).norm(dim=-1).max() < 0.06
    o, d, rgb, labels = o.reshape(-1, 3), d.reshape(-1, 3), rgb.reshape(-1, 3), labels.reshape(-1)

    cfg = SDFFieldConfig(
        num_objects=3,
        object_centers=tuple(map(tuple, centers.tolist())),
        sphere_radius=0.25,
        density=density,
        eikonal_extra=True,
    )
    field = SDFField(cfg)
    steps = 300
    opt, sched = _adam(field, steps)
    occ = OccupancyGrid(field.aabb, 32)
    started = time.perf_counter()
    obj_losses = []
    for step in range(steps):
        if step % 10 == 0:
            update_sdf_occupancy(occ, field)
        idx = torch.randint(0, o.shape[0], (256,), generator=g)
        out = render_rays(field, o[idx], d[idx], num_samples=64, stratified=True, generator=g, occupancy=occ)
        lab = labels[idx]
        l_obj = object_mask_loss(out.extras["object_opacity"], lab)
        x = uniform_box_points(field.aabb, 256, g)
        loss = (
            F.mse_loss(out.rgb, rgb[idx])
            + F.binary_cross_entropy(out.alpha[:, 0].clamp(1e-4, 1 - 1e-4), (lab > 0).float())
            + l_obj
            + 0.3 * field.eikonal_loss(x)
            + out.extras["eikonal"].mean()
            + 0.1 * collision_loss(field.object_sdfs(x))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        obj_losses.append(l_obj.item())
    fit_s = time.perf_counter() - started
    assert np.mean(obj_losses[-30:]) < 0.5 * np.mean(obj_losses[:30])

    pts = uniform_box_points(field.aabb, 200_000, g)
    inside_gt = _scene_sdfs(pts) < 0  # [N, K]
    ious = []
    for k in range(1, 4):
        mesh = extract_sdf_mesh(field, resolution=64, object_index=k)
        inside = torch.from_numpy(mesh.contains(pts.numpy()))
        ious.append(float((inside & inside_gt[:, k - 1]).sum() / (inside | inside_gt[:, k - 1]).sum()))
        assert len(mesh.split()) == 1
    print(f"three objects ({density}): {fit_s:.1f} s, volume IoU {[round(v, 3) for v in ious]}")
    assert min(ious) >= 0.8, (
        ious
    )  # measured sphere 0.95, cube 0.84, cylinder 0.90 (seeds 1-2: cube 0.88, 0.82)
    # (volsdf, slow: 0.88, 0.88, 0.88; seeds 1-2 down to 0.81)


@pytest.mark.slow
def test_sdf_mesh_goes_through_the_whole_export_chain(tmp_path):
    """marching cubes (offset - sdf at level offset) -> clean -> xatlas -> bake -> GLB (~15 s)."""
    import trimesh

    from recon.mesh import export_mesh
    from recon.render.volume import OccupancyGrid, render_field

    field = SDFField(SDFFieldConfig(sphere_radius=0.6)).eval()
    occ = OccupancyGrid(field.aabb, 32)
    update_sdf_occupancy(occ, field)

    def render_fn(cameras):
        with torch.no_grad():
            r = render_field(field, cameras, num_samples=128, occupancy=occ)
        return r.rgb, r.depth, r.alpha

    paths = export_mesh(
        render_fn,
        tmp_path,
        method="marching_cubes",
        density_fn=sdf_density_fn(field),
        density_level=1.0,
        n_views=6,
        image_size=48,
        resolution=48,
        texture_size=128,
        max_faces=2000,
        formats=("glb",),
    )
    mesh = trimesh.load(paths["glb"], force="mesh")
    assert len(mesh.faces) == 2000 and abs(np.linalg.norm(mesh.vertices, axis=1).mean() - 0.6) < 0.01


def test_object_centres_from_metric_depth_and_its_detection(monkeypatch):
    """Depth maps lift each object's visible surface to its centre, and ``agreement`` tells metric depth
    from depth at another scale or shift (monocular depth) across views. Cameras on a 60° arc, as a
    room is filmed. ``object_centers_from_views`` keeps the mask-ray crossing where it agrees with the
    depth (these objects are seen whole) and takes the lifted centre where it does not."""
    from recon.cameras import cameras_from_spherical
    from recon.data.procedural import camera_rays
    from recon.fields.sdf import object_centers_from_depth, object_centers_from_views

    n = 8
    one = torch.ones(n)
    cams = cameras_from_spherical(20 * one, torch.linspace(150, 210, n), 3.0 * one, 45 * one, 48, 48)
    o, d, rgb, labels = _render_scene(cams)
    _, _, z_per_t = camera_rays(cams)
    t = torch.ones(o.shape[:-1])
    for _ in range(96):  # the hit distance again, for the depth
        s = _scene_sdfs(o + t[..., None] * d).min(-1).values
        t = torch.where(s > 1e-4, t + s, t).clamp_max(6.0)
    depth = torch.where(labels > 0, t * z_per_t, torch.zeros_like(t))
    truth = torch.tensor([c for _, c, _, _ in SCENE])
    lifted, sizes, agreement = object_centers_from_depth(cams, depth, labels, 3)
    print("lifted off by", (lifted - truth).norm(dim=-1), "sizes", sizes, "agreement", agreement)
    assert agreement > 0.9
    assert (lifted - truth).norm(dim=-1).max() < 0.12
    assert ((sizes > 0.4) & (sizes < 1.0)).all()  # 5-95 % lateral spread (measured 0.57-0.60)
    for scale, shift in ((1.5, 0.0), (1.0, 0.5)):
        wrong = torch.where(labels > 0, depth * scale + shift, 0)
        assert object_centers_from_depth(cams, wrong, labels, 3)[2] < 0.9, (scale, shift)
    centers, sources = object_centers_from_views(cams, labels, 3, depth)
    assert sources == ["rays"] * 3
    torch.testing.assert_close(centers, object_centers_from_masks(o, d, labels, 3))
    # one object's mask rays made to cross far off (a partly hidden object): its lifted centre is taken
    shifted = labels.clone()
    for c in range(n):  # object 3 shows only its left third in the first views, its right third later
        cols = (labels[c] == 3).any(0).nonzero().flatten()
        lo, hi = int(cols.min()), int(cols.max())
        third = (hi - lo) // 3
        hide = torch.ones(labels.shape[-1], dtype=torch.bool)
        hide[lo : lo + third] = c >= n // 2
        hide[hi - third :] = c < n // 2
        shifted[c][:, hide] = torch.where(labels[c][:, hide] == 3, 0, labels[c][:, hide])
    rays = object_centers_from_masks(o, d, shifted, 3)
    centers, sources = object_centers_from_views(cams, shifted, 3, torch.where(shifted > 0, depth, 0))
    print("rays off by", (rays - truth).norm(dim=-1), "chosen", sources, (centers - truth).norm(dim=-1))
    assert float((rays[2] - truth[2]).norm()) > 0.5  # measured 0.63
    assert sources == ["rays", "rays", "depth"]
    assert float((centers[2] - truth[2]).norm()) < 0.25  # measured 0.17 (half its visible part is gone)
    monocular = torch.where(shifted > 0, depth * 1.5, 0)  # not metric: the ray crossings stay
    assert object_centers_from_views(cams, shifted, 3, monocular)[1] == ["rays"] * 3
    # past MAX_LIFTED_POINTS a surface is subsampled (torch.quantile's size limit): nearly the same centres
    monkeypatch.setattr("recon.fields.sdf.MAX_LIFTED_POINTS", 1000)
    few, _, _ = object_centers_from_depth(cams, depth, labels, 3)
    assert (few - lifted).norm(dim=-1).max() < 0.05  # the objects are 0.9 across
