"""Log-likelihood of token spans, batched: the one primitive behind perplexity and every lm-eval request.

A span is (tokens, n): the model reads tokens[:-1] and is scored on the last n tokens,

    log p = Σ_{j = len − n}^{len − 1} log softmax(logits_{j − 1})[tokens_j],   greedy = every tokens_j is the argmax.

Spans that give the model the same input share a row; rows are sorted by length and batched with left padding
(the attention mask hides the padding and positions count real tokens), so every row ends at the last column and
only the last max(n) positions need logits. Logits and the log-softmax are fp32.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from lmlab.generation.engine import eval_mode

DEFAULT_CONTEXT = 2048  # for models without a position limit (NoPE): a window they can still run
LOGIT_BUDGET = 2**25  # fp32 logits per batch (128 MiB; the log-softmax takes as much again)
TOKEN_BUDGET = 2**14  # input tokens per batch


def trained_length(config) -> int | None:
    """The sequence length the model was trained at, when `lmlab train` saved it (train_config.json in the model
    directory it was loaded from)."""
    from lmlab.run_layout import TRAIN_CONFIG

    saved = Path(getattr(config, "_name_or_path", None) or "") / TRAIN_CONFIG
    if not saved.is_file():
        return None
    return json.loads(saved.read_text()).get("seq_len")


def context_length(config, override: int | None = None) -> int:
    """The window an evaluation gives the model: `override`, else the length it was trained at (recorded by
    `lmlab train`), else its position limit, else 2048 tokens."""
    return int(override or trained_length(config) or config.max_position_embeddings or DEFAULT_CONTEXT)


def strided_windows(num_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (start, first_target, end) over tokens x[0 .. num_tokens) that score every x[1:] exactly once.

    The model reads x[start : end − 1] (at most `context` tokens) and is scored on x[first_target : end]. The first
    window scores as many tokens as one context holds; each later one scores the next `stride` tokens, so every
    scored token sees at least context − stride tokens before it (all of them near the start). stride = context
    gives disjoint windows (lm-eval's rolling log-likelihood); smaller strides give more context per token at
    context / stride times the compute (HF's WikiText-2 perplexity recipe).
    """
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    windows = []
    first, end = 1, min(context + 1, num_tokens)
    while first < num_tokens:
        windows.append((max(0, end - 1 - context), first, end))
        first, end = end, min(end + stride, num_tokens)
    return windows


def _batches(inputs: list[tuple[int, ...]], needed: list[int], vocab_size: int,
             max_batch: int) -> Iterator[list[int]]:
    """Groups of input rows (longest first) within the token and logit budgets."""
    batch: list[int] = []
    for i in sorted(range(len(inputs)), key=lambda i: -len(inputs[i])):
        candidate = batch + [i]
        width = max(len(inputs[j]) for j in candidate)
        keep = max(needed[j] for j in candidate)
        fits = (len(candidate) * width <= TOKEN_BUDGET and len(candidate) * keep * vocab_size <= LOGIT_BUDGET
                and len(candidate) <= max_batch)
        if batch and not fits:
            yield batch
            batch = [i]
        else:
            batch = candidate
    if batch:
        yield batch


def score_spans(model, spans: list[tuple[list[int], int]], max_batch: int = 32) -> list[tuple[float, bool]]:
    """(log-likelihood, greedy) of each span (see the module docstring), in the order given.

    Spans that give the model the same input (e.g. the choices of a multiple-choice question answered by one
    letter) share one forward row.
    """
    rows: dict[tuple[int, ...], int] = {}
    row_of = []
    for tokens, n in spans:
        if not 0 < n < len(tokens):
            raise ValueError(f"a span of {len(tokens)} tokens cannot score its last {n}: the model needs at least "
                             "one token before the first scored one")
        row_of.append(rows.setdefault(tuple(tokens[:-1]), len(rows)))
    inputs = list(rows)
    needed = [0] * len(inputs)
    spans_of_row: list[list[int]] = [[] for _ in inputs]
    for i, ((_, n), row) in enumerate(zip(spans, row_of, strict=True)):
        needed[row] = max(needed[row], n)
        spans_of_row[row].append(i)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(spans)
    device = model.device
    with eval_mode(model), torch.inference_mode():
        for batch in _batches(inputs, needed, model.config.vocab_size, max_batch):
            width = max(len(inputs[r]) for r in batch)
            keep = max(needed[r] for r in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for b, r in enumerate(batch):
                ids[b, width - len(inputs[r]):] = torch.tensor(inputs[r])
                mask[b, width - len(inputs[r]):] = 1
            padded = not bool(mask.all())
            logits = model(ids.to(device), attention_mask=mask.to(device) if padded else None, use_cache=False,
                           logits_to_keep=keep).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for b, r in enumerate(batch):
                for i in spans_of_row[r]:
                    tokens, n = spans[i]
                    targets = torch.tensor(tokens[-n:], device=device)
                    scored = logprobs[b, keep - n:]
                    picked = scored.gather(-1, targets[:, None]).squeeze(-1)
                    results[i] = (float(picked.double().sum()), bool((scored.argmax(-1) == targets).all()))
    return results


__all__ = ["context_length", "score_spans", "strided_windows"]
