"""Reconstruction benchmark on a posed image set (e.g. the NeRF-synthetic lego at 200 px).

    .venv/bin/python bench/video_recon.py --data /work/shared/data/lego-200 --steps 600
    .venv/bin/python bench/video_recon.py --data /work/shared/data/lego-200 --representation nerf

Loads ``transforms_train.json`` (or any input ``sds3d reconstruct`` takes), holds out every 8th view,
fits 3D Gaussians from random initialisation (or, with ``--representation nerf``, a NeRF density
field: by default 120 steps of 1024 rays, about the fit time of 600 Gaussian steps) on the CPU and
prints, as its last line, ``{"representation": ..., "psnr": held-out PSNR, "ssim": ..., "seconds":
wall time of load + fit + evaluation, "steps": ..., "omp_wait_policy": ...}``. The OpenMP wait policy
is chosen from the load as ``sds3d`` does (app/openmp.py). Published full-resolution references on
lego: 3DGS ~35.8 dB after 30k GPU steps, NeRF 32.5 dB, DVGO 34.6 dB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.openmp import openmp_env  # noqa: E402 - before torch loads its OpenMP runtime

os.environ.update(openmp_env())

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="a transforms.json folder, video or COLMAP folder"
    )
    parser.add_argument("--representation", choices=("gaussians", "nerf"), default="gaussians")
    parser.add_argument(
        "--steps", type=int, default=0, help="optimization steps (the CPU budget; 0: 600 Gaussians, 120 NeRF)"
    )
    parser.add_argument("--rays", type=int, default=1024, help="NeRF rays per step (0: the config's, 4096)")
    parser.add_argument("--resolution", type=int, default=0, help="longer image side (0: as stored)")
    parser.add_argument("--holdout-every", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from recon.pipelines.video_recon import reconstruct, reconstruct_config

    steps = args.steps or (600 if args.representation == "gaussians" else 120)
    config = reconstruct_config(
        steps=steps, resolution=args.resolution, seed=args.seed, holdout_every=args.holdout_every,
        representation=args.representation,
    )  # fmt: skip
    if args.rays:
        config.nerf_rays_per_step = args.rays
    config.progress_bar = False
    config.export_formats = ()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sds3d-bench-") as tmp:
        run_dir = reconstruct(args.data, config, run_dir=Path(tmp) / "run", export=False)
        metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = time.perf_counter() - started
    if args.representation == "gaussians":
        model = f"{metrics['num_gaussians']} Gaussians"
    else:
        model = (f"NeRF {config.nerf.grid_resolution}^3 x {config.nerf.features} grid, box half side "
                 f"{metrics['nerf_box_radius']:.2f}, {config.nerf_rays_per_step} rays x "
                 f"{config.nerf_samples} samples, {metrics.get('occupied_fraction', 1.0):.3f} of the box "
                 "occupied")  # fmt: skip
    print(f"views: {metrics['n_train']} train / {metrics['n_test']} held out at {metrics['image_size']}, "
          f"{model}, {steps} steps, fit {metrics['stages']['fit']['seconds']:.1f} s")  # fmt: skip
    result = {
        "representation": args.representation, "psnr": round(metrics["test"]["psnr"], 3),
        "ssim": round(metrics["test"]["ssim"], 4), "seconds": round(seconds, 1), "steps": steps,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
