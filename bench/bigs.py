"""Benchmark of the BIGS pipeline on procedural hand-object videos (seeds the tests do not use).

For each seed: a sequence from :mod:`recon.data.hands_synth`, then three runs of
:func:`recon.pipelines.bigs.reconstruct_hands` in one process —

* ``main``: one hand Gaussian set shared by both hands, object SDS on (embedded prior on a CPU);
* ``separate``: one set per hand (BIGS's sharing ablation), SDS as ``main``;
* ``nosds``: shared hands, object SDS off (the released default).

Measured: root-aligned MPJPE (mm, 21 keypoints, both hands) of the initial and the refined hand
parameters; the object mesh against the true one in the frame of the first frame after ICP (open3d
point-to-point; Chamfer = sum of the two mean nearest distances in cm, as HOLD's CD; F-score at 10 mm in
%, 20k samples per surface); PSNR on held-out frames (every 6th, poses interpolated: 3 of the default 24
frames; the first runs used 12 frames, one held out): ``psnr`` against the frames themselves (their white
background known from the ground truth), ``psnr_masked`` against the masked frames (white outside the
thresholded masks; the bench's ``psnr`` until 2026-12-08). The last line is JSON: ``mpjpe_init_mm, mpjpe_mm,
object_cd, object_f10, psnr, psnr_separate, psnr_masked, psnr_masked_separate, object_f10_nosds, median_s``
(medians over seeds; ``median_s``: seconds of a ``main`` run).

    python bench/bigs.py --seeds 101 --frames 24 --size 80 --steps 600
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.openmp import openmp_env  # noqa: E402 - before torch loads its OpenMP runtime

os.environ.update(openmp_env())


def object_scores(run: Path, seq: Path) -> dict[str, float]:
    """Chamfer (cm) and F@10mm (%) of the exported object mesh vs the truth, after ICP."""
    import open3d as o3d
    import trimesh

    from recon.metrics import point_cloud_metrics, sample_surface_points

    pred_path = run / "export" / "object.obj"
    if not pred_path.is_file():
        return {"object_cd": float("nan"), "object_f10": 0.0}
    gt = json.loads((seq / "gt" / "gt.json").read_text())["object"]
    truth = trimesh.load(seq / "gt" / "object.obj", force="mesh", process=False)
    R0, t0 = np.asarray(gt["rotations"][0]), np.asarray(gt["translations"][0])
    truth.vertices = truth.vertices @ R0.T + t0  # the object's frame -> the world at frame 0
    pred = trimesh.load(pred_path, force="mesh", process=False)
    p, _ = sample_surface_points(pred, 20_000, 0)
    g, _ = sample_surface_points(truth, 20_000, 1)
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(p, dtype=np.float64)))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(g, dtype=np.float64)))
    icp = o3d.pipelines.registration.registration_icp(
        src, dst, 0.02, np.eye(4), o3d.pipelines.registration.TransformationEstimationPointToPoint(),
        o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=600),
    )  # fmt: skip
    T = icp.transformation
    aligned = np.asarray(p) @ T[:3, :3].T + T[:3, 3]
    m = point_cloud_metrics(aligned, g, thresholds=(0.01,))
    return {"object_cd": 100 * (m.accuracy + m.completeness), "object_f10": 100 * m.fscore[0.01]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[101])
    parser.add_argument("--frames", type=int, default=24, help="24: 3 held-out frames (12 held out one)")
    parser.add_argument("--size", type=int, default=80)
    parser.add_argument("--steps", type=int, default=150, help="hands and object stage steps (joint: half)")
    parser.add_argument("--sds-weight", type=float, default=0.001)
    parser.add_argument("--sds-every", type=int, default=10, help="object steps between SDS evaluations")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from recon.data.hands_synth import HandsSynthConfig, write_synth_sequence
    from recon.pipelines.bigs import BigsConfig, reconstruct_hands

    root = Path(tempfile.mkdtemp(prefix="bench-bigs-")) if args.out is None else args.out
    rows = []
    for seed in args.seeds:
        seq = write_synth_sequence(
            root / f"seq-{seed}", HandsSynthConfig(frames=args.frames, size=args.size, seed=seed)
        )
        base = BigsConfig(
            hand_steps=args.steps, object_steps=args.steps, joint_steps=max(args.steps // 2, 1),
            refit_steps=max(args.steps // 2, 1),
            progress_bar=False, seed=seed, sds_weight=args.sds_weight, sds_every=args.sds_every,
            mesh_faces=6000, video=False,
        )  # fmt: skip
        variants = {
            "main": base,
            "separate": BigsConfig(**{**base.__dict__, "shared_hands": False}),
            "nosds": BigsConfig(**{**base.__dict__, "sds_weight": 0.0}),
        }
        row: dict[str, float] = {"seed": seed}
        for name, config in variants.items():
            started = time.perf_counter()
            run = reconstruct_hands(seq, config, out_root=root / name)
            seconds = time.perf_counter() - started
            metrics = json.loads((run / "metrics.json").read_text())
            scores = object_scores(run, seq)
            row[f"{name}_psnr"] = metrics["test"]["psnr"]
            row[f"{name}_psnr_masked"] = metrics["test"]["psnr_masked"]
            row[f"{name}_mpjpe_init_mm"] = metrics["mpjpe_init_mm"]
            row[f"{name}_mpjpe_mm"] = metrics["mpjpe_mm"]
            row[f"{name}_object_cd"] = scores["object_cd"]
            row[f"{name}_object_f10"] = scores["object_f10"]
            row[f"{name}_seconds"] = seconds
            print(
                f"seed {seed} {name:8s} psnr {row[f'{name}_psnr']:.2f} dB"
                f" (masked {row[f'{name}_psnr_masked']:.2f})"
                f"  mpjpe {metrics['mpjpe_init_mm']:.1f}"
                f" -> {metrics['mpjpe_mm']:.1f} mm  object CD {scores['object_cd']:.2f} cm"
                f"  F@10mm {scores['object_f10']:.1f}%  {seconds:.0f} s",
                flush=True,
            )
        rows.append(row)

    def med(key: str) -> float:
        return round(float(statistics.median(r[key] for r in rows)), 3)

    print(f"runs in {root}")
    print(
        json.dumps(
            {
                "mpjpe_init_mm": med("main_mpjpe_init_mm"),
                "mpjpe_mm": med("main_mpjpe_mm"),
                "object_cd": med("main_object_cd"),
                "object_f10": med("main_object_f10"),
                "psnr": med("main_psnr"),
                "psnr_separate": med("separate_psnr"),
                "psnr_masked": med("main_psnr_masked"),
                "psnr_masked_separate": med("separate_psnr_masked"),
                "object_f10_nosds": med("nosds_object_f10"),
                "median_s": med("main_seconds"),
            }
        )
    )


if __name__ == "__main__":
    main()
