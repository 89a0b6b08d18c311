"""Training budgets: tokens and optimizer steps.

Chinchilla (Hoffmann et al. 2022): about 20 training tokens per parameter. A budget in tokens becomes a step count
⌊tokens / (batch × sequence)⌋ — with the yatgpt card's count N = 261,133,226 and 256 × 1024 tokens per step this is
⌊20·N / 262,144⌋ = 19,922 steps, the card's number.
"""

from __future__ import annotations

CHINCHILLA_TOKENS_PER_PARAMETER = 20.0


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


def resolve_steps(config, parameters: int, log) -> int:
    """A run's budget in optimizer steps (TrainConfig: steps, else tokens, else a Chinchilla multiple, default 1×)."""
    if config.steps is not None:
        return config.steps
    if config.tokens is not None:
        tokens = config.tokens
        source = f"{tokens:,} tokens"
    else:
        multiple = 1.0 if config.chinchilla is None else config.chinchilla
        tokens = chinchilla_tokens(parameters, CHINCHILLA_TOKENS_PER_PARAMETER * multiple)
        source = (f"Chinchilla {multiple:g}× ({CHINCHILLA_TOKENS_PER_PARAMETER:g} tokens per parameter × "
                  f"{parameters:,} parameters = {tokens:,})")
    steps = steps_for_tokens(tokens, config.batch_size * config.grad_accum * config.world_size, config.seq_len)
    log(f"budget: {source} → {steps:,} steps of {config.tokens_per_step:,} tokens")
    return steps
