"""NeoLLM (KitsuVp, 110M): 3:1 hybrid of Gated DeltaNet and Qwen3-Next gated attention, FAN in front of the mixers,
gated PolyNorm MLP, zero-centred RMSNorm, LayerNorm Scaling, GPAS, tied embeddings, chunked cross-entropy, AdEMAMix.
Spec: shared/specs/neollm.md (a reconstruction: the 110M modeling code is not public; see its §0 and §9)."""

from lmlab.presets.base import TINY_RECIPE, Preset, register_preset

ATTENTION_PERIOD = 4  # one full-attention layer per three Gated DeltaNet layers (Qwen3-Next's rule)


def neollm_layers(num_layers: int, fan_everywhere: bool = False) -> list[dict]:
    """Per-layer overrides: full attention at 1-based layers 4, 8, 12, ... (0-based i with (i + 1) % 4 == 0), Gated
    DeltaNet elsewhere (the model-wide mixer); a FAN layer in front of the attention mixers, or of every mixer."""
    layers = []
    for i in range(num_layers):
        attention = (i + 1) % ATTENTION_PERIOD == 0
        layer = {"mixer": "gated_attention"} if attention else {}
        if attention or fan_everywhere:
            layer["fan"] = True
        layers.append(layer)
    return layers


NEOLLM_COMPONENTS = dict(
    mixer="gated_deltanet", mlp="polynorm", norm="zero_centred_rmsnorm", block="prenorm", position="rope",
    rope_theta=10000.0, rope_pct=0.25, norm_eps=1e-6, tie_word_embeddings=True, init="normal",
    initializer_range=0.02, layernorm_scaling=True, gpas="layer", fan_ratio=0.125, loss="chunked",
    linear_num_key_heads=8, linear_key_head_dim=32, linear_num_value_heads=16, linear_value_head_dim=32,
    linear_conv_kernel_dim=4, attention_dropout=0.1, residual_dropout=0.1,
)

# The card: AdEMAMix (0.9, 0.999, 0.999), alpha 5, T_alpha = T_beta3 = 5000, weight decay 0.1; linear warm-up from
# 3e-4 to 6e-4 over 5000 steps, then cosine to 6e-5; bf16. Batch size and clipping are not published.
NEOLLM_RECIPE = dict(
    tokenizer="qwen", seq_len=512, batch_size=32, grad_accum=4, precision="auto",
    optimizer=dict(name="ademamix", lr=6e-4, betas=(0.9, 0.999, 0.999), alpha=5.0, t_alpha=5000, t_beta3=5000,
                   eps=1e-8, weight_decay=0.1),
    schedule=dict(name="warm_start_cosine", warmup_steps=5000, start_lr=3e-4, min_lr=6e-5), grad_clip=1.0,
    source="NeoLLM 110M card (optimizer, schedule, precision); batch size and grad_clip 1.0 inferred "
           "(not published; HF Trainer default clip)",
)

NEOLLM_110M = dict(NEOLLM_COMPONENTS, vocab_size=151665, hidden_size=512, intermediate_size=1024,
                   num_attention_heads=8, num_key_value_heads=2, head_dim=64, num_hidden_layers=12,
                   layers=neollm_layers(12))

register_preset(Preset(
    name="neollm-110m", family="neollm",
    description="NeoLLM 110M: 9 Gated DeltaNet + 3 gated GQA attention layers, d 512, FAN on attention, PolyNorm, "
                "LNS, GPAS, Qwen vocabulary, tied (109,604,156 params)",
    config=NEOLLM_110M, recipe=NEOLLM_RECIPE,
))

register_preset(Preset(
    name="neollm-110m-fan-all", family="neollm",
    description="NeoLLM 110M with a FAN layer in front of all 12 mixers (the spec's alternative; 111,672,572 params)",
    config=dict(NEOLLM_110M, layers=neollm_layers(12, fan_everywhere=True)), recipe=NEOLLM_RECIPE,
))

# Four layers (three Gated DeltaNet, one attention); chunk 16 so that the generic 40-token model tests cross chunk
# boundaries of the chunked delta rule.
register_preset(Preset(
    name="neollm-tiny", family="neollm",
    description="NeoLLM components at CPU-test size: 4 layers (3 Gated DeltaNet + 1 attention), d 64",
    config=dict(NEOLLM_COMPONENTS, vocab_size=151665, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, num_hidden_layers=4, layers=neollm_layers(4),
                linear_num_key_heads=2, linear_key_head_dim=16, linear_num_value_heads=4, linear_value_head_dim=16,
                linear_chunk_size=16, attention_dropout=0.0, residual_dropout=0.0),
    recipe=dict(NEOLLM_RECIPE, **TINY_RECIPE),
))
