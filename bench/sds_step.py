"""Time of one SDS step with each embedded prior at its native resolution (render excluded, CFG on).

A step is what the text-to-3D pipeline does per iteration after rendering: encode the batch of
renders, draw t and noise, one guided noise prediction (conditional + unconditional), the SDS
gradient and its backward to the images. The target (issue 3) is an absolute one: <= 60 ms on 2 cores.

Usage: python bench/sds_step.py [--batch 1] [--repeats 20]
Prints a table, then as its LAST line JSON {"sds_ms": <worst embedded prior at --batch>, "<prior>_ms": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from priors.model import DiffusionPrior
from priors.sds import SDSConfig, SDSLoss
from recon.errors import UserError

PRIORS = ("embedded-exemplar", "embedded-unet", "embedded-unet-latent")


def time_step(prior, batch: int, repeats: int, prompt: str = "a red cube") -> float:
    sds = SDSLoss(prior, SDSConfig(guidance_scale=7.5))
    cond = prior.encode_prompt([prompt] * batch, [""] * batch)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 2):
        images = torch.rand(batch, 3, prior.resolution, prior.resolution, generator=gen).requires_grad_()
        t0 = time.perf_counter()
        loss, _ = sds(images, cond, progress=i / (repeats + 1), generator=gen)
        loss.backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="renders per SDS step (the target's case)")
    parser.add_argument(
        "--also-batch", type=int, default=4, help="a second batch size (text-to-3D's views per step)"
    )
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    result: dict[str, float] = {}
    print(f"{'prior':<22}{'resolution':>11}{'ms/step':>10}{f'ms @{args.also_batch}':>10}")
    for name in PRIORS:
        try:
            prior = DiffusionPrior.from_pretrained(name)
        except UserError as err:
            print(f"{name:<22} skipped: {err}")
            continue
        ms = time_step(prior, args.batch, args.repeats)
        ms_more = time_step(prior, args.also_batch, max(5, args.repeats // 4))
        result[f"{name}_ms"] = round(ms, 2)
        result[f"{name}_ms_batch{args.also_batch}"] = round(ms_more, 2)
        print(f"{name:<22}{prior.resolution:>11}{ms:>10.1f}{ms_more:>10.1f}")
    result["sds_ms"] = max(v for k, v in result.items() if k.endswith("_ms"))
    result["batch"] = args.batch
    result["threads"] = torch.get_num_threads()
    result["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "default")  # see app/openmp.py
    print(json.dumps(result))


if __name__ == "__main__":
    main()
