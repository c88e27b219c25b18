"""A turntable of exported GLBs, as they are (texture only, unlit): what a user who opens the file sees.

Usage: python bench/glb_turntable.py OUT.png RUN_OR_GLB [RUN_OR_GLB ...] [--views 8] [--size 128]
One row per GLB (a run folder means its ``export/model.glb``), views around +Y at elevation 20 degrees,
distance 3, 40 degrees field of view (the turntable of ``bench/generate_quality.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recon.cameras import orbit_cameras
from recon.mesh.io import read_mesh
from recon.render.mesh import render_textured_mesh


def glb_row(glb: Path, views: int, size: int) -> np.ndarray:
    mesh = read_mesh(glb)
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255.0
    cams = orbit_cameras(views, 20.0, 3.0, 40.0, width=size, height=size)
    out = render_textured_mesh(
        torch.as_tensor(mesh.vertices, dtype=torch.float32),
        torch.as_tensor(mesh.faces, dtype=torch.long),
        torch.as_tensor(mesh.visual.uv, dtype=torch.float32),
        torch.from_numpy(texture),
        cams,
    )
    return np.concatenate(list(out.rgb.clamp(0, 1).numpy()), axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    rows = []
    for item in args.inputs:
        glb = item / "export" / "model.glb" if item.is_dir() else item
        rows.append(glb_row(glb, args.views, args.size))
    image = (np.concatenate(rows, axis=0) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(image).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
