"""Parity of the compiled CPU rasterizer with the pure-PyTorch reference, and gsplat where CUDA exists."""

from __future__ import annotations

import pytest
import torch

from recon.cameras import Cameras, look_at, orbit_cameras
from recon.render import rasterization, resolve_backend
from recon.render._cpu_ext import load_cpu_extension


def _scene(n: int, sh_degree: int | None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    # A few Gaussians behind / at the camera (camera 0 sits at z = +2.5) and far off-screen.
    means[:4] = torch.tensor([[0.0, 0.0, 3.0], [0.1, 0.0, 2.6], [0.0, 0.2, 2.5], [0.0, 0.0, 2.49]])
    means[4:8] = torch.tensor([[30.0, 0.0, 0.0], [0.0, -25.0, 0.0], [-9.0, 9.0, 0.0], [4.0, 0.0, 1.5]])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(-3.5, -1.5, generator=g))
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    opacities[8] = 0.9995  # alpha clamp at 0.999 on its center pixels
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    return means, quats, scales, opacities, colors


def _cameras(width: int = 40, height: int = 28) -> Cameras:
    cams = orbit_cameras(3, elevation_deg=20.0, distance=2.5, fov_deg=50.0, width=width, height=height)
    # Camera 0 exactly on +Z at distance 2.5 (the behind-camera Gaussians are set up against it).
    cams.camera_to_worlds[0] = look_at(torch.tensor([[0.0, 0.0, 2.5]]))[0]
    cams.cx[1] += 3.5  # an off-center principal point
    return cams


def _render_and_grads(backend, inputs, cams, sh_degree, render_mode, backgrounds):
    params = [t.clone().requires_grad_() for t in inputs]
    viewmats = cams.viewmats().clone().requires_grad_()
    render, alphas, meta = rasterization(
        *params, viewmats, cams.Ks(), cams.width, cams.height,
        sh_degree=sh_degree, render_mode=render_mode, backgrounds=backgrounds, backend=backend,
    )  # fmt: skip
    g = torch.Generator().manual_seed(123)
    loss = (render * torch.randn(render.shape, generator=g)).sum() + (
        alphas * torch.randn(alphas.shape, generator=g)
    ).sum()
    loss.backward()
    grads = [p.grad for p in params] + [viewmats.grad]
    return render.detach(), alphas.detach(), grads, meta


needs_ext = pytest.mark.skipif(
    load_cpu_extension() is None, reason="the C++ CPU rasterizer could not be compiled"
)


@needs_ext
@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3])
@pytest.mark.parametrize(
    "render_mode,bg", [("RGB", None), ("RGB+ED", "white"), ("RGB+D", "random"), ("ED", None)]
)
def test_cpu_backend_matches_reference(sh_degree, render_mode, bg):
    inputs = _scene(400, sh_degree, seed=sh_degree or 0)
    cams = _cameras()
    backgrounds = {None: None, "white": torch.ones(3), "random": torch.rand(3, 3)}[bg]
    ref = _render_and_grads("torch", inputs, cams, sh_degree, render_mode, backgrounds)
    cpu = _render_and_grads("cpu", inputs, cams, sh_degree, render_mode, backgrounds)
    assert ref[3]["backend"] == "torch" and cpu[3]["backend"] == "cpu"
    # The scene really exercises culling: behind-camera and off-screen Gaussians have radius 0.
    radii = cpu[3]["radii"]
    assert (radii[0, :4] == 0).all() and (radii[0, 4:7] == 0).all()
    assert (radii > 0).all(-1).sum() > 300
    assert ref[1].max() > 0.5  # something opaque was drawn
    torch.testing.assert_close(cpu[0], ref[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(cpu[1], ref[1], atol=1e-4, rtol=0)
    names = ["means", "quats", "scales", "opacities", "colors", "viewmats"]
    for name, g_cpu, g_ref in zip(names, cpu[2], ref[2]):
        if name == "colors" and render_mode == "ED":
            assert g_cpu is None and g_ref is None  # depth-only renders don't read colors
            continue
        assert g_ref.abs().max() > 0, name
        rel = (g_cpu - g_ref).abs().max() / g_ref.abs().max()
        assert rel < 1e-3, f"gradient of {name}: max relative difference {rel:.2e}"


@needs_ext
def test_cpu_backend_many_channels_and_large_image():
    """D = 5 feature channels, image size not a multiple of the 16 px tile."""
    means, quats, scales, opacities, _ = _scene(300, None, seed=3)
    feats = torch.rand(300, 5, generator=torch.Generator().manual_seed(4))
    cams = _cameras(width=70, height=37)
    ref = _render_and_grads("torch", (means, quats, scales, opacities, feats), cams, None, "RGB", None)
    cpu = _render_and_grads("cpu", (means, quats, scales, opacities, feats), cams, None, "RGB", None)
    torch.testing.assert_close(cpu[0], ref[0], atol=1e-4, rtol=0)
    for g_cpu, g_ref in zip(cpu[2], ref[2]):
        assert (g_cpu - g_ref).abs().max() / g_ref.abs().max() < 1e-3


@needs_ext
def test_depth_order_is_a_stable_argsort():
    ext = load_cpu_extension()
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 10_000), (3, 777), (2, 1)]:
        depths = torch.randn(*shape, generator=g) * 5
        depths[..., ::7] = depths[..., :1].clone()  # ties keep index order
        depths[..., 3::11] = -depths[..., 3::11].abs()  # negative keys sort first
        assert torch.equal(ext.depth_order(depths), torch.argsort(depths, dim=-1, stable=True))


