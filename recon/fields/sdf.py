"""Signed distance fields for volume rendering: one surface, or K objects and a background.

:class:`SDFField` is a feature grid and a small MLP giving signed distances (negative inside), a
geometric feature and a color head, the layout of threestudio's ``implicit-sdf`` geometry with a
dense grid in place of the hash grid so that it runs on a CPU. It starts as a sphere (an analytic
``|x - c| - r`` bias added to the MLP output, threestudio's ``sdf_bias: sphere``; the SDF rows of the
last layer start at zero, so the field *is* the sphere at step 0). Normals are the normalised
autograd gradient of the scene SDF. Two ways to turn distances into opacity:

* VolSDF (https://arxiv.org/abs/2106.12052): density ``sigma = (1 / beta) * Psi_beta(-s)`` with
  ``Psi_beta`` the CDF of a zero-mean Laplace distribution of scale ``beta`` (learnable, ``beta =
  |beta_param| + beta_min``), as DP-Recon's ``LaplaceDensity``.
* NeuS (https://arxiv.org/abs/2106.10689): discrete opacity from the logistic CDF of the SDFs
  estimated at the two ends of each sample's interval, ``alpha = max((Phi(s_prev) - Phi(s_next)) /
  Phi(s_prev), 0)``, with a learned inverse standard deviation ``inv_s = exp(10 * variance)`` and the
  cosine annealing of the original code. Returned as ``FieldSample.alpha``.

Multi-object composition follows ObjectSDF++ (https://arxiv.org/abs/2308.07868) and DP-Recon
(https://arxiv.org/abs/2503.14830): one network outputs ``K + 1`` SDF channels, channel 0 the
background and channels ``1..K`` the objects; the scene SDF is their minimum. The occlusion-aware
object opacity of ObjectSDF++ is ``O_k = sum_i T_i * alpha_k,i`` with ``T_i`` the **scene**
transmittance in front of sample ``i`` and ``alpha_k,i`` the opacity the sample would have from channel
``k``'s SDF alone. The renderer accumulates ``FieldSample.extras`` with the scene's compositing
weights ``w_i = T_i * alpha_i``, so the field reports the per-sample ratio
``extras["object_opacity"] = alpha_k,i / alpha_i`` ``[..., K + 1]``, which accumulates to exactly
``O_k``. With VolSDF ``alpha_k <= alpha`` (the scene density is the largest channel density), so the
ratio lies in ``[0, 1]`` and equals 1 for the channel that forms the scene surface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.cameras import project_points
from recon.errors import checked
from recon.fields.base import FieldSample, plain_config
from recon.fields.encoding import DenseGridEncoding, HashGridEncoding, total_variation

DensityKind = Literal["volsdf", "neus"]


class MultiResolutionDenseGrid(nn.Module):
    """Dense feature grids at several resolutions over one box, their features concatenated.

    The dense analogue of Instant-NGP's multiresolution grid (https://arxiv.org/abs/2201.05989)
    without hashing, built from :class:`~recon.fields.encoding.DenseGridEncoding` levels.

    Args:
        aabb: ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        resolutions: Voxels per axis of each level.
        features: Channels per level.
        init_std: Standard deviation of the normal initialisation.
    """

    def __init__(
        self,
        aabb: Tensor | Sequence[float],
        resolutions: Sequence[int],
        features: int,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__()
        if not resolutions:
            raise ValueError("resolutions must name at least one level")
        self.levels = nn.ModuleList(DenseGridEncoding(aabb, r, features, init_std) for r in resolutions)

    @property
    def n_output_dims(self) -> int:
        return sum(level.n_output_dims for level in self.levels)

    def forward(self, points: Tensor) -> Tensor:
        """Features ``[..., L * F]`` at world points ``[..., 3]``."""
        return torch.cat([level(points) for level in self.levels], dim=-1)

    def tv_loss(self) -> Tensor:
        """Sum over levels of :func:`~recon.fields.encoding.total_variation`."""
        return sum(total_variation(level.grid) for level in self.levels)


@dataclass
class SDFFieldConfig:
    """Configuration of :class:`SDFField`."""

    radius: float = checked(1.0, low=0.001, high=1000)
    """Half size of the cube ``[-radius, radius]^3`` the field lives in (empty outside)."""
    grid_resolutions: tuple[int, ...] = checked((16, 32, 64), low=2, high=1024, nonempty=True)
    """Voxels per axis of each level of the dense feature grid (:class:`MultiResolutionDenseGrid`).
    Coarse levels move whole regions at once, which a fit from a few hundred ray batches needs: a
    single 64^3 level gets too sparse a gradient per voxel and stalls near the starting sphere."""
    features: int = checked(4, low=1, high=1024)
    """Feature channels per grid level."""
    encoding: Literal["dense", "hash"] = "dense"
    """Point encoding: ``"dense"`` (runs everywhere) or ``"hash"`` (tinycudann, CUDA only)."""
    grid_init_std: float = checked(1e-2, low=0, high=100)
    """Standard deviation of the grid's normal initialisation."""
    gradient: Literal["analytic", "autograd"] = "analytic"
    """How the SDF's spatial gradient (normals, eikonal) is formed: ``"analytic"`` carries the
    trilinear weights' derivatives through the MLP in forward mode (dense grid only; a plain
    first-order graph, about twice as fast on a CPU as) ``"autograd"``: ``torch.autograd.grad`` with
    ``create_graph``, which needs ``grid_sample``'s double backward. Both give the same numbers."""
    hidden: int = checked(32, low=1, high=4096)
    """Width of the geometry MLP's hidden layers."""
    hidden_layers: int = checked(1, low=0, high=64)
    """Hidden layers of the geometry MLP (softplus with beta 100, as IDR / DP-Recon); its output layer
    also sees the grid features directly (a linear skip)."""
    geo_features: int = checked(15, low=1, high=1024)
    """Size of the geometric feature the geometry MLP hands to the color head."""
    color_hidden: int = checked(32, low=1, high=4096)
    """Width of the color head's hidden layer."""
    color_uses_normals: bool = True
    """Feed the normal to the color head (IDR's rendering network), so shading follows the geometry."""
    color_uses_directions: bool = False
    """Feed the view direction to the color head (view-dependent color)."""
    num_objects: int = checked(0, low=0, high=64)
    """``K``: 0 for one surface (one SDF channel); ``K >= 1`` for ``K`` object channels plus a
    background channel (channel 0), composed by their minimum."""
    sphere_radius: float = checked(0.5, low=0.001, high=100)
    """Radius of the sphere every object channel (or the single channel) starts as."""
    sphere_center: tuple[float, float, float] = checked((0.0, 0.0, 0.0), low=-1000, high=1000)
    """Centre of the starting sphere of the single channel, and of object channels without their own."""
    object_centers: tuple[tuple[float, float, float], ...] = ()
    """Starting sphere centres of the object channels ``1..K`` (empty: all at ``sphere_center``)."""
    background_radius: float = checked(2.0, low=0, high=1000)
    """The background channel starts as an inverted sphere ``background_radius - |x|`` (positive
    inside, as DP-Recon's room). Beyond the box's half diagonal (``sqrt(3) * radius``) it has no
    surface in the box: an empty background for object-centric scenes."""
    eikonal_extra: bool = False
    """Also return ``extras["eikonal"] = (|grad s| - 1)^2`` ``[..., 1]`` from :meth:`SDFField.forward`:
    the renderer accumulates it with the compositing weights, an eikonal term on the visible surface
    at no extra evaluation (uniform box points alone leave the near-surface band loosely held, and a
    slack gradient there thickens the opacity skin so that the zero level set drifts off the masks)."""
    density: DensityKind = "neus"
    """How SDFs become opacity: ``"neus"`` (logistic alpha) or ``"volsdf"`` (Laplace density, DP-Recon's
    choice). NeuS is the default because :mod:`recon.render.volume` samples rays uniformly: VolSDF then
    needs ``beta`` of the order of the sample spacing, and its silhouettes sit about ``2.3 beta``
    outside the zero level set (measured on a fitted cube: mesh 0.015-0.035 inside the truth, NeuS
    0.01-0.015 outside; DP-Recon's error-bound sampler is what lets ``beta`` shrink there)."""
    beta_init: float = checked(0.1, low=1e-8, high=100)
    """VolSDF: starting Laplace scale ``beta`` (DP-Recon 0.1)."""
    beta_min: float = checked(1e-4, low=0, high=100)
    """VolSDF: lower bound added to ``|beta|`` (DP-Recon 1e-4)."""
    variance_init: float = checked(0.3, low=-10, high=10)
    """NeuS: starting variance parameter; ``inv_s = exp(10 * variance)`` (0.3 -> 20.1, DreamCraft3D)."""
    inv_s_max: float = checked(1e6, low=1, high=1e12)
    """NeuS: upper clamp of ``inv_s``."""
    cos_anneal_steps: int = checked(0, low=0, high=10_000_000)
    """NeuS: steps over which the cosine annealing ratio grows 0 -> 1 (0: no annealing, ratio 1)."""


