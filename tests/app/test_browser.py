"""The app in a real headless Chromium (Playwright): type a prompt, Generate, see the 3D result, no error.

Needs the Debian ``chromium`` package (/usr/bin/chromium) and ``pip install playwright`` (its own browser
download, ``playwright install``, is not used). Skips with the reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)

CHROMIUM = os.environ.get("SDS3D_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # No GPU here: WebGL through ANGLE on SwiftShader (software Vulkan), so the 3D viewers draw.
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from app import ui

    outputs = tmp_path_factory.mktemp("browser-outputs")
    small = {"faces": 2000, "texture_size": 128, "image_size": 128, "n_views": 12}
    demo = ui.build_app(outputs, export_extra=small)
    url = ui.launch_app(demo, outputs, port=free_port(), prevent_thread_lock=True)
    ui.WARM.wait(120)
    yield url, outputs
    demo.close()


def test_generate_in_the_browser_shows_the_mesh(app_url):
    url, outputs = app_url
    ARTIFACTS.mkdir(exist_ok=True)
    foreign: list[str] = []
    console_errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda r: foreign.append(r.url) if _is_foreign(r.url) else None)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            prompt = page.locator("#prompt textarea")
            prompt.wait_for(timeout=60_000)
            prompt.fill("a yellow torus")
            steps = page.get_by_label("Steps", exact=True)
            steps.fill("6")
            started = time.perf_counter()
            page.locator("#generate").click()
            # The GLB viewer gets a canvas once the result is loaded; the status says Done.
            page.locator("#status").get_by_text("Done").wait_for(timeout=240_000)
            # The 3D viewers hold the run's GLB and splats (their download links point at them).
            glb_link = page.locator("#glb-view [data-testid=model3d-download-link]")
            glb_link.wait_for(timeout=60_000)
            glb_href = glb_link.get_attribute("href")
            splat_href = page.locator("#splat-view [data-testid=model3d-download-link]").get_attribute("href")
            took = time.perf_counter() - started
            webgl = page.evaluate("() => !!document.createElement('canvas').getContext('webgl2')")
            drawn = _wait_until_drawn(page, "#glb-view canvas", ARTIFACTS / "app-glb-viewer.png")
            splats_drawn = _wait_until_drawn(page, "#splat-view canvas", ARTIFACTS / "app-splat-viewer.png")
            page.screenshot(path=str(ARTIFACTS / "app-generate.png"), full_page=True)
            text = page.locator("body").inner_text()
            toasts = page.locator(".toast-body.error").count()
        finally:
            browser.close()
    shown = "no canvas" if drawn is None else f"the mesh covers {drawn:.1%} of its canvas"
    splats = "no canvas" if splats_drawn is None else f"the splats cover {splats_drawn:.1%}"
    print(f"browser: generate to result in {took:.1f} s; WebGL2 {webgl}; GLB viewer: {shown}; {splats}")
    assert webgl, "WebGL is unavailable in this Chromium (SwiftShader missing?)"
    assert glb_href.endswith("/model.glb") and splat_href.endswith("/model.splat")
    served = glb_href.split("file=", 1)[1]
    assert Path(served).resolve().is_relative_to(outputs.resolve())  # served from the outputs folder
    assert toasts == 0 and "Error" not in text, text[:2000]
    assert (ARTIFACTS / "app-generate.png").stat().st_size > 10_000
    runs = list((outputs / "stabledreamer").glob("a-yellow-torus-*/export/model.glb"))
    assert len(runs) == 1
    assert not foreign, f"the page reached beyond this machine: {foreign[:5]}"
    # Babylon.js tries WebGPU first and logs an error when it falls back to WebGL2 (no GPU here).
    assert not [e for e in console_errors if "favicon" not in e and "WebGPU" not in e], console_errors
    assert drawn is not None, "the GLB viewer created no <canvas> (see test-artifacts/app-generate.png)"
    assert drawn > 0.02, "the GLB viewer did not draw the mesh (see test-artifacts/app-glb-viewer.png)"
    assert splats_drawn is not None, "the splat viewer created no <canvas> (test-artifacts/app-generate.png)"
    assert splats_drawn > 0.02, "the splat viewer drew nothing (see test-artifacts/app-splat-viewer.png)"


def _wait_until_drawn(page, selector: str, artifact: Path, timeout_s: float = 45.0) -> float | None:
    """Screenshots the first canvas matching ``selector`` until it shows a drawing (saved to ``artifact``);
    returns the drawn share of the canvas, or None when no canvas appeared."""
    canvas = page.locator(selector).first
    drawn, deadline = None, time.time() + timeout_s
    while time.time() < deadline:
        if canvas.count():
            drawn = _drawn_fraction(canvas.screenshot(path=str(artifact)))
            if drawn > 0.02:
                break
        page.wait_for_timeout(1000)
    return drawn


def _drawn_fraction(png: bytes) -> float:
    """Share of the viewer canvas (below its label and buttons) that differs from its empty background."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32) / 255
    body = rgb[rgb.shape[0] // 8 :]
    background = np.median(np.concatenate([body[:, :4], body[:, -4:]], axis=1).reshape(-1, 3), axis=0)
    return float((np.abs(body - background).max(-1) > 0.1).mean())


def _is_foreign(url: str) -> bool:
    host = urlparse(url).hostname
    return url.startswith(("http:", "https:", "ws:", "wss:")) and host not in ("127.0.0.1", "localhost")
