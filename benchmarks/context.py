"""How a trained byte-level model uses its context, on the held-out 10% of Tiny Shakespeare (benchmarks/learning.py's
split): the evidence behind docs/recipes.md's N4 section.

- val_by_block: nanoGPT's loss (mean over every position of every block, stride = block) for blocks of 8 … 256
  characters. A model that uses its context gains from longer blocks; one that does not stays flat or gets worse.
- loss_at_position: the mean loss of the j-th character of a block (context j − 1), blocks of 64 and 128.
- per attention layer, on 64 spread windows of 128 characters: the attention entropy at query position j (mean over
  heads) against log j, the entropy of uniform attention over the j visible keys; the most attention any head puts
  on the previous character; and for N4's selective-copy layers the cosine of neighbouring mean keys K'_j, K'_{j−1}
  (near 1: every query sees nearly the same key, so attention cannot tell positions apart).

    PYTHONPATH=src python benchmarks/context.py RUN_OR_MODEL [RUN_OR_MODEL ...]     # one JSON line per model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math

import numpy as np
import torch
from learning import corpus_bytes, heldout, loss_by_position

import lmlab.nn.attention
import lmlab.nn.selective_copy
from lmlab.generation.loading import load_model
from lmlab.hardware import set_threads
from lmlab.nn.attention import visibility_mask

BLOCKS = (8, 16, 32, 64, 128, 256)
POSITIONS = (1, 2, 3, 4, 5, 8, 16, 32, 48, 64, 96, 128)
PROBE_POSITIONS = (4, 8, 16, 32, 64, 128)
PROBE_WINDOWS, PROBE_LENGTH = 64, 128


@contextlib.contextmanager
def recorded_attention(calls: list):
    """Record (softmax probabilities (B, H, T, S), keys) of every causal_attention call made by the attention and
    selective-copy mixers; their outputs are unchanged."""
    original = lmlab.nn.attention.causal_attention

    def recording(q, k, v, *, scale, q_start, k_start=0, key_padding=None, window=None, **kwargs):
        keys = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1).float()
        scores = q.float() @ keys.transpose(-1, -2) * scale
        visible = visibility_mask(q.shape[2], k.shape[2], q_start, k_start, key_padding, window, q.device)
        calls.append((torch.softmax(scores.masked_fill(~visible, float("-inf")), -1), keys))
        return original(q, k, v, scale=scale, q_start=q_start, k_start=k_start, key_padding=key_padding,
                        window=window, **kwargs)

    modules = (lmlab.nn.attention, lmlab.nn.selective_copy)
    for module in modules:
        module.causal_attention = recording
    try:
        yield
    finally:
        for module in modules:
            module.causal_attention = original


def layer_statistics(probs: torch.Tensor, keys: torch.Tensor, selective_copy: bool) -> dict:
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean(0)  # (H, T)
    previous = torch.diagonal(probs, offset=-1, dim1=-2, dim2=-1).mean(0)  # (H, T − 1): weight on key j − 1
    stats = {"entropy": {j: round(float(entropy[:, j - 1].mean()), 3) for j in PROBE_POSITIONS},
             "uniform_entropy": {j: round(math.log(j), 3) for j in PROBE_POSITIONS},
             "previous_char_weight_max_head": {j: round(float(previous[:, j - 2].max()), 3) for j in PROBE_POSITIONS}}
    if selective_copy:
        unit = torch.nn.functional.normalize(keys, dim=-1)
        cosine = (unit[:, :, 1:] * unit[:, :, :-1]).sum(-1).mean((0, 1))  # (T − 1,)
        stats["cos_neighbouring_keys"] = {j: round(float(cosine[j - 2]), 3) for j in PROBE_POSITIONS}
    return stats


@torch.no_grad()
def analyse(model, tokens: np.ndarray) -> dict:
    result = {"val_by_block": {b: round(float(loss_by_position(model, tokens, b).mean()), 4) for b in BLOCKS}}
    for block in (64, 128):
        per_position = loss_by_position(model, tokens, block)
        result[f"loss_at_position_block{block}"] = {j: round(float(per_position[j - 1]), 3) for j in POSITIONS
                                                     if j <= block}
    starts = np.linspace(0, len(tokens) - PROBE_LENGTH, PROBE_WINDOWS).astype(int)
    windows = torch.from_numpy(np.stack([tokens[s: s + PROBE_LENGTH] for s in starts]))
    calls: list = []
    with recorded_attention(calls):
        model(input_ids=windows)
    mixers = [layer.mixer for layer in model.model.layers]
    attending = [m for m in mixers if isinstance(m, (lmlab.nn.attention.SoftmaxAttention,
                                                      lmlab.nn.selective_copy.SelectiveCopyAttention))]
    result["layers"] = [
        {"layer": mixers.index(mixer), "mixer": type(mixer).__name__,
         **layer_statistics(probs, keys, isinstance(mixer, lmlab.nn.selective_copy.SelectiveCopyAttention))}
        for mixer, (probs, keys) in zip(attending, calls, strict=True)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories or training runs (their newest checkpoint)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    tokens = heldout(corpus_bytes(None))
    for path in args.models:
        model, _, _ = load_model(path)
        print(json.dumps({"model": path, **analyse(model.float().eval(), tokens)}), flush=True)


if __name__ == "__main__":
    main()
