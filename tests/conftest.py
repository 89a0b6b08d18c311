"""Shared test helpers: tiny configs and the location of ../shared/data."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab import LMLabConfig, LMLabForCausalLM, preset_config
from lmlab.nn.context import ForwardContext

# Tiny test models gain nothing from intra-op threads, and on a busy 2-core machine every small op then waits for a
# descheduled OpenMP thread (milliseconds each): one thread per test process (xdist runs two) is many times faster.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# LMLAB_SHARED_DATA points elsewhere (e.g. from a git worktree, whose parent holds no shared/ folder)
SHARED_DATA = Path(os.environ.get("LMLAB_SHARED_DATA") or REPO.parent / "shared" / "data")

TINY_VOCAB = 101


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def tiny_config(preset: str, **overrides) -> LMLabConfig:
    """A preset's config with a small vocabulary, dropout off and no special tokens."""
    defaults = dict(vocab_size=TINY_VOCAB, embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return preset_config(preset, **{**defaults, **overrides})


def tiny_model(preset: str, seed: int = 0, **overrides) -> LMLabForCausalLM:
    """A preset's tiny model (`tiny_config`), fp32, in eval mode."""
    torch.manual_seed(seed)
    return LMLabForCausalLM(tiny_config(preset, **overrides)).eval()


def forward_context(length: int, batch: int = 1, past: int = 0, cache=None, key_padding=None, position=None,
                    input_ids=None) -> ForwardContext:
    """The context for calling one block or mixer directly: positions past .. past + length − 1 in each of `batch`
    rows, rotated by `position` (a position-encoding module) when given."""
    positions = torch.arange(past, past + length)[None].expand(batch, -1)
    return ForwardContext(position_ids=positions, rotation=None if position is None else position(positions),
                          key_padding_mask=key_padding, cache=cache, past_length=past, input_ids=input_ids)


def rotate_pairs(x: torch.Tensor, position: float, theta: float, rotary_dim: int) -> torch.Tensor:
    """RoPE on one head vector written pair by pair: channels (i, i + r/2) of the first r turn by the angle
    position·θ^(−2i/r); the rest pass unchanged."""
    out = x.clone()
    half = rotary_dim // 2
    for i in range(half):
        angle = position * theta ** (-2 * i / rotary_dim)
        a, b = x[i], x[i + half]
        out[i] = a * math.cos(angle) - b * math.sin(angle)
        out[i + half] = b * math.cos(angle) + a * math.sin(angle)
    return out


def randomise_parameters(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Give every parameter random values (fresh inits hide bugs: zero gates, unit norms, identity scalars)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            spread = max(float(p.std()) if p.numel() > 1 else 0.0, 0.1)
            p.add_(torch.randn(p.shape, generator=generator) * scale * spread)


__all__ = ["LOGIT_TOLERANCE", "REPO", "SHARED_DATA", "TINY_VOCAB", "ForcedTokens", "assert_decisive",
           "assert_logits_close", "engine_logits", "forward_context", "full_forward_logits", "hf_generate_logits",
           "lmlab", "randomise_parameters", "random_path", "rotate_pairs", "save_model_dir", "shared_data",
           "tiny_config", "tiny_model"]


# ---- model directories for the commands that load a saved model (generate, eval)

def save_model_dir(path: Path, preset: str, tokenizer=None, seed: int = 0, **overrides) -> Path:
    """Save a randomised tiny model of `preset` and a tokenizer (default: lmlab's `bytes`) as a model directory."""
    from lmlab.data.tokenizers import bytes_tokenizer

    tokenizer = tokenizer or bytes_tokenizer()
    model = tiny_model(preset, seed=seed, **{"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
                                            **overrides})
    randomise_parameters(model, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---- decoding along a fixed token path: compare logits, never greedy token sequences
# (a near-tie can flip a greedy choice when kernels differ between CPUs, e.g. AVX2 vs AVX-512/AMX)

LOGIT_TOLERANCE = 1e-4  # max |Δ logit| between two fp32 computations of the same logits (cached vs recomputed, ...)


class ForcedTokens:
    """A sampler for lmlab's engine (`BatchDecoder(..., sampler=...)`) that emits `path[row][step]` and records each
    step's logits, so two decodings of the same tokens can be compared logit by logit."""

    def __init__(self, path: list[list[int]]):
        self.path = torch.tensor(path)
        self.rows = torch.arange(len(path))
        self.logits: list[torch.Tensor] = []  # per step: (rows still decoding, V)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.logits.append(logits.float().clone())
        return self.path[self.rows, len(self.logits) - 1].to(logits.device)

    def keep_rows(self, index: torch.Tensor) -> None:
        self.rows = self.rows[index.cpu()]


def engine_logits(model, prompts: list[list[int]], path: list[list[int]], **decoder_options) -> list[torch.Tensor]:
    """Per step, the logits (B, V) lmlab's engine computes while it is fed `path` after `prompts`."""
    from lmlab.generation.engine import BatchDecoder
    from lmlab.generation.sampling import SamplingOptions

    forced = ForcedTokens(path)
    options = SamplingOptions(max_new_tokens=len(path[0]), temperature=0.0, stop_token_ids=())
    for _ in BatchDecoder(model, prompts, options, sampler=forced, **decoder_options).steps():
        pass
    return forced.logits


def full_forward_logits(model, prompts: list[list[int]], path: list[list[int]]) -> list[torch.Tensor]:
    """The reference for `engine_logits`: per step, each row's logits from one uncached forward over its own
    unpadded prompt + path."""
    rows = []
    with torch.no_grad():
        for prompt, tokens in zip(prompts, path, strict=True):
            ids = torch.tensor([prompt + tokens[:-1]])
            rows.append(model(ids, use_cache=False).logits[0, len(prompt) - 1:].float())
    return [torch.stack([row[step] for row in rows]) for step in range(len(path[0]))]


def assert_logits_close(actual: list[torch.Tensor], expected: list[torch.Tensor],
                        tolerance: float = LOGIT_TOLERANCE) -> None:
    assert len(actual) == len(expected)
    for step, (a, b) in enumerate(zip(actual, expected, strict=True)):
        worst = (a - b).abs().max().item()
        assert worst <= tolerance, f"step {step}: max |Δ logit| = {worst:.3g} > {tolerance}"


def random_path(rows: int, length: int, vocab: int = TINY_VOCAB, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (rows, length), generator=generator).tolist()


def assert_decisive(logits: torch.Tensor, margin: float = 1e-3) -> None:
    """Greedy choices from these logits (…, V) cannot flip between CPUs: the top two differ by more than `margin`
    (kernel differences move fp32 logits by ~1e-6)."""
    top = logits.float().topk(2, dim=-1).values
    gap = (top[..., 0] - top[..., 1]).min().item()
    assert gap > margin, f"a greedy choice is a near-tie (top-2 gap {gap:.2g}); choose another seed for this test"


def hf_generate_logits(model, prompts: list[list[int]], path: list[list[int]], **generate_options
                       ) -> list[torch.Tensor]:
    """Per step, the raw logits (B, V) transformers' `model.generate()` computes while a logits processor forces
    `path` after the (left-padded) prompts."""
    from transformers import LogitsProcessor, LogitsProcessorList

    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    forced = torch.tensor(path)

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            chosen = forced[:, input_ids.shape[1] - width].to(scores.device)
            return torch.full_like(scores, float("-inf")).scatter(1, chosen[:, None], 0.0)

    out = model.generate(ids, attention_mask=mask, max_new_tokens=len(path[0]), do_sample=False, pad_token_id=0,
                         logits_processor=LogitsProcessorList([Force()]), output_logits=True,
                         return_dict_in_generate=True, **generate_options)
    assert out.sequences[:, width:].tolist() == path
    return [step.float() for step in out.logits]
