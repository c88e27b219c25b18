"""Image to 3D (DreamCraft3D) on pictures of procedural objects: silhouettes and PSNR against the truth.

For each object of the embedded world (:mod:`recon.data.objects`; ``kind:color`` or
``kind:color:secondary:pattern``) the bench renders a side-on reference picture with the exact
renderer (a view the priors never trained on: their banks draw random cameras), runs the pipeline
once per variant, and judges the exported textured mesh against the ground-truth renders:
silhouette IoU over 8 novel views (a turntable at elevation 15°), PSNR at the reference view (one
sample a pixel against the picture cut at its mask; and ``ref_psnr_aa``: 4×4 samples a pixel, as a
viewer antialiases, against the picture itself), and PSNR over the novel views (white background).
Variants, in one run: ``full`` (view-conditioned prior + BSD texture), ``noview`` (no
view-conditioned prior: text SDS and the reference only) and ``sds`` (the texture stage with plain
SDS — DreamCraft3D's ablation of bootstrapping).

    python bench/image_to_3d.py --objects cone:red torus:blue mug:green sphere:blue:white:striped

Last line: JSON with ``iou_median``, ``ref_psnr_median``, ``novel_psnr_median`` (full variant),
``bsd_gain_db`` (median novel-view PSNR of full minus sds), ``view_gain_iou`` (median IoU of full
minus noview) and ``median_s``.
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
import torch.nn.functional as F


def parse_object(spec: str):
    """``kind:color`` or ``kind:color:secondary:pattern`` -> a ProceduralObject."""
    from recon.data.objects import ProceduralObject

    parts = spec.split(":")
    if len(parts) == 2:
        return ProceduralObject(parts[0], parts[1])
    if len(parts) == 4:
        return ProceduralObject(parts[0], parts[1], parts[2], parts[3])
    raise SystemExit(f"bad object {spec!r}: use kind:color or kind:color:secondary:pattern")


def render_truth(obj, cams) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rgb [C, H, W, 3], alpha [C, H, W, 1])`` of the exact object."""
    from recon.data.objects import render_object

    out = render_object(obj, cams)
    return out.rgb, out.alpha


def _picture(path: Path, obj, size: int = 128) -> Path:
    from PIL import Image

    from recon.cameras import cameras_from_spherical

    one = torch.ones(1)
    cams = cameras_from_spherical(one * 0, one * 0, one * 3, one * 40, size, size)
    rgb, alpha = render_truth(obj, cams)
    img = np.concatenate([rgb[0].numpy(), alpha[0].reshape(size, size, 1).numpy()], -1)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    from recon.metrics import psnr

    return float(psnr(a.clamp(0, 1), b.clamp(0, 1)))


def _fill(mask) -> float:
    """Long side of the mask's box as a share of the frame."""
    rows, cols = np.nonzero(np.asarray(mask))
    return max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / np.asarray(mask).shape[0]


def _moved(cams, scale: float, shift: torch.Tensor):
    """Cameras that see the true object as ``cams`` see it scaled by ``scale`` and moved by ``shift``.

    A similarity ``X -> s X + t`` applied to object and camera together leaves the picture unchanged,
    so the fitted object (the truth scaled and moved by the recentring) seen from ``p`` is the truth
    seen from ``(p - t) / s`` with the same orientation and intrinsics.
    """
    from dataclasses import replace

    c2w = cams.camera_to_worlds.clone()
    c2w[:, :3, 3] = (c2w[:, :3, 3] - shift) / scale
    return replace(cams, camera_to_worlds=c2w)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    return (a & b).sum(-1) / (a | b).sum(-1).clamp_min(1)


