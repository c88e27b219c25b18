"""The ``sds3d`` command line: one tyro subcommand per job.

Each subcommand is a dataclass in ``app/commands/`` with a ``run() -> int`` method. Command modules
import heavy libraries (torch, diffusers) inside ``run`` so that ``sds3d --help`` stays fast.
"""

from __future__ import annotations

import os
import sys

from app.openmp import openmp_env

# Before torch loads its OpenMP runtime: passive waiting when other work holds the CPUs (see
# app/openmp.py), libgomp's faster default otherwise.
os.environ.update(openmp_env())
from typing import Annotated, Union

import tyro

from app.commands.app import AppCommand
from app.commands.batch import BatchCommand
from app.commands.export import ExportCommand
from app.commands.generate import GenerateCommand
from app.commands.prior import PriorCommand
from app.commands.reconstruct import ReconstructCommand
from app.presets import preset_default
from recon.errors import UserError

Commands = Union[  # noqa: UP007 - tyro reads the Union
    Annotated[GenerateCommand, tyro.conf.subcommand("generate")],
    Annotated[ExportCommand, tyro.conf.subcommand("export")],
    Annotated[PriorCommand, tyro.conf.subcommand("prior")],
    Annotated[ReconstructCommand, tyro.conf.subcommand("reconstruct")],
    Annotated[BatchCommand, tyro.conf.subcommand("batch")],
    Annotated[AppCommand, tyro.conf.subcommand("app")],
]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sds3d`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        default = preset_default(argv, {"generate": GenerateCommand, "reconstruct": ReconstructCommand})
    except UserError as err:
        print(f"sds3d: error: {err}", file=sys.stderr)
        return 2
    extra = {"default": default} if default is not None else {}
    command = tyro.cli(Commands, args=argv, prog="sds3d", **extra)
    try:
        return int(command.run() or 0)
    except UserError as err:
        print(f"sds3d: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sds3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
