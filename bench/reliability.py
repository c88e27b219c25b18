"""Reliability under kills and load (issue #18, 4c and 5): a kill soak and an attack on the app.

* **Kill soak.** ``sds3d generate`` and ``sds3d reconstruct`` are killed with SIGKILL at seeded random
  moments (during start-up, training, checkpointing or export) and continued with ``--resume RUN``
  (from its last checkpoint); a run killed before its folder could be resumed (a generate before its
  config.yaml, a reconstruct before its posed frames' ``scene.pt``) is run again. After each kill
  every file in ``export/`` must be whole (read back by the project's loaders); after each
  continuation the run must finish with a whole export. Steps lost = the step the killed process had
  reached (its progress bar) minus the step the resume started from.
* **App under load and attack.** The Gradio app on 127.0.0.1, ``clients`` concurrent clients for
  ``seconds``: tiny generate jobs, bad form values, uploads of the wrong type and over the size limit,
  so the queue (4 places) overflows; every request must get an answer (a result or an error message)
  and the app must still serve a job afterwards. Path traversal on the file routes (``/file=``,
  ``/gradio_api/file=``, ``..`` plain and encoded, absolute paths, symlinks planted in the outputs
  folder that point outside it) must be refused.

The last line printed is JSON: ``{"kill_trials", "kill_resumed", "max_steps_lost", "partial_exports",
"app_requests", "app_failed", "traversal_refused", "traversal_tried", ...}``.

Usage::

    python bench/reliability.py                       # 10 + 10 kill trials, 8 clients for 120 s
    python bench/reliability.py --trials 2 --app-seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GENERATE = ["a red cube", "--prior", "embedded-exemplar", "--steps", "40", "--checkpoint-every", "10"]
"""The soak's text-to-3D run: the closed-form prior, 40 steps, a checkpoint every 10."""
SMALL_EXPORT = ["--faces", "500", "--texture-size", "64"]
RECON_PRESET = {
    "pipeline": "video_recon",
    "config": {"steps": 60, "checkpoint_every": 10, "random_init_points": 500, "faces": 500,
               "texture_size": 64, "export_views": 8, "export_image_size": 64},
}  # fmt: skip
"""The soak's reconstruction: 60 steps (a checkpoint every 10) on 8 views of 32x24, a small export."""


def sds3d() -> list[str]:
    script = Path(sys.executable).parent / "sds3d"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app.cli"]


# ------------------------------------------------------------------------------------------ kill soak
STAGE = re.compile(r"stage (\S+): (\d+) steps from step (\d+)")
BAR = re.compile(r"(\S+):\s+\d+%\|[^|\n\r]*\|\s*(\d+)/(\d+)")
RESUMED = re.compile(r"resumed from \S+ at stage (\d+) step (\d+)")


def reached_step(log: str) -> int:
    """The global step a run's stderr shows it had reached (its stages' progress bars)."""
    stages: dict[str, int] = {}
    for name, steps, _ in STAGE.findall(log):
        stages.setdefault(name, int(steps))
    order = list(stages)
    best = 0
    for name, done, _ in BAR.findall(log):
        if name in stages:
            best = max(best, sum(stages[s] for s in order[: order.index(name)]) + int(done))
    return best


def resumed_step(log: str, stage_sizes: list[int]) -> int:
    """The global step a resumed run started from (0 without a checkpoint)."""
    match = RESUMED.search(log)
    if match is None:
        return 0
    stage, step = int(match.group(1)), int(match.group(2))
    return sum(stage_sizes[:stage]) + step


def stage_sizes(log: str) -> list[int]:
    sizes: dict[str, int] = {}
    for name, steps, _ in STAGE.findall(log):
        sizes.setdefault(name, int(steps))
    return list(sizes.values())


def broken_exports(run_dir: Path) -> list[str]:
    """Files of ``run_dir/export`` that do not read back whole (hidden temp folders are not results)."""
    from PIL import Image

    from recon.errors import UserError
    from recon.gaussians import GaussianModel, read_splat
    from recon.mesh.io import read_mesh

    readers = {
        ".glb": read_mesh, ".obj": read_mesh, ".ply": GaussianModel.load_ply, ".splat": read_splat,
        ".png": lambda p: Image.open(p).load(), ".mtl": lambda p: p.read_text().index("map_Kd"),
    }  # fmt: skip
    broken = []
    export = run_dir / "export"
    for path in sorted(export.iterdir()) if export.is_dir() else []:
        if path.name.startswith(".") or path.suffix not in readers:
            continue
        try:
            readers[path.suffix](path)
        except (UserError, OSError, ValueError, SyntaxError) as err:
            broken.append(f"{path.name}: {err}")
    return broken


