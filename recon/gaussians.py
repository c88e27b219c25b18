"""The 3D Gaussian Splatting parameter set, its initialisers, densification and file I/O.

Parameters live in a ``torch.nn.ParameterDict`` with gsplat's key names, so gsplat's strategies
(densify / prune / reset-opacity) work on it directly:

* ``means``     ``[N, 3]``  centers
* ``scales``    ``[N, 3]``  log standard deviations
* ``quats``     ``[N, 4]``  rotations (w, x, y, z), unnormalized
* ``opacities`` ``[N]``     logit opacities
* ``sh0``       ``[N, 1, 3]`` degree-0 SH coefficient (DC)
* ``shN``       ``[N, K-1, 3]`` higher SH coefficients, ``K = (sh_degree + 1)²``

Files: the standard 3DGS PLY layout (``x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2
rot_0..3``, raw logit/log/wxyz values, ``f_rest`` channel-major as in the reference code and
gsplat's exporter) and the ``.splat`` format of antimatter15's web viewer (32 bytes a splat).

Densification: gsplat's ``DefaultStrategy`` (clone / split / prune / opacity reset) runs on CPU and
is used as is. gsplat's ``MCMCStrategy`` needs CUDA kernels (relocation, sampling); on CPU
:func:`make_strategy` refuses it with a clear error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from recon.atomic import atomic_write_bytes
from recon.errors import FRACTION, UserError, checked

SH_C0 = 0.28209479177387814


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Colors in [0, 1] -> DC SH coefficients (so that ``SH(d) + 0.5`` gives the color back)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    return sh * SH_C0 + 0.5


class GaussianModel(torch.nn.Module):
    """3D Gaussians with SH colors; ``splats`` is the ``ParameterDict`` optimizers and strategies see."""

    def __init__(self, splats: dict[str, Tensor], sh_degree: int) -> None:
        super().__init__()
        k = (sh_degree + 1) ** 2
        n = splats["means"].shape[0]
        expected = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3)}
        for key, shape in expected.items():
            if tuple(splats[key].shape) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {tuple(splats[key].shape)}")
        if "shN" not in splats:
            splats = dict(splats, shN=torch.zeros(n, k - 1, 3))
        if tuple(splats["shN"].shape) != (n, k - 1, 3):
            raise ValueError(f"shN must be [N, {k - 1}, 3] for sh_degree {sh_degree}")
        self.sh_degree = sh_degree
        self.splats = torch.nn.ParameterDict(
            {key: torch.nn.Parameter(v.float()) for key, v in splats.items()}
        )

    def __len__(self) -> int:
        return self.splats["means"].shape[0]

    @property
    def means(self) -> Tensor:
        return self.splats["means"]

    @property
    def scales(self) -> Tensor:  # [N, 3] activated
        return torch.exp(self.splats["scales"])

    @property
    def quats(self) -> Tensor:  # [N, 4] unit
        return torch.nn.functional.normalize(self.splats["quats"], dim=-1)

    @property
    def opacities(self) -> Tensor:  # [N] activated
        return torch.sigmoid(self.splats["opacities"])

    @property
    def sh_coeffs(self) -> Tensor:  # [N, K, 3]
        return torch.cat([self.splats["sh0"], self.splats["shN"]], dim=1)

    @property
    def base_colors(self) -> Tensor:  # [N, 3] view-independent color
        return sh_to_rgb(self.splats["sh0"][:, 0]).clamp(0, 1)

    # ---------------------------------------------------------------- initialisers
    @classmethod
    def from_points(
        cls,
        points: Tensor,  # [N, 3]
        colors: Tensor | None = None,  # [N, 3] in [0, 1]
        sh_degree: int = 0,
        init_scale: float | None = None,
        init_opacity: float = 0.1,
    ) -> GaussianModel:
        """Isotropic Gaussians at ``points``; scale = mean distance to the 3 nearest neighbours."""
        n = points.shape[0]
        if n == 0:
            raise UserError("cannot initialise Gaussians from an empty point cloud")
        if colors is None:
            colors = torch.full((n, 3), 0.5)
        if init_scale is None:
            dist = _knn_mean_distance(points.float(), k=3).clamp_min(1e-7)
            log_scales = torch.log(dist)[:, None].repeat(1, 3)
        else:
            log_scales = torch.full((n, 3), math.log(init_scale))
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        return cls(
            {
                "means": points.float().clone(),
                "scales": log_scales,
                "quats": quats,
                "opacities": torch.logit(torch.full((n,), init_opacity)),
                "sh0": rgb_to_sh(colors.float())[:, None, :],
            },
            sh_degree,
        )

    @classmethod
    def random_in_sphere(
        cls,
        n: int,
        radius: float = 1.0,
        sh_degree: int = 0,
        init_scale: float | None = None,
        init_opacity: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> GaussianModel:
        """``n`` Gaussians uniform in a ball, random colors (DreamGaussian / threestudio style)."""
        direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
        r = radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
        colors = torch.rand(n, 3, generator=generator)
        return cls.from_points(direction * r, colors, sh_degree, init_scale, init_opacity)

    @classmethod
    def random_in_box(
        cls,
        n: int,
        half_extent: float = 1.0,
        sh_degree: int = 0,
        init_scale: float | None = None,
        init_opacity: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> GaussianModel:
        """``n`` Gaussians uniform in the cube ``[-half_extent, half_extent]³``."""
        points = (torch.rand(n, 3, generator=generator) * 2 - 1) * half_extent
        colors = torch.rand(n, 3, generator=generator)
        return cls.from_points(points, colors, sh_degree, init_scale, init_opacity)

    # ---------------------------------------------------------------- the training loop's protocol
    def parameter_groups(self) -> dict[str, list[Tensor]]:
        """One group per splat tensor (gsplat's strategies expect one optimizer per tensor)."""
        return {name: [p] for name, p in self.splats.items()}

    @staticmethod
    def default_learning_rates(scene_scale: float = 1.0) -> dict[str, tuple[float, float | None]]:
        """The 3DGS paper's learning rates (Kerbl et al. 2023) as ``(initial, final)``; means decay."""
        return {
            "means": (1.6e-4 * scene_scale, 1.6e-6 * scene_scale),
            "scales": (5e-3, None),
            "quats": (1e-3, None),
            "opacities": (5e-2, None),
            "sh0": (2.5e-3, None),
            "shN": (2.5e-3 / 20, None),
        }

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "splats": {k: v.detach().clone() for k, v in self.splats.items()},
            "sh_degree": self.sh_degree,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Replaces the Gaussians in place (their number may differ from the current one)."""
        restored = GaussianModel(state["splats"], state["sh_degree"])
        self.sh_degree = restored.sh_degree
        self.splats = restored.splats

    @classmethod
    def from_checkpoint_state(cls, state: dict[str, Any]) -> GaussianModel:
        return cls(state["splats"], state["sh_degree"])

    # ---------------------------------------------------------------- I/O
    def save_ply(self, path: str | os.PathLike, layout_degree: int | None = None) -> None:
        """Writes the standard 3DGS PLY (atomically).

        Args:
            path: Where to write.
            layout_degree: Write the ``f_rest_*`` fields of this SH degree, zeros above the model's
                (3: the layout the reference 3DGS loader and SIBR require); ``None``: the model's degree.
        """
        atomic_write_bytes(path, ply_bytes(self.splats, layout_degree))

    @classmethod
    def load_ply(cls, path: str | os.PathLike) -> GaussianModel:
        splats, degree = read_ply(path)
        return cls(splats, degree)

    def save_splat(self, path: str | os.PathLike) -> None:
        """Writes the ``.splat`` format (lossy: uint8 colors and rotations, no higher SH)."""
        atomic_write_bytes(path, splat_bytes(self.splats))


# -------------------------------------------------------------------- PLY / .splat
def _ply_properties(n_rest: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def ply_bytes(splats: dict[str, Tensor], layout_degree: int | None = None) -> bytes:
    """Binary little-endian PLY in the 3DGS layout.

    ``layout_degree`` pads the SH bands with zeros to that degree's ``f_rest_*`` count (the reference
    3DGS loader and SIBR read degree 3 only). The model's own degree is written as a header comment
    (``comment sh_degree D``, after the properties, where SIBR's header scan skips it), so that
    :func:`read_ply` gives back the original degree.
    """
    means = splats["means"].detach().float().cpu()
    n = means.shape[0]
    shn = splats["shN"].detach().float().cpu()  # [N, K-1, 3]
    degree = int(round(math.sqrt(shn.shape[1] + 1))) - 1
    if layout_degree is not None:
        if layout_degree < degree:
            raise ValueError(f"layout_degree {layout_degree} is below the model's SH degree {degree}")
        pad = (layout_degree + 1) ** 2 - 1 - shn.shape[1]
        shn = torch.cat([shn, torch.zeros(n, pad, 3)], dim=1)
    rest = shn.permute(0, 2, 1).reshape(n, -1)  # channel-major
    data = torch.cat(
        [
            means,
            torch.zeros(n, 3),
            splats["sh0"].detach().float().cpu().reshape(n, 3),
            rest,
            splats["opacities"].detach().float().cpu().reshape(n, 1),
            splats["scales"].detach().float().cpu(),
            splats["quats"].detach().float().cpu(),
        ],
        dim=1,
    )
    props = _ply_properties(rest.shape[1])
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {p}" for p in props] + [f"comment sh_degree {degree}", "end_header"]
    return ("\n".join(header) + "\n").encode() + data.numpy().astype("<f4").tobytes()


PLY_FIX = "re-export it (sds3d export RUN --format ply) or pass another 3DGS PLY"
_PLY_SIZES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
              "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8,
              "float64": 8}  # fmt: skip


def _check_ply_header(path: str | os.PathLike) -> None:
    """Refuses a binary PLY whose header promises more bytes than the file holds (before plyfile reads
    it: a damaged vertex count would make it allocate that much), or a header that isn't one.

    Raises:
        UserError: naming the file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise UserError(
            f"cannot read Gaussian PLY {path}: not a PLY file (no ply ... end_header header); {PLY_FIX}"
        )
    try:
        lines = head[:end].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise UserError(
            f"cannot read Gaussian PLY {path}: the header is damaged (not ASCII); {PLY_FIX}"
        ) from None
    body = size - (end + len(b"end_header") + 1)
    binary = False
    elements: list[list[int]] = []  # [count, bytes per row, -1 when a row has a list property]
    for line in lines:
        words = line.split()
        if words[:1] == ["format"]:
            binary = len(words) > 1 and words[1].startswith("binary")
        elif words[:1] == ["element"]:
            if len(words) != 3 or not words[2].isdigit():
                raise UserError(f"cannot read Gaussian PLY {path}: bad element line {line!r}; {PLY_FIX}")
            elements.append([int(words[2]), 0])
        elif words[:1] == ["property"]:
            if not elements:
                raise UserError(f"cannot read Gaussian PLY {path}: a property before any element; {PLY_FIX}")
            if len(words) >= 2 and words[1] == "list":
                elements[-1][1] = -1
            elif len(words) == 3 and words[1] in _PLY_SIZES:
                if elements[-1][1] >= 0:
                    elements[-1][1] += _PLY_SIZES[words[1]]
            else:
                raise UserError(f"cannot read Gaussian PLY {path}: bad property line {line!r}; {PLY_FIX}")
    needed = sum(count * row for count, row in elements if row > 0)
    if binary and needed > body:
        raise UserError(
            f"cannot read Gaussian PLY {path}: truncated or damaged, its header promises {needed} bytes of "
            f"data, the file holds {body}; {PLY_FIX}"
        )


def read_ply(path: str | os.PathLike) -> tuple[dict[str, Tensor], int]:
    """Reads a 3DGS PLY (ours, the reference implementation's, or gsplat's export).

    Raises:
        UserError: a missing, damaged or truncated file, or a PLY without the 3DGS properties.
    """
    from plyfile import PlyData, PlyListProperty, PlyParseError

    if not os.path.isfile(path):
        raise UserError(f"Gaussian PLY {path} does not exist; pass a 3DGS PLY file")
    _check_ply_header(path)
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except (OSError, ValueError, KeyError, IndexError, TypeError, MemoryError, PlyParseError) as err:
        raise UserError(f"cannot read Gaussian PLY {path}: {str(err)[:200]}; {PLY_FIX}") from err
    names = vertex.data.dtype.names or ()
    if any(isinstance(prop, PlyListProperty) for prop in vertex.properties):
        raise UserError(f"{path} is not a 3DGS PLY: its vertices have list properties; {PLY_FIX}")

    def col(name: str) -> np.ndarray:
        if name not in names:
            raise UserError(f"{path} is not a 3DGS PLY: property {name!r} is missing")
        try:
            return np.array(vertex[name], dtype=np.float32)  # a copy: packed records have odd strides
        except (ValueError, TypeError) as err:
            raise UserError(
                f"{path}: property {name!r} is not a number per vertex ({err}); {PLY_FIX}"
            ) from None

    def cols(prefix: str, count: int) -> Tensor:
        return torch.from_numpy(np.stack([col(f"{prefix}_{i}") for i in range(count)], axis=1))

    n = len(vertex.data)
    n_rest = sum(1 for name in names if name.startswith("f_rest_"))
    k = n_rest // 3 + 1
    degree = int(round(math.sqrt(k))) - 1
    if (degree + 1) ** 2 != k or n_rest % 3:
        raise UserError(f"{path}: {n_rest} f_rest properties do not match any SH degree")
    rest = cols("f_rest", n_rest) if n_rest else torch.zeros(n, 0)
    stored = _commented_degree(vertex.comments)
    if stored is not None and stored < degree:  # padded on write (the reference layout): drop the zeros
        kept = (stored + 1) ** 2 - 1
        per_channel = rest.reshape(n, 3, k - 1)
        if not per_channel[:, :, kept:].any():
            rest, k, degree = per_channel[:, :, :kept].reshape(n, 3 * kept), kept + 1, stored
    splats = {
        "means": torch.from_numpy(np.stack([col("x"), col("y"), col("z")], axis=1)),
        "sh0": cols("f_dc", 3)[:, None, :],
        "shN": rest.reshape(n, 3, k - 1).permute(0, 2, 1).contiguous(),
        "opacities": torch.from_numpy(col("opacity")),
        "scales": cols("scale", 3),
        "quats": cols("rot", 4),
    }
    return splats, degree


def _commented_degree(comments: list[str]) -> int | None:
    """The ``sh_degree D`` header comment :func:`ply_bytes` writes, if present and well-formed."""
    for comment in comments:
        parts = comment.split()
        if len(parts) == 2 and parts[0] == "sh_degree" and parts[1].isdigit():
            return int(parts[1])
    return None


SPLAT_DTYPE = np.dtype(
    [("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)]
)


def splat_bytes(splats: dict[str, Tensor]) -> bytes:
    """antimatter15 ``.splat``: float32 position and (linear) scale, uint8 RGBA and wxyz rotation,
    sorted by ``volume × opacity`` descending as that viewer expects."""
    means = splats["means"].detach().float().cpu()
    scales = torch.exp(splats["scales"].detach().float().cpu())
    opacity = torch.sigmoid(splats["opacities"].detach().float().cpu())
    rgb = sh_to_rgb(splats["sh0"].detach().float().cpu().reshape(-1, 3))
    quats = torch.nn.functional.normalize(splats["quats"].detach().float().cpu(), dim=-1)
    order = torch.argsort(-(scales.prod(dim=1) * opacity), stable=True)
    out = np.zeros(len(means), dtype=SPLAT_DTYPE)
    out["position"] = means[order].numpy()
    out["scale"] = scales[order].numpy()
    rgba = torch.cat([rgb, opacity[:, None]], dim=1)[order]
    out["rgba"] = (rgba * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    out["rotation"] = (quats[order] * 128 + 128).round().clamp(0, 255).to(torch.uint8).numpy()
    return out.tobytes()


def read_splat(path: str | os.PathLike) -> dict[str, Tensor]:
    """Reads a ``.splat`` file into activated values: means, scales, rgb, opacities, quats.

    Raises:
        UserError: a missing file or one whose size is not a whole number of 32-byte splats.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"cannot read .splat file {path} ({err}); pass a .splat file") from None
    if len(raw) % SPLAT_DTYPE.itemsize:
        raise UserError(f"{path} is not a .splat file (size {len(raw)} is not a multiple of 32 bytes)")
    data = np.frombuffer(raw, dtype=SPLAT_DTYPE)
    rgba = torch.from_numpy(data["rgba"].astype(np.float32) / 255.0)
    return {
        "means": torch.from_numpy(data["position"].copy()),
        "scales": torch.from_numpy(data["scale"].copy()),
        "rgb": rgba[:, :3],
        "opacities": rgba[:, 3],
        "quats": torch.nn.functional.normalize(
            torch.from_numpy((data["rotation"].astype(np.float32) - 128) / 128), dim=-1
        ),
    }


def _knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 4096) -> Tensor:
    """Mean distance of each point to its ``k`` nearest neighbours (chunked, O(N²) compute)."""
    n = points.shape[0]
    if n <= 1:
        return torch.full((n,), 0.01)
    k = min(k, n - 1)
    out = torch.empty(n)
    for start in range(0, n, chunk):
        d = torch.cdist(points[start : start + chunk], points)
        out[start : start + chunk] = d.topk(k + 1, largest=False).values[:, 1:].mean(dim=1)
    return out


# -------------------------------------------------------------------- densification
@dataclass
class DensifyConfig:
    """Densification / pruning (gsplat's DefaultStrategy, the 3DGS paper's schedule)."""

    kind: Literal["default", "mcmc", "none"] = "default"
    """``default``: clone/split/prune/reset (CPU and CUDA); ``mcmc`` needs CUDA; ``none`` disables."""
    grow_grad2d: float = checked(0.0002, low=0, high=1000)
    """Screen-space gradient threshold above which a Gaussian is cloned or split."""
    grow_scale3d: float = checked(0.01, low=0, high=1000)
    """Gaussians smaller than this (× scene scale) are cloned, larger ones split."""
    prune_opa: float = checked(0.005, FRACTION)
    """Gaussians below this opacity are pruned."""
    prune_scale3d: float = checked(0.1, low=0, high=1000)
    """Gaussians larger than this (× scene scale) are pruned after the first opacity reset."""
    refine_start_iter: int = checked(500, low=0, high=1_000_000_000)
    refine_stop_iter: int = checked(15_000, low=0, high=1_000_000_000)
    refine_every: int = checked(100, low=1, high=1_000_000_000)
    reset_every: int = checked(3000, low=1, high=1_000_000_000)
    max_gaussians: int = checked(0, low=0, high=1_000_000_000)
    """Most Gaussians growth may reach (0: no limit). At the limit a round of growth keeps the Gaussians
    with the largest screen-space gradients (gsplat's MCMC strategy has the same ``cap_max``)."""
    verbose: bool = False


def make_strategy(config: DensifyConfig, device: torch.device | str = "cpu"):
    """A gsplat strategy object for ``config``, or ``None`` when densification is off."""
    if config.kind == "none":
        return None
    if config.kind == "mcmc":
        if torch.device(device).type != "cuda":
            raise UserError(
                "the MCMC densification strategy needs CUDA (gsplat's relocation kernels); "
                "use DensifyConfig(kind='default') on a machine without a GPU"
            )
        from gsplat.strategy import MCMCStrategy

        return MCMCStrategy(
            refine_start_iter=config.refine_start_iter, refine_stop_iter=config.refine_stop_iter
        )
    from gsplat.strategy import DefaultStrategy

    cls = _capped_strategy_class() if config.max_gaussians else DefaultStrategy
    extra = {"cap_max": config.max_gaussians} if config.max_gaussians else {}
    return cls(
        **extra,
        grow_grad2d=config.grow_grad2d,
        grow_scale3d=config.grow_scale3d,
        prune_opa=config.prune_opa,
        prune_scale3d=config.prune_scale3d,
        refine_start_iter=config.refine_start_iter,
        refine_stop_iter=config.refine_stop_iter,
        refine_every=config.refine_every,
        reset_every=config.reset_every,
        verbose=config.verbose,
    )


@lru_cache(maxsize=1)
def _capped_strategy_class() -> type:
    """gsplat's ``DefaultStrategy`` whose growth stops at ``cap_max`` Gaussians (the largest screen-space
    gradients grow first when a round would pass it)."""
    from gsplat.strategy import DefaultStrategy

    @dataclass
    class CappedDefaultStrategy(DefaultStrategy):
        cap_max: int = 0

        @torch.no_grad()
        def _grow_gs(self, params, optimizers, state, step):
            room = self.cap_max - len(params["means"])
            if room <= 0:
                return 0, 0
            grads = state["grad2d"] / state["count"].clamp_min(1)
            if int((grads > self.grow_grad2d).sum()) <= room:
                return super()._grow_gs(params, optimizers, state, step)
            threshold = self.grow_grad2d  # this round: only the `room` largest gradients grow
            self.grow_grad2d = float(grads.flatten().topk(room + 1).values[-1])
            try:
                return super()._grow_gs(params, optimizers, state, step)
            finally:
                self.grow_grad2d = threshold

    return CappedDefaultStrategy
