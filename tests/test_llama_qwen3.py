"""The llama and qwen3 presets against transformers' `LlamaForCausalLM` / `Qwen3ForCausalLM` with random weights:
logits of a full forward, of cached decoding and of a left-padded batch (fp32, max |Δ| ≤ 1e-5), through the converter
round trip (`save_pretrained` -> `lmlab convert` -> `from_pretrained`), and the published parameter counts (both
models built on the meta device)."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from conftest import engine_logits, full_forward_logits, random_path
from lmlab import LMLabForCausalLM, count_parameters, preset_config
from lmlab.cli import main
from lmlab.convert import CheckpointMismatchError, convert_model_folder, load_exactly
from lmlab.convert.llama import LLAMA_LAYER_RENAMES, llama_layout_config, rename_llama_key
from lmlab.convert.qwen3 import QWEN3_LAYER_RENAMES
from lmlab.data.tokenizers import bytes_tokenizer
from lmlab.presets.llama import LLAMA_COMPONENTS
from lmlab.presets.qwen3 import QWEN3_COMPONENTS

PARITY = 1e-5  # max |Δ logit| in fp32
VOCAB = 97
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
SMALL = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=128)

# config.json of meta-llama/Llama-3.2-1B and Qwen/Qwen3-0.6B (the fields that shape the model)
PUBLISHED_LLAMA = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
    "initializer_range": 0.02, "bos_token_id": 128000, "eos_token_id": 128001,
}
PUBLISHED_QWEN3 = {
    "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000,
    "rope_scaling": None, "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
    "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28, "initializer_range": 0.02,
    "bos_token_id": 151643, "eos_token_id": 151645,
}

# family -> (transformers class, its config class, lmlab preset family, component choices, key renames)
FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig, LLAMA_COMPONENTS, LLAMA_LAYER_RENAMES),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, QWEN3_COMPONENTS, QWEN3_LAYER_RENAMES),
}
# (id, family, HF config options): GQA everywhere, llama3 / other rope kinds, tied and untied, biases, Qwen3's
# head_dim decoupled from hidden_size / heads
VARIANTS = [
    ("llama-llama3-untied", "llama", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False)),
    ("llama-llama3-tied", "llama", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)),
    ("llama-biases", "llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                   attention_bias=True, mlp_bias=True)),
    ("qwen3-tied", "qwen3", dict(head_dim=16, tie_word_embeddings=True,
                                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    ("qwen3-untied-llama3", "qwen3", dict(head_dim=12, tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE)),
]


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights N(0, 1/fan_in) (so activations keep their size through the layers), embeddings N(0, 1/16) (a tied
    head then gives logits of the usual size), norm gains 1 ± 0.3, biases N(0, 0.1): HF's init (N(0, 0.02), gains 1)
    would give near-zero logits and hide a swapped norm."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 2:
                p.copy_(noise * (0.25 if "embed" in name else p.shape[1] ** -0.5))
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(1 + 0.3 * noise)


def hf_model(family: str, seed: int = 0, **options):
    hf_class, config_class, _, _ = FAMILIES[family]
    config = config_class(**{**SMALL, **options})
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = hf_class(config).eval()
    randomise(model, seed)
    return model


def lmlab_twin(hf) -> LMLabForCausalLM:
    """The lmlab model of the same config (the preset family's components) holding the HF model's weights."""
    _, _, components, renames = FAMILIES[hf.config.model_type]
    model = LMLabForCausalLM(llama_layout_config(hf.config, components)).eval()
    load_exactly(model, {rename_llama_key(k, renames): v for k, v in hf.state_dict().items()})
    return model


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("family, options", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_full_forward_equals_transformers(family, options):
    hf = hf_model(family, **options)
    ours = lmlab_twin(hf)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids).logits
    assert expected.std() > 0.5  # not near-constant logits
    assert max_difference(got, expected) <= PARITY
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == hf.config.tie_word_embeddings


@pytest.mark.parametrize("family, options", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_cached_decoding_of_a_left_padded_batch_equals_transformers(family, options):
    """lmlab's engine: a batch of prompts of different lengths (left-padded), then one token per step with the
    cache, against transformers' uncached forwards of each unpadded row."""
    hf = hf_model(family, **options)
    ours = lmlab_twin(hf)
    prompts = [random_path(1, 13, VOCAB, seed=2)[0], random_path(1, 5, VOCAB, seed=3)[0]]
    path = random_path(2, 8, VOCAB, seed=4)
    got = engine_logits(ours, prompts, path)
    expected = full_forward_logits(hf, prompts, path)
    assert max(max_difference(a, b) for a, b in zip(got, expected, strict=True)) <= PARITY


@pytest.mark.parametrize("family, options", [v[1:] for v in VARIANTS[::2]], ids=[v[0] for v in VARIANTS[::2]])
def test_left_padded_forward_equals_transformers_per_row(family, options):
    hf = hf_model(family, **options)
    ours = lmlab_twin(hf)
    rows = [random_path(1, 21, VOCAB, seed=5)[0], random_path(1, 9, VOCAB, seed=6)[0]]
    ids = torch.zeros(2, 21, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, 21 - len(row):], mask[i, 21 - len(row):] = torch.tensor(row), 1
    with torch.no_grad():
        got = ours(ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            expected = hf(torch.tensor([row])).logits[0]
            assert max_difference(got[i, 21 - len(row):], expected) <= PARITY


@pytest.mark.parametrize("rope, max_positions", [
    ({"rope_type": "linear", "factor": 2.0}, 24),
    ({"rope_type": "dynamic", "factor": 2.0}, 24),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 8.0}, 64),
])
def test_other_rope_scalings_equal_transformers(rope, max_positions):
    """40 positions, beyond the original length (dynamic NTK rescales there; HF: beyond max_position_embeddings)."""
    hf = hf_model("llama", rope_parameters={"rope_theta": 10000.0, **rope}, max_position_embeddings=max_positions)
    ours = lmlab_twin(hf)
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert max_difference(ours(ids).logits, hf(ids).logits) <= PARITY


