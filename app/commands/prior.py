"""``sds3d prior sample`` and ``sds3d prior info``: look at what a diffusion prior knows."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro


def _load_prior(source: str, allow_download: bool, device: str, dtype: str | None):
    from priors.model import DiffusionPrior

    return DiffusionPrior.from_pretrained(source, allow_download=allow_download, device=device, dtype=dtype)


def _check_device(device: str) -> None:
    import torch

    from recon.errors import UserError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} needs a CUDA GPU and none is available here; use --device cpu")


def save_grid(images, path: Path, columns: int | None = None) -> Path:  # images: [N, 3, H, W] in [0, 1]
    """Writes images as one grid PNG, atomically (temporary file in the same folder, then rename)."""
    import math

    import numpy as np
    from PIL import Image

    n, _, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.ones((rows * h, columns * w, 3), dtype=np.float32)
    pixels = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = pixels[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray((grid * 255.0 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@dataclass
class PriorSample:
    """Sample images from a prior with DDIM and write them as one grid PNG."""

    prompt: Annotated[str, tyro.conf.Positional]
    """What to draw, e.g. "a red cube" (view words such as ", front view" may be appended)."""
    prior: str = "embedded"
    """Diffusion prior: embedded, embedded-exemplar, embedded-unet, embedded-unet-latent, a hub id or a
    local diffusers folder."""
    n: int = 8
    """Number of images."""
    steps: int = 50
    """DDIM steps."""
    guidance: float = 7.5
    """Classifier-free guidance scale (diffusers convention: 1 = conditional only)."""
    negative: str = ""
    """Negative prompt."""
    seed: int = 0
    """Seed of the initial noise."""
    out: Path = Path("grid.png")
    """Where to write the grid PNG."""
    allow_download: bool = False
    """Allow downloading hub checkpoints (off: only what is cached locally)."""
    device: str = "cpu"
    """Device (cpu, cuda, cuda:1...)."""
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    """Weights dtype for diffusers priors (default: as saved)."""

    def run(self) -> int:
        import torch

        from priors.model import ddim_sample
        from recon.errors import UserError

        if not self.prompt.strip():
            raise UserError('the prompt is empty; say what to draw, e.g. sds3d prior sample "a red cube"')
        if self.n <= 0 or self.steps <= 0:
            raise UserError(f"--n and --steps must be positive, got {self.n} and {self.steps}")
        if self.out.suffix.lower() != ".png":
            raise UserError(f"--out must be a .png file, got {self.out}")
        _check_device(self.device)
        prior = _load_prior(self.prior, self.allow_download, self.device, self.dtype)
        cond = prior.encode_prompt([self.prompt], [self.negative])
        generator = torch.Generator().manual_seed(self.seed)
        images = ddim_sample(
            prior, cond, self.n, self.steps, self.guidance, generator=generator, progress=True
        )
        path = save_grid(images, self.out)
        print(f"wrote {self.n} samples of {self.prompt!r} from {self.prior} to {path}")
        return 0


def vocabulary_info(prior) -> dict[str, str]:
    """What an embedded prior knows, one line per entry (nothing for hub / diffusers priors).

    A prior trained on the embedded world lists the world's vocabulary
    (:func:`priors.vocabulary.vocabulary_summary`); an older embedded prior the shapes and colors of its
    ``embedded.json``.
    """
    if getattr(prior, "prompt_vocabulary", None) == "world":
        from priors.vocabulary import vocabulary_summary

        return vocabulary_summary()
    meta = getattr(prior, "embedded_meta", None) or {}
    return {
        key: ", ".join(map(str, meta[key])) for key in ("shapes", "colors") if isinstance(meta.get(key), list)
    }


@dataclass
class PriorInfo:
    """Describe a prior: kind, resolution, prediction type, vocabulary (embedded priors)."""

    prior: str = "embedded"
    """Diffusion prior: embedded, embedded-exemplar, embedded-unet, embedded-unet-latent, a hub id or a
    local diffusers folder."""
    allow_download: bool = False
    """Allow downloading hub checkpoints (off: only what is cached locally)."""
    device: str = "cpu"
    """Device to load it on."""

    def run(self) -> int:
        _check_device(self.device)
        prior = _load_prior(self.prior, self.allow_download, self.device, None)
        info = {**prior.info(), **vocabulary_info(prior)}
        width = max(len(k) for k in info)
        print(f"prior {self.prior}")
        for key, value in info.items():
            print(f"  {key.replace('_', ' '):<{width}}  {value}")
        return 0


@dataclass
class PriorCommand:
    """Sample from or describe a diffusion prior."""

    action: tyro.conf.OmitSubcommandPrefixes[
        Annotated[PriorSample, tyro.conf.subcommand("sample", prefix_name=False)]
        | Annotated[PriorInfo, tyro.conf.subcommand("info", prefix_name=False)]
    ]

    def run(self) -> int:
        return self.action.run()
