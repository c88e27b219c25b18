"""Reconstruction benchmark on a posed image set (e.g. the NeRF-synthetic lego at 200 px).

    .venv/bin/python bench/video_recon.py --data /work/shared/data/lego-200 --steps 600

Loads ``transforms_train.json`` (or any input ``sds3d reconstruct`` takes), holds out every 8th view,
fits 3D Gaussians from random initialisation on the CPU and prints, as its last line,
``{"psnr": held-out PSNR, "ssim": ..., "seconds": wall time of load + fit + evaluation}``.
Published full-resolution references on lego: 3DGS ~35.8 dB after 30k GPU steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="a transforms.json folder, video or COLMAP folder"
    )
    parser.add_argument("--steps", type=int, default=600, help="optimization steps (sets the CPU budget)")
    parser.add_argument("--resolution", type=int, default=0, help="longer image side (0: as stored)")
    parser.add_argument("--holdout-every", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from recon.pipelines.video_recon import reconstruct, reconstruct_config

    config = reconstruct_config(steps=args.steps, resolution=args.resolution, seed=args.seed,
                                holdout_every=args.holdout_every)  # fmt: skip
    config.progress_bar = False
    config.export_formats = ()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sds3d-bench-") as tmp:
        run_dir = reconstruct(args.data, config, run_dir=Path(tmp) / "run", export=False)
        metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = time.perf_counter() - started
    print(f"views: {metrics['n_train']} train / {metrics['n_test']} held out at {metrics['image_size']}, "
          f"{metrics['num_gaussians']} Gaussians, {args.steps} steps")  # fmt: skip
    print(json.dumps({"psnr": round(metrics["test"]["psnr"], 3), "ssim": round(metrics["test"]["ssim"], 4),
                      "seconds": round(seconds, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
