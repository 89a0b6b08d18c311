"""Language-modelling losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits[:, :-1] against labels[:, 1:], labels of −100 ignored, fp32.

    Callers pass labels = input_ids (padding set to −100); the shift happens here, never in the data pipeline.
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def mask_ignored_targets(labels: torch.Tensor, token_id: int | None) -> torch.Tensor:
    """`labels` with every `token_id` set to −100, so the loss never scores that token as a target (NYX never
    scores byte 0); unchanged when token_id is None."""
    if token_id is None:
        return labels
    return labels.masked_fill(labels == token_id, IGNORE_INDEX)
