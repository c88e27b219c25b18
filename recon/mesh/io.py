"""Writers for textured meshes: GLB (binary glTF 2.0) and OBJ + MTL + PNG, all written atomically, and
:func:`read_mesh`, which reads them back (or another tool's) with one clear error for a damaged file.

Coordinate conventions:

* sds3d's world is right-handed, **+Y up**, front facing +Z — the same as glTF 2.0's, so vertices are
  written as they are, in world units (glTF says meters).
* :class:`~recon.mesh.uv.UVMesh` UVs have ``v`` up (OpenGL/OBJ). OBJ stores them so; the GLB writer
  (trimesh) flips ``v`` to glTF's top-left origin. Either file reloads with the same texture lookup.

Atomic writes: every file is first written into a hidden temporary folder inside the target folder
(same file system), flushed and fsynced, and only then moved into place with ``os.replace``. An
export that fails or is interrupted leaves no partial file in the target folder: each target file is
either the complete new one or whatever was there before. (A ``SIGKILL`` can leave the hidden
``.tmp-export-*`` folder behind, never a half-written ``model.*``; the next export into the folder
removes such leftovers once they are an hour old.)
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from recon.errors import UserError
from recon.mesh.uv import UVMesh

MATERIAL_NAME = "material0"
TEMP_PREFIX = ".tmp-export-"


def texture_to_image(texture: np.ndarray) -> Image.Image:
    """``[S, S, 3]`` float in [0, 1] (row 0 = top, i.e. ``v = 1``) -> 8-bit RGB PIL image."""
    return Image.fromarray((np.clip(texture, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")


def textured_trimesh(mesh: UVMesh, texture: np.ndarray) -> trimesh.Trimesh:
    """A trimesh carrying UVs and a PBR material (base color texture, non-metal, fully rough)."""
    material = trimesh.visual.material.PBRMaterial(
        name=MATERIAL_NAME,
        baseColorTexture=texture_to_image(texture),
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=False,
    )
    return trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        vertex_normals=mesh.vertex_normals,
        visual=trimesh.visual.TextureVisuals(uv=mesh.uvs, material=material),
        process=False,
    )


def remove_stale_temp_folders(out_dir: Path, older_than_s: float = 3600.0) -> None:
    """Deletes temporary folders that a killed export left in ``out_dir`` (untouched for an hour)."""
    now = time.time()
    for path in out_dir.glob(f"{TEMP_PREFIX}*"):
        if path.is_dir() and now - path.stat().st_mtime > older_than_s:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def atomic_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder inside ``out_dir``; on success moves its files into ``out_dir``.

    On any exception the temporary folder is deleted and nothing in ``out_dir`` is touched.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_folders(out)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out))
    try:
        yield tmp
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_synced(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` and fsyncs it (the rename that follows then publishes whole bytes)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def png_bytes(texture: np.ndarray) -> bytes:
    """The texture encoded as PNG."""
    buffer = io.BytesIO()
    texture_to_image(texture).save(buffer, format="PNG")
    return buffer.getvalue()


def glb_bytes(mesh: UVMesh, texture: np.ndarray) -> bytes:
    """A GLB with one primitive: POSITION, NORMAL, TEXCOORD_0 and an embedded PNG baseColorTexture."""
    return trimesh.Scene(textured_trimesh(mesh, texture)).export(file_type="glb", include_normals=True)


def obj_files(
    mesh: UVMesh, texture: np.ndarray, stem: str = "model", texture_name: str = "texture.png"
) -> dict:
    """``{file name: bytes}`` of an OBJ, its MTL and the PNG texture.

    The MTL is written here rather than by trimesh so the diffuse color is white (viewers multiply
    ``Kd`` with ``map_Kd``) and the texture has the project's file name.
    """
    obj_text, _ = trimesh.exchange.obj.export_obj(
        textured_trimesh(mesh, texture),
        include_normals=True,
        include_texture=True,
        return_texture=True,
        mtl_name=f"{stem}.mtl",
    )
    mtl = (
        f"# sds3d\nnewmtl {MATERIAL_NAME}\nKa 1.0 1.0 1.0\nKd 1.0 1.0 1.0\nKs 0.0 0.0 0.0\n"
        f"Ns 0.0\nd 1.0\nillum 1\nmap_Kd {texture_name}\n"
    )
    return {f"{stem}.obj": obj_text.encode(), f"{stem}.mtl": mtl.encode(), texture_name: png_bytes(texture)}


def write_glb(path: str | os.PathLike, mesh: UVMesh, texture: np.ndarray) -> Path:
    """Writes a textured GLB atomically; returns its path."""
    path = Path(path)
    data = glb_bytes(mesh, texture)
    with atomic_folder(path.parent) as tmp:
        write_bytes_synced(tmp / path.name, data)
    return path


def write_obj(
    out_dir: str | os.PathLike,
    mesh: UVMesh,
    texture: np.ndarray,
    stem: str = "model",
    texture_name: str = "texture.png",
) -> dict[str, Path]:
    """Writes ``<stem>.obj``, ``<stem>.mtl`` and the PNG texture atomically; returns their paths by suffix."""
    files = obj_files(mesh, texture, stem, texture_name)
    with atomic_folder(out_dir) as tmp:
        for name, data in files.items():
            write_bytes_synced(tmp / name, data)
    out = Path(out_dir)
    return {"obj": out / f"{stem}.obj", "mtl": out / f"{stem}.mtl", "texture": out / texture_name}


MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
"""Mesh files :func:`read_mesh` reads."""


def read_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
    """Reads a GLB / OBJ (an sds3d export or another tool's) as one triangle mesh.

    Args:
        path: The mesh file (an OBJ's MTL and texture are looked up beside it).

    Returns:
        The mesh: at least one triangle, finite vertices, every face index inside the vertex list.

    Raises:
        UserError: the file is missing, of another kind, damaged or holds no triangles; the message
            names the file and the fix.
    """
    path = Path(path)
    fix = "re-export it (sds3d export RUN --format glb obj) or pass another file"
    if not path.is_file():
        raise UserError(f"mesh {path} does not exist; pass a {' / '.join(MESH_SUFFIXES)} file")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise UserError(f"{path} is not a mesh file; pass one of {', '.join(MESH_SUFFIXES)}")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        faces = np.asarray(mesh.faces)
    except Exception as err:  # noqa: BLE001 - trimesh's parsers raise many types on damaged files
        raise UserError(f"cannot read mesh {path} ({type(err).__name__}: {str(err)[:200]}); {fix}") from None
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise UserError(f"mesh {path} holds no triangles; {fix}")
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.isfinite(vertices).all():
        raise UserError(f"mesh {path} has vertices that are not finite 3D points; {fix}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise UserError(f"mesh {path} has faces that index missing vertices; {fix}")
    return mesh
