"""Loading published checkpoints: N4 (official names) and NGen4 (GPT-2 Conv1D layout), strictly."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from lmlab.cli import main
from lmlab.convert import CheckpointMismatchError, read_state_dict
from lmlab.convert.n4 import convert_n4
from lmlab.convert.ngen4 import convert_ngen4
from reference.n4_official import N4C

VOCAB, HIDDEN, INTER, HEADS, LAYERS = 97, 48, 96, 3, 3


def official_n4(seed=0) -> N4C:
    torch.manual_seed(seed)
    model = N4C(vocab_size=VOCAB, hidden_size=HIDDEN, inter_size=INTER, heads=HEADS, layers=LAYERS)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # DyT gains: move them off 1 so a swapped norm would show
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.mul_(3.0)  # larger weights make the gates and the attention non-trivial
    return model.eval()


def test_official_n4_state_dict_has_the_published_names():
    keys = set(official_n4().state_dict())
    assert "n4b.n4d.0.n4.qkvh_linear.weight" in keys and "n4b.n4d.2.n4.norm.weight" in keys
    assert len(keys) == 2 + LAYERS * 9  # per layer: qkvh, out, unused norm, up, down, four DyT


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_converted_n4_reproduces_official_logits(tmp_path, suffix):
    official = official_n4()
    src = tmp_path / f"n4{suffix}"
    if suffix == ".bin":
        torch.save(official.state_dict(), src)
    else:
        save_file(official.state_dict(), str(src))
    assert main(["convert", "n4", str(src), str(tmp_path / "out")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = official(ids)
        got = model(ids).logits
    assert (got - expected).abs().max().item() <= 1e-5
    assert expected.std() > 1.0  # the comparison is not between near-constant logits


def test_n4_wrapper_prefixes_are_stripped(tmp_path):
    official = official_n4()
    src = tmp_path / "ddp.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in official.state_dict().items()}, src)
    model = convert_n4(read_state_dict(src))
    ids = torch.randint(0, VOCAB, (1, 9))
    torch.testing.assert_close(model(ids).logits, official(ids), atol=1e-5, rtol=1e-5)


def test_n4_missing_and_unexpected_keys_are_named():
    state = official_n4().state_dict()
    del state["n4b.n4d.1.post_mlp_norm.weight"]
    state["n4b.n4d.1.n4.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as err:
        convert_n4(state)
    message = str(err.value)
    assert "missing keys: model.layers.1.mlp_post_norm.weight" in message
    assert "unexpected keys: n4b.n4d.1.n4.extra.weight" in message


def test_n4_shape_mismatch_is_named():
    state = official_n4().state_dict()
    state["n4b.n4d.0.mlp.up_proj.weight"] = torch.zeros(3 * INTER + 3, HIDDEN)
    with pytest.raises(CheckpointMismatchError, match="model.layers.0.mlp.up_proj.weight"):
        convert_n4(state)


def test_not_an_n4_checkpoint():
    with pytest.raises(CheckpointMismatchError, match="not an N4 state_dict"):
        convert_n4({"transformer.wte.weight": torch.zeros(3, 3)})


def test_missing_checkpoint_file_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["convert", "n4", str(tmp_path / "absent.bin"), str(tmp_path / "out")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


# ---- NGen4: a GPT-2 Conv1D-layout file against an nn.Linear reading of the blueprint

def gpt2_rope_reference(state, ids, heads, theta=10000.0):
    """GPT-2 forward with full RoPE written directly on the Conv1D tensors (y = x·W + b)."""
    wte = state["transformer.wte.weight"]
    x = wte[ids]
    b, t, d = x.shape
    hd = d // heads
    inv = theta ** (-torch.arange(0, hd, 2).double() / hd)
    ang = torch.arange(t).double()[:, None] * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).float(), torch.cat([ang.sin(), ang.sin()], -1).float()

    def rot(z):
        a, c = z.chunk(2, -1)
        return z * cos + torch.cat([-c, a], -1) * sin

    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.h."))
    for i in range(layers):
        def p(name, i=i):
            return state[f"transformer.h.{i}.{name}"]

        h = F.layer_norm(x, (d,), p("ln_1.weight"), p("ln_1.bias"), 1e-5)
        qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (z.view(b, t, heads, hd).transpose(1, 2) for z in qkv.split(d, -1))
        att = (rot(q) @ rot(k).transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(b, t, d) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = F.layer_norm(x, (d,), p("ln_2.weight"), p("ln_2.bias"), 1e-5)
        h = F.gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"), approximate="tanh")
        x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    x = F.layer_norm(x, (d,), state["transformer.ln_f.weight"], state["transformer.ln_f.bias"], 1e-5)
    return x @ wte.T


def gpt2_layout_state(vocab=83, d=32, layers=2, inner=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.2 * torch.randn(*shape, generator=g)  # noqa: E731
    state = {"transformer.wte.weight": r(vocab, d), "transformer.ln_f.weight": 1 + r(d),
             "transformer.ln_f.bias": r(d)}
    for i in range(layers):
        pre = f"transformer.h.{i}."
        state.update({pre + "ln_1.weight": 1 + r(d), pre + "ln_1.bias": r(d), pre + "ln_2.weight": 1 + r(d),
                      pre + "ln_2.bias": r(d), pre + "attn.c_attn.weight": r(d, 3 * d),
                      pre + "attn.c_attn.bias": r(3 * d), pre + "attn.c_proj.weight": r(d, d),
                      pre + "attn.c_proj.bias": r(d), pre + "mlp.c_fc.weight": r(d, inner),
                      pre + "mlp.c_fc.bias": r(inner), pre + "mlp.c_proj.weight": r(inner, d),
                      pre + "mlp.c_proj.bias": r(d),
                      pre + "attn.bias": torch.ones(1, 1, 64, 64).tril(),  # legacy mask buffer, ignored
                      pre + "attn.masked_bias": torch.tensor(-1e4)})
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def test_conv1d_layout_file_reproduces_the_linear_reference(tmp_path):
    state = gpt2_layout_state()
    torch.save(state, tmp_path / "ngen4.bin")
    assert main(["convert", "ngen4", str(tmp_path / "ngen4.bin"), str(tmp_path / "out"), "--heads", "4"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 83, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gpt2_rope_reference(state, ids, heads=4),
                                   atol=1e-5, rtol=1e-5)


def test_conv1d_untied_head_is_refused():
    state = gpt2_layout_state()
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(CheckpointMismatchError, match="lm_head.weight differs"):
        convert_ngen4(state, num_heads=4)
