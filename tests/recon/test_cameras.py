from __future__ import annotations

import torch

from recon.cameras import Cameras, orbit_cameras, sample_hemisphere_cameras, view_direction_words


def test_viewmat_round_trip_and_opencv_convention():
    cams = sample_hemisphere_cameras(5, generator=torch.Generator().manual_seed(0))
    back = Cameras.from_viewmats(cams.viewmats(), cams.Ks(), cams.width, cams.height)
    torch.testing.assert_close(back.camera_to_worlds, cams.camera_to_worlds, atol=1e-5, rtol=0)
    # The origin (look-at target) is straight ahead: +Z in OpenCV camera space, at the image center.
    origin = torch.tensor([0.0, 0.0, 0.0, 1.0])
    p_cam = cams.viewmats() @ origin
    assert (p_cam[:, 2] > 0).all()
    uv = (cams.Ks() @ p_cam[:, :3, None])[..., 0]
    uv = uv[:, :2] / uv[:, 2:]
    torch.testing.assert_close(uv, torch.full_like(uv, 32.0), atol=1e-4, rtol=0)


def test_up_is_up():
    cams = orbit_cameras(4, elevation_deg=0.0, width=32, height=32)
    above = torch.tensor([0.0, 0.5, 0.0, 1.0])
    p = cams.viewmats() @ above
    assert (p[:, 1] < 0).all()  # OpenCV: +Y is down, so a point above the origin has negative y


def test_sampler_ranges_and_view_words():
    g = torch.Generator().manual_seed(1)
    cams = sample_hemisphere_cameras(
        200, elevation_range_deg=(0, 80), distance_range=(2, 3), fov_range_deg=(30, 50), generator=g
    )
    assert cams.elevation_deg.min() >= 0 and cams.elevation_deg.max() <= 80
    dist = cams.camera_centers.norm(dim=-1)
    assert dist.min() >= 2 - 1e-5 and dist.max() <= 3 + 1e-5
    words = view_direction_words(torch.tensor([0.0, 0.0, 0.0, 70.0]), torch.tensor([10.0, 90.0, 180.0, 0.0]))
    assert words == ["front view", "side view", "back view", "overhead view"]
    # azimuth 0 is the front: the camera sits on +Z
    front = orbit_cameras(1, elevation_deg=0.0, distance=2.0)
    torch.testing.assert_close(front.camera_centers[0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-5, rtol=0)
