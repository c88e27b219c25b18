"""Issue #18 (4b): every loader, fed truncated, bit-flipped and wrong-shaped files of its format, raises
:class:`recon.errors.UserError` (or reads the file) — never another exception — and leaves no file behind.

Formats: checkpoints (``ckpt/last.pt``), 3DGS PLY and ``.splat``, GLB / OBJ, ``transforms.json`` (and its
images), COLMAP text and binary models, videos, images, masks, diffusion prior folders
(``model_index.json``, component configs, safetensors) and presets. Each sample is a real file written
by the project's own writers; hypothesis mutates it (seeded, no example database), with few enough
examples that the whole file runs in about a minute on two busy cores.
"""

from __future__ import annotations

import gc
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from recon.errors import UserError

FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # seeded: the same examples on every run
    database=None,  # no .hypothesis/ folder
    phases=(Phase.explicit, Phase.generate),  # a failure is reported as found (shrinking takes minutes)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(n: int):
    return settings(FUZZ, max_examples=n)


# ------------------------------------------------------------------------------------------ mutations
def truncated(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, max(0, len(data) - 1)).map(lambda k: data[:k])


def bit_flipped(data: bytes, region: tuple[int, int] | None = None) -> st.SearchStrategy[bytes]:
    low, high = region or (0, len(data))
    flips = st.lists(
        st.tuples(st.integers(low, max(low, high - 1)), st.integers(0, 7)), min_size=1, max_size=6
    )

    def flip(pairs: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for pos, bit in pairs:
            out[pos] ^= 1 << bit
        return bytes(out)

    return flips.map(flip)


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
)


def mutate_tree(draw: Callable, tree: Any, depth: int = 0) -> Any:
    """A copy of a JSON/YAML-like tree (dicts, lists, tensors, leaves) with one node replaced, deleted or
    (a tensor) reshaped: the "wrong-shaped" file of a structured format."""
    if isinstance(tree, torch.Tensor):
        choice = draw(st.sampled_from(["reshape", "drop", "leaf", "dtype"]))
        if choice == "reshape" and tree.numel() > 1:
            return tree.reshape(-1)
        if choice == "drop" and tree.ndim and tree.shape[-1] > 0:
            return tree[..., :-1]
        if choice == "dtype":
            return tree.to(torch.int64) if tree.is_floating_point() else tree.float()
        return draw(LEAVES)
    children = (
        list(tree.items())
        if isinstance(tree, dict)
        else list(enumerate(tree))
        if isinstance(tree, (list, tuple))
        else []
    )
    if not children or draw(st.integers(0, 3)) == 0 or depth > 6:
        return draw(LEAVES)
    key, child = children[draw(st.integers(0, len(children) - 1))]
    action = draw(st.sampled_from(["recurse", "recurse", "delete", "replace"]))
    if isinstance(tree, dict):
        out = dict(tree)
        if action == "delete":
            del out[key]
        else:
            out[key] = draw(LEAVES) if action == "replace" else mutate_tree(draw, child, depth + 1)
        return out
    out = list(tree)
    if action == "delete":
        del out[key]
    else:
        out[key] = draw(LEAVES) if action == "replace" else mutate_tree(draw, child, depth + 1)
    return out if isinstance(tree, list) else tuple(out)


def json_bytes(tree: Any) -> bytes:
    return json.dumps(tree, allow_nan=True, default=str).encode()


# ------------------------------------------------------------------------------------------ the check
def _temp_leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith("sds3d-")}


def assert_user_error_or_ok(load: Callable[[], Any], folder: Path) -> None:
    """``load()`` returns or raises UserError; nothing new appears in ``folder`` or the temp folder."""
    before, temp_before = set(folder.rglob("*")), _temp_leftovers()
    try:
        load()
    except UserError as err:
        assert str(err).strip() and "\n" not in str(err).strip()[:1], err
    after = set(folder.rglob("*"))
    assert after == before, f"files left behind: {sorted(map(str, after - before))}"
    assert _temp_leftovers() <= temp_before, "a temporary folder was left behind"


