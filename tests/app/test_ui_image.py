"""The app's Image to 3D tab over HTTP through gradio_client: its API, bad input, the mask preview, a run."""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gradio = pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed")

from app.tabs.image import FIELDS, OUTLINE, PREVIEW_SIZE, TINT  # noqa: E402
from app.ui import build_app, launch_app  # noqa: E402
from tests.app.test_ui import MAX_UPLOAD, free_port  # noqa: E402

IMAGE_EXPORT = {"faces": 1000, "texture_size": 64, "image_size": 32, "n_views": 6}
"""The app's export_extra: DreamCraft3D's mesh settings (faces, texture, bake views) small for a test."""


def form(image, **kw) -> dict:
    """The tab's endpoint arguments: a tiny run that needs no view prior to be shipped."""
    args = dict(
        image=image, mask=None, prompt="", steps=8, seed=0, view_prior="none", texture_guidance="bsd",
        prior="embedded-unet", allow_download=False, reference_size=32, resolution=32, faces=1000,
        texture_size=128,
    )  # fmt: skip
    return {**args, **kw}


def cone_picture(path: Path, size: int = 96, rgba: bool = True) -> Path:
    """A red cone rendered side-on: RGBA (transparent background) or RGB on white."""
    from recon.cameras import cameras_from_spherical
    from recon.data.procedural import render_primitive

    one = torch.ones(1)
    cam = cameras_from_spherical(one * 0, one * 0, one * 3.0, one * 40, size, size)
    rgb, alpha, _ = render_primitive("cone", "red", cam)
    rgb, alpha = rgb[0].numpy(), alpha[0].reshape(size, size, 1).numpy()
    img = np.concatenate([rgb, alpha], -1) if rgba else rgb * alpha + (1 - alpha)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # Imported at start, as `sds3d app`'s warm-up does: the tab's checks run before queueing, inside
    # gradio_client's 20 s request timeout, which a first import on a loaded machine can exceed.
    import recon.data.reference  # noqa: F401
    import recon.pipelines  # noqa: F401

    outputs = tmp_path_factory.mktemp("image-app-outputs")
    # As `sds3d app --host 0.0.0.0` serves it: local priors only from the outputs folder; small uploads.
    demo = build_app(outputs, max_queue_size=4, export_extra=IMAGE_EXPORT, allowed_prior_dirs=[outputs])
    url = launch_app(
        demo, outputs, port=free_port(), prevent_thread_lock=True, max_file_size=MAX_UPLOAD, warm=False
    )
    client = gradio_client.Client(url, verbose=False, download_files=str(outputs.parent / "client-files"))
    yield client, outputs
    demo.close()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    cone_picture(folder / "cone.png")
    cone_picture(folder / "cone-rgb.png", rgba=False)
    (folder / "notes.txt").write_text("not a picture")
    (folder / "notes.png").write_text("not a picture either")
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(folder / "empty-mask.png")
    half = np.zeros((96, 96), np.uint8)
    half[:, :48] = 255
    Image.fromarray(half).save(folder / "left-half-mask.png")
    border = np.zeros((32, 32, 4), np.uint8)  # a cross touching all four borders
    border[..., 0] = 200
    border[14:18, :, 3] = 255
    border[:, 14:18, 3] = 255
    Image.fromarray(border).save(folder / "cross.png")
    return folder


def runs(outputs: Path) -> list[Path]:
    return sorted(p for p in (outputs / "dreamcraft3d").glob("*") if p.is_dir())


def test_the_embedded_view_prior_is_looked_for_where_priors_view_keeps_it():
    from app.tabs.image import embedded_view_dir
    from priors.view import EMBEDDED_VIEW_DIR

    assert embedded_view_dir() == EMBEDDED_VIEW_DIR


