"""Batched pinhole cameras, orbit / hemisphere samplers and view-dependent prompt words.

Conventions (the same as nerfstudio and Blender):

* World space is right-handed with **+Y up**; the "front" of an object faces **+Z**.
* ``camera_to_worlds`` uses the **OpenGL** camera convention: the camera looks down its own -Z,
  +X is right, +Y is up.
* Renderers take **OpenCV** world-to-camera matrices (``viewmats``; camera looks down +Z, +Y is
  down), the convention of ``gsplat.rasterization``. :meth:`Cameras.viewmats` converts.
* Azimuth 0 puts the camera on the +Z axis (front view); azimuth grows counter-clockwise seen from
  above (+90 deg is on +X). Elevation is the angle above the XZ plane.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """A batch of ``C`` pinhole cameras sharing one image size."""

    camera_to_worlds: Tensor  # [C, 4, 4] OpenGL camera-to-world
    fx: Tensor  # [C]
    fy: Tensor  # [C]
    cx: Tensor  # [C]
    cy: Tensor  # [C]
    width: int
    height: int
    elevation_deg: Tensor | None = None  # [C], set by the samplers (for view-dependent prompts)
    azimuth_deg: Tensor | None = None  # [C]

    def __post_init__(self) -> None:
        if self.camera_to_worlds.ndim != 3 or self.camera_to_worlds.shape[-2:] != (4, 4):
            raise ValueError(f"camera_to_worlds must be [C, 4, 4], got {tuple(self.camera_to_worlds.shape)}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    def __len__(self) -> int:
        return self.camera_to_worlds.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return replace(
            self,
            camera_to_worlds=self.camera_to_worlds[index],
            fx=self.fx[index],
            fy=self.fy[index],
            cx=self.cx[index],
            cy=self.cy[index],
            elevation_deg=pick(self.elevation_deg),
            azimuth_deg=pick(self.azimuth_deg),
        )

    @property
    def device(self) -> torch.device:
        return self.camera_to_worlds.device

    def to(self, device: torch.device | str) -> Cameras:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            camera_to_worlds=self.camera_to_worlds.to(device),
            fx=self.fx.to(device),
            fy=self.fy.to(device),
            cx=self.cx.to(device),
            cy=self.cy.to(device),
            elevation_deg=move(self.elevation_deg),
            azimuth_deg=move(self.azimuth_deg),
        )

    @property
    def camera_centers(self) -> Tensor:  # [C, 3]
        return self.camera_to_worlds[:, :3, 3]

    def Ks(self) -> Tensor:  # [C, 3, 3]
        """Intrinsic matrices in pixels (pixel centers at ``i + 0.5``)."""
        K = torch.zeros(len(self), 3, 3, dtype=self.fx.dtype, device=self.device)
        K[:, 0, 0] = self.fx
        K[:, 1, 1] = self.fy
        K[:, 0, 2] = self.cx
        K[:, 1, 2] = self.cy
        K[:, 2, 2] = 1.0
        return K

    def viewmats(self) -> Tensor:  # [C, 4, 4]
        """OpenCV world-to-camera matrices, as ``gsplat.rasterization`` expects."""
        return opengl_c2w_to_opencv_viewmat(self.camera_to_worlds)

    @classmethod
    def from_viewmats(cls, viewmats: Tensor, Ks: Tensor, width: int, height: int) -> Cameras:
        """Builds cameras from OpenCV world-to-camera matrices ``[C, 4, 4]`` and intrinsics ``[C, 3, 3]``."""
        return cls(
            camera_to_worlds=opencv_viewmat_to_opengl_c2w(viewmats),
            fx=Ks[:, 0, 0],
            fy=Ks[:, 1, 1],
            cx=Ks[:, 0, 2],
            cy=Ks[:, 1, 2],
            width=width,
            height=height,
        )

    def scaled(self, factor: float) -> Cameras:
        """The same cameras at ``factor`` times the resolution."""
        return replace(
            self,
            fx=self.fx * factor,
            fy=self.fy * factor,
            cx=self.cx * factor,
            cy=self.cy * factor,
            width=max(1, round(self.width * factor)),
            height=max(1, round(self.height * factor)),
        )


def opengl_c2w_to_opencv_viewmat(c2w: Tensor) -> Tensor:
    """[..., 4, 4] OpenGL camera-to-world -> OpenCV world-to-camera."""
    return torch.linalg.inv(c2w @ _GL_TO_CV.to(c2w))


def opencv_viewmat_to_opengl_c2w(viewmats: Tensor) -> Tensor:
    """[..., 4, 4] OpenCV world-to-camera -> OpenGL camera-to-world."""
    return torch.linalg.inv(viewmats) @ _GL_TO_CV.to(viewmats)


def project_points(
    points: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor]:
    """World points ``[N, 3]`` into one view: ``(uv [N, 2] pixel coordinates (x right, y down, pixel
    centres at i + 0.5), z [N] depth along the view axis, inside [N]: in front of the camera and in the
    image)``. ``viewmat``/``K``: one row of :meth:`Cameras.viewmats` / :meth:`Cameras.Ks` (OpenCV)."""
    q = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = q[:, 2]
    uv = (q @ K.T)[:, :2] / z.clamp(min=1e-6)[:, None]
    u, v = uv.unbind(-1)
    inside = (z > 1e-6) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return uv, z, inside


def focal_from_fov(fov_deg: Tensor | float, size: int) -> Tensor:
    """Focal length in pixels for a field of view (degrees) across ``size`` pixels."""
    fov = torch.as_tensor(fov_deg, dtype=torch.float32)
    return 0.5 * size / torch.tan(0.5 * torch.deg2rad(fov))


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """OpenGL camera-to-world matrices ``[C, 4, 4]`` for cameras at ``eye [C, 3]`` looking at ``target``."""
    eye = eye.float()
    target = torch.zeros_like(eye) if target is None else target.to(eye).expand_as(eye)
    up = torch.tensor([0.0, 1.0, 0.0]).to(eye).expand_as(eye) if up is None else up.to(eye).expand_as(eye)
    back = torch.nn.functional.normalize(eye - target, dim=-1)  # camera +Z points away from the target
    right = torch.linalg.cross(up, back, dim=-1)
    # Looking straight down/up: pick another up vector.
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        alt = torch.tensor([0.0, 0.0, -1.0]).to(eye).expand_as(eye)
        right = torch.where(degenerate[:, None], torch.linalg.cross(alt, back, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    true_up = torch.linalg.cross(back, right, dim=-1)
    c2w = torch.eye(4).to(eye).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = eye
    return c2w


def spherical_to_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """[C] angles (degrees) and distances -> [C, 3] positions (+Y up, azimuth 0 on +Z)."""
    el = torch.deg2rad(elevation_deg.float())
    az = torch.deg2rad(azimuth_deg.float())
    d = distance.float()
    return torch.stack(
        [d * torch.cos(el) * torch.sin(az), d * torch.sin(el), d * torch.cos(el) * torch.cos(az)], dim=-1
    )


def cameras_from_spherical(
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    distance: Tensor,
    fov_deg: Tensor,
    width: int,
    height: int,
    target: Tensor | None = None,
) -> Cameras:
    """Cameras on spheres around ``target`` looking at it; every argument is ``[C]``."""
    eye = spherical_to_position(elevation_deg, azimuth_deg, distance)
    if target is not None:
        eye = eye + target.to(eye)
    focal = focal_from_fov(fov_deg, height)  # fov is vertical, as in threestudio
    return Cameras(
        camera_to_worlds=look_at(eye, target),
        fx=focal.clone(),
        fy=focal.clone(),
        cx=torch.full_like(focal, width / 2),
        cy=torch.full_like(focal, height / 2),
        width=width,
        height=height,
        elevation_deg=elevation_deg.float(),
        azimuth_deg=azimuth_deg.float(),
    )


def orbit_cameras(
    n: int,
    elevation_deg: float = 15.0,
    distance: float = 3.0,
    fov_deg: float = 40.0,
    width: int = 64,
    height: int = 64,
    azimuth_start_deg: float = 0.0,
) -> Cameras:
    """``n`` cameras evenly spaced in azimuth on one circle (a turntable)."""
    az = azimuth_start_deg + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    az = (az + 180.0) % 360.0 - 180.0
    ones = torch.ones(n)
    return cameras_from_spherical(ones * elevation_deg, az, ones * distance, ones * fov_deg, width, height)


def _uniform(n: int, lo_hi: tuple[float, float], generator: torch.Generator | None) -> Tensor:
    lo, hi = lo_hi
    if hi < lo:
        raise ValueError(f"range must be (low, high) with low <= high, got {lo_hi}")
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def sample_hemisphere_cameras(
    n: int,
    elevation_range_deg: tuple[float, float] = (-10.0, 60.0),
    azimuth_range_deg: tuple[float, float] = (-180.0, 180.0),
    distance_range: tuple[float, float] = (2.5, 3.5),
    fov_range_deg: tuple[float, float] = (35.0, 45.0),
    width: int = 64,
    height: int = 64,
    generator: torch.Generator | None = None,
    uniform_sphere: bool = True,
) -> Cameras:
    """Random cameras looking at the origin.

    Args:
        n: Number of cameras.
        elevation_range_deg: Elevation range in degrees (90 = straight above).
        azimuth_range_deg: Azimuth range in degrees (0 = front, on +Z).
        distance_range: Distance range from the origin.
        fov_range_deg: Vertical field-of-view range in degrees.
        width: Image width in pixels.
        height: Image height in pixels.
        generator: Random generator (seed it for reproducible runs).
        uniform_sphere: Sample elevation so that positions are uniform on the sphere's area
            (as threestudio's ``batch_uniform_azimuth=False, uniform_sphere`` sampling), rather than
            uniform in angle.

    Returns:
        Cameras with ``elevation_deg`` and ``azimuth_deg`` recorded.
    """
    if uniform_sphere:
        lo, hi = (math.sin(math.radians(v)) for v in elevation_range_deg)
        elevation = torch.rad2deg(torch.asin(_uniform(n, (lo, hi), generator)))
    else:
        elevation = _uniform(n, elevation_range_deg, generator)
    azimuth = _uniform(n, azimuth_range_deg, generator)
    distance = _uniform(n, distance_range, generator)
    fov = _uniform(n, fov_range_deg, generator)
    return cameras_from_spherical(elevation, azimuth, distance, fov, width, height)


ViewWord = str


def view_direction_words(
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    overhead_threshold_deg: float = 60.0,
    front_half_width_deg=45.0,
) -> list[ViewWord]:
    """View-dependent prompt suffixes, as in DreamFusion / threestudio.

    ``overhead view`` above ``overhead_threshold_deg``; else ``front view`` within
    ``front_half_width_deg`` of azimuth 0, ``back view`` within it of 180, ``side view`` otherwise.
    """
    words = []
    for el, az in zip(elevation_deg.tolist(), azimuth_deg.tolist(), strict=True):
        az = (az + 180.0) % 360.0 - 180.0
        if el > overhead_threshold_deg:
            words.append("overhead view")
        elif abs(az) <= front_half_width_deg:
            words.append("front view")
        elif abs(az) >= 180.0 - front_half_width_deg:
            words.append("back view")
        else:
            words.append("side view")
    return words
