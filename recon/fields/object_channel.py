"""One object of a multi-object :class:`~recon.fields.SDFField` on its own: its SDF and gradient, a field
that renders it alone, and its mesh (DP-Recon's per-object renders and exports,
:mod:`recon.pipelines.dprecon`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.fields.base import FieldSample
from recon.fields.sdf import (
    SDFField,
    dense_grid_features_and_jacobian,
    laplace_density,
    logistic_density,
    neus_alpha,
)


def channel_geometry(
    field: SDFField, points: Tensor, index: int, clip_background: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """One object's SDF ``[N]``, its spatial gradient ``[N, 3]`` and the geometric feature ``[N, G]``.

    The field's own gradient is the scene SDF's (the nearest channel's); an object rendered alone needs
    its own channel's, formed the same way (forward mode through the dense grid and MLP; autograd for
    other encodings). With ``clip_background`` an object's SDF is ``max(s_k, -s_0)``: what lies inside the
    background's solid (under the floor, in a wall) is not part of it (no photo constrains it there).
    """
    x = points.reshape(-1, 3)
    C = field.num_channels
    clip = clip_background and index > 0
    if not (isinstance(field.encoding, nn.Module) and hasattr(field.encoding, "levels")):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            geo = field.geometry(xg)
            sdf = torch.maximum(geo.sdfs[:, index], -geo.sdfs[:, 0]) if clip else geo.sdfs[:, index]
            create = field.training and torch.is_grad_enabled()
            (grad,) = torch.autograd.grad(sdf.sum(), xg, create_graph=create)
        return sdf, grad, geo.features
    rows = dense_grid_features_and_jacobian(field.encoding, x)
    value, tangent = rows[:, 0], rows[:, 1:]
    skip_value, skip_tangent = value, tangent
    for layer in field.geometry_trunk:
        if isinstance(layer, nn.Linear):
            value, tangent = layer(value), tangent @ layer.weight.t()
        else:  # Softplus(beta)
            value, tangent = layer(value), tangent * torch.sigmoid(layer.beta * value)[:, None]
    if len(field.geometry_trunk):
        value, tangent = torch.cat([value, skip_value], dim=-1), torch.cat([tangent, skip_tangent], dim=-1)
    out = field.geometry_head(value)

    def channel(k: int) -> tuple[Tensor, Tensor]:
        offset = x - field.init_centers[k]
        norm = offset.norm(dim=-1, keepdim=True)
        sign = field.init_signs[k]
        sdf = out[:, k] + sign * (norm[:, 0] - field.init_radii[k])
        return sdf, tangent @ field.geometry_head.weight[k] + sign * offset / norm.clamp_min(1e-12)

    sdf, grad = channel(index)
    if clip:
        sdf_bg, grad_bg = channel(0)
        inside_bg = -sdf_bg > sdf
        sdf = torch.where(inside_bg, -sdf_bg, sdf)
        grad = torch.where(inside_bg[:, None], -grad_bg, grad)
    return sdf, grad, out[:, C:]


class ObjectField(nn.Module):
    """One object of a multi-object :class:`~recon.fields.SDFField` as a field of its own, in a box: what
    DP-Recon's per-object renders show (the object alone, nothing in front of it; channel 0 alone is the
    background). Its SDF is :func:`channel_geometry`'s."""

    def __init__(self, field: SDFField, index: int, aabb: Tensor) -> None:
        super().__init__()
        self.field, self.index = field, int(index)
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(6))

    def forward(self, points: Tensor, directions: Tensor | None = None, step_sizes: Tensor | None = None):
        f, c = self.field, self.field.config
        lead = points.shape[:-1]
        sdf, grad, feat = channel_geometry(f, points, self.index)
        normals = F.normalize(grad, dim=-1)
        color_in = [feat]
        if c.color_uses_normals:
            color_in.append(normals)
        if c.color_uses_directions:
            d = directions.reshape(-1, 3) if directions is not None else torch.zeros_like(normals)
            color_in.append(d)
        rgb = torch.sigmoid(f.color_net(torch.cat(color_in, dim=-1)))
        density = alpha = None
        if c.density == "volsdf":
            density = laplace_density(sdf, f.beta)
        elif step_sizes is None:
            density = logistic_density(sdf, f.inv_s)
        else:
            d = directions.reshape(-1, 3) if directions is not None else -normals
            alpha = neus_alpha(
                sdf, (d * normals).sum(-1), step_sizes.reshape(-1), f.inv_s, f.cos_anneal_ratio
            )
        shape = lambda t: None if t is None else t.reshape(*lead, *t.shape[1:])  # noqa: E731
        return FieldSample(
            rgb=shape(rgb), density=shape(density), alpha=shape(alpha), normals=shape(normals), sdf=shape(sdf)
        )

    def sdf(self, points: Tensor) -> Tensor:
        """The object's signed distance ``[...]`` (no gradient needed)."""
        return channel_geometry(self.field, points, self.index)[0].reshape(points.shape[:-1])

    def density(self, points: Tensor) -> Tensor:
        f, sdf = self.field, self.sdf(points)
        return (
            laplace_density(sdf, f.beta) if f.config.density == "volsdf" else logistic_density(sdf, f.inv_s)
        )


def object_mesh(field: SDFField, index: int, resolution: int, bounds: Tensor | None = None):
    """Marching cubes of one object's (background-clipped) SDF over ``bounds`` ``[6]`` (default: the
    field's box), its largest connected piece kept.

    Raises:
        UserError: the object has no surface there.
    """
    from recon.mesh.cleanup import clean_mesh
    from recon.mesh.extract import extract_density_mesh

    box = (field.aabb if bounds is None else bounds).detach().cpu()
    obj = ObjectField(field, index, box)
    was_training = field.training
    field.eval()
    try:
        with torch.no_grad():
            mesh = extract_density_mesh(
                lambda p: 1.0 - obj.sdf(p), box[:3].tolist(), box[3:].tolist(), resolution, 1.0
            )
    finally:
        field.train(was_training)
    return clean_mesh(mesh)
