"""A tiny random video prior in the Stable Video Diffusion diffusers layout, for the avatar tests.

``VideoPrior.from_pretrained(folder)`` loads it as it loads the embedded one (``assets/embedded-video``,
written by ``priors.embedded.train_video.VideoTrainer.export``), so the tests run the real loading path
with a model small enough for seconds on a CPU (the diffusers idea of tiny dummy models).
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_VIDEO_ARGS = dict(
    block_out_channels=(32, 32), num_attention_heads=(1, 1), resolution=16, num_frames=4, embedding_dim=16,
    addition_time_embed_dim=8, encoder_hidden=16, encoder_layers=1,
)  # fmt: skip
"""The miniature's size (SVD's UNet normalises in 32 groups: 32 channels at least)."""


def write_tiny_video_prior(folder: str | Path, seed: int = 0) -> Path:
    """Writes a random tiny landmark-driven video prior to ``folder`` (created); returns it."""
    import torch
    from diffusers import __version__ as diffusers_version

    from priors.embedded.models import SchedulerConfig, build_scheduler
    from priors.video import SVD_ADDED_TIME_IDS, VideoModelConfig, build_video_components

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    parts = build_video_components(VideoModelConfig(**TINY_VIDEO_ARGS))
    parts["unet"].save_pretrained(folder / "unet", safe_serialization=True)
    parts["image_encoder"].save_pretrained(folder / "image_encoder", safe_serialization=True)
    parts["feature_extractor"].save_pretrained(folder / "feature_extractor")
    build_scheduler(SchedulerConfig()).save_config(folder / "scheduler")
    index = {
        "_class_name": "StableVideoDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "vae": [None, None],
        "_sds3d_added_time_ids": list(SVD_ADDED_TIME_IDS),
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder
