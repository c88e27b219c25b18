"""Forward+backward time of the CPU volume renderer (occupancy skipping) vs the dense reference, same run.

Scene: a :class:`~recon.fields.DensityField` with a 128³ feature grid over ``[-1, 1]^3`` whose blob
bias (radius 0.576, density 20) makes an object of about a tenth of the box's volume; the occupancy
grid (64³) is rebuilt from it once (threshold 0.01, as threestudio). Rays: 4 orbit cameras at 32²
(4096 rays), 128 samples per ray, stratified. The loss is an MSE against a fixed random image; the
time covers the render and the backward into the field's parameters. Both paths are measured in
this process, alternating inside each repeat (the machine is noisy; compare ratios).

Usage: OMP_WAIT_POLICY=PASSIVE python bench/volume.py [--quick] [--repeats N] [--threads T]
Prints a table, then as its LAST line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from recon.cameras import orbit_cameras
from recon.data.procedural import camera_rays
from recon.fields import DensityField, DensityFieldConfig
from recon.render.volume import OccupancyGrid, render_rays, render_rays_reference


def make_scene(resolution: int = 128, features: int = 8, hidden: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    field = DensityField(
        DensityFieldConfig(
            grid_resolution=resolution, features=features, hidden=hidden, blob_density=20.0, blob_radius=0.576
        )
    )
    occ = OccupancyGrid(field.aabb, resolution=64)
    occ.rebuild(field, threshold=0.01, samples_per_cell=2, generator=torch.Generator().manual_seed(seed))
    cams = orbit_cameras(4, elevation_deg=20.0, distance=2.6, fov_deg=50.0, width=32, height=32)
    o, d, _ = camera_rays(cams)
    return field, occ, o.reshape(-1, 3), d.reshape(-1, 3)


def _once(path: str, field, occ, o, d, target, num_samples: int) -> tuple[float, float, dict]:
    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    if path == "cpu":
        out = render_rays(field, o, d, num_samples, stratified=True, generator=g, occupancy=occ)
    else:
        out = render_rays_reference(field, o, d, num_samples, stratified=True, generator=g)
    t1 = time.perf_counter()
    (out.rgb - target).square().mean().backward()
    t2 = time.perf_counter()
    field.zero_grad(set_to_none=True)
    return t1 - t0, t2 - t0, out.meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats

    field, occ, o, d = make_scene(features=args.features, hidden=args.hidden)
    target = torch.rand(o.shape[0], 3, generator=torch.Generator().manual_seed(2))
    times: dict[str, list[tuple[float, float]]] = {"cpu": [], "reference": []}
    metas: dict[str, dict] = {}
    for i in range(repeats + 1):
        for path in times:
            fwd, total, metas[path] = _once(path, field, occ, o, d, target, args.samples)
            if i:  # the first round warms up
                times[path].append((fwd, total))
    med = {
        p: (1e3 * statistics.median(t[0] for t in ts), 1e3 * statistics.median(t[1] for t in ts))
        for p, ts in times.items()
    }
    print(f"{'path':>10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'samples evaluated':>18}")
    for p, (f, fb) in med.items():
        print(f"{p:>10} {f:9.1f} {fb:11.1f} {metas[p]['n_samples_evaluated']:>18}")
    result = {
        "rays": int(o.shape[0]),
        "samples_per_ray": args.samples,
        "grid": f"{field.config.grid_resolution}^3x{field.config.features}",
        "hidden": field.config.hidden,
        "occupied_fraction": round(occ.occupied_fraction, 4),
        "evaluated_fraction": round(
            metas["cpu"]["n_samples_evaluated"] / metas["reference"]["n_samples_evaluated"], 4
        ),
        "cpu_fwd_ms": round(med["cpu"][0], 1),
        "cpu_ms": round(med["cpu"][1], 1),
        "reference_ms": round(med["reference"][1], 1),
        "ratio": round(med["reference"][1] / med["cpu"][1], 2),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