def test_the_tab_endpoints_are_in_the_api_with_their_types(app):
    client, _ = app
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    run = endpoints["/image_to_3d"]
    params = {p["parameter_name"]: p for p in run["parameters"]}
    assert list(params) == list(FIELDS)  # Gradio's progress argument is not part of the API
    assert params["image"]["python_type"]["type"] == "filepath"
    assert params["image"]["component"] == params["mask"]["component"] == "File"
    assert params["prompt"]["python_type"]["type"] == "str"
    for name in ("steps", "seed", "reference_size", "resolution"):
        assert params[name]["python_type"]["type"] == "int", name
    assert params["faces"]["component"] == "Slider"
    assert params["view_prior"]["component"] == "Dropdown"  # embedded / none, or a typed source
    assert params["steps"]["parameter_default"] == 800
    assert params["view_prior"]["parameter_default"] == "embedded"
    assert params["texture_guidance"]["python_type"]["type"] == "Literal['bsd', 'sds']"
    assert params["allow_download"]["python_type"]["type"] == "bool"
    returned = [r["component"] for r in run["returns"]]
    assert returned[:4] == ["Markdown", "Image", "File", "File"]  # status, turntable, GLB, splats
    preview = endpoints["/mask_preview"]
    assert [p["parameter_name"] for p in preview["parameters"]] == ["image", "mask"]
    assert [r["component"] for r in preview["returns"]] == ["Image", "Markdown"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": None}, "upload a picture first"),
        ({"image": "notes.png"}, "is not an image this machine can read"),
        ({"image": "cone.png", "mask": "empty-mask.png"}, "the object mask (mask-file) is empty"),
        ({"image": "cross.png"}, "touches all four borders"),
        ({"steps": 50_000}, "steps must be a whole number between 2 and 20000, got 50000"),
        ({"steps": 1}, "steps must be a whole number between 2 and 20000, got 1"),
        ({"seed": -1}, "seed must be a whole number between 0 and 4294967295"),
        ({"reference_size": 2048}, "reference size must be a whole number between 16 and 512"),
        ({"resolution": 8}, "render resolution must be a whole number between 16 and 256"),
        ({"view_prior": "/etc"}, "outside the folders this server may read"),
        ({"prior": "~"}, "--allow-prior-dir"),
        ({"view_prior": " "}, "the view prior is empty"),
    ],
)
def test_bad_input_is_refused_before_queueing_and_writes_no_run(app, pictures, changes, message):
    client, outputs = app
    before = runs(outputs)
    args = form(gradio_client.handle_file(str(pictures / "cone.png")))
    for key in ("image", "mask"):
        if changes.get(key):
            changes = {**changes, key: gradio_client.handle_file(str(pictures / changes[key]))}
    with pytest.raises(Exception) as info:  # noqa: B017 - gradio_client raises ValidationError or AppError
        client.predict(**{**args, **changes}, api_name="/image_to_3d")
    assert message in str(info.value), str(info.value)
    assert runs(outputs) == before


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": "notes.txt"}, "Invalid file type. Please upload a file that is one of these formats"),
        ({"mask": "notes.txt"}, "Invalid file type. Please upload a file that is one of these formats"),
        ({"faces": 100}, "Value 100 is less than minimum value 500"),
        ({"texture_size": 10_000}, "Value: 10000 is not in the list of choices: [128, 256, 512, 1024, 2048]"),
        ({"texture_guidance": "vsd"}, "is not in the list of choices: ['bsd', 'sds']"),
    ],
)
def test_gradio_refuses_what_a_component_cannot_hold_with_the_reason(app, pictures, changes, message):
    """A text file, a slider value past its end, a choice not offered: HTTP 400 before queueing."""
    import httpx

    from app.tabs.image import make_image_config
    from recon.errors import UserError

    client, outputs = app
    before = runs(outputs)
    args = form(gradio_client.handle_file(str(pictures / "cone.png")))
    for key in ("image", "mask"):
        if changes.get(key):
            changes = {**changes, key: gradio_client.handle_file(str(pictures / changes[key]))}
    with pytest.raises(httpx.HTTPStatusError) as info:
        client.predict(**{**args, **changes}, api_name="/image_to_3d")
    assert info.value.response.status_code == 400
    assert message in info.value.response.text, info.value.response.text
    assert runs(outputs) == before
    # The tab's own check says the same where Gradio's would not run (a direct call, another client).
    local = {
        **form(str(pictures / "cone.png")),
        **{k: v for k, v in changes.items() if k not in ("image", "mask")},
    }
    if "image" in changes:
        local["image"] = str(pictures / "notes.txt")
    if "mask" in changes:
        local["mask"] = str(pictures / "notes.txt")
    with pytest.raises(
        UserError, match="is not a picture|between 500 and 200000|between 64 and 4096|bsd or sds"
    ):
        make_image_config(**local)