@needs_ext
def test_cpu_backend_is_deterministic_across_thread_counts():
    means, quats, scales, opacities, colors = _scene(3000, None, seed=3)
    cams = orbit_cameras(2, elevation_deg=15.0, distance=3.0, fov_deg=45.0, width=70, height=50)
    params = [t.clone().requires_grad_() for t in (means, quats, scales, opacities, colors)]
    params.append(cams.viewmats().requires_grad_())  # the camera's gradient is a sum over Gaussians
    threads = torch.get_num_threads()
    outputs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            render, alphas, _ = rasterization(*params, cams.Ks(), 70, 50, backend="cpu")
            (render.square().sum() + alphas.sum()).backward()
            outputs.append([render.detach(), alphas.detach()] + [p.grad.clone() for p in params])
            for p in params:
                p.grad = None
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*outputs):
        assert torch.equal(a, b)


def test_single_opaque_gaussian_known_answer():
    """A huge opaque Gaussian straight ahead covers the image with its color (alpha clamp 0.999)."""
    cams = _cameras(16, 16)[0]
    for backend in ("torch", "cpu"):
        render, alphas, _ = rasterization(
            torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 100.0), torch.ones(1),
            torch.tensor([[0.2, 0.4, 0.6]]), cams.viewmats(), cams.Ks(), 16, 16,
            backgrounds=torch.ones(3), backend=backend,
        )  # fmt: skip
        torch.testing.assert_close(alphas, torch.full_like(alphas, 0.999))
        expected = 0.999 * torch.tensor([0.2, 0.4, 0.6]) + 0.001
        torch.testing.assert_close(render[0, 8, 8], expected)


