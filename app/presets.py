"""``--config``: a command's defaults from a preset (``configs/NAME.yaml``), overridden by its flags.

``sds3d`` reads ``--config`` before it parses the other flags and builds the command with the preset's
values as defaults (:meth:`PresetCommand.from_preset`), so a flag given on the command line wins and
every other flag keeps the preset's value; settings that have no flag come from the preset unchanged
(:meth:`PresetCommand.pipeline_config`).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, ClassVar


class PresetCommand:
    """Mixin of the commands that run a pipeline from a typed config (generate, reconstruct)."""

    PRESET_PIPELINES: ClassVar[tuple[str, ...]] = ()
    """Pipelines this command runs (a preset of another pipeline is refused)."""
    PRESET_FIELDS: ClassVar[dict[str, str]] = {}
    """Command flag -> the (dotted) config setting it sets."""

    config: Path | None

    @classmethod
    def preset_fields(cls, pipeline: str | None = None) -> dict[str, str]:
        """Command flag -> config setting for ``pipeline`` (default: :attr:`PRESET_FIELDS` for all)."""
        return cls.PRESET_FIELDS

    @classmethod
    def from_preset(cls, name_or_path: str | Path) -> Any:
        """The command with the preset's values as the defaults of its flags."""
        from recon.presets import get_setting, load_preset

        pipeline, preset = load_preset(name_or_path, cls.PRESET_PIPELINES)
        values = {flag: get_setting(preset, setting) for flag, setting in cls.preset_fields(pipeline).items()}
        names = {f.name for f in fields(cls)}
        if "pipeline" in names:
            values["pipeline"] = pipeline
        import tyro

        required = {
            f.name: tyro.MISSING for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        return cls(**{**required, **values}, config=Path(name_or_path))

    def resumed_pipeline(self, argv: list[str], resumable: tuple[str, ...] | None = None) -> str:
        """The pipeline of the ``--resume`` run folder; refuses flags on the command line that conflict
        with its ``config.yaml`` (a resumed run continues as it was started).

        Args:
            argv: The command line (to tell flags that were given from defaults).
            resumable: Pipelines whose runs this command can resume (None: any).

        Raises:
            UserError: naming the flag, its value and the run's; or a run of a pipeline not resumable.
        """
        from recon.errors import UserError
        from recon.runs import load_config

        resume = self.resume  # type: ignore[attr-defined]
        given = {arg.split("=", 1)[0].lstrip("-").replace("-", "_") for arg in argv if arg.startswith("--")}
        if "config" in given:
            raise UserError(
                f"--config cannot be combined with --resume: the run's own {resume / 'config.yaml'} "
                "is used; drop --config"
            )
        pipeline, settings = load_config(resume)
        if resumable is not None and pipeline not in resumable:
            raise UserError(
                f"{resume} is a {pipeline} run; --resume continues {' and '.join(resumable)} runs only: "
                "start it again without --resume"
            )
        if "pipeline" in given and getattr(self, "pipeline", pipeline) != pipeline:
            raise UserError(f"--pipeline {self.pipeline} conflicts with the {pipeline} run {resume}")  # type: ignore[attr-defined]
        if getattr(self, "prompt", None):
            given.add("prompt")
        for flag, setting in self.preset_fields(pipeline).items():
            stored = _dotted(settings, setting)
            if flag not in given or stored is _MISSING:
                continue
            value = getattr(self, flag)
            if value != stored:
                shown = "the prompt" if flag == "prompt" else "--" + flag.replace("_", "-")
                raise UserError(
                    f"{shown} {value!r} conflicts with the run's {setting} {stored!r} "
                    f"({resume / 'config.yaml'}); --resume continues a run as it was started: drop "
                    f"{shown}, or start a new run without --resume"
                )
        return pipeline

    def pipeline_config(self, default: Any) -> Any:
        """The preset's config (or ``default``) with this command's flags applied (flags left at
        ``None`` keep the config's value)."""
        from recon.errors import UserError
        from recon.presets import load_preset, with_setting

        pipeline = getattr(self, "pipeline", None)
        if self.config is not None:
            preset_pipeline, config = load_preset(self.config, self.PRESET_PIPELINES)
            if pipeline is not None and preset_pipeline != pipeline:
                raise UserError(
                    f"--config {self.config} is a {preset_pipeline} preset but --pipeline is {pipeline}; "
                    "drop one of them"
                )
        else:
            config = default
        for flag, setting in self.preset_fields(pipeline).items():
            value = getattr(self, flag)
            if value is not None:
                config = with_setting(config, setting, value)
        return config


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` / ``--flag=VALUE`` in ``argv`` (the last one wins), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def preset_default(argv: list[str], commands: dict[str, type]) -> Any | None:
    """The command built from ``--config`` (``argv[0]`` names the subcommand), or None without one."""
    if not argv or argv[0] not in commands:
        return None
    name = flag_value(argv, "--config")
    return None if name is None else commands[argv[0]].from_preset(name)


_MISSING = object()


def _dotted(settings: dict, key: str):
    """``settings["scene"]["resolution"]`` for ``"scene.resolution"``; :data:`_MISSING` if absent."""
    value: object = settings
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value
