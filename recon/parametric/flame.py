"""Reading the user's own FLAME files without chumpy or smplx.

Li, Bolkart, Black, Li, Romero, "Learning a model of facial shape and expression from 4D scans",
SIGGRAPH Asia 2017, https://flame.is.tue.mpg.de. The files are licence-gated (registration, research
use): sds3d never ships or downloads them; a user with a licence passes the folder that holds them
(``--flame-dir``). smplx's code is under a non-commercial licence too, so none of it is used here.

Accepted file names in that folder, the first found wins (:data:`MODEL_FILE_NAMES`):
``FLAME_NEUTRAL.pkl`` and ``FLAME_GENERIC.pkl`` (the names smplx and HeadStudio expect) and
``generic_model.pkl`` (the name inside FLAME 2020's zip). The landmark embedding is not in FLAME's zip
(it comes with RingNet / DECA): ``flame_static_embedding.pkl`` (keys ``lmk_face_idx [51]`` and
``lmk_b_coords [51, 3]``), optional; without it the model has no landmarks.

A FLAME pickle is a Python 2 pickle of a dict like MANO's (:mod:`recon.parametric.mano`, whose
restricted unpickler this module shares: chumpy arrays become numpy, nothing else is run):
``v_template [5023, 3]``, ``f [9976, 3]``, ``shapedirs [5023, 3, 400]`` (300 shape then 100 expression
components; a file with fewer than 400 columns holds 10 and 10, as smplx reads it: the first half
shape, the second expression), ``posedirs [5023, 3, 36]``, ``J_regressor`` (``scipy.sparse [5, 5023]``),
``weights [5023, 5]`` and ``kintree_table [2, 5]`` (parents: root, neck, jaw, left eye, right eye).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import UserError
from recon.parametric.mano import read_model_pickle

FLAME_JOINTS = 5
FLAME_PARENTS = (-1, 0, 1, 1, 1)
SHAPE_SPACE_DIM = 300
EXPRESSION_SPACE_DIM = 100
MODEL_FILE_NAMES = ("FLAME_NEUTRAL.pkl", "FLAME_GENERIC.pkl", "generic_model.pkl")
EMBEDDING_FILE_NAME = "flame_static_embedding.pkl"
_FIX = "pass the folder holding FLAME_NEUTRAL.pkl, FLAME_GENERIC.pkl or generic_model.pkl (FLAME 2020)"


def read_flame_pickle(path: str | Path, what: str = "FLAME model") -> dict[str, Any]:
    """The raw dict of a FLAME pickle (model or landmark embedding), chumpy arrays turned into numpy.

    Raises:
        UserError: the file is missing, unreadable, or not a pickle of a dict.
    """
    return read_model_pickle(path, "FLAME", what, f"no {what} file at {Path(path)}; {_FIX}", _FIX)


def flame_arrays(data: dict[str, Any], path: str | Path = "FLAME file") -> dict[str, np.ndarray]:
    """The checked arrays of a FLAME dict, float64 / int64, the shape and expression spaces split.

    Raises:
        UserError: a key is missing or has a shape FLAME never has (another body model's file).
    """
    needed = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
    missing = [k for k in needed if k not in data]
    if missing:
        raise UserError(f"{path} is not a FLAME model file (no {', '.join(missing)}); {_FIX}")
    try:
        out = {
            "v_template": np.asarray(data["v_template"], np.float64),
            "shapedirs": np.asarray(data["shapedirs"], np.float64),
            "posedirs": np.asarray(data["posedirs"], np.float64),
            "J_regressor": np.asarray(data["J_regressor"], np.float64),
            "weights": np.asarray(data["weights"], np.float64),
            "kintree_table": np.asarray(data["kintree_table"]).astype(np.int64),
            "f": np.asarray(data["f"]).astype(np.int64),
        }
    except (TypeError, ValueError) as err:
        raise UserError(f"{path} is not a FLAME model file ({err}); {_FIX}") from err
    V = out["v_template"].shape[0] if out["v_template"].ndim == 2 else -1
    J = out["weights"].shape[1] if out["weights"].ndim == 2 else -1
    if J != FLAME_JOINTS:
        raise UserError(
            f"{path} is not a FLAME head model: it has {V} vertices and {J} joints, FLAME has 5 joints "
            f"(a MANO / SMPL / SMPL-X file?); {_FIX}"
        )
    expected = {
        "v_template": (V, 3),
        "J_regressor": (J, V),
        "weights": (V, J),
        "kintree_table": (2, J),
        "posedirs": (V, 3, 9 * (J - 1)),
    }
    for key, shape in expected.items():
        if out[key].shape != shape:
            raise UserError(
                f"{path}: {key} has shape {out[key].shape}, a FLAME file with {V} vertices has {shape}"
            )
    sd = out["shapedirs"]
    if sd.ndim != 3 or sd.shape[:2] != (V, 3) or sd.shape[2] < 2:
        raise UserError(f"{path}: shapedirs has shape {sd.shape}, a FLAME file has ({V}, 3, 400)")
    f = out["f"]
    if f.ndim != 2 or f.shape[1] != 3 or f.min() < 0 or f.max() >= V:
        raise UserError(f"{path}: f is not a triangle list over its {V} vertices")
    parents = out["kintree_table"][0].copy()
    parents[0] = -1
    if tuple(int(p) for p in parents) != FLAME_PARENTS:
        raise UserError(
            f"{path}: kintree_table has parents {parents.tolist()}, FLAME's are {list(FLAME_PARENTS)}"
        )
    out["parents"] = parents
    if sd.shape[2] >= SHAPE_SPACE_DIM + 1:  # FLAME 2020 / 2023: 300 shape + up to 100 expression
        out["shapedirs"], out["exprdirs"] = (
            sd[:, :, :SHAPE_SPACE_DIM],
            sd[:, :, SHAPE_SPACE_DIM:][:, :, :EXPRESSION_SPACE_DIM],
        )
    else:  # the reduced files (10 + 10 components): the first half shape, the second expression
        half = sd.shape[2] // 2
        out["shapedirs"], out["exprdirs"] = sd[:, :, :half], sd[:, :, half : 2 * half]
    return out


def embedding_arrays(data: dict[str, Any], num_faces: int, path: str | Path) -> dict[str, np.ndarray]:
    """``lmk_face_idx [L]`` and ``lmk_b_coords [L, 3]`` of a static landmark embedding, checked."""
    if "lmk_face_idx" not in data or "lmk_b_coords" not in data:
        raise UserError(
            f"{path} is not a FLAME landmark embedding (no lmk_face_idx / lmk_b_coords); use "
            f"{EMBEDDING_FILE_NAME} from RingNet or DECA, or remove it"
        )
    try:
        idx = np.asarray(data["lmk_face_idx"]).astype(np.int64).reshape(-1)
        bary = np.asarray(data["lmk_b_coords"], np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path} is not a FLAME landmark embedding ({err})") from err
    if bary.shape != (idx.shape[0], 3) or idx.min(initial=0) < 0 or idx.max(initial=0) >= num_faces:
        raise UserError(
            f"{path}: the landmark embedding ({idx.shape[0]} faces, coordinates {bary.shape}) does not fit "
            f"this FLAME model's {num_faces} triangles; use the embedding that belongs to the model"
        )
    return {"lmk_face_idx": idx, "lmk_b_coords": bary}


def flame_files(flame_dir: str | Path) -> tuple[Path, Path | None]:
    """The model file and the landmark embedding (None when absent) in ``flame_dir``.

    Raises:
        UserError: the folder does not exist, is a file, or holds none of the accepted model files.
    """
    folder = Path(flame_dir).expanduser()
    if not folder.exists():
        raise UserError(
            f"--flame-dir {flame_dir} does not exist; {_FIX}, or leave it out to use the anny head"
        )
    if not folder.is_dir():
        raise UserError(f"--flame-dir {flame_dir} is a file; {_FIX}")
    for name in MODEL_FILE_NAMES:
        if (folder / name).is_file():
            embedding = folder / EMBEDDING_FILE_NAME
            return folder / name, (embedding if embedding.is_file() else None)
    raise UserError(
        f"--flame-dir {flame_dir} has none of {', '.join(MODEL_FILE_NAMES)}; copy FLAME 2020's "
        "generic_model.pkl there (optionally with flame_static_embedding.pkl for landmarks)"
    )


def load_flame(flame_dir: str | Path) -> dict[str, np.ndarray]:
    """The checked arrays of the FLAME model in ``flame_dir`` (see :func:`flame_arrays`), with the
    landmark embedding's ``lmk_face_idx`` / ``lmk_b_coords`` (empty when the folder has none)."""
    model_path, embedding_path = flame_files(flame_dir)
    out = flame_arrays(read_flame_pickle(model_path), model_path)
    if embedding_path is None:
        out["lmk_face_idx"], out["lmk_b_coords"] = np.zeros(0, np.int64), np.zeros((0, 3))
    else:
        raw = read_flame_pickle(embedding_path, "FLAME landmark embedding")
        out.update(embedding_arrays(raw, out["f"].shape[0], embedding_path))
    return out
