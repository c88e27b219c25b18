"""A GLB of the head: the mesh, a baked UV texture and one morph target per expression, optionally animated.

The avatar's export for glTF viewers (Zero-1-to-A, https://arxiv.org/abs/2503.15851, issue #17's outputs).
At zero pose the head model is linear in its expression (``v = v_template + S·betas + E·expression``:
skinning with identity rotations leaves the shaped mesh as it is, wherever the joints are), so a glTF
morph target per expression direction reproduces it exactly:
``base + Σ w_i · target_i`` with ``base`` the identity's neutral mesh and ``target_i`` the
expression's column ``E[:, :, i]``. One more target, ``jawOpen`` (ARKit's name), is the mesh with the
jaw turned by ``jaw_open_rad`` about its x axis minus the base: a rotation morphed linearly, so a
weight ``w`` is the chord, not the arc — exact at 0 and 1, off by at most ``r (1 - cos(θ/2))`` for a
point at distance ``r`` from the jaw's hinge in between (measured in the test at half of 0.35 rad: 1.2 mm;
with strong expressions as well 1.7 mm, as a morph target cannot turn the expressions' displacements with
the jaw as skinning does; an exact jaw needs a skinned jaw joint).

Target names are in the mesh's ``extras.targetNames`` (the convention three.js, Blender and Babylon
read). UVs come from xatlas on the base mesh (the vertices are split along its seams, and every
target follows the split); the texture is baked from per-vertex colours (barycentric interpolation
per texel, :mod:`recon.mesh.raster`, dilated past the charts' edges). An expression sequence becomes
one animation of the morph weights, one keyframe per frame, linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.errors import UserError
from recon.parametric.hand_glb import _Blob
from recon.parametric.heads import HeadModel

JAW_TARGET = "jawOpen"
FLOAT, UINT = 5126, 5125
ARRAY, ELEMENTS = 34962, 34963


@dataclass
class HeadMorphMesh:
    """The head as a morphable, UV-mapped mesh (vertices split along UV seams)."""

    vertices: np.ndarray  # [V', 3] the base (neutral) mesh
    faces: np.ndarray  # [F, 3]
    uvs: np.ndarray  # [V', 2] v up (OpenGL / OBJ)
    targets: np.ndarray  # [N, V', 3] displacements
    target_names: list[str]
    source_vertex: np.ndarray  # [V'] the head model's vertex each one came from
    jaw_open_rad: float  # the jaw target's rotation (0: no jaw target)


def head_morph_mesh(
    model: HeadModel,
    betas: Tensor | None = None,  # [1, K] or [K]
    jaw_open_rad: float = 0.35,
    texture_size: int = 512,
) -> HeadMorphMesh:
    """The identity's neutral head, its expression targets (and ``jawOpen``), unwrapped by xatlas."""
    import xatlas

    b = None if betas is None else torch.as_tensor(betas, dtype=torch.float32).reshape(1, -1)
    with torch.no_grad():
        base = model(betas=b).vertices[0].double().numpy()
        targets = [model.exprdirs[:, :, i].double().numpy() for i in range(model.num_expressions)]
        names = list(model.expression_names) or [f"expression{i:03d}" for i in range(model.num_expressions)]
        if jaw_open_rad > 0:
            jaw = torch.tensor([[jaw_open_rad, 0.0, 0.0]])
            targets.append(model(betas=b, jaw_pose=jaw).vertices[0].double().numpy() - base)
            names.append(JAW_TARGET)
    faces = model.faces.numpy()
    atlas = xatlas.Atlas()
    atlas.add_mesh(base.astype(np.float32), faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = max(2, texture_size // 256)
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    vmapping = vmapping.astype(np.int64)
    return HeadMorphMesh(
        vertices=base[vmapping],
        faces=indices.astype(np.int64),
        uvs=np.clip(uvs, 0.0, 1.0).astype(np.float32),
        targets=np.stack(targets)[:, vmapping],
        target_names=names,
        source_vertex=vmapping,
        jaw_open_rad=float(jaw_open_rad),
    )


def bake_vertex_colors(mesh: HeadMorphMesh, colors: np.ndarray, texture_size: int = 512) -> np.ndarray:
    """``[S, S, 3]`` float texture (row 0 = v 1) from the head model's per-vertex colours ``[V, 3]``."""
    from recon.mesh.bake import dilate_texture
    from recon.mesh.raster import interpolate_attribute, rasterize_uv

    face_index, bary = rasterize_uv(mesh.uvs, mesh.faces, texture_size)
    covered = face_index >= 0
    image = np.zeros((texture_size, texture_size, 3), np.float32)
    per_vertex = np.asarray(colors, dtype=np.float32)[mesh.source_vertex]
    image[covered] = interpolate_attribute(face_index, bary, mesh.faces, per_vertex)
    image, _ = dilate_texture(image, covered, max(4, texture_size // 64))
    return np.clip(image, 0.0, 1.0)


def morph_weights(
    model: HeadModel,
    expression: Tensor | np.ndarray,  # [T, E] (or [E])
    jaw_pose: Tensor | np.ndarray | None = None,  # [T, 3] (or [3])
    jaw_open_rad: float = 0.35,
) -> np.ndarray:  # [T, N]
    """The targets' weights for expressions (and jaw openings: the x angle over ``jaw_open_rad``)."""
    e = np.atleast_2d(np.asarray(expression, dtype=np.float32))
    E = model.num_expressions
    if e.shape[1] > E:
        e = e[:, :E]
    elif e.shape[1] < E:
        e = np.concatenate([e, np.zeros((e.shape[0], E - e.shape[1]), np.float32)], 1)
    if jaw_open_rad <= 0:
        return e
    jaw = np.zeros((e.shape[0], 3)) if jaw_pose is None else np.atleast_2d(np.asarray(jaw_pose))
    return np.concatenate([e, (jaw[:, :1] / jaw_open_rad).astype(np.float32)], 1)


def head_glb_bytes(
    model: HeadModel,
    betas: Tensor | None = None,  # [1, K]
    vertex_colors: np.ndarray | None = None,  # [V, 3] in [0, 1]
    expressions: np.ndarray | Tensor | None = None,  # [T, E] an expression sequence to animate
    jaw_poses: np.ndarray | Tensor | None = None,  # [T, 3]
    fps: float = 25.0,
    jaw_open_rad: float = 0.35,
    texture_size: int = 512,
    skin_color: tuple[float, float, float] = (0.85, 0.68, 0.57),
) -> bytes:
    """The head's GLB (see the module docstring).

    Args:
        model: The head model.
        betas: The identity's shape (None: the mean head).
        vertex_colors: Per-vertex albedo of the head model's vertices (None: ``skin_color`` everywhere).
        expressions: An expression sequence; one morph-weight keyframe per row (None: no animation).
        jaw_poses: The sequence's jaw poses (their x angle drives ``jawOpen``).
        fps: Frames per second of the animation.
        jaw_open_rad: The ``jawOpen`` target's angle (0: no jaw target).
        texture_size: Side of the baked texture.
        skin_color: The colour when ``vertex_colors`` is None.

    Raises:
        UserError: an expression sequence or colours of the wrong shape.
    """
    import pygltflib as g

    from recon.mesh.io import png_bytes

    if vertex_colors is not None and np.shape(vertex_colors) != (model.num_vertices, 3):
        raise UserError(
            f"vertex colours must be [{model.num_vertices}, 3] (one RGB per head vertex), "
            f"got {np.shape(vertex_colors)}"
        )
    if expressions is not None and (np.ndim(expressions) != 2 or np.shape(expressions)[0] < 1):
        raise UserError(
            f"an expression sequence must be [frames, expressions] (frames >= 1, up to "
            f"{model.num_expressions} expression columns), got shape {np.shape(expressions)}"
        )
    mesh = head_morph_mesh(model, betas, jaw_open_rad, texture_size)
    colors = np.tile(np.asarray(skin_color, np.float32), (model.num_vertices, 1))
    texture = bake_vertex_colors(mesh, colors if vertex_colors is None else vertex_colors, texture_size)

    blob = _Blob()
    import trimesh

    normals = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).vertex_normals
    position = blob.add(mesh.vertices.astype(np.float32), "VEC3", FLOAT, ARRAY, minmax=True)
    normal = blob.add(np.asarray(normals, np.float32), "VEC3", FLOAT, ARRAY)
    uv = mesh.uvs.copy()
    uv[:, 1] = 1.0 - uv[:, 1]  # glTF's texture origin is the top left
    texcoord = blob.add(uv.astype(np.float32), "VEC2", FLOAT, ARRAY)
    indices = blob.add(mesh.faces.astype(np.uint32).reshape(-1, 1), "SCALAR", UINT, ELEMENTS)
    targets = [
        {"POSITION": blob.add(t.astype(np.float32), "VEC3", FLOAT, ARRAY, minmax=True)} for t in mesh.targets
    ]
    # the PNG, in a buffer view of its own
    png = png_bytes(texture)
    while len(blob.data) % 4:
        blob.data.append(0)
    blob.views.append(g.BufferView(buffer=0, byteOffset=len(blob.data), byteLength=len(png)))
    blob.data.extend(png)
    image_view = len(blob.views) - 1

    primitive = g.Primitive(
        attributes=g.Attributes(POSITION=position, NORMAL=normal, TEXCOORD_0=texcoord),
        indices=indices,
        material=0,
        targets=targets,
    )
    head = g.Mesh(
        name="head",
        primitives=[primitive],
        weights=[0.0] * len(targets),
        extras={"targetNames": mesh.target_names},
    )
    animations = []
    if expressions is not None:
        w = morph_weights(model, expressions, jaw_poses, jaw_open_rad)
        T = w.shape[0]
        times = blob.add((np.arange(T, dtype=np.float32) / fps)[:, None], "SCALAR", FLOAT, minmax=True)
        values = blob.add(w.reshape(-1, 1).astype(np.float32), "SCALAR", FLOAT)
        animations.append(
            g.Animation(
                name="expressions",
                samplers=[g.AnimationSampler(input=times, output=values, interpolation="LINEAR")],
                channels=[
                    g.AnimationChannel(sampler=0, target=g.AnimationChannelTarget(node=0, path="weights"))
                ],
            )
        )
    gltf = g.GLTF2(
        scene=0,
        scenes=[g.Scene(nodes=[0])],
        nodes=[g.Node(name="head", mesh=0)],
        meshes=[head],
        materials=[
            g.Material(
                name="head",
                pbrMetallicRoughness=g.PbrMetallicRoughness(
                    baseColorTexture=g.TextureInfo(index=0), metallicFactor=0.0, roughnessFactor=0.8
                ),
            )
        ],
        textures=[g.Texture(sampler=0, source=0)],
        samplers=[g.Sampler(magFilter=9729, minFilter=9987, wrapS=33071, wrapT=33071)],
        images=[g.Image(bufferView=image_view, mimeType="image/png")],
        accessors=blob.accessors,
        bufferViews=blob.views,
        buffers=[g.Buffer(byteLength=len(blob.data))],
        animations=animations,
    )
    gltf.set_binary_blob(bytes(blob.data))
    return b"".join(gltf.save_to_bytes())


def write_head_glb(path: str | Path, model: HeadModel, **kwargs) -> Path:
    """Writes :func:`head_glb_bytes` atomically; returns the path."""
    from recon.atomic import atomic_write_bytes

    return atomic_write_bytes(path, head_glb_bytes(model, **kwargs))
