"""`lmlab info`: parameter breakdown and FLOPs against hand-counted expectations."""

import json

from lmlab import preset_config
from lmlab.cli import main
from lmlab.info import forward_flops_per_token


def test_ngen4_flops_equal_the_matmul_count():
    config = preset_config("ngen4-50m")
    t, d, layers, inner, vocab = 512, 512, 8, 2048, 50257
    per_layer_matmul = 3 * d * d + d * d + 2 * d * inner      # qkv, out, mlp up + down
    attention = 2 * t * d                                     # q·kᵀ and probs·v over the full T×T square
    expected = 2 * (layers * (per_layer_matmul + attention) + d * vocab)
    assert forward_flops_per_token(config, t) == expected


def test_n4_flops_include_the_gate_rows():
    config = preset_config("n4-127m")
    t, d, layers, inter, heads, vocab = 512, 768, 18, 1536, 6, 32768
    per_layer = (3 * d + heads) * d + d * d + 3 * inter * d + inter * d + 2 * t * d
    assert forward_flops_per_token(config, t) == 2 * (layers * per_layer + d * vocab)


def test_info_preset_json(capsys):
    assert main(["info", "--preset", "n4-127m", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["parameters"] == {"total": 177_874_176, "embedding": 25_165_824, "head": 25_165_824,
                                   "non_embedding": 127_542_528}
    assert facts["seq_len"] == 512 and len(facts["layers"]) == 18


def test_info_list_and_unknown_preset(capsys):
    assert main(["info", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("n4-127m", "n4-tiny", "ngen4-50m", "ngen4-tiny"):
        assert name in listing
    assert main(["info", "--preset", "n4-128m"]) == 2
    assert "Did you mean 'n4-127m'" in capsys.readouterr().err


def test_info_on_a_saved_model(tmp_path, capsys):
    from conftest import tiny_model

    tiny_model("ngen4-tiny").save_pretrained(tmp_path)
    assert main(["info", "--model", str(tmp_path)]) == 0
    assert "non-embedding" in capsys.readouterr().out
