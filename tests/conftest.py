"""Shared test helpers: tiny configs and the location of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab import LMLabForCausalLM, preset_config

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


def tiny_model(preset: str, seed: int = 0, **overrides) -> LMLabForCausalLM:
    """A preset's tiny model with a small vocabulary, fp32, in eval mode, dropout off."""
    torch.manual_seed(seed)
    defaults = dict(vocab_size=TINY_VOCAB, embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LMLabForCausalLM(preset_config(preset, **{**defaults, **overrides})).eval()


def randomise_parameters(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Give every parameter random values (fresh inits hide bugs: zero gates, unit norms, identity scalars)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            spread = max(float(p.std()) if p.numel() > 1 else 0.0, 0.1)
            p.add_(torch.randn(p.shape, generator=generator) * scale * spread)


__all__ = ["REPO", "SHARED_DATA", "TINY_VOCAB", "lmlab", "randomise_parameters", "save_model_dir", "shared_data",
           "tiny_model"]


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
