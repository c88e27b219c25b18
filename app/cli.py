"""The ``sds3d`` command line: one tyro subcommand per job.

Each subcommand is a dataclass in ``app/commands/`` with a ``run() -> int`` method. Command modules
import heavy libraries (torch, diffusers) inside ``run`` so that ``sds3d --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import typing

from app.openmp import openmp_env

# Before torch loads its OpenMP runtime: passive waiting when other work holds the CPUs (see
# app/openmp.py), libgomp's faster default otherwise.
os.environ.update(openmp_env())
from typing import Annotated, Any, Union

import tyro

from app.commands.app import AppCommand
from app.commands.avatar import AvatarCommand
from app.commands.batch import BatchCommand
from app.commands.export import ExportCommand
from app.commands.generate import GenerateCommand
from app.commands.hands import HandsCommand
from app.commands.heads import HeadsCommand
from app.commands.prior import PriorCommand
from app.commands.reconstruct import ReconstructCommand
from app.commands.scene import SceneCommand
from app.presets import preset_default
from recon.errors import UserError, check_fields, check_out_root

Commands = Union[  # noqa: UP007 - tyro reads the Union
    Annotated[GenerateCommand, tyro.conf.subcommand("generate")],
    Annotated[ExportCommand, tyro.conf.subcommand("export")],
    Annotated[PriorCommand, tyro.conf.subcommand("prior")],
    Annotated[ReconstructCommand, tyro.conf.subcommand("reconstruct")],
    Annotated[BatchCommand, tyro.conf.subcommand("batch")],
    Annotated[AppCommand, tyro.conf.subcommand("app")],
    Annotated[HandsCommand, tyro.conf.subcommand("hands")],
    Annotated[HeadsCommand, tyro.conf.subcommand("heads")],
    Annotated[AvatarCommand, tyro.conf.subcommand("avatar")],
    Annotated[SceneCommand, tyro.conf.subcommand("scene")],
]


OUT_FLAGS = {GenerateCommand: "out", ReconstructCommand: "out", BatchCommand: "out", AppCommand: "outputs"}
"""The output-root field of each command that writes runs (checked before the command starts)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sds3d`` console script.

    Exit status: 0 done, 2 a user error (one ``sds3d: error:`` line, nothing written), 1 an internal
    error (one line naming the log file with the traceback; ``SDS3D_DEBUG=1`` shows the traceback), 130
    interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = None
    runs_before = _created_runs()
    try:
        default = preset_default(
            argv, {"generate": GenerateCommand, "reconstruct": ReconstructCommand, "avatar": AvatarCommand}
        )
        extra = {"default": default} if default is not None else {}
        command = parse_command(argv, **extra)
        check_fields(command, flag_label(command))
        out_field = OUT_FLAGS.get(type(command))
        if out_field is not None:  # recon.errors, not recon.runs: no torch import before the command starts
            check_out_root(getattr(command, out_field), "--" + out_field.replace("_", "-"))
        check_argv = getattr(command, "check_argv", None)
        if check_argv is not None:
            check_argv(argv)
        return int(command.run() or 0)
    except UserError as err:
        print(f"sds3d: error: {err}", file=sys.stderr)
        if isinstance(err, CommandLineError):
            raise SystemExit(2) from None  # as tyro exits on a parse error
        return 2
    except KeyboardInterrupt:
        kept = _clean_up_runs(runs_before)
        print("sds3d: interrupted" + _resume_hint(command, kept), file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line and a log, never a traceback
        kept = _clean_up_runs(runs_before)
        if os.environ.get("SDS3D_DEBUG", "") not in ("", "0"):
            raise
        what = argv[0] if argv and not argv[0].startswith("-") else "sds3d"
        log = _write_traceback(_log_folder(command, kept), err, argv)
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        print(
            f"sds3d: error: internal error: {what} failed with {type(err).__name__}"
            + (f": {reason}" if reason else "")
            + f" — this is a bug; the full traceback is in {log}",
            file=sys.stderr,
        )
        return 1


class CommandLineError(UserError):
    """A command line tyro could not parse (``main`` prints it as one line and exits 2 as tyro does)."""


def parse_command(argv: list[str], **tyro_options: Any) -> Any:
    """The command tyro parses from ``argv``; a parse error becomes one :class:`UserError` line.

    tyro draws its errors as a box over many lines; the box's first section (what is wrong, naming the
    flag) becomes the message. ``--help`` prints as usual (and exits 0).

    Raises:
        CommandLineError: a value of the wrong type, an unknown flag, a missing argument.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            command = tyro.cli(Commands, args=argv, prog="sds3d", **tyro_options)
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help
            sys.stderr.write(captured.getvalue())
            raise
        raise CommandLineError(tyro_error_line(captured.getvalue())) from None
    sys.stderr.write(captured.getvalue())  # tyro's warnings, if any
    return command


def tyro_error_line(text: str) -> str:
    """The first section of tyro's error box as one line (``Error parsing --faces: invalid literal ...``).

    tyro draws a box (``╭─ Title ─╮``, sections between ``─`` rules) or, where the stream can't show it,
    the same sections as plain text with the title in its own first section.
    """
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    boxed = False
    sections: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("╭", "┌")):
            boxed = True
            continue
        if line.startswith(("╰", "└")):
            break
        inner = line.strip("│┃| ")
        if not inner:
            continue
        if set(inner) <= set("─━-"):
            sections.append([])
        else:
            sections[-1].append(inner)
    sections = [s for s in sections if s]
    if not boxed and len(sections) >= 2 and len(sections[0]) == 1:
        sections = sections[1:]  # the plain layout's title
    message = " ".join(" ".join(sections[0]).split()) if sections else ""
    return message or "the command line could not be parsed; see sds3d --help"


def flag_label(command: Any):
    """``dotted field name -> what the user typed``: ``--texture-size`` for options, ``RUN_DIR`` for
    positional arguments (subcommands' own fields are flags without a prefix)."""
    positional: set[str] = set()

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            for name, hint in typing.get_type_hints(tp, include_extras=True).items():
                if tyro.conf.Positional in getattr(hint, "__metadata__", ()):
                    positional.add(name)
                visit(hint)
        for arg in typing.get_args(tp):
            visit(arg)

    visit(type(command))

    def label(dotted: str) -> str:
        name = dotted.rsplit(".", 1)[-1]
        return name.upper() if name in positional else "--" + name.replace("_", "-")

    return label


def _created_runs() -> list:
    """The run folders this process created so far (none before :mod:`recon.runs` is imported)."""
    runs = sys.modules.get("recon.runs")
    return list(runs.CREATED_RUNS) if runs is not None else []


def _clean_up_runs(before: list) -> list:
    """Removes the run folders created by the failed command that hold nothing resumable; the rest."""
    new = [run for run in _created_runs() if run not in before]
    if not new:
        return []
    from recon.runs import remove_incomplete_run

    for run in new:
        remove_incomplete_run(run)
    return [run for run in new if run.is_dir()]


def _resume_hint(command, kept: list) -> str:
    """``; continue it with `sds3d ... --resume RUN` `` for an interrupted run that holds a checkpoint."""
    from pathlib import Path

    hint = getattr(command, "resume_command", None)
    resumed = getattr(command, "resume", None)
    runs = [*kept, *([Path(resumed)] if resumed is not None else [])]
    if hint is None or not runs or hint(runs[0]) is None:
        return ""
    return f"; the run is checkpointed in {runs[0]}: continue it with `{hint(runs[0])}`"


def _log_folder(command, kept: list):
    """Where the traceback goes: the run folder when one is known, else ``$SDS3D_CACHE/logs``."""
    from pathlib import Path

    candidates = [*kept, getattr(command, "resume", None), getattr(command, "run_dir", None)]
    for run in candidates:
        if run is not None and (Path(run) / "config.yaml").is_file():
            return Path(run) / "logs"
    root = os.environ.get("SDS3D_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sds3d")
    return Path(root) / "logs"


def _write_traceback(folder, err: BaseException, argv: list[str]):
    """Writes ``err``'s traceback to ``folder/error-<time>-<pid>.log`` (a temp file when that fails)."""
    import tempfile
    import time
    import traceback
    from pathlib import Path

    text = "sds3d " + " ".join(argv) + "\n\n" + "".join(traceback.format_exception(err))
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for where in (Path(folder), Path(tempfile.gettempdir()) / "sds3d-logs"):
        try:
            where.mkdir(parents=True, exist_ok=True)
            (where / name).write_text(text)
            return where / name
        except OSError:
            continue
    return "(nowhere: no folder was writable)"


if __name__ == "__main__":
    sys.exit(main())