class Sample:
    """A folder holding a good sample; each example gets a fresh copy with one file replaced."""

    def __init__(self, folder: Path, target: str):
        self.folder, self.target = folder, target
        self.data = (folder / target).read_bytes()

    def with_bytes(self, data: bytes, work: Path) -> Path:
        copy = Path(tempfile.mkdtemp(dir=work))
        shutil.rmtree(copy)
        shutil.copytree(self.folder, copy)
        (copy / self.target).write_bytes(data)
        return copy

    def check(self, data: bytes, work: Path, load: Callable[[Path], Any]) -> None:
        copy = self.with_bytes(data, work)
        try:
            assert_user_error_or_ok(lambda: load(copy), copy)
        finally:
            shutil.rmtree(copy, ignore_errors=True)


# ------------------------------------------------------------------------------------------ samples
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-work")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Sample]:
    """One good file of every format, written by the project's own writers."""
    from PIL import Image

    from recon.data.datasets import SceneData, write_transforms
    from recon.data.poses import import_pycolmap
    from recon.data.synthetic import TexturedBlocks, orbit_path
    from recon.data.video import write_video
    from recon.gaussians import GaussianModel
    from recon.mesh.io import write_glb, write_obj
    from recon.mesh.uv import UVMesh
    from recon.runs import save_config
    from recon.train import Stage, TrainConfig, Trainer

    root = tmp_path_factory.mktemp("fuzz-samples")
    out: dict[str, Sample] = {}

    # A run folder: config.yaml and a checkpoint as the trainer writes it (Gaussians, optimizer state).
    from recon.pipelines.stabledreamer import StableDreamerConfig

    run = root / "run"
    run.mkdir()
    model = GaussianModel.random_in_sphere(24, sh_degree=1, generator=torch.Generator().manual_seed(0))
    stage = Stage("fit", 1, lambda step, generator: None, lambda m, batch: None, [])
    Trainer(model, [stage], run, TrainConfig(progress_bar=False)).save_checkpoint()
    save_config(StableDreamerConfig(), run, "stabledreamer")
    out["ckpt"] = Sample(run, "ckpt/last.pt")

    gauss = root / "gaussians"
    gauss.mkdir()
    model.save_ply(gauss / "splats.ply", layout_degree=3)
    model.save_splat(gauss / "model.splat")
    out["ply"] = Sample(gauss, "splats.ply")
    out["splat"] = Sample(gauss, "model.splat")

    mesh_dir = root / "mesh"
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int64)
    uvs = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    normals = verts - verts.mean(0)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    uv_mesh = UVMesh(verts, faces, uvs, normals.astype(np.float32))
    texture = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    write_glb(mesh_dir / "model.glb", uv_mesh, texture)
    write_obj(mesh_dir, uv_mesh, texture)
    glb = root / "glb"
    glb.mkdir()
    shutil.copy(mesh_dir / "model.glb", glb / "model.glb")
    (mesh_dir / "model.glb").unlink()
    out["glb"] = Sample(glb, "model.glb")
    out["obj"] = Sample(mesh_dir, "model.obj")

    scene = root / "scene"
    cams = orbit_path(3, sweep_deg=90.0, distance=3.0, width=8, height=6)
    rgb, _ = TexturedBlocks(seed=0).render(cams, supersample=1)
    write_transforms(scene / "transforms.json", SceneData(rgb, cams, [f"f{i}.png" for i in range(3)]))
    out["transforms"] = Sample(scene, "transforms.json")
    out["image"] = Sample(scene, "images/f0.png")

    pycolmap = import_pycolmap()
    colmap = root / "colmap"
    (colmap / "sparse" / "0").mkdir(parents=True)
    (colmap / "images").mkdir()
    for name in "ab":
        Image.fromarray((rgb[0].numpy() * 255).astype(np.uint8)).save(colmap / "images" / f"{name}.png")
    (colmap / "sparse" / "0" / "cameras.txt").write_text("1 PINHOLE 8 6 10 10 4 3\n")
    (colmap / "sparse" / "0" / "images.txt").write_text(
        "1 1 0 0 0 0 0 0 1 a.png\n2 3 1 1\n2 0.9950042 0 0.0998334 0 0.3 0 0 1 b.png\n4 3 1\n"
    )
    (colmap / "sparse" / "0" / "points3D.txt").write_text("1 0 0 5 255 0 0 0.5 1 0 2 0\n")
    colmap_bin = root / "colmap-bin"
    shutil.copytree(colmap / "images", colmap_bin / "images")
    (colmap_bin / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(colmap / "sparse" / "0")).write_binary(str(colmap_bin / "sparse" / "0"))
    for name in ("cameras", "images", "points3D"):
        out[f"colmap-{name}.txt"] = Sample(colmap, f"sparse/0/{name}.txt")
        out[f"colmap-{name}.bin"] = Sample(colmap_bin, f"sparse/0/{name}.bin")

    video = root / "video"
    frames = (np.random.default_rng(1).random((4, 16, 16, 3)) * 255).astype(np.uint8)
    write_video(video / "clip.mp4", frames, fps=4)
    out["video"] = Sample(video, "clip.mp4")

    reference = root / "reference"
    reference.mkdir()
    picture = np.full((32, 32, 3), 255, np.uint8)
    picture[8:24, 8:24] = (200, 30, 30)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(picture).save(reference / "picture.png")
    Image.fromarray(mask).save(reference / "mask.png")
    out["mask"] = Sample(reference, "mask.png")

    prior = root / "prior"
    shutil.copytree(Path(__file__).resolve().parents[2] / "assets" / "embedded-unet", prior)
    for name in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        out[f"prior {name}"] = Sample(prior, name)
    out["prior safetensors"] = Sample(prior, "unet/diffusion_pytorch_model.safetensors")

    presets = root / "preset"
    presets.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "configs" / "video-recon-nerf.yaml", presets / "p.yaml")
    out["preset"] = Sample(presets, "p.yaml")
    return out


