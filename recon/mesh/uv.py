"""UV unwrapping with xatlas (https://github.com/jpcy/xatlas), after decimation to a face budget."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import trimesh

from recon.mesh.cleanup import simplify_mesh

log = logging.getLogger(__name__)


@dataclass
class UVMesh:
    """A triangle mesh with one UV coordinate per vertex (vertices are split along UV seams).

    UVs follow the OpenGL / OBJ convention used by trimesh: ``(0, 0)`` is the **bottom**-left of the
    texture image and ``v`` grows upwards. The glTF writer flips ``v`` as glTF requires.
    """

    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int64
    uvs: np.ndarray  # [V, 2] float32 in [0, 1]
    vertex_normals: np.ndarray  # [V, 3] float32, unit, averaged over the faces around each vertex

    def to_trimesh(self) -> trimesh.Trimesh:
        """The geometry as an (untextured) trimesh, without merging seam vertices."""
        return trimesh.Trimesh(
            vertices=self.vertices, faces=self.faces, vertex_normals=self.vertex_normals, process=False
        )


def unwrap_uv(
    mesh: trimesh.Trimesh,
    texture_size: int = 1024,
    max_faces: int = 30_000,
    padding: int | None = None,
) -> UVMesh:
    """Decimates ``mesh`` to ``max_faces`` if above it, then unwraps it into one UV atlas with xatlas.

    xatlas' chart computation grows faster than linearly with the face count (on 2 cores: ~1 s at
    10k faces, ~4 s at 25k, ~13 s at 50k, ~30 s at 100k), so the budget is what keeps export time
    bounded. The texture, not the triangle count, carries the surface's color detail.

    Args:
        mesh: Input mesh.
        texture_size: Side of the square texture the atlas is packed for, in texels.
        max_faces: Face budget applied before unwrapping.
        padding: Texels of padding between charts; ``max(2, texture_size // 256)`` when None.

    Returns:
        The unwrapped mesh (vertex normals come from the mesh before the seams were cut, so shading is
        continuous across seams).
    """
    import xatlas

    mesh = simplify_mesh(mesh, max_faces)
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.uint32)
    normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding if padding is not None else max(2, texture_size // 256))
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed {atlas.atlas_count} atlases, expected 1")
    vmapping, indices, uvs = atlas[0]
    log.info(
        "unwrapped %d faces into %d charts (utilization %.2f)",
        len(faces),
        atlas.chart_count,
        float(atlas.utilization),
    )
    return UVMesh(
        vertices=vertices[vmapping],
        faces=indices.astype(np.int64),
        uvs=np.clip(uvs, 0.0, 1.0).astype(np.float32),
        vertex_normals=normals[vmapping],
    )
