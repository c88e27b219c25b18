"""The compiled CPU rasterizer's build cache: one build per content, shared across checkouts, never blocked.

The extension is built once for this file, into a private ``SDS3D_CACHE`` (by two processes started
together, which is itself a test of the lock); every other test loads it from there in fresh subprocesses,
so nothing here touches the cache the rest of the suite uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import recon.render._cpu_ext as cpu_ext

ROOT = Path(__file__).resolve().parents[2]

# Loads the extension, from the sources in argv[1] when given (a stand-in for another checkout); prints the
# build name and how long `load_cpu_extension()` itself took (a fresh interpreter spends several seconds
# importing torch before that on a loaded 2-core machine: not what these tests measure).
LOAD = """
import sys, time
from pathlib import Path
import recon.render._cpu_ext as m
if len(sys.argv) > 1:
    m._CSRC = Path(sys.argv[1])
print(m._build_name(), flush=True)
t0 = time.perf_counter()
assert m.load_cpu_extension() is not None
print(f"load_s={time.perf_counter() - t0:.3f}", flush=True)
"""

# Holds the build lock argv[1]: says "held", waits for a line on stdin, then writes argv[3] to argv[2]
# (a finished build's marker, i.e. "my build is done") and releases.
HOLD = """
import sys
from pathlib import Path
from recon.render._cpu_ext import _build_lock
with _build_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
    if len(sys.argv) > 3:
        Path(sys.argv[2]).write_text(sys.argv[3])
