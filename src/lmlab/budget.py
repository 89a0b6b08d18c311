"""Training budgets: tokens and optimizer steps.

Chinchilla (Hoffmann et al. 2022): about 20 training tokens per parameter. A budget in tokens becomes a step count
⌊tokens / (batch × sequence)⌋ — with the yatgpt card's count N = 261,133,226 and 256 × 1024 tokens per step this is
⌊20·N / 262,144⌋ = 19,922 steps, the card's number.
"""

from __future__ import annotations


def chinchilla_tokens(num_parameters: int, tokens_per_parameter: float = 20.0) -> int:
    """Training tokens for a Chinchilla-style budget: tokens_per_parameter × N (rounded down)."""
    if num_parameters <= 0 or tokens_per_parameter <= 0:
        raise ValueError("the parameter count and tokens per parameter must be positive")
    return int(tokens_per_parameter * num_parameters)


def steps_for_tokens(tokens: int, batch_size: int, seq_len: int) -> int:
    """Whole optimizer steps that fit in `tokens` at batch_size × seq_len tokens per step."""
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    steps = tokens // (batch_size * seq_len)
    if steps < 1:
        raise ValueError(f"a budget of {tokens:,} tokens is less than one step of {batch_size} × {seq_len} tokens")
    return steps
