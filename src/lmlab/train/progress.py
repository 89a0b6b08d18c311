"""What a run shows while it trains: a progress bar or log lines, and text samples from the model."""

from __future__ import annotations

import sys

import torch

from lmlab.train import distributed as dist_utils
from lmlab.train.step import autocast_context

SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 50


class Progress:
    """tqdm bar (loss, lr, tokens/s; ETA from tqdm) when asked for, else a plain line per log interval."""

    def __init__(self, show_bar: bool, env: dist_utils.Environment, start: int, total: int):
        self.enabled = env.is_main
        self.bar = None
        if self.enabled and show_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.total = total

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, eta_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.enabled:
            print(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
                  f"eta {eta_s / 60:.1f} min", flush=True)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def sample_prompt(config, tokenizer, val_windows) -> list[int]:
    """The `--sample` prompt's ids, else the first tokens of the validation text."""
    if config.sample_prompt is not None:
        ids = tokenizer(config.sample_prompt)["input_ids"]
        if ids:
            return ids
    return val_windows.window(0)[: max(1, min(16, config.seq_len // 4))].tolist()


def sample_text(model, tokenizer, prompt_ids: list[int], config, device: torch.device) -> str:
    """A text sample from lmlab's generation engine (top-k 50, temperature 0.8, stopping at end-of-sequence) with
    its own seeded generator, so sampling never changes the training run's random stream."""
    from lmlab.generation import Generator, SamplingOptions

    model = dist_utils.unwrap(model)
    limit = model.config.max_position_embeddings
    new_tokens = config.sample_tokens if limit is None else min(config.sample_tokens, limit - len(prompt_ids))
    options = SamplingOptions(max_new_tokens=max(new_tokens, 1), temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K,
                              seed=config.seed)
    with autocast_context(config.precision, device):
        completion = Generator(model, tokenizer).generate_ids([prompt_ids], options)[0]
    return tokenizer.decode(prompt_ids, skip_special_tokens=True) + completion.text


__all__ = ["Progress", "sample_prompt", "sample_text"]
