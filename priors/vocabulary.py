"""Prompt understanding for the embedded priors: free text -> one caption of the embedded world.

The embedded priors (the exemplar prior and the embedded UNets) know the objects of
:mod:`recon.data.objects` and nothing else. :func:`parse_prompt` maps a user's prompt onto one canonical
caption of that world (``"a red chair"``, ``"a blue and white striped sphere"``), keeping a view suffix
(``"front view"`` ...) apart:

1. **Rules.** Lower case; view phrases (``", side view"``, ``"top view"``) are taken out; multi-word
   names are joined (``"polka dot"``, ``"coffee cup"``, ``"snow man"``); every word is then a kind, a
   colour or a pattern after :data:`KIND_SYNONYMS` / :data:`COLOR_SYNONYMS` / :data:`PATTERN_SYNONYMS`
   (ball -> sphere, seat -> chair, crimson -> red, stripy -> striped ...), a filler that is dropped
   (articles, "small", "big", "little", "tiny", "with", "in" ...), or unknown. Word order is free
   (``"a chair, red"``; ``"a sphere with red and white stripes"``).
2. **Sentence encoder.** When unknown words remain (``"a red wooden chair"``, ``"a red truck"``), the
   offline MiniLM pooled vector of the normalised prompt (:func:`priors.text.encode_pooled`) is compared
   with the captions that agree with every recognised word; the nearest is taken if its cosine reaches
   :data:`MATCH_THRESHOLD`. Pooled vectors separate prompts only weakly (``"a red cat"`` is 0.60 from
   ``"a red cone"``), hence the threshold, and the encoder only ever chooses the *kind*.
3. **Refusals** (:class:`recon.errors.UserError`, the message lists what the embedded priors know and
   says that open-vocabulary prompts need a real checkpoint, ``--prior HUB_ID`` on a GPU):

   * nothing known near enough (``"a cat"``, ``"a red kitten"``);
   * ambiguous: no object named (``"a thing"``, ``"an object"``, ``"something red"``, ``"red"``), or
     several (``"a red cube and a blue sphere"``); nothing is guessed;
   * a colour outside the palette (``"a brown chair"``), white or black as the only colour, two colours
     without a pattern, a pattern on a kind that takes none.

4. **Defaults, said out loud.** A kind without a colour (``"a chair"``) gets the kind's
   :data:`DEFAULT_COLORS` entry (``"a red chair"``), a pattern with one colour gets white as its second
   (``"a striped blue ball"`` -> ``"a blue and white striped sphere"``); :attr:`PromptMatch.defaults`
   names what was filled in and a warning is logged, so the choice is never silent.

The caption grammar is :mod:`recon.data.objects`' (a primary colour from the 8 hues; patterned objects
name a second colour, which may also be white or black, then the pattern).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

from recon.data.objects import (
    COLORS,
    KIND_SPECS,
    KINDS,
    PATTERNS,
    SECONDARY_COLORS,
    VIEW_WORDS,
    ProceduralObject,
    caption,
    vocabulary,
)
from recon.errors import UserError

log = logging.getLogger("sds3d.priors.vocabulary")

__all__ = [
    "COLOR_SYNONYMS",
    "DEFAULT_COLORS",
    "KIND_SYNONYMS",
    "MATCH_THRESHOLD",
    "PATTERN_SYNONYMS",
    "PromptMatch",
    "canonical_prompt",
    "match_prompt",
    "parse_prompt",
    "vocabulary_help",
    "vocabulary_summary",
]

DEFAULT_COLORS: dict[str, str] = {
    "sphere": "red", "cube": "red", "cone": "orange", "cylinder": "blue", "torus": "pink",
    "chair": "red", "table": "orange", "snowman": "red", "mushroom": "red", "house": "yellow",
    "tree": "green", "rocket": "red", "lamp": "yellow", "mug": "blue", "dumbbell": "blue",
    "lollipop": "pink", "car": "red", "duck": "yellow", "hamburger": "orange", "bed": "blue",
}  # fmt: skip
"""The colour a kind gets when the prompt names none (the colour of its primary parts: the chair's seat
and backrest, the tree's foliage, the snowman's scarf and hat...)."""

DEFAULT_SECONDARY = "white"
"""The second colour of a pattern whose prompt names one colour."""

_SAID: set[tuple[str, tuple[str, ...]]] = set()
"""Defaults already logged (the view prompts of one run would repeat them)."""

MATCH_THRESHOLD = 0.76
"""Lowest MiniLM cosine between a prompt with unknown words and the caption it is mapped to. Measured
(pooled vectors): "a red wooden chair" 0.92, "a red cube made of cheese" 0.80, "a red truck" -> car
0.77 pass; "a red goose" -> duck 0.75, "a red sofa" -> chair 0.71, "a red cat" -> cone 0.60 do not."""

KIND_SYNONYMS: dict[str, str] = {
    "ball": "sphere", "orb": "sphere", "globe": "sphere",
    "box": "cube", "block": "cube", "dice": "cube", "die": "cube",
    "donut": "torus", "doughnut": "torus", "ring": "torus", "bagel": "torus",
    "tube": "cylinder", "pillar": "cylinder", "column": "cylinder",
    "seat": "chair", "armchair": "chair",
    "desk": "table",
    "toadstool": "mushroom",
    "home": "house", "cottage": "house", "hut": "house",
    "pine": "tree", "fir": "tree", "conifer": "tree",
    "spaceship": "rocket", "spacecraft": "rocket",
    "cup": "mug", "teacup": "mug",
    "barbell": "dumbbell",
    "lollypop": "lollipop", "lolly": "lollipop",
    "automobile": "car", "auto": "car", "sedan": "car",
    "duckling": "duck", "ducky": "duck", "duckie": "duck",
    "burger": "hamburger", "cheeseburger": "hamburger",
}  # fmt: skip
"""Nouns mapped to a kind of :data:`recon.data.objects.KINDS`."""

COLOR_SYNONYMS: dict[str, str] = {
    "violet": "purple", "magenta": "pink", "teal": "cyan", "turquoise": "cyan", "aqua": "cyan",
    "crimson": "red", "scarlet": "red", "gold": "yellow", "golden": "yellow", "navy": "blue",
    "lime": "green", "emerald": "green",
}  # fmt: skip
"""Colour words mapped to the palette (``COLORS`` and the secondary white / black)."""

PATTERN_SYNONYMS: dict[str, str] = {
    "stripes": "striped", "stripe": "striped", "stripy": "striped", "stripey": "striped",
    "checked": "checkered", "checkerboard": "checkered", "chequered": "checkered", "checker": "checkered",
    "checkers": "checkered", "checks": "checkered",
    "spotted": "dotted", "spotty": "dotted", "spots": "dotted", "dots": "dotted", "dot": "dotted",
    "polkadot": "dotted", "twotone": "two-tone", "bicolor": "two-tone", "bicolour": "two-tone",
}  # fmt: skip
"""Pattern words mapped to :data:`recon.data.objects.PATTERNS`."""

_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"\btwo[\s-]*(?:tones?|toned|colou?rs?|colou?red)\b", " twotone "),
        (r"\bpolka[\s-]*dot(?:s|ted)?\b", " polkadot "),
        (r"\bchecker[\s-]*board\b", " checkerboard "),
        (r"\bsnow[\s-]+man\b", " snowman "),
        (r"\bdumb[\s-]+bell\b", " dumbbell "),
        (r"\bspace[\s-]+(?:ship|craft|rocket)\b", " rocket "),
        (r"\b(?:christmas|pine|fir)[\s-]+tree\b", " tree "),
        (r"\b(?:table|desk|floor|reading|bedside)[\s-]+lamp\b", " lamp "),
        (r"\b(?:coffee|tea)[\s-]+(?:mug|cup)\b", " mug "),
        (r"\b(?:race|racing|sports|toy)[\s-]+car\b", " car "),
        (r"\brubber[\s-]+duck(?:y|ie)?\b", " duck "),
    )
)
"""Multi-word names joined (or resolved) before the prompt is split into words."""

FILLER_WORDS = frozenset(
    "a an the one single of with in and on please make me draw create generate render model 3d shaped "
    "small big little tiny large huge giant cute simple nice plain solid coloured colored light dark "
    "bright pale".split()
)
"""Words dropped by the rules (sizes, articles, "with", "in", shades of a colour ...)."""

VAGUE_WORDS = frozenset(
    "thing things object objects something anything stuff item shape figure whatever".split()
)
"""Words that name no particular object: a prompt with them and no kind is ambiguous (refused)."""

UNKNOWN_COLORS = frozenset(
    "brown grey gray silver beige tan maroon khaki olive ivory cream".split()
)  # fmt: skip
"""Colour words outside the palette (refused with the palette, not mapped to the nearest hue)."""

_VIEW_PHRASE = re.compile(r",?\s*\b(front|side|back|rear|overhead|top|bottom)\s+view\b")
_VIEW_ALIASES = {"front": "front view", "side": "side view", "back": "back view", "rear": "back view",
                 "overhead": "overhead view", "top": "overhead view", "bottom": None}  # fmt: skip
_SECONDARY_ONLY = tuple(c for c in SECONDARY_COLORS if c not in COLORS)  # white, black


@dataclass(frozen=True)
class PromptMatch:
    """A prompt understood as one object of the embedded world."""

    caption: str
    """Canonical caption without a view suffix (``recon.data.objects.caption``)."""
    view: str | None
    """View suffix of the prompt (one of :data:`recon.data.objects.VIEW_WORDS`), or ``None``."""
    object: ProceduralObject
    """The object the caption describes."""
    similarity: float | None = None
    """MiniLM cosine when the sentence encoder chose the kind; ``None`` when the rules did."""
    defaults: tuple[str, ...] = ()
    """What the prompt did not say and was filled in (``"colour red (the chair's default)"``)."""

    @property
    def prompt(self) -> str:
        """The caption with its view suffix (``"a red chair, side view"``)."""
        return self.caption if self.view is None else f"{self.caption}, {self.view}"


def match_prompt(text: str, threshold: float = MATCH_THRESHOLD) -> str:
    """The canonical world caption of a prompt, without its view suffix (``"a big red ball"`` ->
    ``"a red sphere"``).

    A prompt that names a kind but no colour (``"a chair"``) gets the kind's default colour
    (:data:`DEFAULT_COLORS`, logged). See :func:`parse_prompt`.

    Raises:
        UserError: for a prompt outside the vocabulary or an ambiguous one.
    """
    return parse_prompt(text, threshold).caption


def canonical_prompt(text: str, threshold: float = MATCH_THRESHOLD) -> str:
    """The canonical caption with the prompt's view suffix kept (``"A chair, red, side view"`` ->
    ``"a red chair, side view"``).

    Raises:
        UserError: as :func:`match_prompt`.
    """
    return parse_prompt(text, threshold).prompt


@lru_cache(maxsize=4096)
def parse_prompt(text: str, threshold: float = MATCH_THRESHOLD) -> PromptMatch:
    """Understands a prompt as one object of the embedded world (rules first, then the sentence encoder).

    Args:
        text: The user's prompt.
        threshold: Lowest MiniLM cosine accepted when unknown words remain.

    Returns:
        The :class:`PromptMatch` (caption, view suffix, object, cosine if the encoder decided).

    Raises:
        UserError: for a prompt outside the vocabulary (nothing near enough), an ambiguous one (no
            object or several), a kind without a colour, a colour outside the palette, or a pattern
            that the kind or the colours do not allow. The message says why and lists the vocabulary.
    """
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"the prompt is empty; say what to draw. {vocabulary_help()}")
    lowered = " ".join(text.lower().split())
    exact, view = _split_view(lowered, text)
    if not exact:
        raise _refuse(text, "it names only a view, no object")
    parsed = _parse_words(exact)
    kinds = list(dict.fromkeys(parsed.kinds))
    colors = list(dict.fromkeys(parsed.colors))
    patterns = list(dict.fromkeys(parsed.patterns))
    if parsed.unknown_colors:
        raise _refuse(
            text,
            f"{', '.join(repr(c) for c in parsed.unknown_colors)} is not one of the colours "
            f"({', '.join(COLORS)}; white and black only as a pattern's second colour)",
        )
    if len(kinds) > 1:
        raise _refuse(
            text, f"it names several objects ({', '.join(kinds)}); the embedded priors draw one: name one"
        )
    if len(patterns) > 1:
        raise _refuse(text, f"it names several patterns ({', '.join(patterns)}); name one")
    if len(colors) > 2:
        raise _refuse(
            text,
            f"it names {len(colors)} colours ({', '.join(colors)}); an object has one, or two with a pattern",
        )
    similarity = None
    if not kinds:
        if parsed.vague or not parsed.unknown:
            raise _refuse(text, "it is ambiguous: it names no object; say which one (e.g. 'a red chair')")
        kind, similarity, closest = _nearest_kind(parsed, colors, patterns, None)
        if similarity < threshold:
            raise _refuse(
                text, f"closest: {closest!r}, similarity {similarity:.2f} < {threshold}", unknown=True
            )
        kinds = [kind]
    elif parsed.unknown:
        kind, similarity, closest = _nearest_kind(parsed, colors, patterns, kinds[0])
        if similarity < threshold:
            raise _refuse(
                text,
                f"the words {' '.join(repr(w) for w in parsed.unknown)} are unknown (closest: {closest!r}, "
                f"similarity {similarity:.2f} < {threshold})",
                unknown=True,
            )
    obj, defaults = _build_object(text, kinds[0], colors, patterns[0] if patterns else None)
    match = PromptMatch(caption(obj), view, obj, similarity, defaults)
    if defaults and (match.caption, defaults) not in _SAID:  # once per object, not once per view prompt
        _SAID.add((match.caption, defaults))
        log.warning(
            "%r names no %s: drawing %r (%s); name the colours to choose them",
            text, "colour" if not colors else "second colour", match.caption, ", ".join(defaults),
        )  # fmt: skip
    if similarity is not None:
        log.info("prompt %r understood as %r (MiniLM cosine %.2f)", text, match.caption, similarity)
    return match


# --- rules ----------------------------------------------------------------------------------------------
@dataclass
class _Words:
    kinds: list[str]
    colors: list[str]
    patterns: list[str]
    unknown: list[str]
    unknown_colors: list[str]
    vague: bool
    normalised: list[str]  # the prompt's words, canonical, fillers dropped (the encoder's query)


def _split_view(lowered: str, original: str) -> tuple[str, str | None]:
    views = [_VIEW_ALIASES[m.group(1)] for m in _VIEW_PHRASE.finditer(lowered)]
    named = list(dict.fromkeys(v for v in views if v is not None))
    if len(named) > 1:
        raise _refuse(original, f"it names several views ({', '.join(named)}); name one")
    body = _VIEW_PHRASE.sub(" ", lowered)
    body = " ".join(re.sub(r"[^a-z0-9\s-]", " ", body).split())
    return body, (named[0] if named else None)


def _parse_words(body: str) -> _Words:
    for pattern, replacement in _PHRASES:
        body = pattern.sub(replacement, body)
    out = _Words([], [], [], [], [], False, [])
    for word in re.findall(r"[a-z0-9]+", body):
        if word in FILLER_WORDS:
            continue
        word = KIND_SYNONYMS.get(word, COLOR_SYNONYMS.get(word, PATTERN_SYNONYMS.get(word, word)))
        if word in KIND_SPECS:
            out.kinds.append(word)
        elif word in SECONDARY_COLORS:
            out.colors.append(word)
        elif word in PATTERNS[1:]:
            out.patterns.append(word)
        elif word in UNKNOWN_COLORS:
            out.unknown_colors.append(word)
        elif word in VAGUE_WORDS:
            out.vague = True
        else:
            out.unknown.append(word)
        out.normalised.append(word)
    return out


def _build_object(
    text: str, kind: str, colors: list[str], pattern: str | None
) -> tuple[ProceduralObject, tuple[str, ...]]:
    spec = KIND_SPECS[kind]
    defaults: list[str] = []
    if not colors:
        colors = [DEFAULT_COLORS[kind]]
        defaults.append(f"colour {colors[0]}: the {kind}'s default")
    if pattern is None:
        if len(colors) == 2:
            if spec.patternable:
                example = f"{_article(colors[0])} {colors[0]} and {colors[1]} striped {kind}"
                why = f"two colours need a pattern ({', '.join(PATTERNS[1:])}), e.g. '{example}'"
            else:
                why = f"a {kind} takes one colour (patterns only on {', '.join(_patternable())})"
            raise _refuse(text, why)
        if colors[0] not in COLORS:
            raise _refuse(
                text,
                f"{colors[0]} is only a pattern's second colour; the main one is one of {', '.join(COLORS)}",
            )
        return ProceduralObject(kind, colors[0]), tuple(defaults)
    if not spec.patternable:
        raise _refuse(text, f"a {kind} takes no pattern; patterns go on {', '.join(_patternable())}")
    if len(colors) == 1:
        if colors[0] not in COLORS:  # "a white striped ball": white is the second colour
            colors = [DEFAULT_COLORS[kind], colors[0]]
            defaults.append(f"main colour {colors[0]}: the {kind}'s default")
        else:
            colors = [colors[0], DEFAULT_SECONDARY]
            defaults.append(f"second colour {DEFAULT_SECONDARY}")
    if len(colors) != 2:
        raise _refuse(text, f"a {pattern} {kind} takes two colours, e.g. 'a red and white {pattern} {kind}'")
    primary, secondary = colors
    if primary not in COLORS and secondary in COLORS:  # "a white and red striped ball": red is the main hue
        primary, secondary = secondary, primary
    if primary not in COLORS:
        raise _refuse(
            text, f"white and black are only a pattern's second colour; name one of {', '.join(COLORS)}"
        )
    return ProceduralObject(kind, primary, secondary, pattern), tuple(defaults)


# --- sentence encoder -----------------------------------------------------------------------------------
def _nearest_kind(
    parsed: _Words, colors: list[str], patterns: list[str], kind: str | None
) -> tuple[str, float, str]:
    """``(kind, cosine, candidate phrase)`` of the candidate nearest to the normalised prompt.

    Candidates agree with every recognised word: the given kind (or every kind that takes the pattern),
    written with the recognised colours and pattern.
    """
    if kind is not None:
        kinds = [kind]
    else:
        kinds = [k for k in KINDS if KIND_SPECS[k].patternable] if patterns else list(KINDS)
    head = " and ".join(colors) + (f" {patterns[0]}" if patterns else "")
    phrases = [" ".join(f"{head} {k}".split()) for k in kinds]
    phrases = [f"{_article(p)} {p}" for p in phrases]
    query = " ".join(parsed.normalised)
    sims = _cosines(f"{_article(query)} {query}", tuple(phrases))
    best = max(range(len(kinds)), key=lambda i: sims[i])
    return kinds[best], sims[best], phrases[best]


@lru_cache(maxsize=1024)
def _cosines(query: str, phrases: tuple[str, ...]) -> list[float]:
    from priors.text import encode_pooled

    vectors = _phrase_vectors(phrases)
    q = encode_pooled([query])[0]
    return [float(v @ q) for v in vectors]


@lru_cache(maxsize=256)
def _phrase_vectors(phrases: tuple[str, ...]):  # [P, 384]
    from priors.text import encode_pooled

    return encode_pooled(list(phrases))


# --- messages -------------------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _patternable() -> list[str]:
    return [k for k in KINDS if KIND_SPECS[k].patternable]


def _example(kind: str) -> str:
    return f"a red {kind}"


def vocabulary_summary() -> dict[str, str]:
    """What the embedded world knows, one short line per entry (``sds3d prior info``)."""
    fronts = [
        f"{k} ({KIND_SPECS[k].front_part or 'handle on the side'})" for k in KINDS if KIND_SPECS[k].asymmetric
    ]
    return {
        "vocabulary": f"{len(vocabulary())} objects: {len(KINDS)} kinds x {len(COLORS)} colours, "
        f"patterns on {len(_patternable())} kinds",
        "kinds": ", ".join(KINDS),
        "asymmetric": ", ".join(fronts),
        "colours": ", ".join(COLORS),
        "secondaries": f"the colours and {', '.join(_SECONDARY_ONLY)} (a pattern's second colour)",
        "patterns": ", ".join(PATTERNS[1:]),
        "patternable": ", ".join(_patternable()),
        "views": ", ".join(VIEW_WORDS) + " (suffix: 'a red chair, side view')",
        "grammar": "'a <colour> <kind>' | 'a <colour> and <colour2> <pattern> <kind>'",
    }


def vocabulary_help() -> str:
    """The vocabulary in one line, for error messages (the CLI prints an error as one line)."""
    return (
        "The embedded priors draw one object per prompt, 'a <colour> <kind>' or "
        "'a <colour> and <colour2> <pattern> <kind>', optionally with ', front view' (side, back, overhead): "
        f"kinds {', '.join(KINDS)}; colours {', '.join(COLORS)} "
        f"(colour2 also {' or '.join(_SECONDARY_ONLY)}); "
        f"patterns {', '.join(PATTERNS[1:])} on {', '.join(_patternable())}; "
        "e.g. 'a red chair', 'a yellow duck, side view', 'a blue and white striped sphere'. "
        "Open-vocabulary prompts need a real checkpoint: --prior HUB_ID (e.g. "
        "stabilityai/stable-diffusion-2-1-base with --allow-download) on a GPU."
    )


def _refuse(text: str, why: str, unknown: bool = False) -> UserError:
    what = "the embedded prior does not know" if unknown else "the embedded prior cannot draw"
    return UserError(f"{what} {text.strip()!r}: {why}. {vocabulary_help()}")
