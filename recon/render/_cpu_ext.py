"""Builds (once, cached) and loads the compiled CPU rasterizer extension.

The C++/OpenMP sources live in ``csrc/`` (rasterizer, projection, bindings). On first use they are compiled
with ``torch.utils.cpp_extension.load`` into ``$SDS3D_CACHE/torch_extensions/<name>`` (default
``~/.cache/sds3d``), where ``<name>`` is a hash of what decides the binary: the sources' and headers'
content, the compiler and linker flags, the torch version, the Python ABI and the CPU's flags
(``-march=native``). Nothing about *where* the sources or the virtual environment live enters the key or
the build: the sources are copied into the build folder and compiled from there, so two checkouts (or
venvs) with identical sources share one build. A finished build is marked as such and later loads import
the library directly (milliseconds, no compiler, no lock, nothing printed).

Building is serialized across processes by an OS-level lock (``fcntl.flock``) that dies with its holder:
a process killed while building never blocks the next one (torch's own ``lock`` file, which outlives a
killed holder and is waited on forever, is cleared under that lock). A process that has to wait says so
once on stderr; the one that builds prints one line saying so. If it cannot compile (no compiler, no
OpenMP), one warning is printed and callers fall back to the pure-PyTorch reference.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = ("rasterize.cpp", "projection.cpp", "bindings.cpp")  # file names under _CSRC
_HEADERS = ("ops.h",)  # included as "ops.h", i.e. next to the sources: copied along with them
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-std=c++17"]
_LDFLAGS = ["-fopenmp"]

_DONE = "sds3d-build-done"  # in the build folder: the file name of the finished library, written last
_LOCK = "sds3d-build.lock"  # in the build folder: our flock; torch's own baton there is called "lock"
_BUILDING_MSG = "sds3d: building the CPU rasterizer (about a minute, once)"


def cache_dir() -> Path:
    """Root of the compiled-extension cache: ``$SDS3D_CACHE/torch_extensions`` (or ``~/.cache/sds3d/...``)."""
    root = os.environ.get("SDS3D_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sds3d")
    return Path(root) / "torch_extensions"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _build_name() -> str:
    """Cache key: content of sources and headers, flags, torch version, Python ABI, CPU flags; no paths."""
    digest = hashlib.sha1()
    for fname in _SOURCES + _HEADERS:
        digest.update(fname.encode() + b"\0")
        digest.update((_CSRC / fname).read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(_CFLAGS).encode() + b"\0" + " ".join(_LDFLAGS).encode())
    # The library is a CPython extension module: it only loads into the ABI it was compiled for.
    digest.update(str(sysconfig.get_config_var("EXT_SUFFIX") or sys.implementation.cache_tag).encode())
    digest.update(_cpu_flags().encode())  # -march=native: never reuse a build on another CPU
    return f"sds3d_rasterize_{digest.hexdigest()[:12]}"


def _try_lock(fd: int) -> bool:
    """Takes the exclusive lock on ``fd`` without waiting; ``True`` on success."""
    try:
        import fcntl
    except ImportError:  # Windows
        try:
            import msvcrt
        except ImportError:  # neither: no cross-process lock, torch's baton is all there is
            return True
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # BlockingIOError: held by another process
        return False


def _wait_lock(fd: int) -> None:
    """Takes the exclusive lock on ``fd``, waiting as long as another process holds it."""
    try:
        import fcntl
    except ImportError:
        while not _try_lock(fd):
            time.sleep(0.2)
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        try:
            import msvcrt
        except ImportError:
            return
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive cross-process lock on ``path`` (created if missing) for the ``with`` body.

    The lock belongs to the open file description, so the OS releases it when its holder exits or is
    killed (SIGKILL included): unlike torch's ``FileBaton``, it can never be left behind. If another
    process holds it, one line naming that process is printed to stderr before waiting.

    Args:
        path: The lock file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(fd):
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() if hasattr(os, "pread") else ""
            except OSError:
                holder = ""
            who = f"lock held by pid {holder}" if holder.isdigit() else f"lock {path}"
            print(
                f"sds3d: waiting for another process building the CPU rasterizer ({who}) ...",
                file=sys.stderr,
                flush=True,
            )
            _wait_lock(fd)
        try:  # who holds it, for the message of the next waiter (advisory: never read for correctness)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _import_library(path: Path) -> ModuleType:
    """Imports the compiled extension module at ``path`` (its module name is the file's stem)."""
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_finished(build_dir: Path) -> ModuleType | None:
    """The library of a finished build in ``build_dir``, or ``None`` if there is none (or it won't load)."""
    try:
        lib = (build_dir / _DONE).read_text().strip()
        return _import_library(build_dir / lib) if lib else None
    except (OSError, ImportError):
        return None


def _sync_sources(src_dir: Path) -> list[str]:
    """Copies the sources and headers into ``src_dir``, leaving files whose content is already right alone.

    ``src_dir`` lies in the build folder, whose name is the hash of exactly this content: the compile
    commands (absolute paths in torch's ``build.ninja``) and the files' mtimes are the same whichever
    checkout the sources came from, so ninja never rebuilds because of the checkout.

    Returns:
        The copied sources' paths, to compile.
    """
    src_dir.mkdir(parents=True, exist_ok=True)
    for fname in _SOURCES + _HEADERS:
        data = (_CSRC / fname).read_bytes()
        dst = src_dir / fname
        if dst.is_file() and dst.read_bytes() == data:
            continue
        tmp = dst.with_name(f".{fname}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dst)
    return [str(src_dir / fname) for fname in _SOURCES]


def _build(name: str, build_dir: Path) -> ModuleType:
    """Compiles (or lets ninja confirm as up to date) and imports the extension; the caller holds the lock."""
    from torch.utils.cpp_extension import load

    # Under our flock no live sds3d process can be inside torch's `load` for this build folder, so a
    # torch baton (`lock`, created with O_EXCL and waited on forever by torch) found here is stale by
    # construction: left by a process killed mid-build. Clear it, or `load` below would wait forever.
    (build_dir / "lock").unlink(missing_ok=True)
    sources = _sync_sources(build_dir / "src")
    if not any(build_dir.glob(f"{name}*.so")) and not any(build_dir.glob(f"{name}*.pyd")):
        print(_BUILDING_MSG, file=sys.stderr, flush=True)  # an up-to-date ninja check is silent
    module = load(
        name=name,
        sources=sources,
        extra_cflags=_CFLAGS,
        extra_ldflags=_LDFLAGS,
        build_directory=str(build_dir),
        verbose=False,
    )
    # torch may have named it `<name>_v<k>` (same name, other arguments earlier in this process): record
    # the file it actually loaded. Written last and atomically: its presence means "finished".
    lib = Path(module.__file__).name
    tmp = build_dir / f".{_DONE}.{os.getpid()}.tmp"
    tmp.write_text(lib + "\n")
    os.replace(tmp, build_dir / _DONE)
    return module


@lru_cache(maxsize=1)
def load_cpu_extension() -> ModuleType | None:
    """The compiled extension, or ``None`` (after one warning) when it cannot be built.

    A finished build in the cache is imported directly. Otherwise the build runs under a cross-process
    lock; a process that waited for another one's build then finds it finished and just imports it.
    """
    try:
        name = _build_name()
        build_dir = cache_dir() / name
        module = _load_finished(build_dir)
        if module is not None:
            return module
        build_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(build_dir / _LOCK):
            module = _load_finished(build_dir)  # another process may have finished it while we waited
            return module if module is not None else _build(name, build_dir)
    except Exception as err:  # noqa: BLE001 - any build failure means: fall back, with one warning
        warnings.warn(
            f"sds3d: could not compile the CPU rasterizer ({type(err).__name__}: {str(err)[:300]}); "
            "falling back to the slow pure-PyTorch renderer. Install a C++ compiler with OpenMP "
            "(Debian: apt-get install g++) and ninja (pip install ninja) to enable it.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
