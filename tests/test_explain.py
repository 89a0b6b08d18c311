"""`lmlab info --explain`: the assembled forward, written from the components' own descriptions."""

import pytest

from lmlab import list_presets, preset_config
from lmlab.cli import main
from lmlab.explain import explain
from lmlab.layer_pattern import format_layers
from lmlab.overrides import parse_layers


def groups(lines: list[str], num_layers: int) -> list[tuple[list[int], list[str]]]:
    """(layer indices, lines) of each layer group: a 'layer(s) ...' header and the lines up to the next blank."""
    found, current = [], None
    for line in lines:
        if line.startswith("layer") and not line.startswith("layer rules"):
            current = (parse_layers(line.split(" ", 1)[1].replace(" ", ""), num_layers), [])
            found.append(current)
        elif not line:
            current = None
        elif current is not None:
            current[1].append(line)
    return found


@pytest.mark.parametrize("preset", [p.name for p in list_presets()])
def test_every_layer_is_explained_once_with_its_mixer_and_mlp(preset):
    config = preset_config(preset)
    lines = explain(config)
    found = groups(lines, config.num_hidden_layers)
    assert sorted(i for indices, _ in found for i in indices) == list(range(config.num_hidden_layers))
    for indices, group in found:
        for i in indices:
            spec = config.layer_spec(i)
            assert any(line.split()[:2] == ["mixer", f"{spec.mixer}:"] for line in group)
            assert any(line.split()[:2] == ["mlp", f"{spec.mlp}:"] for line in group)
            assert any(line.split()[:2] == ["block", f"{spec.block}:"] for line in group)
    assert [line.split()[0] for line in lines if line and not line.startswith(" ")][-2:] == ["head", "loss"]


def test_neollm_110m_by_hand():
    """9 Gated DeltaNet layers (8 key heads and 16 value heads of 32, conv 4, chunks of 64) and gated attention at
    layers 4, 8, 12 (8 query heads, 2 KV heads of 64, FAN in front); 25% of 64 = 16 rotated channels; PolyNorm MLP
    512 -> 2 × 1024 -> 512; LNS, GPAS and dropout 0.1 in every block; tied head; chunked loss."""
    config = preset_config("neollm-110m")
    text = "\n".join(explain(config))
    (deltanet_layers, deltanet), (attention_layers, attention) = groups(text.split("\n"), 12)
    assert format_layers(deltanet_layers) == "0-2,4-6,8-10" and "layers 0-2, 4-6, 8-10" in text
    assert attention_layers == [3, 7, 11] and "layers 3, 7, 11" in text
    deltanet, attention = (" ".join(" ".join(group).split()) for group in (deltanet, attention))  # unwrapped
    text = " ".join(text.split())
    for fact in ("gated_deltanet:", "8 key heads × 32, 16 value heads × 32", "conv 4", "chunks of 64",
                 "x = GPAS(x + drop_0.1(mixer(norm(x)/√ℓ)))", "polynorm:", "(up 512 -> 2×1024, down 1024 -> 512)"):
        assert fact in deltanet, fact
    for fact in ("gated_attention:", "8 heads × 64, 2 kv heads, scale 1/√64", "dropout 0.1",
                 "mixer(FAN(norm(x)/√ℓ))", "position rope"):
        assert fact in attention, fact
    assert "FAN" not in deltanet
    assert "16 of 64 channels per head rotated" in text
    assert "logits = h·Eᵀ (tied to the embedding)" in text and "loss='chunked'" in text


def test_info_explain_on_the_command_line(capsys):
    assert main(["info", "--preset", "nyx-tiny", "--explain", "--set", "mlp=asgg@layers:1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nyx-tiny: 2 layers, d 64, vocabulary 256")
    assert "layer 0\n" in out and "layer 1\n" in out and "asgg: down(GELU(r) ⊙ σ(g) ⊙ v)" in out
    assert "parallel: u = norm(x); x = x + mixer(u) + mlp(u)" in out
