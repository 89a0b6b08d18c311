"""NYX (dykyivladk1/NYX, a copy of lucidrains' PaLM-rlhf-pytorch): parallel blocks sharing one bias-free
LayerNorm, multi-query attention (one K/V head) with XPOS rotary, SwiGLU, no biases, tied embedding, byte-level
vocabulary; the loss never scores target byte 0. Spec: shared/specs/nyx.md."""

from lmlab.presets.base import TINY_RECIPE, Preset, register_preset

NYX_COMPONENTS = dict(
    mixer="attention", mlp="swiglu", norm="layernorm_nobias", block="parallel", position="xpos",
    num_key_value_heads=1, rope_theta=10000.0, rope_pct=1.0, xpos_scale_base=512.0, attention_bias=False,
    mlp_bias=False, tie_word_embeddings=True, norm_eps=1e-5, embedding_dropout=0.0, attention_dropout=0.0,
    mlp_dropout=0.0, residual_dropout=0.0, init="nyx", initializer_range=0.02, loss_ignore_token_id=0,
)

# src/train.py: Lion(lr 1e-4) with the library's defaults, no schedule, 4 x 4 micro-batches of 1024 bytes, clip 0.5,
# 100,000 steps, fp32 (accelerate's default).
NYX_RECIPE = dict(
    tokenizer="bytes", seq_len=1024, batch_size=4, grad_accum=4, precision="auto",
    optimizer=dict(name="lion", lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0),
    schedule=dict(name="constant", warmup_steps=0), grad_clip=0.5,
    source="NYX src/train.py (100,000 steps on enwik8, first 90M bytes)",
)

register_preset(Preset(
    name="nyx-30m", family="nyx",
    description="NYX as trained: bytes, d 512, 8 parallel layers, 8 query heads of 64 + 1 K/V head, SwiGLU 2048, "
                "XPOS 512 (30.02M params)",
    config=dict(NYX_COMPONENTS, vocab_size=256, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                head_dim=64, intermediate_size=2048),
    recipe=NYX_RECIPE,
))

register_preset(Preset(
    name="nyx-tiny", family="nyx",
    description="NYX components at CPU-test size: 2 layers, d 64, 4 query heads of 16, 1 K/V head",
    config=dict(NYX_COMPONENTS, vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                head_dim=16, intermediate_size=256),
    recipe=dict(NYX_RECIPE, **dict(TINY_RECIPE, optimizer=dict(TINY_RECIPE["optimizer"], weight_decay=0.0))),
))
