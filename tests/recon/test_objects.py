from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from recon.cameras import (
    cameras_from_spherical,
    orbit_cameras,
    sample_hemisphere_cameras,
    view_direction_words,
)
from recon.data import procedural
from recon.data.object_kinds import FIT_RADIUS, KIND_SPECS, Part
from recon.data.objects import (
    KINDS,
    PATTERNS,
    SECONDARY_COLORS,
    VIEW_WORDS,
    ProceduralObject,
    caption,
    object_mesh,
    parse_caption,
    render_object,
    vocabulary,
)

COMPOUND = KINDS[len(procedural.SHAPES) :]
PATTERNABLE = tuple(k for k in KINDS if KIND_SPECS[k].patternable)


def _grid(n: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:  # [n^3, 3]
    axis = torch.linspace(lo, hi, n)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def _inside_part(part: Part, points: np.ndarray) -> np.ndarray:
    """Point membership of one part from its plain geometric definition (independent of the SDFs)."""
    q = (points - np.asarray(part.translation)) @ part.rotation_matrix  # R^T (p - t)
    x, y, z = q.T
    rho = np.hypot(x, z)
    s = part.padded_size
    if part.primitive == "sphere":
        return np.linalg.norm(q, axis=-1) < s[0]
    if part.primitive in ("ellipsoid", "dome"):
        inside = np.linalg.norm(q / np.asarray(s[:3]), axis=-1) < 1
        return inside & (y > 0) if part.primitive == "dome" else inside
    if part.primitive == "box":
        inner = np.asarray(s[:3]) - s[3]
        return np.linalg.norm(q - np.clip(q, -inner, inner), axis=-1) <= s[3]
    if part.primitive == "cylinder":
        rr = s[2]
        return np.hypot(np.maximum(rho - (s[0] - rr), 0), np.maximum(np.abs(y) - (s[1] - rr), 0)) <= rr
    if part.primitive == "cone":
        r1, r2, h = s[0], s[1], s[2]
        return (np.abs(y) <= h) & (rho <= r1 + (r2 - r1) * (y + h) / (2 * h))
    if part.primitive == "torus":
        return (rho - s[0]) ** 2 + y**2 < s[1] ** 2
    if part.primitive == "capsule":
        return np.sqrt(rho**2 + (y - np.clip(y, -s[1], s[1])) ** 2) < s[0]
    assert part.primitive == "prism"
    w, h, dz = s[0], s[1], s[2]
    return (np.abs(z) <= dz) & (y >= -h) & (np.abs(x) <= w * (h - y) / (2 * h))


def test_catalogue():
    assert KINDS[:5] == procedural.SHAPES and len(KINDS) >= 20 and len(COMPOUND) >= 15
    for kind in ("chair", "snowman", "house", "rocket", "car", "duck", "bed"):
        assert KIND_SPECS[kind].asymmetric and KIND_SPECS[kind].front_part is not None, kind
    assert KIND_SPECS["mug"].asymmetric and KIND_SPECS["table"].front_part is None
    assert KIND_SPECS["chair"].primary_parts == ("seat", "backrest")
    assert set(PATTERNABLE) >= {*procedural.SHAPES, "mug", "lollipop", "mushroom"}
    assert set(SECONDARY_COLORS) == {*procedural.COLORS, "white", "black"}


@pytest.mark.parametrize("kind", KINDS)
def test_kind_fits_the_unit_sphere_and_every_part_shows(kind):
    obj = ProceduralObject(kind, "red")
    radius = FIT_RADIUS if kind in COMPOUND else 0.956  # the cone's rim is at 0.955 in procedural.py
    g = torch.Generator().manual_seed(0)
    sphere = torch.nn.functional.normalize(torch.randn(20000, 3, generator=g), dim=-1)
    assert (obj.sdf(sphere * radius) > 0).all()
    assert (obj.sdf(sphere * 1.0) > 0.004).all()
    # the analytic fit is tight: some surface point is close to the radius
    if kind in COMPOUND:
        assert (obj.sdf(sphere * 0.9) < 0.02).any()
    # non-empty, and every part group owns some of the surface
    pts = _grid(48)
    d = obj.sdf(pts)
    assert (d < 0).float().mean() > 0.005
    near = pts[d.abs() < 2.0 / 47]
    owners = {obj.spec.parts[i].name for i in obj.part_index(near).unique().tolist()}
    assert owners == set(obj.part_names)


@pytest.mark.parametrize("kind", KINDS)
def test_sdf_sign_matches_occupancy_and_is_1_lipschitz(kind):
    obj = ProceduralObject(kind, "blue")
    pts = _grid(36, -0.99, 0.99)
    d = obj.sdf(pts)
    occupied = np.zeros(len(pts), dtype=bool)
    for part in obj.spec.parts:
        occupied |= _inside_part(part, pts.double().numpy())
    mismatch = (d < 0).numpy() != occupied
    assert (d[torch.from_numpy(mismatch)].abs() < 1e-5).all(), mismatch.sum()

    g = torch.Generator().manual_seed(1)
    a = torch.rand(4000, 3, generator=g) * 2.2 - 1.1
    b = a + torch.randn(4000, 3, generator=g) * 0.03
    lip = (obj.sdf(a) - obj.sdf(b)).abs() / (a - b).norm(dim=-1)
    assert lip.max().item() <= 1.0 + 2e-3
    # autograd gradients: at most 1 (exactly 1 outside the surface for exact SDFs)
    a.requires_grad_(True)
    (grad,) = torch.autograd.grad(obj.sdf(a).sum(), a)
    assert grad.norm(dim=-1).max().item() <= 1.0 + 1e-4


def test_primitive_kinds_are_procedurals_primitives():
    pts = torch.rand(5000, 3, generator=torch.Generator().manual_seed(2)) * 2.4 - 1.2
    cams = orbit_cameras(2, elevation_deg=20.0, width=24, height=24)
    for shape in procedural.SHAPES:
        obj = ProceduralObject(shape, "green")
        torch.testing.assert_close(obj.sdf(pts), procedural.primitive_sdf(shape, pts), atol=2e-6, rtol=0)
        ours = render_object(obj, cams)
        rgb, alpha, depth = procedural.render_primitive(shape, "green", cams)
        assert (ours.rgb - rgb).abs().max() < 0.02 and (ours.alpha - alpha).abs().max() < 1e-6
        torch.testing.assert_close(ours.depth, depth, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_render_depth_normals_and_slot_identity(kind):
    obj = ProceduralObject(kind, "orange")
    cams = cameras_from_spherical(
        torch.tensor([15.0, 40.0]),
        torch.tensor([30.0, -120.0]),
        torch.full((2,), 3.0),
        torch.full((2,), 40.0),
        24,
        24,
    )
    r = render_object(obj, cams, supersample=1, return_slots=True, return_parts=True)
    covered = r.alpha[..., 0] > 0.5
    assert covered.sum() > 40
    # depth of a covered pixel puts its ray on the surface
    origins, dirs, z_per_t = procedural.camera_rays(cams, 1)
    pts = origins + dirs * (r.depth[..., 0] / z_per_t)[..., None]
    assert obj.sdf(pts[covered]).abs().max() < 2e-3
    assert (r.depth[~covered] == 0).all()
    n = r.normals[covered].norm(dim=-1)
    assert ((n - 1).abs() < 1e-4).all() and (r.normals[~covered] == 0).all()
    # normals face the camera
    assert ((r.normals * dirs).sum(-1)[covered] < 0.05).float().mean() > 0.97
    # rgb is a linear function of the slot maps: recolorable without tracing again
    primary, secondary = obj.slot_colors()
    recon_rgb = primary * r.slots[..., 0:1] + secondary * r.slots[..., 1:2] + r.fixed_rgb + (1 - r.alpha)
    torch.testing.assert_close(r.rgb, recon_rgb.clamp(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(r.part_masks.sum(-1, keepdim=True), r.alpha, atol=1e-5, rtol=0)
    # the primary slot is what the caption names: it shows
    assert r.slots[..., 0].sum() > 0.03 * r.alpha.sum()


def test_slot_identity_with_supersampling_and_patterns():
    obj = ProceduralObject("mushroom", "red", "white", "dotted")
    cams = sample_hemisphere_cameras(4, width=32, height=32, generator=torch.Generator().manual_seed(3))
    r = render_object(obj, cams, return_slots=True, background=0.5)
    primary, secondary = obj.slot_colors()
    recon_rgb = (
        primary * r.slots[..., 0:1] + secondary * r.slots[..., 1:2] + r.fixed_rgb + (1 - r.alpha) * 0.5
    )
    torch.testing.assert_close(r.rgb, recon_rgb.clamp(0, 1), atol=1e-5, rtol=0)
    # albedo and slot weights agree at points
    pts = torch.rand(2000, 3, generator=torch.Generator().manual_seed(4)) * 1.8 - 0.9
    w, fixed = obj.slot_weights(pts)
    torch.testing.assert_close(obj.albedo(pts), w[:, 0:1] * primary + w[:, 1:2] * secondary + fixed)
    assert torch.equal(w.sum(-1), torch.ones(2000)) and set(w.unique().tolist()) <= {0.0, 1.0}


def test_secondary_parts_take_the_default_or_the_pattern_color():
    rocket = ProceduralObject("rocket", "blue")
    assert rocket.secondary_name == "red" and ProceduralObject("rocket", "red").secondary_name == "white"
    nose = torch.tensor([[0.0, 0.85, 0.0]])  # inside the nose cone
    assert KIND_SPECS["rocket"].parts[rocket.part_index(nose).item()].name == "nose cone"
    torch.testing.assert_close(rocket.albedo(nose)[0], torch.tensor(procedural.COLORS["red"]))


@pytest.mark.parametrize("kind", [k for k in COMPOUND if KIND_SPECS[k].front_part is not None])
def test_front_part_points_to_plus_z(kind):
    obj = ProceduralObject(kind, "purple")
    front = obj.spec.front_part
    pts = _grid(48)
    surface = pts[obj.sdf(pts).abs() < 2.0 / 47]
    owner = [obj.spec.parts[i].name for i in obj.part_index(surface).tolist()]
    mine = torch.tensor([o == front for o in owner])
    assert surface[mine, 2].mean() > 0.15
    cams = cameras_from_spherical(
        torch.tensor([15.0, 15.0]),
        torch.tensor([0.0, 180.0]),
        torch.full((2,), 3.0),
        torch.full((2,), 40.0),
        48,
        48,
    )
    assert view_direction_words(cams.elevation_deg, cams.azimuth_deg) == ["front view", "back view"]
    seen = render_object(obj, cams, return_parts=True).part_mask(front).sum(dim=(1, 2, 3))
    assert seen[0] > 5.0 and seen[0] > 1.5 * seen[1], seen


def test_mug_handle_is_on_plus_x():
    obj = ProceduralObject("mug", "cyan")
    cams = cameras_from_spherical(
        torch.tensor([10.0, 10.0]),
        torch.tensor([90.0, -90.0]),
        torch.full((2,), 3.0),
        torch.full((2,), 40.0),
        48,
        48,
    )
    seen = render_object(obj, cams, return_parts=True).part_mask("handle").sum(dim=(1, 2, 3))
    assert seen[0] > 20.0 and seen[0] > 3 * seen[1]


def test_chair_backrest_and_bed_headboard_are_at_minus_z():
    for kind, back in (("chair", "backrest"), ("bed", "headboard")):
        obj = ProceduralObject(kind, "red")
        idx = [i for i, p in enumerate(obj.spec.parts) if p.name == back]
        assert all(obj.spec.parts[i].translation[2] < -0.3 for i in idx)


@pytest.mark.parametrize("kind", PATTERNABLE)
def test_patterns_show_two_colors(kind):
    cams = orbit_cameras(3, elevation_deg=15.0, azimuth_start_deg=20.0, width=32, height=32)
    for pattern in PATTERNS[1:]:
        obj = ProceduralObject(kind, "blue", "white", pattern)
        r = render_object(obj, cams, return_slots=True, ambient=1.0, supersample=1)  # unshaded: coverage
        share = r.slots[..., 1].sum() / r.slots.sum()
        assert 0.15 <= share <= 0.85, (pattern, share.item())
    solid = render_object(ProceduralObject(kind, "blue"), cams, return_slots=True, supersample=1)
    assert solid.slots[..., 1].sum() == 0


def test_stripes_are_visible_at_32_pixels():
    obj = ProceduralObject("cube", "red", "black", "striped")
    cams = orbit_cameras(1, elevation_deg=0.0, distance=3.0, fov_deg=40.0, width=32, height=32)
    r = render_object(obj, cams, return_slots=True)
    column = r.slots[0, :, 16]  # [H, 2]
    is_secondary = (column[:, 1] > column[:, 0])[r.alpha[0, :, 16, 0] > 0.9]
    assert (is_secondary[1:] != is_secondary[:-1]).sum().item() == 4  # 5 bands


def test_captions_round_trip_over_the_vocabulary():
    vocab = vocabulary()
    assert len(vocab) == len(KINDS) * 8 + len(PATTERNABLE) * 4 * 8 * 9 == len(set(vocab))
    texts = [caption(obj) for obj in vocab]
    assert len(set(texts)) == len(texts)
    assert all(parse_caption(t) == obj for t, obj in zip(texts, vocab, strict=True))
    for view in VIEW_WORDS:
        assert parse_caption(caption(vocab[-1], view)) == vocab[-1]
    assert caption(ProceduralObject("chair", "red")) == "a red chair"
    assert caption(ProceduralObject("mug", "orange"), "side view") == "an orange mug, side view"
    assert (
        caption(ProceduralObject("sphere", "blue", "white", "striped")) == "a blue and white striped sphere"
    )
    assert caption(ProceduralObject("cube", "red", "black", "checkered")) == "a red and black checkered cube"
    assert caption(ProceduralObject("mushroom", "green", "white", "two-tone")) == (
        "a green and white two-tone mushroom"
    )
    for shape in procedural.SHAPES:
        for color in procedural.COLORS:
            assert caption(ProceduralObject(shape, color), "front view") == procedural.caption(
                shape, color, "front view"
            )
    for bad in (
        "a red pyramid",
        "an red cube",
        "a red  cube",
        "A red cube",
        "a red and red striped cube",
        "a red and white striped chair",
        "a red and white solid cube",
        "a red cube, sideways view",
        "a red cube,",
        "",
    ):
        assert parse_caption(bad) is None, bad
    with pytest.raises(ValueError):
        caption(ProceduralObject("cube", "red"), "top view")


def test_invalid_objects_raise():
    for args in (
        ("pyramid", "red"),
        ("cube", "white"),
        ("cube", "red", "white"),
        ("cube", "red", None, "striped"),
        ("cube", "red", "red", "striped"),
        ("chair", "red", "white", "striped"),
        ("cube", "red", "white", "plaid"),
    ):
        with pytest.raises(ValueError):
            ProceduralObject(*args)


@pytest.mark.parametrize("kind", ["chair", "mug"])
def test_object_mesh_is_closed_and_on_the_surface(kind):
    obj = ProceduralObject(kind, "yellow")
    mesh = object_mesh(obj, resolution=64)
    step = 2.0 / 63
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    assert obj.sdf(verts).abs().max() < 0.5 * step
    assert mesh.is_watertight and mesh.volume > 0
    occupancy = (obj.sdf(_grid(64)) < 0).float().mean().item() * 8.0
    assert mesh.volume == pytest.approx(occupancy, rel=0.1)
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    np.testing.assert_allclose(colors, obj.albedo(verts).numpy(), atol=1 / 255)


def test_render_batch_speed():
    cams = sample_hemisphere_cameras(24, width=32, height=32, generator=torch.Generator().manual_seed(6))
    obj = ProceduralObject("car", "red")
    render_object(obj, cams[:2])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        r = render_object(obj, cams)
        elapsed = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert r.rgb.shape == (24, 32, 32, 3)
    assert elapsed < 3.0  # ~0.27 s on one busy core


def test_render_of_nothing_is_background():
    away = cameras_from_spherical(
        torch.tensor([0.0]),
        torch.tensor([180.0]),
        torch.tensor([3.0]),
        torch.tensor([40.0]),
        16,
        16,
        target=torch.tensor([[0.0, 0.0, 10.0]]),
    )  # at z = 7, looking to +Z: away from the object
    r = render_object(
        ProceduralObject("chair", "red"), away, return_slots=True, return_parts=True, background=0.3
    )
    assert (r.alpha == 0).all() and (r.rgb == 0.3).all() and (r.depth == 0).all() and (r.normals == 0).all()
    assert (r.slots == 0).all() and (r.part_masks == 0).all()
    with pytest.raises(ValueError):
        r.part_mask("armrest")
