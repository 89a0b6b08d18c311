"""Llama 3 (Meta, "The Llama 3 Herd of Models", arXiv 2407.21783): pre-norm RMSNorm blocks, grouped-query attention
without biases, RoPE θ = 500,000 with Llama 3.1's `llama3` frequency scaling, the gated SiLU MLP (separate gate, up
and down projections), untied head (tied in the 1B and 3B models of Llama 3.2). Shapes and token ids from the
published config.json files; the model is transformers' `LlamaForCausalLM` (tests/test_llama_qwen3.py compares
logits with it)."""

from lmlab.presets.base import Preset, register_preset

LLAMA_COMPONENTS = dict(
    mixer="attention", mlp="gated_silu", norm="rmsnorm", block="prenorm", position="rope", rope_theta=500000.0,
    rope_pct=1.0, attention_bias=False, mlp_bias=False, norm_eps=1e-5, tie_word_embeddings=False, init="normal",
    initializer_range=0.02,
)

# Llama 3.1 / 3.2: trained at 8,192 positions, extended 16 times to 131,072 by the llama3 scaling (factor 32)
LLAMA3_ROPE_SCALING = dict(type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192)

# Llama 3.2 1B was pruned from Llama 3.1 8B and distilled, with no published recipe; these are Llama 2's published
# pre-training settings (AdamW β 0.9 / 0.95, ε 1e-5, decay 0.1, clip 1.0, 2,000 warm-up steps, cosine to 10%) at the
# 1B-class peak learning rate, with Llama 3's 8,192-token sequences.
LLAMA_RECIPE = dict(
    tokenizer="meta-llama/Llama-3.2-1B", seq_len=8192, batch_size=4, grad_accum=32, precision="bf16",
    optimizer=dict(name="adamw", lr=3e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1),
    schedule=dict(name="cosine", warmup_steps=2000, min_lr_ratio=0.1), grad_clip=1.0,
    source="inferred: Llama 2 paper's optimizer and schedule (arXiv 2307.09288 §2.2), Llama 3's sequence length; "
           "the Llama 3.2 1B recipe is not published (the tokenizer is gated on the Hugging Face hub)",
)

register_preset(Preset(
    name="llama-1b", family="llama",
    description="Llama 3.2 1B: d 2048, 16 layers, 32 query / 8 KV heads of 64, gated SiLU 8192, llama3 RoPE "
                "scaling to 131,072 positions, tied (1,235,814,400 params)",
    config=dict(LLAMA_COMPONENTS, vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rope_scaling=LLAMA3_ROPE_SCALING, tie_word_embeddings=True, bos_token_id=128000,
                eos_token_id=128001),
    recipe=LLAMA_RECIPE,
))

register_preset(Preset(
    name="llama-tiny", family="llama",
    description="Llama 3 components at CPU-test size: 2 layers, d 64, 4 query / 2 KV heads, llama3 RoPE scaling, "
                "untied, bytes",
    config=dict(LLAMA_COMPONENTS, vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rope_scaling=dict(LLAMA3_ROPE_SCALING, factor=8.0, original_max_position_embeddings=256)),
    recipe=dict(LLAMA_RECIPE, tokenizer="bytes", seq_len=128, batch_size=16, grad_accum=1, precision="fp32",
                optimizer=dict(LLAMA_RECIPE["optimizer"], lr=2e-3),
                schedule=dict(name="cosine", warmup_steps=20, min_lr_ratio=0.1), source="lmlab tiny variant"),
))