def alignment(obj, config, ref_mask: torch.Tensor, k: float) -> tuple[float, torch.Tensor]:
    """The similarity (scale, shift) that maps the true object onto the recentred reference picture.

    Starts from ``k`` = recentred fill / picture fill and the shift that brings the true silhouette's
    box centre to the frame centre, then refines both on a small grid by silhouette IoU at the
    reference view (the recentring is a 2D crop, only approximately a 3D similarity under perspective).
    """
    from recon.pipelines.dreamcraft3d import reference_camera

    size = ref_mask.shape[-1]
    cam = reference_camera(config, size)
    c2w = cam.camera_to_worlds[0]
    right, up = c2w[:3, 0], c2w[:3, 1]
    target = ref_mask > 0.5
    pixel = 2.0 * config.camera_distance * float(np.tan(np.radians(config.fov_deg) / 2)) / size

    def fit(scale: float, shift: torch.Tensor) -> float:
        _, alpha = render_truth(obj, _moved(cam, scale, shift))
        return float(_iou(alpha[..., 0] > 0.5, target[None])[0])

    # Initial shift: centre the true silhouette's box (seen at the scaled size) in the frame.
    _, alpha = render_truth(obj, _moved(cam, k, torch.zeros(3)))
    rows, cols = np.nonzero(alpha[0, ..., 0].numpy() > 0.5)
    du = (cols.min() + cols.max() + 1) / 2 - size / 2
    dv = (rows.min() + rows.max() + 1) / 2 - size / 2
    best = (k, -right * du * pixel + up * dv * pixel)
    best_iou = fit(*best)
    for step in (2.0, 1.0, 0.5):
        improved = True
        while improved:
            improved = False
            scale, shift = best
            for ds, dx, dy in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]:
                cand = (scale * (1 + 0.02 * step * ds), shift + (right * dx + up * dy) * step * pixel)
                value = fit(*cand)
                if value > best_iou + 1e-4:
                    best, best_iou, improved = cand, value, True
    return best