def laplace_density(sdf: Tensor, beta: Tensor | float) -> Tensor:
    """VolSDF's density ``(1 / beta) * Psi_beta(-sdf)`` (https://arxiv.org/abs/2106.12052, eq. 2-3).

    ``Psi_beta(t) = 0.5 * exp(t / beta)`` for ``t <= 0`` and ``1 - 0.5 * exp(-t / beta)`` otherwise.

    Args:
        sdf: Signed distances ``[...]`` (negative inside).
        beta: Laplace scale (> 0).

    Returns:
        Densities ``[...]``, ``1 / beta`` deep inside, ``1 / (2 beta)`` on the surface, 0 far outside.
    """
    alpha = 1.0 / beta
    return alpha * (0.5 + 0.5 * sdf.sign() * torch.expm1(-sdf.abs() / beta))


def logistic_density(sdf: Tensor, inv_s: Tensor | float) -> Tensor:
    """NeuS's S-density ``phi_s(sdf) = s * e^{-s x} / (1 + e^{-s x})^2``, peaked on the surface.

    Used where a NeuS field is asked for a density without step sizes (occupancy grids, previews).
    """
    x = sdf * inv_s
    return inv_s * torch.sigmoid(x) * torch.sigmoid(-x)


def neus_alpha(
    sdf: Tensor,  # [...]
    cos: Tensor,  # [...] dot(view direction, normal)
    step_sizes: Tensor,  # [...]
    inv_s: Tensor | float,
    cos_anneal_ratio: float = 1.0,
) -> Tensor:
    """NeuS's discrete opacity of each sample (https://arxiv.org/abs/2106.10689, eq. 13).

    The SDFs at the two ends of the sample's interval are estimated from the SDF at its centre and
    the slope along the ray, ``s -/+ cos * step / 2``. The slope is annealed from "always entering"
    ``-relu(0.5 - 0.5 cos)`` to the true ``-relu(-cos)`` by ``cos_anneal_ratio``, as the released code,
    so that back faces don't turn transparent early in training.

    Args:
        sdf: Signed distances at the sample centres.
        cos: Cosine between the ray direction and the SDF gradient.
        step_sizes: Interval lengths.
        inv_s: Inverse standard deviation of the logistic CDF.
        cos_anneal_ratio: 0 at the start of training, 1 when annealed.

    Returns:
        Opacities ``[...]`` in ``[0, 1]``.
    """
    iter_cos = -(F.relu(0.5 - 0.5 * cos) * (1.0 - cos_anneal_ratio) + F.relu(-cos) * cos_anneal_ratio)
    prev_cdf = torch.sigmoid((sdf - iter_cos * step_sizes * 0.5) * inv_s)
    next_cdf = torch.sigmoid((sdf + iter_cos * step_sizes * 0.5) * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def cos_anneal_ratio_at(step: int, anneal_steps: int) -> float:
    """``min(1, step / anneal_steps)`` (1 when ``anneal_steps`` is 0)."""
    return 1.0 if anneal_steps <= 0 else min(1.0, max(0, step) / anneal_steps)


@dataclass
class SDFGeometry:
    """What the geometry MLP gives at points ``[..., 3]``."""

    sdfs: Tensor  # [..., C] per channel (C = 1, or K + 1 with channel 0 the background)
    sdf: Tensor  # [...] scene SDF (minimum over channels)
    features: Tensor  # [..., G] geometric feature for the color head
    gradient: Tensor | None = None  # [..., 3] gradient of the scene SDF (not normalised)
    extras: dict[str, Tensor] = field(default_factory=dict)


class SDFField(nn.Module):
    """Signed distances, normals, opacity and color at points (a :class:`~recon.fields.base.Field`).

    Build it with ``SDFField(config)``; move it with ``.to(device)``. In training mode
    (``field.train()`` and gradients enabled) normals are formed with ``create_graph=True`` so that
    losses on them (and on the color head that sees them) reach the geometry.

    Args:
        config: The configuration.
    """

    def __init__(self, config: SDFFieldConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SDFFieldConfig()
        if config.density not in ("volsdf", "neus"):
            raise ValueError(f"density must be 'volsdf' or 'neus', got {config.density!r}")
        if config.num_objects < 0:
            raise ValueError(f"num_objects must be >= 0, got {config.num_objects}")
        if config.object_centers and len(config.object_centers) != config.num_objects:
            raise ValueError(
                f"object_centers has {len(config.object_centers)} centres for {config.num_objects} objects"
            )
        r = float(config.radius)
        self.register_buffer("aabb", torch.tensor([-r, -r, -r, r, r, r], dtype=torch.float32))
        if config.encoding == "dense":
            self.encoding: nn.Module = MultiResolutionDenseGrid(
                self.aabb, config.grid_resolutions, config.features, config.grid_init_std
            )
        elif config.encoding == "hash":
            self.encoding = HashGridEncoding(self.aabb)
        else:
            raise ValueError(f"encoding must be 'dense' or 'hash', got {config.encoding!r}")

        # Starting shape of each channel: sign * (|x - centre| - radius).
        K = config.num_objects
        if K == 0:
            centers, radii, signs = [config.sphere_center], [config.sphere_radius], [1.0]
        else:
            obj_centers = list(config.object_centers) or [config.sphere_center] * K
            centers = [(0.0, 0.0, 0.0), *obj_centers]
            radii = [config.background_radius] + [config.sphere_radius] * K
            signs = [-1.0] + [1.0] * K
        self.num_channels = len(centers)
        self.register_buffer("init_centers", torch.tensor(centers, dtype=torch.float32))  # [C, 3]
        self.register_buffer("init_radii", torch.tensor(radii, dtype=torch.float32))  # [C]
        self.register_buffer("init_signs", torch.tensor(signs, dtype=torch.float32))  # [C]

        n_in = n_enc = self.encoding.n_output_dims
        layers: list[nn.Module] = []
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(n_in, config.hidden), nn.Softplus(beta=100.0)]
            n_in = config.hidden
        self.geometry_trunk = nn.Sequential(*layers)
        # The head sees the grid features beside the hidden units (a linear skip): the grid moves the
        # SDF directly even where hidden units saturate, so the fit cannot stall on dead units.
        n_head = n_in + n_enc if config.hidden_layers > 0 else n_in
        self.geometry_head = nn.Linear(n_head, self.num_channels + config.geo_features)
        with torch.no_grad():  # the SDF outputs start at zero: the field is exactly the bias spheres
            self.geometry_head.weight[: self.num_channels].zero_()
            self.geometry_head.bias[: self.num_channels].zero_()

        n_color = (
            config.geo_features + 3 * int(config.color_uses_normals) + 3 * int(config.color_uses_directions)
        )
        self.color_net = nn.Sequential(
            nn.Linear(n_color, config.color_hidden), nn.ReLU(inplace=True), nn.Linear(config.color_hidden, 3)
        )
        if config.density == "volsdf":
            self.beta_param = nn.Parameter(torch.tensor(float(config.beta_init)))
        else:
            self.variance = nn.Parameter(torch.tensor(float(config.variance_init)))
        self.cos_anneal_ratio = cos_anneal_ratio_at(0, config.cos_anneal_steps)

    # ------------------------------------------------------------------ geometry
    @property
    def num_objects(self) -> int:
        """``K`` (0 for a single-surface field)."""
        return self.config.num_objects

    def sdf_bias(self, points: Tensor) -> Tensor:
        """The starting shapes ``sign_c * (|x - c_c| - r_c)`` per channel ``[..., C]``."""
        dist = (points[..., None, :] - self.init_centers).norm(dim=-1)  # [..., C]
        return self.init_signs * (dist - self.init_radii)

    def geometry(
        self, points: Tensor, with_gradient: bool = False, create_graph: bool | None = None
    ) -> SDFGeometry:
        """Channel SDFs, scene SDF and geometric features at world points ``[..., 3]``.

        Args:
            points: World points.
            with_gradient: Also form the spatial gradient of the scene SDF (``config.gradient``).
            create_graph: Keep the gradient differentiable (default: in training mode with gradients
                on). Without it the SDFs stay differentiable (when gradients are on), the gradient not.

        Returns:
            The :class:`SDFGeometry`.
        """
        outer_grad = torch.is_grad_enabled()
        if create_graph is None:
            create_graph = self.training and outer_grad
        if not with_gradient:
            return self._geometry(points)
        if self._analytic_gradient:
            geo = self._geometry_with_gradient(points)
            if not create_graph:
                geo.gradient = geo.gradient.detach()
            return geo
        with torch.enable_grad():
            x = points if points.requires_grad else points.detach().requires_grad_(True)
            geo = self._geometry(x)
            (grad,) = torch.autograd.grad(
                geo.sdf,
                x,
                torch.ones_like(geo.sdf),
                create_graph=create_graph,
                retain_graph=outer_grad or create_graph,
            )
        if not outer_grad:  # e.g. under torch.no_grad(): hand back plain tensors
            geo = SDFGeometry(geo.sdfs.detach(), geo.sdf.detach(), geo.features.detach())
            grad = grad.detach()
        geo.gradient = grad
        return geo

    @property
    def _analytic_gradient(self) -> bool:
        return self.config.gradient == "analytic" and isinstance(self.encoding, MultiResolutionDenseGrid)

    def _split_head(self, out: Tensor, points: Tensor) -> SDFGeometry:
        C = self.num_channels
        sdfs = out[..., :C] + self.sdf_bias(points)  # [..., C]
        sdf = sdfs[..., 0] if C == 1 else sdfs.min(dim=-1).values
        return SDFGeometry(sdfs=sdfs, sdf=sdf, features=out[..., C:])

    def _geometry(self, points: Tensor) -> SDFGeometry:
        f = self.encoding(points)  # [..., F]
        h = torch.cat([self.geometry_trunk(f), f], dim=-1) if len(self.geometry_trunk) else f
        return self._split_head(self.geometry_head(h), points)

    def _geometry_with_gradient(self, points: Tensor) -> SDFGeometry:
        """Values and the scene SDF's gradient in one pass: forward-mode through grid and MLP."""
        lead = points.shape[:-1]
        x = points.reshape(-1, 3)  # [N, 3]
        rows = dense_grid_features_and_jacobian(self.encoding, x)  # [N, 4, F]: value, d/dx, d/dy, d/dz
        value, tangent = rows[:, 0], rows[:, 1:]  # [N, F], [N, 3, F]
        skip_value, skip_tangent = value, tangent
        for layer in self.geometry_trunk:
            if isinstance(layer, nn.Linear):
                value, tangent = layer(value), tangent @ layer.weight.t()
            else:  # Softplus(beta): d softplus(z) = sigmoid(beta z) dz
                value, tangent = layer(value), tangent * torch.sigmoid(layer.beta * value)[:, None]
        if len(self.geometry_trunk):
            value = torch.cat([value, skip_value], dim=-1)
            tangent = torch.cat([tangent, skip_tangent], dim=-1)
        head = self.geometry_head
        C = self.num_channels
        out = head(value)  # [N, C + G]
        geo = self._split_head(out, x)
        jac = tangent @ head.weight[:C].t()  # [N, 3, C]
        offset = x[:, None, :] - self.init_centers  # [N, C, 3]
        bias_grad = self.init_signs[:, None] * offset / offset.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        grads = jac.transpose(1, 2) + bias_grad  # [N, C, 3] per channel
        if C == 1:
            grad = grads[:, 0]
        else:
            arg = geo.sdfs.detach().argmin(dim=-1)  # [N] the channel forming the scene surface
            grad = grads.gather(1, arg[:, None, None].expand(-1, 1, 3))[:, 0]
        return SDFGeometry(
            sdfs=geo.sdfs.reshape(*lead, C),
            sdf=geo.sdf.reshape(lead),
            features=geo.features.reshape(*lead, -1),
            gradient=grad.reshape(*lead, 3),
        )

    def object_sdfs(self, points: Tensor) -> Tensor:
        """Per-channel signed distances ``[..., C]`` (``C = K + 1``, channel 0 the background; or 1)."""
        return self._geometry(points).sdfs

    def sdf(self, points: Tensor, object_index: int | None = None) -> Tensor:
        """The scene SDF ``[...]`` at world points ``[..., 3]``, or one channel's (``object_index``)."""
        geo = self._geometry(points)
        if object_index is None:
            return geo.sdf
        if not 0 <= object_index < self.num_channels:
            raise ValueError(f"object_index must be in [0, {self.num_channels - 1}], got {object_index}")
        return geo.sdfs[..., object_index]

    def gradient(self, points: Tensor, create_graph: bool | None = None) -> Tensor:
        """Spatial gradient ``[..., 3]`` of the scene SDF."""
        return self.geometry(points, with_gradient=True, create_graph=create_graph).gradient

    def normals(self, points: Tensor) -> Tensor:
        """Unit normals ``[..., 3]``: the normalised gradient of the scene SDF."""
        return F.normalize(self.gradient(points), dim=-1)

    def eikonal_loss(self, points: Tensor) -> Tensor:
        """``mean((|grad s| - 1)^2)`` over points ``[..., 3]`` (IGR's eikonal term), differentiable."""
        grad = self.geometry(points, with_gradient=True, create_graph=True).gradient
        return (grad.norm(dim=-1) - 1.0).square().mean()

    # ------------------------------------------------------------------ opacity
    @property
    def beta(self) -> Tensor:
        """VolSDF's Laplace scale ``|beta_param| + beta_min``."""
        return self.beta_param.abs() + self.config.beta_min

    @property
    def inv_s(self) -> Tensor:
        """NeuS's inverse standard deviation ``exp(10 * variance)``, clamped to ``[1e-6, inv_s_max]``."""
        return torch.exp(self.variance * 10.0).clamp(1e-6, self.config.inv_s_max)

    def set_cos_anneal_ratio(self, ratio: float) -> None:
        """Sets NeuS's cosine annealing ratio (0 at the start of training, 1 when annealed)."""
        self.cos_anneal_ratio = float(min(1.0, max(0.0, ratio)))

    def update_step(self, step: int) -> None:
        """Training-step hook: anneals NeuS's cosine ratio over ``config.cos_anneal_steps``."""
        self.cos_anneal_ratio = cos_anneal_ratio_at(step, self.config.cos_anneal_steps)

    def _density_of(self, sdf: Tensor) -> Tensor:
        if self.config.density == "volsdf":
            return laplace_density(sdf, self.beta)
        return logistic_density(sdf, self.inv_s)

    def density(self, points: Tensor) -> Tensor:
        """Volume density ``[...]`` of the scene at world points ``[..., 3]``.

        VolSDF's Laplace density, or for NeuS the S-density :func:`logistic_density` (NeuS itself
        composites :meth:`forward`'s alpha, which needs step sizes).
        """
        return self._density_of(self.sdf(points))

    # ------------------------------------------------------------------ rendering
    def forward(
        self,
        points: Tensor,  # [..., 3]
        directions: Tensor | None = None,  # [..., 3]
        step_sizes: Tensor | None = None,  # [...]
    ) -> FieldSample:
        """SDF, normals, opacity and color at world points.

        Args:
            points: World points.
            directions: Unit view directions (NeuS's cosine; the color head when view dependent).
                NeuS without them takes every ray to meet the surface head on (``cos = -1``).
            step_sizes: Sample interval lengths. NeuS forms ``alpha`` from them; without them it
                returns the S-density instead. VolSDF uses them only for the object opacity ratio
                (without them: the ``step -> 0`` limit ``sigma_k / sigma``).

        Returns:
            ``FieldSample(rgb [..., 3], density [...] (VolSDF) or alpha [...] (NeuS), normals [..., 3],
            sdf [...], extras)``; with objects, ``extras["object_opacity"] [..., K + 1]`` (see the module
            docstring); with ``config.eikonal_extra``, ``extras["eikonal"] [..., 1]``.
        """
        c = self.config
        geo = self.geometry(points, with_gradient=True)
        normals = F.normalize(geo.gradient, dim=-1)  # [..., 3]
        color_in = [geo.features]
        if c.color_uses_normals:
            color_in.append(normals)
        if c.color_uses_directions:
            color_in.append(directions if directions is not None else torch.zeros_like(points))
        rgb = torch.sigmoid(self.color_net(torch.cat(color_in, dim=-1)))  # [..., 3]

        density = alpha = None
        if c.density == "volsdf" or step_sizes is None:
            density = self._density_of(geo.sdf)
        else:
            cos = (directions * normals).sum(-1) if directions is not None else -torch.ones_like(geo.sdf)
            alpha = neus_alpha(geo.sdf, cos, step_sizes, self.inv_s, self.cos_anneal_ratio)

        extras: dict[str, Tensor] = {}
        if c.eikonal_extra:
            extras["eikonal"] = (geo.gradient.norm(dim=-1, keepdim=True) - 1.0).square()
        if c.num_objects > 0:
            extras["object_opacity"] = self._object_opacity_ratio(
                geo, density, alpha, normals, directions, step_sizes
            )
        return FieldSample(rgb=rgb, density=density, alpha=alpha, normals=normals, sdf=geo.sdf, extras=extras)

    def _object_opacity_ratio(
        self,
        geo: SDFGeometry,
        density: Tensor | None,  # [...] scene density (VolSDF, or NeuS without steps)
        alpha: Tensor | None,  # [...] scene alpha (NeuS)
        normals: Tensor,  # [..., 3]
        directions: Tensor | None,
        step_sizes: Tensor | None,
        eps: float = 1e-6,
    ) -> Tensor:  # [..., C]
        """``alpha_k / alpha`` per channel, so that the scene's weights accumulate it to ``O_k``."""
        if alpha is not None:  # NeuS: each channel's alpha with the scene normal's cosine
            cos = (directions * normals).sum(-1) if directions is not None else -torch.ones_like(geo.sdf)
            alpha_k = neus_alpha(
                geo.sdfs, cos[..., None], step_sizes[..., None], self.inv_s, self.cos_anneal_ratio
            )
            return (alpha_k / alpha[..., None].clamp_min(eps)).clamp(0.0, 1.0)
        sigma_k = self._density_of(geo.sdfs)  # [..., C]
        if step_sizes is None:
            return (sigma_k / density[..., None].clamp_min(eps)).clamp(0.0, 1.0)
        alpha_k = -torch.expm1(-sigma_k * step_sizes[..., None])
        alpha_s = -torch.expm1(-density * step_sizes)
        return (alpha_k / alpha_s[..., None].clamp_min(eps)).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ regularisers
    def tv_loss(self) -> Tensor:
        """Total variation of the feature grid (zero for the hash encoding)."""
        return self.encoding.tv_loss()

    # ------------------------------------------------------------------ trainer protocol
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: ``encoding`` (the grid), ``mlp`` (geometry + color) and
        ``density`` (VolSDF's beta or NeuS's variance)."""
        enc = list(self.encoding.parameters())
        dens = [self.beta_param] if self.config.density == "volsdf" else [self.variance]
        ids = {id(p) for p in enc + dens}
        return {"encoding": enc, "mlp": [p for p in self.parameters() if id(p) not in ids], "density": dens}

    def default_learning_rates(self) -> dict[str, float]:
        """Adam learning rates per group of :meth:`parameter_groups` (grid high, MLP and density low)."""
        return {"encoding": 6e-2 if self.config.encoding == "dense" else 1e-2, "mlp": 3e-3, "density": 1e-2}

    def checkpoint_state(self) -> dict[str, Any]:
        """``{"config": plain dict, "state_dict": ...}``, for :meth:`from_checkpoint_state`."""
        return {"config": plain_config(self.config), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint_state(cls, state: dict[str, Any]) -> SDFField:
        """Rebuilds a field saved by :meth:`checkpoint_state` (on the device of its tensors)."""
        config = dict(state["config"])
        config["grid_resolutions"] = tuple(config["grid_resolutions"])
        config["sphere_center"] = tuple(config["sphere_center"])
        config["object_centers"] = tuple(tuple(c) for c in config["object_centers"])
        field = cls(SDFFieldConfig(**config))
        field.load_state_dict(state["state_dict"])
        return field.to(state["state_dict"]["aabb"].device)


def dense_grid_features_and_jacobian(
    encoding: DenseGridEncoding | MultiResolutionDenseGrid, points: Tensor
) -> Tensor:
    """Trilinear features of a :class:`DenseGridEncoding` and their spatial derivatives, in one gather.

    Matches ``encoding(points)`` (``grid_sample``, ``align_corners=True``, border padding: the
    derivative is zero outside the box) and its autograd Jacobian, with a first-order graph only.

    Args:
        encoding: The grid.
        points: World points ``[N, 3]``.

    Returns:
        ``[N, 4, F]``: row 0 the features, rows 1-3 their derivatives along world x, y, z (levels
        of a :class:`MultiResolutionDenseGrid` concatenated along ``F``, as its ``forward``).
    """
    if isinstance(encoding, MultiResolutionDenseGrid):
        return torch.cat(
            [dense_grid_features_and_jacobian(level, points) for level in encoding.levels], dim=-1
        )
    grid = encoding.grid[0]  # [F, Rz, Ry, Rx]
    n_feat, R = grid.shape[0], grid.shape[-1]
    lo, hi = encoding.aabb[:3], encoding.aabb[3:]
    scale = (R - 1) / (hi - lo)  # [3] voxels per world unit
    u = (points - lo) * scale  # [N, 3] voxel coordinates (x, y, z)
    inside = ((u >= 0) & (u <= R - 1)).to(points.dtype)  # border padding: flat outside
    u = u.clamp(0, R - 1)
    i0 = u.detach().floor().clamp(max=R - 2)
    t = u - i0  # [N, 3] in [0, 1]
    i0 = i0.long()
    table = grid.reshape(n_feat, -1).t().contiguous()  # [R^3, F], row (k * R + j) * R + i
    base = (i0[:, 2] * R + i0[:, 1]) * R + i0[:, 0]  # [N]
    offs = torch.tensor(
        [dz * R * R + dy * R + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)], device=points.device
    )
    corners = F.embedding(base[:, None] + offs, table)  # [N, 8, F], corner order (z, y, x) bits
    tx, ty, tz = t.unbind(-1)
    wx, wy, wz = (torch.stack([1 - a, a], dim=-1) for a in (tx, ty, tz))  # [N, 2]
    dw = torch.tensor([-1.0, 1.0], device=points.device, dtype=points.dtype).expand_as(wx)

    def outer(az: Tensor, ay: Tensor, ax: Tensor) -> Tensor:  # [N, 8]
        return (az[:, :, None, None] * ay[:, None, :, None] * ax[:, None, None, :]).reshape(-1, 8)

    weights = torch.stack(
        [
            outer(wz, wy, wx),
            outer(wz, wy, dw) * (scale[0] * inside[:, 0:1]),
            outer(wz, dw, wx) * (scale[1] * inside[:, 1:2]),
            outer(dw, wy, wx) * (scale[2] * inside[:, 2:3]),
        ],
        dim=1,
    )  # [N, 4, 8]
    return torch.bmm(weights, corners)  # [N, 4, F]


# ---------------------------------------------------------------------- losses for pipelines
def object_mask_loss(
    object_opacity: Tensor,  # [R, C] accumulated per-channel opacity (C = K + 1)
    labels: Tensor,  # [R] int: 0 background, k in 1..K object k
    include_background: bool = False,
    kind: Literal["bce", "l1"] = "bce",
) -> Tensor:
    """Object opacity against instance masks, as ObjectSDF++ / DP-Recon (BCE against the one-hot label).

    Args:
        object_opacity: Rendered object opacities ``O_k`` per ray.
        labels: Instance label per ray.
        include_background: Also supervise channel 0 with "label == 0" (DP-Recon, whose background
            is a room). Off for object-centric scenes whose background is empty space.
        kind: ``"bce"`` or ``"l1"``.

    Returns:
        The mean loss (a scalar).
    """
    C = object_opacity.shape[-1]
    target = F.one_hot(labels.long(), C).to(object_opacity.dtype)  # [R, C]
    if not include_background:
        object_opacity, target = object_opacity[..., 1:], target[..., 1:]
    if kind == "bce":
        return F.binary_cross_entropy(object_opacity.clamp(1e-4, 1.0 - 1e-4), target)
    if kind == "l1":
        return (object_opacity - target).abs().mean()
    raise ValueError(f"kind must be 'bce' or 'l1', got {kind!r}")


def collision_loss(sdfs: Tensor, include_background: bool = False) -> Tensor:
    """Penalty on channels overlapping: DP-Recon's violation term.

    At a point inside the nearest channel ``k*`` at depth ``-s_min``, every other channel ``k`` with
    ``s_k < -s_min`` (inside, or closer to the point than the depth) pays ``relu(-s_k - s_min)``.
    Zero where no channel is inside another.

    Args:
        sdfs: Channel SDFs ``[..., C]`` (e.g. :meth:`SDFField.object_sdfs` at random points).
        include_background: Let channel 0 take part (off: objects against objects only).

    Returns:
        Mean over points of the summed penalty (a scalar).
    """
    if not include_background:
        sdfs = sdfs[..., 1:]
    s_min, arg = sdfs.min(dim=-1, keepdim=True)  # [..., 1]
    pen = F.relu(-sdfs - s_min)  # [..., C]
    pen = pen.scatter(-1, arg, torch.zeros_like(s_min))  # not the channel itself
    return pen.sum(-1).mean()


def object_centers_from_masks(
    origins: Tensor,  # [C, H, W, 3]
    directions: Tensor,  # [C, H, W, 3]
    labels: Tensor,  # [C, H, W] int: 0 background, k in 1..K object k
    num_objects: int,
) -> Tensor:  # [K, 3]
    """Rough object centres from instance masks: the point nearest (least squares) to the rays
    through each view's mask centroid, a starting point for :attr:`SDFFieldConfig.object_centers`.

    Args:
        origins: Per-pixel ray origins (e.g. :func:`recon.data.procedural.camera_rays`).
        directions: Per-pixel unit ray directions.
        labels: Instance label per pixel.
        num_objects: ``K``.

    Returns:
        ``[K, 3]`` centres (an object seen in fewer than two views gets the origin).
    """
    centers = []
    eye = torch.eye(3, dtype=origins.dtype, device=origins.device)
    for k in range(1, num_objects + 1):
        a = torch.zeros(3, 3, dtype=origins.dtype, device=origins.device)
        b = torch.zeros(3, dtype=origins.dtype, device=origins.device)
        views = 0
        for c in range(labels.shape[0]):
            m = labels[c] == k  # [H, W]
            if int(m.sum()) == 0:
                continue
            d = F.normalize(directions[c][m].mean(0), dim=0)  # the centroid ray
            proj = eye - d[:, None] * d[None, :]
            a, b = a + proj, b + proj @ origins[c][m][0]
            views += 1
        centers.append(torch.linalg.solve(a, b) if views >= 2 else torch.zeros_like(b))
    return torch.stack(centers)


def object_centers_from_depth(
    cameras: Any,
    depths: Tensor,  # [C, H, W] z-depth in the cameras' units, 0 unknown
    labels: Tensor,  # [C, H, W] int
    num_objects: int,
    tolerance: float = 0.05,
) -> tuple[Tensor, Tensor, float]:  # [K, 3], [K], agreement
    """Object centres from depth maps: each object's visible surface points (its pixels lifted by their
    depth) give its centre and size, when the depth is metric. Whether it is is measured, not assumed
    (monocular depth is only known up to scale and shift): ``agreement`` is the share of the objects'
    surface points from one view that, projected into another view where that pixel shows the same
    object, land within ``max(tolerance, 2 px at their depth)`` of that view's depth. The DP-Recon bench's
    rooms (10 views on a 66° arc, 160 px): 0.96 with their metric depth, 0.41-0.80 with it scaled by 0.7
    or 1.5 or shifted by -0.2 or 0.3 of the room's half-size.

    The centre is the median surface point pushed back along the mean viewing ray by a third of the
    points' narrower lateral spread (the surface seen is the object's front; a sphere's visible points
    lie on average 2/3 of its radius in front of its centre); the size is the wider spread.

    Args:
        cameras: :class:`recon.cameras.Cameras`, ``C`` views.
        depths: Z-depth per pixel, scaled as the cameras.
        labels: Instance label per pixel.
        num_objects: ``K``.
        tolerance: Smallest depth agreement tolerance (the cameras' units).

    Returns:
        ``(centers [K, 3], sizes [K], agreement)``; an object with no pixel of known depth gets the
        origin and size 0 (agreement is 0 when no object shows in two views).
    """
    from recon.data.procedural import camera_rays

    o, d, z_per_t = camera_rays(cameras)
    known = depths > 0
    pts = o + (depths / z_per_t)[..., None] * d  # [C, H, W, 3]
    C, H, W = labels.shape
    viewmats, Ks = cameras.viewmats().float(), cameras.Ks().float()  # OpenCV: z forward, y down
    centers, sizes = [], []
    hits = total = 0
    for k in range(1, num_objects + 1):
        mine = (labels == k) & known
        if not bool(mine.any()):
            centers.append(torch.zeros(3))
            sizes.append(torch.tensor(0.0))
            continue
        p = pts[mine]  # [M, 3]
        view = F.normalize(d[mine].mean(0), dim=0)
        if len(p) > MAX_LIFTED_POINTS:  # torch.quantile takes at most 2^24 values; the stats need far fewer
            p = p[torch.randperm(len(p), generator=torch.Generator().manual_seed(k))[:MAX_LIFTED_POINTS]]
        lateral = p - (p @ view)[:, None] * view  # the points projected on the plane across the view
        basis = torch.linalg.svd(lateral - lateral.mean(0), full_matrices=False).Vh[:2]  # [2, 3]
        across = lateral @ basis.T  # [M, 2]
        spread = torch.quantile(across, 0.95, dim=0) - torch.quantile(across, 0.05, dim=0)
        centers.append(p.median(0).values + float(spread.min()) / 3 * view)
        sizes.append(spread.max())
        views = mine.flatten(1).any(1).nonzero().flatten().tolist()
        for i in views:
            q = pts[i][mine[i]]
            q = q[torch.randperm(len(q), generator=torch.Generator().manual_seed(i))[:500]]
            for j in views:
                if j == i:
                    continue
                uv, z, ok = project_points(q, viewmats[j], Ks[j], W, H)
                z, ui, vi = z[ok], uv[ok, 0].long(), uv[ok, 1].long()
                same = mine[j][vi, ui]
                focal = float(min(Ks[j, 0, 0], Ks[j, 1, 1]))
                tol = (2 * z / focal).clamp(min=tolerance)  # two pixels' footprint at that depth
                hits += int(((z - depths[j][vi, ui]).abs() < tol)[same].sum())
                total += int(same.sum())
    return torch.stack(centers), torch.stack(sizes), hits / max(total, 1)


MAX_LIFTED_POINTS = 200_000
"""Surface points per object :func:`object_centers_from_depth` keeps (a random subset beyond)."""
METRIC_DEPTH_AGREEMENT = 0.9
"""Depth maps whose objects' surfaces agree across views at least this much are metric
(:func:`object_centers_from_depth`: 0.96 for the DP-Recon bench rooms' depth, at most 0.80 for it
rescaled or shifted)."""


def object_centers_from_views(
    cameras: Any, labels: Tensor, num_objects: int, depths: Tensor | None = None
) -> tuple[Tensor, list[str]]:
    """Starting centres for the objects of a multi-object field, from instance masks and (metric) depth.

    Each object starts at the crossing of its mask-centroid rays (:func:`object_centers_from_masks`),
    which is accurate for an object seen whole (0.01-0.10 off in the DP-Recon bench's rooms) but not for
    a partly hidden one whose visible part changes from view to view: a dumbbell behind a table came out
    0.50 (half the room) behind and under its true centre, and the reconstruction stayed there, under the
    floor. With depth maps that agree across views (metric: :data:`METRIC_DEPTH_AGREEMENT`), an object
    whose ray crossing lies farther from its lifted depth centre than its own size starts at the lifted
    centre instead (the dumbbell: 0.11 off).

    Args:
        cameras: :class:`recon.cameras.Cameras` of the views.
        labels: ``[C, H, W]`` instance label per pixel.
        num_objects: ``K``.
        depths: ``[C, H, W]`` z-depth scaled as the cameras (0 unknown), or None.

    Returns:
        ``(centers [K, 3], sources)``: per object ``"rays"`` or ``"depth"``.
    """
    from recon.data.procedural import camera_rays

    o, d, _ = camera_rays(cameras)
    centers = object_centers_from_masks(o, d, labels, num_objects)
    sources = ["rays"] * num_objects
    if depths is None:
        return centers, sources
    lifted, sizes, agreement = object_centers_from_depth(cameras, depths, labels, num_objects)
    if agreement < METRIC_DEPTH_AGREEMENT:
        return centers, sources
    for k in range(num_objects):
        if sizes[k] > 0 and float((centers[k] - lifted[k]).norm()) > float(sizes[k]):
            centers[k], sources[k] = lifted[k], "depth"
    return centers, sources


def uniform_box_points(aabb: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` uniform points ``[n, 3]`` in the box ``aabb [6]`` (eikonal samples)."""
    u = torch.rand(n, 3, generator=generator).to(aabb)
    return aabb[:3] + u * (aabb[3:] - aabb[:3])


@torch.no_grad()
def update_sdf_occupancy(
    occupancy: Any, field: SDFField, band: float | None = None, chunk: int = 1 << 17
) -> float:
    """Marks the cells of an occupancy grid that the surface band ``|s| < band`` may cross.

    The renderer then evaluates only samples near the surface, which is where an SDF field's
    compositing weights are; deep-inside samples count as empty (behind an opaque front shell they
    carry no weight). A cell is kept when ``|s(centre)| < band + half its diagonal`` (exact for a
    true distance field; the eikonal term keeps the field close to one).

    Args:
        occupancy: A :class:`recon.render.volume.OccupancyGrid` over ``field.aabb``.
        field: The field.
        band: Half width of the band; default ``6 * beta + 2 * step`` (VolSDF: the Laplace density is
            under 0.2% of its peak beyond ``6 beta``) or ``6 / inv_s + 2 * step`` (NeuS) with ``step``
            the grid's default sample spacing.
        chunk: Cells per SDF call.

    Returns:
        The occupied fraction.
    """
    R = occupancy.resolution
    lo, hi = occupancy.aabb[:3], occupancy.aabb[3:]
    cell = (hi - lo) / R
    if band is None:
        scale = field.beta if field.config.density == "volsdf" else 1.0 / field.inv_s
        band = 6.0 * float(scale) + 2.0 * occupancy.default_step_size()
    idx = torch.arange(R, device=lo.device, dtype=lo.dtype) + 0.5
    ijk = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), dim=-1).reshape(-1, 3)  # x-major
    centers = lo + ijk * cell
    sdf = torch.cat([field.sdf(centers[s : s + chunk]) for s in range(0, len(centers), chunk)])
    keep = sdf.abs() < band + 0.5 * float(cell.norm())
    occupancy.binary.copy_(keep.view_as(occupancy.binary))
    return float(keep.float().mean())


