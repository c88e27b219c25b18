"""Linear blend skinning in SMPL/MANO's formulation: shape blend shapes, pose correctives, kinematic chain.

Loper et al., "SMPL: A Skinned Multi-Person Linear Model", SIGGRAPH Asia 2015 (https://smpl.is.tue.mpg.de);
Romero et al., "Embodied Hands" (MANO), SIGGRAPH Asia 2017, https://arxiv.org/abs/2201.02610. The math is
the papers' (Eq. 1-4 of SMPL); this is the project's own implementation, not a copy of smplx's.

For a rig with rest vertices ``T [V, 3]``, shape directions ``S [V, 3, K]``, rest joints
``J(β) = J̄ + Sj β``, pose correctives ``P [V, 3, 9 (J-1)]`` (optional), parents and skinning weights
``W [V, J]``:

1. ``T_β = T + S β`` (shape), ``T_p = T_β + P · vec(R_1 - I, ..., R_{J-1} - I)`` (pose correctives);
2. joint ``j``'s world transform ``G_j = G_parent(j) · [R_j | J_j - J_parent(j)]`` (``G_0 = [R_0 | J_0]``):
   every rotation is expressed in the **rest frame's axes**, relative to the parent (MANO's convention);
3. ``v' = Σ_j W_vj · G_j · [R=I | -J_j] · v`` — the rest pose removed, then the posed one applied.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:  # [..., 3] -> [..., 3, 3]
    """Rodrigues' formula, exact and differentiable at the zero rotation (Taylor terms there)."""
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(theta2_safe)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)  # sin θ / θ
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)  # (1 - cos θ) / θ²
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:  # [..., 3, 3] -> [..., 3]
    """The inverse of :func:`axis_angle_to_matrix` for angles in ``[0, π)`` (through a unit quaternion)."""
    m = matrix
    xx, yy, zz = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    xy, yx, xz, zx, yz, zy = (
        m[..., 0, 1],
        m[..., 1, 0],
        m[..., 0, 2],
        m[..., 2, 0],
        m[..., 1, 2],
        m[..., 2, 1],
    )
    # rows: 4 q scaled by 4 q_w, 4 q_x, 4 q_y, 4 q_z; the best conditioned is the one with the largest norm
    candidates = torch.stack(
        [
            torch.stack([1 + xx + yy + zz, zy - yz, xz - zx, yx - xy], -1),
            torch.stack([zy - yz, 1 + xx - yy - zz, xy + yx, xz + zx], -1),
            torch.stack([xz - zx, xy + yx, 1 - xx + yy - zz, yz + zy], -1),
            torch.stack([yx - xy, xz + zx, yz + zy, 1 - xx - yy + zz], -1),
        ],
        dim=-2,
    )  # [..., 4, 4]
    best = candidates.norm(dim=-1).argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = torch.nn.functional.normalize(q, dim=-1)
    q = torch.where(q[..., :1] < 0, -q, q)  # w >= 0: angle in [0, π]
    sin_half = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(sin_half, q[..., :1])
    scale = torch.where(sin_half > 1e-8, angle / sin_half.clamp_min(1e-12), 2.0 * torch.ones_like(sin_half))
    return q[..., 1:] * scale


def blend_shapes(coefficients: Tensor, directions: Tensor) -> Tensor:
    """``Σ_k c_k D[..., k]``: ``coefficients [B, K]``, ``directions [V, 3, K]`` -> ``[B, V, 3]``."""
    return torch.einsum("bk,vik->bvi", coefficients, directions)


def forward_kinematics(
    rotations: Tensor,  # [B, J, 3, 3] relative rotations (rest-frame axes)
    joints: Tensor,  # [B, J, 3] rest joint positions
    parents: Tensor,  # [J] int, parents[0] = -1, parents[j] < j
) -> tuple[Tensor, Tensor]:
    """World transforms of a kinematic chain.

    Returns:
        ``(posed_joints [B, J, 3], skinning_transforms [B, J, 4, 4])``: the skinning transform of joint
        ``j`` maps a rest-pose point to its posed position as if it were attached to ``j`` only
        (``G_j · translate(-J_j)``).
    """
    B, J = joints.shape[:2]
    parent_list = [int(p) for p in parents]
    offsets = joints.clone()
    offsets[:, 1:] = joints[:, 1:] - joints[:, parent_list[1:]]
    local = torch.zeros(B, J, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rotations
    local[..., :3, 3] = offsets
    local[..., 3, 3] = 1.0
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[parent_list[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)  # [B, J, 4, 4]
    posed_joints = world[..., :3, 3]
    skinning = world.clone()
    skinning[..., :3, 3] = posed_joints - (world[..., :3, :3] @ joints[..., None])[..., 0]
    return posed_joints, skinning


def skin_points(
    points: Tensor,  # [B, N, 3] rest-pose points
    weights: Tensor,  # [N, J] or [B, N, J]
    transforms: Tensor,  # [B, J, 4, 4] skinning transforms
) -> Tensor:
    """Linear blend skinning: ``Σ_j w_j (R_j p + t_j)`` -> ``[B, N, 3]``."""
    blended = torch.einsum("...nj,bjkl->bnkl", weights, transforms)  # [B, N, 4, 4]
    return (blended[..., :3, :3] @ points[..., None])[..., 0] + blended[..., :3, 3]


def skin_rotations(weights: Tensor, transforms: Tensor) -> Tensor:
    """The blended linear parts ``Σ_j w_j R_j`` -> ``[B, N, 3, 3]`` (not orthonormal in general)."""
    return torch.einsum("...nj,bjkl->bnkl", weights, transforms[..., :3, :3])


def register_pose_basis(module: torch.nn.Module, posedirs) -> None:
    """``module.posedirs``: the pose-corrective directions ``[V, 3, P]`` as the ``[P, V * 3]`` buffer that
    :func:`pose_features` multiplies, or ``None`` when the model has none."""
    if posedirs is None:
        module.posedirs = None
        return
    P = posedirs.shape[2]
    basis = torch.as_tensor(posedirs, dtype=torch.float32).reshape(-1, P).T.contiguous()
    module.register_buffer("posedirs", basis)


def pose_features(rotations: Tensor) -> Tensor:
    """``vec(R_j - I)`` of the non-root joints: ``[B, J, 3, 3]`` -> ``[B, 9 (J - 1)]`` (pose correctives)."""
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    return (rotations[:, 1:] - eye).reshape(rotations.shape[0], -1)
