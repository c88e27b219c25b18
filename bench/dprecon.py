"""DP-Recon ablation on procedural rooms: reconstruction only vs uniform SDS vs visibility-weighted SDS.

    .venv/bin/python bench/dprecon.py                       # 2 scenes (seeds 101, 102), 10 views each
    .venv/bin/python bench/dprecon.py --seeds 101 --recon-steps 600 --refine-steps 200

For each seed a procedural room (``recon.data.scene_synth``: 4 objects, one partly behind another, 10
views along the front of the room, 4 held-out views between them; seeds the tests do not use) is
written, then reconstructed four times with ``recon.pipelines.dprecon``: ``sds="none"`` (the same
refine steps without SDS), ``"uniform"`` (SDS weight 1 on every pixel), ``"visibility"`` (DP-Recon's
per-pixel weights, as released and by default) and ``vis_free`` (the same with an empty pixel weighted
by the visibility of the space its ray crosses, ``empty_visibility="free-space"``). The
reconstruction stage is run once per scene and shared (its checkpoint and object boxes are copied into
the other runs, which resume from them), so the variants differ only in their refine stage. Per
object it prints Chamfer-L1, F-score at 5 % of the object's size and completeness (the share of the
true surface within that distance of the reconstruction) — also for the partly hidden objects alone
(some view sees under 90 % of their silhouette) — and the PSNR of the held-out views. The last line is
JSON with the medians over objects / held-out views: ``completeness_{recon,uniform,vis,vis_free}``,
``fscore_*``, ``chamfer_*``, ``psnr_*``, ``completeness_hidden_*``
and ``median_s``, the median over scenes of one visibility-weighted run's seconds (reconstruction +
visibility grid + refine + evaluation: what ``sds3d reconstruct --pipeline dprecon`` costs without the
export), and ``load``, the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.openmp import openmp_env  # noqa: E402 - before torch loads its OpenMP runtime

os.environ.update(openmp_env())

import torch  # noqa: E402

VARIANTS = {
    "recon": {"sds": "none"},
    "uniform": {"sds": "uniform"},
    "vis": {"sds": "visibility"},  # the default: an empty pixel has visibility 0, as released
    "vis_free": {"sds": "visibility", "empty_visibility": "free-space"},  # the free space of its ray
}


def run_scene(seed: int, args: argparse.Namespace, root: Path) -> dict:
    from recon.data.scene import load_instance_scene
    from recon.data.scene_synth import (
        SceneSynthConfig,
        load_ground_truth,
        occlusion_fractions,
        scene_from_description,
        synth_scene,
    )
    from recon.pipelines.dprecon import DPReconConfig, reconstruct
    from recon.runs import save_config

    scene_dir = root / f"scene-{seed}"
    if not scene_dir.is_dir():
        synth_scene(
            scene_dir,
            SceneSynthConfig(
                num_objects=args.objects, num_views=args.views, eval_views=4, seed=seed, width=args.width,
                height=args.height,
            ),
        )  # fmt: skip
    gt = load_ground_truth(scene_dir)
    views = load_instance_scene(scene_dir)
    frac = occlusion_fractions(scene_from_description(gt.description), views.cameras)
    ids = [int(i) for i in gt.description["objects"]]
    hidden = {i for k, i in enumerate(ids) if float(frac[k].nan_to_num(1.0).min()) < 0.9}
    base = DPReconConfig(
        scene=str(scene_dir), seed=seed, recon_steps=args.recon_steps, refine_steps=args.refine_steps,
        rays_per_step=args.rays, progress_bar=False,
    )  # fmt: skip
    out: dict = {"seed": seed, "objects": {}, "hidden": sorted(hidden), "variants": {}}
    first = None
    for name, overrides in VARIANTS.items():
        run_dir = root / f"run-{seed}-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        config = replace(base, **overrides)
        started = time.perf_counter()
        if first is None:
            reconstruct(config=config, run_dir=run_dir, export_result=False)
            first = run_dir
        else:  # the shared reconstruction: resume from its checkpoint and object boxes
            (run_dir / "ckpt").mkdir(parents=True)
            shutil.copy(first / "ckpt" / "last.pt", run_dir / "ckpt" / "last.pt")
            shutil.copy(first / "objects.json", run_dir / "objects.json")
            save_config(config, run_dir, "dprecon")
            reconstruct(resume=run_dir, export_result=False)
        wall = time.perf_counter() - started
        metrics = json.loads((run_dir / "metrics.json").read_text())
        stages = metrics["stages"]
        recon_s = stages["recon"]["seconds"]
        total = metrics["seconds"] if name == "recon" else metrics["seconds"] + recon_s
        out["variants"][name] = {
            "psnr_views": metrics.get("psnr_eval", {}).get("views", []),
            "objects": metrics.get("objects", {}),
            "seconds": total,
            "wall": wall,
            "refine_s": stages.get("refine", {}).get("seconds", 0.0),
        }
        log.info("seed %d %s: %.0f s (refine %.0f s)", seed, name, total, out["variants"][name]["refine_s"])
    return out


log = logging.getLogger("bench.dprecon")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102])
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--recon-steps", type=int, default=1000)
    parser.add_argument("--refine-steps", type=int, default=300)
    parser.add_argument("--rays", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-dprecon"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_scene(seed, args, args.out) for seed in args.seeds]

    summary: dict = {}
    print(f"\n{'seed':>4} {'id':>3} {'object':<34} {'hid':>3} " + " ".join(f"{v:>22}" for v in VARIANTS))
    print(f"{'':>46}" + " ".join(f"{'CD / F / compl':>22}" for _ in VARIANTS))
    for r in results:
        for iid, obj in r["variants"]["recon"]["objects"].items():
            cells = []
            for v in VARIANTS:
                o = r["variants"][v]["objects"][iid]
                cd = "-" if o["chamfer_l1"] is None else f"{o['chamfer_l1']:.3f}"
                cells.append(f"{cd:>6} / {o['fscore']:.2f} / {o['completeness']:.2f}")
            mark = "yes" if int(iid) in r["hidden"] else ""
            print(
                f"{r['seed']:>4} {iid:>3} {obj.get('caption', ''):<34} {mark:>3} "
                + " ".join(f"{c:>22}" for c in cells)
            )
    for v in VARIANTS:
        objs = [
            (r, iid, r["variants"][v]["objects"][iid]) for r in results for iid in r["variants"][v]["objects"]
        ]
        summary[f"completeness_{v}"] = statistics.median(o["completeness"] for _, _, o in objs)
        summary[f"fscore_{v}"] = statistics.median(o["fscore"] for _, _, o in objs)
        cds = [o["chamfer_l1"] for _, _, o in objs if o["chamfer_l1"] is not None]
        summary[f"chamfer_{v}"] = statistics.median(cds) if cds else None
        hid = [o["completeness"] for r, iid, o in objs if int(iid) in r["hidden"]]
        summary[f"completeness_hidden_{v}"] = statistics.median(hid) if hid else None
        summary[f"psnr_{v}"] = statistics.median(p for r in results for p in r["variants"][v]["psnr_views"])
    for v in VARIANTS:
        print(
            f"{v:>12}: completeness {summary[f'completeness_{v}']:.3f} (hidden objects "
            f"{summary[f'completeness_hidden_{v}'] or 0:.3f}), F {summary[f'fscore_{v}']:.3f}, "
            f"Chamfer {summary[f'chamfer_{v}'] or float('nan'):.4f}, "
            f"held-out PSNR {summary[f'psnr_{v}']:.2f} dB"
        )
    summary["median_s"] = statistics.median(r["variants"]["vis"]["seconds"] for r in results)
    summary["scenes"] = len(results)
    summary["steps"] = [args.recon_steps, args.refine_steps]
    summary["load"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "scenes": results}, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
