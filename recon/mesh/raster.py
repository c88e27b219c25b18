"""A small triangle rasterizer in UV space: texel -> (face, barycentrics) -> (3D position, normal)."""

from __future__ import annotations

import numpy as np


def rasterize_uv(
    uvs: np.ndarray,  # [V, 2] in [0, 1], v up (OpenGL / OBJ)
    faces: np.ndarray,  # [F, 3]
    texture_size: int,
    max_candidates: int = 4_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each texel center, and where.

    Texel ``(row, col)`` has its center at ``u = (col + 0.5) / S``, ``v = 1 - (row + 0.5) / S``: row 0
    is the top of the image, which is ``v = 1`` in the OpenGL convention of the UVs. A texel belongs to
    a triangle when its center is inside (or on an edge of) it; where triangles overlap the later one
    wins. Work is done per chunk of triangles over the texels of their bounding boxes, so memory stays
    ``O(max_candidates)``.

    Args:
        uvs: Per-vertex UVs.
        faces: Triangles as vertex indices.
        texture_size: Side ``S`` of the square texture.
        max_candidates: Upper bound on (triangle, texel) candidates tested at once.

    Returns:
        ``face_index [S, S]`` (int64, -1 where no triangle) and ``barycentrics [S, S, 3]`` (float32).
    """
    size = int(texture_size)
    xy = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size], axis=-1).astype(np.float64)
    tri = xy[faces]  # [F, 3, 2]
    lo = np.clip(np.ceil(tri.min(axis=1) - 0.5), 0, size).astype(np.int64)  # first texel whose center >= min
    hi = np.clip(np.floor(tri.max(axis=1) - 0.5), -1, size - 1).astype(np.int64)  # last texel center <= max
    extent = np.maximum(hi - lo + 1, 0)  # [F, 2] (width, height) in texels
    counts = extent[:, 0] * extent[:, 1]
    face_index = np.full((size, size), -1, dtype=np.int64)
    bary_map = np.zeros((size, size, 3), dtype=np.float32)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    valid = (counts > 0) & (np.abs(area) > 1e-12)
    order = np.nonzero(valid)[0]
    cum = np.cumsum(counts[order])
    start = 0
    while start < len(order):
        base = cum[start - 1] if start > 0 else 0
        stop = max(start + 1, int(np.searchsorted(cum, base + max_candidates, side="right")))
        chunk = order[start:stop]
        n = counts[chunk]
        f = np.repeat(chunk, n)
        offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        width = extent[f, 0]
        col = lo[f, 0] + offset % width
        row = lo[f, 1] + offset // width
        px, py = col + 0.5, row + 0.5
        # Barycentrics of the texel center (signed areas over the triangle's signed area).
        w0 = ((b[f, 0] - px) * (c[f, 1] - py) - (b[f, 1] - py) * (c[f, 0] - px)) / area[f]
        w1 = ((c[f, 0] - px) * (a[f, 1] - py) - (c[f, 1] - py) * (a[f, 0] - px)) / area[f]
        w2 = 1.0 - w0 - w1
        eps = -1e-9
        inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
        face_index[row[inside], col[inside]] = f[inside]
        bary_map[row[inside], col[inside]] = np.stack([w0[inside], w1[inside], w2[inside]], axis=-1)
        start = stop
    return face_index, bary_map


def interpolate_attribute(
    face_index: np.ndarray,  # [S, S]
    barycentrics: np.ndarray,  # [S, S, 3]
    faces: np.ndarray,  # [F, 3]
    attribute: np.ndarray,  # [V, K]
) -> np.ndarray:  # [T, K]
    """Barycentric interpolation of a per-vertex attribute at the covered texels (row-major order)."""
    mask = face_index >= 0
    corners = attribute[faces[face_index[mask]]]  # [T, 3, K]
    return (barycentrics[mask][:, :, None] * corners).sum(axis=1).astype(np.float32)
