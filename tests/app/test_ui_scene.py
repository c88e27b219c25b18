"""The app's Scene tab (DP-Recon) through its functions, not a browser: a zipped procedural scene to one
textured mesh per object and a scene GLB, bad uploads refused as field errors that name the fix and leave
no run folder, and Cancel stopping at a checkpoint that a second run continues from."""

from __future__ import annotations

import json
import shutil
import stat
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import scene_zip
from app.tabs.scene import (
    FIELDS,
    SceneProgress,
    make_scene_inputs,
    metrics_line,
    prepare_run,
    result_files,
    run_scene,
)
from recon.errors import UserError

TINY = {
    "rays_per_step": 384, "num_samples": 48, "visibility_steps": 8, "visibility_rays": 512,
    "mesh_resolution": 40, "texture_size": 64, "max_faces": 3000, "bake_views": 6, "bake_size": 32,
    "progress_bar": False, "checkpoint_every": 50,
}  # fmt: skip
"""tests/recon/test_dprecon.py's tiny run (its 120 + 4 steps come from the form here)."""
STEPS = {"recon_steps": 120, "refine_steps": 4}


def scene_config() -> dict:
    """The app's ``scene_config``: the tiny run's sizes and the dprecon tests' small SDF."""
    from recon.fields import SDFFieldConfig

    sdf = SDFFieldConfig(
        radius=1.0, grid_resolutions=(16, 32, 48), features=4, hidden=32, density="volsdf", beta_init=0.05,
        beta_min=0.004, sphere_radius=0.1, background_radius=0.95, eikonal_extra=True,
    )  # fmt: skip
    return {**TINY, "sdf": sdf}


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    """``sds3d scene synth``'s room at the dprecon tests' size: 3 objects, 6 views of 64x48."""
    from recon.data.scene_synth import SceneSynthConfig, synth_scene

    cfg = SceneSynthConfig(
        num_objects=3, num_views=6, eval_views=2, seed=21, width=64, height=48, mesh_resolution=40
    )
    return synth_scene(tmp_path_factory.mktemp("scene-tab") / "room", cfg)


