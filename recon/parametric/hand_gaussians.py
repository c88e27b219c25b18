"""Gaussians bound to a hand mesh, shared by both hands, and the per-frame poses BIGS trains.

BIGS (On et al., "BIGS: Bimanual Category-agnostic Interaction Reconstruction from Monocular Videos via
3D Gaussian Splatting", CVPR 2025, https://arxiv.org/abs/2504.09097) keeps **one** canonical Gaussian set
for both hands: the left hand uses the right hand's Gaussians mirrored, so what one hand shows teaches the
other. Here each Gaussian is attached to a triangle of the hand mesh, as in GaussianAvatars / HeadStudio
(Qian et al. 2024, https://arxiv.org/abs/2312.02069): for triangle ``(a, b, c)`` with centroid ``T``, area
``S`` and frame ``R = [X, Y, Z]`` (``Z = (b - a) / |b - a|``, ``n`` the face normal, ``X = Z x n``,
``Y = Z x X``, all unit)

    position = T + sqrt(S) · R · local,   scale = sqrt(S) · exp(log_scale),   rotation = R · q_local

so every posed mesh (any pose, shape or side) carries the Gaussians along exactly. The left hand's mesh is
the right's mirrored (same vertex and face order); a mirror turns the triangle frame into
``M R diag(1, -1, 1)`` (the cross product flips), so the left hand reads ``local * (1, -1, 1)`` and
``q_local`` conjugated by ``diag(1, -1, 1)`` (``(w, -x, y, -z)``): its Gaussians are then the exact mirror
images of the right hand's (:func:`HandGaussians.deform`).

:class:`HandPoses` and :class:`ObjectPoses` hold per-frame parameters as trainable groups of the one
loop (:mod:`recon.train`): offsets added to the initial values, so a stage that does not train them
keeps the initialisation exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recon.gaussians import rgb_to_sh, sh_to_rgb
from recon.parametric.lbs import axis_angle_to_matrix

FLIP_Y = torch.tensor([1.0, -1.0, 1.0])


def triangle_frames(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centroids ``[B, F, 3]``, frames ``[B, F, 3, 3]`` (columns X, Y, Z) and areas ``[B, F]``."""
    a, b, c = vertices[:, faces[:, 0]], vertices[:, faces[:, 1]], vertices[:, faces[:, 2]]
    cross = torch.linalg.cross(b - a, c - a, dim=-1)
    area = 0.5 * cross.norm(dim=-1)
    n = torch.nn.functional.normalize(cross, dim=-1)
    z = torch.nn.functional.normalize(b - a, dim=-1)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, n, dim=-1), dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    return (a + b + c) / 3.0, torch.stack([x, y, z], dim=-1), area


def quat_to_matrix(q: Tensor) -> Tensor:  # [..., 4] wxyz -> [..., 3, 3]
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)  # fmt: skip


def matrix_to_quat(m: Tensor) -> Tensor:  # [..., 3, 3] -> [..., 4] wxyz, w >= 0
    from recon.parametric.lbs import matrix_to_axis_angle

    aa = matrix_to_axis_angle(m)
    angle = aa.norm(dim=-1, keepdim=True)
    axis = aa / angle.clamp_min(1e-12)
    return torch.cat([torch.cos(angle / 2), axis * torch.sin(angle / 2)], dim=-1)


def view_dependent_rgb(coeffs: Tensor, degree: int, dirs: Tensor) -> Tensor:
    """``max(SH(d) + 0.5, 0)`` of coefficients ``[..., K, 3]`` along directions ``[..., 3]`` (gsplat's
    convention; the directions need not be unit)."""
    from gsplat.cuda._torch_impl import _spherical_harmonics  # pure torch: any device

    return (_spherical_harmonics(degree, dirs, coeffs.expand(*dirs.shape[:-1], -1, -1)) + 0.5).clamp_min(0.0)


