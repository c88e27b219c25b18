"""Benchmark of the Zero-1-to-A avatar pipeline on procedural portraits of identities no prior has seen.

For each seed: an anny head (random shape, skin, hair, iris, hairline: :mod:`recon.data.heads_synth`)
photographed near-frontally with a mild expression (the portrait, 256², its mask and its 51 landmarks
with ~1 px detector noise), then three runs of :func:`recon.pipelines.zero1toa.run_avatar` in one process:

* ``symgen``: the pseudo-ground-truth clip dataset + progressive learning (the method);
* ``sds``: direct video score distillation along the same curriculum (the paper's ablation);
* ``portrait``: the portrait fit alone (no video stage): what the video prior adds is measured against it.

Measured against ground-truth renders of the true head (the clips' framing, 256²), the avatar seen by the
same cameras after the similarity that best maps its neutral landmarks onto the truth's (one portrait fixes a
head only up to scale: a larger head farther away looks the same):

* ``psnr`` / ``ssim``: novel views (azimuth ±30°, ±60°) × novel expressions (smile, surprise, frown,
  an open jaw);
* ``identity``: 1 − the mean absolute RGB error over the pixels both heads cover in those renders (colour
  identity), and ``identity_betas``: RMS of (fitted − true) shape coefficients (the re-fit's head
  parameters);
* ``temporal``: frame-to-frame consistency of a driven clip (the built-in "talk" sequence, 24 frames,
  front view): the mean absolute difference between the avatar's frame-to-frame change and the truth's
  (the warp error with the known correspondence; lower is better);
* ``fps``: renders per second of the avatar at 256² (deform + rasterize, this machine's CPU path).
* ``psnr_shape_bound``: the PSNR the avatar would reach with perfect colours: its renders with the
  truth's colours pasted wherever both heads cover, so only the silhouettes' disagreement is left (the
  shape's ceiling on ``psnr``).

The last line is JSON with flat keys ``psnr, psnr_direct_sds, psnr_portrait, ssim, ssim_direct_sds,
identity, identity_direct_sds, identity_betas, temporal, temporal_direct_sds, fps, median_s,
median_s_direct_sds, psnr_shape_bound`` (medians over seeds; ``median_s``: seconds of a ``symgen`` run).

    python bench/avatar.py --seeds 901 902 --steps 600
"""

from __future__ import annotations

import argparse
import json
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

import torch  # noqa: E402

EVAL_AZIMUTHS = (-60.0, -30.0, 30.0, 60.0)
EVAL_EXPRESSIONS = ("smile", "surprise", "frown", "jaw")


def make_portrait(seed: int, model, size: int = 256) -> dict:
    """A ground-truth head and its near-frontal portrait (image, mask, noisy landmarks, focal)."""
    from recon.data.head_clips import clip_cameras, head_params, named_expression, render_frames
    from recon.data.heads_synth import draw_identity, head_albedo

    rng = np.random.default_rng(seed)
    identity = draw_identity(model, rng)
    betas, transl = head_params(model, identity)
    albedo = head_albedo(model, identity, betas)
    name = ("smile", "surprise", "frown")[int(rng.integers(3))]
    expr, jaw = named_expression(model, name, float(rng.uniform(0.0, 0.4)))
    cam = clip_cameras(torch.tensor([rng.uniform(-10, 10)]), torch.tensor([rng.uniform(0, 10)]), size)
    frames, masks, marks = render_frames(model, betas, transl, albedo, cam, expr[None], jaw[None])
    noisy = marks[0] + torch.as_tensor(rng.normal(0, 1.0, marks[0].shape), dtype=torch.float32)
    return {"image": frames[0].numpy(), "mask": (masks[0] > 0.5).numpy(), "landmarks": noisy.numpy(),
            "focal": float(cam.fx[0]), "betas": betas, "transl": transl, "albedo": albedo}  # fmt: skip


