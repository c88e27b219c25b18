"""Where a run computes: the ``device`` and ``dtype`` settings of the pipelines, resolved once.

``device`` is ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
``dtype`` is the weights dtype of the diffusion priors: ``auto`` (float16 on CUDA, float32 on the CPU),
``float32``, ``float16`` or ``bfloat16``. The representation, its optimizers and the loop's state always
train in float32; only the frozen priors take ``dtype``.

Asking for CUDA on a machine whose torch sees none is a :class:`~recon.errors.UserError` before any
folder is created, with the fix in the message.
"""

from __future__ import annotations

import logging
import re

import torch

from recon.errors import UserError

log = logging.getLogger("sds3d.device")

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
"""What ``--device`` accepts (``N``: a GPU index)."""
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""What ``--dtype`` accepts besides ``auto``."""

_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """The device a run computes on.

    Args:
        name: ``auto`` (``cuda`` when ``torch.cuda.is_available()``, else ``cpu``), ``cpu``, ``cuda`` or
            ``cuda:N``.
        flag: How the user set it, for the message (``--device``, ``device``).

    Returns:
        ``torch.device("cpu")`` or ``torch.device("cuda:N")`` (``cuda`` and ``auto`` name the current GPU
        with its index, as tensors on it report their device).

    Raises:
        UserError: an unknown name, CUDA asked for where torch sees no GPU, or a GPU index torch does not
            see; the message names ``flag`` and the fix.
    """
    if not isinstance(name, str):
        raise UserError(f"{flag} must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    text = name.strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise UserError(
            f"{flag} {name!r} is not a device torch can run sds3d on; use auto, cpu, cuda or cuda:N "
            "(N: the GPU's index)"
        )
    if not torch.cuda.is_available():
        raise UserError(
            f"{flag} {name}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
            f"use {flag} cpu or install a CUDA build of torch"
        )
    if match.group(1) is None:  # the current GPU, with its index: tensors report cuda:0, not cuda
        return torch.device("cuda", torch.cuda.current_device())
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        raise UserError(
            f"{flag} {name}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; pick one of them "
            "(CUDA_VISIBLE_DEVICES renumbers them)"
        )
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device | str, flag: str = "--dtype") -> torch.dtype:
    """The weights dtype of the priors of a run on ``device``.

    Args:
        name: ``auto`` (float16 on CUDA, float32 on the CPU), ``float32``, ``float16`` or ``bfloat16``.
        device: The run's device (:func:`resolve_device`).
        flag: How the user set it, for the message.

    Returns:
        The ``torch.dtype``.

    Raises:
        UserError: an unknown name, naming ``flag`` and the choices.
    """
    if not isinstance(name, str):
        raise UserError(f"{flag} must be one of auto, {', '.join(DTYPES)}, got {name!r}")
    text = name.strip().lower()
    if text == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if text not in DTYPES:
        choices = ", ".join(DTYPES)
        raise UserError(f"{flag} {name!r} is not a dtype sds3d loads priors in; use auto, {choices}")
    dtype = DTYPES[text]
    if dtype is torch.float16 and torch.device(device).type == "cpu":
        log.warning("%s float16 on the CPU: slow, and some CPU kernels lack half precision", flag)
    return dtype


def resolve(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """:func:`resolve_device` and :func:`resolve_dtype` of a pipeline config's two settings."""
    resolved = resolve_device(device)
    return resolved, resolve_dtype(dtype, resolved)


__all__ = ["DEVICE_CHOICES", "DTYPES", "resolve", "resolve_device", "resolve_dtype"]