def test_depth_of_a_small_gaussian_is_its_distance():
    cams = _cameras(32, 32)[0]  # at (0, 0, 2.5) looking at the origin
    render, alphas, _ = rasterization(
        torch.tensor([[0.0, 0.0, 0.5]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.05),
        torch.full((1,), 0.9), torch.ones(1, 3), cams.viewmats(), cams.Ks(), 32, 32, render_mode="RGB+ED",
    )  # fmt: skip
    center = render[0, 15:17, 15:17, 3]
    torch.testing.assert_close(center, torch.full_like(center, 2.0), atol=1e-4, rtol=0)


def test_backend_resolution(monkeypatch):
    assert resolve_backend("auto", torch.device("cpu")) in ("cpu", "torch")
    monkeypatch.setenv("SDS3D_RENDER_BACKEND", "torch")
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown render backend"):
        resolve_backend("opengl", torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="gsplat parity needs a CUDA GPU; none on this machine"
)
def test_gsplat_matches_reference_on_cuda():
    inputs = _scene(400, 2)
    cams = _cameras()
    ref = _render_and_grads("torch", inputs, cams, 2, "RGB+ED", torch.ones(3))
    gpu = _render_and_grads(
        "gsplat", [t.cuda() for t in inputs], cams.to("cuda"), 2, "RGB+ED", torch.ones(3, device="cuda")
    )
    torch.testing.assert_close(gpu[0].cpu(), ref[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(gpu[1].cpu(), ref[1], atol=2e-3, rtol=0)
    for g_gpu, g_ref in zip(gpu[2][:5], ref[2][:5]):
        assert (g_gpu.cpu() - g_ref).abs().max() / g_ref.abs().max() < 2e-2


def test_projection_matches_gsplat_reference_math():
    """Our EWA projection equals gsplat's own PyTorch implementation (means2d, conics, depths)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    from recon.render.projection import project_gaussians

    means, quats, scales, opacities, _ = _scene(300, None, seed=5)
    cams = _cameras()
    proj = project_gaussians(
        means, quats, scales, opacities, cams.viewmats(), cams.Ks(), cams.width, cams.height
    )
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, cams.viewmats(), cams.Ks(), cams.width, cams.height, eps2d=0.3
    )
    visible = (proj.radii > 0).all(-1)
    assert visible.sum() > 300
    torch.testing.assert_close(proj.means2d[visible], means2d[visible], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(proj.depths[visible], depths[visible])
    torch.testing.assert_close(proj.conics[visible], conics[visible], atol=1e-5, rtol=1e-4)


@needs_ext
@pytest.mark.parametrize("n_cameras", [1, 3])
def test_cpu_backend_renders_an_empty_scene(n_cameras):
    """No Gaussians (e.g. everything pruned): the background, zero alpha, and a backward that runs."""
    cams = _cameras(24, 20)[:n_cameras]
    params = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    params = [t.requires_grad_() for t in params]
    render, alphas, _ = rasterization(
        *params, cams.viewmats(), cams.Ks(), 24, 20, backgrounds=torch.tensor([0.2, 0.4, 0.6]), backend="cpu"
    )
    assert render.shape == (n_cameras, 20, 24, 3) and alphas.shape == (n_cameras, 20, 24, 1)
    assert torch.equal(alphas, torch.zeros_like(alphas))
    assert torch.allclose(render, torch.tensor([0.2, 0.4, 0.6]).expand_as(render))
    (render.sum() + alphas.sum()).backward()
    assert all(p.grad is not None and p.grad.numel() == 0 for p in params)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("sigma_px", [0.25, 0.5, 2.0])
def test_antialiased_mode_keeps_a_gaussians_integrated_weight(backend, sigma_px):
    """gsplat's ``rasterize_mode="antialiased"``: the eps2d low-pass no longer inflates small Gaussians —
    the alpha summed over the image is ``opacity · 2π σ²`` (the true 2D mass) at every size, where the
    classic mode gives ``opacity · 2π (σ² + eps2d)`` (sizes where the 1/255 alpha cut-off drops < 1 %)."""
    from recon.render import rasterization

    f, W, z = 100.0, 33, 2.0
    K = torch.tensor([[[f, 0.0, W / 2], [0.0, f, W / 2], [0.0, 0.0, 1.0]]])
    view = torch.eye(4)[None]
    means = torch.tensor([[0.0, 0.0, z]])
    scales = torch.full((1, 3), sigma_px * z / f)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    opac = torch.tensor([0.9])
    sums = {}
    for mode in ("classic", "antialiased"):
        _, alpha, _ = rasterization(
            means, quats, scales, opac, torch.ones(1, 3), view, K, W, W, backend=backend, rasterize_mode=mode
        )
        sums[mode] = float(alpha.sum())
    two_pi = 2 * torch.pi
    assert sums["antialiased"] == pytest.approx(0.9 * two_pi * sigma_px**2, rel=0.03)
    assert sums["classic"] == pytest.approx(0.9 * two_pi * (sigma_px**2 + 0.3), rel=0.03)
