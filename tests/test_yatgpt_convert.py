"""Loading released yatgpt checkpoints (PyTorch-port names) strictly, against the spec's reference model."""

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from lmlab.cli import main
from lmlab.convert import CheckpointMismatchError
from lmlab.convert.yatgpt import convert_yatgpt
from reference.yatgpt_official import Yat_GPT

VOCAB, LAYERS, HEADS, WIDTH, SEQ_LEN = 97, 4, 4, 48, 512  # windows: S = 128, L = 512


def official(seed=0, **mlp_kwargs) -> Yat_GPT:
    torch.manual_seed(seed)
    model = Yat_GPT(VOCAB, LAYERS, HEADS, WIDTH, sequence_len=SEQ_LEN, **({"kind": "yatnmn"} | mlp_kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.fill_(1.3)
            elif name.endswith("lambdas") or name.endswith("lambda"):
                p.uniform_(0.3, 1.2)  # smear λ ≠ 0: the smear is live
            else:
                p.normal_(0, 0.25)
    return model.eval()


def hf_style_file(model: Yat_GPT, path) -> None:
    """What the HF `-pytorch` repos hold: `model.`-prefixed keys, persistent rope buffers included."""
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))


def assert_same_logits(converted, reference, length=150):
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(ids), converted(ids).logits
    assert (got - expected).abs().max().item() <= 1e-5
    assert expected.std() > 1.0  # the comparison is not between near-constant logits


def test_main_model_file_converts_through_the_cli(tmp_path):
    reference = official()
    keys = set(reference.state_dict())
    assert {"blocks.0.mlp.c_fc.kernel", "blocks.0.mlp.c_fc.epsilon_param", "value_embeds.3.weight",
            "blocks.1.attn.ve_gate.weight", "smear_gate.weight", "rope_cos"} <= keys
    hf_style_file(reference, tmp_path / "model.safetensors")
    assert main(["convert", "yatgpt", str(tmp_path / "model.safetensors"), str(tmp_path / "out")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.config.window_long == SEQ_LEN  # read off the rope buffer (10 · T rows)
    assert [model.config.layer_spec(i).window for i in range(LAYERS)] == [128, 128, 128, 512]
    assert_same_logits(model, reference)


@pytest.mark.parametrize("mlp_kwargs,expected", [
    ({"scalar_bias": True}, dict(mlp="yatnmn_softplus", yatnmn_scalar_bias=True, yatnmn_constant_alpha=None)),
    ({"constant_alpha": True}, dict(mlp="yatnmn_softplus", yatnmn_scalar_bias=False, yatnmn_constant_alpha=1.0)),
    ({"scalar_bias": True, "constant_alpha": True}, dict(mlp="yatnmn_softplus", yatnmn_constant_alpha=1.0)),
    ({"softplus": False}, dict(mlp="yatnmn", yatnmn_constant_alpha=None)),
])
def test_yatnmn_ablation_variants_are_read_off_the_tensors(mlp_kwargs, expected):
    reference = official(**mlp_kwargs)
    model = convert_yatgpt(reference.state_dict())
    for field, value in expected.items():
        assert getattr(model.config, field) == value
    assert_same_logits(model, reference)


@pytest.mark.parametrize("kind", ["gelu", "relu2"])
def test_linear_mlp_variants_need_the_mlp_named(kind, tmp_path):
    reference = official(kind=kind)
    with pytest.raises(CheckpointMismatchError, match="--mlp gelu|relu2"):
        convert_yatgpt(reference.state_dict())
    torch.save(reference.state_dict(), tmp_path / "gpt.pt")
    assert main(["convert", "yatgpt", str(tmp_path / "gpt.pt"), str(tmp_path / "out"), "--mlp", kind]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.config.mlp == kind
    assert_same_logits(model, reference)


def test_training_length_without_rope_buffers():
    state = {k: v for k, v in official().state_dict().items() if not k.startswith("rope_")}
    assert convert_yatgpt(state).config.window_long == 1024
    assert convert_yatgpt(state, sequence_len=SEQ_LEN).config.window_long == SEQ_LEN


def test_missing_unexpected_and_misshaped_tensors_are_named():
    state = official().state_dict()
    del state["blocks.2.mlp.c_fc.alpha"]
    state["blocks.1.attn.extra.weight"] = torch.zeros(3)
    state["value_embeds.1.weight"] = torch.zeros(VOCAB, WIDTH + 1)
    with pytest.raises(CheckpointMismatchError) as err:
        convert_yatgpt(state)
    message = str(err.value)
    assert "missing keys: model.layers.2.mlp.up_proj.alpha" in message
    assert "unexpected keys: blocks.1.attn.extra.weight" in message
    assert "model.layers.1.mixer.value_embed.table.weight" in message


def test_not_a_yatgpt_checkpoint():
    with pytest.raises(CheckpointMismatchError, match="not a yatgpt state_dict"):
        convert_yatgpt({"transformer.wte.weight": torch.zeros(3, 3)})
