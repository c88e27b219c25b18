"""Mesh clean-up after extraction: keep the main component(s), repair, and simplify to a face budget.

Simplification is quadric error decimation (Garland & Heckbert 1997,
https://doi.org/10.1145/258734.258849) through ``fast-simplification`` (trimesh's backend).
"""

from __future__ import annotations

import logging

import numpy as np
import trimesh

from recon.errors import UserError

log = logging.getLogger(__name__)


def keep_largest_components(
    mesh: trimesh.Trimesh, max_components: int = 1, min_fraction: float = 0.1
) -> trimesh.Trimesh:
    """Drops floaters: keeps at most ``max_components`` connected pieces, largest (by area) first.

    Args:
        mesh: Input mesh.
        max_components: Most pieces kept.
        min_fraction: A piece is kept only if its area is at least this fraction of the largest one's.

    Returns:
        The kept pieces, concatenated (the input itself when it is one piece).
    """
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    parts = sorted(parts, key=lambda m: m.area, reverse=True)
    largest = parts[0].area
    kept = [p for p in parts[:max_components] if p.area >= min_fraction * largest]
    log.info("kept %d of %d connected components", len(kept), len(parts))
    return trimesh.util.concatenate(kept) if len(kept) > 1 else kept[0]


def clean_mesh(mesh: trimesh.Trimesh, max_components: int = 1, min_fraction: float = 0.1) -> trimesh.Trimesh:
    """Removes degenerate/duplicate faces and floaters, fills small holes and makes normals point out.

    Args:
        mesh: Input mesh (vertex colors, if any, are kept).
        max_components: See :func:`keep_largest_components`.
        min_fraction: See :func:`keep_largest_components`.

    Returns:
        A cleaned copy.
    """
    mesh = mesh.copy()
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    mesh = keep_largest_components(mesh, max_components, min_fraction)
    trimesh.repair.fill_holes(mesh)
    trimesh.repair.fix_normals(mesh)
    return mesh


def simplify_mesh(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric decimation down to at most ``max_faces`` faces (a no-op when already below).

    Vertex colors are carried over by nearest original vertex.

    Args:
        mesh: Input mesh.
        max_faces: Face budget.

    Returns:
        The simplified mesh.

    Raises:
        UserError: if ``fast-simplification`` is not installed.
    """
    if len(mesh.faces) <= max_faces:
        return mesh
    try:
        simplified = mesh.simplify_quadric_decimation(face_count=int(max_faces))
    except ImportError as e:
        raise UserError(
            f"mesh simplification needs fast-simplification: pip install fast-simplification ({e})"
        ) from e
    # The decimator may stop a little above the target; a second, slightly tighter pass settles it.
    if len(simplified.faces) > max_faces:
        simplified = simplified.simplify_quadric_decimation(face_count=int(max_faces * 0.95))
    colors = getattr(mesh.visual, "vertex_colors", None)
    if mesh.visual.kind == "vertex" and colors is not None:
        _, nearest = mesh.kdtree.query(simplified.vertices)
        simplified.visual.vertex_colors = np.asarray(colors)[nearest]
    log.info("simplified %d -> %d faces", len(mesh.faces), len(simplified.faces))
    return simplified