@pytest.mark.hf
@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[3]], ids=[VARIANTS[0][0], VARIANTS[3][0]])
def test_convert_round_trip(tmp_path, variant):
    """save_pretrained -> `lmlab convert FAMILY DIR OUT` -> from_pretrained, logits equal; tokenizer files copied."""
    _, family, options = variant
    hf = hf_model(family, **options)
    hf.save_pretrained(tmp_path / "hf")
    bytes_tokenizer().save_pretrained(tmp_path / "hf")
    assert main(["convert", family, str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.config.mixer == "attention" and model.config.mlp == "gated_silu"
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert max_difference(model(ids).logits, hf(ids).logits) <= PARITY
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_sharded_folders_convert(tmp_path):
    hf = hf_model("qwen3", head_dim=16)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert main(["convert", "qwen3", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        assert max_difference(model(ids).logits, hf(ids).logits) <= PARITY


@pytest.mark.parametrize("family, options, named", [
    ("llama", dict(hidden_act="gelu"), "hidden_act='gelu'"),
    ("llama", dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
                                    "long_factor": [1.0] * 4, "original_max_position_embeddings": 64}),
     "rope_type='longrope'"),
    ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor=0.5"),
    ("qwen3", dict(head_dim=16, use_sliding_window=True, sliding_window=8, max_window_layers=1), "sliding_attention"),
])
def test_unsupported_options_are_refused_by_name(tmp_path, family, options, named):
    _, config_class, _, _ = FAMILIES[family]
    config_class(**{**SMALL, **options}).save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=re.escape(named)):
        convert_model_folder(family, tmp_path, tmp_path / "out")


def test_a_folder_of_another_family_is_refused(tmp_path):
    LlamaConfig(**SMALL).save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="holds a 'llama' model, not a 'qwen3' one"):
        convert_model_folder("qwen3", tmp_path, tmp_path / "out")


def test_missing_weights_are_named(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path / "hf")
    state = {k: v for k, v in hf.state_dict().items() if "layers.1.mlp.up_proj" not in k}
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: model\.layers\.1\.mlp\.up_proj\.weight"):
        convert_model_folder("llama", tmp_path / "hf", tmp_path / "out")


@pytest.mark.parametrize("family, published, preset, count", [
    ("llama", PUBLISHED_LLAMA, "llama-1b", 1_235_814_400),
    ("qwen3", PUBLISHED_QWEN3, "qwen3-0.6b", 596_049_920),
])
def test_published_models(family, published, preset, count):
    """The preset is the published config.json (as the converter reads it), and both models count the published
    parameters."""
    hf_class, config_class, components, _ = FAMILIES[family]
    hf_config = config_class.from_dict(json.loads(json.dumps(published)))
    ignored = ("preset", "auto_map", "transformers_version")
    converted = {k: v for k, v in llama_layout_config(hf_config, components).to_dict().items() if k not in ignored}
    ours = {k: v for k, v in preset_config(preset).to_dict().items() if k not in ignored}
    assert converted == ours
    with torch.device("meta"):
        theirs = hf_class(hf_config)
        model = LMLabForCausalLM(preset_config(preset))
    assert count_parameters(model) == sum(p.numel() for p in theirs.parameters()) == count
