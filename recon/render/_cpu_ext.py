"""Builds (once, cached) and loads the compiled CPU rasterizer extension.

The C++/OpenMP sources live in ``csrc/`` (rasterizer, projection, bindings). It is compiled on first use with
``torch.utils.cpp_extension.load`` into ``$SDS3D_CACHE`` (default ``~/.cache/sds3d/torch_extensions``),
keyed by a hash of the source, the torch version and the compiler flags, so later imports load the
cached library in milliseconds. If it cannot compile (no compiler, no OpenMP), one warning is
printed and callers fall back to the pure-PyTorch reference.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / "rasterize.cpp", _CSRC / "projection.cpp", _CSRC / "bindings.cpp"]
_HEADERS = [_CSRC / "ops.h"]
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-std=c++17"]
_LDFLAGS = ["-fopenmp"]


def cache_dir() -> Path:
    root = os.environ.get("SDS3D_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sds3d")
    return Path(root) / "torch_extensions"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _build_name() -> str:
    digest = hashlib.sha1()
    for path in _SOURCES + _HEADERS:
        digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(_CFLAGS).encode())
    digest.update(_cpu_flags().encode())  # -march=native: never reuse a build on another CPU
    return f"sds3d_rasterize_{digest.hexdigest()[:12]}"


@lru_cache(maxsize=1)
def load_cpu_extension() -> ModuleType | None:
    """The compiled extension, or ``None`` (after one warning) when it cannot be built."""
    from torch.utils.cpp_extension import load

    name = _build_name()
    build_dir = cache_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        return load(
            name=name,
            sources=[str(p) for p in _SOURCES],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as err:  # noqa: BLE001 - any build failure means: fall back, with one warning
        warnings.warn(
            f"sds3d: could not compile the CPU rasterizer ({type(err).__name__}: {str(err)[:300]}); "
            "falling back to the slow pure-PyTorch renderer. Install a C++ compiler with OpenMP "
            "(Debian: apt-get install g++) and ninja (pip install ninja) to enable it.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
