"""Qwen3 (Qwen team, "Qwen3 Technical Report", arXiv 2505.09388), dense models: the Llama 3 layout (pre-norm RMSNorm,
grouped-query attention without biases, gated SiLU MLP) plus a per-head RMSNorm with a gain on q and k before the
rotation, RoPE θ = 1,000,000 unscaled, head_dim 128 whatever the width, tied embeddings in the 0.6B, 1.7B and 4B
models. Shapes and token ids from the published config.json files; the model is transformers' `Qwen3ForCausalLM`
(tests/test_llama_qwen3.py compares logits with it)."""

from lmlab.presets.base import Preset, register_preset
from lmlab.presets.llama import LLAMA_COMPONENTS, LLAMA_RECIPE

QWEN3_COMPONENTS = dict(
    LLAMA_COMPONENTS, qk_norm="rmsnorm", qk_norm_position="before_rotation", rope_theta=1000000.0, norm_eps=1e-6,
)

# The report gives data and stages but no optimizer settings; Llama's (lmlab.presets.llama) stand in, with Qwen3's
# 4,096-token first pre-training stage (§3.2) and Qwen's BPE (the `qwen` tokenizer: Qwen3 keeps Qwen2.5's 151,643
# ranks; its four extra special tokens fall in the rows the model pads to 151,936).
QWEN3_RECIPE = dict(
    LLAMA_RECIPE, tokenizer="qwen", seq_len=4096, batch_size=8, grad_accum=32,
    source="inferred: Qwen3 report §3.2 (4,096-token stage 1), optimizer and schedule as lmlab's llama recipe (the "
           "report publishes none)",
)

register_preset(Preset(
    name="qwen3-0.6b", family="qwen3",
    description="Qwen3 0.6B: d 1024, 28 layers, 16 query / 8 KV heads of 128, QK-norm before RoPE, gated SiLU 3072, "
                "tied (596,049,920 params)",
    config=dict(QWEN3_COMPONENTS, vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    recipe=QWEN3_RECIPE,
))

register_preset(Preset(
    name="qwen3-tiny", family="qwen3",
    description="Qwen3 components at CPU-test size: 2 layers, d 64, 4 query / 2 KV heads of 32 (head_dim ≠ d/heads), "
                "QK-norm before RoPE, tied, Qwen vocabulary",
    config=dict(QWEN3_COMPONENTS, vocab_size=151936, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    recipe=dict(QWEN3_RECIPE, seq_len=128, batch_size=16, grad_accum=1, precision="fp32",
                optimizer=dict(QWEN3_RECIPE["optimizer"], lr=2e-3),
                schedule=dict(name="cosine", warmup_steps=20, min_lr_ratio=0.1), source="lmlab tiny variant"),
))
