"""Data: procedural ground truth (primitives and the embedded world of objects), datasets, video, poses."""

from recon.data.object_kinds import KIND_SPECS, KINDS, KindSpec, Part
from recon.data.objects import (
    PATTERNS,
    SECONDARY_COLORS,
    ObjectRender,
    ProceduralObject,
    caption,
    object_mesh,
    parse_caption,
    render_object,
    vocabulary,
)

__all__ = [
    "KINDS",
    "KIND_SPECS",
    "PATTERNS",
    "SECONDARY_COLORS",
    "KindSpec",
    "ObjectRender",
    "Part",
    "ProceduralObject",
    "caption",
    "object_mesh",
    "parse_caption",
    "render_object",
    "vocabulary",
]
