"""``sds3d heads synth`` and ``sds3d heads fit``: procedural portraits, and the head model fitted to one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from recon.errors import SEED, checked


@dataclass
class HeadsSynth:
    """Render procedural portraits (anny heads) with their ground truth: params, landmarks, camera, mask."""

    out_dir: Annotated[str, tyro.conf.Positional]
    """New folder for the portraits (portrait_NNNNNN.png, mask_NNNNNN.png, portrait_NNNNNN.json).
    (A string, checked in ``run``, as ``hands synth``'s OUT_DIR.)"""
    count: int = checked(8, low=1, high=100_000)
    """Portraits."""
    size: int = checked(256, low=16, high=2048)
    """Image side in pixels (square)."""
    seed: int = checked(0, SEED)
    """Seed of the identities, expressions and cameras."""

    def run(self) -> int:
        from recon.errors import UserError, check_out_root

        check_out_root(Path(self.out_dir).parent if self.out_dir else Path("."), "OUT_DIR")
        if not self.out_dir:
            raise UserError("OUT_DIR is empty; pass a new folder")
        if Path(self.out_dir).exists() and any(Path(self.out_dir).iterdir()):
            raise UserError(f"OUT_DIR {self.out_dir} exists and is not empty; pass a new folder")
        folder = write_portraits(self.out_dir, self.count, self.size, self.seed)
        print(f"portraits: {folder}")
        return 0


@dataclass
class HeadsFit:
    """Fit the head model to one portrait (landmarks + mask) and export it as a GLB with expression morphs."""

    portrait: Annotated[Path, tyro.conf.Positional] = checked(path="file", fix="pass a PNG or JPEG portrait")
    """The portrait image."""
    landmarks: Path = checked(path="file", fix="pass a JSON file of 51 or 68 iBUG landmarks")
    """JSON: a list of [x, y] pixel coordinates (iBUG's 51 inner points or all 68), or an object with a
    ``landmarks_2d`` list (what ``heads synth`` writes)."""
    out_dir: Annotated[str, tyro.conf.Positional] = ""
    """New folder for head.glb and fit.json (empty: next to the portrait, <name>-head)."""
    mask: Path | None = checked(None, path="file", fix="pass a PNG mask of the head (white on black)")
    """The head's silhouette (white = head); without it the fit uses the landmarks alone."""
    focal: float = checked(0.0, low=0.0, high=1e6)
    """Focal length in pixels (0: the landmarks JSON's ``camera.fx`` when it has one, as ``heads synth``
    writes, else fitted)."""
    steps: int = checked(300, low=1, high=100_000)
    """Steps of the full fit."""
    texture_size: int = checked(512, low=16, high=4096)
    """Side of the GLB's baked texture."""

    def run(self) -> int:
        import json

        import numpy as np

        from recon.errors import UserError, check_out_root
        from recon.parametric.head_fit import HeadFitConfig, fit_head, load_portrait, portrait_vertex_colors
        from recon.parametric.head_glb import head_glb_bytes
        from recon.parametric.heads import create_head_model

        out = Path(self.out_dir) if self.out_dir else self.portrait.with_name(self.portrait.stem + "-head")
        check_out_root(out.parent, "OUT_DIR")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"OUT_DIR {out} exists and is not empty; pass a new folder")
        image, lm, mask = load_portrait(self.portrait, self.landmarks, self.mask)
        H, W = image.shape[:2]
        focal = self.focal or _json_focal(self.landmarks)
        model = create_head_model("anny")
        fit = fit_head(model, lm, W, H, mask=mask, focal=focal, config=HeadFitConfig(steps=self.steps))
        colors = portrait_vertex_colors(model, fit, image, mask)
        glb = head_glb_bytes(
            model, betas=fit.params["betas"], vertex_colors=colors, texture_size=self.texture_size
        )
        record: dict[str, Any] = {
            "params": {k: v[0].tolist() for k, v in fit.params.items()},
            "camera": {"fx": float(fit.camera.fx[0]), "fy": float(fit.camera.fy[0]),
                       "cx": float(fit.camera.cx[0]), "cy": float(fit.camera.cy[0]), "width": W, "height": H,
                       "camera_to_world": np.eye(4).tolist()},
            "landmark_error_px": fit.landmark_error_px,
            "silhouette_iou": None if mask is None else fit.silhouette_iou,
            "expression_names": list(model.expression_names),
        }  # fmt: skip
        _write_folder(out, {"head.glb": glb, "fit.json": json.dumps(record, indent=1)})
        print(f"head: {out / 'head.glb'} (landmark error {fit.landmark_error_px:.2f} px)")
        return 0


@dataclass
class HeadsCommand:
    """Heads for one-portrait avatars (Zero-1-to-A): make procedural portraits, or fit the head to one."""

    action: tyro.conf.OmitSubcommandPrefixes[
        Annotated[HeadsSynth, tyro.conf.subcommand("synth", prefix_name=False)]
        | Annotated[HeadsFit, tyro.conf.subcommand("fit", prefix_name=False)]
    ]

    def run(self) -> int:
        return self.action.run()


def _json_focal(path: Path) -> float | None:
    """``camera.fx`` of a landmarks JSON written by ``heads synth`` (None for another file)."""
    import json

    try:
        return float(json.loads(Path(path).read_text())["camera"]["fx"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------- writing
def _write_folder(folder: Path, files: dict[str, bytes | str]) -> Path:
    """Writes ``files`` into a temporary sibling of ``folder``, then renames it into place (all or none)."""
    import os
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)
        if folder.exists():
            folder.rmdir()  # empty (checked by the caller)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_portraits(out_dir: str | Path, count: int, size: int, seed: int) -> Path:
    """Renders ``count`` procedural portraits and writes them as one folder (all or nothing).

    Per portrait ``i``: ``portrait_i.png`` (RGB), ``mask_i.png`` (the head's coverage), ``portrait_i.json``
    (``landmarks_2d [51, 2]`` pixels, ``landmarks_3d [51, 3]`` world, every head parameter, the camera's
    ``camera_to_world`` (OpenGL) and intrinsics, the identity's colours, the expression's name).
    """
    import io
    import json

    import numpy as np
    from PIL import Image

    from recon.data.heads_synth import HeadsSynthConfig, synth_portraits

    data = synth_portraits(HeadsSynthConfig(count=count, size=size, seed=seed))
    cams = data["cameras"]
    files: dict[str, bytes | str] = {}
    for i in range(count):
        name = f"{i:06d}"
        for kind, array in (
            ("portrait", data["images"][i]),
            ("mask", data["masks"][i].astype("uint8") * 255),
        ):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            files[f"{kind}_{name}.png"] = buffer.getvalue()
        params = data["params"][i]
        record = {
            "landmarks_2d": data["landmarks_2d"][i].tolist(),
            "landmarks_3d": data["landmarks"][i].tolist(),
            "params": {k: (v if isinstance(v, str) else v.tolist()) for k, v in params.items()},
            "identity": {k: np.asarray(v).tolist() for k, v in data["identities"][i].items()},
            "camera": {
                "camera_to_world": cams.camera_to_worlds[i].tolist(), "fx": float(cams.fx[i]),
                "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
                "width": cams.width, "height": cams.height,
            },
            "head_model": "anny",
        }  # fmt: skip
        files[f"portrait_{name}.json"] = json.dumps(record)
    return _write_folder(Path(out_dir), files)