def eval_params(model, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    from recon.data.head_clips import named_expression

    if name == "jaw":
        jaw = torch.zeros(3)
        jaw[0] = 0.25
        return torch.zeros(model.num_expressions), jaw
    return named_expression(model, name, 0.9)


def truth_renders(gt: dict, model, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[A·X, S, S, 3]`` ground-truth renders and coverages over the evaluation grid."""
    from recon.data.head_clips import clip_cameras, render_frames

    frames, masks = [], []
    for az in EVAL_AZIMUTHS:
        cams = clip_cameras(
            torch.full((len(EVAL_EXPRESSIONS),), az), torch.full((len(EVAL_EXPRESSIONS),), 5.0), size
        )
        ex = [eval_params(model, n) for n in EVAL_EXPRESSIONS]
        f, m, _ = render_frames(model, gt["betas"], gt["transl"], gt["albedo"], cams,
                                torch.stack([e for e, _ in ex]), torch.stack([j for _, j in ex]))  # fmt: skip
        frames.append(f)
        masks.append(m)
    return torch.cat(frames), torch.cat(masks)


def similarity_to_truth(avatar, portrait, gt: dict, model) -> tuple[float, torch.Tensor, torch.Tensor]:
    """``(s, R, t)`` with ``truth ≈ s R avatar + t``: Umeyama's least-squares similarity between the two
    neutral heads' 51 landmarks (the rig's landmarks correspond by construction). One portrait fixes a head
    only up to such a transform (a larger head farther away looks the same), so the avatar is judged after
    it, as 3D face reconstruction is."""
    with torch.no_grad():
        ours = model(betas=avatar.betas, transl=avatar.transl).landmarks[0].double()
        truth = model(betas=gt["betas"], transl=gt["transl"]).landmarks[0].double()
    mu_a, mu_t = ours.mean(0), truth.mean(0)
    A, B = ours - mu_a, truth - mu_t
    U, S, Vt = torch.linalg.svd(B.T @ A / len(A))
    D = torch.eye(3, dtype=torch.float64)
    D[2, 2] = float(torch.sign(torch.det(U @ Vt)))
    R = U @ D @ Vt
    s = float((S * D.diagonal()).sum() / A.pow(2).sum(-1).mean())
    t = mu_t - s * R @ mu_a
    return s, R.float(), t.float()


def avatar_cameras(cameras, similarity):
    """The truth's cameras moved into the avatar's world (through the similarity): same images."""
    import copy

    s, R, t = similarity
    cams = copy.deepcopy(cameras)
    c2w = cams.camera_to_worlds.clone()
    c2w[:, :3, :3] = R.T @ c2w[:, :3, :3]
    c2w[:, :3, 3] = ((c2w[:, :3, 3] - t) @ R) / s
    cams.camera_to_worlds = c2w
    return cams


def avatar_renders(avatar, portrait, model, size: int, similarity) -> tuple[torch.Tensor, torch.Tensor]:
    from recon.data.head_clips import clip_cameras
    from recon.pipelines.zero1toa import params_of

    frames, alphas = [], []
    with torch.no_grad():
        for az in EVAL_AZIMUTHS:
            cam = avatar_cameras(clip_cameras(torch.tensor([az]), torch.tensor([5.0]), size), similarity)
            for n in EVAL_EXPRESSIONS:
                e, j = eval_params(model, n)
                rgb, alpha = avatar.render(params_of(e[None], j[None], portrait.params), cam)
                frames.append(rgb)
                alphas.append(alpha)
    return torch.stack(frames), torch.stack(alphas)


def driven_pair(
    avatar, portrait, gt: dict, model, size: int, similarity
) -> tuple[torch.Tensor, torch.Tensor]:
    """The "talk" sequence from the front: avatar frames and ground-truth frames ``[T, S, S, 3]``."""
    from recon.data.head_clips import clip_cameras, render_frames
    from recon.parametric.head_drive import drive_params, expression_sequence_preset
    from recon.pipelines.zero1toa import params_of

    drive = expression_sequence_preset(model, "talk", frames=24)
    cam = avatar_cameras(clip_cameras(torch.zeros(1), torch.full((1,), 5.0), size), similarity)
    ours = []
    with torch.no_grad():
        for i in range(drive.expression.shape[0]):
            p = drive_params(drive, i)
            ours.append(avatar.render(params_of(p["expression"], p["jaw_pose"], portrait.params), cam)[0])
    T = drive.expression.shape[0]
    cams = clip_cameras(torch.zeros(T), torch.full((T,), 5.0), size)
    truth, _, _ = render_frames(
        model, gt["betas"], gt["transl"], gt["albedo"], cams, drive.expression, drive.jaw_pose
    )
    return torch.stack(ours), truth


def render_fps(avatar, portrait, model, size: int = 256, n: int = 20) -> float:
    from recon.data.head_clips import clip_cameras
    from recon.pipelines.zero1toa import params_of

    cam = clip_cameras(torch.zeros(1), torch.full((1,), 5.0), size)
    p = params_of(torch.zeros(1, model.num_expressions), torch.zeros(1, 3), portrait.params)
    with torch.no_grad():
        avatar.render(p, cam)
        t0 = time.perf_counter()
        for _ in range(n):
            avatar.render(p, cam)
    return n / (time.perf_counter() - t0)


def score(avatar, portrait, gt: dict, model, size: int) -> dict[str, float]:
    from recon.metrics import psnr, ssim

    sim = similarity_to_truth(avatar, portrait, gt, model)
    truth, cover = truth_renders(gt, model, size)
    ours, alpha = avatar_renders(avatar, portrait, model, size, sim)
    both = (cover > 0.5) & (alpha > 0.5)
    color_err = float((ours - truth).abs().mean(-1)[both].mean()) if bool(both.any()) else 1.0
    # the avatar's shape alone: the truth's colours wherever both heads cover, the avatar's elsewhere
    shape_only = torch.where(both[..., None], truth, ours)
    a, b = driven_pair(avatar, portrait, gt, model, size, sim)
    temporal = float(((a[1:] - a[:-1]) - (b[1:] - b[:-1])).abs().mean())
    return {
        "psnr": float(np.mean([psnr(ours[i], truth[i]) for i in range(len(truth))])),
        "ssim": float(np.mean([float(ssim(ours[i], truth[i])) for i in range(len(truth))])),
        "psnr_shape_bound": float(np.mean([psnr(shape_only[i], truth[i]) for i in range(len(truth))])),
        "identity": 1.0 - color_err,
        "identity_betas": float((portrait.betas - gt["betas"]).pow(2).mean().sqrt()),
        "temporal": temporal,
        "scale": sim[0],
    }


def grid_row(avatar, portrait, gt: dict, model, size: int = 96) -> torch.Tensor:
    ours, _ = avatar_renders(avatar, portrait, model, size, similarity_to_truth(avatar, portrait, gt, model))
    return torch.cat(list(ours[:: len(EVAL_EXPRESSIONS) // 2]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[901, 902])
    parser.add_argument("--steps", type=int, default=600, help="video-stage steps of each run")
    parser.add_argument("--portrait-steps", type=int, default=150)
    parser.add_argument("--size", type=int, default=256, help="evaluation render size")
    parser.add_argument("--prior", default="embedded", help="video prior: embedded or a folder")
    parser.add_argument("--modes", nargs="+", default=["symgen", "sds", "portrait"])
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs and a comparison grid")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="Zero1toAConfig overrides (e.g. strength=0.6)",
    )
    args = parser.parse_args()

    import torch.nn.functional as F  # noqa: F401

    from priors.video import VideoPrior
    from recon.parametric.heads import create_head_model
    from recon.pipelines.zero1toa import Zero1toAConfig, run_avatar

    model = create_head_model("anny")
    prior = VideoPrior.from_pretrained(args.prior)
    overrides = {k: type(getattr(Zero1toAConfig(), k))(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-avatar-"))
    results: dict[str, list[dict[str, float]]] = {m: [] for m in args.modes}
    grids = []
    for seed in args.seeds:
        gt = make_portrait(seed, model)
        truth, _ = truth_renders(gt, model, 96)
        row = [torch.cat([torch.as_tensor(gt["image"]).permute(2, 0, 1)[None].float()], 0)]
        row = [torch.nn.functional.interpolate(row[0], size=(96, 96), mode="area")[0].permute(1, 2, 0)]
        row.append(torch.cat(list(truth[:: len(EVAL_EXPRESSIONS) // 2]), 1))
        for mode in args.modes:
            steps = 1 if mode == "portrait" else args.steps
            cfg = Zero1toAConfig(mode="symgen" if mode == "portrait" else mode, steps=steps,
                                 portrait_steps=args.portrait_steps, seed=seed, **overrides)  # fmt: skip
            run_dir = root / f"{seed}-{mode}"
            if run_dir.exists():  # a bench measures a fresh run, never a resumed one
                import shutil

                shutil.rmtree(run_dir)
            t0 = time.perf_counter()
            res = run_avatar(cfg, gt["image"], gt["landmarks"], run_dir, mask=gt["mask"],
                             focal=gt["focal"], model=model, prior=prior, write_video=False)  # fmt: skip
            seconds = time.perf_counter() - t0
            s = score(res.avatar, res.portrait, gt, model, args.size)
            s["seconds"] = seconds
            s["fps"] = render_fps(res.avatar, res.portrait, model, 256)
            s["prior_seconds"] = res.metrics["prior_seconds"]
            results[mode].append(s)
            print(f"seed {seed} {mode}: " + ", ".join(f"{k} {v:.4g}" for k, v in s.items()), flush=True)
            row.append(grid_row(res.avatar, res.portrait, gt, model))
        grids.append(torch.cat(row, 1))
    if args.out is not None:
        from recon.pipelines.zero1toa import _write_png

        _write_png(args.out / "grid.png", torch.cat(grids, 0))

    def med(mode: str, key: str) -> float | None:  # None (JSON null): the mode was not run
        vals = [r[key] for r in results.get(mode, [])]
        return round(statistics.median(vals), 4) if vals else None

    summary = {
        "psnr": med("symgen", "psnr"),
        "psnr_direct_sds": med("sds", "psnr"),
        "psnr_portrait": med("portrait", "psnr"),
        "ssim": med("symgen", "ssim"),
        "ssim_direct_sds": med("sds", "ssim"),
        "identity": med("symgen", "identity"),
        "identity_direct_sds": med("sds", "identity"),
        "identity_betas": med("symgen", "identity_betas"),
        "temporal": med("symgen", "temporal"),
        "temporal_direct_sds": med("sds", "temporal"),
        "fps": med("symgen", "fps"),
        "median_s": med("symgen", "seconds"),
        "median_s_direct_sds": med("sds", "seconds"),
        "psnr_shape_bound": med("symgen", "psnr_shape_bound"),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