class HandGaussians(torch.nn.Module):
    """Gaussians on the triangles of the (right) hand mesh; :meth:`deform` places them on any posed mesh.

    Args:
        faces: The right hand's triangles ``[F, 3]`` (the left hand uses the same, mirrored).
        rest_vertices: The rest mesh ``[V, 3]`` (sizes the initial Gaussians).
        per_face: Gaussians per triangle.
        color: Initial RGB.
        generator: For the initial positions inside each triangle.
        init_scale: Initial in-plane standard deviation in units of ``sqrt(triangle area / per_face)``.
        thickness: Initial extent along the triangle's normal relative to the in-plane one (1: round;
            below 1: surfels, which keep thin parts such as fingers from bleeding past their outline).
        sh_degree: Degree of the view-dependent colour, seen from each Gaussian's triangle frame (0: one
            colour). The frame turns with the hand, so under a light fixed to the world the shading a pose
            gives a surface is a function of the view direction in that frame.
    """

    def __init__(
        self,
        faces: Tensor,
        rest_vertices: Tensor,
        per_face: int = 1,
        color: tuple[float, float, float] = (0.8, 0.6, 0.5),
        generator: torch.Generator | None = None,
        init_scale: float = 0.6,
        thickness: float = 1.0,
        sh_degree: int = 0,
    ) -> None:
        super().__init__()
        self.sh_degree = sh_degree
        F = faces.shape[0]
        face_ids = torch.arange(F).repeat_interleave(per_face)
        N = face_ids.shape[0]
        self.register_buffer("faces", faces.long().clone())
        self.register_buffer("face_ids", face_ids)
        # initial positions: barycentric samples of the triangle in its own frame, centroid for one per face
        _, frames, area = triangle_frames(rest_vertices[None].float(), self.faces)
        if per_face == 1:
            bary = torch.full((N, 3), 1.0 / 3.0)
        else:  # uniform on the triangle (normalised exponentials: Dirichlet(1, 1, 1))
            bary = -torch.log(torch.rand(N, 3, generator=generator).clamp_min(1e-6))
            bary = bary / bary.sum(-1, keepdim=True)
        tri = rest_vertices[self.faces[face_ids]].float()  # [N, 3, 3]
        centroid = tri.mean(1)
        point = (bary[..., None] * tri).sum(1)
        scale = area[0, face_ids].clamp_min(1e-12).sqrt()
        local = torch.einsum("nji,nj->ni", frames[0, face_ids], point - centroid) / scale[:, None]
        quats = torch.zeros(N, 4)
        quats[:, 0] = 1.0
        self.local = torch.nn.Parameter(local)
        log_scales = torch.full((N, 3), math.log(init_scale / math.sqrt(per_face)))
        log_scales[:, 1] += math.log(thickness)  # the frame's Y axis is the triangle's normal
        self.log_scales = torch.nn.Parameter(log_scales)
        self.quats = torch.nn.Parameter(quats)
        self.opacities = torch.nn.Parameter(torch.logit(torch.full((N,), 0.95)))
        self.sh0 = torch.nn.Parameter(rgb_to_sh(torch.tensor(color).expand(N, 3)).clone()[:, None, :])
        self.shN = torch.nn.Parameter(torch.zeros(N, (sh_degree + 1) ** 2 - 1, 3))

    def __len__(self) -> int:
        return self.face_ids.shape[0]

    @property
    def colors(self) -> Tensor:  # [N, 3]
        return sh_to_rgb(self.sh0[:, 0]).clamp(0, 1)

    def view_colors(
        self, vertices: Tensor, camera_center: Tensor, side: str = "right", means: Tensor | None = None
    ) -> Tensor:
        """RGB ``[B, N, 3]`` seen from ``camera_center [3]`` on posed meshes ``[B, V, 3]`` (:attr:`colors`
        at ``sh_degree`` 0), the view direction taken in each Gaussian's triangle frame (mirrored for
        ``left``). ``means``: :meth:`deform`'s means on these meshes, when the caller has them."""
        if self.sh_degree == 0:
            return self.colors[None].expand(vertices.shape[0], -1, -1)
        if means is None:
            means, _, _ = self.deform(vertices, side)
        _, frames, _ = triangle_frames(vertices, self.faces)
        R = frames[:, self.face_ids]  # [B, N, 3, 3]
        local = (R.transpose(-1, -2) @ (means - camera_center)[..., None])[..., 0]
        if side == "left":
            local = local * FLIP_Y.to(local)
        return view_dependent_rgb(torch.cat([self.sh0, self.shN], 1), self.sh_degree, local)

    def deform(self, vertices: Tensor, side: str = "right") -> tuple[Tensor, Tensor, Tensor]:
        """Means ``[B, N, 3]``, unit quaternions ``[B, N, 4]`` and scales ``[B, N, 3]`` on posed meshes.

        Args:
            vertices: Posed hand meshes ``[B, V, 3]`` of ``side`` (same vertex order as the right hand's).
            side: ``left`` reads the mirrored local offsets and rotations (see the module docstring).
        """
        centroid, frames, area = triangle_frames(vertices, self.faces)
        fid = self.face_ids
        local, q = self.local, torch.nn.functional.normalize(self.quats, dim=-1)
        if side == "left":
            local = local * FLIP_Y.to(local)
            q = q * torch.tensor([1.0, -1.0, 1.0, -1.0]).to(q)
        s = area[:, fid].clamp_min(1e-12).sqrt()[..., None]  # [B, N, 1]
        R = frames[:, fid]  # [B, N, 3, 3]
        means = centroid[:, fid] + s * (R @ local[None, :, :, None])[..., 0]
        scales = s * torch.exp(self.log_scales)[None]
        rotation = R @ quat_to_matrix(q)[None]  # R is a proper frame on either side: a rotation
        return means, matrix_to_quat(rotation), scales

    # ------------------------------------------------------------------ the loop's protocol
    def parameter_groups(self) -> dict[str, list[Tensor]]:
        return {
            "means": [self.local],
            "scales": [self.log_scales],
            "quats": [self.quats],
            "opacities": [self.opacities],
            "sh0": [self.sh0],
            "shN": [self.shN],
        }

    @staticmethod
    def default_learning_rates() -> dict[str, float]:
        """Offsets are in units of the triangle's size, so these do not depend on the scene's scale."""
        return {"means": 5e-3, "scales": 5e-3, "quats": 1e-3, "opacities": 2e-2, "sh0": 1e-2, "shN": 5e-4}

    def regularisers(self) -> dict[str, Tensor]:
        """HeadStudio/GaussianAvatars-style: offsets and scales that leave their triangle; colour spread."""
        offset = (self.local.norm(dim=-1) - 1.0).clamp_min(0).pow(2).mean()
        scale = (self.log_scales - math.log(1.5)).clamp_min(0).pow(2).mean()
        rgb = self.colors
        uniform = (rgb - rgb.mean(0, keepdim=True)).abs().mean()
        return {"offset": offset, "scale": scale, "color": uniform}


