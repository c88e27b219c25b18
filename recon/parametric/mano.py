"""Reading the user's own MANO files (``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` of mano_v1_2) without chumpy.

Romero, Tzionas, Black, "Embodied Hands: Modeling and Capturing Hands and Bodies Together", SIGGRAPH Asia
2017, https://mano.is.tue.mpg.de. The files are licence-gated (registration, non-commercial): sds3d never
ships or downloads them; a user with a licence passes the folder that holds them (``--mano-dir``).

A MANO pickle is a Python 2 pickle of a dict: ``v_template [778, 3]``, ``shapedirs [778, 3, 10]``,
``posedirs [778, 3, 135]``, ``J_regressor`` (a ``scipy.sparse`` ``[16, 778]``), ``weights [778, 16]``,
``kintree_table [2, 16]`` (first row: parents, the root's is 2³²-1), ``f [1538, 3]``,
``hands_components [45, 45]`` and ``hands_mean [45]`` (the PCA pose space and the mean pose), plus a few
scalars. Several arrays are ``chumpy.ch.Ch`` objects whose pickled state holds the array as ``x``: they
need ``chumpy`` only to be unpickled. :func:`read_mano_pickle` uses a restricted unpickler that maps
chumpy objects to a stand-in that keeps the state and allows only numpy / scipy.sparse reconstruction
otherwise, so neither chumpy nor arbitrary code from the file is ever run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import UserError

MANO_VERTICES = 778
MANO_JOINTS = 16
TIP_VERTICES = (744, 320, 443, 554, 671)
"""MANO vertex ids of the thumb, index, middle, ring and pinky fingertips (the ones smplx's vertex ids and
BIGS's MANO layer append as the 5 extra keypoints)."""
FILE_NAMES = {"right": "MANO_RIGHT.pkl", "left": "MANO_LEFT.pkl"}


class _ChumpyStandIn:
    """What a pickled ``chumpy`` object becomes: its state dict, nothing run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}

    def to_array(self, name: str, path: Path) -> np.ndarray:
        if "x" in self.state:
            return np.asarray(self.state["x"])
        raise UserError(
            f"{path}: {name} is a derived chumpy expression, not an array; this file is not a plain MANO "
            "model (use MANO_RIGHT.pkl / MANO_LEFT.pkl from mano_v1_2)"
        )


def _scipy_sparse(name: str) -> Any:
    import scipy.sparse

    return getattr(scipy.sparse, name)


def _allowed(module: str, name: str) -> Any | None:
    if module.split(".")[0] == "chumpy":
        return _ChumpyStandIn
    if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
        import copyreg

        return copyreg._reconstructor
    if module in ("__builtin__", "builtins") and name in ("object", "set", "frozenset"):
        return {"object": object, "set": set, "frozenset": frozenset}[name]  # chumpy keeps sets in its state
    if (module, name) == ("_codecs", "encode"):  # how Python 3's protocol 2 writes bytes
        import codecs

        return codecs.encode
    if module.startswith("numpy"):
        if name in ("_reconstruct", "scalar"):
            try:
                from numpy._core import multiarray
            except ImportError:  # numpy < 2
                from numpy.core import multiarray  # type: ignore[no-redef]

            return getattr(multiarray, name)
        if name in ("dtype", "ndarray"):
            return getattr(np, name)
    if module.startswith("scipy.sparse") and name in (
        "csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array",
    ):  # fmt: skip
        return _scipy_sparse(name)
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays, scipy.sparse matrices and chumpy stand-ins."""

    kind = "MANO"

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a {self.kind} file")
        return found


def read_model_pickle(path: str | Path, kind: str, what: str, missing: str, fix: str = "") -> dict[str, Any]:
    """The raw dict of a body-model pickle (MANO, FLAME), chumpy arrays turned into numpy (no chumpy, no
    foreign code: :class:`_RestrictedUnpickler`).

    Args:
        path: The pickle.
        kind: The model's name in the unpickler's refusal (``"MANO"``).
        what: What the file should be, in the messages (``"MANO model"``).
        missing: The whole message when the file does not exist.
        fix: Appended to the other messages after ``"; "`` (empty: nothing).

    Raises:
        UserError: the file is missing, unreadable, or not a pickle of a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(missing)
    suffix = f"; {fix}" if fix else ""
    unpickler = type("_Unpickler", (_RestrictedUnpickler,), {"kind": kind})
    try:
        with open(path, "rb") as f:
            data = unpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(f"{path} is not a {what} file ({type(err).__name__}: {err}){suffix}") from err
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a {what} file (it holds a {type(data).__name__}, not a dict){suffix}")
    out = {}
    for key, value in data.items():
        if isinstance(value, _ChumpyStandIn):
            value = value.to_array(key, path)
        elif hasattr(value, "toarray"):  # scipy.sparse
            value = value.toarray()
        out[key] = value
    return out


def read_mano_pickle(path: str | Path) -> dict[str, Any]:
    """The raw dict of a MANO pickle, chumpy arrays turned into numpy (no chumpy, no foreign code).

    Raises:
        UserError: the file is missing, unreadable, or not a pickle of the kind MANO ships.
    """
    missing = f"no MANO file at {path}; pass the folder holding MANO_RIGHT.pkl and MANO_LEFT.pkl"
    return read_model_pickle(path, "MANO", "MANO model", missing)


def mano_arrays(data: dict[str, Any], path: str | Path = "MANO file") -> dict[str, np.ndarray]:
    """The checked arrays of a MANO dict, float64 / int64.

    Raises:
        UserError: when a key is missing or has a shape MANO never has (another body model's file).
    """
    needed = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
    missing = [k for k in needed if k not in data]
    if missing:
        raise UserError(
            f"{path} is not a MANO model file (no {', '.join(missing)}); pass MANO_RIGHT.pkl / MANO_LEFT.pkl "
            "from mano_v1_2"
        )
    try:
        out = {
            "v_template": np.asarray(data["v_template"], np.float64),
            "shapedirs": np.asarray(data["shapedirs"], np.float64),
            "posedirs": np.asarray(data["posedirs"], np.float64),
            "J_regressor": np.asarray(data["J_regressor"], np.float64),
            "weights": np.asarray(data["weights"], np.float64),
            "kintree_table": np.asarray(data["kintree_table"]).astype(np.int64),
            "f": np.asarray(data["f"]).astype(np.int64),
            "hands_mean": np.asarray(data.get("hands_mean", np.zeros(45)), np.float64).reshape(-1),
        }
    except (TypeError, ValueError) as err:
        raise UserError(f"{path} is not a MANO model file ({err})") from err
    V = out["v_template"].shape[0] if out["v_template"].ndim == 2 else -1
    J = out["weights"].shape[1] if out["weights"].ndim == 2 else -1
    if V != MANO_VERTICES or J != MANO_JOINTS:
        raise UserError(
            f"{path} is not a MANO hand model: it has {V} vertices and {J} joints, MANO has {MANO_VERTICES} "
            f"and {MANO_JOINTS} (an SMPL / SMPL-X / FLAME file?); pass MANO_RIGHT.pkl / MANO_LEFT.pkl"
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
            raise UserError(f"{path}: {key} has shape {out[key].shape}, a MANO file has {shape}")
    if out["shapedirs"].ndim != 3 or out["shapedirs"].shape[:2] != (V, 3):
        raise UserError(f"{path}: shapedirs has shape {out['shapedirs'].shape}, a MANO file has (778, 3, 10)")
    f = out["f"]
    if f.ndim != 2 or f.shape[1] != 3 or f.min() < 0 or f.max() >= V:
        raise UserError(f"{path}: f is not a triangle list over its {V} vertices")
    if out["hands_mean"].shape != (45,):
        raise UserError(f"{path}: hands_mean has {out['hands_mean'].size} values, MANO has 45")
    parents = out["kintree_table"][0].copy()
    parents[0] = -1
    if any(not 0 <= parents[j] < j for j in range(1, J)):
        raise UserError(f"{path}: kintree_table is not a kinematic tree in MANO's joint order")
    out["parents"] = parents
    return out


def mano_file(mano_dir: str | Path, side: str) -> Path:
    """``mano_dir/MANO_RIGHT.pkl`` or ``MANO_LEFT.pkl``; a user error naming the fix when it is not there.

    Raises:
        UserError: the folder does not exist, is a file, or lacks the side's file.
    """
    folder = Path(mano_dir).expanduser()
    if not folder.exists():
        raise UserError(
            f"--mano-dir {mano_dir} does not exist; pass the folder holding MANO_RIGHT.pkl and MANO_LEFT.pkl "
            "(mano_v1_2/models from the MANO website), or leave it out to use the anny hand model"
        )
    if not folder.is_dir():
        raise UserError(
            f"--mano-dir {mano_dir} is a file; pass the folder holding MANO_RIGHT.pkl and MANO_LEFT.pkl"
        )
    path = folder / FILE_NAMES[side]
    if not path.is_file():
        raise UserError(f"--mano-dir {mano_dir} has no {FILE_NAMES[side]}; copy mano_v1_2/models/*.pkl there")
    return path


def load_mano(mano_dir: str | Path, side: str) -> dict[str, np.ndarray]:
    """The checked arrays of the side's MANO file in ``mano_dir`` (see :func:`mano_arrays`)."""
    path = mano_file(mano_dir, side)
    return mano_arrays(read_mano_pickle(path), path)
