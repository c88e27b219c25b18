"""Reference-image preparation for image-to-3D: masks from alpha / background / a file, recentring, depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from recon.data.reference import (
    ReferenceConfig,
    depth_correlation_loss,
    estimate_depth,
    load_reference,
)
from recon.errors import UserError


def _disk_picture(h=120, w=160, cy=50, cx=70, r=22, color=(0.9, 0.2, 0.1), background=(0.55, 0.6, 0.65)):
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    rgb = np.where(inside[..., None], np.array(color), np.array(background)).astype(np.float32)
    return rgb, inside


def _save(path, arr):
    Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def _expected_box(mask: torch.Tensor) -> float:
    rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
    return float(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def test_rgba_keeps_alpha_and_recentres(tmp_path):
    rgb, inside = _disk_picture()
    rgba = np.concatenate([rgb, inside[..., None].astype(np.float32)], -1)
    ref = load_reference(_save(tmp_path / "a.png", rgba), ReferenceConfig(size=64))
    assert ref.source == "alpha"
    assert ref.rgb.shape == (64, 64, 3) and ref.mask.shape == (64, 64)
    # The object's long side fills 0.9 of the frame, centred.
    assert abs(_expected_box(ref.mask) - 0.9 * 64) <= 2.0
    rows, cols = torch.nonzero(ref.mask > 0.5, as_tuple=True)
    assert abs(rows.float().mean() - 31.5) < 1.5 and abs(cols.float().mean() - 31.5) < 1.5
    # Composited on white outside, the object's color inside.
    assert ref.rgb[0, 0].min() > 0.99
    assert torch.allclose(ref.rgb[32, 32], torch.tensor([0.9, 0.2, 0.1]), atol=0.01)


def test_background_segmentation_matches_alpha(tmp_path):
    rgb, inside = _disk_picture()
    rgba = np.concatenate([rgb, inside[..., None].astype(np.float32)], -1)
    from_alpha = load_reference(_save(tmp_path / "a.png", rgba), ReferenceConfig(size=64))
    from_rgb = load_reference(_save(tmp_path / "b.png", rgb), ReferenceConfig(size=64))
    assert from_rgb.source == "background"
    a, b = from_alpha.mask > 0.5, from_rgb.mask > 0.5
    iou = (a & b).sum() / (a | b).sum()
    assert iou > 0.97
    # The plain gray background becomes white.
    assert from_rgb.rgb[0, 0].min() > 0.99


def test_mask_file_overrides(tmp_path):
    rgb, inside = _disk_picture()
    square = np.zeros(inside.shape, dtype=np.float32)
    square[20:60, 100:140] = 1.0  # not the disk: the file wins
    ref = load_reference(
        _save(tmp_path / "b.png", rgb), ReferenceConfig(size=64), mask=_save(tmp_path / "m.png", square)
    )
    assert ref.source == "mask-file"
    # A square stays a square (box filled).
    filled = (ref.mask > 0.5).float().sum() / _expected_box(ref.mask) ** 2
    assert filled > 0.95
    # The colour under the mask is the background gray (the mask file chose that region).
    assert torch.allclose(ref.rgb[32, 32], torch.tensor([0.55, 0.6, 0.65]), atol=0.02)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "does not exist"),
        ("not-image", "not an image"),
        ("busy", "not plain"),
        ("empty-mask", "empty"),
        ("every-border", "all four borders"),
        ("mask-size", "give a mask of the image's size"),
    ],
)
def test_bad_input_one_clear_error(tmp_path, case, needle):
    rgb, inside = _disk_picture()
    path, mask = tmp_path / "img.png", None
    if case == "missing":
        path = tmp_path / "nope.png"
    elif case == "not-image":
        path = tmp_path / "img.png"
        path.write_text("this is not a picture")
    elif case == "busy":
        _save(path, np.random.default_rng(0).random(rgb.shape))
    elif case == "empty-mask":
        _save(path, rgb)
        mask = _save(tmp_path / "m.png", np.zeros(inside.shape))
    elif case == "every-border":
        big = np.full(rgb.shape, 0.55, dtype=np.float32)
        big[:, :] = (0.55, 0.6, 0.65)
        yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
        cross = (np.abs(yy - 60) < 10) | (np.abs(xx - 80) < 10)  # touches all four borders
        rgba = np.concatenate([big, cross[..., None].astype(np.float32)], -1)
        _save(path, rgba)
    elif case == "mask-size":
        _save(path, rgb)
        mask = _save(tmp_path / "m.png", np.ones((10, 10)))
    with pytest.raises(UserError) as err:
        load_reference(path, ReferenceConfig(size=32), mask=mask)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def _tiny_depth_model(folder):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    torch.manual_seed(0)
    cfg = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    DPTForDepthEstimation(cfg).save_pretrained(folder)
    DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder


def test_depth_through_a_tiny_transformers_model(tmp_path):
    rgb, inside = _disk_picture()
    ref = load_reference(_save(tmp_path / "b.png", rgb), ReferenceConfig(size=48))
    depth = estimate_depth(ref, str(_tiny_depth_model(tmp_path / "dpt")))
    assert depth.shape == (48, 48)
    inside = ref.mask > 0.5
    assert float(depth[~inside].abs().max()) == 0.0
    assert abs(float(depth[inside].min())) < 1e-6 and abs(float(depth[inside].max()) - 1.0) < 1e-6
    with pytest.raises(UserError, match="not a local folder"):
        estimate_depth(ref, "someone/depth-model")


def test_depth_correlation_loss_is_scale_and_shift_free():
    torch.manual_seed(0)
    ref = torch.rand(16, 16)
    mask = torch.rand(16, 16) > 0.3
    assert float(depth_correlation_loss(3.0 * ref + 2.0, ref, mask)) == pytest.approx(0.0, abs=1e-5)
    assert float(depth_correlation_loss(-ref, ref, mask)) == pytest.approx(2.0, abs=1e-5)
    pred = torch.rand(16, 16, requires_grad=True)
    depth_correlation_loss(pred, ref, mask).backward()
    assert pred.grad[~mask].abs().max() == 0 and pred.grad[mask].abs().max() > 0