class HandPoses(torch.nn.Module):
    """Per-frame MANO parameters of both hands: initial values (buffers) + trained offsets.

    Groups: ``orient`` (global orientation), ``pose`` (15 joints), ``transl``; ``betas`` stay fixed.
    """

    def __init__(self, initial: dict[str, dict[str, Tensor]]) -> None:
        super().__init__()
        self.sides = tuple(initial)
        for side, params in initial.items():
            T = params["global_orient"].shape[0]
            for key in ("global_orient", "hand_pose", "transl", "betas"):
                self.register_buffer(f"{side}_{key}_init", params[key].float().clone())
            self.register_parameter(f"{side}_orient", torch.nn.Parameter(torch.zeros(T, 3)))
            self.register_parameter(f"{side}_pose", torch.nn.Parameter(torch.zeros(T, 45)))
            self.register_parameter(f"{side}_transl", torch.nn.Parameter(torch.zeros(T, 3)))

    def params(self, side: str, frames: Tensor | slice | None = None) -> dict[str, Tensor]:
        """``global_orient, hand_pose, betas, transl`` of ``side`` at ``frames`` (all by default)."""
        idx = slice(None) if frames is None else frames

        def get(name: str) -> Tensor:
            return getattr(self, name)[idx]

        return {
            "global_orient": _compose_axis_angle(get(f"{side}_orient"), get(f"{side}_global_orient_init")),
            "hand_pose": get(f"{side}_hand_pose_init") + get(f"{side}_pose"),
            "betas": get(f"{side}_betas_init"),
            "transl": get(f"{side}_transl_init") + get(f"{side}_transl"),
        }

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        return {
            "orient": [getattr(self, f"{s}_orient") for s in self.sides],
            "pose": [getattr(self, f"{s}_pose") for s in self.sides],
            "transl": [getattr(self, f"{s}_transl") for s in self.sides],
        }

    @staticmethod
    def default_learning_rates() -> dict[str, float]:
        return {"orient": 2e-3, "pose": 3e-3, "transl": 2e-4}


def _compose_axis_angle(delta: Tensor, initial: Tensor) -> Tensor:
    """``exp(delta) · R(initial)`` back in axis-angle (a rotation offset applied in the world frame)."""
    from recon.parametric.lbs import matrix_to_axis_angle

    if delta.numel() and not delta.requires_grad and bool((delta == 0).all()):
        return initial
    return matrix_to_axis_angle(axis_angle_to_matrix(delta) @ axis_angle_to_matrix(initial))


class ObjectPoses(torch.nn.Module):
    """The object's rigid pose per frame: ``x_world = R_t x_object + t_t``, initial values + offsets."""

    def __init__(self, rotations: Tensor, translations: Tensor) -> None:  # [T, 3, 3], [T, 3]
        super().__init__()
        T = rotations.shape[0]
        self.register_buffer("rotations_init", rotations.float().clone())
        self.register_buffer("translations_init", translations.float().clone())
        self.rotation = torch.nn.Parameter(torch.zeros(T, 3))
        self.translation = torch.nn.Parameter(torch.zeros(T, 3))

    def pose(self, frames: Tensor | slice | None = None) -> tuple[Tensor, Tensor]:
        idx = slice(None) if frames is None else frames
        R = axis_angle_to_matrix(self.rotation[idx]) @ self.rotations_init[idx]
        return R, self.translations_init[idx] + self.translation[idx]

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        return {"rotation": [self.rotation], "translation": [self.translation]}

    @staticmethod
    def default_learning_rates() -> dict[str, float]:
        return {"rotation": 2e-3, "translation": 2e-4}


def transform_gaussians(
    means: Tensor, quats: Tensor, rotation: Tensor, translation: Tensor
) -> tuple[Tensor, Tensor]:
    """Rigidly moved Gaussians: ``R x + t`` and ``R q`` (means ``[N, 3]``, quats ``[N, 4]``, R ``[3, 3]``)."""
    moved = means @ rotation.T + translation
    q = matrix_to_quat(rotation @ quat_to_matrix(quats))
    return moved, q
