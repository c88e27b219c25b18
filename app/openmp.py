"""How OpenMP workers wait, chosen before torch loads its OpenMP runtime (no heavy imports here)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def openmp_wait_policy(load_average: float, n_cpus: int) -> str | None:
    """``"PASSIVE"`` when the CPUs are already at least half busy, else ``None`` (libgomp's default).

    Torch and the CPU rasterizer run many short parallel regions. With libgomp's default (workers
    spin briefly before they sleep) an SDS step of the embedded UNets takes ~35 ms on 2 idle cores;
    with passive waiting every region first wakes a sleeping worker and the same step takes 55-100
    ms. When other processes hold the cores, spinning workers fight them and passive waiting is
    2-3x faster instead (both measured, see bench/README.md).
    """
    return "PASSIVE" if load_average >= 0.5 * max(1, n_cpus) else None


def openmp_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Variables to add to the environment: none when the user set ``OMP_WAIT_POLICY`` themselves."""
    if "OMP_WAIT_POLICY" in environ:
        return {}
    policy = openmp_wait_policy(os.getloadavg()[0], os.cpu_count() or 1)
    return {} if policy is None else {"OMP_WAIT_POLICY": policy}
