"""Batched decoding with pre-packed CPU weights (lmlab.generation.packed): the plain layer's outputs, the same logits
as recomputation, never a stale pack, the model left as it was."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import (
    assert_logits_close,
    engine_logits,
    full_forward_logits,
    random_path,
    randomise_parameters,
    tiny_model,
)
from lmlab.generation import packed as packing
from lmlab.generation.packed import PackedLinear, packable_linears, packed_step
from test_generate import random_prompts

pytestmark = pytest.mark.skipif(not packing.packing_available(), reason="this torch has no oneDNN linear")


@pytest.fixture
def pack_everything(monkeypatch):
    """Pack every Linear, however small (tiny models have no weight above the size threshold)."""
    monkeypatch.setattr(packing, "PACK_MIN_WEIGHTS", 0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 1, 48), (8, 1, 48), (13, 48), (3, 5, 48)])
def test_packed_linear_equals_the_plain_layer(shape, bias):
    torch.manual_seed(0)
    linear = nn.Linear(48, 96, bias=bias)
    x = torch.randn(shape)
    out = PackedLinear(linear)(x)
    expected = F.linear(x, linear.weight, linear.bias)
    assert out.shape == expected.shape
    if x.numel() == x.shape[-1]:
        assert torch.equal(out, expected)  # one row: the plain kernel itself
    else:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_only_large_plain_fp32_cpu_linears_are_packed():
    model = tiny_model("ngen4-tiny", vocab_size=2 * packing.PACK_MIN_WEIGHTS // 64)  # head: 2 Mi weights
    assert packable_linears(model) == [model.lm_head]  # the blocks' 64 × 256 matrices stay plain

    class Adapter(nn.Linear):  # a subclass keeps its own forward
        pass

    big = (packing.PACK_MIN_WEIGHTS // 64, 64)
    layers = nn.Sequential(nn.Linear(*big[::-1]), Adapter(*big[::-1]), nn.Linear(*big[::-1]).bfloat16())
    assert packable_linears(layers) == [layers[0]]


@pytest.mark.parametrize("preset", ["ngen4-tiny", "n4-tiny"])
def test_batched_decoding_with_packed_weights_equals_recomputation(preset, pack_everything):
    model = tiny_model(preset)
    randomise_parameters(model)
    prompts, path = random_prompts((9, 4, 6), seed=3), random_path(3, 10, seed=4)  # padded rows
    assert packable_linears(model)
    cached = engine_logits(model, prompts, path)
    assert all(packing.packed(linear).packed is not None for linear in packable_linears(model))  # it did pack
    assert_logits_close(cached, full_forward_logits(model, prompts, path))
    assert all("forward" not in linear.__dict__ for linear in model.modules())  # the model is left as it was


def test_weights_changed_after_packing_are_repacked(pack_everything):
    """A pack is a copy: an in-place update (an optimizer step) must be seen by the next generation."""
    model = tiny_model("ngen4-tiny")
    randomise_parameters(model)
    prompts, path = random_prompts((5, 7), seed=5), random_path(2, 6, seed=6)
    before = engine_logits(model, prompts, path)
    randomise_parameters(model, seed=1, scale=3.0)
    after = engine_logits(model, prompts, path)
    assert (after[-1] - before[-1]).abs().max() > 1e-2  # the change matters, so a stale pack would be caught
    assert_logits_close(after, full_forward_logits(model, prompts, path))


def test_a_failing_forward_leaves_the_model_unpatched(pack_everything):
    model = tiny_model("ngen4-tiny")
    step = packed_step(model)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        step(torch.tensor([[0], [10**6]]))
    assert all("forward" not in linear.__dict__ for linear in model.modules())
