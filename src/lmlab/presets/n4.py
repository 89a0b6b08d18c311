"""N4 (Nova-Nox-Neural-Network, Rikka-Botan): NoPE attention with selective-copying keys, ASGG MLP, DyT sandwich
norms, no final norm, untied head. Spec: shared/specs/n4.md."""

from lmlab.presets.base import TINY_RECIPE, Preset, register_preset

N4_COMPONENTS = dict(
    mixer="selective_copy", mlp="asgg", norm="dyt_n4", block="sandwich", position="none", final_norm=False,
    tie_word_embeddings=False, attention_scale="hidden_size", init="n4", bos_token_id=1, eos_token_id=2,
)

# The card's settings block (eps 1e-9) with nanoGPT's cosine decay after the 2000-step warmup (not stated on the
# card; inferred because every other setting equals nanoGPT's GPT-2 defaults).
N4_RECIPE = dict(
    tokenizer="mistral-v3", seq_len=512, batch_size=8, grad_accum=16, precision="auto",
    optimizer=dict(name="adamw", lr=6e-4, betas=(0.9, 0.95), eps=1e-9, weight_decay=0.1),
    schedule=dict(name="cosine", warmup_steps=2000, min_lr=6e-5), grad_clip=None,
    source="N4 README 'Training Setting' block; schedule after warmup inferred (nanoGPT)",
)

register_preset(Preset(
    name="n4-127m", family="n4",
    description="N4 as published: 18 layers, d 768, 6 heads, ASGG 1536, vocab 32768 (127.5M block params)",
    config=dict(N4_COMPONENTS, vocab_size=32768, hidden_size=768, intermediate_size=1536, num_attention_heads=6,
                num_hidden_layers=18),
    recipe=N4_RECIPE,
))

# nanoGPT's baby-GPT size (d 128, 4 layers), not the d 64 × 2 of the other tiny presets: with no position encoding
# the first layer attends uniformly (its keys are running means), so N4 builds position in depth and width; at
# d 64 it stays near a trigram model (docs/recipes.md, "N4").
N4_TINY = dict(N4_COMPONENTS, vocab_size=32768, hidden_size=128, intermediate_size=256, num_attention_heads=4,
               num_hidden_layers=4)
N4_TINY_RECIPE = dict(N4_RECIPE, **TINY_RECIPE)

register_preset(Preset(
    name="n4-tiny", family="n4",
    description="N4 components (published math) at nanoGPT's CPU size: 4 layers, d 128, 4 heads, ASGG 256",
    config=N4_TINY, recipe=N4_TINY_RECIPE,
))

register_preset(Preset(
    name="n4-tiny-rope", family="n4",
    description="n4-tiny with RoPE on queries and selective-copy keys (not N4: a position encoding added; "
                "docs/recipes.md)",
    config=dict(N4_TINY, position="rope"), recipe=N4_TINY_RECIPE,
))
