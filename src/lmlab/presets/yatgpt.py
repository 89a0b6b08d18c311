"""yatgpt: the nanochat GPT (as trained by flaxchat) with a YatNMN-Softplus MLP. Spec: shared/specs/yatgpt.md.

Parameterless RMSNorm after the embedding, before each sublayer and before the tied head; RoPE θ = 1e5 rotating
by −φ, then QK-norm × 1.2; sliding windows "SSSL" (short = ⌈⌈T/4⌉/128⌉·128, last layer long); value embeddings on
alternating layers ending with the last; per-layer resid/x0 lambdas; smear; backout; logit soft-cap 15; no biases.

The MLP is one config choice, so the card's ablations are one flag each:
`mlp` = yatnmn_softplus (the published model) | yatnmn (plain) | gelu_new (tanh GELU, JAX's default, as the card's
GELU runs) | relu2, plus
`yatnmn_scalar_bias=True` (the "-sb" runs) and `yatnmn_constant_alpha=1.0` (the "-ca" runs).

Depth family `yatgpt-d{N}` (nanochat's rule, scripts/base_train.py `build_model_meta`): width = depth × aspect
ratio 64, rounded up to a multiple of the head dim, heads = width / head dim. nanochat's own default head dim is
128 (its d12 has 6 heads); the yatgpt runs used head dim 64, so the rule gives width 64·N with N heads of 64 — at
N = 12 exactly the published 768 wide, 12 heads. MLP 4·width, vocabulary 32768, sequence 1024 at every depth.
"""

from __future__ import annotations

import re

from lmlab.presets.base import Preset, register_preset, register_preset_family
from lmlab.registry import UnknownNameError

ASPECT_RATIO = 64
HEAD_DIM = 64
SEQ_LEN = 1024
DEPTHS = range(1, 97)  # the depths yatgpt-d{N} accepts
LISTED_DEPTHS = (6, 12, 20)  # shown by `lmlab info --list`; every depth in DEPTHS resolves by name

YATGPT_COMPONENTS = dict(
    mixer="attention", mlp="yatnmn_softplus", norm="rmsnorm_parameterless", block="prenorm", position="rope",
    norm_eps=1e-6, rope_theta=100000.0, rope_sign=-1, qk_norm="rmsnorm_parameterless", qk_norm_scale=1.2,
    window_pattern="SSSL", window_long=SEQ_LEN, value_embed_layers="alternate", embedding_norm=True, smear=True,
    residual_lambdas=True, backout=True, logit_softcap=15.0, tie_word_embeddings=True, attention_bias=False,
    mlp_bias=False, init="flaxchat", vocab_size=32768, bos_token_id=1, eos_token_id=2,
)

# The optax recipe of flaxchat's scripts/train_gpt2.py with the YatNMN card's values. 32 sequences × 8 accumulation
# steps = the published 256 × 1024 tokens per step (8 TPU cores × 32). Training length: 20 tokens per parameter,
# value-embedding tables included (19,922 steps for yatgpt-d12).
YATGPT_RECIPE = dict(
    tokenizer="mistral-v1", seq_len=SEQ_LEN, batch_size=32, grad_accum=8, precision="auto",
    optimizer=dict(name="adamw", lr=0.03, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                   no_decay="none"),  # optax decays every parameter: embeddings, norms, scalars included
    schedule=dict(name="cosine", warmup_steps=500, min_lr=0.0015),  # linear warmup, cosine to 5% of the peak
    grad_clip=1.0, chinchilla=1.0,
    source="yatnmn-softplus-d12 card (C4 en, 5.22B tokens, peak lr 0.03) and flaxchat scripts/train_gpt2.py "
           "(AdamW, decay on every parameter, clip 1.0, warmup 500, cosine to 5%); the GELU baseline used peak "
           "lr 0.01; other depths reuse the d12 recipe unchanged (none was published)",
)


def yatgpt_sizes(depth: int) -> dict:
    """Sizes of yatgpt-d{depth} by nanochat's depth-to-width rule (see the module docstring)."""
    width = -(-depth * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    return dict(num_hidden_layers=depth, hidden_size=width, num_attention_heads=width // HEAD_DIM,
                intermediate_size=4 * width)


def yatgpt_depth_preset(depth: int) -> Preset:
    sizes = yatgpt_sizes(depth)
    published = " (the published model, 261,133,226 parameters)" if depth == 12 else ""
    return Preset(
        name=f"yatgpt-d{depth}", family="yatgpt",
        description=f"nanochat GPT + YatNMN-Softplus MLP, depth {depth}: d {sizes['hidden_size']}, "
                    f"{sizes['num_attention_heads']} heads of 64, SSSL windows{published}",
        config=dict(YATGPT_COMPONENTS, **sizes), recipe=YATGPT_RECIPE)


@register_preset_family
def resolve_yatgpt_depth(name: str) -> Preset | None:
    """`yatgpt-d{N}` for any depth N in DEPTHS."""
    match = re.fullmatch(r"yatgpt-d(\d+)", name)
    if match is None:
        return None
    depth = int(match.group(1))
    if depth not in DEPTHS:
        raise UnknownNameError(f"preset {name!r}: yatgpt depth must be between {DEPTHS.start} and {DEPTHS.stop - 1}, "
                               f"got {depth}")
    return yatgpt_depth_preset(depth)


for _depth in LISTED_DEPTHS:
    register_preset(yatgpt_depth_preset(_depth))

register_preset(Preset(
    name="yatgpt-tiny", family="yatgpt",
    description="yatgpt components at CPU-test size: 4 layers (S S S L), d 64, 4 heads, windows 16 / 64",
    config=dict(YATGPT_COMPONENTS, hidden_size=64, num_attention_heads=4, intermediate_size=256, num_hidden_layers=4,
                window_long=64, window_short=16),
    recipe=dict(YATGPT_RECIPE, seq_len=64, batch_size=12, grad_accum=1,
                optimizer=dict(name="muon", lr=8e-3, weight_decay=0.01, no_decay="none"),
                schedule=dict(name="cosine", warmup_steps=100, min_lr_ratio=0.1), chinchilla=None,
                source="lmlab tiny variant: recipe tuned on tiny Shakespeare at nanoGPT's CPU budget"),
))