def _preview(client, image, mask=None) -> tuple[np.ndarray | None, str]:
    upload = gradio_client.handle_file(str(image))
    path, caption = client.predict(
        upload, gradio_client.handle_file(str(mask)) if mask else None, api_name="/mask_preview"
    )
    return (np.asarray(Image.open(path).convert("RGB")) if path else None), caption


def test_mask_preview_shows_the_prepared_reference_with_its_mask(app, pictures):
    client, _ = app
    tinted_white = np.round(255 * (0.55 + 0.45 * np.asarray(TINT))).astype(int)
    outline = (np.asarray(OUTLINE) * 255).astype(int)
    for picture, mask, source in [
        ("cone.png", None, "the picture's alpha"),  # RGBA keeps its alpha
        ("cone-rgb.png", None, "background segmentation"),
        ("cone-rgb.png", "left-half-mask.png", "the mask file"),
    ]:
        image, caption = _preview(client, pictures / picture, mask and pictures / mask)
        assert caption.startswith(f"Mask from {source}"), caption
        assert image.shape == (PREVIEW_SIZE, PREVIEW_SIZE, 3)
        corner = image[2, 2].astype(int)
        assert np.abs(corner - tinted_white).max() <= 2, corner  # background: white, tinted
        drawn = np.all(image.astype(int) == outline, axis=-1)
        assert drawn.sum() > 100  # the mask's outline
        centre = image[PREVIEW_SIZE // 2, PREVIEW_SIZE // 2].astype(int)
        if mask is None:  # the cone, recentred: red in the middle
            assert centre[0] > 150 and centre[1] < 80 and centre[2] < 80, centre
        else:  # the mask file's left half of the picture, recentred: its centre is the white backdrop,
            assert np.abs(centre - 255).max() <= 2, centre  # inside the mask, so not tinted
    image, caption = _preview(client, pictures / "cone.png", pictures / "empty-mask.png")
    assert image is None and "Can't use this mask" in caption and "empty" in caption, caption
    image, caption = _preview(client, pictures / "notes.png")
    assert image is None and "Can't use this picture" in caption and "not an image" in caption, caption


def test_a_short_image_to_3d_run_shows_the_mesh_and_a_turntable(app, pictures):
    import trimesh

    from recon.runs import load_config

    client, outputs = app
    started = time.perf_counter()
    status, turntable, glb, splat, downloads, gallery = client.predict(
        **form(gradio_client.handle_file(str(pictures / "cone.png"))), api_name="/image_to_3d"
    )
    print(f"image to 3D through the app: {time.perf_counter() - started:.1f} s")
    assert status.startswith("Done"), status
    run_dir = Path(re.search(r"`(.+)`", status).group(1))
    assert run_dir.parent == outputs / "dreamcraft3d" and runs(outputs) == [run_dir]
    assert "a-red-cone" in run_dir.name  # no prompt: the embedded judges captioned the picture
    assert (run_dir / "export" / "model.glb").is_file()
    pipeline, config = load_config(run_dir)
    assert pipeline == "dreamcraft3d" and config["view_prior"] == "none" and config["prompt"] == ""
    assert config["reference_size"] == 32 and config["resolution"] == 32 and config["max_faces"] == 1000
    assert config["bake_views"] == 6 and config["bake_size"] == 32  # the app's export_extra
    # The mesh as the client downloaded it: a textured mesh with UVs in [0, 1], within the face budget.
    mesh = trimesh.load(glb, force="mesh")
    uv = np.asarray(mesh.visual.uv)
    assert 50 < len(mesh.faces) <= 1000 and uv.shape == (len(mesh.vertices), 2)
    assert 0.0 <= uv.min() <= uv.max() <= 1.0
    # No splats for a mesh run: the panel shows the GLB and a turntable, and offers GLB + OBJ downloads.
    assert splat is None
    assert {Path(d).name for d in downloads} == {"model.glb", "model-obj.zip"}
    zipped = next(d for d in downloads if d.endswith(".zip"))
    assert sorted(zipfile.ZipFile(zipped).namelist()) == ["model.mtl", "model.obj", "texture.png"]
    strip = np.asarray(Image.open(turntable).convert("RGB"))
    assert strip.shape == (128, 8 * 128, 3)
    covered = (strip.astype(int).sum(-1) < 3 * 250).reshape(128, 8, 128).mean(axis=(0, 2))
    assert (covered > 0.02).all(), covered  # the object is seen in every one of the 8 views
    assert len(gallery) == 1 and Path(gallery[0]["image"]).suffix == ".png"