def run_logged(argv: list[str], log: Path, kill_after: float | None = None, env: dict | None = None):
    """Runs ``argv`` with stderr into ``log``; SIGKILLs it after ``kill_after`` s. Returns (rc, killed)."""
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        try:
            proc.wait(timeout=kill_after if kill_after is not None else 1800)
            return proc.returncode, False
        except subprocess.TimeoutExpired:
            if kill_after is None:
                proc.kill()
                proc.wait()
                return -9, False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return proc.returncode, True


def kill_trials(kind: str, trials: int, seed: int, root: Path) -> list[dict[str, Any]]:
    """``trials`` SIGKILLs of ``sds3d generate`` or ``sds3d reconstruct`` and their continuation."""
    root.mkdir(parents=True, exist_ok=True)
    out = root / "outputs"
    if kind == "generate":
        first = [*sds3d(), "generate", *GENERATE, *SMALL_EXPORT, "--out", str(out)]
        pattern = "stabledreamer/*"
    else:
        source = posed_images(root / "input")
        preset = root / "soak.yaml"
        import yaml

        preset.write_text(yaml.safe_dump(RECON_PRESET))
        first = [*sds3d(), "reconstruct", str(source), "--config", str(preset), "--out", str(out)]
        pattern = "video_recon/*"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()  # a whole run without a kill: the range the kill moments are drawn from
    rc, _ = run_logged(first, root / "reference.log", env=env)
    whole = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"the reference {kind} run failed: {(root / 'reference.log').read_text()[-2000:]}")
    sizes = stage_sizes((root / "reference.log").read_text())
    rng = random.Random(seed)
    results = []
    for trial in range(trials):
        before = set(out.glob(pattern))
        kill_at = rng.uniform(0.3, 0.97 * whole)
        log = root / f"{kind}-{trial}.log"
        rc, killed = run_logged(first, log, kill_after=kill_at, env=env)
        created = sorted(set(out.glob(pattern)) - before)
        run = created[0] if created else None
        partial = broken_exports(run) if run is not None else []
        reached = reached_step(log.read_text())
        if kind == "generate" and run is not None and (run / "config.yaml").is_file():
            again = [*sds3d(), "generate", "--resume", str(run), *SMALL_EXPORT]
        elif kind == "reconstruct" and run is not None and (run / "scene.pt").is_file():
            again = [*sds3d(), "reconstruct", "--resume", str(run)]
        else:  # killed before its folder could be resumed: starts anew
            again = first
        resume_log = root / f"{kind}-{trial}-resume.log"
        before_again = set(out.glob(pattern))
        rc2, _ = run_logged(again, resume_log, env=env)
        new = sorted(set(out.glob(pattern)) - before_again)
        finished_run = run if again is not first else (new[0] if new else None)
        start = resumed_step(resume_log.read_text(), sizes) if again is not first else 0
        after = broken_exports(finished_run) if finished_run is not None else ["no run folder"]
        complete = finished_run is not None and all(
            (finished_run / "export" / name).is_file() for name in ("model.glb", "model.obj", "texture.png")
        )
        results.append({
            "kind": kind, "trial": trial, "kill_at_s": round(kill_at, 2), "killed": killed,
            "reached_step": reached, "resumed_from": start, "steps_lost": max(0, reached - start),
            "resumed": again is not first, "finished": rc2 == 0 and complete and not after,
            "partial_after_kill": partial, "broken_after_finish": after,
        })  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    return results


def posed_images(folder: Path) -> Path:
    """8 posed views (32x24) of the procedural blocks, as a transforms.json."""
    from recon.data.datasets import SceneData, write_transforms
    from recon.data.synthetic import TexturedBlocks, orbit_path

    if (folder / "transforms.json").is_file():
        return folder / "transforms.json"
    cams = orbit_path(8, sweep_deg=180.0, distance=3.0, width=32, height=24)
    rgb, _ = TexturedBlocks(seed=0).render(cams, supersample=1)
    return write_transforms(folder / "transforms.json", SceneData(rgb, cams, [f"f{i}.png" for i in range(8)]))


