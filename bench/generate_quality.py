"""Does `sds3d generate` make the prompted object? Shape and color accuracy of exported meshes.

For each prompt "a <color> <shape>" of the embedded vocabulary, runs the text-to-3D pipeline with
the chosen prior, then judges the exported ``model.glb`` independently of the pipeline:

* shape: the mesh is ray-cast (trimesh) from 8 cameras around it; its silhouettes are compared (IoU)
  with the analytic renders of every primitive from the same cameras; the best match is the
  predicted shape;
* color: the mean texture color at the visible ray hits (UV lookup) is compared with the mean color
  of the prompted shape rendered in each vocabulary color (same shading); the nearest is predicted.

Usage: python bench/generate_quality.py [--n 10] [--steps 300] [--prior embedded] [--representation nerf]
[--out DIR]
Prints a table, then as its LAST line JSON {"shape_acc", "color_acc", "median_s"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from recon.cameras import Cameras, orbit_cameras
from recon.data.procedural import COLORS, SHAPES, caption, render_primitive
from recon.pipelines import generate
from recon.pipelines.stabledreamer import StableDreamerConfig

PROMPTS = [
    ("red", "cube"), ("blue", "sphere"), ("green", "cone"), ("yellow", "torus"), ("purple", "cylinder"),
    ("orange", "sphere"), ("cyan", "cube"), ("pink", "cone"), ("blue", "torus"), ("red", "cylinder"),
    ("green", "sphere"), ("yellow", "cube"), ("purple", "cone"), ("orange", "torus"), ("cyan", "cylinder"),
]  # fmt: skip


def camera_rays(cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """World-space ray origins and directions ``[C*H*W, 3]`` through the pixel centers."""
    ys, xs = torch.meshgrid(torch.arange(cams.height) + 0.5, torch.arange(cams.width) + 0.5, indexing="ij")
    origins, dirs = [], []
    for i in range(len(cams)):
        d_cam = torch.stack(
            [(xs - cams.cx[i]) / cams.fx[i], -(ys - cams.cy[i]) / cams.fy[i], -torch.ones_like(xs)], -1
        )
        c2w = cams.camera_to_worlds[i]
        d = torch.nn.functional.normalize(d_cam.reshape(-1, 3) @ c2w[:3, :3].T, dim=-1)
        dirs.append(d)
        origins.append(c2w[:3, 3].expand_as(d))
    return torch.cat(origins).numpy(), torch.cat(dirs).numpy()


def judge(glb: Path, color: str, shape: str, size: int = 48) -> dict:
    mesh = trimesh.load(glb, force="mesh")
    cams = orbit_cameras(8, elevation_deg=20.0, distance=3.0, fov_deg=40.0, width=size, height=size)
    origins, dirs = camera_rays(cams)
    locations, ray_ids, tri_ids = mesh.ray.intersects_location(origins, dirs, multiple_hits=False)
    hit = np.zeros(len(origins), dtype=bool)
    hit[ray_ids] = True
    mask = torch.from_numpy(hit.reshape(len(cams), size, size))
    ious = {}
    for s in SHAPES:
        _, alpha, _ = render_primitive(s, "red", cams)
        ref = alpha[..., 0] > 0.5
        ious[s] = float((mask & ref).sum() / (mask | ref).sum().clamp_min(1))
    # texture color at the hits
    uv = mesh.visual.uv
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri_ids], locations)
    hit_uv = (uv[mesh.faces[tri_ids]] * bary[:, :, None]).sum(1)
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255.0
    h, w = image.shape[:2]
    px = np.clip((hit_uv[:, 0] * (w - 1)).round().astype(int), 0, w - 1)
    py = np.clip(((1 - hit_uv[:, 1]) * (h - 1)).round().astype(int), 0, h - 1)
    mean_color = image[py, px].mean(0) if len(px) else np.ones(3)
    dists = {}
    for name in COLORS:
        rgb, alpha, _ = render_primitive(shape, name, cams)
        fg = alpha[..., 0] > 0.5
        dists[name] = float(np.linalg.norm(rgb[fg].mean(0).numpy() - mean_color))
    return {
        "pred_shape": max(ious, key=ious.get),
        "iou": ious[shape],
        "pred_color": min(dists, key=dists.get),
        "mean_color": [round(float(c), 3) for c in mean_color],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help=f"number of prompts (max {len(PROMPTS)})")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--prior", default="embedded")
    parser.add_argument("--representation", choices=["gaussians", "nerf"], default="gaussians")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sds3d-quality-"))
    rows = []
    print(f"{'prompt':<22}{'shape':>10}{'iou':>7}{'color':>9}{'seconds':>9}")
    for color, shape in PROMPTS[: args.n]:
        prompt = caption(shape, color)
        config = StableDreamerConfig(
            prompt=prompt,
            prior=args.prior,
            steps=args.steps,
            representation=args.representation,
            progress_bar=False,
        )
        started = time.perf_counter()
        run_dir = generate(config, out_root=out)
        seconds = time.perf_counter() - started
        verdict = judge(run_dir / "export" / "model.glb", color, shape)
        rows.append({"prompt": prompt, "shape": shape, "color": color, "seconds": seconds, **verdict})
        print(
            f"{prompt:<22}{verdict['pred_shape']:>10}{verdict['iou']:>7.2f}{verdict['pred_color']:>9}{seconds:>9.1f}"
        )
    result = {
        "shape_acc": round(sum(r["pred_shape"] == r["shape"] for r in rows) / len(rows), 3),
        "color_acc": round(sum(r["pred_color"] == r["color"] for r in rows) / len(rows), 3),
        "median_s": round(statistics.median(r["seconds"] for r in rows), 1),
        "representation": args.representation,
    }
    print(f"runs kept in {out}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
