"""The animated GLB plays the hand model's own vertices (skinning evaluated from the file)."""

from __future__ import annotations

import numpy as np
import pygltflib
import torch

from recon.parametric import hand_models
from recon.parametric.hand_gaussians import quat_to_matrix
from recon.parametric.hand_glb import animated_glb_bytes

DTYPES = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}
WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    raw = np.frombuffer(blob, DTYPES[acc.componentType], acc.count * WIDTH[acc.type], view.byteOffset)
    return raw.reshape(acc.count, WIDTH[acc.type])


def local_matrices(gltf, blob, frame: int) -> list[np.ndarray]:
    trs = {i: {"translation": n.translation, "rotation": n.rotation} for i, n in enumerate(gltf.nodes)}
    anim = gltf.animations[0]
    for ch in anim.channels:
        values = read(gltf, blob, anim.samplers[ch.sampler].output)
        trs[ch.target.node][ch.target.path] = values[frame].tolist()
    out = []
    for i in range(len(gltf.nodes)):
        m = np.eye(4)
        if trs[i]["rotation"] is not None:
            x, y, z, w = trs[i]["rotation"]
            m[:3, :3] = quat_to_matrix(torch.tensor([w, x, y, z], dtype=torch.float64)).numpy()
        if trs[i]["translation"] is not None:
            m[:3, 3] = trs[i]["translation"]
        out.append(m)
    return out


def world_matrices(gltf, local):
    parent = {c: i for i, n in enumerate(gltf.nodes) for c in (n.children or [])}

    def world(i):
        return local[i] if i not in parent else world(parent[i]) @ local[i]

    return [world(i) for i in range(len(gltf.nodes))]


def test_glb_skinning_reproduces_the_hand_model_and_object_motion():
    models = hand_models("anny")
    g = torch.Generator().manual_seed(0)
    T = 3
    params = {
        s: {
            "global_orient": torch.randn(T, 3, generator=g) * 0.5,
            "hand_pose": torch.randn(T, 45, generator=g) * 0.3,
            "betas": torch.full((T, 6), 0.05),
            "transl": torch.randn(T, 3, generator=g) * 0.1,
        }
        for s in ("right", "left")
    }
    rot = np.stack([np.eye(3), np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), np.eye(3)])
    data = animated_glb_bytes(
        hands={s: (models[s], params[s]) for s in params},
        object_vertices=np.array([[0.1, 0.0, 0.0], [0, 0.1, 0], [0, 0, 0.1]]),
        object_faces=np.array([[0, 1, 2]]),
        object_rotations=rot,
        object_translations=np.array([[0, 0, 0], [0.2, 0, 0], [0, 0, 0]]),
    )
    gltf = pygltflib.GLTF2.load_from_bytes(data)
    blob = gltf.binary_blob()
    for frame in range(T):
        world = world_matrices(gltf, local_matrices(gltf, blob, frame))
        for mesh_node in (n for n in gltf.nodes if n.skin is not None):
            skin = gltf.skins[mesh_node.skin]
            prim = gltf.meshes[mesh_node.mesh].primitives[0]
            v = read(gltf, blob, prim.attributes.POSITION).astype(np.float64)
            joints = read(gltf, blob, prim.attributes.JOINTS_0).astype(np.int64)
            weights = read(gltf, blob, prim.attributes.WEIGHTS_0).astype(np.float64)
            ibm = read(gltf, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
            mats = np.stack([world[j] @ ibm[k] for k, j in enumerate(skin.joints)])
            blended = np.einsum("vk,vkij->vij", weights, mats[joints])
            skinned = np.einsum("vij,vj->vi", blended[:, :3, :3], v) + blended[:, :3, 3]
            side = mesh_node.name.split("_")[0]
            want = models[side](**{k: p[frame : frame + 1] for k, p in params[side].items()}).vertices[0]
            assert np.abs(skinned - want.double().numpy()).max() < 1e-5, (side, frame)
        obj = next(i for i, n in enumerate(gltf.nodes) if n.name == "object")
        assert np.allclose(world[obj][:3, :3], rot[frame], atol=1e-6)
    assert len(gltf.animations[0].channels) == 2 * 17 + 2