def kill_soak(trials: int, seed: int, root: Path) -> dict[str, Any]:
    generate = kill_trials("generate", trials, seed, root / "generate")
    reconstruct = kill_trials("reconstruct", trials, seed + 1, root / "reconstruct")
    everything = generate + reconstruct
    return {
        "kill_trials": len(everything),
        "kill_resumed": sum(t["finished"] for t in everything),
        "max_steps_lost": max((t["steps_lost"] for t in everything if t["resumed"]), default=0),
        "reconstruct_resumed": sum(t["resumed"] for t in reconstruct),
        "partial_exports": sum(len(t["partial_after_kill"]) for t in everything),
        "broken_after_finish": sum(len(t["broken_after_finish"]) for t in everything),
        "kill_killed": sum(t["killed"] for t in everything),
        "reconstruct_rerun_steps_lost": max((t["steps_lost"] for t in reconstruct), default=0),
        "checkpoint_every": 10,
    }


# ------------------------------------------------------------------------------------------ the app
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def traversal_attempts(base: str, outputs: Path, secret: Path) -> list[str]:
    """URLs that would leak ``secret`` (outside the outputs folder) if a file route followed them."""
    out = str(outputs.resolve())
    quoted = urllib.parse.quote
    paths = [
        str(secret), "/etc/passwd", str(ROOT / "app" / "ui.py"),
        f"{out}/../{secret.name}", f"{out}/%2e%2e/{secret.name}", f"{out}/%2E%2E%2F{secret.name}",
        f"{out}/%252e%252e/{secret.name}", f"{out}/..%2f{secret.name}", f"{out}/....//{secret.name}",
        f"{out}/leak.txt", f"{out}/leak-dir/{secret.name}", f"{out}/stabledreamer/planted/export/model.glb",
        f"../{secret.name}", "../../../../etc/passwd", quoted(str(secret), safe=""),
    ]  # fmt: skip
    routes = ["file=", "gradio_api/file=", "gradio_api/file/"]
    return [f"{base}{route}{path}" for route in routes for path in paths]


def plant_symlinks(outputs: Path, secret: Path) -> None:
    """Links inside the outputs folder that point outside it (a file, a folder, an export)."""
    (outputs / "leak.txt").symlink_to(secret)
    (outputs / "leak-dir").symlink_to(secret.parent, target_is_directory=True)
    planted = outputs / "stabledreamer" / "planted" / "export"
    planted.mkdir(parents=True)
    (planted / "model.glb").symlink_to(secret)


