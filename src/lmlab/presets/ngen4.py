"""NGen4 (TNSA): GPT-2 layout with (partial) rotary positions and rope scaling, biased projections, GELU-new MLP,
three dropouts, tied head. Spec: shared/specs/ngen4.md (a blueprint: no public code exists)."""

from lmlab.presets.base import TINY_RECIPE, Preset, register_preset

NGEN4_COMPONENTS = dict(
    mixer="attention", mlp="gelu_new", norm="layernorm", block="prenorm", position="rope", rope_theta=10000.0,
    rope_pct=1.0, attention_bias=True, mlp_bias=True, tie_word_embeddings=True, norm_eps=1e-5,
    embedding_dropout=0.1, attention_dropout=0.1, residual_dropout=0.1, init="gpt2", initializer_range=0.02,
    bos_token_id=50256, eos_token_id=50256,
)

# HF Trainer defaults (the card describes a Transformers model trained on WikiText-2; no recipe is published).
NGEN4_RECIPE = dict(
    tokenizer="gpt2", seq_len=512, batch_size=8, grad_accum=1, precision="auto",
    optimizer=dict(name="adamw", lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    schedule=dict(name="linear", warmup_steps=0, min_lr=0.0), grad_clip=1.0,
    source="inferred: Hugging Face Trainer defaults",
)

register_preset(Preset(
    name="ngen4-50m", family="ngen4",
    description="NGen4 '50M': GPT-2 layout, d 512, 8 layers, 8 heads, RoPE, GPT-2 vocabulary (50.95M params)",
    config=dict(NGEN4_COMPONENTS, vocab_size=50257, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                num_hidden_layers=8, max_position_embeddings=512),
    recipe=NGEN4_RECIPE,
))

register_preset(Preset(
    name="ngen4-tiny", family="ngen4",
    description="NGen4 components at CPU-test size: 2 layers, d 64, 4 heads",
    # dropout off: at a few epochs of data it only slows learning (docs/recipes.md)
    config=dict(NGEN4_COMPONENTS, vocab_size=50257, hidden_size=64, intermediate_size=256, num_attention_heads=4,
                num_hidden_layers=2, max_position_embeddings=512, embedding_dropout=0.0, attention_dropout=0.0,
                residual_dropout=0.0),
    recipe=dict(NGEN4_RECIPE, **TINY_RECIPE),
))