# ------------------------------------------------------------------------------------------ loaders
def load_checkpoint(run: Path) -> None:
    from recon.runs import load_model

    load_model(run)


def load_ply(folder: Path) -> None:
    from recon.gaussians import GaussianModel

    GaussianModel.load_ply(folder / "splats.ply")


def load_splat(folder: Path) -> None:
    from recon.gaussians import read_splat

    read_splat(folder / "model.splat")


def load_mesh(name: str) -> Callable[[Path], None]:
    def load(folder: Path) -> None:
        from recon.mesh.io import read_mesh

        read_mesh(folder / name)

    return load


def load_transforms(folder: Path) -> None:
    from recon.data.datasets import load_transforms

    load_transforms(folder / "transforms.json")


def load_colmap(folder: Path) -> None:
    from recon.data.datasets import load_colmap

    load_colmap(folder)


def load_video(folder: Path) -> None:
    from recon.data.video import read_video

    read_video(folder / "clip.mp4")


def load_reference(folder: Path) -> None:
    from recon.data.reference import ReferenceConfig, load_reference

    load_reference(folder / "picture.png", ReferenceConfig(size=32), mask=folder / "mask.png")


def load_prior(folder: Path) -> None:
    from priors.model import DiffusionPrior

    try:
        DiffusionPrior.from_pretrained(str(folder))
    finally:
        gc.collect()  # a loaded prior holds ~100 MB; don't let the examples pile them up


def load_preset(folder: Path) -> None:
    from recon.presets import load_preset

    load_preset(folder / "p.yaml")


# ------------------------------------------------------------------------------------------ the tests
def test_the_samples_load(samples):
    """The unmutated samples read back (the mutations start from good files)."""
    for name, sample in samples.items():
        loader = LOADERS[name]
        loader(sample.folder)


PRIOR_FILES = ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json")
LOADERS: dict[str, Callable[[Path], None]] = {
    "ckpt": load_checkpoint,
    "ply": load_ply,
    "splat": load_splat,
    "glb": load_mesh("model.glb"),
    "obj": load_mesh("model.obj"),
    "transforms": load_transforms,
    "image": load_transforms,
    **{f"colmap-{n}.{k}": load_colmap for n in ("cameras", "images", "points3D") for k in ("txt", "bin")},
    "video": load_video,
    "mask": load_reference,
    **{
        f"prior {n}": load_prior
        for n in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json")
    },
    "prior safetensors": load_prior,
    "preset": load_preset,
}
BINARY = ["ckpt", "ply", "splat", "glb", "obj", "image", "video", "mask", "colmap-cameras.bin",
          "colmap-images.bin", "colmap-points3D.bin", "colmap-cameras.txt", "colmap-images.txt",
          "colmap-points3D.txt"]  # fmt: skip
EXAMPLES = {"ckpt": 10, "video": 10, "mask": 8, **{name: 4 for name in LOADERS if name.startswith("colmap")}}
"""Examples per test where 12 would take long (a COLMAP read starts a child process)."""


@pytest.fixture(autouse=True)
def small_colmap_memory(monkeypatch):
    """The COLMAP trial read gets 1 GiB here (4 GiB in use): a damaged count fails sooner."""
    import recon.data.datasets

    monkeypatch.setattr(recon.data.datasets, "COLMAP_READ_MEMORY", 1 << 30)


