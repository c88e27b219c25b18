"""A zipped scene folder, read safely: the upload of the app's Scene tab.

A zip is read through its directory first (:func:`scene_members`): no absolute paths, no ``..``, no
symbolic links, no encrypted members, at most :data:`MAX_MEMBERS` members and :data:`MAX_UNPACKED_BYTES`;
:func:`unpack_scene` then checks every path again and counts the bytes it writes whatever the zip claims.
Errors are :class:`recon.errors.UserError` for the form's ``scene`` field.
"""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path

from app.tabs.common import field_error

MAX_UNPACKED_BYTES = 2 * 1024**3
"""Largest scene a zip may unpack to (the sum of its members' sizes)."""
MAX_MEMBERS = 10_000
"""Most files (and folders) a scene zip may hold."""
SCENE_FILES = ("transforms.json", "cameras.npz")
"""A scene folder holds one of these (sds3d's layout, DP-Recon's)."""
JUNK = ("__MACOSX", ".DS_Store")
"""What macOS adds to a zip; skipped."""


def _member_path(name: str) -> list[str]:
    """The parts of a zip member's path ('\\' read as '/'); refuses absolute paths and '..'."""
    path = name.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise field_error(
            "scene",
            f"the zip holds {name!r}, an absolute path; zip the scene folder itself (paths relative to it)",
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise field_error(
            "scene",
            f"the zip holds {name!r}, a path that leaves its folder ('..'); zip the scene folder itself",
        )
    return parts


def scene_members(archive: str | Path) -> tuple[list[zipfile.ZipInfo], str]:
    """The members of a scene zip and the scene folder's path inside it (``""`` or ``"room/"``).

    Reads the zip's directory only. A scene folder is where ``transforms.json`` or ``cameras.npz`` is: at
    the top level, or in the zip's one top-level folder.

    Raises:
        UserError: (``err.field == "scene"``) not a zip, a damaged or encrypted one, an absolute path, a
            ``..`` component, a symbolic link, more than :data:`MAX_MEMBERS` members or
            :data:`MAX_UNPACKED_BYTES`, or no scene folder in it.
    """
    label = Path(archive).name
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise field_error(
            "scene", f"{label!r} is not a zip archive ({err}); upload a .zip of the scene folder"
        ) from None
    if len(infos) > MAX_MEMBERS:
        raise field_error(
            "scene",
            f"the zip holds {len(infos)} files, more than the {MAX_MEMBERS} a scene may "
            "have; zip only the scene folder",
        )
    total = sum(i.file_size for i in infos)
    if total > MAX_UNPACKED_BYTES:
        raise field_error(
            "scene",
            f"the zip unpacks to {total / 1024**3:.1f} GB, more than the "
            f"{MAX_UNPACKED_BYTES / 1024**3:.0f} GB a scene may take; use fewer or "
            "smaller views",
        )
    members, paths = [], set()
    for info in infos:
        parts = _member_path(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise field_error(
                "scene",
                f"the zip holds {info.filename!r}, a symbolic link; zip the files "
                "themselves (zip without --symlinks)",
            )
        if info.flag_bits & 0x1:
            raise field_error(
                "scene", f"{info.filename!r} in the zip is encrypted; zip the scene without a password"
            )
        if not parts or parts[0] in JUNK or parts[-1] in JUNK:
            continue
        members.append(info)
        if not info.is_dir():
            paths.add("/".join(parts))
    if any(name in paths for name in SCENE_FILES):
        return members, ""
    tops = {p.split("/")[0] for p in paths} | {_member_path(i.filename)[0] for i in members if i.is_dir()}
    if len(tops) == 1:
        (top,) = tops
        if any(f"{top}/{name}" in paths for name in SCENE_FILES):
            return members, f"{top}/"
    raise field_error(
        "scene",
        f"{label!r} holds no scene folder: transforms.json (sds3d's layout) or cameras.npz (DP-Recon's) at "
        "its top level or in its one folder; zip a scene folder (`sds3d scene synth OUT_DIR` writes one)",
    )


def unpack_scene(archive: str | Path, members: list[zipfile.ZipInfo], root: str, dest: Path) -> Path:
    """Writes the members under ``root`` into the new folder ``dest`` (created); returns it.

    Paths are checked again (no member lands outside ``dest``) and the bytes written are counted against
    :data:`MAX_UNPACKED_BYTES` whatever the zip claims. The caller removes ``dest`` on failure.

    Raises:
        UserError: a damaged member, an unsupported compression, or more bytes than allowed.
    """
    dest.mkdir(parents=True)
    inside = dest.resolve()
    top_folder = root.rstrip("/")
    written = 0
    with zipfile.ZipFile(archive) as zf:
        for info in members:
            parts = _member_path(info.filename)
            if top_folder:
                if parts[0] != top_folder:
                    continue
                parts = parts[1:]
            if not parts:
                continue
            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(inside):
                raise field_error(
                    "scene",
                    f"{info.filename!r} would unpack outside the scene folder; zip the scene folder itself",
                )
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > MAX_UNPACKED_BYTES:
                            break
                        out.write(chunk)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as err:
                raise field_error(
                    "scene",
                    f"cannot unpack {info.filename!r} ({err}); zip the scene folder again (deflate or no "
                    "compression)",
                ) from None
            if written > MAX_UNPACKED_BYTES:  # more than the zip's directory said
                raise field_error(
                    "scene",
                    f"the zip unpacks to more than the {MAX_UNPACKED_BYTES / 1024**3:.0f} GB a scene may "
                    "take; use fewer or smaller views",
                )
    return dest


__all__ = ["MAX_MEMBERS", "MAX_UNPACKED_BYTES", "SCENE_FILES", "scene_members", "unpack_scene"]
