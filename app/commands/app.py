"""``sds3d app``: the Gradio UI in a browser (generate, watch, preview in 3D, download, reopen runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Interfaces only this machine can connect to."""


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
    max_upload_mb: int = 200
    """Largest video upload accepted, in MB (bigger ones are refused before they are stored)."""
    allow_prior_dir: tuple[Path, ...] = ()
    """Folders a local prior may be loaded from when ``--host`` is not this machine (the outputs
    folder always is). On 127.0.0.1 / localhost any local folder may be used."""

    def prior_dirs(self) -> list[Path] | None:
        """Folders a local prior may come from: ``None`` (anywhere) when only this machine can connect."""
        if self.host in LOCAL_HOSTS:
            return None
        return [self.outputs, *self.allow_prior_dir]

    def run(self) -> int:
        import time

        started = time.perf_counter()
        from app.ui import build_app, configure_environment, launch_app, wait_forever

        if self.max_upload_mb <= 0:
            from recon.errors import UserError

            raise UserError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        configure_environment(self.outputs)
        demo = build_app(self.outputs, max_queue_size=self.max_queue, allowed_prior_dirs=self.prior_dirs())
        url = launch_app(demo, self.outputs, self.host, self.port, prevent_thread_lock=True,
                         max_file_size=f"{self.max_upload_mb}mb")  # fmt: skip
        print(f"sds3d app: running on {url} (started in {time.perf_counter() - started:.1f} s)", flush=True)
        print(f"sds3d app: runs in {self.outputs.resolve()}; Ctrl-C stops", flush=True)
        try:
            wait_forever()
        finally:
            demo.close()
        return 0