def _save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    Image.fromarray((image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)


def judge(run: Path, obj, config, picture_fill: float, sheet: Path | None = None) -> dict[str, float]:
    """IoU / PSNR of the run's textured mesh against the exact renders.

    The picture is recentred (the object's long side at 0.9 of the frame), so the fitted object is
    the true one scaled and moved; :func:`alignment` finds that similarity at the reference view and
    the truth is rendered from correspondingly moved cameras (:func:`_moved`). ``sheet``: where to save a
    PNG of the truth (top) over the prediction, at the reference view and the 8 novel views.
    """
    from recon.render.mesh import TexturedMesh
    from recon.train import read_checkpoint

    state = read_checkpoint(run / "texture" / "ckpt" / "last.pt")["modules"]["texture"]["state"]
    return judge_mesh(TexturedMesh.from_checkpoint_state(state), obj, config, picture_fill, sheet)


def judge_mesh(mesh, obj, config, picture_fill: float, sheet: Path | None = None) -> dict[str, float]:
    """:func:`judge` of a :class:`~recon.render.mesh.TexturedMesh` (e.g. a run's initial texture)."""
    from recon.cameras import orbit_cameras
    from recon.data.reference import ReferenceConfig, load_reference
    from recon.pipelines.dreamcraft3d import reference_camera

    size = config.reference_size
    ref = load_reference(config.image, ReferenceConfig(size=size))
    k = _fill(ref.mask.numpy() > 0.5) / picture_fill
    scale, shift = alignment(obj, config, ref.mask, k)
    orbit = orbit_cameras(
        8, elevation_deg=15.0, distance=config.camera_distance, fov_deg=config.fov_deg, width=size,
        height=size, azimuth_start_deg=22.5,
    )  # fmt: skip
    with torch.no_grad():
        out = mesh(reference_camera(config, size), background=1.0)
        inside = (ref.mask > 0.5)[..., None]
        ref_psnr = _psnr(out.rgb[0], torch.where(inside, ref.rgb, torch.ones_like(ref.rgb)))
        # As a viewer shows it (4×4 samples a pixel) against the picture itself (soft outline).
        fine = mesh(reference_camera(config, size * 4), background=1.0).rgb.clamp(0, 1)
        ref_psnr_aa = _psnr(F.avg_pool2d(fine.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)[0], ref.rgb)
        truth_rgb, truth_alpha = render_truth(obj, _moved(orbit, scale, shift))
        pred = mesh(orbit, background=1.0)
    iou = float(_iou(pred.alpha[..., 0] > 0.5, truth_alpha[..., 0] > 0.5).mean())
    novel = statistics.mean(_psnr(pred.rgb[i], truth_rgb[i]) for i in range(len(orbit)))
    if sheet is not None:  # rows: truth, prediction; columns: reference, then the 8 novel views
        ref_truth = torch.where(inside, ref.rgb, torch.ones_like(ref.rgb))
        top = torch.cat([ref_truth, *truth_rgb], 1)
        bottom = torch.cat([out.rgb[0], *pred.rgb], 1)
        _save_png(sheet, torch.cat([top, bottom], 0))
    return {
        "iou": iou,
        "ref_psnr": ref_psnr,
        "ref_psnr_aa": ref_psnr_aa,
        "novel_psnr": novel,
        "truth_ref_iou": _truth_iou(obj, config, ref.mask, scale, shift),
    }


def _truth_iou(obj, config, ref_mask, scale, shift) -> float:
    """How well the aligned truth matches the reference picture's mask (the alignment's own error)."""
    from recon.pipelines.dreamcraft3d import reference_camera

    _, alpha = render_truth(obj, _moved(reference_camera(config, ref_mask.shape[-1]), scale, shift))
    return float(_iou(alpha[..., 0] > 0.5, (ref_mask > 0.5)[None])[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--objects",
        nargs="+",
        default=["cone:red", "torus:blue", "mug:green", "duck:yellow", "sphere:blue:white:striped"],
    )
    parser.add_argument("--variants", nargs="+", default=["full", "noview", "sds"])
    parser.add_argument("--steps", type=int, default=0, help="total steps (0: the preset's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--view-prior", default="", help="the view-conditioned prior (default: the preset's, embedded)"
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="keep the runs here, with a PNG per object and variant (truth over prediction); default: a "
        "temporary folder",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dataclasses import replace

    from recon.pipelines import generate
    from recon.presets import load_preset

    _, base = load_preset("dreamcraft3d")
    if args.view_prior:
        base = replace(base, view_prior=args.view_prior)
    rows, seconds = [], []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = str(args.out) if args.out is not None else scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for obj in args.objects:
            target = parse_object(obj)
            image = _picture(Path(tmp) / f"{obj.replace(':', '-')}.png", target)
            from PIL import Image

            picture_fill = _fill(np.asarray(Image.open(image))[..., 3] > 127)
            for variant in args.variants:
                cfg = replace(
                    base, image=str(image), steps=args.steps, seed=args.seed, progress_bar=False,
                    texture_guidance="sds" if variant == "sds" else "bsd",
                    view_prior="none" if variant == "noview" else base.view_prior,
                )  # fmt: skip
                start = time.perf_counter()
                run = generate(cfg, "dreamcraft3d", Path(tmp) / variant)
                elapsed = time.perf_counter() - start
                row = {
                    "object": obj,
                    "variant": variant,
                    **judge(
                        run,
                        target,
                        cfg,
                        picture_fill,
                        Path(tmp) / f"{obj.replace(':', '-')}-{variant}.png" if args.out else None,
                    ),  # fmt: skip
                    "s": elapsed,
                }
                rows.append(row)
                if variant == "full":
                    seconds.append(elapsed)
                print(
                    f"{obj:14s} {variant:5s} iou {row['iou']:.3f} ref {row['ref_psnr']:.2f} dB "
                    f"(aa {row['ref_psnr_aa']:.2f}) "
                    f"novel {row['novel_psnr']:.2f} dB {elapsed:.0f} s",
                    flush=True,
                )
    full = [r for r in rows if r["variant"] == "full"]
    sds = {r["object"]: r for r in rows if r["variant"] == "sds"}
    noview = {r["object"]: r for r in rows if r["variant"] == "noview"}
    gains = [r["novel_psnr"] - sds[r["object"]]["novel_psnr"] for r in full if r["object"] in sds]
    view_gains = [r["iou"] - noview[r["object"]]["iou"] for r in full if r["object"] in noview]
    print(
        json.dumps(
            {
                "iou_median": round(statistics.median(r["iou"] for r in full), 3),
                "ref_psnr_median": round(statistics.median(r["ref_psnr"] for r in full), 2),
                "ref_psnr_aa_median": round(statistics.median(r["ref_psnr_aa"] for r in full), 2),
                "novel_psnr_median": round(statistics.median(r["novel_psnr"] for r in full), 2),
                "bsd_gain_db": round(statistics.median(gains), 2) if gains else None,
                "view_gain_iou": round(statistics.median(view_gains), 3) if view_gains else None,
                "novel_psnr_noview_median": (
                    round(statistics.median(r["novel_psnr"] for r in noview.values()), 2) if noview else None
                ),
                "novel_psnr_sds_median": (
                    round(statistics.median(r["novel_psnr"] for r in sds.values()), 2) if sds else None
                ),
                "median_s": round(statistics.median(seconds), 1),
                "objects": args.objects,
                "steps": args.steps or "preset",
                "view_prior": base.view_prior,
            }
        )
    )


if __name__ == "__main__":
    main()