def zip_folder(folder: Path, archive: Path, top: str | None = "room", extra: dict | None = None) -> Path:
    """``folder`` zipped as the folder itself (``top/...``) or its contents (``top=None``), plus ``extra``
    members (name -> bytes, or a ZipInfo -> bytes)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                zf.write(path, f"{top}/{rel}" if top else rel)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


def copy_room(room: Path, where: Path) -> Path:
    return Path(shutil.copytree(room, where / "room"))


def form(archive: Path | None, outputs: Path, read_files: bool = True, **changes):
    args = {"prompts": "", **STEPS, "sds": "visibility", "seed": 0, "resume": "", **changes}
    return make_scene_inputs(str(archive) if archive else None, **args, outputs=outputs,
                             scene_config=scene_config(), read_files=read_files)  # fmt: skip


def leftovers(outputs: Path, archive: Path) -> list[Path]:
    """Anything a refused upload left: in outputs/dprecon, or a check folder beside the upload."""
    runs = list((outputs / "dprecon").iterdir()) if (outputs / "dprecon").exists() else []
    return runs + [p for p in archive.parent.iterdir() if p.name.startswith(".scene-check")]


# ---------------------------------------------------------------- bad uploads
def _evil(room: Path, tmp: Path) -> Path:
    return zip_folder(room, tmp / "evil.zip", extra={"../evil": b"outside"})


def _absolute(room: Path, tmp: Path) -> Path:
    return zip_folder(room, tmp / "absolute.zip", extra={"/etc/evil": b"outside"})


def _symlink(room: Path, tmp: Path) -> Path:
    link = zipfile.ZipInfo("room/images/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zip_folder(room, tmp / "link.zip", extra={link: b"/etc/passwd"})


def _not_a_zip(room: Path, tmp: Path) -> Path:
    (tmp / "notes.zip").write_text("this is not a zip archive")
    return tmp / "notes.zip"


def _tar(room: Path, tmp: Path) -> Path:
    return Path(shutil.make_archive(str(tmp / "room"), "tar", room.parent, room.name))


def _no_scene(room: Path, tmp: Path) -> Path:
    return zip_folder(room / "images", tmp / "images.zip", top="images")


def _mask_size(room: Path, tmp: Path) -> Path:
    bad = copy_room(room, tmp / "src")
    mask = Image.open(bad / "masks" / "000.png")
    mask.resize((32, 24), Image.NEAREST).save(bad / "masks" / "000.png")
    return zip_folder(bad, tmp / "masks.zip")


def _unknown_id(room: Path, tmp: Path) -> Path:
    bad = copy_room(room, tmp / "src")
    (bad / "prompts.json").write_text(json.dumps({"1": "a red snowman", "8": "a ghost"}))
    return zip_folder(bad, tmp / "ghost.zip")


def _two_views(room: Path, tmp: Path) -> Path:
    bad = copy_room(room, tmp / "src")
    meta = json.loads((bad / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:2]
    (bad / "transforms.json").write_text(json.dumps(meta))
    return zip_folder(bad, tmp / "two.zip")


def _good(room: Path, tmp: Path) -> Path:
    return zip_folder(room, tmp / "room.zip")


BAD = [  # (make the upload, form changes, field, the message's fix)
    (_evil, {}, "scene", "a path that leaves its folder ('..'); zip the scene folder itself"),
    (_absolute, {}, "scene", "an absolute path; zip the scene folder itself"),
    (_symlink, {}, "scene", "a symbolic link; zip the files themselves"),
    (_not_a_zip, {}, "scene", "is not a zip archive"),
    (_tar, {}, "scene", "is not a .zip file; zip the scene folder"),
    (_no_scene, {}, "scene", "holds no scene folder"),
    (_mask_size, {}, "scene", "write the mask at the image's size"),
    (_unknown_id, {}, "scene", "names instance 8, which no mask has (ids in the masks: 1, 2, 3); fix the id"),
    (_good, {"prompts": '{"1": "a red snowman", "9": "a ghost"}'}, "prompts", "the prompts name instance 9, "
     "which no mask has (ids in the masks: 1, 2, 3); fix the id or remove that prompt"),
    (_good, {"prompts": '{"one": "a red snowman"}'}, "prompts", "is not an instance id"),
    (_two_views, {}, "scene", "has 2 views; DP-Recon needs at least 3 posed views (10 in the paper): add "
     "views"),
    (_good, {"recon_steps": 0}, "recon_steps", "reconstruction steps must be positive (a whole number "
     "between 1 and 20000)"),
    (_good, {"sds": "everywhere"}, "sds", "sds is one of visibility, uniform, none"),
    (None, {}, "scene", "upload a scene first"),
    (None, {"resume": "../../etc"}, "resume", "is not a run folder name; type the name only"),
    (None, {"resume": "room-20990101-000000"}, "resume", "there is no run"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "changes", "field", "message"), BAD, ids=[m for *_, m in BAD])
def test_a_bad_upload_is_a_field_error_that_names_the_fix_and_writes_nothing(
    room, tmp_path, make, changes, field, message
):
    outputs = tmp_path / "outputs"
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    archive = make(room, uploads) if make else None
    assert field in FIELDS
    # Before queueing (the validator: the zip unpacked into a temporary folder and loaded) ...
    with pytest.raises(UserError) as info:
        form(archive, outputs, **changes)
    assert info.value.field == field and message in str(info.value), str(info.value)
    assert "scene-check" not in str(info.value)  # the user's words: no temporary paths
    # ... and again in the queued function, which unpacks into the run folder: nothing is left either way.
    if archive is not None and field in ("scene", "prompts"):
        try:
            inputs = form(archive, outputs, read_files=False, **changes)
        except UserError as err:  # refused by the zip's directory alone
            assert err.field == field and message in str(err)
        else:
            with pytest.raises(UserError) as info:
                prepare_run(inputs, outputs)
            assert info.value.field == field and message in str(info.value), str(info.value)
    if archive is not None:
        assert leftovers(outputs, archive) == []
    assert not (outputs / "dprecon").exists() or not list((outputs / "dprecon").iterdir())
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_a_zip_too_large_or_with_too_many_files_is_refused(room, tmp_path, monkeypatch):
    archive = zip_folder(room, tmp_path / "room.zip")
    size = sum(i.file_size for i in zipfile.ZipFile(archive).infolist())
    monkeypatch.setattr(scene_zip, "MAX_UNPACKED_BYTES", size - 1)
    with pytest.raises(UserError, match="more than the 0 GB a scene may take; use fewer or smaller views"):
        form(archive, tmp_path / "outputs")
    monkeypatch.setattr(scene_zip, "MAX_UNPACKED_BYTES", size)
    monkeypatch.setattr(scene_zip, "MAX_MEMBERS", 5)
    with pytest.raises(UserError, match="more than the 5 a scene may have; zip only the scene folder"):
        form(archive, tmp_path / "outputs")
    assert not (tmp_path / "outputs").exists()


def test_dprecon_layout_with_its_contents_at_the_top_level_and_a_prompts_override(room, tmp_path):
    """DP-Recon's layout (cameras.npz, label-indexed prompt files) zipped without its folder: the override
    replaces its prompts, written in its own layout, and the run folder holds the scene and config.yaml."""
    from recon.data.scene import load_instance_scene, write_instance_scene
    from recon.runs import load_config

    scan = write_instance_scene(tmp_path / "scan1", load_instance_scene(room), layout="dprecon")
    archive = zip_folder(scan, tmp_path / "uploads" / "scan1.zip", top=None, extra={"__MACOSX/._x": b""})
    outputs = tmp_path / "outputs"
    override = {"3": "a yellow chair", "1": "a red snowman"}
    inputs = form(archive, outputs, prompts=json.dumps(override))
    assert inputs.root == "" and inputs.prompts == {1: "a red snowman", 3: "a yellow chair"}
    run_dir = prepare_run(inputs, outputs)
    assert run_dir.parent == outputs / "dprecon" and run_dir.name.startswith("scan1-")
    assert sorted(p.name for p in (outputs / "dprecon").iterdir()) == [run_dir.name]  # no temporary folder
    loaded = load_instance_scene(run_dir / "scene")
    assert (
        loaded.prompts == inputs.prompts
        and len(loaded) == 6
        and not (run_dir / "scene" / "__MACOSX").exists()
    )
    pipeline, config = load_config(run_dir)
    assert pipeline == "dprecon" and config["scene"] == str(run_dir.resolve() / "scene")
    assert config["recon_steps"] == 120 and config["sdf"]["grid_resolutions"] == [16, 32, 48]


# ---------------------------------------------------------------- a run, cancelled and continued
@pytest.fixture(scope="module")
def finished_run(room, tmp_path_factory):
    """A run started from the zip, cancelled through its RunJob after a few steps, then continued."""
    import torch

    from app.jobs import RunJob
    from recon.train import Hooks

    outputs = tmp_path_factory.mktemp("scene-outputs")
    archive = zip_folder(room, tmp_path_factory.mktemp("scene-uploads") / "room.zip")
    started = time.perf_counter()
    run_dir = prepare_run(form(archive, outputs, read_files=False), outputs)
    first = SceneProgress.of_run(run_dir)
    job = RunJob(lambda hooks: run_scene(run_dir, hooks, first)).start()
    while first.done < 3 and not job.done.is_set():
        time.sleep(0.05)
    assert job.cancel(60), "the worker did not stop"
    assert job.error is None and job.stopped is not None, job.error
    stopped = {
        "step": torch.load(run_dir / "ckpt" / "last.pt", weights_only=False)["stage_step"],
        "counted": first.done,
        "export": (run_dir / "export").exists(),
        "workers": [t for t in threading.enumerate() if t.name == "sds3d-run"],
    }
    # Continued from the form's "Continue run" field: the same folder, from its checkpoint.
    inputs = form(None, outputs, resume=run_dir.name)
    assert prepare_run(inputs, outputs) == run_dir
    second = SceneProgress.of_run(run_dir)
    stopped["resumed_at"] = second.done
    polls = []

    def count_polls() -> bool:
        polls.append(1)
        return False

    run_scene(run_dir, Hooks(should_stop=count_polls), second)
    print(f"scene tab run, cancelled and continued: {time.perf_counter() - started:.1f} s")
    return run_dir, outputs, stopped, second, len(polls)


def test_cancel_stops_at_a_checkpoint_and_a_second_run_continues_from_it(finished_run):
    run_dir, outputs, stopped, second, polls = finished_run
    assert 3 <= stopped["step"] < 50 and stopped["counted"] == stopped["step"]  # before the first checkpoint
    assert not stopped["export"] and not stopped["workers"]
    assert stopped["resumed_at"] == stopped["step"]
    assert second.total == 124 and second.done == 124
    assert polls == 124 - stopped["step"]  # only the steps after the checkpoint ran again
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stages"]["recon"]["steps"] == 120 and metrics["stages"]["refine"]["steps"] == 4
    assert sorted(p.name for p in (outputs / "dprecon").iterdir()) == [run_dir.name]
    with pytest.raises(UserError, match="is finished"):
        form(None, outputs, resume=run_dir.name)


def test_the_run_writes_a_glb_per_object_a_scene_glb_with_a_node_each_and_a_preview(finished_run, room):
    from recon.mesh.io import read_mesh
    from recon.mesh.scene import read_scene_nodes

    run_dir, _, _, _, _ = finished_run
    prompts = json.loads((room / "prompts.json").read_text())
    names = sorted(p.replace(" ", "-") for p in prompts.values())
    objects = run_dir / "export" / "objects"
    assert sorted(p.stem for p in objects.glob("*.glb")) == names  # one per object, named by its prompt
    for name in names:
        mesh = read_mesh(objects / f"{name}.glb")
        assert len(mesh.faces) > 50 and mesh.visual.uv is not None
    nodes = read_scene_nodes(run_dir / "export" / "scene.glb")
    assert sorted(nodes) == sorted([*names, "background"])
    files = result_files(run_dir)
    downloads = {p.name for p in files["downloads"]}
    for name in names:
        assert {f"{name}.glb", f"{name}.obj", f"{name}.mtl", f"{name}.png"} <= downloads
    assert {"scene.glb", "metrics.json", "background.glb"} <= downloads
    assert files["scene"] == run_dir / "export" / "scene.glb"
    # The preview: the scene from the first photo, then each object alone; something drawn in every tile.
    grid = np.asarray(Image.open(files["preview"]).convert("RGB")).astype(int)
    assert grid.shape == (160, 4 * 160, 3)
    tiles = grid.reshape(160, 4, 160, 3).transpose(1, 0, 2, 3)
    drawn = (np.abs(tiles - 255).sum(-1) > 30).mean(axis=(1, 2))
    assert drawn[0] > 0.5 and (drawn[1:] > 0.05).all(), drawn
    line = metrics_line(json.loads((run_dir / "metrics.json").read_text()))
    assert line.startswith("3 objects from 6 views, held-out PSNR") and "mean F-score" in line


def test_the_app_has_the_scene_tab_and_its_endpoint(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
    from app.ui import build_app

    demo = build_app(tmp_path / "outputs", scene_config=scene_config())
    try:
        api = demo.get_api_info()["named_endpoints"]["/scene"]
        assert [p["parameter_name"] for p in api["parameters"]] == list(FIELDS)
        assert [r["component"] for r in api["returns"]] == ["Markdown", "Image", "File", "File"]
    finally:
        demo.close()