# ---------------------------------------------------------------------- meshes
def sdf_density_fn(
    field: SDFField, object_index: int | None = None, offset: float = 1.0
) -> Callable[[Tensor], Tensor]:
    """``points [M, 3] -> offset - sdf [M]`` without gradients, for ``extract_density_mesh``.

    Extract at ``level = offset``: the zero level set. The offset keeps the extractor's zero padding
    outside the surface (padding at ``-sdf`` with level 0 would sit exactly on the level).

    Args:
        field: The field.
        object_index: One channel's SDF (0 background, ``k`` object ``k``); None for the scene.
        offset: Shift (> 0).
    """

    @torch.no_grad()
    def fn(points: Tensor) -> Tensor:
        return offset - field.sdf(points.to(field.aabb.device), object_index).float()

    return fn


def extract_sdf_mesh(
    field: SDFField,
    resolution: int = 128,
    object_index: int | None = None,
    bounds: tuple[Sequence[float], Sequence[float]] | None = None,
    chunk_size: int = 65536,
    level: float = 0.0,
):
    """Marching cubes on the zero level set of the scene SDF, or of one object's channel.

    Args:
        field: The field.
        resolution: Samples per axis.
        object_index: Channel to extract (``k`` for object ``k``, 0 the background); None for the scene.
        bounds: ``(lo, hi)`` corners of the sampled box (default: the field's box).
        chunk_size: Points per SDF call.
        level: The SDF value of the extracted surface (0: the zero level set; < 0 a thinner surface).

    Returns:
        A ``trimesh.Trimesh`` with outward normals; it goes on through
        :func:`recon.mesh.cleanup.clean_mesh` and :func:`recon.mesh.uv.unwrap_uv` like any extracted mesh.

    Raises:
        UserError: if the SDF has no zero crossing in the box.
    """
    from recon.mesh.extract import extract_density_mesh

    if bounds is None:
        aabb = field.aabb.detach().cpu()
        bounds = (aabb[:3].tolist(), aabb[3:].tolist())
    was_training = field.training
    field.eval()
    try:
        offset = 1.0
        fn = sdf_density_fn(field, object_index, offset)
        return extract_density_mesh(fn, bounds[0], bounds[1], resolution, offset - level, chunk_size)
    finally:
        field.train(was_training)


__all__ = [
    "MultiResolutionDenseGrid",
    "SDFField",
    "SDFFieldConfig",
    "SDFGeometry",
    "collision_loss",
    "dense_grid_features_and_jacobian",
    "cos_anneal_ratio_at",
    "extract_sdf_mesh",
    "laplace_density",
    "logistic_density",
    "neus_alpha",
    "object_centers_from_depth",
    "object_centers_from_masks",
    "object_centers_from_views",
    "object_mask_loss",
    "sdf_density_fn",
    "uniform_box_points",
    "update_sdf_occupancy",
]
