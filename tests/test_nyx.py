"""NYX: published parameter counts, the parallel block, multi-query attention, SwiGLU order, target-0 loss, init,
and strict conversion of official checkpoints with logit parity against the reference (spec nyx.md §2-6, §11)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import TINY_VOCAB, tiny_model
from lmlab import LMLabForCausalLM, count_parameters, preset_config
from lmlab.cli import main
from lmlab.convert import CheckpointMismatchError
from lmlab.convert.nyx import convert_nyx, split_fused_projection
from lmlab.info import forward_flops_per_token
from reference.nyx_official import NYX

# a small NYX with every part non-trivial: 4 query heads of 12, feed-forward ×2, XPOS base 16 (strong decay)
VOCAB, DIM, DEPTH, HEADS, DIM_HEAD, FF_MULT, XPOS_BASE = 256, 48, 2, 4, 12, 2, 16


def meta_count(**overrides) -> int:
    with torch.device("meta"):
        return count_parameters(LMLabForCausalLM(preset_config("nyx-30m", **overrides)))


def test_published_parameter_counts():
    with torch.device("meta"):
        model = LMLabForCausalLM(preset_config("nyx-30m"))
    assert count_parameters(model) == 30_020_096
    assert sum(p.numel() for p in model.model.layers[0].parameters()) == 3_736_064
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(p.dim() == 2 or name.endswith("norm.weight") for name, p in model.named_parameters())  # no biases
    # the card's wording (GPT-2 vocabulary, d 128, 2 layers, 4 heads of 32, FF 2x) would be a different model
    card = dict(vocab_size=50257, hidden_size=128, num_attention_heads=4, head_dim=32, intermediate_size=256)
    assert meta_count(num_hidden_layers=2, **card) == 6_711_808
    assert meta_count(num_hidden_layers=8, **card) == 7_548_160


def test_forward_flops_count_the_split_projections_once():
    """Per layer: q (d·hd_h), shared k and v (2·d·d_h), SwiGLU up (2f·d), out (hd_h·d), down (f·d), attention over
    the T×T square; plus the tied head. XPOS tables on the meta device must not need values."""
    t, d, layers, inner, kv, ff, vocab = 1024, 512, 8, 512, 64, 2048, 256
    per_layer = d * inner + 2 * d * kv + 2 * ff * d + inner * d + ff * d + 2 * t * inner
    assert forward_flops_per_token(preset_config("nyx-30m"), t) == 2 * (layers * per_layer + d * vocab)


def test_reference_state_dict_has_the_published_layout():
    """The reference is faithful to spec §2: 60 entries at the default size, with the published shapes."""
    with torch.device("meta"):
        state = NYX(num_tokens=256, dim=512, depth=8).state_dict()
    assert len(state) == 60
    assert state["layers.3.func.fused_attention_feedforward.weight"].shape == (4736, 512)
    assert state["layers.3.func.attn_output_proj.weight"].shape == (512, 512)
    assert state["layers.3.func.feedforward_net.2.weight"].shape == (512, 2048)
    assert {"layers.7.func.norm_layer.beta", "layers.7.func.rotary_pos_emb.inv_frequency",
            "layers.7.func.rotary_pos_emb.scaling_factors", "to_output_logits.weight"} <= set(state)


def test_fused_projection_rows_split_as_published():
    rows = torch.arange(4736.0)[:, None]
    parts = split_fused_projection(rows, heads=8, head_dim=64, ff_inner=2048)
    spans = {"q": (0, 511), "k": (512, 575), "v": (576, 639), "ff": (640, 4735)}
    for name, (first, last) in spans.items():
        assert (parts[name][0, 0].item(), parts[name][-1, 0].item()) == (first, last)
    # the feed-forward rows are [value | gate]: lmlab's SwiGLU reads its up projection in the same order
    assert parts["ff"][2047, 0].item() == 2687 and parts["ff"][2048, 0].item() == 2688


def official_nyx(seed=0) -> NYX:
    torch.manual_seed(seed)
    model = NYX(VOCAB, DIM, DEPTH, heads=HEADS, dim_head=DIM_HEAD, ff_mult=FF_MULT, xpos_scale_base=XPOS_BASE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif "token_embedding" in name:
                p.normal_(0, 0.3)  # logits of std ~2: fp32 rounding stays well below the 1e-5 bar
            else:
                p.mul_(2.0)  # larger weights make attention and gates non-trivial
    return model.eval()


def official_tokens(length=300, seed=1):
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))
    ids[:, ::7] = 0  # byte NUL targets, which NYX's loss never scores
    return ids


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "training_checkpoint"])
def test_converted_nyx_reproduces_official_logits_and_loss(tmp_path, wrapped):
    official = official_nyx()
    state = official.state_dict()
    src = tmp_path / "nyx.pth"
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}, "step": 15000}
               if wrapped else state, src)
    assert main(["convert", "nyx", str(src), str(tmp_path / "out"), "--xpos-scale-base", str(XPOS_BASE)]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = official_tokens()
    with torch.no_grad():
        expected, got = official(ids), model(ids).logits
        expected_loss, got_loss = official(ids, compute_loss=True), model(ids, labels=ids).loss
    assert (got - expected).abs().max().item() <= 1e-5
    assert expected.std() > 1.0  # the comparison is not between near-constant logits
    assert got_loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_missing_checkpoint_file_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", "nyx", str(tmp_path / "weigths" / "checkpoint_15000.pth"), str(tmp_path / "out")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_missing_and_unexpected_keys_are_named():
    state = official_nyx().state_dict()
    del state["layers.1.func.attn_output_proj.weight"]
    state["layers.1.func.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as err:
        convert_nyx(state, xpos_scale_base=XPOS_BASE)
    assert "missing keys: model.layers.1.mixer.out_proj.weight" in str(err.value)
    assert "unexpected keys: layers.1.func.extra.weight" in str(err.value)


@pytest.mark.parametrize("key,value,message", [
    ("layers.0.func.norm_layer.beta", torch.full((DIM,), 0.1), "not zero"),
    ("norm_layer.beta", torch.full((DIM,), 0.1), "not zero"),
    ("layers.1.func.rotary_pos_emb.scaling_factors", torch.ones(DIM_HEAD // 2), "XPOS"),
    ("layers.1.func.rotary_pos_emb.inv_frequency", torch.ones(DIM_HEAD // 2), "rotary frequencies"),
    ("layers.0.func.fused_attention_feedforward.weight", torch.zeros(10, DIM), "need"),
    ("to_output_logits.weight", torch.zeros(VOCAB, DIM), "differs from the embedding"),
    ("layers.0.func.q_scale", torch.ones(DIM_HEAD), "use_qk_rmsnorm"),
])
def test_tensors_lmlab_cannot_represent_are_refused(key, value, message):
    state = official_nyx().state_dict()
    state[key] = value
    with pytest.raises(CheckpointMismatchError, match=message):
        convert_nyx(state, xpos_scale_base=XPOS_BASE)


def test_not_a_nyx_checkpoint():
    with pytest.raises(CheckpointMismatchError, match="not a NYX state_dict"):
        convert_nyx({"transformer.wte.weight": torch.zeros(3, 3)})


def test_attention_and_feedforward_dropout_act_in_training_only():
    model = tiny_model("nyx-tiny", attention_dropout=0.3, mlp_dropout=0.3)
    x = torch.randint(0, TINY_VOCAB, (1, 12))
    assert torch.equal(model(x).logits, model(x).logits)
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x).logits, model(x).logits)
    model = tiny_model("nyx-tiny", mlp_dropout=0.5).train()
    mlp = model.model.layers[0].mlp
    h = torch.randn(64, model.config.hidden_size)
    assert not torch.equal(mlp(h), mlp(h))


def test_init_follows_the_reference():
    """Embedding (= head) N(0, 0.02); projections PyTorch's default U(±1/sqrt(fan_in)); LayerNorm gain 1."""
    torch.manual_seed(0)
    model = LMLabForCausalLM(preset_config("nyx-tiny", hidden_size=256, intermediate_size=1024, head_dim=64))
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.05)
    layer = model.model.layers[0]
    for proj in (layer.mixer.q_proj, layer.mixer.out_proj, layer.mlp.up_proj, layer.mlp.down_proj):
        bound = proj.in_features ** -0.5
        assert proj.weight.abs().max().item() <= bound
        assert proj.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    assert torch.equal(layer.norm.weight, torch.ones(256)) and layer.norm.bias is None