"""

WAITING = "sds3d: waiting for another process building the CPU rasterizer"


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, SDS3D_CACHE=str(cache))


def _load_seconds(stdout: str) -> float:
    return float(stdout.split("load_s=")[1].split()[0])


def _sds3d_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sds3d:")]


@dataclass
class Built:
    cache: Path
    name: str
    build_dir: Path
    stderrs: list[str]
    seconds: float

    @property
    def library(self) -> Path:
        return self.build_dir / (self.build_dir / cpu_ext._DONE).read_text().strip()

    def load(self, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
        """Loads the extension in a fresh interpreter; returns it and the seconds the load itself took."""
        proc = subprocess.run(
            [sys.executable, "-c", LOAD, *args],
            cwd=ROOT, env=_env(self.cache), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc, _load_seconds(proc.stdout)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Builds the extension into a fresh cache, with two processes started at the same time."""
    cache = tmp_path_factory.mktemp("sds3d-cache")
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD],
            cwd=ROOT,
            env=_env(cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    seconds = time.monotonic() - t0
    print(f"first build (two processes at once): {seconds:.1f} s")
    stderrs = [err for _, err in outs]
    if any("could not compile the CPU rasterizer" in err for err in stderrs):
        pytest.skip("the C++ CPU rasterizer could not be compiled here")
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    names = {out.split()[0] for out, _ in outs}
    assert len(names) == 1
    name = names.pop()
    return Built(cache, name, cache / "torch_extensions" / name, stderrs, seconds)


def _mtimes(build_dir: Path) -> dict[str, int]:
    """mtimes of the build's outputs (objects, library, copied sources, ninja's files)."""
    return {
        str(p.relative_to(build_dir)): p.stat().st_mtime_ns
        for p in build_dir.rglob("*")
        if p.is_file() and p.name not in (cpu_ext._LOCK, cpu_ext._DONE)
    }


def test_first_build_prints_one_line_and_a_concurrent_loader_waits(built: Built) -> None:
    lines = [_sds3d_lines(err) for err in built.stderrs]
    building = [ls.count(cpu_ext._BUILDING_MSG) for ls in lines]
    waiting = [sum(line.startswith(WAITING) for line in ls) for ls in lines]
    assert sorted(building) == [0, 1], lines  # exactly one of the two built, and said so once
    assert waiting[building.index(0)] == 1, lines  # the other said once that it waits...
    assert waiting[building.index(1)] == 0, lines
    assert all(len(ls) == 1 for ls in lines), lines  # ...and nothing else
    assert built.library.is_file()
    assert not (built.build_dir / "lock").exists()  # torch's baton released
    # From the cache: nothing printed, nothing rebuilt, fast.
    before = _mtimes(built.build_dir)
    proc, seconds = built.load()
    assert _sds3d_lines(proc.stderr) == []
    assert _mtimes(built.build_dir) == before
    print(f"load: {seconds:.3f} s")
    assert seconds < 10, seconds


def test_build_name_is_content_not_location(built: Built, tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "elsewhere" / "csrc"
    shutil.copytree(cpu_ext._CSRC, copy)
    monkeypatch.setattr(cpu_ext, "_CSRC", copy)
    assert cpu_ext._build_name() == built.name
    with open(copy / "ops.h", "a") as f:  # a header counts too
        f.write("\n// changed\n")
    assert cpu_ext._build_name() != built.name


def test_identical_sources_in_two_checkouts_share_one_build(built: Built, tmp_path: Path) -> None:
    checkouts = [tmp_path / "a" / "csrc", tmp_path / "b" / "csrc"]
    for i, csrc in enumerate(checkouts):
        shutil.copytree(cpu_ext._CSRC, csrc)  # fresh mtimes, other absolute paths
        for f in csrc.iterdir():
            os.utime(f, (time.time() + 1000 * (i + 1),) * 2)  # newer than every object: ninja would rebuild
    before = _mtimes(built.build_dir)
    for csrc in checkouts:
        proc, seconds = built.load(str(csrc))
        assert proc.stdout.split()[0] == built.name
        assert _sds3d_lines(proc.stderr) == []
        print(f"load: {seconds:.3f} s")
    assert seconds < 10, seconds
    assert _mtimes(built.build_dir) == before
    # Without the "finished" marker the load goes through torch/ninja again: still up to date, whichever
    # checkout the sources come from (they are compiled from the build folder's own copy).
    for csrc in checkouts:
        (built.build_dir / cpu_ext._DONE).unlink()
        proc, seconds = built.load(str(csrc))
        assert _sds3d_lines(proc.stderr) == []
        assert (built.build_dir / cpu_ext._DONE).is_file()
        print(f"load: {seconds:.3f} s")
    assert seconds < 10, seconds
    after = _mtimes(built.build_dir)
    assert {k: v for k, v in after.items() if not k.startswith(".ninja")} == {
        k: v for k, v in before.items() if not k.startswith(".ninja")
    }
    assert not list((tmp_path / "a").parent.rglob("*.o"))  # nothing compiled next to the checkouts


def _hold_lock(built: Built, *marker: str) -> subprocess.Popen:
    lock, done = built.build_dir / cpu_ext._LOCK, built.build_dir / cpu_ext._DONE
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(done), *marker],
        cwd=ROOT, env=_env(built.cache), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_killed_lock_holder_and_stale_torch_lock_do_not_block(built: Built) -> None:
    """SIGKILL a process holding the build lock, leave torch's baton behind: the next load still finishes."""
    library_mtime = built.library.stat().st_mtime_ns
    done = built.build_dir / cpu_ext._DONE
    done.unlink()  # as if the killed process was mid-build: the next load must take the lock
    holder = _hold_lock(built)
    (built.build_dir / "lock").touch()  # torch's FileBaton, as a killed `load` leaves it
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    proc, seconds = built.load(timeout=60)  # a hang (the old behaviour) fails here
    print(f"load: {seconds:.3f} s")
    assert seconds < 10, seconds
    assert _sds3d_lines(proc.stderr) == []  # no waiting (the holder is dead), no rebuild
    assert not (built.build_dir / "lock").exists()
    assert done.is_file()
    assert built.library.stat().st_mtime_ns == library_mtime


def test_waiter_says_so_once_and_loads_after_release(built: Built) -> None:
    done = built.build_dir / cpu_ext._DONE
    marker = done.read_text()
    done.unlink()  # a build "in progress" in the holder
    holder = _hold_lock(built, marker)
    try:
        loader = subprocess.Popen(
            [sys.executable, "-c", LOAD],
            cwd=ROOT, env=_env(built.cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: list[str] = []
        waiting = threading.Event()

        def read() -> None:
            for line in loader.stderr:
                lines.append(line)
                if line.startswith(WAITING):
                    waiting.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert waiting.wait(timeout=60), lines
        time.sleep(1.0)  # still waiting, and it said so only once
        assert loader.poll() is None
        t0 = time.monotonic()
        holder.stdin.write("go\n")  # the holder's "build" finishes: marker back, lock released
        holder.stdin.flush()
        assert loader.wait(timeout=30) == 0, "".join(lines)
        seconds = time.monotonic() - t0
        reader.join(timeout=10)
    finally:
        holder.kill()
        holder.wait()
    sds3d = _sds3d_lines("".join(lines))
    assert sds3d == [f"{WAITING} (lock held by pid {holder.pid}) ..."], sds3d  # no "building" line
    print(f"load: {seconds:.3f} s")
    assert seconds < 10, seconds
    assert done.read_text() == marker