def app_attack(clients: int, seconds: float, root: Path) -> dict[str, Any]:
    """``clients`` concurrent clients for ``seconds`` (jobs, bad input, bad uploads), then traversal."""
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError, ValidationError
    from gradio_client.utils import QueueError

    from app import ui
    from app.ui import build_app, launch_app

    root.mkdir(parents=True, exist_ok=True)
    outputs = root / "outputs"
    outputs.mkdir()
    secret = root / "secret.txt"
    secret.write_text("sds3d-secret-" + "x" * 32)
    plant_symlinks(outputs, secret)
    small = {"faces": 500, "texture_size": 64, "image_size": 64, "n_views": 8}
    demo = build_app(outputs, max_queue_size=4, allowed_prior_dirs=[outputs], export_extra=small)
    for attempt in range(3):  # on a loaded machine Gradio's own "is localhost reachable" probe can time out
        try:
            url = launch_app(demo, outputs, port=free_port(), prevent_thread_lock=True, max_file_size="1mb")
            break
        except ValueError:
            demo.close()
            if attempt == 2:
                raise
    if not ui.WARM.wait(300):
        raise RuntimeError("the embedded prior did not load")
    notes = root / "notes.txt"
    notes.write_text("not a video")
    big = root / "big.mp4"
    big.write_bytes(os.urandom(1_200_000))
    form = dict(
        prompt="a red cube", pipeline="stabledreamer", prior="embedded-exemplar", allow_download=False,
        steps=2, seed=0, guidance=15, views=2, faces=500, texture_size=128, preview_every=1,
    )  # fmt: skip
    video_form = (100, 16, 160, 0, 500, 128)  # steps, keyframes, resolution, seed, faces, texture size
    bad_forms = [{"steps": 10**9}, {"steps": 0}, {"prompt": ""}, {"prompt": "a purple elephant"},
                 {"faces": -5}, {"texture_size": "huge"}, {"seed": -1}, {"prior": "/etc"}]  # fmt: skip
    patient = {"timeout": 120}  # an answer within 2 min counts (httpx: 5 s, exceeded at load 12)
    counts = {"requests": 0, "answered": 0, "jobs_done": 0, "refused": 0, "queue_full": 0, "failed": 0}
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def record(kind: str, detail: str = "") -> None:
        with lock:
            counts["requests"] += 1
            counts[kind] += 1
            if kind != "failed":
                counts["answered"] += 1
            elif len(failures) < 20:
                failures.append(detail)

    def client_loop(index: int) -> None:
        rng = random.Random(index)
        files = str(root / f"client-{index}")
        client = Client(url, verbose=False, download_files=files, httpx_kwargs=patient)
        while time.monotonic() < deadline:
            action = rng.choice(["job", "bad", "bad", "upload-type", "upload-size"])
            try:
                if action == "job":
                    status = client.predict(**form, api_name="/generate")[0]
                    record("jobs_done" if str(status).startswith("Done") else "refused")
                elif action == "bad":
                    client.predict(**{**form, **rng.choice(bad_forms)}, api_name="/generate")
                    record("failed", "bad form values were accepted")
                elif action == "upload-type":
                    client.predict(handle_file(str(notes)), *video_form, api_name="/reconstruct")
                    record("failed", "a text file was accepted as a video")
                else:
                    client.predict(handle_file(str(big)), *video_form, api_name="/reconstruct")
                    record("failed", "an upload over the limit was accepted")
            except QueueError:  # the queue bound (4 waiting) holds: refused at once
                record("queue_full")
            except (httpx.TransportError, TimeoutError, ConnectionError) as err:  # no answer at all
                record("failed", f"{action}: {type(err).__name__}: {str(err)[:300]}")
            except (
                AppError,
                ValidationError,
                ValueError,
                httpx.HTTPStatusError,
            ) as err:  # an answer: refused, with why
                record("refused", str(err))
            except Exception as err:  # noqa: BLE001 - anything else is counted and shown, not hidden
                record("failed", f"{action}: {type(err).__name__}: {str(err)[:300]}")

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 900)
    alive = Client(url, verbose=False, download_files=str(root / "client-final"), httpx_kwargs=patient)
    final = str(alive.predict(**form, api_name="/generate")[0]).startswith("Done")
    refused, tried, leaks = 0, 0, []
    for attempt in traversal_attempts(url, outputs, secret):
        tried += 1
        try:
            response = httpx.get(attempt, timeout=30, follow_redirects=True)
            leaked = response.status_code == 200 and (
                b"sds3d-secret" in response.content
                or b"root:" in response.content
                or b"def build_app" in response.content
            )
        except httpx.HTTPError:
            leaked = False
        refused += not leaked
        if leaked:
            leaks.append(attempt)
    upload = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.mp4", big.read_bytes())}, timeout=60)
    demo.close()
    return {
        "app_requests": counts["requests"], "app_failed": counts["failed"] + (0 if final else 1),
        "app_jobs_done": counts["jobs_done"], "app_refused": counts["refused"],
        "app_queue_full": counts["queue_full"], "app_alive_after": final,
        "app_clients": clients, "app_seconds": seconds, "app_failures": failures,
        "traversal_refused": refused, "traversal_tried": tried, "traversal_leaks": leaks,
        "oversize_upload_status": upload.status_code,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="SIGKILL trials per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--app-seconds", type=float, default=120.0)
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="sds3d-reliability-"))
    started = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        if not args.skip_kill:
            result.update(kill_soak(args.trials, args.seed, root / "kill"))
            print(json.dumps(result), flush=True)  # kept even if the app part fails
        if not args.skip_app:
            result.update(app_attack(args.clients, args.app_seconds, root / "app"))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load"] = os.getloadavg()[0]
    order = ["kill_trials", "kill_resumed", "max_steps_lost", "partial_exports", "app_requests", "app_failed",
             "traversal_refused", "traversal_tried"]  # fmt: skip
    print(json.dumps({**{k: result[k] for k in order if k in result}, **result}), flush=True)
    return result


if __name__ == "__main__":
    main()
