"""Scenes of several textured meshes as one GLB, one node per object, in scene coordinates.

Each :class:`SceneNode` becomes a glTF node named after it whose mesh is stored around its own centre
(the middle of its bounding box) and placed by the node's translation, so a viewer lists the objects
by name, can move each one, and shows them where they were reconstructed. Written atomically, like
every export (:mod:`recon.mesh.io`). :func:`bake_field_texture` textures one object's mesh from volume
renders of a field (e.g. one object of a multi-object SDF rendered alone).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor, nn

from recon.cameras import Cameras
from recon.mesh.io import atomic_folder, textured_trimesh, write_bytes_synced
from recon.mesh.uv import UVMesh


@dataclass
class SceneNode:
    """One object of a scene: a UV mesh in scene coordinates and its texture."""

    name: str
    mesh: UVMesh
    texture: np.ndarray  # [S, S, 3] float in [0, 1]

    @property
    def center(self) -> np.ndarray:
        """The middle of the mesh's bounding box (the node's translation)."""
        v = np.asarray(self.mesh.vertices, dtype=np.float64)
        return (v.min(0) + v.max(0)) / 2


def scene_glb_bytes(nodes: list[SceneNode]) -> bytes:
    """A GLB with one node per :class:`SceneNode` (unique names; geometry centred, node translated)."""
    if not nodes:
        raise ValueError("a scene needs at least one node")
    scene = trimesh.Scene()
    seen: dict[str, int] = {}
    for node in nodes:
        name = node.name
        if name in seen:
            seen[name] += 1
            name = f"{name}-{seen[name]}"
        else:
            seen[name] = 0
        center = node.center
        local = UVMesh(
            vertices=(np.asarray(node.mesh.vertices, dtype=np.float64) - center).astype(np.float32),
            faces=node.mesh.faces,
            uvs=node.mesh.uvs,
            vertex_normals=node.mesh.vertex_normals,
        )
        transform = np.eye(4)
        transform[:3, 3] = center
        scene.add_geometry(
            textured_trimesh(local, node.texture), node_name=name, geom_name=name, transform=transform
        )
    return scene.export(file_type="glb", include_normals=True)


def write_scene_glb(path: str | os.PathLike, nodes: list[SceneNode]) -> Path:
    """Writes the scene GLB atomically; returns its path."""
    path = Path(path)
    data = scene_glb_bytes(nodes)
    with atomic_folder(path.parent) as tmp:
        write_bytes_synced(tmp / path.name, data)
    return path


def read_scene_nodes(path: str | os.PathLike) -> dict[str, trimesh.Trimesh]:
    """The meshes of a scene GLB by node name, each moved to scene coordinates by its node's transform."""
    scene = trimesh.load(path, force="scene")
    out = {}
    for name in scene.graph.nodes_geometry:
        transform, geom = scene.graph[name]
        mesh = scene.geometry[geom].copy()
        mesh.apply_transform(transform)
        out[name] = mesh
    return out


@torch.no_grad()
def render_field_views(
    field: nn.Module, cameras: Cameras, num_samples: int = 64, occupancy=None, chunk: int = 8192
) -> tuple[Tensor, Tensor, Tensor]:
    """Volume renders of a field: ``(rgb [C, H, W, 3] on white, z-depth [C, H, W, 1], alpha [C, H, W, 1])``
    (no gradients; ``chunk`` rays per call)."""
    from recon.data.procedural import camera_rays
    from recon.render.volume import render_rays

    o, d, z = camera_rays(cameras.to(field.aabb.device))
    C, H, W = o.shape[:3]
    o, d, z = o.reshape(-1, 3), d.reshape(-1, 3), z.reshape(-1)
    rgb, depth, alpha = [], [], []
    for s in range(0, len(o), chunk):
        out = render_rays(field, o[s : s + chunk], d[s : s + chunk], num_samples, 1.0, occupancy=occupancy)
        rgb.append(out.rgb)
        depth.append(out.depth[:, 0] * z[s : s + chunk])
        alpha.append(out.alpha[:, 0])

    def shape(x: list[Tensor], k: int) -> Tensor:
        return torch.cat(x).reshape(C, H, W, k).cpu()

    return shape(rgb, 3), shape(depth, 1), shape(alpha, 1)


def bake_field_texture(
    field: nn.Module,
    mesh: trimesh.Trimesh,
    cameras: Cameras,
    texture_size: int = 512,
    max_faces: int = 20_000,
    num_samples: int = 64,
    occupancy=None,
) -> tuple[UVMesh, np.ndarray]:
    """UV-unwraps ``mesh`` (xatlas) and bakes a texture from volume renders of ``field`` seen by ``cameras``.

    Returns:
        ``(uv_mesh, texture [S, S, 3] in [0, 1])`` in the field's coordinates.
    """
    from recon.mesh.bake import bake_texture
    from recon.mesh.uv import unwrap_uv
    from recon.mesh.views import render_views

    uv = unwrap_uv(mesh, texture_size=texture_size, max_faces=max_faces)

    def render_fn(cams: Cameras):
        rgb, depth, alpha = render_field_views(field, cams, num_samples, occupancy)
        surface = ((rgb - (1 - alpha)) / alpha.clamp_min(1e-6)).clamp(0, 1)  # the colour without the white
        return surface, depth, alpha

    views = render_views(render_fn, cameras)
    return uv, bake_texture(uv, views, texture_size=texture_size).image


__all__ = [
    "SceneNode",
    "bake_field_texture",
    "read_scene_nodes",
    "render_field_views",
    "scene_glb_bytes",
    "write_scene_glb",
]
