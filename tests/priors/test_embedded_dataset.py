from __future__ import annotations

import torch

from priors.embedded.dataset import (
    COLOR_NAMES,
    VIEW_WORDS,
    BatchConfig,
    ViewBankConfig,
    caption_index,
    caption_table,
    render_view_bank,
    sample_batch,
)
from priors.embedded.judge import judge_colors, judge_shapes, reference_silhouettes
from recon.cameras import sample_hemisphere_cameras, view_direction_words
from recon.data.procedural import COLORS, SHAPES, caption, render_primitive


def test_caption_table_and_index_agree():
    table = caption_table()
    assert table[0] == "" and len(table) == 1 + len(SHAPES) * len(COLOR_NAMES) * (1 + len(VIEW_WORDS))
    for si, shape in enumerate(SHAPES):
        for ci, color in enumerate(COLOR_NAMES):
            s, c = torch.tensor([si]), torch.tensor([ci])
            assert table[int(caption_index(s, c, None))] == caption(shape, color)
            assert table[int(caption_index(s, c, torch.tensor([-1])))] == caption(shape, color)
            for vi, word in enumerate(VIEW_WORDS):
                assert table[int(caption_index(s, c, torch.tensor([vi])))] == caption(shape, color, word)


def test_batches_match_their_captions_views_and_colors():
    bank = render_view_bank(ViewBankConfig(views_per_shape=24, seed=3))
    # the bank's view labels are the words of its recorded cameras
    for s in range(len(SHAPES)):
        words = view_direction_words(bank.elevation_deg[s], bank.azimuth_deg[s])
        assert [VIEW_WORDS[i] for i in bank.view_labels[s].tolist()] == words
    table = caption_table()
    g = torch.Generator().manual_seed(0)
    images, rows, labels = sample_batch(bank, BatchConfig(batch_size=64, uncond_prob=0.1), g)
    assert images.shape == (64, 3, 32, 32) and 0.0 <= images.min() and images.max() <= 1.0
    n_uncond = n_view = 0
    for r, s, c, v in zip(
        rows.tolist(), labels["shape"].tolist(), labels["color"].tolist(), labels["view"].tolist()
    ):
        text = table[r]
        if text == "":
            n_uncond += 1
            continue
        assert text.startswith(caption(SHAPES[s], COLOR_NAMES[c]))
        if "," in text:
            assert text.endswith(VIEW_WORDS[v])
            n_view += 1
    assert 1 <= n_uncond <= 16 and n_view >= 25
    # the pixels carry the labelled color (judged by hue) on a white background
    assert (judge_colors(images) == labels["color"]).float().mean().item() == 1.0
    torch.testing.assert_close(images[:, :, 0, 0], torch.ones(64, 3))


def test_judges_on_ground_truth_renders():
    refs = reference_silhouettes()
    cams = sample_hemisphere_cameras(
        4,
        elevation_range_deg=(-10, 55),
        azimuth_range_deg=(-45, 45),
        distance_range=(2.6, 3.4),
        fov_range_deg=(40, 40),
        width=32,
        height=32,
        generator=torch.Generator().manual_seed(5),
    )
    ok_shape = ok_color = n = 0
    for si, shape in enumerate(SHAPES):
        for ci, color in enumerate(COLORS):
            im = render_primitive(shape, color, cams)[0].permute(0, 3, 1, 2)
            ok_shape += int((judge_shapes(im, refs)[0] == si).sum())
            ok_color += int((judge_colors(im) == ci).sum())
            n += 4
    assert ok_color / n == 1.0
    assert ok_shape / n >= 0.95
    # an all-white image has no foreground
    assert judge_colors(torch.ones(1, 3, 32, 32)).item() == -1
