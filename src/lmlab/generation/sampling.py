"""Choosing the next token from the model's last logits.

Per row, in this order (the order of vLLM and of transformers' logits processors):

1. repetition penalty ρ (CTRL, Keskar et al. 2019): for every token already in the row (prompt or generated),
   z ← z / ρ if z > 0 else z · ρ;
2. temperature T: z ← z / T; T = 0 means greedy (argmax after step 1, steps 3–6 skipped);
3. top-k: drop every token whose logit is strictly below the k-th largest (ties at the threshold stay);
4. top-p (nucleus): with probabilities sorted in decreasing order, keep a token iff the mass of the tokens before it
   is < p — the smallest prefix whose mass reaches p; the most likely token always stays; p ≥ 1 disables it;
5. min-p: keep a token iff its probability ≥ min_p · (probability of the most likely token);
6. sample from softmax of what is left (fp32), with a `torch.Generator` seeded per call.

A dropped token gets logit −inf. The filters are plain functions so each can be tested against its definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingOptions:
    """How to generate. `temperature = 0` is greedy decoding; 0 / 1.0 disable top_k / top_p / min_p / the penalty.

    stop: strings that end a row (the text is cut before the first occurrence; the stop string is not returned).
    stop_token_ids: tokens that end a row (not returned); None = the model's and tokenizer's end-of-sequence ids.
    seed: seeds the sampler's own generator (None = drawn from torch's global generator, so `torch.manual_seed`
    also reproduces a run).
    """

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None

    def __post_init__(self):
        checks = [
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (self.top_p > 0, f"top_p must be > 0 (1 = off), got {self.top_p}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1] (0 = off), got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0 (1 = off), got "
                                          f"{self.repetition_penalty}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty on the tokens marked in `seen` (B, V) bool: positive logits divided by ρ, others multiplied."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the logits ≥ the k-th largest per row (ties at the threshold survive); k = 0 or k ≥ V keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the most likely tokens until their probability mass reaches p (p ≥ 1 keeps all)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the tokens whose probability is at least min_p times the top token's (min_p = 0 keeps all)."""
    if min_p <= 0.0:
        return logits
    # p_i ≥ min_p · p_max  ⇔  z_i ≥ z_max + log(min_p)  (the softmax normaliser cancels)
    threshold = logits.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(min_p, dtype=logits.dtype))
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_logits(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Steps 2–5 of the module docstring on fp32 logits (B, V) (not for greedy options)."""
    if options.temperature != 1.0:
        logits = logits / options.temperature
    logits = top_k_filter(logits, options.top_k)
    logits = top_p_filter(logits, options.top_p)
    return min_p_filter(logits, options.min_p)


class Sampler:
    """Next-token choice for a batch, with the per-row state the options need (seen tokens, random generator)."""

    def __init__(self, options: SamplingOptions, vocab_size: int, prompts: list[list[int]], device):
        self.options = options
        self.seen = None
        if options.repetition_penalty != 1.0:
            self.seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
            for row, prompt in enumerate(prompts):
                self.seen[row, torch.tensor(prompt, dtype=torch.long, device=device)] = True
        self.generator = None
        if not options.greedy:
            seed = options.seed if options.seed is not None else int(torch.randint(0, 2**62, ()).item())
            self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next tokens (B,) from logits (B, V)."""
        logits = logits.float()
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, self.options.repetition_penalty)
        if self.options.greedy:
            tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(filter_logits(logits, self.options), dim=-1)
            tokens = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        if self.seen is not None:
            self.seen[torch.arange(len(tokens), device=tokens.device), tokens] = True
        return tokens

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop the state of finished rows (`rows` are the indices that go on)."""
        if self.seen is not None:
            self.seen = self.seen[rows]


__all__ = ["Sampler", "SamplingOptions", "apply_repetition_penalty", "filter_logits", "min_p_filter",
           "top_k_filter", "top_p_filter"]
