"""Contracts every registered component keeps, enumerated from the registries at run time, so a newly registered
component is tested without a line here (toy_mixer.py's mixer is one).

Every mixer × block × position, swapped into a tiny model, must be causal, decode from its cache exactly as the full
forward (a prefill, a chunk, then token by token, across a sliding window where the mixer has one), give each row of
a left-padded batch the logits of that row alone, and give the same logits after save_pretrained/from_pretrained.
Every MLP and norm must be causal and survive saving. A combination the validation refuses is skipped, and the
refusal must be a ConfigError (any other error fails).

Each component's declared options get a tiny, active setting where the model would otherwise hide them (a window
on layer 0, a FAN layer on layer 1, LayerNorm Scaling and GPAS, small Gated DeltaNet heads and chunks).
"""

from __future__ import annotations

import pytest
import torch
import toy_mixer  # noqa: F401  (registers mixer="toy_decay": tested here like any other mixer)

from conftest import LOGIT_TOLERANCE, TINY_VOCAB, randomise_parameters
from lmlab import LMLabConfig, LMLabForCausalLM
from lmlab.errors import ConfigError
from lmlab.registry import BLOCKS, MIXERS, MLPS, NORMS, POSITIONS

WINDOW = 5  # layer 0's sliding window where the mixer has windows
LENGTH = 20  # tokens per row: the window is crossed several times
BASE = dict(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            mixer="attention", block="prenorm", position="rope", mlp="gelu", norm="rmsnorm")
# a setting of each option that makes it act, given to a model whose components declare the option
ACTIVE = dict(layernorm_scaling=True, gpas="layer", linear_num_key_heads=2, linear_key_head_dim=8,
              linear_num_value_heads=4, linear_value_head_dim=8, linear_chunk_size=8)
PER_LAYER = ({"window": WINDOW}, {"fan": True})  # layer 0, layer 1


def contract_config(**slots) -> LMLabConfig:
    """A tiny config with the given slots and every declared option of its components set to act."""
    choice = {**BASE, **slots}
    components = [(MIXERS, choice["mixer"]), (BLOCKS, choice["block"]), (MLPS, choice["mlp"]),
                  (NORMS, choice["norm"]), (POSITIONS, choice["position"])]
    declared = {option.name for registry, name in components for option in registry.entry(name).options}
    layers = [{k: v for k, v in layer.items() if k in declared} for layer in PER_LAYER]
    return LMLabConfig(**choice, **{k: v for k, v in ACTIVE.items() if k in declared}, layers=layers)


def contract_model(**slots) -> LMLabForCausalLM:
    """The randomised tiny model of `contract_config`, or a skip when the validation refuses the combination."""
    try:
        config = contract_config(**slots)
    except ConfigError as refusal:  # the only accepted reason to skip
        pytest.skip(f"refused by validation: {refusal}")
    torch.manual_seed(0)
    model = LMLabForCausalLM(config).eval()
    randomise_parameters(model)
    return model


def tokens(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def worst(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- the contracts

def assert_causal(model: LMLabForCausalLM) -> None:
    """Changing the tokens after position t changes no logit at positions ≤ t (and does change later ones)."""
    x, t = tokens(2, LENGTH, seed=1), 11
    y = x.clone()
    y[:, t + 1:] = tokens(2, LENGTH - t - 1, seed=2)
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert torch.equal(a[:, :t + 1], b[:, :t + 1])
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def assert_cached_decoding_is_the_full_forward(model: LMLabForCausalLM) -> None:
    x = tokens(2, LENGTH, seed=3)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        cache = model.new_cache()
        pieces = [model(x[:, :7], cache=cache, use_cache=True).logits,  # prefill
                  model(x[:, 7:11], cache=cache, use_cache=True).logits]  # a chunk
        pieces += [model(x[:, i:i + 1], cache=cache, use_cache=True).logits for i in range(11, LENGTH)]
    assert worst(torch.cat(pieces, dim=1), full) <= LOGIT_TOLERANCE


def assert_left_padding_is_the_unpadded_row(model: LMLabForCausalLM) -> None:
    """A left-padded prefill and three decoded tokens give each row the logits of that row alone."""
    rows, continuation = [tokens(1, n, seed=4 + n)[0] for n in (12, 7)], tokens(2, 3, seed=9)
    width = max(len(row) for row in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    with torch.no_grad():
        cache = model.new_cache()
        prefill = model(ids, attention_mask=mask, cache=cache, use_cache=True).logits
        steps = []
        for step in range(3):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            steps.append(model(continuation[:, step:step + 1], attention_mask=mask, cache=cache,
                               use_cache=True).logits)
        for i, row in enumerate(rows):
            alone = model(torch.cat([row, continuation[i, :2]])[None], use_cache=False).logits[0]
            padded = torch.cat([prefill[i, width - len(row):], *(step[i] for step in steps[:2])])
            assert worst(padded, alone) <= LOGIT_TOLERANCE


def assert_save_and_load_round_trip(model: LMLabForCausalLM, path) -> None:
    model.save_pretrained(path)
    loaded = LMLabForCausalLM.from_pretrained(path).eval()
    x = tokens(2, LENGTH, seed=10)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


# ---- every mixer × block × position

COMBINATIONS = [dict(mixer=m, block=b, position=p)
                for m in MIXERS.names() for b in BLOCKS.names() for p in POSITIONS.names()]
IDS = ["-".join(c.values()) for c in COMBINATIONS]


@pytest.mark.parametrize("slots", COMBINATIONS, ids=IDS)
def test_causality(slots):
    assert_causal(contract_model(**slots))


@pytest.mark.parametrize("slots", COMBINATIONS, ids=IDS)
def test_cached_decoding_equals_the_full_forward(slots):
    assert_cached_decoding_is_the_full_forward(contract_model(**slots))


@pytest.mark.parametrize("slots", COMBINATIONS, ids=IDS)
def test_left_padded_rows_equal_the_unpadded_rows(slots):
    assert_left_padding_is_the_unpadded_row(contract_model(**slots))


@pytest.mark.parametrize("slots", COMBINATIONS, ids=IDS)
def test_save_and_load_give_the_same_logits(slots, tmp_path):
    assert_save_and_load_round_trip(contract_model(**slots), tmp_path)


def test_every_mixer_and_block_has_a_valid_combination():
    """Skips must not hide a component: each one is tested in at least one combination."""
    valid = []
    for slots in COMBINATIONS:
        try:
            contract_config(**slots)
            valid.append(slots)
        except ConfigError:
            continue
    for registry, slot in ((MIXERS, "mixer"), (BLOCKS, "block"), (POSITIONS, "position")):
        assert {slots[slot] for slots in valid} == set(registry.names())


def test_the_active_settings_reach_the_model():
    model = contract_model(mixer="attention", block="parallel", position="rope")
    first, second = model.model.layers
    assert model.config.layer_spec(0).window == WINDOW and second.fan is not None and first.gpas is not None
    assert second.norm_scale == pytest.approx(2 ** -0.5)


# ---- every MLP and norm

@pytest.mark.parametrize("mlp", MLPS.names())
def test_every_mlp_is_causal_and_survives_saving(mlp, tmp_path):
    model = contract_model(mlp=mlp)
    assert_causal(model)
    assert_save_and_load_round_trip(model, tmp_path)


@pytest.mark.parametrize("norm", NORMS.names())
def test_every_norm_is_causal_and_survives_saving(norm, tmp_path):
    model = contract_model(norm=norm)
    assert_causal(model)
    assert_save_and_load_round_trip(model, tmp_path)
