"""``sds3d app``: the Gradio UI in a browser (generate, watch, preview in 3D, download, reopen runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class AppCommand:
    """Serve the sds3d web UI (Gradio) and print its URL."""

    host: str = "127.0.0.1"
    """Interface to listen on (127.0.0.1: this machine only; 0.0.0.0: the network)."""
    port: int = 7860
    """Port to listen on."""
    outputs: Path = Path("outputs")
    """Root of the output tree: new runs go there and the gallery lists the runs found there."""
    max_queue: int = 8
    """Generation requests that may wait at once (one runs at a time)."""
    allow_prior_dir: tuple[Path, ...] = ()
    """Folders a local prior may be loaded from when ``--host`` is not this machine (the outputs
    folder always is). On 127.0.0.1 / localhost any local folder may be used."""

    def run(self) -> int:
        import time

        started = time.perf_counter()
        from app.ui import build_app, configure_environment, launch_app, wait_forever

        configure_environment(self.outputs)
        local = self.host in ("127.0.0.1", "localhost", "::1")
        allowed = None if local else [self.outputs, *self.allow_prior_dir]
        demo = build_app(self.outputs, max_queue_size=self.max_queue, allowed_prior_dirs=allowed)
        url = launch_app(demo, self.outputs, self.host, self.port, prevent_thread_lock=True)
        print(f"sds3d app: running on {url} (started in {time.perf_counter() - started:.1f} s)", flush=True)
        print(f"sds3d app: runs in {self.outputs.resolve()}; Ctrl-C stops", flush=True)
        try:
            wait_forever()
        finally:
            demo.close()
        return 0
