"""Rasterizing a triangle mesh for a batch of cameras: face ids, barycentrics and z-depth per pixel.

The first half of :mod:`recon.render.mesh` (which shades the result with a texture); its docstring
lists the backends and their measured speeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.errors import UserError

MeshBackend = Literal["auto", "embree", "torch", "pytorch3d"]
MESH_BACKENDS: tuple[str, ...] = ("auto", "embree", "torch", "pytorch3d")


@dataclass
class MeshRasterization:
    """Which face each pixel center sees, where on it, and how far away."""

    face_ids: Tensor  # [C, H, W] int64, -1 where no face
    barycentrics: Tensor  # [C, H, W, 3] perspective-correct weights of the face's vertices (0 where empty)
    depth: Tensor  # [C, H, W] z-depth in camera space (0 where empty)
    backend: str

    @property
    def mask(self) -> Tensor:  # [C, H, W] bool
        return self.face_ids >= 0

    def to(self, device: torch.device | str) -> MeshRasterization:
        return MeshRasterization(
            self.face_ids.to(device), self.barycentrics.to(device), self.depth.to(device), self.backend
        )


# ------------------------------------------------------------------------------------------ backends
def embree_available() -> bool:
    """Whether ``embreex`` imports (``pip install embreex``, part of the dev extra)."""
    try:
        import embreex.rtcore_scene  # noqa: F401
    except ImportError:
        return False
    return True


def pytorch3d_available() -> bool:
    """Whether pytorch3d imports."""
    try:
        import pytorch3d.renderer  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_mesh_backend(backend: str, device: torch.device) -> str:
    """The concrete rasterizer for ``backend`` on ``device`` (see the module docstring)."""
    if backend not in MESH_BACKENDS:
        raise ValueError(f"unknown mesh rasterizer {backend!r}; choose one of {MESH_BACKENDS}")
    if backend == "auto":
        backend = os.environ.get("SDS3D_MESH_RASTERIZER", "auto")
        if backend not in MESH_BACKENDS:
            raise ValueError(f"SDS3D_MESH_RASTERIZER={backend!r}; choose one of {MESH_BACKENDS}")
    if backend == "auto":
        if device.type == "cuda":
            return "pytorch3d" if pytorch3d_available() else "torch"
        return "embree" if embree_available() else "torch"
    if backend == "embree" and not embree_available():
        raise UserError(
            "the embree mesh rasterizer needs embreex: pip install embreex (or use backend='torch')"
        )
    if backend == "pytorch3d" and not pytorch3d_available():
        raise UserError(
            "the pytorch3d mesh rasterizer needs pytorch3d, which has no wheel: pip install "
            "\"git+https://github.com/facebookresearch/pytorch3d.git\" (or use backend='torch')"
        )
    return backend


def build_embree_scene(vertices: np.ndarray, faces: np.ndarray) -> Any:
    """An Embree scene of one triangle mesh (float32, as Embree computes)."""
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(
        scene=scene,
        vertices=np.ascontiguousarray(vertices, dtype=np.float32),
        indices=np.ascontiguousarray(faces, dtype=np.int32),
    )
    return scene


def rasterize_mesh_embree(
    vertices: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3]
    viewmats: Tensor,  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    scene: Any = None,
) -> tuple[Tensor, Tensor, Tensor]:  # [C, H, W], [C, H, W, 3], [C, H, W]
    """One Embree ray per pixel center; ``scene`` from :func:`build_embree_scene` is reused if given.

    The ray through a pixel has camera-space direction ``((x - cx) / fx, (y - cy) / fy, 1)``, so Embree's
    ray parameter at the hit is the z-depth. Hits nearer than ``near_plane`` count as misses.
    """
    if scene is None:
        scene = build_embree_scene(vertices.detach().cpu().numpy(), faces.cpu().numpy())
    C = viewmats.shape[0]
    viewmats = viewmats.detach().double().cpu()
    Ks = Ks.detach().double().cpu()
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5,
        torch.arange(width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    fx, fy, cx, cy = (Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2])
    dirs_cam = torch.stack(
        [
            (xs[None] - cx[:, None, None]) / fx[:, None, None],
            (ys[None] - cy[:, None, None]) / fy[:, None, None],
            torch.ones(C, height, width, dtype=torch.float64),
        ],
        dim=-1,
    ).reshape(C, -1, 3)  # [C, HW, 3]
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    dirs = dirs_cam @ R  # R^T d per row: camera -> world
    origins = (-(R.transpose(1, 2) @ t[..., None])[..., 0])[:, None].expand_as(dirs)  # camera centers
    hits = scene.run(
        np.ascontiguousarray(origins.reshape(-1, 3).numpy(), dtype=np.float32),
        np.ascontiguousarray(dirs.reshape(-1, 3).numpy(), dtype=np.float32),
        output=1,
    )
    prim = torch.from_numpy(hits["primID"].astype(np.int64))
    tfar = torch.from_numpy(hits["tfar"].astype(np.float32))
    u = torch.from_numpy(hits["u"].astype(np.float32))
    v = torch.from_numpy(hits["v"].astype(np.float32))
    hit = (prim >= 0) & (tfar >= near_plane)
    face_ids = torch.where(hit, prim, -1).reshape(C, height, width)
    bary = torch.stack([1.0 - u - v, u, v], dim=-1) * hit[:, None]  # Embree: p = (1-u-v) v0 + u v1 + v v2
    depth = torch.where(hit, tfar, 0.0)
    return face_ids, bary.reshape(C, height, width, 3), depth.reshape(C, height, width)


def rasterize_mesh_torch(
    vertices: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3]
    viewmats: Tensor,  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    max_candidates: int = 2_000_000,
) -> tuple[Tensor, Tensor, Tensor]:  # [C, H, W], [C, H, W, 3], [C, H, W]
    """A z-buffer in PyTorch: every (face, pixel) pair of each face's bounding box is tested at once.

    A pixel belongs to a face when its center is inside (or on an edge of) the projected triangle; the
    nearest such face wins (ties: the larger face id, so results are deterministic). Faces with a vertex
    nearer than ``near_plane`` are dropped whole (no clipping). Memory stays ``O(max_candidates)``.
    """
    device = vertices.device
    C, n_pix = viewmats.shape[0], height * width
    verts = vertices.detach().float()
    face_ids = torch.full((C, n_pix), -1, dtype=torch.int64, device=device)
    bary = torch.zeros(C, n_pix, 3, device=device)
    depth = torch.full((C, n_pix), float("inf"), device=device)
    size = torch.tensor([width, height], device=device)
    for c in range(C):
        cam = verts @ viewmats[c, :3, :3].T.float() + viewmats[c, :3, 3].float()  # [V, 3]
        z = cam[:, 2]
        K = Ks[c].float()
        xy = cam[:, :2] / z.clamp_min(1e-12)[:, None] * K.diagonal()[:2] + K[:2, 2]  # [V, 2] pixels
        tri, tri_z = xy[faces], z[faces]  # [F, 3, 2], [F, 3]
        lo = torch.clamp(torch.ceil(tri.amin(1) - 0.5), min=0).long()  # first pixel center >= min
        hi = torch.minimum(torch.floor(tri.amax(1) - 0.5).long(), size - 1)  # last pixel center <= max
        extent = (hi - lo + 1).clamp_min(0)  # [F, 2]
        counts = extent[:, 0] * extent[:, 1]
        a, b, d = tri[:, 0], tri[:, 1], tri[:, 2]
        area = (b[:, 0] - a[:, 0]) * (d[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (d[:, 0] - a[:, 0])
        valid = (counts > 0) & (area.abs() > 1e-12) & (tri_z > near_plane).all(1)
        order = torch.nonzero(valid)[:, 0]
        cum = torch.cumsum(counts[order], 0)
        start = 0
        while start < len(order):
            base = int(cum[start - 1]) if start > 0 else 0
            stop = max(start + 1, int(torch.searchsorted(cum, base + max_candidates, right=True)))
            chunk = order[start:stop]
            n = counts[chunk]
            f = torch.repeat_interleave(chunk, n)
            offset = torch.arange(int(n.sum()), device=device) - torch.repeat_interleave(
                torch.cumsum(n, 0) - n, n
            )
            w = extent[f, 0]
            col, row = lo[f, 0] + offset % w, lo[f, 1] + offset // w
            px, py = col.float() + 0.5, row.float() + 0.5
            # Signed-area barycentrics of the pixel center, relative to nearby vertices (float32-safe).
            l0 = ((b[f, 0] - px) * (d[f, 1] - py) - (b[f, 1] - py) * (d[f, 0] - px)) / area[f]
            l1 = ((d[f, 0] - px) * (a[f, 1] - py) - (d[f, 1] - py) * (a[f, 0] - px)) / area[f]
            l2 = 1.0 - l0 - l1
            inside = (l0 >= -1e-7) & (l1 >= -1e-7) & (l2 >= -1e-7)
            f, pix = f[inside], (row * width + col)[inside]
            screen = torch.stack([l0[inside], l1[inside], l2[inside]], -1).clamp_min(0.0)  # [N, 3]
            persp = screen / tri_z[f]  # perspective correction: weights / z, renormalised
            inv_z = persp.sum(-1)
            zc = 1.0 / inv_z
            zmin = torch.full((n_pix,), float("inf"), device=device).scatter_reduce(0, pix, zc, "amin")
            best = zc == zmin[pix]
            fmax = torch.full((n_pix,), -1, dtype=torch.int64, device=device)
            fmax = fmax.scatter_reduce(0, pix[best], f[best], "amax")
            best &= f == fmax[pix]  # one winner per pixel
            f, pix, zc, w3 = f[best], pix[best], zc[best], persp[best] / inv_z[best, None]
            nearer = zc < depth[c, pix]
            f, pix, zc, w3 = f[nearer], pix[nearer], zc[nearer], w3[nearer]
            face_ids[c, pix], depth[c, pix], bary[c, pix] = f, zc, w3
            start = stop
    depth = torch.where(face_ids >= 0, depth, 0.0)
    return (
        face_ids.reshape(C, height, width),
        bary.reshape(C, height, width, 3),
        depth.reshape(C, height, width),
    )


def rasterize_mesh_pytorch3d(
    vertices: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3]
    viewmats: Tensor,  # [C, 4, 4] OpenCV world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
) -> tuple[Tensor, Tensor, Tensor]:  # [C, H, W], [C, H, W, 3], [C, H, W]
    """pytorch3d's ``MeshRasterizer`` (one face per pixel, perspective-correct barycentrics).

    Cameras are converted with ``pytorch3d.utils.cameras_from_opencv_projection``. Written against
    pytorch3d 0.7's API; it runs only where pytorch3d is installed (not on the CPU test machine).
    """
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes
    from pytorch3d.utils import cameras_from_opencv_projection

    C, n_faces = viewmats.shape[0], faces.shape[0]
    image_size = torch.tensor([[height, width]] * C, device=viewmats.device)
    cams = cameras_from_opencv_projection(
        R=viewmats[:, :3, :3].float(),
        tvec=viewmats[:, :3, 3].float(),
        camera_matrix=Ks.float(),
        image_size=image_size,
    )
    meshes = Meshes(verts=[vertices.detach().float()] * C, faces=[faces] * C)
    settings = RasterizationSettings(
        image_size=(height, width),
        blur_radius=0.0,
        faces_per_pixel=1,
        perspective_correct=True,
        z_clip_value=None,
    )
    fragments = MeshRasterizer(cameras=cams, raster_settings=settings)(meshes)
    packed = fragments.pix_to_face[..., 0]  # [C, H, W], index into the packed faces of C meshes
    hit = (packed >= 0) & (fragments.zbuf[..., 0] >= near_plane)
    face_ids = torch.where(hit, packed % n_faces, -1)
    bary = fragments.bary_coords[..., 0, :] * hit[..., None]
    depth = torch.where(hit, fragments.zbuf[..., 0], 0.0)
    return face_ids, bary, depth


def rasterize_mesh(
    vertices: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3] int64
    cameras: Cameras,
    backend: MeshBackend = "auto",
    near_plane: float = 0.01,
    embree_scene: Any = None,
) -> MeshRasterization:
    """Face ids, barycentrics and z-depth per pixel center of ``cameras`` (see the module docstring).

    Args:
        vertices: Vertex positions in world space.
        faces: Triangles as vertex indices.
        cameras: The cameras (one image size).
        backend: Rasterizer.
        near_plane: Nothing nearer than this (camera z) is drawn.
        embree_scene: A scene from :func:`build_embree_scene` of the same mesh, to skip rebuilding it.

    Returns:
        The rasterization, on ``vertices``' device.
    """
    if vertices.ndim != 2 or vertices.shape[-1] != 3 or faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(
            f"need vertices [V, 3] and faces [F, 3], got {tuple(vertices.shape)}, {tuple(faces.shape)}"
        )
    device = vertices.device
    backend = resolve_mesh_backend(backend, device)
    viewmats, Ks = cameras.viewmats().to(device), cameras.Ks().to(device)
    W, H = cameras.width, cameras.height
    if backend == "embree":
        out = rasterize_mesh_embree(vertices, faces, viewmats, Ks, W, H, near_plane, embree_scene)
        out = tuple(t.to(device) for t in out)
    elif backend == "pytorch3d":
        out = rasterize_mesh_pytorch3d(vertices, faces, viewmats, Ks, W, H, near_plane)
    else:
        out = rasterize_mesh_torch(vertices, faces.to(device), viewmats, Ks, W, H, near_plane)
    return MeshRasterization(*out, backend=backend)
