"""Time of UV unwrapping + texture baking of a ~100k-face mesh at a 1024² texture, same run.

Mesh: a UV sphere with 158x158 segments (98,592 faces) around the analytic textured sphere of
``recon.mesh.analytic_scene``, its vertices displaced radially by 0.5% noise (so it is not a perfect
primitive). Views: 32 renders at 512² of that analytic sphere (render time reported apart).

Rows: ``unwrap_uv`` with the default face budget (30k: the mesh is decimated first) and with larger
budgets, each followed by ``bake_texture`` at 1024²; the ``100k`` row (no decimation) is the baseline
the others' ratios are against. Each row also reports the baked color error against the analytic
texture (mean |error| over covered texels), so speed is never bought with a wrong texture.

Acceptance (issue 4): unwrap + bake of a 100k-face mesh at 1024² in <= 30 s on 2 CPU cores, with the
default budget.

Usage: python bench/export.py [--quick]   (--quick: skip the slow no-decimation baseline)
Prints a table, then as its LAST line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

# OpenMP workers that spin-wait steal the CPU from each other on a busy 2-core machine (bake measured
# 2-10x slower); idle workers should sleep. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from recon.mesh import MeshExportConfig, bake_texture, export_cameras, render_views, unwrap_uv  # noqa: E402
from recon.mesh.analytic_scene import TexturedSphere  # noqa: E402
from recon.mesh.raster import interpolate_attribute, rasterize_uv  # noqa: E402


def noisy_sphere(
    scene: TexturedSphere, segments: int = 158, noise: float = 0.005, seed: int = 0
) -> trimesh.Trimesh:
    mesh = trimesh.creation.uv_sphere(radius=scene.radius, count=[segments, segments])
    rng = np.random.default_rng(seed)
    mesh.vertices *= 1.0 + noise * rng.standard_normal((len(mesh.vertices), 1))
    mesh.apply_translation(scene.center)
    return mesh


def texture_error(scene: TexturedSphere, uv_mesh, image: np.ndarray) -> float:
    face_index, bary = rasterize_uv(uv_mesh.uvs, uv_mesh.faces, image.shape[0])
    points = interpolate_attribute(face_index, bary, uv_mesh.faces, uv_mesh.vertices)
    c = np.asarray(scene.center)
    on_sphere = c + (points - c) / np.linalg.norm(points - c, axis=1, keepdims=True) * scene.radius
    want = scene.albedo(torch.from_numpy(on_sphere).float()).numpy()
    return float(np.abs(image[face_index >= 0] - want).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 100k (no decimation) baseline")
    parser.add_argument("--texture-size", type=int, default=1024)
    args = parser.parse_args()
    size = args.texture_size
    scene = TexturedSphere()
    mesh = noisy_sphere(scene)
    default_budget = MeshExportConfig().max_faces

    t0 = time.perf_counter()
    views = render_views(scene, export_cameras(32, center=scene.center, image_size=512))
    render_s = time.perf_counter() - t0

    budgets = [default_budget, 50_000] + ([] if args.quick else [len(mesh.faces)])
    rows = []
    for budget in budgets:
        t0 = time.perf_counter()
        uv_mesh = unwrap_uv(mesh, texture_size=size, max_faces=budget)
        t1 = time.perf_counter()
        baked = bake_texture(uv_mesh, views, size, depth_tolerance=0.02)
        t2 = time.perf_counter()
        rows.append(
            {
                "budget": budget,
                "faces": len(uv_mesh.faces),
                "unwrap_s": t1 - t0,
                "bake_s": t2 - t1,
                "total_s": t2 - t0,
                "seen": baked.seen_fraction,
                "err": texture_error(scene, uv_mesh, baked.image),
            }
        )

    base = rows[-1]["total_s"] if not args.quick else None
    print(
        f"input mesh: {len(mesh.faces)} faces; texture {size}²; 32 views at 512² rendered in {render_s:.2f} s"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'budget':>8} {'faces':>7} {'unwrap s':>9} {'bake s':>7} {'total s':>8} "
        f"{'vs 100k':>8} {'seen':>6} {'err':>7}"
    )
    for r in rows:
        ratio = f"{r['total_s'] / base:.2f}" if base else "-"
        print(
            f"{r['budget']:>8} {r['faces']:>7} {r['unwrap_s']:>9.2f} {r['bake_s']:>7.2f} "
            f"{r['total_s']:>8.2f} {ratio:>8} {r['seen']:>6.3f} {r['err']:>7.4f}"
        )
    default = rows[0]
    result = {
        "unwrap_bake_s_100k_1024": round(default["total_s"], 2),
        "unwrap_s": round(default["unwrap_s"], 2),
        "bake_s": round(default["bake_s"], 2),
        "faces_after_budget": default["faces"],
        "texture_err": round(default["err"], 4),
        "input_faces": len(mesh.faces),
        "texture_size": size,
        "budget_50k_total_s": round(rows[1]["total_s"], 2),
    }
    if base:
        result["no_decimation_total_s"] = round(base, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