@pytest.mark.parametrize("name", BINARY)
def test_truncated_files_give_a_user_error(samples, work, name):
    sample = samples[name]

    @fuzz(EXAMPLES.get(name, 12))
    @given(data=truncated(sample.data))
    def run(data):
        sample.check(data, work, LOADERS[name])

    run()


@pytest.mark.parametrize("name", BINARY)
def test_bit_flipped_files_give_a_user_error(samples, work, name):
    sample = samples[name]

    @fuzz(EXAMPLES.get(name, 12))
    @given(data=bit_flipped(sample.data))
    def run(data):
        sample.check(data, work, LOADERS[name])

    run()


def test_wrong_shaped_checkpoints_give_a_user_error(samples, work):
    sample = samples["ckpt"]
    payload = torch.load(sample.folder / "ckpt" / "last.pt", weights_only=False)

    @fuzz(25)
    @given(data=st.data())
    def run(data):
        mutated = mutate_tree(data.draw, payload)
        buffer = io.BytesIO()
        torch.save(mutated, buffer)
        sample.check(buffer.getvalue(), work, load_checkpoint)

    run()


def test_wrong_shaped_ply_headers_give_a_user_error(samples, work):
    sample = samples["ply"]
    end = sample.data.index(b"end_header\n") + len(b"end_header\n")
    header, body = sample.data[:end].decode().splitlines(), sample.data[end:]

    @fuzz(25)
    @given(data=st.data())
    def run(data):
        lines = list(header)
        i = data.draw(st.integers(1, len(lines) - 2))
        action = data.draw(st.sampled_from(["delete", "duplicate", "count", "type", "swap"]))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "count":
            lines[2] = f"element vertex {data.draw(st.integers(-5, 10**9))}"
        elif action == "type":
            lines[i] = lines[i].replace(
                "float", data.draw(st.sampled_from(["uchar", "double", "list uchar int", "bogus"]))
            )
        else:
            j = data.draw(st.integers(1, len(lines) - 2))
            lines[i], lines[j] = lines[j], lines[i]
        sample.check(("\n".join(lines) + "\n").encode() + body, work, load_ply)

    run()


UNET_CONFIG_GAP = pytest.mark.xfail(
    strict=True,
    reason="DiffusionPrior.from_pretrained (priors/model.py) turns only OSError / ValueError of a "
    "component's "
    "from_pretrained into a UserError; a wrongly typed unet config.json gives diffusers' TypeError / "
    "RuntimeError (the CLI reports it as an internal error, exit 1)",
)


@pytest.mark.parametrize(
    "name",
    ["transforms", "prior model_index.json", pytest.param("prior unet/config.json", marks=UNET_CONFIG_GAP),
     "prior scheduler/scheduler_config.json"],
)  # fmt: skip
def test_wrong_shaped_json_gives_a_user_error(samples, work, name):
    sample = samples[name]
    tree = json.loads(sample.data)

    @fuzz(20 if name == "transforms" else 6)
    @given(data=st.data())
    def run(data):
        sample.check(json_bytes(mutate_tree(data.draw, tree)), work, LOADERS[name])

    run()


@pytest.mark.parametrize("name", ["transforms", "prior model_index.json", "preset"])
def test_truncated_and_bit_flipped_text_gives_a_user_error(samples, work, name):
    sample = samples[name]

    @fuzz(10 if name != "prior model_index.json" else 6)
    @given(data=st.one_of(truncated(sample.data), bit_flipped(sample.data)))
    def run(data):
        sample.check(data, work, LOADERS[name])

    run()


def test_wrong_shaped_presets_give_a_user_error(samples, work):
    sample = samples["preset"]
    tree = yaml.safe_load(sample.data)

    @fuzz(25)
    @given(data=st.data())
    def run(data):
        sample.check(yaml.safe_dump(mutate_tree(data.draw, tree)).encode(), work, load_preset)

    run()


def test_damaged_safetensors_give_a_user_error(samples, work):
    sample = samples["prior safetensors"]
    header = 8 + int.from_bytes(sample.data[:8], "little")

    @fuzz(6)
    @given(data=st.one_of(truncated(sample.data), bit_flipped(sample.data, (0, header))))
    def run(data):
        sample.check(data, work, load_prior)

    run()
