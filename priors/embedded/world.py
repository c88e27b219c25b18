"""A recolourable bank of procedural renders: the training data of the embedded priors.

Shading is linear in the albedo, so a render is stored per (object, pattern, view) as the shaded
coverage of its two colour *slots* (primary, secondary), the contribution of the parts with fixed
colours, and the coverage alpha; any colours then cost one multiply-add:
``rgb = c_p · S_p + c_s · S_s + F + (1 − α)`` on white. The bank is rendered once and cached.

Entries are ``(kind, pattern)`` pairs of :mod:`recon.data.objects` when that module is present
(compound, asymmetric and patterned objects), else the five solid primitives of
:mod:`recon.data.procedural`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from recon.cameras import cameras_from_spherical, view_direction_words

VIEW_WORDS: tuple[str, ...] = ("front view", "side view", "back view", "overhead view")


@dataclass
class WorldBankConfig:
    """How the bank is rendered."""

    views_per_entry: int = 256
    """Random cameras per (kind, pattern)."""
    resolution: int = 32
    """Image size (square)."""
    elevation_range_deg: tuple[float, float] = (-10.0, 80.0)
    """Camera elevations (uniform on the sphere's area)."""
    distance: float = 3.0
    """Camera distance (the pipelines' SDS cameras use 3.0)."""
    fov_deg: float = 40.0
    """Vertical field of view (the pipelines' 40 degrees)."""
    seed: int = 0
    """Seed of the cameras."""
    entries: tuple[tuple[str, str], ...] | None = None
    """``(kind, pattern)`` pairs; ``None``: every valid pair of the world."""
    supersample: int = 2
    """Samples per pixel per axis."""


@dataclass
class WorldBank:
    """Per-entry renders; tensors are ``[E, V, ...]`` (float16 to halve the memory)."""

    entries: list[tuple[str, str]]
    slots: Tensor  # [E, V, 2, H, W] shaded coverage of the primary and secondary slots
    fixed: Tensor  # [E, V, 3, H, W] shaded fixed-colour parts
    alpha: Tensor  # [E, V, 1, H, W]
    elevation_deg: Tensor  # [E, V]
    azimuth_deg: Tensor  # [E, V]
    view_labels: Tensor  # [E, V] index into VIEW_WORDS

    def images(self, entry: Tensor, view: Tensor, primary: Tensor, secondary: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` for ``entry, view [B]`` and RGB colours ``[B, 3]``."""
        s = self.slots[entry, view].float()
        rgb = primary[:, :, None, None] * s[:, 0:1] + secondary[:, :, None, None] * s[:, 1:2]
        rgb = rgb + self.fixed[entry, view].float() + (1.0 - self.alpha[entry, view].float())
        return rgb.clamp(0.0, 1.0)


def _objects_module():
    """:mod:`recon.data.objects` when it provides the bank's API, else ``None``."""
    try:
        from recon.data import objects
    except ImportError:
        return None
    return objects if hasattr(objects, "render_object") and hasattr(objects, "KIND_SPECS") else None


def world_entries() -> list[tuple[str, str]]:
    """Every ``(kind, pattern)`` of the world (the primitives, solid, without recon.data.objects)."""
    objects = _objects_module()
    if objects is None:
        from recon.data.procedural import SHAPES

        return [(s, "solid") for s in SHAPES]
    entries = []
    for kind in objects.KINDS:
        entries.append((kind, "solid"))
        if objects.KIND_SPECS[kind].patternable:
            entries += [(kind, p) for p in objects.PATTERNS if p != "solid"]
    return entries


def entry_object(kind: str, pattern: str, color: str = "red", secondary: str | None = None):
    """The :class:`recon.data.objects.ProceduralObject` of an entry (``secondary`` only for patterns)."""
    objects = _objects_module()
    if pattern == "solid":
        return objects.ProceduralObject(kind, color)
    if secondary is None:
        secondary = next(c for c in objects.SECONDARY_COLORS if c != color)
    return objects.ProceduralObject(kind, color, secondary, pattern)


def secondary_choices(kind: str, pattern: str, color: str) -> list[str]:
    """Secondary colours an entry may take with primary ``color``: a pattern's any other colour, a solid
    compound object's default secondaries (e.g. a mushroom's stem)."""
    objects = _objects_module()
    if objects is None:
        return ["white"]
    if pattern == "solid":
        return [c for c in objects.KIND_SPECS[kind].default_secondary if c != color] or ["white"]
    return [c for c in objects.SECONDARY_COLORS if c != color]


def _render_entry(kind: str, pattern: str, cams, supersample: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(slots [V, 2, H, W], fixed [V, 3, H, W], alpha [V, 1, H, W])`` of one entry."""
    objects = _objects_module()
    if objects is None:
        from recon.data.procedural import render_primitive

        rgb, a, _ = render_primitive(kind, (1.0, 1.0, 1.0), cams, background=0.0, supersample=supersample)
        s = rgb[..., :1].permute(0, 3, 1, 2)
        slots = torch.cat([s, torch.zeros_like(s)], 1)
        return slots, torch.zeros_like(rgb).permute(0, 3, 1, 2), a.permute(0, 3, 1, 2)
    obj = entry_object(kind, pattern)
    out = objects.render_object(obj, cams, supersample=supersample, background=0.0, return_slots=True)
    return out.slots.permute(0, 3, 1, 2), out.fixed_rgb.permute(0, 3, 1, 2), out.alpha.permute(0, 3, 1, 2)


def render_world_bank(cfg: WorldBankConfig, chunk: int = 64, progress: bool = True) -> WorldBank:
    """Renders every entry from ``cfg.views_per_entry`` random cameras (seeded, shared by all entries)."""
    import math

    from tqdm.auto import tqdm

    entries = list(cfg.entries) if cfg.entries is not None else world_entries()
    g = torch.Generator().manual_seed(cfg.seed)
    n = cfg.views_per_entry
    lo, hi = (math.sin(math.radians(v)) for v in cfg.elevation_range_deg)
    elevation = torch.rad2deg(torch.asin(lo + (hi - lo) * torch.rand(n, generator=g)))
    azimuth = -180.0 + 360.0 * torch.rand(n, generator=g)
    words = view_direction_words(elevation, azimuth)
    labels = torch.tensor([VIEW_WORDS.index(w) for w in words])
    slots, fixed, alpha = [], [], []
    for kind, pattern in tqdm(entries, desc="world bank", disable=not progress):
        parts = []
        for i in range(0, n, chunk):
            sl = slice(i, min(n, i + chunk))
            m = sl.stop - sl.start
            cams = cameras_from_spherical(
                elevation[sl],
                azimuth[sl],
                torch.full((m,), cfg.distance),
                torch.full((m,), cfg.fov_deg),
                cfg.resolution,
                cfg.resolution,
            )
            parts.append(_render_entry(kind, pattern, cams, cfg.supersample))
        slots.append(torch.cat([p[0] for p in parts]).half())
        fixed.append(torch.cat([p[1] for p in parts]).half())
        alpha.append(torch.cat([p[2] for p in parts]).half())
    e = len(entries)
    return WorldBank(
        entries,
        torch.stack(slots),
        torch.stack(fixed),
        torch.stack(alpha),
        elevation[None].expand(e, n).clone(),
        azimuth[None].expand(e, n).clone(),
        labels[None].expand(e, n).clone(),
    )


def load_or_render_world_bank(cfg: WorldBankConfig, cache: Path | None, progress: bool = True) -> WorldBank:
    """The bank from ``cache`` if rendered with ``cfg`` and the same world, else rendered and cached."""
    entries = list(cfg.entries) if cfg.entries is not None else world_entries()
    key = repr((sorted(cfg.__dict__.items()), entries, _world_version()))
    if cache is not None and cache.is_file():
        data = torch.load(cache, weights_only=False)
        if data.get("key") == key:
            return WorldBank(**data["bank"])
    bank = render_world_bank(cfg, progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"key": key, "bank": bank.__dict__}, tmp)
        os.replace(tmp, cache)
    return bank


def _world_version() -> str:
    """A fingerprint of the object definitions, so a changed world re-renders the bank."""
    import hashlib

    objects = _objects_module()
    if objects is not None:
        files = [Path(objects.__file__)]
        kinds = Path(objects.__file__).with_name("object_kinds.py")
        if kinds.is_file():
            files.append(kinds)
    else:
        from recon.data import procedural

        files = [Path(procedural.__file__)]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def palettes() -> tuple[dict[str, tuple[float, float, float]], dict[str, tuple[float, float, float]]]:
    """``(primary colours, secondary colours)`` of the world."""
    objects = _objects_module()
    if objects is not None:
        return dict(objects.COLORS), dict(objects.SECONDARY_COLORS)
    from recon.data.procedural import COLORS

    return dict(COLORS), {"white": (0.95, 0.95, 0.95)}


def sample_colors(
    bank: WorldBank, entry: Tensor, generator: torch.Generator
) -> tuple[list[str], list[str], Tensor, Tensor]:
    """Random colours for entries ``[B]``: ``(primary names, secondary names, rgb [B, 3], rgb [B, 3])``.

    The primary colour is uniform over the palette; the secondary is uniform over what the entry allows
    with it (:func:`secondary_choices`).
    """
    primary, secondary = palettes()
    names = list(primary)
    p_idx = torch.randint(len(names), (len(entry),), generator=generator).tolist()
    u = torch.rand(len(entry), generator=generator).tolist()
    p_names, s_names = [], []
    for e, i, r in zip(entry.tolist(), p_idx, u):
        kind, pattern = bank.entries[e]
        choices = secondary_choices(kind, pattern, names[i])
        p_names.append(names[i])
        s_names.append(choices[min(int(r * len(choices)), len(choices) - 1)])
    table = {**primary, **secondary}
    return (
        p_names,
        s_names,
        torch.tensor([primary[n] for n in p_names]),
        torch.tensor([table[n] for n in s_names]),
    )


def entry_caption(kind: str, pattern: str, color: str, secondary: str, view_word: str | None = None) -> str:
    """The caption of an entry in given colours (``recon.data.objects.caption``; primitives without it)."""
    objects = _objects_module()
    if objects is None:
        from recon.data.procedural import caption

        return caption(kind, color, view_word)
    obj = entry_object(kind, pattern, color, None if pattern == "solid" else secondary)
    return objects.caption(obj, view_word)


def caption_batch(
    bank: WorldBank,
    batch_size: int,
    generator: torch.Generator,
    view_word_prob: float = 0.7,
    uncond_prob: float = 0.12,
) -> tuple[Tensor, list[str], dict[str, Tensor]]:
    """A random captioned batch of the text priors' training set.

    Returns:
        ``(images [B, 3, H, W] in [0, 1], captions, labels)``: captions ``"a red chair, front view"``
        (the view word with probability ``view_word_prob``; the empty caption with ``uncond_prob``),
        labels ``entry``, ``view`` (index into the bank) and ``view_label`` (into :data:`VIEW_WORDS`).
    """
    n_entries, n_views = bank.alpha.shape[:2]
    entry = torch.randint(n_entries, (batch_size,), generator=generator)
    view = torch.randint(n_views, (batch_size,), generator=generator)
    p_names, s_names, primary, secondary = sample_colors(bank, entry, generator)
    with_view = (torch.rand(batch_size, generator=generator) < view_word_prob).tolist()
    uncond = (torch.rand(batch_size, generator=generator) < uncond_prob).tolist()
    labels = bank.view_labels[entry, view]
    captions = []
    for i in range(batch_size):
        kind, pattern = bank.entries[int(entry[i])]
        word = VIEW_WORDS[int(labels[i])] if with_view[i] else None
        text = "" if uncond[i] else entry_caption(kind, pattern, p_names[i], s_names[i], word)
        captions.append(text)
    images = bank.images(entry, view, primary, secondary)
    return images, captions, {"entry": entry, "view": view, "view_label": labels}
