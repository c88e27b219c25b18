"""Prompt understanding for the embedded priors: free text -> a caption of the embedded world."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from priors.vocabulary import (
    MATCH_THRESHOLD,
    canonical_prompt,
    match_prompt,
    parse_prompt,
    vocabulary_help,
    vocabulary_summary,
)
from recon.data.objects import KINDS, caption, vocabulary
from recon.errors import UserError


def test_every_caption_of_the_world_maps_to_itself_without_the_encoder() -> None:
    for obj in vocabulary():
        text = caption(obj)
        match = parse_prompt(text)
        assert match.caption == text and match.object == obj and match.similarity is None
    assert canonical_prompt("an orange mug, side view") == "an orange mug, side view"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("A Red Cube", "a red cube"),
        ("a big orange ball", "an orange sphere"),
        ("a small red seat", "a red chair"),
        ("a tiny blue desk", "a blue table"),
        ("a little pink donut", "a pink torus"),
        ("a green cup", "a green mug"),
        ("a yellow automobile", "a yellow car"),
        ("a crimson box", "a red cube"),
        ("a teal burger", "a cyan hamburger"),
        ("a violet rubber ducky", "a purple duck"),
        ("a scarlet snow man", "a red snowman"),
        ("a chair, red", "a red chair"),  # word order
        ("the duck in yellow", "a yellow duck"),
        ("a red and white striped ball", "a red and white striped sphere"),
        ("a sphere with red and white stripes", "a red and white striped sphere"),
        ("a stripy blue and black cube", "a blue and black striped cube"),
        ("a red and white checkerboard cube", "a red and white checkered cube"),
        ("a checked green and yellow cone", "a green and yellow checkered cone"),
        ("a polka-dot red and white mushroom", "a red and white dotted mushroom"),
        ("a spotted pink and black lollipop", "a pink and black dotted lollipop"),
        ("a two-coloured green and black mushroom", "a green and black two-tone mushroom"),
        ("a two-colored blue and orange mug", "a blue and orange two-tone mug"),
        ("a white and red striped ball", "a red and white striped sphere"),  # the hue is the main colour
    ],
)
def test_synonyms_word_order_and_fillers_are_understood_by_rules(prompt: str, expected: str) -> None:
    match = parse_prompt(prompt)
    assert match.caption == expected and match.similarity is None
    assert match_prompt(prompt) == expected


def test_view_suffixes_are_kept_apart() -> None:
    assert canonical_prompt("A chair, red, side view") == "a red chair, side view"
    assert parse_prompt("top view of a blue house").prompt == "a blue house, overhead view"
    assert parse_prompt("a yellow duck, back view").view == "back view"
    assert match_prompt("a yellow duck, back view") == "a yellow duck"
    with pytest.raises(UserError, match="several views"):
        parse_prompt("a red chair, front view, back view")


def test_near_phrasings_go_through_the_sentence_encoder() -> None:
    wooden = parse_prompt("a red wooden chair")
    assert wooden.caption == "a red chair" and wooden.similarity > 0.9
    truck = parse_prompt("a red truck")  # no kind word: the nearest kind in the named colour
    assert truck.caption == "a red car" and MATCH_THRESHOLD <= truck.similarity < 0.8
    assert parse_prompt("a red beach ball").caption == "a red sphere"


@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        ("a red cat", "similarity 0.60"),  # nearest "a red cone", below the threshold
        ("a cat", "closest"),
        ("a red sofa", "similarity 0.71"),
        ("a thing", "ambiguous"),
        ("an object", "ambiguous"),
        ("something red", "ambiguous"),
        ("red", "ambiguous"),
        ("a red cube and a blue sphere", "several objects"),
        ("a brown chair", "'brown' is not one of the colours"),
        ("a white chair", "second colour"),
        ("a red and white chair", "takes one colour"),
        ("a red and white sphere", "need a pattern"),
        ("a red and white striped chair", "takes no pattern"),
        ("a red, white and blue striped sphere", "3 colours"),
        ("   ", "empty"),
    ],
)
def test_unknown_and_ambiguous_prompts_are_refused_with_the_vocabulary(prompt: str, why: str) -> None:
    with pytest.raises(UserError) as err:
        parse_prompt(prompt)
    message = str(err.value)
    assert why in message
    assert "--prior HUB_ID" in message and "GPU" in message
    assert ", ".join(KINDS) in message and "red, orange, yellow" in message and "two-tone" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("prompt", "expected", "said"),
    [
        ("a chair", "a red chair", "colour red: the chair's default"),
        ("A tree", "a green tree", "colour green: the tree's default"),
        ("a striped red sphere", "a red and white striped sphere", "second colour white"),
        ("a stripy blue ball", "a blue and white striped sphere", "second colour white"),
        ("a striped sphere", "a red and white striped sphere", "the sphere's default"),
        ("a white striped mug", "a blue and white striped mug", "main colour blue"),
        ("a red chair", "a red chair", None),
    ],
)
def test_what_a_prompt_leaves_out_gets_a_default_that_is_said(prompt, expected, said, caplog) -> None:
    from priors import vocabulary

    parse_prompt.cache_clear()
    vocabulary._SAID.clear()
    with caplog.at_level("WARNING", logger="sds3d.priors.vocabulary"):
        match = parse_prompt(prompt)
    assert match.caption == expected
    if said is None:
        assert match.defaults == () and not caplog.records
    else:
        assert any(said in d for d in match.defaults), match.defaults
        assert expected in caplog.text and "name the colours" in caplog.text


def test_every_kind_has_a_default_colour_of_the_palette() -> None:
    from priors.vocabulary import DEFAULT_COLORS
    from recon.data.objects import COLORS

    assert set(DEFAULT_COLORS) == set(KINDS) and set(DEFAULT_COLORS.values()) <= set(COLORS)
    for kind in KINDS:
        assert (
            parse_prompt(f"a {kind}").caption
            == f"{'an' if DEFAULT_COLORS[kind][0] in 'aeiou' else 'a'} {DEFAULT_COLORS[kind]} {kind}"
        )


def test_the_summary_lists_the_vocabulary_compactly() -> None:
    summary = vocabulary_summary()
    assert summary["kinds"] == ", ".join(KINDS)
    assert summary["patterns"] == "striped, checkered, dotted, two-tone"
    assert "white, black" in summary["secondaries"]
    assert summary["patternable"].startswith("sphere, cube, cone, cylinder, torus")
    assert "duck (beak)" in summary["asymmetric"] and "mug (handle on the side)" in summary["asymmetric"]
    assert summary["vocabulary"].startswith("2464 objects")
    assert "\n" not in vocabulary_help()  # the CLI prints an error as one line


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    """One tiny SD-layout pipeline, copied as a plain, a primitives-embedded and a world-embedded prior."""
    from tests.priors.test_model import save_tiny_sd

    plain = save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))
    folders = {"plain": plain}
    for name, meta in (("primitives", {"shapes": ["sphere"]}), ("world", {"data": "world"})):
        folders[name] = tmp_path_factory.mktemp(name) / "prior"
        shutil.copytree(plain, folders[name])
        (folders[name] / "embedded.json").write_text(json.dumps(meta))
    return folders


def test_world_embedded_priors_encode_canonical_captions(tiny_folders: dict[str, Path]) -> None:
    from priors.model import DiffusionPrior

    plain = DiffusionPrior.from_pretrained(str(tiny_folders["plain"]))
    world = DiffusionPrior.from_pretrained(str(tiny_folders["world"]))
    assert plain.prompt_vocabulary is None and world.prompt_vocabulary == "world"
    cond = world.encode_prompt(["A chair, red, side view"], ["a big blue ball"])
    assert cond.prompts == ["a red chair, side view"]
    expected = plain.encode_prompt(["a red chair, side view"], ["a blue sphere"])
    torch.testing.assert_close(cond.cond, expected.cond)
    torch.testing.assert_close(cond.uncond, expected.uncond)
    free_negative = world.encode_prompt(["a red chair"], ["blurry, low quality"])  # kept as given
    torch.testing.assert_close(
        free_negative.uncond, plain.encode_prompt([""], ["blurry, low quality"]).uncond
    )
    with pytest.raises(UserError, match="--prior HUB_ID"):
        world.encode_prompt(["a red cat"])
    # Hub / diffusers folders and the primitives-only embedded priors take prompts as given.
    assert plain.encode_prompt(["a chair, red"]).prompts == ["a chair, red"]
    primitives = DiffusionPrior.from_pretrained(str(tiny_folders["primitives"]))
    assert primitives.prompt_vocabulary == "primitives" and primitives.embedded_meta == {"shapes": ["sphere"]}
    assert primitives.encode_prompt(["a chair, red"]).prompts == ["a chair, red"]
