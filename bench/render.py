"""Forward+backward time of the compiled CPU rasterizer vs the pure-PyTorch reference, same run.

Scene: N Gaussians uniform in the unit ball, log-uniform scales in [0.007, 0.035]·(10k/N)^(1/3),
random rotations, opacities U[0.1, 0.9], RGB colors; a batch of 4 orbit cameras at distance 3,
40° FOV. At (10k, 128²) that is ≈0.8M Gaussian–pixel pairs per view, the density measured in
FINDINGS.md. Cases: one camera at (10k, 128²) — the acceptance numbers — and batches of 4 cameras
at (10k, 128²) and (100k, 256²). The loss is ``render.sum() + alpha.sum()``; times are medians over
repeats, both backends measured in this process, alternating (the machine is noisy; compare ratios).

Usage: python bench/render.py [--quick] [--no-1m]
Prints a table, then as its LAST line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import time

import torch

from recon.cameras import orbit_cameras
from recon.render import rasterization


def make_scene(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = direction * torch.rand(n, 1, generator=g) ** (1 / 3)
    shrink = (10_000 / n) ** (1 / 3)
    lo, hi = math.log(0.007 * shrink), math.log(0.035 * shrink)
    scales = torch.exp(torch.empty(n, 3).uniform_(lo, hi, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opacities, colors


def _setup(n: int, res: int, n_cams: int):
    cams = orbit_cameras(n_cams, elevation_deg=20.0, distance=3.0, fov_deg=40.0, width=res, height=res)
    return [t.requires_grad_() for t in make_scene(n)], cams.viewmats(), cams.Ks()


def _once(backend: str, params, viewmats, Ks, res: int) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    render, alphas, meta = rasterization(*params, viewmats, Ks, res, res, backend=backend)
    t1 = time.perf_counter()
    (render.sum() + alphas.sum()).backward()
    t2 = time.perf_counter()
    for p in params:
        p.grad = None
    return t1 - t0, t2 - t0, meta


def compare(n: int, res: int, n_cams: int, backends: tuple[str, ...], repeats: int) -> dict[str, dict]:
    """Median fwd and fwd+bwd times per backend; backends alternate inside each repeat so that
    both see the same machine load."""
    params, viewmats, Ks = _setup(n, res, n_cams)
    times: dict[str, list[tuple[float, float]]] = {b: [] for b in backends}
    meta = None
    for i in range(repeats + 1):
        for b in backends:
            fwd, total, meta = _once(b, params, viewmats, Ks, res)
            if i:  # the first round warms up (and compiles the extension)
                times[b].append((fwd, total))
    radii = meta["radii"].float()
    pairs = float(((2 * radii[..., 0] + 1) * (2 * radii[..., 1] + 1) * (radii > 0).all(-1)).sum()) / n_cams
    return {
        b: {
            "fwd_ms": 1e3 * statistics.median(t[0] for t in ts),
            "fwd_bwd_ms": 1e3 * statistics.median(t[1] for t in ts),
            "pairs": pairs,
        }
        for b, ts in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip the 100k reference")
    parser.add_argument("--no-1m", action="store_true", help="skip the 1M Gaussians at 512² memory check")
    args = parser.parse_args()
    reps = 3 if args.quick else 9
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':<24}{'backend':<8}{'fwd ms':>10}{'fwd+bwd ms':>12}{'pairs/view':>12}")
    result = {}
    cases = [(10_000, 128, 1, ""), (10_000, 128, 4, "_4cams"), (100_000, 256, 4, "_4cams")]
    for n, res, n_cams, suffix in cases:
        backends = ("cpu",) if (args.quick and n > 10_000) else ("cpu", "torch")
        rows = compare(n, res, n_cams, backends, reps if n <= 10_000 else max(2, reps // 3))
        for backend, r in rows.items():
            case = f"{n // 1000}k @ {res}², {n_cams} cam"
            print(f"{case:<24}{backend:<8}{r['fwd_ms']:>10.1f}{r['fwd_bwd_ms']:>12.1f}{r['pairs']:>12.0f}")
        key = f"{n // 1000}k_{res}{suffix}"
        result[f"cpu_ms_fwd_bwd_{key}"] = round(rows["cpu"]["fwd_bwd_ms"], 2)
        if "torch" in rows:
            result[f"torch_ms_fwd_bwd_{key}"] = round(rows["torch"]["fwd_bwd_ms"], 2)
            result[f"ratio_fwd_bwd_{key}"] = round(rows["torch"]["fwd_bwd_ms"] / rows["cpu"]["fwd_bwd_ms"], 2)
    if not args.no_1m:
        r = compare(1_000_000, 512, 1, ("cpu",), 1)["cpu"]
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        case = "1M @ 512², 1 cam"
        print(f"{case:<24}{'cpu':<8}{r['fwd_ms']:>10.1f}{r['fwd_bwd_ms']:>12.1f}{r['pairs']:>12.0f}")
        print(f"peak RSS of this process: {peak_gb:.2f} GB")
        result["cpu_ms_fwd_bwd_1000k_512"] = round(r["fwd_bwd_ms"], 1)
        result["peak_rss_gb"] = round(peak_gb, 2)
    result["threads"] = torch.get_num_threads()
    result["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "default")  # see app/openmp.py
    print(json.dumps(result))


if __name__ == "__main__":
    main()
