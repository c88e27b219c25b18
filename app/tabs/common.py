"""Pieces the tabs with their own forms and result panels share: the pre-queue validator and the loop
that streams a background run's progress to the page.

Gradio is imported inside the functions only (the app sets its environment first).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.jobs import RunJob

POLL_SECONDS = 0.5
"""How often a streaming run looks at its worker."""


def field_error(field: str, message: str) -> Exception:
    """A :class:`recon.errors.UserError` that also names the form field at fault (``err.field``)."""
    from recon.errors import UserError

    err = UserError(message)
    err.field = field
    return err


def bounded(field: str, name: str, value: Any, limits: dict[str, tuple[int, int]]) -> int:
    """``value`` as an int within ``limits[name]``; else a :func:`field_error` on ``field``."""
    from recon.errors import UserError, check_range

    low, high = limits[name]
    try:
        return check_range(name, value, low, high)
    except UserError as err:
        raise field_error(field, str(err)) from None


def new_run_folder(outputs: str | Path, pipeline: str, name: str, fallback: str) -> Path:
    """``outputs/<pipeline>/<name>-<time>`` (``-1``, ``-2``, ... when taken; ``fallback`` for a name with
    nothing usable in it); not created."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or fallback
    base = Path(outputs) / pipeline / f"{safe[:60]}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, k = base, 0
    while folder.exists():
        k += 1
        folder = base.with_name(f"{base.name}-{k}")
    return folder


def field_validator(
    form: Callable[..., Any], fields: tuple[str, ...], default_field: str
) -> Callable[..., list[Any]]:
    """A Gradio ``validator``: runs ``form(*values)`` before a request is queued; a
    :class:`recon.errors.UserError` shows next to the field it names (``err.field``, else
    ``default_field``) and queues nothing.

    Args:
        form: Checks the form's values (as the event's inputs, in the order of ``fields``).
        fields: The inputs' names.
        default_field: Where an error that names no field is shown.

    Returns:
        The validator.
    """

    def validate_fn(*values: Any) -> list[Any]:
        import gradio as gr

        from recon.errors import UserError

        try:
            form(*values)
        except UserError as err:
            bad = fields.index(getattr(err, "field", default_field))
            return [gr.validate(i != bad, str(err)) for i in range(len(fields))]
        return [gr.validate(True, "") for _ in fields]

    return validate_fn


def stream_job(
    job: RunJob,
    started: str,
    status: Callable[[], str],
    user_error: Callable[[Exception], Exception],
    outputs: int = 4,
) -> Iterator[tuple]:
    """Streams a started run to a tab whose first output is its status line: ``started``, then
    ``status()`` whenever it changes (the other outputs skipped), until the worker ends. Stops the worker
    when the page stops listening (Cancel, a closed tab), and raises the run's error for the page.

    Args:
        job: The started worker.
        started: The first status line.
        status: The current status line (polled every :data:`POLL_SECONDS`).
        user_error: Turns a :class:`recon.errors.UserError` into the page's error.
        outputs: How many outputs the event has.

    Yields:
        ``outputs``-tuples, the status first.
    """
    import gradio as gr

    from recon.errors import UserError

    skip = gr.skip()
    rest = (skip,) * (outputs - 1)
    shown = None
    try:
        yield (started, *rest)  # yield often: Gradio can only cancel a generator at a yield
        while not job.done.wait(POLL_SECONDS):
            line = status()
            if line != shown:
                shown = line
                yield (line, *rest)
            else:
                yield (skip, *rest)
    finally:
        if not job.done.is_set():  # the user cancelled or left: stop the worker (it checkpoints)
            job.cancel()
    if isinstance(job.error, UserError):
        raise user_error(job.error)
    if job.error is not None:
        raise gr.Error(f"the run failed: {job.error}")
